#!/usr/bin/env bash
# Validates what can be validated here without a container engine:
# the systemd units with systemd-analyze (against the real built binaries),
# the compose file as YAML with the expected services, the sample configs by
# the binaries' own parsers.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -q -p ferry -p ferry-agent --bins
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for unit in deploy/systemd/*.service; do
  name=$(basename "$unit")
  sed -e "s#/usr/local/bin/ferry-agent#$PWD/target/debug/ferry-agent#" \
      -e "s#/usr/local/bin/ferry #$PWD/target/debug/ferry #" "$unit" > "$tmp/$name"
  out=$(systemd-analyze verify "$tmp/$name" 2>&1 || true)
  if [ -n "$out" ]; then echo "$name: $out" >&2; exit 1; fi
  echo "ok   $name (systemd-analyze verify)"
done
python3 - <<'PY'
import sys
try:
    import yaml
except ImportError:
    sys.exit("pyyaml missing: pip install pyyaml")
doc = yaml.safe_load(open("deploy/compose/compose.yaml"))
want = {"postgres", "minio", "mosquitto", "ferry", "gateway"}
missing = want - set(doc["services"])
if missing:
    sys.exit(f"compose.yaml lacks services {missing}")
print("ok   compose.yaml (YAML, services:", ", ".join(sorted(doc["services"])) + ")")
PY
# The gateway speaks TLS only, with the files gen-tls.sh makes.
grep -q 'listen 8470 ssl;' deploy/compose/nginx.conf || { echo "nginx.conf: the gateway must listen with ssl" >&2; exit 1; }
mkdir -p "$tmp/compose" && cp deploy/compose/gen-tls.sh "$tmp/compose/"
"$tmp/compose/gen-tls.sh" cp.example.com 10.0.0.5 >/dev/null
openssl verify -CAfile "$tmp/compose/tls/ca.pem" "$tmp/compose/tls/server.pem" >/dev/null
openssl x509 -in "$tmp/compose/tls/server.pem" -noout -ext subjectAltName | grep -q 'DNS:cp.example.com, IP Address:10.0.0.5'
echo "ok   gen-tls.sh (a server certificate that verifies against its CA, with the names given)"
if docker compose version >/dev/null 2>&1; then
  FERRY_BOOTSTRAP_TOKEN=x docker compose -f deploy/compose/compose.yaml config -q && echo "ok   compose.yaml (docker compose config)"
else
  echo "skip docker compose config: no compose plugin here (Docker engines do not run on these machines)"
fi
# deploy/agent.toml is parsed by the agent's own config test
# (agent/src/config.rs, include_str!), so a stale key fails `cargo test`.
echo "ok   agent.toml (checked by ferry-agent's config tests)"
