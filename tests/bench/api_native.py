"""The native API's per-sandbox rows: a 1 KiB file written and read (`PUT`/`GET
/v1/sandboxes/{name}/files`) and a collected exec of /bin/true (`POST .../exec`), N each, in a
sandbox made through `POST /v1/sandboxes` and removed after. Prints one JSON object.

    api_native.py URL N IMAGE
"""

import http.client
import json
import statistics
import sys
import time
import urllib.parse


def call(base, method, path, body=None, ctype="application/json"):
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request(method, path, body=body, headers={"Content-Type": ctype, "Connection": "close"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def timed(n, f):
    times = []
    for i in range(n):
        t = time.perf_counter()
        ok = f(i)
        times.append((time.perf_counter() - t) * 1000)
        if not ok:
            raise SystemExit(f"request {i} failed")
    times.sort()
    return {"p50": round(statistics.median(times), 2), "p95": round(times[int(0.95 * (len(times) - 1))], 2)}


def main():
    base, n, image = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    name = "bench-native"
    spec = {"apiVersion": "orchestrator/v1", "kind": "Sandbox", "metadata": {"name": name}, "spec": {"image": image}}
    status, body = call(base, "POST", "/v1/sandboxes", json.dumps(spec))
    if status != 201:
        raise SystemExit(f"POST /v1/sandboxes: {status} {body[:300]!r}")
    data = bytes(range(256)) * 4
    files = f"/v1/sandboxes/{name}/files?path=/tmp/f"
    out = {
        "file_write_1k": timed(n, lambda i: call(base, "PUT", f"{files}{i}", data, "application/octet-stream")[0] == 204),
        "file_read_1k": timed(n, lambda i: call(base, "GET", f"{files}{i}") == (200, data)),
        "exec_true": timed(n, lambda i: call(base, "POST", f"/v1/sandboxes/{name}/exec", json.dumps({"command": ["/bin/true"]}))[0] == 200),
    }
    call(base, "DELETE", f"/v1/sandboxes/{name}")
    print(json.dumps(out))


main()
