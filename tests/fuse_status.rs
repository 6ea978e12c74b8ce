//! `docker-volume-libsecret status` and the health in `docker volume inspect` (Get's `Status`), with the real
//! binary as the driver (in-process FUSE mounts), real OpenBao sealed and unsealed under it, and the real binary
//! asking the driver's control socket, also as a non-root user and with malformed requests. Needs root, /dev/fuse
//! and OpenBao: it fails, never skips, without them.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::driver::{Driver, BINARY};
use support::openbao::OpenBao;
use support::plugin_client::{call, create_and_mount};
use support::root_only_file;

/// Runs `status` (with `--json` when asked) as `uid` (`None`: root): exit code, stdout, stderr.
fn status(config: &Path, json: bool, uid: Option<u32>) -> (i32, String, String) {
    let mut command = Command::new(BINARY);
    command.arg("--config").arg(config).arg("status");
    if json {
        command.arg("--json");
    }
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `status --json` until `wanted` holds of (exit code, parsed status), within `within`.
fn status_until(config: &Path, within: Duration, wanted: impl Fn(i32, &Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (code, out, err) = status(config, true, None);
        let parsed: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        if wanted(code, &parsed) {
            return parsed;
        }
        assert!(
            Instant::now() < deadline,
            "status never got there within {within:?}: exit {code}\n{out}\n{err}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn get(socket: &Path, volume: &str) -> Value {
    let (_, reply) = call(socket, "/VolumeDriver.Get", json!({ "Name": volume }));
    reply["Volume"]["Status"].clone()
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    socket: PathBuf,
}

impl Setup {
    /// A config with in-process mounts, the control and broker sockets in the test directory, a 1 s refresh and
    /// an hour of stale serving; `backend` is the backend's part.
    fn new(backend: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "mount_mode = \"in-process\"\nbroker_socket = \"{}\"\nstate_dir = \"{}\"\nmount_root = \"{}\"\n\
                 refresh_interval = \"1s\"\nstale_ttl = \"1h\"\n{backend}",
                dir.path().join("run/broker.sock").display(),
                dir.path().join("state").display(),
                dir.path().join("mounts").display(),
            ),
        )
        .unwrap();
        let socket = dir.path().join("plugin.sock");
        Setup {
            dir,
            config,
            socket,
        }
    }

    fn driver(&self) -> Driver {
        Driver::start_with_config(
            &self.config,
            &[],
            &self.socket,
            &self.dir.path().join("driver.log"),
            &[],
        )
    }
}

#[test]
fn status_and_inspect_show_mounts_refreshes_logins_and_vault_and_turn_unhealthy_while_vault_is_sealed(
) {
    support::require_fuse();
    let vault = OpenBao::start();
    vault.kv_put(
        None,
        "secret",
        "app-1/db-password",
        json!({"value": "s3cr3t"}),
    );
    vault.put_policy(
        None,
        "app-1",
        r#"path "secret/data/app-1/*" { capabilities = ["read"] }
path "secret/metadata/app-1/*" { capabilities = ["list"] }
path "secret/metadata/app-1" { capabilities = ["list"] }
"#,
    );
    let token = vault.create_token(None, &["app-1"], "1h");
    let setup = Setup::new("");
    let token_file = root_only_file(setup.dir.path(), "token", &token);
    std::fs::write(
        &setup.config,
        format!(
            "{}backend = \"vault\"\n[vault]\naddr = \"{}\"\ntimeout = \"2s\"\ntoken_file = \"{}\"\n",
            std::fs::read_to_string(&setup.config).unwrap(),
            vault.addr(),
            token_file.display()
        ),
    )
    .unwrap();
    let driver = setup.driver();
    let mountpoint = create_and_mount(&setup.socket, "secret/app-1", json!({}), "c1").unwrap();
    assert_eq!(
        std::fs::read_to_string(mountpoint.join("db-password")).unwrap(),
        "s3cr3t"
    );

    // Healthy: a refresh has read every secret in use (refresh_interval is 1 s).
    let healthy = status_until(&setup.config, Duration::from_secs(10), |code, s| {
        code == 0 && !s["volumes"][0]["mounts"][0]["health"]["last_refresh"].is_null()
    });
    let volume = &healthy["volumes"][0];
    assert_eq!(volume["name"], "secret/app-1", "{healthy:#}");
    assert_eq!(volume["mount_count"], 1, "{healthy:#}");
    assert_eq!(
        volume["mounts"][0]["unit"],
        Value::Null,
        "served in-process"
    );
    assert_eq!(healthy["mount_mode"], "in-process");
    assert_eq!(healthy["vault"]["node"], vault.addr());
    assert_eq!(healthy["vault"]["reachable"], true);
    let login = &healthy["logins"][0];
    assert_eq!(login["scope"], "[vault]");
    assert_eq!(login["logged_in"], true);
    let ttl = login["token_ttl"].as_u64().unwrap();
    let renewal = login["next_renewal"].as_u64().unwrap();
    assert!((3000..=3600).contains(&ttl), "{login}");
    assert!(renewal < ttl, "{login}");
    assert_eq!(healthy["problems"], json!([]));
    assert!(
        !healthy.to_string().contains(&token),
        "the token is in the status"
    );
    let (code, text, _) = status(&setup.config, false, None);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("): healthy;"), "{text}");
    assert!(text.contains("secret/app-1: 1 mount(s)"), "{text}");
    assert!(text.contains("last refresh 20"), "{text}");
    assert!(text.contains("token TTL"), "{text}");

    let inspect = get(&setup.socket, "secret/app-1");
    assert_eq!(inspect["Mounts"], 1, "{inspect}");
    assert_eq!(inspect["Healthy"], true, "{inspect}");
    assert_eq!(inspect["Stale"], false, "{inspect}");
    assert!(
        inspect["LastRefresh"].as_str().unwrap().starts_with("20"),
        "{inspect}"
    );

    // Sealed: values come from memory, the mount says so, and the driver is unhealthy.
    vault.seal();
    let sealed = status_until(&setup.config, Duration::from_secs(15), |code, s| {
        code == 1 && s["volumes"][0]["mounts"][0]["health"]["stale"] == true
    });
    let problems = sealed["problems"].to_string();
    assert!(
        problems.contains("volume secret/app-1: serving values from memory"),
        "{sealed:#}"
    );
    assert!(problems.contains("cannot be used"), "{sealed:#}");
    assert_eq!(sealed["vault"]["reachable"], false, "{sealed:#}");
    let inspect = get(&setup.socket, "secret/app-1");
    assert_eq!(
        (&inspect["Stale"], &inspect["Healthy"]),
        (&json!(true), &json!(false)),
        "{inspect}"
    );
    assert_eq!(
        std::fs::read_to_string(mountpoint.join("db-password")).unwrap(),
        "s3cr3t",
        "served from memory"
    );
    let (code, text, _) = status(&setup.config, false, None);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("UNHEALTHY") && text.contains("STALE"),
        "{text}"
    );
    // A version never read has no value in memory: its lookup fails, and that is the last error.
    let missing = std::fs::read_to_string(mountpoint.join("db-password@1")).unwrap_err();
    assert_eq!(missing.raw_os_error(), Some(nix::libc::EIO), "{missing}");
    let inspect = get(&setup.socket, "secret/app-1");
    let error = inspect["LastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("looking up secret/app-1/db-password@1: Vault unavailable"),
        "{inspect}"
    );

    // Unsealed: healthy again without a restart.
    vault.unseal();
    status_until(&setup.config, Duration::from_secs(30), |code, s| {
        code == 0 && s["volumes"][0]["mounts"][0]["health"]["stale"] == false
    });
    let inspect = get(&setup.socket, "secret/app-1");
    assert_eq!(inspect["Healthy"], true, "{inspect}");
    drop(driver);
}

/// One request line to the control socket and the reply line.
fn exchange(socket: &Path, request: &[u8]) -> String {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream.write_all(request).unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).unwrap();
    reply
}

#[test]
fn the_control_socket_refuses_non_root_peers_and_malformed_requests_and_the_driver_keeps_serving() {
    support::require_fuse();
    let setup = Setup::new("backend = \"file\"\n");
    let secrets = root_only_file(setup.dir.path(), "secrets.toml", "\"secret/x/k\" = \"v\"\n");
    std::fs::write(
        &setup.config,
        format!(
            "{}[file]\npath = \"{}\"\n",
            std::fs::read_to_string(&setup.config).unwrap(),
            secrets.display()
        ),
    )
    .unwrap();
    // The config is readable by nobody, so a non-root `status` gets as far as the socket.
    std::fs::set_permissions(setup.dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&setup.config, PermissionsExt::from_mode(0o644)).unwrap();
    let _driver = setup.driver();
    let control = setup.dir.path().join("run/control.sock");
    status_until(&setup.config, Duration::from_secs(10), |code, _| code == 0);
    let mode = std::fs::metadata(&control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the control socket is root-only");

    // A non-root user cannot reach the socket at all.
    let (code, _, err) = status(&setup.config, false, Some(65534));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("cannot be reached") && err.contains("ermission denied"),
        "{err}"
    );
    // A careless operator opens the directory and the socket to everyone: the peer's uid still decides.
    std::fs::set_permissions(control.parent().unwrap(), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&control, PermissionsExt::from_mode(0o666)).unwrap();
    let (code, out, err) = status(&setup.config, false, Some(65534));
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("answers root only") && err.contains("uid 65534"),
        "{err}"
    );
    assert!(
        out.is_empty(),
        "nothing of the status reached uid 65534: {out}"
    );

    // Malformed requests: each gets an error saying what is wrong.
    let reply = exchange(&control, b"hello\n");
    assert!(reply.contains("not a control request"), "{reply}");
    let reply = exchange(&control, &vec![b'{'; 100_000]);
    assert!(reply.contains("longer than"), "{reply}");
    let reply = exchange(
        &control,
        br#"{"report": {"unit": "../../etc/passwd", "volume": "v", "health": {"last_refresh": null, "stale": false, "last_error": null, "last_error_at": null}}}
"#,
    );
    assert!(reply.contains("is not a mount unit's name"), "{reply}");
    // A peer that connects and goes away, or sends half a line.
    drop(std::os::unix::net::UnixStream::connect(&control).unwrap());
    let mut half = std::os::unix::net::UnixStream::connect(&control).unwrap();
    half.write_all(b"{\"sta").unwrap();
    drop(half);

    // The driver keeps serving: the plugin API, a mount, and status.
    let mountpoint = create_and_mount(&setup.socket, "secret/x", json!({}), "c1").unwrap();
    assert_eq!(std::fs::read_to_string(mountpoint.join("k")).unwrap(), "v");
    let after = status_until(&setup.config, Duration::from_secs(5), |code, _| code == 0);
    assert_eq!(after["backend"], "file");
    assert_eq!(after["vault"], Value::Null);
    assert_eq!(after["volumes"][0]["mount_count"], 1, "{after:#}");
}
