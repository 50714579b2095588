#!/usr/bin/env bash
# `make test`: every test, in two pytest runs at once.
#
# The Swarm tests (marker `swarm`) run on clusters of engines of their own (tests/swarm.py:
# network namespaces, data roots, sockets), apart from this host's engine that every other
# test uses: the two runs share no container, network, port or volume. Most of a Swarm
# test's time is spent waiting for engines, spawns and cullers, so on a 2-core machine it
# runs beside the others for little more than its own CPU. Its output follows theirs.
# With PYTEST_ARGS (`make test PYTEST_ARGS="tests/test_x.py -k y"`), one run of exactly that.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
py=${PY:-.venv/bin/python}
if [[ -n "${PYTEST_ARGS:-}" ]]; then
  # shellcheck disable=SC2086 # pytest's arguments, as words
  exec "${py}" -m pytest ${PYTEST_ARGS}
fi

# The stacks a killed run left go first; this run's folder, with its PID, is how a later
# run tells ours (tests/leftovers.py).
work=$(PYTHONPATH=tests:. "${py}" tests/leftovers.py "$$") || exit 1
swarm_run="" host_run=""
show_swarm_run() {
  echo "=== the Swarm tests (pytest -m swarm), run beside the others ==="
  cat "${work}/swarm.log"
}
# shellcheck disable=SC2317 # called by the trap
stop() {
  for run in ${host_run} ${swarm_run}; do
    kill "${run}" 2>/dev/null
    wait "${run}"
  done
  show_swarm_run
  rm -rf "${work}"
  exit 143
}
trap stop TERM INT

# The Swarm tests copy the images to their engines (make up BUILD=no): built first, with
# what every test stack builds them with, so that neither run waits for or races the other.
PYTHONPATH=tests:. "${py}" -c 'import stacks; print(stacks.build_env(), end="")' >"${work}/build.env"
echo "[test] make build (the test stacks' images)"
if ! make --no-print-directory build ENV_FILE="${work}/build.env" >"${work}/build.log" 2>&1; then
  cat "${work}/build.log"
  rm -rf "${work}"
  exit 1
fi

"${py}" -m pytest -m swarm --basetemp "${work}/swarm" >"${work}/swarm.log" 2>&1 &
swarm_run=$!
"${py}" -m pytest -m "not swarm" --basetemp "${work}/host" &
host_run=$!
wait "${host_run}"
host_status=$?
wait "${swarm_run}"
swarm_status=$?
swarm_run=""
show_swarm_run
rm -rf "${work}"
echo "[test] pytest -m 'not swarm': exit ${host_status}; pytest -m swarm: exit ${swarm_status}"
exit $((host_status != 0 || swarm_status != 0))
