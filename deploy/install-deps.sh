#!/usr/bin/env bash
# Installs what cs-actor, its tests and its bench need on Debian (run as
# root), so that the README's two commands pass on a fresh machine:
# - the services: the union (unionfs-fuse; fuse-overlayfs is a candidate the
#   bench measures beside it), the network filesystem (sshfs,
#   fuse3) and an sshd for the loopback test bed;
# - the tests' user side and the bench's workloads and rivals: git, make and a
#   C compiler (W1), python3 with pip (W3, pip installs as a user), rsync,
#   unison and tar | zstd (S1, S2), useradd and setpriv (tests that act as an
#   unprivileged user).
# Idempotent; quiet when all is present. A test that finds one of these
# missing fails naming it (cs_testbed::require_programs).
set -euo pipefail

packages=(
    unionfs-fuse sshfs fuse3 openssh-server openssh-client fuse-overlayfs
    git make gcc libc6-dev python3 python3-pip rsync unison zstd tar
    passwd util-linux e2fsprogs procps
)
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
# The lint gate of .ci/run (cargo fmt --check, cargo clippy -D warnings).
if command -v rustup >/dev/null; then
    for c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" >/dev/null
    done
fi
