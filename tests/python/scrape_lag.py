# Scrapes a job's /metrics and parses it with prometheus_client's own text parser.
#
#   python scrape_lag.py URL TOPIC
#
# Prints {"lag": {partition: value}, "committed": {partition: value}} for TOPIC, from
# eventbus_consumer_lag_records and eventbus_committed_offset.
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

url, topic = sys.argv[1:3]
body = urllib.request.urlopen(url, timeout=10).read().decode()
out = {"lag": {}, "committed": {}}
names = {"eventbus_consumer_lag_records": "lag", "eventbus_committed_offset": "committed"}
for family in text_string_to_metric_families(body):
    for sample in family.samples:
        key = names.get(sample.name)
        if key and sample.labels.get("topic") == topic:
            out[key][sample.labels["partition"]] = int(sample.value)
print(json.dumps(out))
