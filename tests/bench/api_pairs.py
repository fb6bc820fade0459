"""The session rows (exec of /bin/true, a 1 KiB file write, its read) on two servers, request by
request in turn: each request to one server is followed by the same request to the other (the
order swapped every pair), so that what else this machine does weighs on both alike, however
fast it comes and goes. Each server may sit in a network namespace of its own: a connection's
socket is made in that namespace (before the clock starts), the rest happens in this process.
Prints one JSON object: each row's p50/p95 per server and in how many pairs each was faster.

    api_pairs.py NAME_A URL_A NETNS_A NAME_B URL_B NETNS_B [--runs N] [--token-a T]
    (NETNS: a path such as /var/run/netns/NAME, or - for this process's own)
"""

import argparse
import base64
import ctypes
import http.client
import json
import os
import socket
import statistics
import time
import urllib.parse

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)
HOME = os.open("/proc/self/ns/net", os.O_RDONLY)


def socket_in(netns_fd):
    if netns_fd is None:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if libc.setns(netns_fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    finally:
        if libc.setns(HOME, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back")


class Server:
    def __init__(self, name, url, netns, token):
        u = urllib.parse.urlparse(url)
        self.name, self.host, self.port, self.token = name, u.hostname, u.port, token
        self.netns = None if netns == "-" else os.open(netns, os.O_RDONLY)

    def call(self, method, path, body=None):
        """(seconds, status, body) of one request on a fresh connection, as curl makes."""
        sock = socket_in(self.netns)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        headers = {"Content-Type": "application/json", "Connection": "close"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body) if body is not None else None
        t = time.perf_counter()
        sock.connect((self.host, self.port))
        conn.sock = sock
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        out = r.read()
        took = time.perf_counter() - t
        conn.close()
        return took, r.status, out


def main():
    ap = argparse.ArgumentParser()
    for k in ("a", "b"):
        ap.add_argument(f"name_{k}")
        ap.add_argument(f"url_{k}")
        ap.add_argument(f"netns_{k}")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--token-a")
    a = ap.parse_args()
    servers = [Server(a.name_a, a.url_a, a.netns_a, a.token_a), Server(a.name_b, a.url_b, a.netns_b, None)]
    sessions = []
    for s in servers:
        _, status, body = s.call("POST", "/sessions", {"env": {}})
        if status != 200:
            raise SystemExit(f"{s.name}: POST /sessions: {status} {body[:200]!r}")
        sessions.append(json.loads(body)["session_id"])
    payload = base64.b64encode(bytes(range(256)) * 4).decode()
    rows = {
        "session_exec": lambda sid, i: ("POST", f"/sessions/{sid}/run", {"command": ["/bin/true"]}, lambda st, b: st == 200 and json.loads(b).get("exit_code") == 0),
        "file_write_1k": lambda sid, i: ("POST", f"/sessions/{sid}/files/write", {"path": f"/tmp/p{i}.bin", "content": payload}, lambda st, b: st == 200),
        "file_read_1k": lambda sid, i: ("GET", f"/sessions/{sid}/files/read?path=/tmp/p{i}.bin", None, lambda st, b: st == 200 and json.loads(b).get("content") == payload),
    }
    out = {}
    for row, make in rows.items():
        times = [[], []]
        for i in range(-3, a.runs):  # three warm-up pairs, not counted
            order = (0, 1) if i % 2 == 0 else (1, 0)
            for k in order:
                method, path, body, good = make(sessions[k], i)
                took, status, data = servers[k].call(method, path, body)
                if not good(status, data):
                    raise SystemExit(f"{servers[k].name}: {method} {path}: {status} {data[:200]!r}")
                if i >= 0:
                    times[k].append(took * 1000)
        faster = sum(x < y for x, y in zip(times[0], times[1]))
        out[row] = {
            servers[k].name: {"p50": round(statistics.median(t), 3), "p95": round(sorted(t)[int(0.95 * (len(t) - 1))], 3)} for k, t in enumerate(times)
        }
        out[row]["pairs"] = len(times[0])
        out[row][f"{servers[0].name}_faster"] = faster
    for s, sid in zip(servers, sessions):
        s.call("DELETE", f"/sessions/{sid}")
    print(json.dumps(out))


main()
