#!/usr/bin/env bash
# `make run`: local echo targets for every local target of the config, then skiff in the foreground.
# Ctrl-C stops all of it.
set -uo pipefail
config=${1:-config.json}
shift || true
py=.venv/bin/python

"$py" -m tester.echo --config "$config" &
echo_pid=$!
trap 'kill "$echo_pid" 2>/dev/null; wait "$echo_pid" 2>/dev/null' EXIT
"$py" supervisor.py -c "$config" "$@"
