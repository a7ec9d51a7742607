#!/usr/bin/env bash
# Installs what cross-building ferry-agent needs on a Debian host: Debian's
# rustc-web (1.96) with the aarch64/armhf standard libraries from multiarch
# packages, the cross linkers, and qemu-user to run the results. Idempotent.
#
#   cross/setup.sh [aarch64|armv7|all]     (default: all)
#
# armv7: when the prebuilt armhf std (libstd-rust-web-dev:armhf 1.96, from
# bookworm-security's armhf index, often mid-sync on the mirror) cannot be
# installed, installs rust-web-src instead (the same rustc's library sources,
# an amd64/all package) plus the cross linker and the cross glibc; cross/
# target.py then builds std from source (build_std = "auto" in the target file).
#
# Exit status 3: aarch64 is installed but armv7 could not be by either path.
#
# apt treats all indexes under one Release file as a unit: if one
# architecture's index fails (a mirror mid-sync), the others from the same
# suite are discarded too. So each foreign architecture is added and updated
# on its own, and one that fails is removed again before the next.
set -euo pipefail
which_targets="${1:-all}"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# install_arch DEBARCH PKG... : adds DEBARCH, updates, installs; rolls back on failure.
install_arch() {
  local arch="$1"; shift
  local missing=()
  for p in "$@"; do installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && { echo "cross: $arch toolchain present"; return 0; }
  local added=false
  if [ "$arch" != amd64 ] && ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
    dpkg --add-architecture "$arch"; added=true
  fi
  if apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    return 0
  fi
  echo "cross: could not install the $arch packages (${missing[*]})" >&2
  if $added; then dpkg --remove-architecture "$arch" || true; apt-get update -q || true; fi
  return 1
}

status=0
install_arch amd64 rustc-web cargo-web qemu-user-static
case "$which_targets" in
  aarch64|all)
    install_arch arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross libstd-rust-web-dev:arm64 ;;
esac
all_installed() { for p in "$@"; do installed "$p" || return 1; done; }
version_of() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null; }
armv7_prebuilt=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross libstd-rust-web-dev:armhf)
armv7_source=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross rust-web-src)
case "$which_targets" in
  armv7|all)
    if all_installed "${armv7_prebuilt[@]}"; then
      echo "cross: armv7 toolchain present (prebuilt std)"
    elif all_installed "${armv7_source[@]}"; then
      echo "cross: armv7 toolchain present (std built from rust-web-src)"
    elif ! install_arch armhf "${armv7_prebuilt[@]}"; then
      echo "cross: prebuilt armhf std not installable; installing rust-web-src to build std from source" >&2
      if ! install_arch amd64 "${armv7_source[@]}"; then
        [ "$which_targets" = all ] && status=3 || status=1
      fi
    fi
    # build-std needs the library sources of exactly this rustc.
    if ! all_installed "${armv7_prebuilt[@]}" && installed rust-web-src &&
       [ "$(version_of rust-web-src)" != "$(version_of rustc-web)" ]; then
      echo "cross: rust-web-src $(version_of rust-web-src) does not match rustc-web $(version_of rustc-web)" >&2
      [ "$which_targets" = all ] && status=3 || status=1
    fi ;;
esac
rustc_v=$(/usr/bin/rustc --version 2>/dev/null || echo "rustc-web missing")
echo "cross: $rustc_v"
exit $status
