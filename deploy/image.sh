#!/usr/bin/env bash
# Builds the softphone-bridge image, $SOFTPHONE_BRIDGE_IMAGE
# (default softphone-bridge:<version in Cargo.toml>), without a registry: FROM
# scratch around the release binary built here (deploy/offline-image.sh, the
# same mechanism as the test NATS image). Where base images can be pulled,
# `docker build -f deploy/Dockerfile .` builds it the usual way instead.
# CARGO_TARGET_DIR is honoured; SKIP_CARGO_BUILD=1 uses the binary as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/offline-image.sh

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
image="${SOFTPHONE_BRIDGE_IMAGE:-softphone-bridge:${version}}"
binary="${CARGO_TARGET_DIR:-target}/release/softphone-bridge"
if [ "${SKIP_CARGO_BUILD:-0}" != 1 ]; then
  cargo build --release --locked --bin softphone-bridge
fi
build_offline_image "$image" deploy/bridge/Dockerfile \
  "$binary:/usr/local/bin/softphone-bridge"
echo "built $image from $binary"
