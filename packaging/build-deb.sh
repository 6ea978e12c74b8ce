#!/usr/bin/env bash
# Builds the Debian package: target/debian/docker-volume-libsecret_<version>-1_<arch>.deb
#   packaging/build-deb.sh
# Needs cargo-deb (installed with `cargo install cargo-deb --locked` when missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --quiet
# The linker map of the packaged build (build.rs): tests/core_hot_text_order.rs checks packaging/hot-text.order against it.
export LIBSECRET_LINK_MAP="${LIBSECRET_LINK_MAP:-$PWD/target/hot-text.map}"
cargo build --release --quiet -p docker-volume-libsecret
rm -rf target/man target/completions
mkdir -p target/man target/completions
target/release/docker-volume-libsecret man --out-dir target/man
gzip -9nf target/man/*.8
target/release/docker-volume-libsecret completions bash >target/completions/docker-volume-libsecret
target/release/docker-volume-libsecret completions zsh >target/completions/_docker-volume-libsecret
target/release/docker-volume-libsecret completions fish >target/completions/docker-volume-libsecret.fish
cargo deb --no-build --no-strip -p docker-volume-libsecret --output target/debian/ >/dev/null
ls target/debian/*.deb
