//! OpenBao inside a systemd host (tests/support/systemd_host.rs): `/usr/local/bin/bao` copied in and run as the
//! unit `test-openbao.service` in dev mode on the host's loopback, with a file audit device (OpenBao 2 declares
//! audit devices in the server config, not over the API), so tests and benchmarks count logins and tokens.
//!
//! Included by path next to `mod docker;` and `mod systemd_host;` (like systemd_host.rs itself), from a test or a
//! benchmark. Fails loudly when bao is missing, never skips.
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

/// Runs `bao <args>` as root on the host; its stdout.
pub fn bao(host: &SystemdHost, args: &str) -> String {
    host.exec_ok(&format!(
        "BAO_ADDR={ADDR} BAO_TOKEN={ROOT_TOKEN} /usr/local/bin/bao {args}"
    ))
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
