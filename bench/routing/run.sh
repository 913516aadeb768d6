#!/bin/sh
# Run the routing benchmark with the project's venv. Arguments go to run.py (see --help);
# with --multinode first, the rest go to multinode.py (real nodes on Redis, failover).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
if [ "${1:-}" = "--multinode" ]; then
    shift
    exec "$ROOT/.venv/bin/python" "$ROOT/bench/routing/multinode.py" "$@"
fi
exec "$ROOT/.venv/bin/python" "$ROOT/bench/routing/run.py" "$@"
