#!/usr/bin/env bash
# The README's main job: cs-actor for real on one machine.
#
#   a project home  <- a broker on that home  <- websocket on 127.0.0.1 <- the compute
#   service, whose merged view (kernel overlayfs) is a demo home over the project's
#   replica (the default lower: the project's metadata on a loop image of its own, each
#   file's content fetched over the websocket at its first open; docs/operations.md).
#
# DEMO_LOWER=sshfs shows the older lower instead: the project home read through sshfs
# from an sshd on 127.0.0.1 (own port, own keys).
#
# It writes a file on each side, shows it arriving on the other, prints
# `cs-actor status`, and stops everything it started (by pid) on exit.
# Usage: [DEMO_LOWER=replica|sshfs] bash deploy/demo.sh [DIR]   (default: a new temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh
cargo build --release -q -p cs-actor
bin=$PWD/target/release/cs-actor

root=${1:-$(mktemp -d /tmp/cs-actor-demo.XXXXXX)}
mkdir -p "$root"
root=$(cd "$root" && pwd)
echo "demo in $root"
home=$root/project-home
c=$root/compute
lower_kind=${DEMO_LOWER:-replica}
case $lower_kind in
replica | sshfs) ;;
*) echo "DEMO_LOWER must be replica or sshfs, not $lower_kind" >&2; exit 2 ;;
esac
mkdir -p "$home" "$c"/{merged,upper,state}
if [ "$lower_kind" = sshfs ]; then mkdir -p "$c/lower"; fi
pids=()
cleanup() {
    set +e
    # Newest first: the compute service makes its last round while the
    # broker and sshd are still up, then unmounts.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        p=${pids[i]}
        kill -TERM "$p" 2>/dev/null
        for _ in $(seq 1 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
    done
    # After a killed service: the union, then its lower (sshfs, or the replica's tree
    # bound at STATE/replica/lower), then the replica's image. An orderly stop leaves none.
    for m in "$c/merged" "$c/lower" "$c/state/replica/lower" "$c/state/replica/fs"; do
        grep -q " $m " /proc/self/mountinfo && umount -l "$m"
    done
    # The service leaves the bare mount point immutable (docs/operations.md): lift that so
    # that the demo's directory can be deleted.
    chattr -i "$c/merged" 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ "$lower_kind" = sshfs ]; then
    mkdir -p "$root/sshd" /run/sshd
    # sshd on loopback, its own port and keys, key login for this user only.
    ssh-keygen -q -t ed25519 -N '' -f "$root/sshd/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$root/sshd/client_key"
    ssh_port=$(free_port)
    cat > "$root/sshd/sshd_config" <<CFG
ListenAddress 127.0.0.1
Port $ssh_port
HostKey $root/sshd/host_key
AuthorizedKeysFile $root/sshd/client_key.pub
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $root/sshd/sshd.pid
Subsystem sftp internal-sftp
CFG
    /usr/sbin/sshd -D -e -f "$root/sshd/sshd_config" 2>"$root/sshd/log" &
    pids+=($!)
fi

# Tokens: the broker's table and the compute server's own file, both 0600.
token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
umask 077
echo "gpu-1 $token" > "$root/tokens"
echo "$token" > "$c/token"
umask 022

echo "hello from the project" > "$home/README"
broker_port=$(free_port)
"$bin" project --home "$home" --listen "127.0.0.1:$broker_port" --tokens "$root/tokens" \
    --state "$root/broker-state" --control-socket "$root/project.sock" 2>"$root/broker.log" &
pids+=($!)

if [ "$lower_kind" = sshfs ]; then
    user=$(id -un)
    lower_cmd="sshfs -f $user@127.0.0.1:$home $c/lower -p $ssh_port -o IdentityFile=$root/sshd/client_key \
-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR \
-o reconnect,ServerAliveInterval=5,ServerAliveCountMax=3 \
-o dir_cache=yes,dcache_timeout=9,entry_timeout=1,attr_timeout=1,negative_timeout=10,auto_cache"
    lower_args=(--lower-mount-cmd "$lower_cmd" --lower-mountpoint "$c/lower")
else
    # No lower given: the project's replica, in STATE/replica (the default). A 1 GiB
    # sparse image: the demo's project is a few files.
    lower_args=(--replica-size-gib 1)
fi
"$bin" compute --server "ws://127.0.0.1:$broker_port" --id gpu-1 --token-file "$c/token" \
    --merged "$c/merged" --upper "$c/upper" --state "$c/state" "${lower_args[@]}" \
    --control-socket "$c/control.sock" --interval 5 2>"$c/compute.log" &
pids+=($!)

for _ in $(seq 1 150); do
    "$bin" status --control-socket "$c/control.sock" --json 2>/dev/null | grep -q '"phase": "idle"' && break
    sleep 0.2
done

echo
echo "== the project's README, read through the compute server's merged view:"
cat "$c/merged/README"

echo
echo "== the compute server writes results/out.txt; one round later the project has it:"
mkdir -p "$c/merged/results"
echo "computed on the GPU box" > "$c/merged/results/out.txt"
"$bin" sync --wait --control-socket "$c/control.sock"
cat "$home/results/out.txt"

echo
echo "== the project edits that file; one round later the compute server sees the edit:"
echo "edited on the project" > "$home/results/out.txt"
"$bin" sync --wait --control-socket "$c/control.sock"
cat "$c/merged/results/out.txt"

echo
echo "== cs-actor status (compute server):"
"$bin" status --control-socket "$c/control.sock"
echo
echo "== cs-actor status (project broker):"
"$bin" status --control-socket "$root/project.sock"
echo
echo "logs: $c/compute.log $root/broker.log; stopping (a last round, then unmount)"
