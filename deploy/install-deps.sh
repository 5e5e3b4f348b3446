#!/usr/bin/env bash
# Installs what cs-actor and its tests need on Debian (run as root):
# the union (unionfs-fuse), the network filesystem (sshfs, fuse3) and an
# sshd for the loopback test bed. Idempotent; quiet when all is present.
set -euo pipefail

packages=(unionfs-fuse sshfs fuse3 openssh-server openssh-client)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-deps: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [[ ! -e /dev/fuse ]]; then
    echo "install-deps: /dev/fuse is missing: the union and sshfs cannot mount here" >&2
    exit 1
fi
command -v cargo >/dev/null || { echo "install-deps: cargo not found: install Rust (rustup) first" >&2; exit 1; }
