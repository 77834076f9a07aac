"""Fetches a Prometheus endpoint over HTTP and parses it with prometheus_client's parser
(https://github.com/prometheus/client_python), printing one tab-separated line per family and
per sample for the Rust tests:

    family <TAB> NAME <TAB> TYPE
    sample <TAB> NAME <TAB> k=v,k=v (sorted) <TAB> VALUE

Usage: scrape.py URL. Exits non-zero if the fetch fails, the status is not 200, the content type
is not the text format, or the parser refuses the text.
"""
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

url = sys.argv[1]
with urllib.request.urlopen(url, timeout=10) as r:
    if r.status != 200:
        sys.exit("status %d" % r.status)
    ctype = r.headers.get("Content-Type", "")
    if not ctype.startswith("text/plain"):
        sys.exit("content type %r" % ctype)
    text = r.read().decode("utf-8")

for family in text_string_to_metric_families(text):
    print("family\t%s\t%s" % (family.name, family.type))
    for s in family.samples:
        labels = ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
        print("sample\t%s\t%s\t%r" % (s.name, labels, float(s.value)))
