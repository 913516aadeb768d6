#!/bin/sh
# Run the media benchmark with the project's venv. Arguments go to run.py (see --help).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
exec "$ROOT/.venv/bin/python" "$ROOT/bench/media/run.py" "$@"
