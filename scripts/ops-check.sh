#!/usr/bin/env bash
# Checks what deploy/ and docker-compose.yml ship, without a Docker engine:
#   - the Prometheus alert rules (promtool check rules, and their unit tests),
#     and the Prometheus config's syntax;
#   - every metric the rules and the Grafana dashboard query is one eventbus exports;
#   - the compose file (docker-compose config);
#   - every eventbus command line in the compose file, through the binary's own
#     argument and job-file parsing (`--check`), with /etc/eventbus read from
#     deploy/jobs.
# Installs Debian's prometheus (for promtool) and docker-compose when missing.
#
#   scripts/ops-check.sh EVENTBUS_BIN
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:?usage: $0 EVENTBUS_BIN}"

scripts/debian-tools.sh promtool=prometheus docker-compose=docker-compose

promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml
promtool check config --syntax-only deploy/prometheus/prometheus.yml

# Every eventbus_* metric a rule or a panel queries is named in the sources.
python3 - <<'PY'
import json, pathlib, re, sys
queries = pathlib.Path("deploy/prometheus/alerts.yml").read_text()
dash = json.loads(pathlib.Path("deploy/grafana/dashboards/eventbus.json").read_text())
queries += "\n".join(t["expr"] for p in dash["panels"] for t in p["targets"])
sources = "\n".join(p.read_text() for d in ["runtime", "operators", "jobs", "dlq"]
                    for p in pathlib.Path(d).rglob("*.rs"))
missing = set()
for name in set(re.findall(r"eventbus_[a-z_]+", queries)):
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    if f'"{base}"' not in sources:
        missing.add(name)
if missing:
    sys.exit(f"queried but never exported: {sorted(missing)}")
print(f"dashboard and rules query {len(dash['panels'])} panels' metrics, all exported")
PY

docker-compose -f docker-compose.yml config -q
echo "docker-compose.yml: valid"

# The eventbus services' command lines, parsed and checked by the binary itself.
/usr/bin/python3 - "$bin" <<'PY'
import subprocess, sys, yaml
bin = sys.argv[1]
compose = yaml.safe_load(subprocess.run(["docker-compose", "-f", "docker-compose.yml", "config"],
                                        check=True, capture_output=True, text=True).stdout)
checked = 0
for name, svc in compose["services"].items():
    if svc.get("image") != "eventbus:dev":
        continue
    args = [a.replace("/etc/eventbus", "deploy/jobs") for a in svc["command"]]
    out = subprocess.run([bin, *args, "--check"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"service {name}: `eventbus {' '.join(svc['command'])}` does not check: {out.stderr.strip()}")
    print(f"service {name}: {out.stdout.strip()}")
    checked += 1
if checked == 0:
    sys.exit("no eventbus service in docker-compose.yml")
PY
