//! Volume records on disk: one JSON file per volume under `<state_dir>/volumes/`, written atomically (temporary
//! file, fsync, rename, fsync of the directory), so a crash leaves either the old record or the new one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::names::escape_component;
use crate::volumes::{RecordStore, StoreError, VolumeRecord};

/// Records stored as files in a root-only directory.
pub struct DirRecordStore {
    dir: PathBuf,
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
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_error(&dir))?;
        Ok(DirRecordStore { dir })
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.json", escape_component(name)))
    }
}

impl RecordStore for DirRecordStore {
    fn load_all(&self) -> Result<Vec<VolumeRecord>, StoreError> {
        let mut records = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error(&self.dir))? {
            let path = entry.map_err(io_error(&self.dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue; // leftover temporary files of an interrupted write
            }
            let text = fs::read(&path).map_err(io_error(&path))?;
            let record = serde_json::from_slice(&text)
                .map_err(|source| StoreError::Corrupt { path, source })?;
            records.push(record);
        }
        Ok(records)
    }

    fn save(&self, record: &VolumeRecord) -> Result<(), StoreError> {
        let path = self.record_path(&record.name);
        let temporary = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(record).map_err(|source| StoreError::Corrupt {
            path: path.clone(),
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
        fs::rename(&temporary, &path).map_err(io_error(&path))?;
        self.sync_dir()
    }

    fn remove(&self, name: &str) -> Result<(), StoreError> {
        let path = self.record_path(name);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error(&path)(error)),
        }
    }
}

impl DirRecordStore {
    fn sync_dir(&self) -> Result<(), StoreError> {
        fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(&self.dir))
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
    fn a_corrupt_record_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirRecordStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("volumes/bad.json"), b"not json").unwrap();
        let error = store.load_all().unwrap_err().to_string();
        assert!(error.contains("bad.json"), "{error}");
    }
}
