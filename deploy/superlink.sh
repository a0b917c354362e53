#!/usr/bin/env bash
# Start the coordinator's Flower SuperLink: TLS on, SuperNode authentication on, a state
# database (registrations, runs and node ids survive a restart), telemetry, update checks and
# runtime dependency installation off.
#
#   deploy/superlink.sh --certs CERT_DIR --state STATE_DIR [--host 127.0.0.1] [--port 8000]
#   deploy/superlink.sh --insecure --state STATE_DIR ...     # plain text: tests on loopback only
#
# Register each site's SuperNode public key (OpenSSH ECDSA) before it connects:
#   FLWR_HOME=... flwr supernode register site-aurora.pub <connection>
set -euo pipefail
CERTS="" STATE="" HOST=127.0.0.1 PORT=8000 INSECURE=0 EXTRA=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --certs) CERTS=$2; shift 2 ;;
    --state) STATE=$2; shift 2 ;;
    --host) HOST=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --insecure) INSECURE=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
[[ -n $STATE ]] || { echo "error: --state STATE_DIR is required (registrations live there)" >&2; exit 2; }
BIN=${FLWR_BIN:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin}
[[ -x $BIN/flower-superlink ]] || BIN=$(dirname "$(command -v flower-superlink)")
export PATH="$BIN:$PATH"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_HOME=${FLWR_HOME:-$STATE/flwr-home}
mkdir -p "$STATE" "$FLWR_HOME"
ARGS=(--host "$HOST" --port "$PORT" --database "$STATE/superlink.db"
      --disable-runtime-dependency-installation --log-file "$STATE/superlink.log")
if [[ $INSECURE == 1 ]]; then
  echo "WARNING: --insecure: the SuperLink speaks plain text and cannot authenticate SuperNodes;" \
       "weights and metrics travel unencrypted. Use only on a closed test loopback." >&2
  ARGS+=(--insecure)
else
  [[ -n $CERTS ]] || { echo "error: --certs CERT_DIR is required (make one with deploy/make-certs.sh), or --insecure" >&2; exit 2; }
  for f in ca.crt server.pem server.key; do
    [[ -r $CERTS/$f ]] || { echo "error: $CERTS/$f missing or unreadable" >&2; exit 3; }
  done
  ARGS+=(--ssl-ca-certfile "$CERTS/ca.crt" --ssl-certfile "$CERTS/server.pem"
         --ssl-keyfile "$CERTS/server.key" --enable-supernode-auth)
fi
exec "$BIN/flower-superlink" "${ARGS[@]}" "${EXTRA[@]}"
