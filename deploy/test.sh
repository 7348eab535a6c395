#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: makes the NATS image the tests
# start through testcontainers available offline, then runs every test.
# Extra arguments go to the test runner (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/nats-image.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
