//! Volume records on disk: one JSON file per volume under `<state_dir>/volumes/`, and the mount IDs of each mounted
//! volume under `<state_dir>/mounts/`. Files are written atomically (temporary file, fsync, rename, fsync of the
//! directory), so a crash leaves either the old file or the new one. Nothing here is secret.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::names::escape_component;
use crate::volumes::{MountIds, RecordStore, StoreError, VolumeRecord};

/// Records stored as files in a root-only directory.
#[derive(Debug)]
pub struct DirRecordStore {
    dir: PathBuf,
    mounts_dir: PathBuf,
}

/// A mounted volume's IDs, as stored.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MountFile {
    volume: String,
    ids: MountIds,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl DirRecordStore {
    /// Uses `<state_dir>/volumes`, creating it (mode 0700) when missing.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join("volumes");
        let mounts_dir = state_dir.join("mounts");
        for dir in [state_dir, &dir, &mounts_dir] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_error(dir))?;
        }
        Ok(DirRecordStore { dir, mounts_dir })
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.json", escape_component(name)))
    }

    fn mounts_path(&self, name: &str) -> PathBuf {
        self.mounts_dir
            .join(format!("{}.json", escape_component(name)))
    }
}

/// Every `*.json` file in `dir`, parsed.
pub(crate) fn read_json_files<T: serde::de::DeserializeOwned>(
    dir: &Path,
) -> Result<Vec<T>, StoreError> {
    let mut items = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue; // leftover temporary files of an interrupted write
        }
        let text = fs::read(&path).map_err(io_error(&path))?;
        let item =
            serde_json::from_slice(&text).map_err(|source| StoreError::Corrupt { path, source })?;
        items.push(item);
    }
    Ok(items)
}

/// Replaces `path` (in `dir`) with `value` as JSON, atomically and durably.
pub(crate) fn write_json(
    dir: &Path,
    path: &Path,
    value: &impl serde::Serialize,
) -> Result<(), StoreError> {
    let temporary = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Corrupt {
        path: path.to_owned(),
        source,
    })?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io_error(&temporary))?;
    file.write_all(&text).map_err(io_error(&temporary))?;
    file.sync_all().map_err(io_error(&temporary))?;
    fs::rename(&temporary, path).map_err(io_error(path))?;
    sync_dir(dir)
}

/// Removes `path` (in `dir`) if it exists.
pub(crate) fn remove_file(dir: &Path, path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(dir),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error(path)(error)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(dir))
}

impl RecordStore for DirRecordStore {
    fn load_all(&self) -> Result<Vec<VolumeRecord>, StoreError> {
        read_json_files(&self.dir)
    }

    fn save(&self, record: &VolumeRecord) -> Result<(), StoreError> {
        write_json(&self.dir, &self.record_path(&record.name), record)
    }

    fn remove(&self, name: &str) -> Result<(), StoreError> {
        remove_file(&self.dir, &self.record_path(name))
    }

    fn load_mounts(&self) -> Result<Vec<(String, MountIds)>, StoreError> {
        let files: Vec<MountFile> = read_json_files(&self.mounts_dir)?;
        Ok(files.into_iter().map(|f| (f.volume, f.ids)).collect())
    }

    fn save_mounts(&self, name: &str, ids: &MountIds) -> Result<(), StoreError> {
        let path = self.mounts_path(name);
        if ids.is_empty() {
            return remove_file(&self.mounts_dir, &path);
        }
        let file = MountFile {
            volume: name.to_owned(),
            ids: ids.clone(),
        };
        write_json(&self.mounts_dir, &path, &file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn records_round_trip_and_leftover_temporaries_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirRecordStore::open(dir.path()).unwrap();
        let record = VolumeRecord {
            name: "secret/app-1/".into(),
            options: BTreeMap::new(),
            created_at: "2026-11-27T00:00:00Z".into(),
        };
        store.save(&record).unwrap();
        store.save(&record).unwrap();
        fs::write(dir.path().join("volumes/x.json.tmp"), b"{half").unwrap();
        assert_eq!(store.load_all().unwrap(), vec![record.clone()]);
        let file = dir.path().join("volumes/secret%2Fapp-1%2F.json");
        let mode = fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        store.remove("secret/app-1/").unwrap();
        store.remove("secret/app-1/").unwrap();
        assert!(store.load_all().unwrap().is_empty());
    }

    #[test]
    fn mount_ids_round_trip_and_an_empty_set_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirRecordStore::open(dir.path()).unwrap();
        let ids = MountIds::from([("a".repeat(64), 2), ("b".repeat(64), 1)]);
        store.save_mounts("secret/x", &ids).unwrap();
        assert_eq!(
            store.load_mounts().unwrap(),
            vec![("secret/x".to_owned(), ids)]
        );
        store.save_mounts("secret/x", &MountIds::new()).unwrap();
        assert!(store.load_mounts().unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_record_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirRecordStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("volumes/bad.json"), b"not json").unwrap();
        let error = store.load_all().unwrap_err().to_string();
        assert!(error.contains("bad.json"), "{error}");
    }
}
