#!/usr/bin/env bash
# Makes the TLS files the compose setup's gateway mounts
# (deploy/compose/tls/): a private CA, and one certificate for the
# gateway's public name(s). Run once before `docker compose up`:
#   deploy/compose/gen-tls.sh cp.example.com [more names or IPs…]
# Operators then log in with the CA:
#   ferry login --server https://cp.example.com:8470 --token TOKEN --ca deploy/compose/tls/ca.pem
# Use a certificate from your own CA instead by putting server.pem,
# server.key and ca.pem there yourself. Existing files are never overwritten.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p tls
cd tls
if [ -e server.pem ] || [ -e server.key ] || [ -e ca.key ]; then
  echo "deploy/compose/tls already holds certificates; remove them to make new ones" >&2
  exit 1
fi
names=("${@:-localhost}")
san=""
for n in "${names[@]}"; do
  if [[ "$n" =~ ^[0-9.]+$ || "$n" == *:* ]]; then k=IP; else k=DNS; fi
  san="${san:+$san,}$k:$n"
done
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
  -subj "/CN=Ferry control plane CA" -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=${names[0]}" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$san" > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
  -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
# Certificates are public; the key stays owner-only (nginx's master
# process reads it as the container's root before dropping privileges).
chmod 0644 ca.pem server.pem
chmod 0600 server.key ca.key
echo "wrote deploy/compose/tls/{ca.pem,server.pem,server.key} for $san (keep ca.key offline)"
