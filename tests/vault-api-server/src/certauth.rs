//! TLS certificate auth method (spec §7), mountable at any `auth/<m>/`
//! (`POST sys/auth/<m>` `{"type":"cert"}`).

use std::collections::{BTreeMap, HashMap};

use rustls::pki_types::CertificateDer;
use serde_json::{json, Map, Value};

use crate::http::{Op, Reply};
use crate::tls;
use crate::token_params::{Keys, TokenParams};
use crate::tokens::TokenStore;
use crate::util::str_list;

pub(crate) const INVALID_CERT: &str = "invalid certificate or no client certificate supplied";
const NO_MATCHING_CHAIN: &str =
    "no chain matching all constraints could be found for this login certificate";

/// Cert roles take the legacy `ttl`, `max_ttl`, `period` and `policies`
/// too; the `token_*` spelling wins when a write has both.
static TOKEN_KEYS: Keys = Keys {
    ttl: &["ttl", "token_ttl"],
    max_ttl: &["max_ttl", "token_max_ttl"],
    period: &["period", "token_period"],
    policies: &["policies", "token_policies"],
};

/// A role (`auth/<m>/certs/<name>`).
#[derive(Debug, Clone)]
struct CertRole {
    certificate: String,
    display_name: String,
    allowed_common_names: Vec<String>,
    token: TokenParams,
}

impl CertRole {
    fn new() -> CertRole {
        CertRole {
            certificate: String::new(),
            display_name: String::new(),
            allowed_common_names: Vec::new(),
            token: TokenParams::new(&TOKEN_KEYS),
        }
    }

    fn describe(&self) -> Value {
        self.token.describe(json!({
            "certificate": self.certificate,
            "display_name": self.display_name,
            "allowed_common_names": self.allowed_common_names,
            "allowed_names": [],
            "allowed_dns_sans": [],
            "allowed_email_sans": [],
            "allowed_uri_sans": [],
            "allowed_organizational_units": [],
            "required_extensions": [],
            "allowed_metadata_extensions": [],
            "ocsp_enabled": false,
            "policies": self.token.policies,
            "ttl": self.token.ttl,
            "max_ttl": self.token.max_ttl,
            "period": self.token.period,
        }))
    }

    fn update(&mut self, body: &Map<String, Value>) -> Result<(), Reply> {
        if let Some(v) = body.get("certificate") {
            let pem = v.as_str().unwrap_or("");
            if tls::parse_certs(pem).is_err() {
                return Err(Reply::error(400, "failed to parse certificate"));
            }
            self.certificate = pem.to_string();
        }
        if let Some(v) = body.get("display_name").and_then(Value::as_str) {
            self.display_name = v.to_string();
        }
        if let Some(v) = body.get("allowed_common_names") {
            self.allowed_common_names = str_list(v);
        }
        self.token.update(body)?;
        if self.token.max_ttl > 0 && self.token.ttl > self.token.max_ttl {
            return Err(Reply::error(
                400,
                "\"token_ttl\" value must be less than \"token_max_ttl\" value",
            ));
        }
        Ok(())
    }

    /// Whether `chain` (leaf first) is trusted by this role: the leaf is one
    /// of the role's certificates, or the chain verifies to one of them.
    fn trusts(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Ok(anchors) = tls::parse_certs(&self.certificate) else {
            return false;
        };
        let Some(leaf) = chain.first() else {
            return false;
        };
        anchors.iter().any(|a| a == leaf) || tls::verify_client_chain(&anchors, chain)
    }
}

/// One cert auth mount: role name → role.
#[derive(Debug, Default)]
struct Mount {
    roles: BTreeMap<String, CertRole>,
}

/// All cert auth mounts, keyed by mount name without slashes (`cert`).
#[derive(Debug, Default)]
pub(crate) struct CertAuths {
    mounts: HashMap<String, Mount>,
}

impl CertAuths {
    pub(crate) fn enable(&mut self, mount: &str) -> bool {
        let m = mount.trim_matches('/').to_string();
        if self.mounts.contains_key(&m) {
            return false;
        }
        self.mounts.insert(m, Mount::default());
        true
    }

    pub(crate) fn disable(&mut self, mount: &str) -> bool {
        self.mounts.remove(mount.trim_matches('/')).is_some()
    }

    pub(crate) fn contains(&self, mount: &str) -> bool {
        self.mounts.contains_key(mount.trim_matches('/'))
    }

    pub(crate) fn mount_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.mounts.keys().cloned().collect();
        v.sort();
        v
    }

    /// The mount owning `auth/<rest>`: (mount name, path inside the mount).
    pub(crate) fn find<'a>(&self, rest: &'a str) -> Option<(String, &'a str)> {
        let (m, inner) = rest.split_once('/').unwrap_or((rest, ""));
        self.mounts.contains_key(m).then(|| (m.to_string(), inner))
    }

    /// Test convenience: create or replace a role.
    pub(crate) fn set_role(
        &mut self,
        mount: &str,
        name: &str,
        body: &Map<String, Value>,
    ) -> Result<(), String> {
        let mount = self
            .mounts
            .get_mut(mount.trim_matches('/'))
            .ok_or_else(|| format!("no cert auth mount {mount:?}"))?;
        let mut role = CertRole::new();
        role.update(body).map_err(|r| {
            r.body
                .as_ref()
                .map(|b| b["errors"][0].to_string())
                .unwrap_or_default()
        })?;
        mount.roles.insert(name.to_string(), role);
        Ok(())
    }
}

/// The TLS side of the request a cert login arrives on.
pub(crate) struct Conn<'a> {
    pub tls: bool,
    /// Peer certificate chain, leaf first (empty = no client certificate).
    pub peer_certs: &'a [CertificateDer<'static>],
}

/// Handle `auth/<mount>/<inner>`; ACL checks were done by the caller
/// (except on `login`, which needs no token).
pub(crate) fn handle(
    certs: &mut CertAuths,
    tokens: &mut TokenStore,
    mount_name: &str,
    inner: &str,
    op: Op,
    body: &Map<String, Value>,
    conn: &Conn<'_>,
) -> Reply {
    let Some(mount) = certs.mounts.get_mut(mount_name) else {
        return Reply::not_found();
    };
    let inner = inner.trim_end_matches('/');
    let segs: Vec<&str> = inner.split('/').collect();
    match (segs.as_slice(), op) {
        (["login"], Op::Write) => login(mount, tokens, mount_name, body, conn),
        (["login"], _) => Reply::method_not_allowed(),
        (["certs"], Op::List) => {
            let keys: Vec<&String> = mount.roles.keys().collect();
            if keys.is_empty() {
                Reply::not_found()
            } else {
                Reply::data(json!({ "keys": keys }), "cert")
            }
        }
        (["certs", name], Op::Write) => {
            let mut role = mount
                .roles
                .get(*name)
                .cloned()
                .unwrap_or_else(CertRole::new);
            if let Err(r) = role.update(body) {
                return r;
            }
            if role.certificate.is_empty() {
                return Reply::error(400, "missing certificate");
            }
            mount.roles.insert(name.to_string(), role);
            Reply::no_content()
        }
        (["certs", name], Op::Read) => match mount.roles.get(*name) {
            Some(r) => Reply::data(r.describe(), "cert"),
            None => Reply::not_found(),
        },
        (["certs", name], Op::Delete) => {
            mount.roles.remove(*name);
            Reply::no_content()
        }
        (["certs", ..], _) => Reply::method_not_allowed(),
        _ => Reply::not_found(),
    }
}

/// Colon-separated lowercase hex, like Vault's `certutil.GetHexFormatted`.
fn hex_colons(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// (common name, decimal serial, subject key id, authority key id).
fn leaf_info(der: &[u8]) -> (String, String, String, String) {
    use x509_parser::extensions::ParsedExtension;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Default::default();
    };
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("")
        .to_string();
    let mut ski = String::new();
    let mut aki = String::new();
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => ski = hex_colons(k.0),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                if let Some(k) = &a.key_identifier {
                    aki = hex_colons(k.0);
                }
            }
            _ => {}
        }
    }
    (cn, cert.tbs_certificate.serial.to_string(), ski, aki)
}

/// `allowed_common_names` globs: `*` matches any run of characters.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((pre, rest)) => {
            let Some(tail) = s.strip_prefix(pre) else {
                return false;
            };
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| glob(rest, &tail[i..]))
        }
    }
}

fn login(
    mount: &mut Mount,
    tokens: &mut TokenStore,
    mount_name: &str,
    body: &Map<String, Value>,
    conn: &Conn<'_>,
) -> Reply {
    if !conn.tls {
        return Reply::error(400, "tls connection required");
    }
    let Some(leaf) = conn.peer_certs.first() else {
        return Reply::error(400, "client certificate must be supplied");
    };
    // vaultrs sends `cert_name`, the docs say `name`.
    let wanted = ["name", "cert_name"]
        .iter()
        .filter_map(|k| body.get(*k).and_then(Value::as_str))
        .find(|n| !n.is_empty());
    let candidates: Vec<(&String, &CertRole)> = match wanted {
        Some(n) => mount
            .roles
            .iter()
            .filter(|(k, _)| k.as_str() == n)
            .collect(),
        None => mount.roles.iter().collect(),
    };
    let (cn, serial, ski, aki) = leaf_info(leaf);
    let trusted: Vec<(&String, &CertRole)> = candidates
        .into_iter()
        .filter(|(_, r)| r.trusts(conn.peer_certs))
        .collect();
    if trusted.is_empty() {
        return Reply::error(400, INVALID_CERT);
    }
    let Some((name, role)) = trusted.into_iter().find(|(_, r)| {
        r.allowed_common_names.is_empty() || r.allowed_common_names.iter().any(|p| glob(p, &cn))
    }) else {
        return Reply::error(400, NO_MATCHING_CHAIN);
    };
    let meta = BTreeMap::from([
        ("cert_name".to_string(), name.clone()),
        ("common_name".to_string(), cn),
        ("serial_number".to_string(), serial),
        ("subject_key_id".to_string(), ski),
        ("authority_key_id".to_string(), aki),
    ]);
    let display = if role.display_name.is_empty() {
        name.as_str()
    } else {
        role.display_name.as_str()
    };
    let token = role.token.issue(
        tokens,
        meta,
        format!("{mount_name}-{display}"),
        format!("auth/{mount_name}/login"),
    );
    Reply::auth(token.auth_block(), "cert", Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("docker-*", "docker-host"));
        assert!(glob("*", ""));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("docker-*", "other"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }

    #[test]
    fn hex() {
        assert_eq!(hex_colons(&[0x0a, 0xff, 0x10]), "0a:ff:10");
    }
}
