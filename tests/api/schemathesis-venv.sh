#!/usr/bin/env bash
# Schemathesis, the property-based API tester the tests point at our OpenAPI document: the
# `schemathesis` package from PyPI (pinned), in a virtual environment of its own under the
# cache. Idempotent.
#   tests/api/schemathesis-venv.sh CACHE_DIR      -> CACHE_DIR/schemathesis/bin/st
set -euo pipefail
exec bash "$(dirname "$0")/../pinned-venv.sh" "${1:?usage: schemathesis-venv.sh CACHE_DIR}" schemathesis schemathesis 4.32.5
