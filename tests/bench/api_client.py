"""One client of an OpenSandbox-style API (`/run`, `/sessions`), the same for both servers:
a fresh connection per request (as curl makes), figures in milliseconds, and only correct
answers counted. Prints one JSON object.

    api_client.py URL [--runs N] [--seconds S] [--clients C] [--token T] [--skip-sessions]
"""

import argparse
import base64
import http.client
import json
import statistics
import threading
import time
import urllib.parse


def call(base, method, path, body=None, token=None):
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    headers = {"Content-Type": "application/json", "Connection": "close"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def timed(n, f):
    times, failures = [], 0
    for i in range(n):
        t = time.perf_counter()
        ok = f(i)
        times.append((time.perf_counter() - t) * 1000)
        failures += 0 if ok else 1
    times.sort()
    return {"p50": round(statistics.median(times), 2), "p95": round(times[int(0.95 * (len(times) - 1))], 2), "failures": failures}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--token")
    a = ap.parse_args()
    base, tok = a.url, a.token
    out = {}

    def run_true(_):
        s, d = call(base, "POST", "/run", {"command": ["/bin/true"]}, tok)
        return s == 200 and json.loads(d).get("exit_code") == 0

    def pool_counts():
        # Ours only (the peer has no pools): hits and misses over all pools so far.
        s, d = call(base, "GET", "/v1/pools", None, tok)
        if s != 200:
            return None
        pools = json.loads(d)
        if not pools:
            return None
        return sum(p["hits"] for p in pools), sum(p["misses"] for p in pools)

    timed(3, run_true)
    before = pool_counts()
    out["run_true"] = timed(a.runs, run_true)
    after = pool_counts()
    if before and after:
        out["run_true"]["pool_hits"], out["run_true"]["pool_misses"] = after[0] - before[0], after[1] - before[1]

    s, d = call(base, "POST", "/sessions", {"env": {}}, tok)
    sid = json.loads(d)["session_id"]

    def session_true(_):
        s, d = call(base, "POST", f"/sessions/{sid}/run", {"command": ["/bin/true"]}, tok)
        return s == 200 and json.loads(d).get("exit_code") == 0

    timed(3, session_true)
    out["session_exec"] = timed(a.runs, session_true)
    payload = base64.b64encode(bytes(range(256)) * 4).decode()

    def write(i):
        s, d = call(base, "POST", f"/sessions/{sid}/files/write", {"path": f"/tmp/f{i}.bin", "content": payload}, tok)
        return s == 200

    def read(i):
        s, d = call(base, "GET", f"/sessions/{sid}/files/read?path=/tmp/f{i}.bin", None, tok)
        return s == 200 and json.loads(d).get("content") == payload

    out["file_write_1k"] = timed(a.runs, write)
    out["file_read_1k"] = timed(a.runs, read)
    call(base, "DELETE", f"/sessions/{sid}", None, tok)

    counts = {"answers": 0, "correct": 0, "errors": 0}
    lock = threading.Lock()
    stop = time.perf_counter() + a.seconds

    def worker(k):
        i = 0
        while time.perf_counter() < stop:
            word = f"c{k}-{i}"
            i += 1
            try:
                s, d = call(base, "POST", "/run", {"command": ["/bin/echo", word]}, tok)
                good = s == 200 and json.loads(d).get("stdout") == word + "\n"
                with lock:
                    counts["answers"] += 1
                    counts["correct"] += 1 if good else 0
            except Exception:
                with lock:
                    counts["errors"] += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(a.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - start
    out["concurrent"] = {
        "clients": a.clients,
        "answers_per_s": round(counts["answers"] / took, 1),
        "correct_per_s": round(counts["correct"] / took, 1),
        "wrong": counts["answers"] - counts["correct"],
        "errors": counts["errors"],
    }
    print(json.dumps(out))


main()
