//! The file backend: secrets from a root-owned TOML file, or a directory of them, on the host.
//!
//! ```toml
//! "secret/app-1/db-password" = "s3cr3t"                  # one field, `value`
//! "secret/app-1/db" = { user = "app", password = "pw" }   # several fields
//! ```
//!
//! The file is read again on every cache miss, so edits show up within `cache_ttl` without a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::names::VaultPath;
use crate::source::{Secret, SecretSource, SourceError};
use crate::sys::root_only::{read_root_only, Keep};

#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
}

type Secrets = BTreeMap<String, BTreeMap<String, serde_json::Value>>;

impl FileSource {
    /// Checks once that the file can be read and parsed, so a broken file fails at start, not at first mount.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let source = FileSource {
            path: path.to_owned(),
        };
        source.load()?;
        Ok(source)
    }

    fn files(&self) -> Result<Vec<PathBuf>, SourceError> {
        let unreadable =
            |e: std::io::Error| SourceError::Unavailable(format!("{}: {e}", self.path.display()));
        if !self.path.is_dir() {
            return Ok(vec![self.path.clone()]);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.path)
            .map_err(unreadable)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("toml"))
            .collect();
        files.sort();
        Ok(files)
    }

    fn load(&self) -> Result<Secrets, SourceError> {
        let mut secrets = Secrets::new();
        for file in self.files()? {
            let unavailable =
                |reason: String| SourceError::Unavailable(format!("{}: {reason}", file.display()));
            let bytes = read_root_only(&file, Keep::UnwritableByOthers)
                .map_err(|e| unavailable(e.to_string()))?;
            let text = std::str::from_utf8(&bytes).map_err(|e| unavailable(e.to_string()))?;
            let table: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| unavailable(e.message().to_owned()))?;
            for (path, value) in table {
                let fields = match value {
                    toml::Value::String(text) => {
                        BTreeMap::from([("value".to_owned(), serde_json::Value::String(text))])
                    }
                    toml::Value::Table(fields) => fields
                        .into_iter()
                        .map(|(name, value)| Ok((name, toml_to_json(value)?)))
                        .collect::<Result<_, String>>()
                        .map_err(unavailable)?,
                    _ => {
                        return Err(unavailable(format!(
                            "key {path:?}: a secret is a string or a table of fields"
                        )))
                    }
                };
                let path = path.trim_matches('/').to_owned();
                if secrets.insert(path.clone(), fields).is_some() {
                    return Err(unavailable(format!("secret {path:?} is defined twice")));
                }
            }
        }
        Ok(secrets)
    }
}

fn toml_to_json(value: toml::Value) -> Result<serde_json::Value, String> {
    serde_json::to_value(value).map_err(|e| e.to_string())
}

#[async_trait]
impl SecretSource for FileSource {
    async fn read(&self, path: &VaultPath) -> Result<Secret, SourceError> {
        let mut secrets = self.load()?;
        secrets
            .remove(path.as_str())
            .map(Secret::new)
            .ok_or(SourceError::NotFound)
    }

    async fn is_folder(&self, path: &VaultPath) -> Result<bool, SourceError> {
        let prefix = format!("{}/", path.as_str());
        Ok(self.load()?.keys().any(|key| key.starts_with(&prefix)))
    }

    /// As Vault lists a folder: so a container probing names costs one read of the file per folder per
    /// `negative_ttl`, not one per name.
    async fn list(&self, dir: &VaultPath) -> Result<Vec<String>, SourceError> {
        crate::source::children_of(self.load()?.keys(), dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::View;
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn vault_path(p: &str) -> VaultPath {
        VaultPath::from_volume_name(p).unwrap()
    }

    #[tokio::test]
    async fn strings_tables_and_folders() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets.toml");
        write(
            &file,
            r#"
            "secret/app-1/db-password" = "s3cr3t"
            "secret/app-1/db" = { user = "app", port = 5432 }
            "secret/app-1/team/db" = "nested"
            "#,
        );
        let source = FileSource::open(&file).unwrap();
        let secret = source
            .read(&vault_path("secret/app-1/db-password"))
            .await
            .unwrap();
        assert_eq!(secret.render(&View::Default).unwrap().as_slice(), b"s3cr3t");
        let mut listed = source.list(&vault_path("secret/app-1")).await.unwrap();
        listed.sort();
        assert_eq!(listed, ["db", "db-password", "team/"]);
        assert_eq!(
            source.list(&vault_path("secret")).await.unwrap(),
            ["app-1/"]
        );
        assert_eq!(
            source.list(&vault_path("secret/app-1/db")).await,
            Err(SourceError::NotFound)
        );
        let db = source.read(&vault_path("secret/app-1/db")).await.unwrap();
        assert_eq!(
            db.render(&View::Field("port".into())).unwrap().as_slice(),
            b"5432"
        );
        assert!(source
            .is_folder(&vault_path("secret/app-1/team"))
            .await
            .unwrap());
        assert!(!source
            .is_folder(&vault_path("secret/app-1/db"))
            .await
            .unwrap());
        assert_eq!(
            source.read(&vault_path("secret/app-1/missing")).await,
            Err(SourceError::NotFound)
        );
    }

    #[tokio::test]
    async fn a_directory_merges_its_toml_files_and_edits_show_up() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("a.toml"), "\"secret/a\" = \"1\"\n");
        write(&dir.path().join("b.toml"), "\"secret/b\" = \"2\"\n");
        let source = FileSource::open(dir.path()).unwrap();
        assert!(source.read(&vault_path("secret/b")).await.is_ok());
        write(&dir.path().join("a.toml"), "\"secret/a\" = \"changed\"\n");
        let secret = source.read(&vault_path("secret/a")).await.unwrap();
        assert_eq!(
            secret.render(&View::Default).unwrap().as_slice(),
            b"changed"
        );
        write(&dir.path().join("c.toml"), "\"secret/a\" = \"twice\"\n");
        assert!(matches!(
            source.read(&vault_path("secret/a")).await,
            Err(SourceError::Unavailable(_))
        ));
    }

    #[test]
    fn unsafe_or_broken_files_are_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        write(&file, "\"secret/a\" = \"1\"\n");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(FileSource::open(&file).is_err());
        write(&file, "not toml [");
        assert!(FileSource::open(&file).is_err());
        write(&file, "\"secret/a\" = 5\n");
        assert!(FileSource::open(&file).is_err());
    }
}
