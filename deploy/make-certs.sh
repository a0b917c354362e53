#!/usr/bin/env bash
# Make the consortium's TLS material with plain openssl: a CA (ca.crt/ca.key) and a SuperLink
# server certificate (server.pem/server.key) signed by it, with SANs for localhost, 127.0.0.1
# and any extra names given.
#
#   deploy/make-certs.sh CERT_DIR [--san DNS:fl.example.org] [--san IP:10.0.0.5] [--days 825]
#
# Keep ca.key offline; give ca.crt to every site (their SuperNodes verify the SuperLink with it)
# and to whoever runs `flwr` / `coordinator federate`. Existing files are never overwritten.
set -euo pipefail
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -ge 1 ]] || usage
OUT=$1; shift
DAYS=825
SANS=("DNS:localhost" "IP:127.0.0.1")
while [[ $# -gt 0 ]]; do
  case $1 in
    --san) SANS+=("$2"); shift 2 ;;
    --days) DAYS=$2; shift 2 ;;
    *) usage ;;
  esac
done
command -v openssl >/dev/null || { echo "error: openssl not found" >&2; exit 3; }
mkdir -p "$OUT"
umask 077
if [[ -e $OUT/ca.key || -e $OUT/server.key ]]; then
  echo "error: $OUT already holds keys; refusing to overwrite (move them away first)" >&2
  exit 3
fi
SAN_LINE=$(IFS=,; echo "${SANS[*]}")
openssl genrsa -out "$OUT/ca.key" 4096 2>/dev/null
openssl req -x509 -new -key "$OUT/ca.key" -sha256 -days "$DAYS" -subj "/CN=prostate-fl consortium CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$OUT/ca.crt"
openssl genrsa -out "$OUT/server.key" 4096 2>/dev/null
openssl req -new -key "$OUT/server.key" -subj "/CN=prostate-fl superlink" -out "$OUT/server.csr"
cat > "$OUT/server.ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$SAN_LINE
EXT
openssl x509 -req -in "$OUT/server.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" -CAcreateserial \
  -days "$DAYS" -sha256 -extfile "$OUT/server.ext" -out "$OUT/server.pem" 2>/dev/null
rm -f "$OUT/server.csr" "$OUT/server.ext" "$OUT/ca.srl"
chmod 644 "$OUT/ca.crt" "$OUT/server.pem"
openssl verify -CAfile "$OUT/ca.crt" "$OUT/server.pem" >/dev/null
echo "wrote $OUT/ca.crt (give to sites), $OUT/server.pem + server.key (SuperLink), $OUT/ca.key (keep offline)"
echo "server SANs: $SAN_LINE"
