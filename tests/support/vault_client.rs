//! The product's Vault client as the tests set it up: configs with a 2 s timeout, reads as text, credential files,
//! and what OpenBao's audit log says about the requests it made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use docker_volume_libsecret::config::{AuthMethod, Credential, VaultConfig};
use docker_volume_libsecret::names::{VaultPath, View};
use docker_volume_libsecret::source::vault::VaultSource;
use docker_volume_libsecret::source::{Secret, SecretSource, SourceError};

use super::openbao::AuditRequest;

pub fn path(p: &str) -> VaultPath {
    VaultPath::from_volume_name(p).unwrap()
}

/// Reads with `token`, given inline.
pub fn token_config(addr: &str, token: &str) -> VaultConfig {
    VaultConfig {
        addr: vec![addr.to_owned()],
        token: Some(Credential::new(token.to_owned())),
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    }
}

/// Reads with the token in `token_file`.
pub fn token_file_config(addr: &str, token_file: PathBuf) -> VaultConfig {
    VaultConfig {
        addr: vec![addr.to_owned()],
        token_file: Some(token_file),
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    }
}

/// Logs in with AppRole, the role and secret IDs in files.
pub fn approle_config(addr: &str, role_id_file: PathBuf, secret_id_file: PathBuf) -> VaultConfig {
    let mut config = VaultConfig {
        addr: vec![addr.to_owned()],
        auth: AuthMethod::Approle,
        timeout: Duration::from_secs(2),
        ..VaultConfig::default()
    };
    config.approle.role_id_file = Some(role_id_file);
    config.approle.secret_id_file = Some(secret_id_file);
    config
}

/// A root-only credential file holding `value` and a trailing newline, as operators write them.
pub fn credential_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    super::root_only_file(dir, name, &format!("{value}\n"))
}

/// A secret's default view as text.
pub fn text(secret: &Secret) -> String {
    String::from_utf8(secret.render(&View::Default).unwrap().to_vec()).unwrap()
}

/// Reads `p` and renders its default view.
pub async fn value(source: &VaultSource, p: &str) -> Result<String, SourceError> {
    Ok(text(&source.read(&path(p)).await?))
}

/// The audited requests with `operation` (`read` for GET, `update` for POST) on exactly `path`.
pub fn count(requests: &[AuditRequest], operation: &str, path: &str) -> usize {
    requests
        .iter()
        .filter(|r| r.operation == operation && r.path == path)
        .count()
}

/// Each audited request as `<operation> <path> [<namespace>]`, for failure messages.
pub fn paths(requests: &[AuditRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| format!("{} {} [{}]", r.operation, r.path, r.namespace))
        .collect()
}
