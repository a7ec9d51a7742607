#!/usr/bin/env bash
# Vendors the dashboard's third-party JavaScript from the npm registry into
# control-plane/assets/vendor/ (committed; compiled into `ferry` with
# include_bytes!, so the dashboard needs no CDN and works air-gapped).
#
# Each package is pinned to an exact version and its tarball checked
# against the SHA-256 written here before anything is copied. To update:
# change the version, run once to see the new tarball's hash, check the
# release notes, write the hash here, run again, commit the files.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=control-plane/assets/vendor

# htmx 2.0.x: the long-lived line (htmx 4 is a rewrite with new defaults).
HTMX_VERSION=2.0.11
HTMX_SHA256=165a2655073e9e6e55e307a7c74e8ebcdb76afb7701f9c16cfd106a13add408e
# uPlot 1.6.x: time-series charts, 50 KB minified, no dependencies (MIT).
UPLOT_VERSION=1.6.32
UPLOT_SHA256=4b8a8191e425658e3ea8c8c1314b0fc679c861ee3a1af2b20c7b16ba50b5133d

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fetch() { # name version sha256 -> unpacks into $tmp/name
  local name=$1 version=$2 sha=$3
  (cd "$tmp" && npm pack "$name@$version" --silent >/dev/null)
  local tgz="$tmp/$name-$version.tgz"
  local got
  got=$(sha256sum "$tgz" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    echo "$name@$version: tarball SHA-256 is $got, expected $sha" >&2
    exit 1
  fi
  mkdir -p "$tmp/$name"
  tar -xzf "$tgz" -C "$tmp/$name"
}

fetch htmx.org "$HTMX_VERSION" "$HTMX_SHA256"
mkdir -p "$dest"
cp "$tmp/htmx.org/package/dist/htmx.min.js" "$dest/htmx.min.js"
cp "$tmp/htmx.org/package/LICENSE" "$dest/htmx.LICENSE"
echo "vendored htmx.org@$HTMX_VERSION into $dest"

fetch uplot "$UPLOT_VERSION" "$UPLOT_SHA256"
cp "$tmp/uplot/package/dist/uPlot.iife.min.js" "$dest/uPlot.iife.min.js"
cp "$tmp/uplot/package/dist/uPlot.min.css" "$dest/uPlot.min.css"
cp "$tmp/uplot/package/LICENSE" "$dest/uPlot.LICENSE"
echo "vendored uplot@$UPLOT_VERSION into $dest"
sha256sum "$dest/htmx.min.js" "$dest/uPlot.iife.min.js" "$dest/uPlot.min.css"
