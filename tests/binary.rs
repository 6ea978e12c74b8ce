//! The binary as an operator runs it: foreground mode, socket activation, configuration errors and fail-fast
//! start-up. Uses the file backend or the Vault-API test server; no Docker needed.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::driver::{run_once, Driver, BINARY};
use support::plugin_client::{call, call_raw, err_of};
use vault_api_server::{ServerConfig, TestVault};

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
    assert!(driver.log().contains("volume created"), "{}", driver.log());
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

#[test]
fn an_unreachable_vault_fails_fast_and_an_argv_token_is_warned_about_not_echoed() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let started = Instant::now();
    let (code, output) = run_once(
        &[
            "--config",
            "/dev/null",
            "--addr",
            &addr,
            "--backend",
            "vault",
            "--store-opt",
            "token=hvs.argv-secret-value",
        ],
        &[],
    );
    assert_eq!(code, 1, "{output}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(output.contains("cannot be reached"), "{output}");
    assert!(
        output.contains("token_file"),
        "the warning recommends token_file: {output}"
    );
    assert!(!output.contains("hvs.argv-secret-value"), "{output}");
    assert!(
        !output.contains("plain http://"),
        "loopback is not warned about: {output}"
    );
}

#[test]
fn plain_http_to_another_host_is_warned_about_at_start() {
    // TEST-NET-1: never routed, so the start fails after the (short) timeout, having warned first.
    let (code, output) = run_once(
        &[
            "--config",
            "/dev/null",
            "--addr",
            "https://127.0.0.1:1,http://192.0.2.1:8200",
            "--backend",
            "vault",
            "--store-opt",
            "timeout=1s",
        ],
        &[("VAULT_TOKEN", "hvs.plaintext-secret-value")],
    );
    assert_eq!(code, 1, "{output}");
    let warning = output
        .lines()
        .find(|line| line.contains("plain http://"))
        .unwrap_or_else(|| panic!("no plaintext warning: {output}"));
    assert!(warning.contains("http://192.0.2.1:8200"), "{warning}");
    assert!(!warning.contains("127.0.0.1"), "{warning}");
    assert!(!output.contains("hvs.plaintext-secret-value"), "{output}");
}

#[test]
fn a_token_vault_rejects_fails_fast_with_what_to_fix() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let vault = runtime
        .block_on(TestVault::start(ServerConfig::default()))
        .unwrap();
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
