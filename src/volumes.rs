//! Volume bookkeeping: records, mount reference counts and the mountpoint of each volume. No I/O of its own:
//! persistence goes through [`RecordStore`] and mounting through [`Mounter`], so tests drive it with fakes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::names::{escape_component, NameError, VaultPath};

/// What is persisted about a volume. Never a credential: options are shown by `docker volume inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRecord {
    /// The Docker volume name, exactly as given (a Vault path).
    pub name: String,
    /// Options given at create.
    pub options: BTreeMap<String, String>,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// Errors of volume operations; the plugin edge turns them into `{"Err": ...}`.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("invalid volume name {name:?}: {reason}")]
    InvalidName { name: String, reason: NameError },
    #[error("unknown volume option {option:?}: this driver takes no volume options yet (Vault address and credentials belong in /etc/docker-volume-libsecret/config.toml)")]
    UnknownOption { option: String },
    #[error("no volume named {0:?}; create it with `docker volume create -d libsecret {0}`")]
    NotFound(String),
    #[error("volume {0:?} is mounted by {1} container(s); stop them before removing it")]
    InUse(String, usize),
    #[error("could not save volume state: {0}")]
    Store(#[from] StoreError),
    #[error("could not mount volume {name:?}: {reason}")]
    Mount { name: String, reason: String },
}

/// Errors of the record store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a volume record: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Where volume records live.
pub trait RecordStore: Send + Sync {
    fn load_all(&self) -> Result<Vec<VolumeRecord>, StoreError>;
    fn save(&self, record: &VolumeRecord) -> Result<(), StoreError>;
    fn remove(&self, name: &str) -> Result<(), StoreError>;
}

/// A mounted volume, live until `unmount`.
pub trait ActiveMount: Send {
    fn unmount(self: Box<Self>) -> Result<(), String>;
}

/// Mounts a volume's filesystem at a mountpoint.
pub trait Mounter: Send + Sync {
    fn mount(
        &self,
        record: &VolumeRecord,
        path: &VaultPath,
        mountpoint: &Path,
    ) -> Result<Box<dyn ActiveMount>, String>;
}

struct MountState {
    /// Mount count per Docker mount ID: each Mount of an ID is balanced by one Unmount of it.
    ids: HashMap<String, usize>,
    active: Box<dyn ActiveMount>,
}

/// A volume as `Get`/`List` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub mountpoint: Option<PathBuf>,
    pub created_at: String,
    pub options: BTreeMap<String, String>,
    pub mount_ids: usize,
}

/// Every volume of this driver, with its mounts.
pub struct Volumes {
    store: Box<dyn RecordStore>,
    mounter: Box<dyn Mounter>,
    mount_root: PathBuf,
    records: BTreeMap<String, VolumeRecord>,
    mounts: HashMap<String, MountState>,
}

impl Volumes {
    /// Loads the persisted records.
    pub fn open(
        store: Box<dyn RecordStore>,
        mounter: Box<dyn Mounter>,
        mount_root: PathBuf,
    ) -> Result<Self, StoreError> {
        let records = store
            .load_all()?
            .into_iter()
            .map(|record| (record.name.clone(), record))
            .collect();
        Ok(Volumes {
            store,
            mounter,
            mount_root,
            records,
            mounts: HashMap::new(),
        })
    }

    /// The mountpoint a volume gets: one directory per volume name under the mount root, collision-free.
    pub fn mountpoint_of(&self, name: &str) -> PathBuf {
        self.mount_root.join(escape_component(name))
    }

    fn vault_path(name: &str) -> Result<VaultPath, VolumeError> {
        VaultPath::from_volume_name(name).map_err(|reason| VolumeError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    }

    /// Creates a volume, or does nothing when it exists (Docker may repeat Create).
    pub fn create(
        &mut self,
        name: &str,
        options: BTreeMap<String, String>,
        now_rfc3339: String,
    ) -> Result<(), VolumeError> {
        Self::vault_path(name)?;
        if let Some(option) = options.keys().next() {
            return Err(VolumeError::UnknownOption {
                option: option.clone(),
            });
        }
        if self.records.contains_key(name) {
            return Ok(());
        }
        let record = VolumeRecord {
            name: name.to_owned(),
            options,
            created_at: now_rfc3339,
        };
        self.store.save(&record)?;
        self.records.insert(name.to_owned(), record);
        Ok(())
    }

    /// Removes a volume that no container uses.
    pub fn remove(&mut self, name: &str) -> Result<(), VolumeError> {
        if !self.records.contains_key(name) {
            return Err(VolumeError::NotFound(name.to_owned()));
        }
        if let Some(state) = self.mounts.get(name) {
            return Err(VolumeError::InUse(name.to_owned(), state.ids.len()));
        }
        self.store.remove(name)?;
        self.records.remove(name);
        Ok(())
    }

    /// Mounts for mount ID `id`; the first user mounts the filesystem, later ones share it.
    pub fn mount(&mut self, name: &str, id: &str) -> Result<PathBuf, VolumeError> {
        let record = self
            .records
            .get(name)
            .ok_or_else(|| VolumeError::NotFound(name.to_owned()))?;
        let mountpoint = self.mountpoint_of(name);
        if let Some(state) = self.mounts.get_mut(name) {
            *state.ids.entry(id.to_owned()).or_default() += 1;
            return Ok(mountpoint);
        }
        let path = Self::vault_path(name)?;
        let active = self
            .mounter
            .mount(record, &path, &mountpoint)
            .map_err(|reason| VolumeError::Mount {
                name: name.to_owned(),
                reason,
            })?;
        self.mounts.insert(
            name.to_owned(),
            MountState {
                ids: HashMap::from([(id.to_owned(), 1)]),
                active,
            },
        );
        Ok(mountpoint)
    }

    /// Releases one use by `id`. Unknown volumes and IDs are ignored: Docker replays Unmount after crashes.
    /// Returns whether the filesystem was unmounted.
    pub fn unmount(&mut self, name: &str, id: &str) -> Result<bool, VolumeError> {
        let Some(state) = self.mounts.get_mut(name) else {
            return Ok(false);
        };
        if let Some(count) = state.ids.get_mut(id) {
            *count -= 1;
            if *count == 0 {
                state.ids.remove(id);
            }
        }
        if !state.ids.is_empty() {
            return Ok(false);
        }
        if let Some(state) = self.mounts.remove(name) {
            state
                .active
                .unmount()
                .map_err(|reason| VolumeError::Mount {
                    name: name.to_owned(),
                    reason,
                })?;
        }
        Ok(true)
    }

    pub fn get(&self, name: &str) -> Result<VolumeInfo, VolumeError> {
        let record = self
            .records
            .get(name)
            .ok_or_else(|| VolumeError::NotFound(name.to_owned()))?;
        Ok(self.info(record))
    }

    pub fn list(&self) -> Vec<VolumeInfo> {
        self.records.values().map(|r| self.info(r)).collect()
    }

    fn info(&self, record: &VolumeRecord) -> VolumeInfo {
        let state = self.mounts.get(&record.name);
        VolumeInfo {
            name: record.name.clone(),
            mountpoint: state.map(|_| self.mountpoint_of(&record.name)),
            created_at: record.created_at.clone(),
            options: record.options.clone(),
            mount_ids: state.map_or(0, |s| s.ids.len()),
        }
    }

    /// Volumes and live mounts, for status lines.
    pub fn counts(&self) -> (usize, usize) {
        (self.records.len(), self.mounts.len())
    }

    /// Unmounts everything (driver shutdown in foreground mode).
    pub fn unmount_all(&mut self) {
        for (name, state) in self.mounts.drain() {
            if let Err(reason) = state.active.unmount() {
                tracing::warn!(volume = %name, %reason, "unmount at shutdown failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Default, Clone)]
    struct MemoryStore(Arc<Mutex<BTreeMap<String, VolumeRecord>>>);

    impl RecordStore for MemoryStore {
        fn load_all(&self) -> Result<Vec<VolumeRecord>, StoreError> {
            Ok(self.0.lock().unwrap().values().cloned().collect())
        }
        fn save(&self, record: &VolumeRecord) -> Result<(), StoreError> {
            self.0
                .lock()
                .unwrap()
                .insert(record.name.clone(), record.clone());
            Ok(())
        }
        fn remove(&self, name: &str) -> Result<(), StoreError> {
            self.0.lock().unwrap().remove(name);
            Ok(())
        }
    }

    /// Counts live mounts so tests can see exactly when the filesystem comes and goes.
    #[derive(Default, Clone)]
    struct FakeMounter(Arc<Mutex<Vec<PathBuf>>>);

    struct FakeMount(Arc<Mutex<Vec<PathBuf>>>, PathBuf);

    impl ActiveMount for FakeMount {
        fn unmount(self: Box<Self>) -> Result<(), String> {
            self.0.lock().unwrap().retain(|p| p != &self.1);
            Ok(())
        }
    }

    impl Mounter for FakeMounter {
        fn mount(
            &self,
            _record: &VolumeRecord,
            _path: &VaultPath,
            mountpoint: &Path,
        ) -> Result<Box<dyn ActiveMount>, String> {
            self.0.lock().unwrap().push(mountpoint.to_owned());
            Ok(Box::new(FakeMount(self.0.clone(), mountpoint.to_owned())))
        }
    }

    fn volumes() -> (Volumes, MemoryStore, FakeMounter) {
        let store = MemoryStore::default();
        let mounter = FakeMounter::default();
        let volumes = Volumes::open(
            Box::new(store.clone()),
            Box::new(mounter.clone()),
            PathBuf::from("/run/test/mounts"),
        )
        .unwrap();
        (volumes, store, mounter)
    }

    fn created(volumes: &mut Volumes, name: &str) {
        volumes
            .create(name, BTreeMap::new(), "2026-11-27T00:00:00Z".into())
            .unwrap();
    }

    #[test]
    fn mounts_are_counted_per_id_and_the_last_unmount_unmounts() {
        let (mut volumes, _, mounter) = volumes();
        created(&mut volumes, "secret/app-1/");
        let a = volumes.mount("secret/app-1/", "A").unwrap();
        let b = volumes.mount("secret/app-1/", "B").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, PathBuf::from("/run/test/mounts/secret%2Fapp-1%2F"));
        assert_eq!(mounter.0.lock().unwrap().len(), 1);
        assert!(!volumes.unmount("secret/app-1/", "A").unwrap());
        assert_eq!(volumes.get("secret/app-1/").unwrap().mount_ids, 1);
        assert!(volumes.unmount("secret/app-1/", "B").unwrap());
        assert!(mounter.0.lock().unwrap().is_empty());
        assert_eq!(volumes.get("secret/app-1/").unwrap().mountpoint, None);
    }

    #[test]
    fn a_repeated_mount_id_mounts_once_and_needs_its_own_unmount() {
        let (mut volumes, _, mounter) = volumes();
        created(&mut volumes, "secret/a");
        volumes.mount("secret/a", "A").unwrap();
        volumes.mount("secret/a", "A").unwrap();
        assert_eq!(mounter.0.lock().unwrap().len(), 1);
        assert_eq!(volumes.get("secret/a").unwrap().mount_ids, 1);
        assert!(!volumes.unmount("secret/a", "A").unwrap());
        assert!(volumes.unmount("secret/a", "A").unwrap());
        assert!(mounter.0.lock().unwrap().is_empty());
    }

    #[test]
    fn unknown_and_stale_unmounts_are_harmless() {
        let (mut volumes, _, mounter) = volumes();
        created(&mut volumes, "secret/a");
        assert!(!volumes.unmount("secret/a", "never-mounted").unwrap());
        assert!(!volumes.unmount("no/such/volume", "X").unwrap());
        volumes.mount("secret/a", "A").unwrap();
        assert!(!volumes.unmount("secret/a", "stale").unwrap());
        assert_eq!(mounter.0.lock().unwrap().len(), 1);
        assert!(volumes.unmount("secret/a", "A").unwrap());
        assert!(!volumes.unmount("secret/a", "A").unwrap());
    }

    #[test]
    fn records_persist_and_come_back() {
        let (mut volumes, store, _) = volumes();
        created(&mut volumes, "secret/a");
        created(&mut volumes, "secret/a");
        created(&mut volumes, "kv/b");
        let reopened = Volumes::open(
            Box::new(store),
            Box::new(FakeMounter::default()),
            PathBuf::from("/x"),
        )
        .unwrap();
        let names: Vec<_> = reopened.list().into_iter().map(|v| v.name).collect();
        assert_eq!(names, vec!["kv/b", "secret/a"]);
    }

    #[test]
    fn create_validates_names_and_options_and_remove_refuses_mounted_volumes() {
        let (mut volumes, store, _) = volumes();
        assert!(matches!(
            volumes.create("secret/../x", BTreeMap::new(), String::new()),
            Err(VolumeError::InvalidName { .. })
        ));
        let options = BTreeMap::from([("token".to_owned(), "x".to_owned())]);
        assert!(matches!(
            volumes.create("secret/a", options, String::new()),
            Err(VolumeError::UnknownOption { .. })
        ));
        assert!(store.0.lock().unwrap().is_empty());
        created(&mut volumes, "secret/a");
        volumes.mount("secret/a", "A").unwrap();
        assert!(matches!(
            volumes.remove("secret/a"),
            Err(VolumeError::InUse(..))
        ));
        volumes.unmount("secret/a", "A").unwrap();
        volumes.remove("secret/a").unwrap();
        assert!(matches!(
            volumes.mount("secret/a", "A"),
            Err(VolumeError::NotFound(_))
        ));
    }
}
