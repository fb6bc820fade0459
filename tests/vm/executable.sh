#!/usr/bin/env bash
# Builds one test or bench target of the orchestrator package and prints its executable's path.
#   tests/vm/executable.sh test|bench NAME [cargo args...]
set -euo pipefail
kind=$1 name=$2
shift 2
cargo "$kind" -q -p orchestrator "--$kind" "$name" --no-run --message-format=json "$@" 2>/dev/null \
  | python3 -c 'import json,sys
name = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == name and m.get("executable"):
        print(m["executable"])' "$name"
