#!/usr/bin/env bash
# The product's main job, end to end, on a fresh Debian 12 machine (run as root):
#   builds the driver, prepares Docker and OpenBao (the open-source Vault), starts `bao server -dev` on loopback,
#   stores a secret in it,
#   starts the driver the way the original tool was started, and runs a container that prints the secret.
# Everything it starts is stopped again at the end.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Preparing the host (packages, dockerd, a local busybox image, OpenBao at /usr/local/bin/bao; no registry needed)"
SKIP_RVAULT=1 SKIP_SYSTEMD_HOST=1 bash scripts/setup-test-host.sh

say "Building docker-volume-libsecret"
cargo build --release --quiet -p docker-volume-libsecret

work=$(mktemp -d)
cleanup() {
    docker volume rm -f secret/app-1/ >/dev/null 2>&1 || true
    [[ -n "${driver_pid:-}" ]] && kill "$driver_pid" 2>/dev/null && wait "$driver_pid" 2>/dev/null
    [[ -n "${vault_pid:-}" ]] && kill "$vault_pid" 2>/dev/null && wait "$vault_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

say "Starting OpenBao in dev mode on loopback: bao server -dev (in memory, unsealed, KV v2 at secret/)"
# A free port whose successor is free too (dev mode also binds a cluster listener on the next port).
port=$(python3 -c '
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", port + 1)); break
    except OSError:
        pass
    finally:
        s.close(); t.close()
print(port)')
VAULT_ADDR="http://127.0.0.1:$port"
VAULT_TOKEN="demo-root-$RANDOM$RANDOM"
# The root token goes through the environment, not argv (ps would show it); -dev-no-store-token keeps it out of
# ~/.vault-token.
BAO_DEV_ROOT_TOKEN_ID="$VAULT_TOKEN" /usr/local/bin/bao server -dev -dev-listen-address="127.0.0.1:$port" \
    -dev-no-store-token >"$work/vault.log" 2>&1 &
vault_pid=$!
for _ in $(seq 1 200); do curl -fs "$VAULT_ADDR/v1/sys/health" >/dev/null && break; sleep 0.1; done
curl -fs "$VAULT_ADDR/v1/sys/health" >/dev/null || { tail -n 20 "$work/vault.log"; echo "OpenBao did not start" >&2; exit 1; }
echo "VAULT_ADDR=$VAULT_ADDR ($(/usr/local/bin/bao version))"

say "Storing secret/app-1/db-password in Vault"
# A fresh KV v2 mount refuses writes for a moment while it upgrades: retry briefly.
for _ in $(seq 1 50); do
    curl -fsS -X POST -H "X-Vault-Token: $VAULT_TOKEN" -d '{"data":{"value":"correct-horse-battery-staple"}}' \
        "$VAULT_ADDR/v1/secret/data/app-1/db-password" >/dev/null 2>&1 && stored=1 && break
    sleep 0.1
done
[[ -n "${stored:-}" ]] || { echo "could not store the secret in OpenBao" >&2; exit 1; }
echo "stored"

say "Starting the driver: docker-volume-libsecret --addr \$VAULT_ADDR --backend vault --store-opt token_file=..."
# token_file keeps the token out of argv (ps); --store-opt token=\$VAULT_TOKEN works too, with a warning.
umask 077
printf '%s\n' "$VAULT_TOKEN" >"$work/token"
target/release/docker-volume-libsecret --config /dev/null --addr "$VAULT_ADDR" --backend vault \
    --store-opt "token_file=$work/token" --state-dir "$work/state" 2>"$work/driver.log" &
driver_pid=$!
for _ in $(seq 1 50); do [[ -S /run/docker/plugins/libsecret.sock ]] && grep -q ready "$work/driver.log" && break; sleep 0.1; done
cat "$work/driver.log"

say "docker run --rm --volume-driver libsecret -v secret/app-1/:/secrets libsecret-test/busybox ..."
docker run --rm --volume-driver libsecret -v secret/app-1/:/secrets libsecret-test/busybox:latest sh -c '
    echo "$ ls -la /secrets            # listing reveals nothing"; ls -la /secrets
    echo "$ cat /secrets/db-password"; cat /secrets/db-password; echo
    echo "$ echo x > /secrets/db-password"; sh -c "echo x > /secrets/db-password" 2>&1 || true'

say "Driver log (one line per plugin call; no secret values)"
tail -n +3 "$work/driver.log"
