# A webhook receiver that misbehaves, for the alerting job's tests.
#
#   python webhook_server.py PORT_FILE LOG_FILE
#
# Listens on 127.0.0.1 (a free port, written to PORT_FILE once it listens). Each POST is
# logged as one JSON line in LOG_FILE: its arrival time (time.time()), path, alert_id
# and the status answered.
#   /refuse  always answers 503;
#   other paths answer 503 to 30% of requests at random, and 200 otherwise;
#   after the 10th request, the server stops listening for 5 s (connections refused),
#   then listens again on the same port.
import json
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port_file, log_file = sys.argv[1:3]
lock = threading.Lock()
count = 0
log = open(log_file, "a", buffering=1)
down = threading.Event()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global count
        arrived = time.time()
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            alert_id = json.loads(body)["alert_id"]
        except Exception:
            alert_id = None
        if self.path == "/refuse" or random.random() < 0.3:
            status = 503
        else:
            status = 200
        with lock:
            count += 1
            log.write(json.dumps({"t": arrived, "path": self.path, "alert_id": alert_id,
                                  "status": status, "auth": self.headers.get("Authorization")}) + "\n")
            if count == 10:
                down.set()
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer.allow_reuse_address = True
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
port = server.server_address[1]
with open(port_file + ".tmp", "w") as f:
    f.write(str(port))
import os
os.rename(port_file + ".tmp", port_file)
thread = threading.Thread(target=server.serve_forever, daemon=True)
thread.start()
down.wait()
server.shutdown()
server.server_close()
log.write(json.dumps({"t": time.time(), "down": True}) + "\n")
time.sleep(5)
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
log.write(json.dumps({"t": time.time(), "up": True}) + "\n")
server.serve_forever()
