#!/usr/bin/env bash
# A pinned package from PyPI in a virtual environment of its own under the cache, for the tests
# that drive our servers with real third-party clients (the MCP client, schemathesis).
# Idempotent: an environment that already holds that version is kept.
#   tests/pinned-venv.sh CACHE_DIR NAME PACKAGE VERSION      -> CACHE_DIR/NAME/bin/python
set -euo pipefail
cache=${1:?usage: pinned-venv.sh CACHE_DIR NAME PACKAGE VERSION}
name=${2:?usage: pinned-venv.sh CACHE_DIR NAME PACKAGE VERSION}
package=${3:?usage: pinned-venv.sh CACHE_DIR NAME PACKAGE VERSION}
version=${4:?usage: pinned-venv.sh CACHE_DIR NAME PACKAGE VERSION}
venv=$cache/$name
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$package') != '$version')" 2>/dev/null; then
  exit 0
fi
echo "setup: installing $package $version from PyPI into $venv"
rm -rf "$venv"
/usr/bin/python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "$package==$version"
