//! The binary as an operator runs it: foreground mode, socket activation, configuration errors, bad credentials
//! failing fast in the foreground, and a Vault that is down or rejects the credentials at start. Uses the file backend or
//! a real OpenBao (tests/support/openbao.rs); only the Vault that stops listening and comes back on the same address
//! is the home-made server's (a fault OpenBao cannot produce on command). No Docker needed.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::driver::{run_once, Driver, BINARY};
use support::openbao::OpenBao;
use support::plugin_client::{call, call_raw, err_of};

fn secrets_file(dir: &Path) -> String {
    let path = dir.join("secrets.toml");
    std::fs::write(&path, "\"secret/app-1/db-password\" = \"s3cr3t\"\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

#[test]
fn foreground_mode_binds_a_root_only_socket_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("plugin.sock");
    let secrets = secrets_file(dir.path());
    let state = dir.path().join("state");
    let mut driver = Driver::start(
        &[
            "--backend",
            "file",
            "--secrets-file",
            &secrets,
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &socket,
        &dir.path().join("log"),
    );
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Secrets stay in memory: no core dumps, and memory locked against swap (this runs as root).
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", driver.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(
        core.split_whitespace().skip(4).take(2).all(|v| v == "0"),
        "{core}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", driver.pid())).unwrap();
    let locked_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(locked_kb > 0, "no locked memory:\n{status}");
    let (_, reply) = call_raw(&socket, "/Plugin.Activate", b"");
    assert_eq!(reply, json!({"Implements": ["VolumeDriver"]}));
    let (_, reply) = call(
        &socket,
        "/VolumeDriver.Create",
        json!({"Name": "secret/app-1"}),
    );
    assert_eq!(err_of(&reply), "");

    // Even with the socket's mode loosened, a user other than root gets no answer: peer credentials are checked.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let output = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-sS",
            "--unix-socket",
        ])
        .arg(&socket)
        .args(["-X", "POST", "http://plugin/VolumeDriver.List"])
        .output()
        .expect("setpriv and curl (util-linux, curl) are needed");
    let answer = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success() && !answer.contains("secret/app-1"),
        "{answer}"
    );
    assert!(
        driver.log().contains("refused a plugin socket connection"),
        "{}",
        driver.log()
    );
    assert!(driver.log().contains("uid 65534"), "{}", driver.log());

    assert!(driver.stop(), "{}", driver.log());
    assert!(!socket.exists(), "the socket is removed at exit");
    let records: Vec<_> = std::fs::read_dir(state.join("volumes")).unwrap().collect();
    assert_eq!(records.len(), 1, "the volume record persists");
    assert!(
        driver.log().contains("volume secret/app-1 created"),
        "{}",
        driver.log()
    );
}

#[test]
fn socket_activation_serves_the_inherited_listener() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let unused = dir.path().join("never-bound.sock");
    let secrets = secrets_file(dir.path());
    let state = dir.path().join("state");
    let child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .args([
            BINARY,
            "--config",
            "/dev/null",
            "--backend",
            "file",
            "--secrets-file",
            &secrets,
        ])
        .args([
            "--state-dir",
            state.to_str().unwrap(),
            "--socket",
            unused.to_str().unwrap(),
        ])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (package systemd) is needed for this test");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first connection starts the driver, which must take the inherited socket, not bind its own.
    let (status, reply) = call_raw(&socket, "/Plugin.Activate", b"");
    assert_eq!(
        (status, reply),
        (200, json!({"Implements": ["VolumeDriver"]}))
    );
    let (_, caps) = call(&socket, "/VolumeDriver.Capabilities", json!({}));
    assert_eq!(caps["Capabilities"]["Scope"], "local");
    assert!(!unused.exists(), "an activated driver binds nothing itself");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("socket_activated=true"), "{log}");
}

/// Under socket activation the call that started a driver with an invalid config is answered before the driver
/// exits 78. Left queued, it would make systemd start the driver again after every exit, until the socket gives
/// up with start-limit-hit and Docker loses the plugin.
#[test]
fn an_invalid_config_answers_the_queued_call_and_exits_78_once() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "token = \"s.secret-value\"\nbogus_key = 1\n").unwrap();
    let child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .args([BINARY, "--config", config.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (package systemd) is needed for this test");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, reply) = call_raw(&socket, "/VolumeDriver.List", b"{}");
    assert_eq!(status, 500, "{reply}");
    let message = reply["Err"].as_str().unwrap_or_default();
    assert!(
        message.contains("configuration is invalid") && message.contains("journalctl"),
        "{reply}"
    );
    assert!(
        !message.contains("secret-value") && !message.contains("bogus_key"),
        "{reply}"
    );
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{log}");
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("invalid configuration"))
            .count(),
        1,
        "{log}"
    );
}

#[test]
fn an_unknown_config_key_fails_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[vault]\naddr = \"http://127.0.0.1:8200\"\ntoken_fiel = \"/etc/x\"\n",
    )
    .unwrap();
    let (code, output) = run_once(&["--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 78, "EX_CONFIG: {output}");
    assert!(output.contains(config.to_str().unwrap()), "{output}");
    assert!(output.contains("vault.token_fiel"), "{output}");
    assert_eq!(output.lines().count(), 1, "one line: {output}");

    let (code, output) = run_once(&["--config", "/nonexistent/config.toml"], &[]);
    assert_eq!(code, 78);
    assert!(output.contains("/nonexistent/config.toml"), "{output}");
}

/// The errno reading `path` fails with, if it fails.
fn read_errno(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .err()
        .and_then(|e| e.raw_os_error())
}

#[test]
fn an_unreachable_vault_at_start_leaves_the_plugin_api_up_and_reads_recover_without_a_restart() {
    support::require_fuse();
    // Nothing listens on the address at start; OpenBao comes up there later, with the token the driver was given.
    let port = OpenBao::reserve_port();
    let addr = format!("http://127.0.0.1:{port}");
    // (OpenBao refuses root token IDs with a token prefix such as `hvs.`.)
    let root_token = "argv-secret-value";
    let dir = tempfile::tempdir().unwrap();
    let token_opt = format!("token={root_token}");
    let mount_root = dir.path().join("mounts");
    let state = dir.path().join("state");
    let driver = Driver::start(
        &[
            "--addr",
            &addr,
            "--backend",
            "vault",
            "--store-opt",
            &token_opt,
            "--store-opt",
            "timeout=1s",
            "--root",
            mount_root.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &dir.path().join("plugin.sock"),
        &dir.path().join("log"),
    );
    let log = driver.log();
    assert!(log.contains("cannot be reached"), "{log}");
    assert!(log.contains("serving the plugin API anyway"), "{log}");
    assert!(
        log.contains("token_file"),
        "the argv warning recommends token_file: {log}"
    );
    assert!(
        !log.contains("plain http://"),
        "loopback is not warned about: {log}"
    );

    // Get, List, Create and Mount never need Vault; reads wait for it.
    let (_, reply) = call(&driver.socket, "/VolumeDriver.List", json!({}));
    assert_eq!(err_of(&reply), "", "{reply}");
    let mountpoint =
        support::plugin_client::create_and_mount(&driver.socket, "secret/app-1", json!({}), "c1")
            .unwrap();
    let secret = mountpoint.join("db-password");
    assert_eq!(
        read_errno(&secret),
        Some(nix::libc::EIO),
        "EIO while Vault is down"
    );

    let vault = OpenBao::start_on(port, root_token);
    assert_eq!(vault.addr(), addr);
    vault.kv_put(
        None,
        "secret",
        "app-1/db-password",
        json!({"value": "s3cr3t"}),
    );
    support::wait_until(
        "the read after Vault came back",
        Duration::from_secs(20),
        || std::fs::read_to_string(&secret).is_ok_and(|value| value == "s3cr3t"),
    );
    let log = driver.log();
    assert!(log.contains("Vault token accepted"), "{log}");
    assert!(
        log.contains("Vault is reachable again"),
        "a recovery line: {log}"
    );
    assert!(
        !log.contains(vault.root_token()),
        "the token is never logged: {log}"
    );
    let (_, reply) = call(
        &driver.socket,
        "/VolumeDriver.Unmount",
        json!({"Name": "secret/app-1", "ID": "c1"}),
    );
    assert_eq!(err_of(&reply), "", "{reply}");
}

#[test]
fn plain_http_to_another_host_is_warned_about_at_start() {
    // TEST-NET-1: never routed, so the first login times out (the driver serves on), having warned first.
    let dir = tempfile::tempdir().unwrap();
    let driver = Driver::start_with_env(
        &[
            "--addr",
            "https://127.0.0.1:1,http://192.0.2.1:8200",
            "--backend",
            "vault",
            "--store-opt",
            "timeout=1s",
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
        ],
        &dir.path().join("plugin.sock"),
        &dir.path().join("log"),
        &[("VAULT_TOKEN", "hvs.plaintext-secret-value")],
    );
    // The plugin socket accepts before the driver has built its Vault client (which warns): wait for the line.
    support::wait_until("the plaintext warning", Duration::from_secs(10), || {
        driver.log().contains("plain http://")
    });
    let output = driver.log();
    let warning = output
        .lines()
        .find(|line| line.contains("plain http://"))
        .unwrap_or_else(|| panic!("no plaintext warning: {output}"));
    assert!(warning.contains("http://192.0.2.1:8200"), "{warning}");
    assert!(!warning.contains("127.0.0.1"), "{warning}");
    assert!(!output.contains("hvs.plaintext-secret-value"), "{output}");
}

/// sd_notify messages the driver sends to a `NOTIFY_SOCKET` the test holds.
struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Waits up to `deadline` for a message with a line satisfying `wanted`; returns that line.
    fn wait_for(&mut self, deadline: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        let mut buffer = [0u8; 4096];
        loop {
            if let Some(line) = self.seen.iter().find(|line| wanted(line)) {
                return line.clone();
            }
            assert!(
                started.elapsed() < deadline,
                "no such sd_notify message; got {:?}",
                self.seen
            );
            if let Ok(length) = self.socket.recv(&mut buffer) {
                let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
                self.seen.extend(text.lines().map(str::to_owned));
            }
        }
    }
}

#[test]
fn under_systemd_rejected_credentials_leave_the_api_up_and_a_fixed_token_file_takes_effect() {
    support::require_fuse();
    let vault = OpenBao::start();
    vault.kv_put(
        None,
        "secret",
        "app-1/db-password",
        json!({"value": "s3cr3t"}),
    );
    let dir = tempfile::tempdir().unwrap();
    let token_file = support::root_only_file(dir.path(), "token", "hvs.wrong-token-value");
    let mut notify = NotifySocket::bind(dir.path());
    let mount_root = dir.path().join("mounts");
    let driver = Driver::start_with_env(
        &[
            "--addr",
            &vault.addr(),
            "--store-opt",
            &format!("token_file={}", token_file.display()),
            "--store-opt",
            "timeout=1s",
            "--root",
            mount_root.to_str().unwrap(),
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
        ],
        &dir.path().join("plugin.sock"),
        &dir.path().join("log"),
        &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())],
    );
    notify.wait_for(Duration::from_secs(5), |line| line == "READY=1");
    let status = notify.wait_for(Duration::from_secs(20), |line| {
        line.starts_with("STATUS=") && line.contains("rejects the credentials since")
    });
    assert!(status.contains("token_file"), "{status}");
    let log = driver.log();
    assert!(log.contains("Vault rejects the credentials"), "{log}");
    assert!(!log.contains("hvs.wrong-token-value"), "{log}");

    let (_, reply) = call(&driver.socket, "/VolumeDriver.List", json!({}));
    assert_eq!(err_of(&reply), "", "{reply}");
    let mountpoint =
        support::plugin_client::create_and_mount(&driver.socket, "secret/app-1", json!({}), "c1")
            .unwrap();
    let secret = mountpoint.join("db-password");
    assert_eq!(read_errno(&secret), Some(nix::libc::EIO));

    // The operator fixes the file; nothing is restarted.
    support::root_only_file(dir.path(), "token", vault.root_token());
    support::wait_until(
        "the read after the token file was fixed",
        Duration::from_secs(20),
        || std::fs::read_to_string(&secret).is_ok_and(|value| value == "s3cr3t"),
    );
    assert!(
        driver.log().contains("Vault accepts the credentials now"),
        "{}",
        driver.log()
    );
    let (_, reply) = call(
        &driver.socket,
        "/VolumeDriver.Unmount",
        json!({"Name": "secret/app-1", "ID": "c1"}),
    );
    assert_eq!(err_of(&reply), "", "{reply}");
}

#[test]
fn a_token_vault_rejects_fails_fast_with_what_to_fix() {
    let vault = OpenBao::start();
    let (code, output) = run_once(
        &[
            "--config",
            "/dev/null",
            "--addr",
            &vault.addr(),
            "--socket",
            "/tmp/unused.sock",
        ],
        &[("VAULT_TOKEN", "hvs.wrong-token")],
    );
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("rejected the token"), "{output}");
    assert!(!output.contains("hvs.wrong-token"), "{output}");
}

/// The package ships a man page per command and completions for bash, zsh and fish, made by these two hidden
/// commands at build time (packaging/build-deb.sh).
#[test]
fn completions_and_man_pages_cover_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out) = run_once(&["completions", shell], &[]);
        assert_eq!(code, 0, "{shell}: {out}");
        assert!(
            out.contains("check-config") && out.contains("store-opt"),
            "{shell}: {out}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = run_once(&["man", "--out-dir", dir.path().to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}");
    let page = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let main = page("docker-volume-libsecret.8");
    assert!(
        main.starts_with(".ie") || main.contains(".TH docker-volume-libsecret 8"),
        "{main}"
    );
    assert!(main.contains("check\\-config"), "{main}");
    let check = page("docker-volume-libsecret-check-config.8");
    assert!(
        check.contains(".TH docker\\-volume\\-libsecret\\-check\\-config 8")
            || check.contains(".TH docker-volume-libsecret-check-config 8"),
        "{check}"
    );
    assert!(
        check.contains("docker\\-volume\\-libsecret check\\-config"),
        "{check}"
    );
    let status = page("docker-volume-libsecret-status.8");
    assert!(status.contains("control socket"), "{status}");
    let pages: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(
        pages.len(),
        3,
        "the program, check-config and status; hidden commands get no page: {pages:?}"
    );
}
