//! Helpers for Docker end-to-end tests. The Docker engine and the test image are prepared by
//! `scripts/setup-test-host.sh`; tests that need them never skip: they panic, naming that script.
#![allow(dead_code)]

use std::process::{Command, Stdio};

/// A busybox image built locally by `scripts/setup-test-host.sh` (`docker import`; there is
/// no image registry to pull from).
pub const TEST_IMAGE: &str = "libsecret-test/busybox:latest";

/// Panics loudly (never skips) if `docker info` fails or [`TEST_IMAGE`] is missing.
pub fn require_docker() {
    let (code, out, err) = docker(&["info", "--format", "{{.ServerVersion}}"]);
    if code != 0 || out.trim().is_empty() {
        panic!(
            "the Docker engine is not usable (`docker info` exited {code}): {}{}\n\
             run scripts/setup-test-host.sh (as root) to install and start dockerd",
            out.trim(),
            err.trim()
        );
    }
    let (code, _out, err) = docker(&["image", "inspect", "--format", "{{.Id}}", TEST_IMAGE]);
    if code != 0 {
        panic!(
            "the test image {TEST_IMAGE} is missing (`docker image inspect` exited {code}: {})\n\
             run scripts/setup-test-host.sh (as root) to build it",
            err.trim()
        );
    }
}

/// Runs `docker <args>` and returns (exit code, stdout, stderr). The exit code is -1 if the
/// process was killed by a signal. Panics if `docker` cannot be run at all.
pub fn docker(args: &[&str]) -> (i32, String, String) {
    let output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `docker {}`: {e}\nrun scripts/setup-test-host.sh (as root) to install Docker",
                args.join(" ")
            )
        });
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Like [`docker`], but panics with the full output unless the command exits 0; returns stdout.
pub fn docker_ok(args: &[&str]) -> String {
    let (code, out, err) = docker(args);
    if code != 0 {
        panic!(
            "`docker {}` exited {code}\n--- stdout ---\n{out}\n--- stderr ---\n{err}",
            args.join(" ")
        );
    }
    out
}
