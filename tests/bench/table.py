#!/usr/bin/env python3
"""Prints hyperfine JSON exports (any number of files) as one markdown table of mean, p50, p95
and p99 in milliseconds; with --vs NAME, each other row's p50 as a ratio of NAME's."""
import json, sys

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

args = sys.argv[1:]
vs = None
if args[:1] == ["--vs"]:
    vs, args = args[1], args[2:]
rows = {}
print("| command | mean ms | p50 ms | p95 ms | p99 ms |")
print("|---|---|---|---|---|")
for f in args:
    for r in json.load(open(f))["results"]:
        t = [x * 1000 for x in r["times"]]
        rows[r["command"]] = pct(t, 50)
        print(f"| `{r['command']}` | {sum(t)/len(t):.2f} | {pct(t,50):.2f} | {pct(t,95):.2f} | {pct(t,99):.2f} |")
if vs in rows:
    for k, v in rows.items():
        if k != vs:
            print(f"{k}: {v / rows[vs]:.2f}x {vs} at p50")
