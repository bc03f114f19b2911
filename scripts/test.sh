#!/usr/bin/env bash
# The project's test command (named in README.md, called by .ci/run).
# Installs what the tests need when it is missing, then runs fmt, clippy, docs and every test with
# INTERLOCK_TEST_REQUIRE=1, so a missing tool or server is a failure rather than a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

# Started by `nohup` or as a background job of a non-interactive shell (`.ci/run &`), this script
# and everything it starts inherit SIGHUP, or SIGINT and SIGQUIT, ignored, which bash cannot undo;
# interlock and Python keep a signal that was ignored at their start ignored, as they should, and
# the tests that send those signals would wait for nothing. Start again with them at their default
# action (bash shows SIGQUIT ignored in its own status anyway, so SIGHUP and SIGINT tell).
sig_ign=$(awk '/^SigIgn:/ {print $2}' /proc/$$/status)
if (( (16#$sig_ign & 3) != 0 )) && [ -z "${INTERLOCK_TEST_SIGNALS_RESET:-}" ]; then
  export INTERLOCK_TEST_SIGNALS_RESET=1
  exec env --default-signal=SIGHUP,SIGINT,SIGQUIT "$0" "$@"
fi

missing=()
command -v flock >/dev/null 2>&1 || missing+=(util-linux)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# Servers for the network backends' tests: the tests start private instances of their own on
# leased loopback ports (crates/interlock-testkit/src/servers/), never the system service.
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
# Test certificates for rediss:// (crates/interlock-testkit/src/servers/redis_tls.rs).
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ((${#missing[@]})); then
  echo "scripts/test.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python lock libraries for the file backend's interop tests (fcntl.flock underneath).
if ! python3 -c 'import filelock, portalocker' >/dev/null 2>&1; then
  echo "scripts/test.sh: installing filelock and portalocker (pip)" >&2
  python3 -m pip install --quiet --disable-pip-version-check filelock portalocker
fi
# Python Redis lock tools for the redis backend's interop tests (tests/interop_redis.rs).
if ! python3 -c 'import redis, redis_lock, pottery, redlock' >/dev/null 2>&1; then
  echo "scripts/test.sh: installing redis, python-redis-lock, pottery and redlock-py (pip)" >&2
  python3 -m pip install --quiet --disable-pip-version-check redis python-redis-lock pottery redlock-py
fi

# The Python package's test tools (python/tests): pytest, and the servers of its web-app cases
# (Flask under uwsgi and gunicorn; uwsgi builds from source with the C compiler; FastAPI driven
# through httpx's ASGI transport).
if ! python3 -c 'import pytest, flask, gunicorn, fastapi, httpx' >/dev/null 2>&1 || ! command -v uwsgi >/dev/null 2>&1; then
  echo "scripts/test.sh: installing pytest, flask, gunicorn, uwsgi, fastapi and httpx (pip)" >&2
  python3 -m pip install --quiet --disable-pip-version-check pytest flask gunicorn uwsgi fastapi httpx
fi

export INTERLOCK_TEST_REQUIRE=1
export CARGO_TERM_COLOR=never

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --quiet
echo "== cargo test"
cargo test --workspace --all-features
# The Python package, built from this checkout as a user installs it (`pip install ./python`, a
# release build through maturin), then its pytest suite.
echo "== pip install ./python"
python3 -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./python
echo "== pytest python/tests"
INTERLOCK_BIN="$PWD/target/debug/interlock" python3 -m pytest python/tests
echo "== all tests passed"
