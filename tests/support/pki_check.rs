//! Checks of PEM certificates with the `openssl` CLI (Debian's `openssl`, installed by
//! `scripts/setup-test-host.sh`), for the tests of OpenBao's PKI engine and of the volumes that serve its
//! certificates. Each check writes its inputs to a temp dir and panics (never skips) if `openssl` cannot run.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Whether the private key `key_pem` belongs to the certificate `cert_pem`: their public keys, as printed by
/// `openssl x509 -noout -pubkey` and `openssl pkey -pubout`, are the same. False when either does not parse.
pub fn cert_matches_key(cert_pem: &str, key_pem: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", cert_pem);
    let key = write(dir.path(), "key.pem", key_pem);
    let from_cert = openssl(&["x509", "-noout", "-pubkey", "-in", &cert]);
    let from_key = openssl(&["pkey", "-pubout", "-in", &key]);
    from_cert.status.success()
        && from_key.status.success()
        && !from_cert.stdout.is_empty()
        && from_cert.stdout == from_key.stdout
}

/// Whether `cert_pem` (a leaf, optionally followed by intermediates, which are then untrusted helpers) verifies
/// against the trust anchor(s) in `ca_pem`: `openssl verify -CAfile ca [-untrusted rest] leaf` succeeds.
pub fn verifies_against(ca_pem: &str, cert_pem: &str) -> bool {
    verify(ca_pem, cert_pem, None)
}

/// [`verifies_against`] at the time `unix_seconds` (`openssl verify -attime`): the chain, and each certificate's
/// validity then, so a certificate read at that time is shown to have been valid when it was read.
pub fn verified_at(ca_pem: &str, cert_pem: &str, unix_seconds: u64) -> bool {
    verify(ca_pem, cert_pem, Some(unix_seconds))
}

fn verify(ca_pem: &str, cert_pem: &str, at: Option<u64>) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", ca_pem);
    let blocks = pem_blocks(cert_pem);
    let Some((leaf, rest)) = blocks.split_first() else {
        return false;
    };
    let leaf = write(dir.path(), "leaf.pem", leaf);
    let mut args = vec!["verify".to_owned(), "-CAfile".to_owned(), ca];
    if let Some(at) = at {
        args.push("-attime".to_owned());
        args.push(at.to_string());
    }
    if !rest.is_empty() {
        args.push("-untrusted".to_owned());
        args.push(write(dir.path(), "untrusted.pem", &rest.concat()));
    }
    args.push(leaf);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    openssl(&args).status.success()
}

/// The `-----BEGIN ...-----` ... `-----END ...-----` blocks of `pem`, each with its trailing newline.
pub fn pem_blocks(pem: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in pem.lines() {
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
        if line.starts_with("-----END ") {
            if let Some(block) = current.take() {
                blocks.push(block);
            }
        }
    }
    blocks
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}): install openssl: scripts/setup-test-host.sh")
        })
}
