//! A real RustyVault (`rvault`, an independent implementation of the Vault HTTP API) for
//! integration tests, plus a tiny blocking HTTP/1.1 client to talk to it.
//!
//! `rvault` is installed by `scripts/setup-test-host.sh` (`cargo install rusty_vault --locked`).
//! Tests that need it never skip: [`RustyVault::start`] panics if it is missing.
//!
//! Facts about rvault 0.2.1 this module relies on (checked by hand and by `tests/vault_rvault_smoke.rs`):
//! - CLI: `rvault server --config <FILE>`; the file must end in `.hcl` or `.json` and holds
//!   exactly one `storage` block and one `listener` block (HCL blocks written over several lines).
//! - It starts uninitialised and sealed. `PUT /v1/sys/init {"secret_shares":N,"secret_threshold":M}`
//!   answers `{"keys":[hex...],"root_token":"..."}`; `PUT /v1/sys/unseal {"key":"<hex>"}`
//!   answers the seal status `{"sealed":bool,"t":..,"n":..,"progress":..}`.
//! - After unsealing, a KV v1 engine (`type: "kv"`) is already mounted at `secret/`.
//! - Tokens are taken from the `X-Vault-Token` header. A bogus token gets
//!   403 `{"error":"Permission denied."}`; no token at all gets 400
//!   `{"error":"Request client token is missing."}`.
//! - KV v1: `POST /v1/secret/<path>` answers 204; `GET` answers 200
//!   `{"renewable":false,"lease_id":"","lease_duration":3600,"auth":null,"data":{...}}`, or 404
//!   with an empty body; listing needs the `LIST` method (`GET ?list=true` is a 404).
//! - KV v2 is not supported by rvault.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use super::http::free_port;

/// A running RustyVault server, initialised, unsealed, with KV v1 mounted at `secret/`.
/// Killed (and its storage removed) on drop.
pub struct RustyVault {
    child: Child,
    port: u16,
    root_token: String,
    dir: tempfile::TempDir,
}

/// How long to wait for the server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

impl RustyVault {
    /// Starts `rvault server` on 127.0.0.1:<free port> with file storage in a temp dir,
    /// initialises it (one key share), unseals it, and makes sure a KV v1 engine is mounted
    /// at `secret/`.
    ///
    /// Panics (never skips) if `rvault` is not installed or the server does not come up.
    pub fn start() -> RustyVault {
        let bin = find_rvault().unwrap_or_else(|| {
            panic!(
                "rvault not found on PATH (nor in $HOME/.cargo/bin): \
                 run scripts/setup-test-host.sh (it runs `cargo install rusty_vault --locked`)"
            )
        });

        // The free port is found by binding port 0 and releasing it, so another process can
        // take it in between: retry a few times on a server that dies at start.
        let mut last_err = String::new();
        for _attempt in 0..3 {
            match Self::try_start(&bin) {
                Ok(vault) => return vault,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start RustyVault ({}): {last_err}", bin.display());
    }

    fn try_start(bin: &Path) -> Result<RustyVault, String> {
        let dir = tempfile::Builder::new()
            .prefix("rvault-test-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let port = free_port();
        let data_dir = dir.path().join("data");
        let work_dir = dir.path().join("work");
        let config_path = dir.path().join("config.hcl");
        let config = format!(
            r#"storage "file" {{
  path = "{data}"
}}

listener "tcp" {{
  address     = "127.0.0.1:{port}"
  tls_disable = true
}}

api_addr  = "http://127.0.0.1:{port}"
log_level = "info"
work_dir  = "{work}"
"#,
            data = data_dir.display(),
            work = work_dir.display(),
        );
        std::fs::write(&config_path, config).map_err(|e| format!("write config: {e}"))?;

        let stdout = std::fs::File::create(dir.path().join("stdout.log"))
            .map_err(|e| format!("create stdout.log: {e}"))?;
        let stderr = std::fs::File::create(dir.path().join("stderr.log"))
            .map_err(|e| format!("create stderr.log: {e}"))?;
        let child = Command::new(bin)
            .arg("server")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;

        // From here on, dropping `vault` kills the child.
        let mut vault = RustyVault {
            child,
            port,
            root_token: String::new(),
            dir,
        };

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = vault.child.try_wait() {
                return Err(format!(
                    "rvault server exited at start with {status}\n{}",
                    vault.logs_tail()
                ));
            }
            if TcpStream::connect_timeout(
                &([127, 0, 0, 1], port).into(),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "rvault server did not listen on 127.0.0.1:{port} within {START_TIMEOUT:?}\n{}",
                    vault.logs_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }

        vault.init_and_unseal();
        vault.ensure_kv1_mount();
        Ok(vault)
    }

    fn init_and_unseal(&mut self) {
        let (status, body) = http(
            "PUT",
            &format!("{}/v1/sys/init", self.addr()),
            None,
            Some(&json!({"secret_shares": 1, "secret_threshold": 1})),
        );
        if status != 200 {
            panic!(
                "PUT /v1/sys/init answered {status}: {body}\n{}",
                self.logs_tail()
            );
        }
        let root_token = body["root_token"]
            .as_str()
            .unwrap_or_else(|| panic!("PUT /v1/sys/init: no root_token in {body}"))
            .to_string();
        let keys: Vec<String> = body["keys"]
            .as_array()
            .unwrap_or_else(|| panic!("PUT /v1/sys/init: no keys in {body}"))
            .iter()
            .map(|k| k.as_str().expect("unseal key is a string").to_string())
            .collect();
        let mut sealed = true;
        for key in &keys {
            let (status, body) = http(
                "PUT",
                &format!("{}/v1/sys/unseal", self.addr()),
                None,
                Some(&json!({ "key": key })),
            );
            if status != 200 {
                panic!(
                    "PUT /v1/sys/unseal answered {status}: {body}\n{}",
                    self.logs_tail()
                );
            }
            sealed = body["sealed"].as_bool().unwrap_or(true);
            if !sealed {
                break;
            }
        }
        if sealed {
            panic!(
                "RustyVault still sealed after {} unseal key(s)\n{}",
                keys.len(),
                self.logs_tail()
            );
        }
        self.root_token = root_token;
    }

    fn ensure_kv1_mount(&self) {
        let (status, body) = http(
            "GET",
            &format!("{}/v1/sys/mounts", self.addr()),
            Some(&self.root_token),
            None,
        );
        assert_eq!(status, 200, "GET /v1/sys/mounts answered {status}: {body}");
        // Vault answers the mounts both at the top level and under "data"; accept either.
        let mount = body
            .get("secret/")
            .or_else(|| body.get("data").and_then(|d| d.get("secret/")));
        match mount {
            Some(m) => {
                let ty = m["type"].as_str().unwrap_or_default();
                let version = m["options"]["version"].as_str().unwrap_or("1");
                assert!(
                    ty == "kv" && version == "1",
                    "secret/ is mounted but is not KV v1: {m}"
                );
            }
            None => {
                let (status, body) = http(
                    "POST",
                    &format!("{}/v1/sys/mounts/secret", self.addr()),
                    Some(&self.root_token),
                    Some(&json!({"type": "kv"})),
                );
                assert!(
                    status == 200 || status == 204,
                    "POST /v1/sys/mounts/secret answered {status}: {body}"
                );
            }
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn root_token(&self) -> String {
        self.root_token.clone()
    }

    /// Writes a KV v1 secret, e.g. `put_kv1("secret/app-1/db-password", &json!({"value": "x"}))`.
    /// Panics unless the server accepts it.
    pub fn put_kv1(&self, path: &str, data: &Value) {
        let path = path.trim_start_matches('/');
        let (status, body) = http(
            "POST",
            &format!("{}/v1/{path}", self.addr()),
            Some(&self.root_token),
            Some(data),
        );
        assert!(
            status == 200 || status == 204,
            "writing {path} to RustyVault answered {status}: {body}"
        );
    }

    /// Reads a KV v1 secret's `data` object, or `None` on 404.
    pub fn get_kv1(&self, path: &str) -> Option<Value> {
        let path = path.trim_start_matches('/');
        let (status, body) = http(
            "GET",
            &format!("{}/v1/{path}", self.addr()),
            Some(&self.root_token),
            None,
        );
        match status {
            200 => Some(body["data"].clone()),
            404 => None,
            _ => panic!("reading {path} from RustyVault answered {status}: {body}"),
        }
    }

    /// Deletes a KV v1 secret. Panics unless the server accepts it.
    pub fn delete_kv1(&self, path: &str) {
        let path = path.trim_start_matches('/');
        let (status, body) = http(
            "DELETE",
            &format!("{}/v1/{path}", self.addr()),
            Some(&self.root_token),
            None,
        );
        assert!(
            status == 200 || status == 204,
            "deleting {path} from RustyVault answered {status}: {body}"
        );
    }

    /// The directory holding the server's config, storage and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of the server's stdout and stderr, for panic messages.
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for name in ["stdout.log", "stderr.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(30);
            out.push_str(&format!("----- rvault {name} (last 30 lines) -----\n"));
            for line in &lines[start..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for RustyVault {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Looks `rvault` up on PATH, then in `$HOME/.cargo/bin`.
pub fn find_rvault() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("rvault")));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/rvault"));
    }
    candidates.into_iter().find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A minimal blocking HTTP/1.1 client (`http://` only, `Connection: close`): [`super::http::request`] with the
/// token as `X-Vault-Token`. Returns the status code and the body parsed as JSON (`Value::Null` for an empty body,
/// `Value::String` for a body that is not JSON). Panics on connection or protocol errors (10 s timeouts).
pub fn http(method: &str, url: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = token.map(|t| ("X-Vault-Token", t)).into_iter().collect();
    super::http::request(method, url, &headers, body)
}
