//! Link options for release builds on x86_64 Linux with glibc, where rustc links with its own LLD (Rust >= 1.90).
//! Hundreds of mount units run this binary, and the resident size of each counts every page of shared code it has
//! mapped, so the layout matters (issue #6, target P5: <= 4 MB per mount unit):
//!
//! - The functions a mount unit runs are placed together (`packaging/hot-text.order`, written by
//!   `packaging/profile-hot-text.sh`). The kernel maps the 64 KiB around each page a process touches, so scattered
//!   code had each unit map ~3.9 MB of the binary's text; together it is ~1.2 MB. Names the file lists but the build
//!   lacks are ignored: a stale file (after a toolchain or dependency update, or new code on the mount path) costs
//!   memory, never correctness, and `cargo bench --bench service` shows it.
//! - Relative relocations are packed (DT_RELR, glibc >= 2.36, hence the package's libc6 dependency): the loader
//!   reads 3 KB of them instead of 290 KB.
//! - The unwinder is linked in (libgcc_eh, as with `-static-libgcc`) instead of loading libgcc_s.so.1. Panics unwind
//!   as before.
use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=packaging/hot-text.order");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    println!("cargo:rerun-if-env-changed=LIBSECRET_LINK_MAP");
    if !default_lld() {
        return;
    }
    let bin = "cargo:rustc-link-arg-bin=docker-volume-libsecret";
    println!("{bin}=-Wl,-z,pack-relative-relocs");
    let order = Path::new(&env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("packaging/hot-text.order");
    if order.is_file() {
        println!("{bin}=-Wl,--symbol-ordering-file={}", order.display());
        println!("{bin}=-Wl,--no-warn-symbol-ordering");
    }
    // Where each function landed, for packaging/profile-hot-text.sh (the shipped binary has no symbols).
    if let Ok(map) = env::var("LIBSECRET_LINK_MAP") {
        println!("{bin}=-Wl,-Map={map}");
    }
    println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
}

/// Whether this is a release build for x86_64-unknown-linux-gnu that rustc links with its own LLD: Rust >= 1.90,
/// and no linker chosen in the Cargo configuration or the flags.
fn default_lld() -> bool {
    let var = |name: &str| env::var(name).unwrap_or_default();
    if var("TARGET") != "x86_64-unknown-linux-gnu" || var("PROFILE") != "release" {
        return false;
    }
    if env::var_os("RUSTC_LINKER").is_some() || var("CARGO_ENCODED_RUSTFLAGS").contains("link") {
        return false;
    }
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let Ok(output) = Command::new(var("RUSTC")).arg("--version").output() else {
        return false;
    };
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|version| version.split('.').nth(1))
        .and_then(|minor| minor.parse::<u32>().ok())
        .is_some_and(|minor| minor >= 90)
}
