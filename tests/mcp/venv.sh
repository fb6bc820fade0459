#!/usr/bin/env bash
# The MCP client the tests drive our MCP server with: the `mcp` package from PyPI (pinned), in
# a virtual environment of its own under the cache. Idempotent.
#   tests/mcp/venv.sh CACHE_DIR      -> CACHE_DIR/mcp-client/bin/python
set -euo pipefail
exec bash "$(dirname "$0")/../pinned-venv.sh" "${1:?usage: venv.sh CACHE_DIR}" mcp-client mcp 1.30.0
