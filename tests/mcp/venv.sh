#!/usr/bin/env bash
# The MCP client the tests drive our MCP server with: the `mcp` package from PyPI (pinned), in
# a virtual environment of its own under the cache. Idempotent.
#   tests/mcp/venv.sh CACHE_DIR      -> CACHE_DIR/mcp-client/bin/python
set -euo pipefail
cache=${1:?usage: venv.sh CACHE_DIR}
version=1.30.0
venv=$cache/mcp-client
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$version')" 2>/dev/null; then
  exit 0
fi
echo "setup: installing the MCP client (mcp $version from PyPI) into $venv"
rm -rf "$venv"
/usr/bin/python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "mcp==$version"
