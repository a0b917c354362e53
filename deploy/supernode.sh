#!/usr/bin/env bash
# Start a site's (or the coordinator's data node's) Flower SuperNode: TLS against the
# consortium CA and an ECDSA key the coordinator registered; telemetry and runtime dependency
# installation off. The node's role and workspace are fixed here, by the site, never by the
# server; its policy is WORKSPACE/federation/policy.toml.
#
#   deploy/supernode.sh --superlink fl.example.org:8000 --ca CERT_DIR/ca.crt --key KEYS/node \
#       --role site --workspace /srv/site-ws [--port 9094] [--threads N]
#   (--threads N: at most N compute threads per message, for a machine shared with others)
#   deploy/supernode.sh --make-key KEYS/node          # ECDSA P-384 OpenSSH key pair; send node.pub
#   deploy/supernode.sh --insecure ...                # plain text, no auth: loopback tests only
#   deploy/supernode.sh --stock-flower ...            # Flower's own SuperNode and executor
#
# By default two things differ from stock Flower, both for a round's latency: each message's
# ClientApp process is forked from a warm SuperExec that imported torch and Flower once
# (deploy/warm_superexec.py; the app code still comes from the FAB), and the SuperNode polls
# the SuperLink every 0.25 s instead of every 3 s (deploy/supernode_fast_poll.py).
#
# The audit log needs the site key's passphrase: SITE_AGENT_KEY_PASSPHRASE in the environment
# or audit-passphrase-file in the policy.
set -euo pipefail
SUPERLINK="" CA="" KEY="" ROLE="" WS="" PORT=9094 THREADS="" INSECURE=0 STOCK=0 EXTRA=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --make-key)
      command -v ssh-keygen >/dev/null || { echo "error: ssh-keygen not found" >&2; exit 3; }
      [[ -e $2 ]] && { echo "error: $2 exists; refusing to overwrite" >&2; exit 3; }
      mkdir -p "$(dirname "$2")"
      ssh-keygen -t ecdsa -b 384 -N "" -f "$2" -q -C "prostate-fl supernode"
      echo "wrote $2 (keep) and $2.pub (send to the coordinator for \`flwr supernode register\`)"
      exit 0 ;;
    --superlink) SUPERLINK=$2; shift 2 ;;
    --ca) CA=$2; shift 2 ;;
    --key) KEY=$2; shift 2 ;;
    --role) ROLE=$2; shift 2 ;;
    --workspace) WS=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --insecure) INSECURE=1; shift ;;
    --stock-flower) STOCK=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
[[ -n $SUPERLINK && -n $ROLE && -n $WS ]] || { echo "error: --superlink, --role and --workspace are required" >&2; exit 2; }
[[ $ROLE == site || $ROLE == target ]] || { echo "error: --role must be site or target" >&2; exit 2; }
[[ -d $WS ]] || { echo "error: workspace $WS does not exist" >&2; exit 3; }
WS=$(cd "$WS" && pwd)
BIN=${FLWR_BIN:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin}
[[ -x $BIN/flower-supernode ]] || BIN=$(dirname "$(command -v flower-supernode)")
export PATH="$BIN:$PATH"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_HOME=${FLWR_HOME:-$WS/federation/flwr-home}
mkdir -p "$FLWR_HOME"
[[ -z $THREADS || ( $THREADS =~ ^[1-9][0-9]{0,3}$ && $THREADS -le 1024 ) ]] || { echo "error: --threads must be a whole number from 1 to 1024" >&2; exit 2; }
NODE_CONFIG="role='$ROLE' workspace='$WS'${THREADS:+ threads=$THREADS}"
ARGS=(--superlink "$SUPERLINK" --port "$PORT" --node-config "$NODE_CONFIG")
if [[ $INSECURE == 1 ]]; then
  echo "WARNING: --insecure: plain text to the SuperLink and no node authentication;" \
       "use only on a closed test loopback." >&2
  ARGS+=(--insecure)
else
  [[ -r $CA ]] || { echo "error: --ca CA_CERT (the consortium's ca.crt) is required, or --insecure" >&2; exit 2; }
  [[ -r $KEY ]] || { echo "error: --key NODE_KEY (made with --make-key, registered by the coordinator) is required" >&2; exit 2; }
  ARGS+=(--root-certificates "$CA" --auth-supernode-private-key "$KEY")
fi
if [[ $STOCK == 1 ]]; then
  exec "$BIN/flower-supernode" "${ARGS[@]}" "${EXTRA[@]}"
fi
# The SuperNode serves its Runtime API on loopback --port; the warm SuperExec polls it for work
# and ends with the SuperNode (--parent-pid). A signal to this script reaches both.
PY=$BIN/python; [[ -x $PY ]] || PY=python3
HERE=$(cd "$(dirname "$0")" && pwd)
"$PY" "$HERE/supernode_fast_poll.py" "${ARGS[@]}" --isolation process "${EXTRA[@]}" &
NODE=$!
trap 'kill -TERM "$NODE" 2>/dev/null' TERM INT
"$PY" "$HERE/warm_superexec.py" --runtime-api-address "127.0.0.1:$PORT" \
  --insecure --parent-pid "$NODE" &
set +e
wait "$NODE"; rc=$?
while kill -0 "$NODE" 2>/dev/null; do wait "$NODE"; rc=$?; done  # a trap interrupts a wait
exit "$rc"
