#!/usr/bin/env bash
# Schemathesis, the property-based API tester the tests point at our OpenAPI document: the
# `schemathesis` package from PyPI (pinned), in a virtual environment of its own under the
# cache. Idempotent.
#   tests/api/schemathesis-venv.sh CACHE_DIR      -> CACHE_DIR/schemathesis/bin/st
set -euo pipefail
cache=${1:?usage: schemathesis-venv.sh CACHE_DIR}
version=4.32.5
venv=$cache/schemathesis
if [ -x "$venv/bin/st" ] && "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('schemathesis') != '$version')" 2>/dev/null; then
  exit 0
fi
echo "setup: installing schemathesis $version from PyPI into $venv"
rm -rf "$venv"
/usr/bin/python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
