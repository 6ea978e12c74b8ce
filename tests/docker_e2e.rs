//! The real Docker engine running real containers through the plugin socket, with the driver binary started the
//! way the original tool was (`--addr $VAULT_ADDR --backend vault --store-opt token=$VAULT_TOKEN`) against the
//! a real OpenBao (`bao server -dev`, tests/support/openbao.rs; its audit log is the record of what reached Vault).
//! Needs dockerd, the test image and bao (scripts/setup-test-host.sh); fails, never skips.
//!
//! Docker knows the plugin by its socket name, so these tests share `/run/docker/plugins/libsecret.sock` and must
//! run one at a time (scripts/test.sh runs the suite with one test thread).
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use support::docker::{docker, docker_ok, require_docker, TEST_IMAGE};
use support::driver::Driver;
use support::openbao::OpenBao;

const SOCKET: &str = "/run/docker/plugins/libsecret.sock";

/// One test's world: OpenBao, the driver binary, and cleanup of every volume it made.
struct Host {
    _turn: std::sync::MutexGuard<'static, ()>,
    vault: OpenBao,
    driver: Option<Driver>,
    dir: tempfile::TempDir,
    volumes: Vec<String>,
    /// How many times the driver was started (each start logs to its own file).
    launches: usize,
    _runtime: tokio::runtime::Runtime,
}

impl Host {
    fn start() -> Host {
        let mut host = Host::without_driver();
        host.start_driver();
        host
    }

    /// OpenBao with the test secrets and no driver yet. Its root token is random (`root-<32 hex digits>`), so it
    /// cannot appear in a log by accident and the leak checks below mean something.
    fn without_driver() -> Host {
        Host::with_vault(OpenBao::start, tempfile::tempdir().unwrap())
    }

    /// [`without_driver`](Self::without_driver) with the OpenBao `start` makes, in the test directory `dir`.
    fn with_vault(start: impl FnOnce() -> OpenBao, dir: tempfile::TempDir) -> Host {
        // The plugin socket is one per host: tests in this binary take turns.
        let turn = support::one_at_a_time();
        require_docker();
        support::require_fuse();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let vault = start();
        for (path, data) in [
            ("app-1/db-password", json!({"value": "s3cr3t-db-password"})),
            ("app-1/api", json!({"user": "svc", "key": "k3y"})),
            ("app-2/other", json!({"value": "app-2-only"})),
        ] {
            vault.kv_put(None, "secret", path, data);
        }
        Host {
            _turn: turn,
            vault,
            driver: None,
            dir,
            volumes: Vec::new(),
            launches: 0,
            _runtime: runtime,
        }
    }

    /// Starts the driver with `flags` plus this test's mount root and state directory, and `env`.
    fn launch(&mut self, flags: &[&str], env: &[(&str, &str)]) {
        self.launch_with_config(Path::new("/dev/null"), flags, env);
    }

    /// [`launch`](Self::launch) reading the config file `config`.
    fn launch_with_config(&mut self, config: &Path, flags: &[&str], env: &[(&str, &str)]) {
        self.launches += 1;
        let state = self.dir.path().join("state");
        let root = self.mount_root();
        let log = self
            .dir
            .path()
            .join(format!("driver-{}.log", self.launches));
        let mut args = flags.to_vec();
        args.extend([
            "-r",
            root.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]);
        self.driver = Some(Driver::start_with_config(
            config,
            &args,
            Path::new(SOCKET),
            &log,
            env,
        ));
    }

    /// Starts the driver the way the original tool was started, reading the root-only config file `toml` (rules,
    /// `[dynamic]`, ...).
    fn launch_with_config_text(&mut self, toml: &str) {
        let config = self.dir.path().join("config.toml");
        std::fs::write(&config, toml).unwrap();
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let addr = self.vault.addr();
        let token = format!("token={}", self.vault.root_token());
        self.launch_with_config(
            &config,
            &["--addr", &addr, "--backend", "vault", "--store-opt", &token],
            &[],
        );
    }

    /// Starts the driver configured by `LIBSECRET_*` variables only.
    fn start_driver_with_env(&mut self, env: &[(&str, &str)]) {
        self.launch(&[], env);
    }

    fn mount_root(&self) -> PathBuf {
        self.dir.path().join("mounts")
    }

    /// Starts the driver the way the original tool was started.
    fn start_driver(&mut self) {
        let addr = self.vault.addr();
        let token = format!("token={}", self.vault.root_token());
        let flags = ["--addr", &addr, "--backend", "vault", "--store-opt", &token];
        self.launch(&flags, &[]);
    }

    fn stop_driver(&mut self) {
        if let Some(mut driver) = self.driver.take() {
            assert!(
                driver.stop(),
                "the driver did not stop cleanly:\n{}",
                driver.log()
            );
        }
    }

    fn log(&self) -> String {
        self.driver.as_ref().map(Driver::log).unwrap_or_default()
    }

    fn volume(&mut self, name: &str) -> String {
        self.volumes.push(name.to_owned());
        name.to_owned()
    }

    /// `docker run --rm --volume-driver libsecret -v VOLUME:/secrets IMAGE sh -c SCRIPT`.
    fn run(&self, volume: &str, script: &str) -> (i32, String, String) {
        docker(&[
            "run",
            "--rm",
            "--volume-driver",
            "libsecret",
            "-v",
            &format!("{volume}:/secrets"),
            TEST_IMAGE,
            "sh",
            "-c",
            script,
        ])
    }

    /// Host mounts (from mountinfo) at this driver's mount root.
    fn live_mounts(&self) -> Vec<String> {
        let root = self.mount_root().display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|mountpoint| mountpoint.starts_with(&root))
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for volume in &self.volumes {
            let _ = docker(&["volume", "rm", "-f", volume]);
        }
        // No assertion here: a panic while unwinding would abort the whole test binary.
        if let Some(mut driver) = self.driver.take() {
            driver.stop();
        }
    }
}

/// `docker run -d --volume-driver libsecret -v VOLUME:/secrets IMAGE COMMAND...`; returns the container ID.
fn run_detached(volume: &str, command: &[&str]) -> String {
    let mount = format!("{volume}:/secrets");
    let mut args = vec![
        "run",
        "-d",
        "--volume-driver",
        "libsecret",
        "-v",
        &mount,
        TEST_IMAGE,
    ];
    args.extend_from_slice(command);
    docker_ok(&args).trim().to_owned()
}

#[test]
fn the_walkthrough_ls_is_empty_cat_prints_the_value_and_writes_fail() {
    let mut host = Host::start();
    let mark = host.vault.audit_len();
    let volume = host.volume("secret/app-1/");
    let (code, out, err) = host.run(
        &volume,
        "ls -la /secrets; echo ---; cat /secrets/db-password; echo; echo ---; \
         echo x > /secrets/db-password; echo write_rc=$?; echo ---; cat /secrets/db-password; echo; \
         cat /secrets/api#user; echo; cat /secrets/api#",
    );
    assert_eq!(
        code,
        0,
        "stdout:\n{out}\nstderr:\n{err}\ndriver:\n{}",
        host.log()
    );
    let sections: Vec<&str> = out.split("---\n").collect();
    assert_eq!(sections.len(), 4, "{out}");
    let listing: Vec<&str> = sections[0]
        .lines()
        .filter(|l| !l.starts_with("total"))
        .collect();
    assert_eq!(
        listing.len(),
        2,
        "only . and .. are listed:\n{}",
        sections[0]
    );
    assert!(
        listing[0].ends_with(" .") && listing[1].ends_with(" .."),
        "{listing:?}"
    );
    assert_eq!(sections[1].trim_end(), "s3cr3t-db-password");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(sections[2].contains("write_rc=1"), "{out}");
    let rest: Vec<&str> = sections[3].lines().collect();
    assert_eq!(
        rest,
        vec!["s3cr3t-db-password", "svc", r#"{"key":"k3y","user":"svc"}"#]
    );
    // Vault is unchanged: nothing but reads and lookups ever reached it (OpenBao's audit log, from the driver's
    // start on; it holds every request made with a token).
    let requests = host.vault.audit_requests_since(mark);
    assert!(
        requests
            .iter()
            .any(|r| r.path == "secret/data/app-1/db-password"),
        "{requests:?}"
    );
    let writes: Vec<_> = requests
        .into_iter()
        .filter(|r| r.operation != "read" && r.operation != "list")
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    let log = host.log();
    assert!(log.contains("volume secret/app-1/ mounted at"), "{log}");
    assert!(
        !log.contains("s3cr3t-db-password") && !log.contains(host.vault.root_token()),
        "{log}"
    );
}

/// Writes `value` to a 0600 file in the test's directory.
fn secret_file(host: &Host, name: &str, value: &str) -> String {
    let path = host.dir.path().join(name);
    std::fs::write(&path, value).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path.display().to_string()
}

#[test]
fn the_walkthrough_works_with_each_auth_method() {
    // The certificates of OpenBao's TLS listener and of the client (cert auth) come from a test CA; set-up goes
    // through OpenBao's plain loopback listener, the driver through the TLS one.
    let pki = vault_api_server::pki::TestPki::generate(&["localhost"]);
    let pki_dir = tempfile::tempdir().unwrap();
    pki.write_to(pki_dir.path()).unwrap();
    let server_cert = pki_dir.path().join("server.pem");
    let server_key = pki_dir.path().join("server-key.pem");
    let mut tls_port = 0;
    let mut host = Host::with_vault(
        || {
            let (vault, port) = OpenBao::start_tls(&server_cert, &server_key);
            tls_port = port;
            vault
        },
        pki_dir,
    );
    let dir = host.dir.path().to_owned();
    let ca = dir.join("ca.pem").display().to_string();
    let addr = format!("https://localhost:{tls_port}");
    host.vault.put_policy(
        None,
        "app-1",
        "path \"secret/data/app-1/*\" { capabilities = [\"read\"] }\n\
         path \"secret/metadata/app-1/*\" { capabilities = [\"list\"] }\n",
    );
    let admin = host.vault.admin();
    let (role_id, wrapped_secret_id) = host._runtime.block_on(async {
        let role_id = admin
            .approle("docker-host", &["app-1"], "1h", "service")
            .await;
        (role_id, admin.wrapped_secret_id("docker-host").await)
    });
    host.vault
        .call("POST", "sys/auth/cert", None, json!({"type": "cert"}));
    host.vault.call(
        "POST",
        "auth/cert/certs/docker-host",
        None,
        json!({"certificate": pki.ca_cert_pem, "token_policies": ["app-1"]}),
    );
    let token = host.vault.create_token(None, &["app-1"], "1h");
    let token_file = secret_file(&host, "token", &token);
    let role_id_file = secret_file(&host, "role-id", &role_id);
    let secret_id_file = secret_file(&host, "secret-id", &wrapped_secret_id);
    let client_cert = dir.join("client.pem").display().to_string();
    let client_key = dir.join("client-key.pem").display().to_string();
    let common = [
        ("LIBSECRET_VAULT__ADDR", addr.as_str()),
        ("LIBSECRET_VAULT__CA_CERT", ca.as_str()),
    ];
    // (auth method, its LIBSECRET_* settings, the login it makes)
    type Method<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let methods: [Method; 3] = [
        (
            "token",
            vec![("LIBSECRET_VAULT__TOKEN_FILE", token_file.as_str())],
            "-",
        ),
        (
            "approle",
            vec![
                ("LIBSECRET_VAULT__AUTH", "approle"),
                (
                    "LIBSECRET_VAULT__APPROLE__ROLE_ID_FILE",
                    role_id_file.as_str(),
                ),
                (
                    "LIBSECRET_VAULT__APPROLE__SECRET_ID_FILE",
                    secret_id_file.as_str(),
                ),
                ("LIBSECRET_VAULT__APPROLE__SECRET_ID_WRAPPED", "true"),
            ],
            "auth/approle/login",
        ),
        (
            "cert",
            vec![
                ("LIBSECRET_VAULT__AUTH", "cert"),
                ("LIBSECRET_VAULT__CLIENT_CERT", client_cert.as_str()),
                ("LIBSECRET_VAULT__CLIENT_KEY", client_key.as_str()),
            ],
            "auth/cert/login",
        ),
    ];
    let volume = host.volume("secret/app-1/");
    for (method, env, login_path) in methods {
        let env: Vec<(&str, &str)> = common.iter().copied().chain(env).collect();
        let mark = host.vault.audit_len();
        host.start_driver_with_env(&env);
        let (code, out, err) = host.run(
            &volume,
            "cat /secrets/db-password; echo; cat /secrets/api#user",
        );
        assert_eq!(code, 0, "{method}: {out}\n{err}\ndriver:\n{}", host.log());
        assert_eq!(out, "s3cr3t-db-password\nsvc", "{method}");
        // Outside the policy's prefix: refused by Vault itself.
        let (code, _, err) = host.run("secret/app-2/", "cat /secrets/other");
        assert_ne!(code, 0, "{method}: app-2 was readable with app-1's policy");
        assert!(!err.contains("app-2-only"), "{method}: {err}");
        host.volumes.push("secret/app-2/".to_owned());
        if login_path != "-" {
            assert!(
                host.vault.audit_count_since(mark, login_path) >= 1,
                "{method}: no login at {login_path}"
            );
            let failures = audit_errors_since(&host.vault, mark, login_path);
            assert!(failures.is_empty(), "{method}: {failures:?}");
        }
        let log = host.log();
        for secret in [
            token.as_str(),
            role_id.as_str(),
            wrapped_secret_id.as_str(),
            "s3cr3t-db-password",
        ] {
            assert!(
                !log.contains(secret),
                "{method}: the log holds a credential or value:\n{log}"
            );
        }
        assert!(log.contains("Vault token accepted"), "{method}: {log}");
        host.stop_driver();
    }
}

/// The errors of the responses to `path` that OpenBao's audit log holds after `mark` (an earlier
/// [`OpenBao::audit_len`], counted in requests).
fn audit_errors_since(vault: &OpenBao, mark: usize, path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(vault.audit_log_path()).unwrap();
    let mut requests = 0;
    let mut errors = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue; // a line being written
        };
        if entry["type"] == "request" {
            requests += 1;
        } else if requests > mark && entry["request"]["path"] == path {
            if let Some(error) = entry["error"].as_str().filter(|e| !e.is_empty()) {
                errors.push(error.to_owned());
            }
        }
    }
    errors
}

#[test]
fn a_key_from_another_collection_is_not_reachable() {
    let mut host = Host::start();
    let volume = host.volume("secret/app-1");
    let (code, out, err) = host.run(
        &volume,
        "cat /secrets/../app-2/other; echo rc1=$?; cat /secrets/app-2/other; echo rc2=$?; \
         cat '/secrets/..#' ; echo rc3=$?; cat /secrets/missing; echo rc4=$?",
    );
    assert_eq!(code, 0, "{out}{err}");
    for rc in ["rc1=1", "rc2=1", "rc3=1", "rc4=1"] {
        assert!(out.contains(rc), "{rc} in {out}");
    }
    assert!(!out.contains("app-2-only"), "{out}");
    assert!(err.contains("No such file or directory"), "{err}");
    // The same key is there for a volume of its own collection.
    let other = host.volume("secret/app-2");
    let (_, out, _) = host.run(&other, "cat /secrets/other");
    assert_eq!(out, "app-2-only");
}

#[test]
fn two_containers_share_one_mount_that_goes_away_after_both_exit() {
    let mut host = Host::start();
    let volume = host.volume("secret/app-1/");
    let mut containers = Vec::new();
    for _ in 0..2 {
        containers.push(run_detached(&volume, &["sleep", "300"]));
    }
    for id in &containers {
        let value = docker_ok(&["exec", id, "cat", "/secrets/db-password"]);
        assert_eq!(value, "s3cr3t-db-password");
    }
    assert_eq!(host.live_mounts().len(), 1, "{:?}", host.live_mounts());
    let (_, get) = support::plugin_client::call(
        Path::new(SOCKET),
        "/VolumeDriver.Get",
        json!({"Name": volume}),
    );
    assert_eq!(get["Volume"]["Status"]["Mounts"], 2, "{get}");

    docker_ok(&["rm", "-f", &containers[0]]);
    assert_eq!(
        host.live_mounts().len(),
        1,
        "still used by the second container"
    );
    assert_eq!(
        docker_ok(&["exec", &containers[1], "cat", "/secrets/db-password"]),
        "s3cr3t-db-password"
    );
    docker_ok(&["rm", "-f", &containers[1]]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !host.live_mounts().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        host.live_mounts().is_empty(),
        "{:?}\n{}",
        host.live_mounts(),
        host.log()
    );
    let leftover: Vec<_> = std::fs::read_dir(host.mount_root()).unwrap().collect();
    assert!(leftover.is_empty(), "mountpoints left behind: {leftover:?}");
}

#[test]
fn docker_volume_create_ls_inspect_rm() {
    let mut host = Host::start();
    let volume = host.volume("secret/app-3");
    docker_ok(&["volume", "create", "-d", "libsecret", &volume]);
    let ls = docker_ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert!(ls.lines().any(|l| l == "libsecret secret/app-3"), "{ls}");
    let inspect: serde_json::Value =
        serde_json::from_str(&docker_ok(&["volume", "inspect", &volume])).unwrap();
    assert_eq!(inspect[0]["Driver"], "libsecret");
    assert_eq!(inspect[0]["Name"], "secret/app-3");
    assert!(
        inspect[0]["CreatedAt"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{inspect}"
    );
    assert!(!inspect.to_string().contains(host.vault.root_token()));

    let (code, _, err) = docker(&[
        "volume",
        "create",
        "-d",
        "libsecret",
        "-o",
        "token=hvs.nope",
        "secret/app-4",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("volume option \"token\" looks like a credential"),
        "{err}"
    );
    let (code, _, err) = docker(&["volume", "create", "-d", "libsecret", "secret/../sys"]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid volume name"), "{err}");

    docker_ok(&["volume", "rm", &volume]);
    let ls = docker_ok(&["volume", "ls", "--format", "{{.Name}}"]);
    assert!(!ls.lines().any(|l| l == "secret/app-3"), "{ls}");
}

#[test]
fn volumes_are_still_listed_and_mount_after_the_driver_restarts() {
    let mut host = Host::start();
    let first = host.volume("secret/app-1/");
    let second = host.volume("secret/app-2");
    docker_ok(&["volume", "create", "-d", "libsecret", &first]);
    docker_ok(&["volume", "create", "-d", "libsecret", &second]);
    host.stop_driver();
    host.start_driver();
    let ls = docker_ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    for name in [&first, &second] {
        assert!(
            ls.lines().any(|l| l == format!("libsecret {name}")),
            "{name} in {ls}"
        );
    }
    let (code, out, err) = host.run(&first, "cat /secrets/db-password");
    assert_eq!(
        (code, out.as_str()),
        (0, "s3cr3t-db-password"),
        "{err}\n{}",
        host.log()
    );
}

#[test]
fn a_per_volume_refresh_interval_brings_rotation_to_a_running_container() {
    let mut host = Host::start();
    // No trailing slash here: `docker volume inspect secret/app-1/` loses the slash in Docker's URL routing.
    let volume = host.volume("secret/app-1");
    docker_ok(&[
        "volume",
        "create",
        "-d",
        "libsecret",
        "-o",
        "refresh_interval=1s",
        &volume,
    ]);
    let inspect: serde_json::Value =
        serde_json::from_str(&docker_ok(&["volume", "inspect", &volume])).unwrap();
    assert_eq!(inspect[0]["Options"]["refresh_interval"], "1s", "{inspect}");
    let id = run_detached(
        &volume,
        &[
            "sh",
            "-c",
            "while true; do cat /secrets/db-password; echo; sleep 0.1; done",
        ],
    );
    let logs = || docker_ok(&["logs", &id]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !logs().contains("s3cr3t-db-password") {
        assert!(Instant::now() < deadline, "no first read:\n{}", logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    host.vault.kv_put(
        None,
        "secret",
        "app-1/db-password",
        json!({"value": "rotated-value"}),
    );
    // The config's refresh_interval is 60 s; the volume's 1 s brings the new value within 1 s and a margin.
    let rotated = Instant::now();
    while !logs().contains("rotated-value") {
        assert!(
            rotated.elapsed() < Duration::from_secs(5),
            "rotation never arrived:\n{}\n{}",
            logs(),
            host.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines: Vec<String> = logs().lines().map(str::to_owned).collect();
    assert!(
        lines
            .iter()
            .all(|l| l == "s3cr3t-db-password" || l == "rotated-value"),
        "every read is a whole value: {lines:?}"
    );
    docker_ok(&["rm", "-f", &id]);
}

#[test]
fn a_namespace_volume_option_reads_in_that_child_namespace() {
    let mut host = Host::without_driver();
    // The namespace option is refused unless a rule names the namespace.
    host.launch_with_config_text(
        "[[rules]]\npath = \"secret/ns-app\"\nnamespace = \"team-a\"\n\n[[rules]]\npath = \"secret\"\n",
    );
    host.vault.create_namespace("team-a");
    host.vault.enable_kv(Some("team-a"), "secret", 2);
    host.vault.kv_put(
        Some("team-a"),
        "secret",
        "ns-app/db-password",
        json!({"value": "team-a-password"}),
    );
    host.vault.kv_put(
        None,
        "secret",
        "ns-app/db-password",
        json!({"value": "root-ns-password"}),
    );
    let volume = host.volume("secret/ns-app");
    docker_ok(&[
        "volume",
        "create",
        "-d",
        "libsecret",
        "-o",
        "namespace=team-a",
        &volume,
    ]);
    let (code, out, err) = host.run(&volume, "cat /secrets/db-password");
    assert_eq!(code, 0, "{out}\n{err}\ndriver:\n{}", host.log());
    assert_eq!(out, "team-a-password");
    let requests = host.vault.audit_requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path == "secret/data/ns-app/db-password" && r.namespace == "team-a"),
        "{requests:?}"
    );

    let unnamed = host.volume("secret/ns-other");
    let (code, _, err) = docker(&[
        "volume",
        "create",
        "-d",
        "libsecret",
        "-o",
        "namespace=team-b",
        &unnamed,
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("team-b") && err.contains("access rule"),
        "{err}"
    );

    let bad = host.volume("secret/ns-bad");
    let (code, _, err) = docker(&[
        "volume",
        "create",
        "-d",
        "libsecret",
        "-o",
        "namespace=../root",
        &bad,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("namespace"), "{err}");
}

#[test]
fn a_container_user_owning_the_volume_reads_it_and_another_user_gets_eacces() {
    let mut host = Host::start();
    let volume = host.volume("secret/app-1/owned");
    host.vault.kv_put(
        None,
        "secret",
        "app-1/owned/db-password",
        json!({"value": "only-for-1000"}),
    );
    docker_ok(&[
        "volume",
        "create",
        "-d",
        "libsecret",
        "-o",
        "uid=1000",
        "-o",
        "gid=1000",
        "-o",
        "mode=0400",
        "-o",
        "dir_mode=0555",
        &volume,
    ]);
    let run_as = |user: &str| {
        docker(&[
            "run",
            "--rm",
            "--user",
            user,
            "-v",
            &format!("{volume}:/secrets"),
            TEST_IMAGE,
            "sh",
            "-c",
            "stat -c '%u %g %a' /secrets/db-password && cat /secrets/db-password",
        ])
    };
    let (code, out, err) = run_as("1000:1000");
    assert_eq!(code, 0, "{out}\n{err}\ndriver:\n{}", host.log());
    assert_eq!(out, "1000 1000 400\nonly-for-1000");
    let (code, out, err) = run_as("1001:1001");
    assert_ne!(code, 0, "uid 1001 read a 0400 file of uid 1000: {out}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!out.contains("only-for-1000"), "{out}");
}

/// The driver's audit lines (stderr in the foreground) that name `key` and `result`.
fn audit_lines<'a>(log: &'a str, key: &str, result: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains("secret access"))
        .filter(|l| {
            l.contains(&format!("audit_key={key} "))
                && l.contains(&format!("audit_result={result} "))
        })
        .collect()
}

#[test]
fn the_audit_log_names_each_container_that_read_a_key_and_each_refusal() {
    let mut host = Host::without_driver();
    host.vault.put_policy(
        None,
        "app-1",
        "path \"secret/data/app-1/*\" { capabilities = [\"read\"] }\n\
         path \"secret/metadata/app-1/*\" { capabilities = [\"list\"] }\n",
    );
    let token = host.vault.create_token(None, &["app-1"], "1h");
    let token_file = secret_file(&host, "token", &token);
    let addr = host.vault.addr();
    host.start_driver_with_env(&[
        ("LIBSECRET_VAULT__ADDR", addr.as_str()),
        ("LIBSECRET_VAULT__TOKEN_FILE", token_file.as_str()),
        ("LIBSECRET_AUDIT_EVERY_OPEN", "true"),
    ]);
    let volume = host.volume("secret/app-1/");
    let denied = host.volume("secret/app-2/");
    // Two containers read the same key concurrently, five times each, and probe a key that does not exist.
    let script = "for i in 1 2 3 4 5; do cat /secrets/db-password >/dev/null; sleep 0.2; done; \
                  cat /secrets/no-such-key 2>/dev/null; true";
    let first = run_detached(&volume, &["sh", "-c", script]);
    let second = run_detached(&volume, &["sh", "-c", script]);
    for id in [&first, &second] {
        assert_eq!(docker_ok(&["wait", id]).trim(), "0");
        docker_ok(&["rm", id]);
    }
    let (code, _, _) = host.run(&denied, "cat /secrets/other");
    assert_ne!(code, 0);
    let log = host.log();
    let reads = audit_lines(&log, "secret/app-1/db-password", "read");
    for id in [&first, &second] {
        let lines: Vec<_> = reads
            .iter()
            .filter(|l| l.contains(&format!("audit_container={id}")))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "one rate-limited read line for container {id}:\n{log}"
        );
        assert!(
            lines[0].contains("audit_uid=0") && lines[0].contains("audit_pid="),
            "{}",
            lines[0]
        );
    }
    assert_eq!(reads.len(), 2, "{reads:#?}");
    let missing = audit_lines(&log, "secret/app-1/no-such-key", "not-found");
    assert_eq!(missing.len(), 2, "{log}");
    let refused = audit_lines(&log, "secret/app-2/other", "denied");
    assert_eq!(refused.len(), 1, "{log}");
    assert!(!refused[0].contains("audit_container=-"), "{}", refused[0]);
    assert!(
        !log.contains("s3cr3t-db-password") && !log.contains(&token),
        "{log}"
    );
}

#[test]
fn a_leak_scan_after_a_full_scenario_finds_neither_the_value_nor_the_token() {
    let mut host = Host::without_driver();
    let token = host.vault.root_token().to_owned();
    let token_file = secret_file(&host, "token", &token);
    let addr = host.vault.addr();
    host.start_driver_with_env(&[
        ("LIBSECRET_VAULT__ADDR", addr.as_str()),
        ("LIBSECRET_VAULT__TOKEN_FILE", token_file.as_str()),
        ("LIBSECRET_LOG_LEVEL", "debug"),
    ]);
    let volume = host.volume("secret/app-1/");
    docker_ok(&[
        "volume",
        "create",
        "-d",
        "libsecret",
        "-o",
        "refresh_interval=2s",
        &volume,
    ]);
    let holder = RemovedOnDrop(run_detached(
        &volume,
        &[
            "sh",
            "-c",
            "cat /secrets/db-password /secrets/api#; sleep 1000",
        ],
    ));
    let (code, out, _) = host.run(&volume, "cat /secrets/db-password /secrets/nope");
    assert!(out.contains("s3cr3t-db-password"), "{code} {out}");
    std::thread::sleep(Duration::from_secs(3)); // a refresh pass
    let value = "s3cr3t-db-password";
    let mut scanned = vec![("driver log".to_owned(), host.log())];
    let pid = host.driver.as_ref().unwrap().pid();
    for file in ["cmdline", "environ"] {
        let bytes = std::fs::read(format!("/proc/{pid}/{file}")).unwrap();
        scanned.push((
            format!("/proc/{pid}/{file}"),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    for entry in walk(&host.dir.path().join("state")) {
        scanned.push((
            entry.display().to_string(),
            std::fs::read_to_string(&entry).unwrap(),
        ));
    }
    // What `docker volume inspect` shows, for every volume (the CLI cannot inspect a name ending in '/').
    let volumes = std::process::Command::new("curl")
        .args([
            "-sf",
            "--unix-socket",
            "/var/run/docker.sock",
            "http://docker/volumes",
        ])
        .output()
        .unwrap();
    let volumes = String::from_utf8_lossy(&volumes.stdout).into_owned();
    assert!(volumes.contains("refresh_interval"), "{volumes}");
    scanned.push(("docker volume inspect".to_owned(), volumes));
    scanned.push((
        "docker inspect".to_owned(),
        docker_ok(&["inspect", &holder.0]),
    ));
    drop(holder);
    assert!(
        scanned.len() >= 6,
        "{:?}",
        scanned.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    assert!(
        scanned[0].1.contains("secret/app-1/db-password"),
        "the log names paths"
    );
    for (name, text) in &scanned {
        assert!(
            !text.contains(value),
            "the secret value is in {name}:\n{text}"
        );
        assert!(!text.contains(&token), "the token is in {name}:\n{text}");
    }
}

/// A container removed (with `rm -f`) when the test ends, even by a panic, so no later test finds its volume held.
struct RemovedOnDrop(String);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The config of the dynamic-secrets tests: database and PKI volumes are dynamic, everything under `secret` KV.
const DYNAMIC_RULES: &str = "[[rules]]\npath = \"database/creds\"\ndynamic = true\n\n[[rules]]\npath = \"pki/issue\"\ndynamic = true\n\n[[rules]]\npath = \"secret\"\n";

/// The `username` and `password` a detached container printed (its first two lines), once it has printed them.
fn credentials_printed_by(container: &str) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logs = docker_ok(&["logs", container]);
        let lines: Vec<&str> = logs.lines().collect();
        if let [user, password, ..] = lines[..] {
            return (user.to_owned(), password.to_owned());
        }
        assert!(Instant::now() < deadline, "{container} printed {logs:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits up to `seconds` for `done`.
fn within(seconds: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    done()
}

#[test]
fn each_container_logs_in_to_postgresql_with_its_own_credential_revoked_when_it_exits() {
    let mut host = Host::without_driver();
    let pg = support::postgres::Postgres::start();
    host.vault.enable_database(&pg, "app", "1h", "24h");
    host.launch_with_config_text(DYNAMIC_RULES);
    let volume = host.volume("database/creds/app");
    let print = "cat /secrets/username; echo; cat /secrets/password; echo; exec sleep 600";
    let first = run_detached(&volume, &["sh", "-c", print]);
    let second = run_detached(&volume, &["sh", "-c", print]);
    let (user_1, password_1) = credentials_printed_by(&first);
    let (user_2, password_2) = credentials_printed_by(&second);
    assert_ne!(user_1, user_2, "two containers, two database roles");
    for (user, password) in [(&user_1, &password_1), (&user_2, &password_2)] {
        assert!(
            pg.can_log_in(user, password),
            "{user} cannot log in\ndriver:\n{}",
            host.log()
        );
    }
    assert_eq!(host.vault.leases("database/creds/app/").len(), 2);
    // `#` is the whole response, username and password together.
    let (code, json, err) = docker(&["exec", &first, "cat", "/secrets/#"]);
    assert_eq!(code, 0, "{err}");
    let response: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(response["username"], user_1.as_str());
    assert_eq!(response["password"], password_1.as_str());
    // Nothing lists, nothing writes.
    let (code, out, _) = docker(&[
        "exec",
        &first,
        "sh",
        "-c",
        "ls -A /secrets; echo x > /secrets/username",
    ]);
    assert_ne!(code, 0);
    assert_eq!(out, "");
    // The first container exits: its role is gone (grace 0, so within 5 s), the other's still works.
    docker_ok(&["rm", "-f", &first]);
    assert!(
        within(5, || !pg.role_exists(&user_1)),
        "{user_1} outlived its container\ndriver:\n{}",
        host.log()
    );
    assert!(pg.can_log_in(&user_2, &password_2));
    assert_eq!(host.vault.leases("database/creds/app/").len(), 1);
    docker_ok(&["rm", "-f", &second]);
    assert!(within(5, || !pg.role_exists(&user_2)), "{}", host.log());
    assert_eq!(
        host.vault.leases("database/creds/app/"),
        Vec::<String>::new(),
        "no lease outlives its container"
    );
    let log = host.log();
    assert!(
        !log.contains(&password_1) && !log.contains(&password_2),
        "a password reached the log"
    );
    assert!(
        log.contains("lease-issued") && log.contains("lease-revoked"),
        "{log}"
    );
}

#[test]
fn a_pki_volume_gives_a_certificate_with_its_own_key_that_verifies_against_the_ca() {
    let mut host = Host::without_driver();
    let ca = host.vault.enable_pki("web", "72h", true);
    host.launch_with_config_text(DYNAMIC_RULES);
    let volume = host.volume("pki/issue/web");
    // Certificate options are checked at Create: a name the role may not issue for is refused by Vault at Mount,
    // a malformed one by the driver at Create.
    let (code, _, err) = docker(&[
        "volume",
        "create",
        "-d",
        "libsecret",
        "-o",
        "common_name=not a name",
        &volume,
    ]);
    assert_ne!(code, 0, "a malformed common_name is refused");
    assert!(err.contains("common_name"), "{err}");
    docker_ok(&[
        "volume",
        "create",
        "-d",
        "libsecret",
        "-o",
        "common_name=web.internal",
        "-o",
        "ttl=1h",
        &volume,
    ]);
    let (code, out, err) = host.run(
        &volume,
        "cat /secrets/certificate; echo; echo ====; cat /secrets/private_key; echo; echo ====; cat /secrets/issuing_ca",
    );
    assert_eq!(code, 0, "{err}\ndriver:\n{}", host.log());
    let parts: Vec<&str> = out.split("\n====\n").collect();
    let [certificate, key, issuing_ca] = parts[..] else {
        panic!("{out}")
    };
    assert!(support::pki_check::cert_matches_key(certificate, key));
    assert!(support::pki_check::verifies_against(&ca, certificate));
    assert_eq!(issuing_ca.trim(), ca.trim());
    assert!(
        !host.log().contains(key.lines().nth(1).unwrap()),
        "the key reached the log"
    );
    // The container has exited: its certificate's lease is revoked.
    assert!(
        within(5, || host.vault.leases("pki/issue/web/").is_empty()),
        "{:?}\n{}",
        host.vault.leases("pki/issue/web/"),
        host.log()
    );
}

#[test]
fn a_killed_driver_revokes_nothing_and_the_next_one_revokes_the_leases_nobody_serves() {
    let mut host = Host::without_driver();
    let pg = support::postgres::Postgres::start();
    host.vault.enable_database(&pg, "app", "1h", "24h");
    host.launch_with_config_text(DYNAMIC_RULES);
    let volume = host.volume("database/creds/app");
    let id = run_detached(
        &volume,
        &[
            "sh",
            "-c",
            "cat /secrets/username; echo; cat /secrets/password; echo; exec sleep 600",
        ],
    );
    let (user, password) = credentials_printed_by(&id);
    let journal = host.dir.path().join("state/leases");
    let entries: Vec<PathBuf> = std::fs::read_dir(&journal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let text = std::fs::read_to_string(&entries[0]).unwrap();
    let mode = std::fs::metadata(&entries[0]).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    assert!(text.contains("database/creds/app/"), "{text}");
    assert!(
        !text.contains(&password),
        "the journal holds the credential"
    );
    // SIGKILL: nothing is revoked by the crash itself.
    host.driver.as_mut().unwrap().kill();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        pg.can_log_in(&user, &password),
        "the crash revoked the credential"
    );
    assert_eq!(host.vault.leases("database/creds/app/").len(), 1);
    // The next driver finds the lease's holder (the killed process) gone, and revokes it.
    host.launch_with_config_text(DYNAMIC_RULES);
    assert!(
        within(10, || !pg.role_exists(&user)),
        "the orphaned role stays\ndriver:\n{}",
        host.log()
    );
    assert!(host.vault.leases("database/creds/app/").is_empty());
    assert!(std::fs::read_dir(&journal).unwrap().next().is_none());
    assert!(
        host.log().contains("lease-revoked-orphan"),
        "{}",
        host.log()
    );
    let _ = docker(&["rm", "-f", &id]);
}

#[test]
fn a_short_lived_certificate_is_reissued_before_it_expires_and_every_read_pairs_it_with_its_own_key(
) {
    let mut host = Host::without_driver();
    let ca = host.vault.enable_pki("web", "72h", true);
    host.launch_with_config_text(&format!(
        "{DYNAMIC_RULES}\n[dynamic]\nreissue_grace = \"5s\"\n"
    ));
    let volume = host.volume("pki/issue/short");
    host.vault.enable_pki("short", "20s", true);
    docker_ok(&[
        "volume",
        "create",
        "-d",
        "libsecret",
        "-o",
        "common_name=short.internal",
        "-o",
        "ttl=20s",
        &volume,
    ]);
    // One read of `#` a second for 35 s: the time, then the whole response (certificate and key together) on one
    // line.
    let (code, out, err) = host.run(
        &volume,
        "i=0; while [ $i -lt 35 ]; do date +%s; cat '/secrets/#' || echo FAILED; echo; sleep 1; i=$((i+1)); done",
    );
    assert_eq!(code, 0, "{err}\ndriver:\n{}", host.log());
    let lines: Vec<&str> = out.lines().filter(|line| !line.is_empty()).collect();
    assert_eq!(lines.len(), 70, "{out:.400}");
    let mut serials: Vec<String> = Vec::new();
    for read in lines.chunks(2) {
        let [at, response] = read else { unreachable!() };
        let at: u64 = at.parse().unwrap();
        let response: serde_json::Value = serde_json::from_str(response)
            .unwrap_or_else(|_| panic!("a read failed: {response:.80}"));
        let (certificate, key) = (
            response["certificate"].as_str().unwrap(),
            response["private_key"].as_str().unwrap(),
        );
        let serial = response["serial_number"].as_str().unwrap().to_owned();
        assert!(
            support::pki_check::verified_at(&ca, certificate, at),
            "{serial} was not valid when it was read"
        );
        if serials.last() != Some(&serial) {
            // A new certificate (checked once with openssl for its key), and never an old one coming back.
            assert!(!serials.contains(&serial), "{serial} came back");
            assert!(
                support::pki_check::cert_matches_key(certificate, key),
                "{serial}"
            );
            serials.push(serial);
        }
    }
    // Re-issued at 2/3 of 20 s: at least two certificates in 35 s, so none was read past its end.
    assert!(serials.len() >= 2, "{serials:?}\n{}", host.log());
    assert!(
        within(10, || host.vault.leases("pki/issue/short/").is_empty()),
        "{:?}",
        host.vault.leases("pki/issue/short/")
    );
}

#[test]
fn with_a_10s_lease_and_a_30s_max_ttl_a_container_logs_in_for_two_minutes_through_renewals_and_reissues(
) {
    let mut host = Host::without_driver();
    let pg = support::postgres::Postgres::start();
    host.vault.enable_database(&pg, "app", "10s", "30s");
    host.launch_with_config_text(&format!(
        "{DYNAMIC_RULES}\n[dynamic]\nreissue_grace = \"5s\"\n"
    ));
    let volume = host.volume("database/creds/app");
    let mark = host.vault.audit_len();
    let container = run_detached(&volume, &["sleep", "600"]);
    // Every 2 s for 2 minutes, what the container reads logs in: `#` (username and password from one response), and
    // the `username` file is that response's or, read a moment later, its successor's.
    let started = Instant::now();
    let mut users: Vec<String> = Vec::new();
    let mut reads = 0;
    while started.elapsed() < Duration::from_secs(120) {
        let (code, out, err) = docker(&[
            "exec",
            &container,
            "sh",
            "-c",
            "cat '/secrets/#'; echo; cat /secrets/username",
        ]);
        assert_eq!(code, 0, "{err}\ndriver:\n{}", host.log());
        let (json, username_file) = out.split_once('\n').unwrap();
        let username_file = username_file.trim_end();
        let response: serde_json::Value = serde_json::from_str(json).unwrap();
        let user = response["username"].as_str().unwrap().to_owned();
        let password = response["password"].as_str().unwrap();
        assert!(
            pg.can_log_in(&user, password),
            "{user} could not log in after {:?}\ndriver:\n{}",
            started.elapsed(),
            host.log()
        );
        if users.last() != Some(&user) {
            assert!(!users.contains(&user), "{user} came back");
            users.push(user.clone());
        }
        assert!(
            username_file == user
                || !users.contains(&username_file.to_owned()) && pg.role_exists(username_file),
            "the username file read {username_file:?} beside {user}"
        );
        reads += 1;
        std::thread::sleep(Duration::from_secs(2));
    }
    // 30 s max TTL: a new credential at least every 30 s, each issued once however often it was read.
    assert!(users.len() >= 4, "{users:?}\ndriver:\n{}", host.log());
    let requests = host.vault.audit_requests_since(mark);
    let count = |path: &str| requests.iter().filter(|r| r.path == path).count();
    let issues = count("database/creds/app");
    let renewals = count("sys/leases/renew");
    assert!(
        issues == users.len() || issues == users.len() + 1,
        "{issues} issues for {} credentials read {reads} times (one more may be in its first seconds)",
        users.len()
    );
    // A 10 s lease renewed at ~2/3 of its TTL until the 30 s max cuts it short: more than one renewal per credential.
    assert!(
        renewals >= users.len(),
        "{renewals} renewals for {} credentials",
        users.len()
    );
    // Each credential before the current one was revoked after the 5 s re-issue grace.
    for old in &users[..users.len() - 1] {
        assert!(
            within(10, || !pg.role_exists(old)),
            "{old} outlived its successor"
        );
    }
    docker_ok(&["rm", "-f", &container]);
    assert!(
        within(5, || host.vault.leases("database/creds/app/").is_empty()),
        "{:?}",
        host.vault.leases("database/creds/app/")
    );
    for user in &users {
        assert!(
            within(5, || !pg.role_exists(user)),
            "{user} outlived its container"
        );
    }
}

/// The documented Compose file (packaging/examples/compose.yml), with Debian's docker-compose 1.29: a named
/// `driver: libsecret` volume whose `path` driver option is the Vault path; and the `--mount` form services use.
#[test]
fn docker_compose_and_the_mount_form_read_a_secret_through_a_named_volume() {
    let mut host = Host::start();
    let volume = host.volume("app1-secrets");
    let compose_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/examples/compose.yml"
    );
    let compose = |args: &[&str]| {
        let output = std::process::Command::new("docker-compose")
            .args(["-f", compose_file, "-p", "libsecret-e2e"])
            .args(args)
            .env("IMAGE", TEST_IMAGE)
            .output()
            .unwrap_or_else(|e| {
                panic!("docker-compose is needed (apt-get install docker-compose; scripts/setup-test-host.sh does): {e}")
            });
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code().unwrap_or(-1), text)
    };
    let (code, out) = compose(&["up", "--abort-on-container-exit", "--exit-code-from", "app"]);
    assert_eq!(code, 0, "{out}\n{}", host.log());
    assert!(out.contains("s3cr3t-db-password"), "{out}");
    let inspect: serde_json::Value =
        serde_json::from_str(&docker_ok(&["volume", "inspect", &volume])).unwrap();
    assert_eq!(inspect[0]["Driver"], "libsecret", "{inspect}");
    assert_eq!(inspect[0]["Options"]["path"], "secret/app-1", "{inspect}");
    let (code, out) = compose(&["down", "-v"]);
    assert_eq!(code, 0, "{out}");
    let ls = docker_ok(&["volume", "ls", "--format", "{{.Name}}"]);
    assert!(!ls.lines().any(|l| l == volume), "{ls}");

    // `--mount` ignores --volume-driver: the driver and its options go in the mount itself.
    let mounted = host.volume("app1-mount-form");
    let out = docker_ok(&[
        "run",
        "--rm",
        "--mount",
        &format!(
            "type=volume,source={mounted},target=/secrets,readonly,volume-driver=libsecret,volume-opt=path=secret/app-1"
        ),
        TEST_IMAGE,
        "cat",
        "/secrets/db-password",
    ]);
    assert_eq!(out, "s3cr3t-db-password");
    assert!(!host.log().contains("s3cr3t-db-password"), "{}", host.log());
}
