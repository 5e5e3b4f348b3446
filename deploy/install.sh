#!/usr/bin/env bash
# Installs cs-actor on this machine (as root): Debian packages, the binary,
# the systemd units, and example configs in /etc/cs-actor (never overwritten).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
cargo build --release --locked -p cs-actor
install -m 0755 target/release/cs-actor /usr/local/bin/cs-actor
install -m 0644 deploy/systemd/cs-actor-compute.service deploy/systemd/cs-actor-project.service /etc/systemd/system/
install -d -m 0755 /etc/cs-actor /usr/share/doc/cs-actor
install -m 0644 docs/operations.md /usr/share/doc/cs-actor/
for f in compute.toml project.toml; do
    [[ -e /etc/cs-actor/$f ]] || install -m 0644 "deploy/examples/$f" "/etc/cs-actor/$f"
done
[[ -e /etc/cs-actor/tokens ]] || install -m 0600 deploy/examples/tokens /etc/cs-actor/tokens
command -v systemctl >/dev/null && systemctl daemon-reload || true
echo "installed; edit /etc/cs-actor/*.toml, then: systemctl enable --now cs-actor-compute (or cs-actor-project)"
