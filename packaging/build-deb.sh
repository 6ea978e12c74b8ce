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
mkdir -p target/man
target/release/docker-volume-libsecret man | gzip -9n >target/man/docker-volume-libsecret.8.gz
cargo deb --no-build --no-strip -p docker-volume-libsecret --output target/debian/ >/dev/null
ls target/debian/*.deb
