#!/usr/bin/env bash
# One command: install the test needs (venv, package with the prebuilt llama.cpp server,
# default model, Debian chromium for the browser test, espeak-ng for the audio tests) and run
# the whole test suite (both tiers: the main one, then the slow one) plus a benchmark smoke run.
# Nothing is compiled: the tests use a native llama-server when one was built
# (`lemonade-jupyter install-llama-server`), else the prebuilt engine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
VENV="${LEMONADE_VENV:-.venv}"
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install Debian chromium; the browser test will fail"
fi
# The audio route tests speak with espeak-ng (a WAV made in the test).
if [ ! -x /usr/bin/espeak-ng ] && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null) \
    || echo "warning: could not install espeak-ng; the espeak audio tests will be skipped"
fi
# The node tests (tests/hub_node) run a real JupyterHub, whose proxy comes from npm.
if ! command -v configurable-http-proxy >/dev/null && [ "$(id -u)" = 0 ]; then
  npm install -g --silent configurable-http-proxy >/dev/null \
    || echo "warning: could not install configurable-http-proxy; the node tests will fail"
fi
# Two tiers: the main suite (setup.cfg leaves out the tests marked slow), then the slow tier
# (load, long concurrency and fault runs, deep fuzzing), so a broken build fails in minutes.
# The main tier runs on one worker per core (pytest-xdist, 2 to 4; $LEMONADE_TEST_WORKERS
# overrides), a test file per worker so that a module's shared server is started once: most
# of its time is spent waiting on processes (servers starting, models loading), and on 2 cores
# two workers take it from about 12 to about 6.5 minutes. The slow tier stays on one worker:
# its load and concurrency runs must not compete with other tests for the cores.
WORKERS="${LEMONADE_TEST_WORKERS:-$("$VENV/bin/python" -c \
  'import os; print(min(4, max(2, len(os.sched_getaffinity(0)))))')}"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -n "$WORKERS" --dist loadfile "$@"
# Exit status 5: the arguments named no slow test, which is not a failure.
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -m slow "$@" || [ $? -eq 5 ]
if [ -f benchmarks/__main__.py ]; then
  "$VENV/bin/python" -m benchmarks --smoke
fi
