#!/usr/bin/env bash
# The product's main job, end to end, on a fresh Debian 12 machine (run as root):
#   builds the driver and a local Vault-API server, prepares Docker, stores a secret in Vault,
#   starts the driver the way the original tool was started, and runs a container that prints the secret.
# Everything it starts is stopped again at the end.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Preparing the host (packages, dockerd, a local busybox image; no registry needed)"
SKIP_RVAULT=1 SKIP_SYSTEMD_HOST=1 bash scripts/setup-test-host.sh

say "Building docker-volume-libsecret and the Vault-API test server"
cargo build --release --quiet -p docker-volume-libsecret -p vault-api-server

work=$(mktemp -d)
cleanup() {
    docker volume rm -f secret/app-1/ >/dev/null 2>&1 || true
    [[ -n "${driver_pid:-}" ]] && kill "$driver_pid" 2>/dev/null && wait "$driver_pid" 2>/dev/null
    [[ -n "${vault_pid:-}" ]] && kill "$vault_pid" 2>/dev/null && wait "$vault_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

say "Starting a Vault-API server on loopback (KV v2 at secret/)"
VAULT_TOKEN="demo-root-$RANDOM$RANDOM"
target/release/vault-api-server --listen 127.0.0.1:0 --root-token "$VAULT_TOKEN" >"$work/vault.out" 2>"$work/vault.log" &
vault_pid=$!
for _ in $(seq 1 50); do grep -q '^VAULT_ADDR=' "$work/vault.out" 2>/dev/null && break; sleep 0.1; done
VAULT_ADDR=$(sed -n 's/^VAULT_ADDR=//p' "$work/vault.out")
echo "VAULT_ADDR=$VAULT_ADDR"

say "Storing secret/app-1/db-password in Vault"
curl -fsS -X POST -H "X-Vault-Token: $VAULT_TOKEN" \
    -d '{"data":{"value":"correct-horse-battery-staple"}}' "$VAULT_ADDR/v1/secret/data/app-1/db-password" >/dev/null
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
