#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: makes the NATS image the tests
# start through testcontainers available offline (and the static nats-server
# binary), installs the manifest validators, then runs every test.
# Extra arguments go to the test runner (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/nats-image.sh
# The static nats-server binary itself (target/nats-<version>/), which the
# tenancy tests (tests/api/tenancy.rs) run on the rendered configuration.
source deploy/nats-env.sh
ensure_nats_binary
# The manifests' validators (tests/api/deploy.rs), and kubectl, which renders
# the kustomization (the machine image ships it; Debian's kubernetes-client is
# too old for kustomize v5).
bash deploy/python-tools.sh
command -v kubectl >/dev/null || { echo "deploy/test.sh: kubectl is needed (tests/api/deploy.rs renders deploy/k8s with it)" >&2; exit 1; }
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
