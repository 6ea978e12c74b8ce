#!/usr/bin/env bash
# The one command that runs the whole test suite (run as root): `scripts/test.sh`.
# Prepares the host first (packages, dockerd, test image, rvault, OpenBao), then runs
# rustfmt, clippy and every test. Tests share the single plugin socket and the one
# Docker engine, so they run on one thread.
set -euo pipefail

export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup-test-host.sh

echo "[test] cargo fmt --all -- --check"
cargo fmt --all -- --check

echo "[test] cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "[test] building the Debian package (for the systemd host tests)"
bash packaging/build-deb.sh

echo "[test] cargo test --workspace --no-fail-fast -- --test-threads=1"
status=0
cargo test --workspace --no-fail-fast -- --test-threads=1 || status=$?

# The fuzz targets again with many more cases, bounded in time (the suite above ran them with 2000 each).
echo "[test] scripts/fuzz.sh (FUZZ_CASES=${FUZZ_CASES:-10000}, at most ${FUZZ_TIMEOUT:-300}s)"
FUZZ_CASES="${FUZZ_CASES:-10000}" bash scripts/fuzz.sh || status=$?
exit "$status"
