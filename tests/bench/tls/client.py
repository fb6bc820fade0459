"""TLS bench client, run inside the sandbox: HTTPS request latency (a kept-alive connection,
and a new connection per request) and download throughput, against one host.

usage: client.py HOST CAFILE|- REQUESTS DOWNLOAD_BYTES
Prints one JSON object: {"keepalive": [ms...], "fresh": [ms...], "mbps": float}.
"""
import http.client
import json
import ssl
import sys
import time

host, cafile, requests, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ctx = ssl.create_default_context(cafile=None if cafile == "-" else cafile)


def get(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200, (r.status, body[:200])
    return body


conn = http.client.HTTPSConnection(host, context=ctx)
for _ in range(20):
    get(conn, "/echo")
keepalive = []
for _ in range(requests):
    t = time.perf_counter()
    get(conn, "/echo")
    keepalive.append((time.perf_counter() - t) * 1000)
conn.close()

fresh = []
for _ in range(max(requests // 5, 20)):
    t = time.perf_counter()
    c = http.client.HTTPSConnection(host, context=ctx)
    get(c, "/echo")
    c.close()
    fresh.append((time.perf_counter() - t) * 1000)

conn = http.client.HTTPSConnection(host, context=ctx)
t = time.perf_counter()
conn.request("GET", "/bytes/%d" % size)
r = conn.getresponse()
got = 0
while True:
    chunk = r.read(1 << 20)
    if not chunk:
        break
    got += len(chunk)
elapsed = time.perf_counter() - t
assert got == size, (got, size)
print(json.dumps({"keepalive": keepalive, "fresh": fresh, "mbps": size / elapsed / 1e6}))
