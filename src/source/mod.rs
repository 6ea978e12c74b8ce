//! The boundary between the filesystem and wherever secrets live (Vault, a file, a test fake).

pub mod cache;
pub mod file;
pub mod limits;
pub mod router;
pub mod vault;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use zeroize::Zeroizing;

use crate::lease::{IssueRequest, Issued, LeaseRef, Renewed};
use crate::names::{VaultPath, View};

/// Why a source could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// No secret at that path (Vault 404, a deleted KV v2 version, a missing file entry).
    #[error("not found")]
    NotFound,
    /// The source refused (Vault 403). The reason is the server's text, which never holds a secret.
    #[error("permission denied: {0}")]
    Denied(String),
    /// The driver itself refuses to serve the path: it belongs to a secrets engine that is not KV (cubbyhole, sys,
    /// database, ...), or names a namespace in the path. The text says which and why.
    #[error("refused: {0}")]
    Refused(String),
    /// The source could not be asked: unreachable, sealed, 5xx, timed out, malformed answer.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Fields of one secret. Values stay in memory only and are never printed by `Debug`.
#[derive(Clone, PartialEq)]
pub struct Secret {
    fields: BTreeMap<String, serde_json::Value>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Wipes the strings inside a JSON value (field values, nested strings and object keys). Numbers and booleans are
/// held by serde_json in a form that cannot be wiped; they are rarely secret on their own.
fn wipe(value: &mut serde_json::Value) {
    use zeroize::Zeroize;
    match value {
        serde_json::Value::String(text) => text.zeroize(),
        serde_json::Value::Array(items) => items.iter_mut().for_each(wipe),
        serde_json::Value::Object(map) => {
            let entries = std::mem::take(map);
            for (mut key, mut item) in entries {
                wipe(&mut item);
                key.zeroize();
            }
        }
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {}
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.fields.values_mut().for_each(wipe);
    }
}

/// Bytes of a rendered secret; wiped from memory when dropped.
pub type SecretBytes = Zeroizing<Vec<u8>>;

impl Secret {
    pub fn new(fields: BTreeMap<String, serde_json::Value>) -> Self {
        Secret { fields }
    }

    /// The file content for a view, or `None` when the view names a field the secret lacks.
    ///
    /// Strings render as their bytes, with no added newline. Other JSON values (numbers, booleans, objects, arrays,
    /// null) render as compact JSON text.
    pub fn render(&self, view: &View) -> Option<SecretBytes> {
        match view {
            View::Field(name) => self.fields.get(name).map(render_value),
            View::Json => Some(self.render_json()),
            View::Default => match self.fields.get("value") {
                Some(value) => Some(render_value(value)),
                None if self.fields.len() == 1 => self.fields.values().next().map(render_value),
                None => Some(self.render_json()),
            },
        }
    }

    fn render_json(&self) -> SecretBytes {
        // Serialising a map of JSON values cannot fail: every key is a string.
        Zeroizing::new(serde_json::to_vec(&self.fields).unwrap_or_default())
    }
}

fn render_value(value: &serde_json::Value) -> SecretBytes {
    match value {
        serde_json::Value::String(text) => Zeroizing::new(text.as_bytes().to_vec()),
        other => Zeroizing::new(serde_json::to_vec(other).unwrap_or_default()),
    }
}

/// The children of `dir` among `keys` (full secret paths), as Vault lists a folder: a secret's name, or `folder/`
/// for a folder with secrets below it; sorted, each once. Sources that hold every key in memory list with this.
/// `NotFound` when there are none, as Vault answers for a folder with nothing below it.
pub fn children_of<'a>(
    keys: impl IntoIterator<Item = &'a String>,
    dir: &VaultPath,
) -> Result<Vec<String>, SourceError> {
    let prefix = format!("{}/", dir.as_str());
    let mut names: Vec<String> = keys
        .into_iter()
        .filter_map(|key| key.strip_prefix(&prefix))
        .map(|rest| match rest.split_once('/') {
            Some((folder, _)) => format!("{folder}/"),
            None => rest.to_owned(),
        })
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(SourceError::NotFound);
    }
    Ok(names)
}

/// How a dynamic engine is asked for a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DynamicKind {
    /// A read (`database/creds/<role>`, `aws/creds/<role>`, ...).
    Read,
    /// A write with the volume's parameters (`pki/issue/<role>`).
    PkiIssue,
}

/// What the driver says when a source has no dynamic engines.
const NO_DYNAMIC: &str = "this secret backend has no dynamic secrets engines";

/// Where secrets come from. The filesystem only ever talks to this trait.
#[async_trait]
pub trait SecretSource: Send + Sync + 'static {
    /// Reads the secret at `path`.
    async fn read(&self, path: &VaultPath) -> Result<Secret, SourceError>;

    /// Reads one version of the secret at `path` (KV v2). A source without versions has none of them.
    async fn read_version(&self, _path: &VaultPath, _version: u64) -> Result<Secret, SourceError> {
        Err(SourceError::NotFound)
    }

    /// Whether `path` may be served as files at all (Vault: it lies in a KV mount), asked at Create and Mount. The
    /// same check is made again on every read. A source without engines serves everything.
    async fn check_served(&self, _path: &VaultPath) -> Result<(), SourceError> {
        Ok(())
    }

    /// Whether `path` is a folder holding at least one secret (used only to resolve a nested name such as
    /// `team/db`; the answer is never shown as a listing).
    async fn is_folder(&self, path: &VaultPath) -> Result<bool, SourceError>;

    /// The names directly below folder `dir`, as Vault's LIST gives them: `name` for a secret, `name/` for a folder
    /// (both when a secret and a folder share a name). A folder with nothing below it is `NotFound`. Used only to
    /// decide which names exist (never shown as a listing). A source that cannot list says `Unavailable`, and every
    /// name is then read instead.
    async fn list(&self, _dir: &VaultPath) -> Result<Vec<String>, SourceError> {
        Err(SourceError::Unavailable(
            "this source cannot list".to_owned(),
        ))
    }

    /// Whether `path` may be served as a dynamic volume (its engine mints credentials: database, pki, aws, ...),
    /// and how it is asked. Asked at Create, Mount and before every issue. KV paths are refused here.
    async fn check_dynamic(&self, _path: &VaultPath) -> Result<DynamicKind, SourceError> {
        Err(SourceError::Refused(NO_DYNAMIC.to_owned()))
    }

    /// Mints one credential. Called once per lease holder and once per re-issue, never by a read or a refresh.
    async fn issue(&self, _request: &IssueRequest) -> Result<Issued, SourceError> {
        Err(SourceError::Refused(NO_DYNAMIC.to_owned()))
    }

    /// Renews a lease by `increment`. A lease Vault no longer knows (revoked, expired) is `NotFound`.
    async fn renew_lease(
        &self,
        _lease: &LeaseRef,
        _increment: std::time::Duration,
    ) -> Result<Renewed, SourceError> {
        Err(SourceError::Refused(NO_DYNAMIC.to_owned()))
    }

    /// Revokes what was issued: the lease, or a certificate without one by its serial. A lease already gone is not
    /// an error.
    async fn revoke_lease(&self, _lease: &LeaseRef) -> Result<(), SourceError> {
        Err(SourceError::Refused(NO_DYNAMIC.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(value: serde_json::Value) -> Secret {
        Secret::new(serde_json::from_value(value).unwrap())
    }

    fn text(bytes: Option<SecretBytes>) -> Option<String> {
        bytes.map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn default_view_prefers_value_then_single_field_then_json() {
        let with_value = secret(json!({"value": "v", "other": "o"}));
        assert_eq!(text(with_value.render(&View::Default)).unwrap(), "v");

        let single = secret(json!({"password": "p"}));
        assert_eq!(text(single.render(&View::Default)).unwrap(), "p");

        let many = secret(json!({"user": "u", "password": "p"}));
        assert_eq!(
            text(many.render(&View::Default)).unwrap(),
            r#"{"password":"p","user":"u"}"#
        );
    }

    #[test]
    fn field_and_json_views() {
        let s = secret(json!({"user": "u", "port": 5432, "tls": true, "nested": {"a": 1}}));
        assert_eq!(text(s.render(&View::Field("user".into()))).unwrap(), "u");
        assert_eq!(text(s.render(&View::Field("port".into()))).unwrap(), "5432");
        assert_eq!(text(s.render(&View::Field("tls".into()))).unwrap(), "true");
        assert_eq!(
            text(s.render(&View::Field("nested".into()))).unwrap(),
            r#"{"a":1}"#
        );
        assert_eq!(s.render(&View::Field("missing".into())), None);
        assert_eq!(
            text(s.render(&View::Json)).unwrap(),
            r#"{"nested":{"a":1},"port":5432,"tls":true,"user":"u"}"#
        );
    }

    #[test]
    fn debug_never_shows_values() {
        let s = secret(json!({"value": "hunter2"}));
        let printed = format!("{s:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("value"));
    }
}
