//! OpenBao inside a systemd host (tests/support/systemd_host.rs): `/usr/local/bin/bao` copied in and run as the
//! unit `test-openbao.service` in dev mode on the host's loopback, with a file audit device (OpenBao 2 declares
//! audit devices in the server config, not over the API), so tests and benchmarks count logins and tokens.
//!
//! [`install_persistent`] runs it instead as a real server that survives a reboot of the host: raft storage on the
//! host's disk, initialised once with one key share, unsealed by the unit after every start.
//!
//! Included by path next to `mod docker;` and `mod systemd_host;` (like systemd_host.rs itself), from a test or a
//! benchmark; a test that uses `mod support;` includes it by path too and imports `support::systemd_host` at its root
//! (tests/systemd_service.rs). Fails loudly when bao is missing, never skips.
#![allow(dead_code)]

use std::path::PathBuf;

use super::systemd_host::SystemdHost;

/// The dev server's root token (OpenBao refuses a dev root token id with the `hvs.` prefix).
pub const ROOT_TOKEN: &str = "broker-root-token-3c1d";
pub const ADDR: &str = "http://127.0.0.1:8200";
pub const AUDIT_LOG: &str = "/var/log/openbao-audit.log";
pub const UNIT: &str = "test-openbao.service";

/// `bao` as scripts/setup-test-host.sh installs it.
pub fn find_bao() -> PathBuf {
    let path = PathBuf::from("/usr/local/bin/bao");
    assert!(
        path.exists(),
        "bao is missing at {}: scripts/setup-test-host.sh installs it",
        path.display()
    );
    path
}

/// Copies bao in, starts it as [`UNIT`] with the audit log at [`AUDIT_LOG`], and enables AppRole.
pub fn install(host: &SystemdHost) {
    host.copy_in(&find_bao(), "/usr/local/bin/bao");
    host.exec_ok(&format!(
        r#"set -e
        mkdir -p /etc/openbao
        cat > /etc/openbao/audit.hcl <<'HCL'
audit "file" "test" {{
  options {{
    file_path = "{AUDIT_LOG}"
  }}
}}
HCL
        cat > /etc/systemd/system/{UNIT} <<'UNIT'
[Unit]
Description=OpenBao dev server on loopback (test Vault)
Before=docker.service docker-volume-libsecret.service
[Service]
ExecStart=/usr/local/bin/bao server -dev -dev-root-token-id={ROOT_TOKEN} -dev-listen-address=127.0.0.1:8200 -dev-no-store-token -config=/etc/openbao/audit.hcl
UNIT
        systemctl daemon-reload
        systemctl start {UNIT}
        for i in $(seq 1 100); do curl -fs {ADDR}/v1/sys/health >/dev/null && break; sleep 0.1; done
        curl -fs {ADDR}/v1/sys/health >/dev/null"#
    ));
    bao(host, "auth enable approle");
}

/// Where [`install_persistent`] keeps the unseal request (`{"key": ...}`, root-only) the unit replays at start.
pub const UNSEAL_REQUEST: &str = "/etc/openbao/unseal.json";

/// Where one raft server listens and how the others (and its `api_addr`) name it.
#[derive(Debug, Clone, Copy)]
pub struct RaftServer<'a> {
    /// The raft `node_id`.
    pub node_id: &'a str,
    /// The address the listeners bind: `127.0.0.1` for one host, `0.0.0.0` for a cluster on a test network.
    pub listen: &'a str,
    /// The host name in `api_addr` and `cluster_addr`: `127.0.0.1`, or the host's name on the test network.
    pub name: &'a str,
}

/// One server on the host's loopback ([`install_persistent`]).
pub const LOOPBACK_SERVER: RaftServer<'static> = RaftServer {
    node_id: "test-host",
    listen: "127.0.0.1",
    name: "127.0.0.1",
};

/// Copies bao in and runs it as the enabled unit [`UNIT`]: a real server (not dev mode) on port 8200 of
/// `server.listen`, with raft storage under /var/lib/openbao and the audit log at [`AUDIT_LOG`], so its data, tokens
/// and mounts survive [`SystemdHost::reboot`]. The unit's `ExecStartPost=` unseals it from [`UNSEAL_REQUEST`] (once
/// [`unseal`] has written it) after every start and waits until it serves (as active node or standby), and the unit
/// is ordered before Docker and the driver, so they never meet a sealed Vault after a boot. No credential is on the
/// server's command line or in what it logs. Local commands use [`ADDR`] (the listener includes loopback).
pub fn install_raft_server(host: &SystemdHost, server: &RaftServer<'_>) {
    let RaftServer {
        node_id,
        listen,
        name,
    } = *server;
    host.copy_in(&find_bao(), "/usr/local/bin/bao");
    host.exec_ok(&format!(
        r#"set -e
        mkdir -p /etc/openbao /var/lib/openbao
        cat > /etc/openbao/server.hcl <<'HCL'
storage "raft" {{
  path = "/var/lib/openbao"
  node_id = "{node_id}"
  performance_multiplier = 1
}}
listener "tcp" {{
  address = "{listen}:8200"
  cluster_address = "{listen}:8201"
  tls_disable = true
}}
api_addr = "http://{name}:8200"
cluster_addr = "https://{name}:8201"
audit "file" "test" {{
  options {{
    file_path = "{AUDIT_LOG}"
  }}
}}
HCL
        cat > /usr/local/bin/unseal-openbao <<'SH'
#!/bin/sh
# Waits for the listener; unseals with the key of the init (none before the first init) and waits until it serves.
for i in $(seq 1 300); do curl -s -o /dev/null {ADDR}/v1/sys/seal-status && break; sleep 0.1; done
[ -f {UNSEAL_REQUEST} ] || exit 0
curl -sf -o /dev/null -X PUT --data @{UNSEAL_REQUEST} {ADDR}/v1/sys/unseal
for i in $(seq 1 300); do curl -fs -o /dev/null '{ADDR}/v1/sys/health?standbyok=true' && exit 0; sleep 0.1; done
exit 1
SH
        chmod 700 /usr/local/bin/unseal-openbao
        cat > /etc/systemd/system/{UNIT} <<'UNIT'
[Unit]
Description=OpenBao with raft storage (test Vault)
Before=docker.service docker-volume-libsecret.service
[Service]
ExecStart=/usr/local/bin/bao server -config=/etc/openbao/server.hcl
ExecStartPost=/usr/local/bin/unseal-openbao
[Install]
WantedBy=multi-user.target
UNIT
        systemctl daemon-reload
        systemctl enable --now {UNIT}"#
    ));
}

/// `bao operator init` with one key share on a server [`install_raft_server`] started: (root token, unseal key).
pub fn init(host: &SystemdHost) -> (String, String) {
    let init = host.exec_ok(&format!(
        "BAO_ADDR={ADDR} /usr/local/bin/bao operator init -key-shares=1 -key-threshold=1 -format=json"
    ));
    let init: serde_json::Value =
        serde_json::from_str(&init).unwrap_or_else(|e| panic!("bao operator init: {e}: {init}"));
    let field = |value: &serde_json::Value, what: &str| {
        value
            .as_str()
            .unwrap_or_else(|| panic!("no {what} in the init reply"))
            .to_owned()
    };
    (
        field(&init["root_token"], "root token"),
        field(&init["unseal_keys_b64"][0], "unseal key"),
    )
}

/// Writes the unseal request (root-only) the unit replays at every start, and unseals the server now.
pub fn unseal(host: &SystemdHost, key: &str) {
    host.exec_ok(&format!(
        "umask 077 && printf '{{\"key\":\"%s\"}}' '{key}' > {UNSEAL_REQUEST} && /usr/local/bin/unseal-openbao"
    ));
}

/// Enables KV v2 at `secret/` (as in dev mode) and waits until it takes writes.
pub fn enable_kv(host: &SystemdHost, root_token: &str) {
    // A new KV v2 mount refuses writes for a moment (its upgrade): retry the first one.
    host.exec_ok(&format!(
        "export BAO_ADDR={ADDR} BAO_TOKEN={root_token}
        /usr/local/bin/bao secrets enable -path=secret kv-v2 >/dev/null
        for i in $(seq 1 100); do /usr/local/bin/bao kv put secret/ready value=1 >/dev/null 2>&1 && break; sleep 0.1; done
        /usr/local/bin/bao kv metadata delete secret/ready >/dev/null"
    ));
}

/// One raft server on the host's loopback ([`install_raft_server`] with [`LOOPBACK_SERVER`]), initialised, unsealed
/// and with KV v2 at `secret/`. Returns the root token from the init.
pub fn install_persistent(host: &SystemdHost) -> String {
    install_raft_server(host, &LOOPBACK_SERVER);
    let (root_token, key) = init(host);
    unseal(host, &key);
    enable_kv(host, &root_token);
    root_token
}

/// The shell command that runs `bao <args>` against the host's server with `token`, for callers that poll on its
/// exit status ([`SystemdHost::exec`]).
pub fn bao_command(token: &str, args: &str) -> String {
    format!("BAO_ADDR={ADDR} BAO_TOKEN={token} /usr/local/bin/bao {args}")
}

/// Runs `bao <args>` as root on the host with `token`; its stdout.
pub fn bao_as(host: &SystemdHost, token: &str, args: &str) -> String {
    host.exec_ok(&bao_command(token, args))
}

/// Runs `bao <args>` as root on the host; its stdout.
pub fn bao(host: &SystemdHost, args: &str) -> String {
    bao_as(host, ROOT_TOKEN, args)
}

/// Creates AppRole `role` with a policy reading `path/*` (KV v2 at secret/), service tokens of `ttl` and `max_ttl`
/// (`"15s"`), and secret IDs good for `num_uses` logins (0: unlimited). Returns its role ID.
pub fn approle(
    host: &SystemdHost,
    role: &str,
    path: &str,
    ttl: &str,
    max_ttl: &str,
    num_uses: u32,
) -> String {
    host.exec_ok(&format!(
        "cat > /tmp/{role}.hcl <<'HCL'\npath \"secret/data/{path}/*\" {{ capabilities = [\"read\"] }}\n\
         path \"secret/metadata/{path}/*\" {{ capabilities = [\"list\"] }}\nHCL"
    ));
    bao(host, &format!("policy write {role} /tmp/{role}.hcl"));
    bao(
        host,
        &format!(
            "write auth/approle/role/{role} token_policies={role} token_ttl={ttl} token_max_ttl={max_ttl} \
             token_type=service secret_id_num_uses={num_uses}"
        ),
    );
    bao(
        host,
        &format!("read -field=role_id auth/approle/role/{role}/role-id"),
    )
    .trim()
    .to_owned()
}

/// A new secret ID of `role`.
pub fn secret_id(host: &SystemdHost, role: &str) -> String {
    bao(
        host,
        &format!("write -f -field=secret_id auth/approle/role/{role}/secret-id"),
    )
    .trim()
    .to_owned()
}

/// A response-wrapping token for a new secret ID of `role` (single use).
pub fn wrapped_secret_id(host: &SystemdHost, role: &str) -> String {
    bao(
        host,
        &format!(
            "write -f -wrap-ttl=300s -field=wrapping_token auth/approle/role/{role}/secret-id"
        ),
    )
    .trim()
    .to_owned()
}

/// Requests to exactly `path` in the audit log so far.
pub fn requests(host: &SystemdHost, path: &str) -> usize {
    let out = host.exec_ok(&format!(
        "grep '\"type\":\"request\"' {AUDIT_LOG} | grep -c '\"path\":\"{path}\"' || true"
    ));
    out.trim().parse().unwrap_or(0)
}

/// Live tokens OpenBao holds, not counting the root token.
pub fn live_tokens(host: &SystemdHost) -> usize {
    let out = bao(host, "list -format=json auth/token/accessors");
    let accessors: Vec<String> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("auth/token/accessors: {e}: {out}"));
    accessors.len().saturating_sub(1)
}
