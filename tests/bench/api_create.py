"""`POST /v1/sandboxes` latency: N creates of one spec, each followed by its delete (the delete
is not timed), 250 ms apart so a warm pool can refill. Prints one JSON object.

    api_create.py URL N MEMORY IMAGE      (MEMORY 2Gi is a warm pool's spec; any other is not;
                                          both with a memory layer, as pooled sandboxes have)
"""

import http.client
import json
import statistics
import sys
import time
import urllib.parse


def call(base, method, path, body=None):
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    t = time.perf_counter()
    conn.request(method, path, body=body, headers={"Content-Type": "application/json", "Connection": "close"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return (time.perf_counter() - t) * 1000, r.status, data


def main():
    base, n, memory, image = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    times = []
    for i in range(n):
        name = f"bench-{memory.lower()}-{i}"
        body = json.dumps({"apiVersion": "orchestrator/v1", "kind": "Sandbox", "metadata": {"name": name}, "spec": {"image": image, "memory": memory, "isolation": "namespace", "writableLayer": "memory"}})
        took, status, data = call(base, "POST", "/v1/sandboxes", body)
        if status != 201:
            raise SystemExit(f"create {name}: {status} {data[:200]!r}")
        times.append(took)
        time.sleep(0.25)
        call(base, "DELETE", f"/v1/sandboxes/{name}")
        time.sleep(0.25)
    times.sort()
    print(json.dumps({"memory": memory, "p50": round(statistics.median(times), 2), "p95": round(times[int(0.95 * (len(times) - 1))], 2)}))


main()
