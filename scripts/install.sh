#!/usr/bin/env bash
# Puts `ferry` and `ferry-agent` on PATH: builds them (the dev build the demo
# and the tests share, unless --release) and links them into
# ${PREFIX:-$HOME/.local}/bin. Says so when that folder is not on PATH.
#   scripts/install.sh            # dev build, quick, what the demo runs
#   scripts/install.sh --release  # optimised build (slow: LTO), for real use
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
if [ "${1:-}" = --release ]; then
  profile=release
  cargo build --release --locked --bin ferry --bin ferry-agent
else
  cargo build --locked --bin ferry --bin ferry-agent
fi
bindir="${PREFIX:-$HOME/.local}/bin"
mkdir -p "$bindir"
for b in ferry ferry-agent; do
  ln -sf "$PWD/target/$profile/$b" "$bindir/$b"
  echo "installed $bindir/$b -> target/$profile/$b"
done
case ":$PATH:" in
  *":$bindir:"*) ;;
  *) echo "note: $bindir is not on PATH; add it:  export PATH=\"$bindir:\$PATH\"" ;;
esac
