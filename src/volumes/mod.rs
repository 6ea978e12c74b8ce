//! Volume bookkeeping: records, mount reference counts and the mountpoint of each volume. No I/O of its own:
//! persistence goes through [`RecordStore`] and mounting through [`Mounter`], so tests drive it with fakes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::names::{escape_component, NameError, VaultPath};

mod options;
pub mod store;

pub use options::{parse_mode, VolumeOptions};

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
    #[error("unknown volume option {option:?}: volume options are {known} (Vault address and credentials belong in /etc/docker-volume-libsecret/config.toml, never in volume options, which docker volume inspect shows)", known = VolumeOptions::KNOWN.join(", "))]
    UnknownOption { option: String },
    #[error("volume option {option:?} looks like a credential and is refused: Docker stores volume options and shows them to anyone who may run docker volume inspect; put credentials in /etc/docker-volume-libsecret/config.toml (token_file, [vault.approle], or an access rule's auth)")]
    CredentialOption { option: String },
    #[error("volume option {option:?}: {reason}")]
    BadOption { option: String, reason: String },
    #[error("no volume named {0:?}; create it with `docker volume create -d libsecret {0}`")]
    NotFound(String),
    #[error("volume {0:?} is mounted by {1} container(s); stop them before removing it")]
    InUse(String, usize),
    #[error("could not save volume state: {0}")]
    Store(#[from] StoreError),
    #[error("could not mount volume {name:?}: {reason}")]
    Mount { name: String, reason: String },
    #[error(transparent)]
    Refused(Box<crate::access::AccessError>),
    #[error("volume {name:?} is not served: {reason}")]
    NotServed { name: String, reason: String },
}

impl From<crate::access::AccessError> for VolumeError {
    fn from(refusal: crate::access::AccessError) -> Self {
        VolumeError::Refused(Box::new(refusal))
    }
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

/// Mount count per Docker mount ID: each Mount of an ID is balanced by one Unmount of it.
pub type MountIds = BTreeMap<String, usize>;

/// Where volume records, and the mount IDs of mounted volumes, live.
pub trait RecordStore: Send + Sync {
    fn load_all(&self) -> Result<Vec<VolumeRecord>, StoreError>;
    fn save(&self, record: &VolumeRecord) -> Result<(), StoreError>;
    fn remove(&self, name: &str) -> Result<(), StoreError>;
    /// Mount IDs of volumes that were mounted when last saved, so a restarted driver can adopt live mounts.
    fn load_mounts(&self) -> Result<Vec<(String, MountIds)>, StoreError>;
    /// Saves a volume's mount IDs; an empty map forgets them.
    fn save_mounts(&self, name: &str, ids: &MountIds) -> Result<(), StoreError>;
}

/// A mounted volume, live until `unmount`.
pub trait ActiveMount: Send {
    fn unmount(self: Box<Self>) -> Result<(), String>;
    /// Whether the filesystem still answers (its server runs and the mountpoint is not stale).
    fn is_alive(&self) -> bool;
    /// Whether the mount outlives the driver process (a systemd unit) and must be left running at shutdown.
    fn outlives_driver(&self) -> bool;
}

/// Admits a volume at Create and Mount by what only the secret source knows (its engine type). Asked before the
/// volumes are locked, since it may wait for Vault.
#[async_trait::async_trait]
pub trait VolumeGate: Send + Sync {
    async fn admit(
        &self,
        name: &str,
        path: &VaultPath,
        namespace: Option<&str>,
    ) -> Result<(), VolumeError>;
}

/// Mounts a volume's filesystem at a mountpoint.
pub trait Mounter: Send + Sync {
    fn mount(
        &self,
        record: &VolumeRecord,
        path: &VaultPath,
        mountpoint: &Path,
    ) -> Result<Box<dyn ActiveMount>, String>;

    /// A live mount of `record` left by an earlier driver process, if there is one.
    fn adopt(&self, _record: &VolumeRecord, _mountpoint: &Path) -> Option<Box<dyn ActiveMount>> {
        None
    }
}

struct MountState {
    ids: MountIds,
    active: Box<dyn ActiveMount>,
}

/// A volume as `Get`/`List` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub mountpoint: Option<PathBuf>,
    pub created_at: String,
    pub mount_ids: usize,
}

/// Every volume of this driver, with its mounts.
pub struct Volumes {
    store: Box<dyn RecordStore>,
    mounter: Box<dyn Mounter>,
    mount_root: PathBuf,
    records: BTreeMap<String, VolumeRecord>,
    mounts: HashMap<String, MountState>,
    access: crate::access::AccessRules,
}

impl Volumes {
    /// Loads the persisted records and adopts the mounts an earlier driver process left running; mount IDs whose
    /// mount is gone (after a reboot or crash) are forgotten, since Docker sends Mount again when it needs one.
    pub fn open(
        store: Box<dyn RecordStore>,
        mounter: Box<dyn Mounter>,
        mount_root: PathBuf,
    ) -> Result<Self, StoreError> {
        Self::open_with_access(
            store,
            mounter,
            mount_root,
            crate::access::AccessRules::allow_all(),
        )
    }

    /// [`open`](Self::open) under `access`: a running mount whose volume the rules now refuse is stopped, not
    /// adopted, so a rule added while the driver was down also holds for containers that were running.
    pub fn open_with_access(
        store: Box<dyn RecordStore>,
        mounter: Box<dyn Mounter>,
        mount_root: PathBuf,
        access: crate::access::AccessRules,
    ) -> Result<Self, StoreError> {
        let records: BTreeMap<String, VolumeRecord> = store
            .load_all()?
            .into_iter()
            .map(|record| (record.name.clone(), record))
            .collect();
        let mut volumes = Volumes {
            store,
            mounter,
            mount_root,
            records,
            mounts: HashMap::new(),
            access,
        };
        for (name, ids) in volumes.store.load_mounts()? {
            let adopted = volumes
                .records
                .get(&name)
                .and_then(|record| volumes.mounter.adopt(record, &volumes.mountpoint_of(&name)));
            let refusal = volumes.records.get(&name).and_then(|record| {
                let namespace = VolumeOptions::parse(&record.options).ok()?.namespace;
                volumes.check_access(&name, namespace.as_deref()).err()
            });
            match (adopted, refusal) {
                (Some(active), Some(refusal)) => {
                    tracing::warn!(volume = %name, reason = %refusal, "stopping a running mount the access rules now refuse");
                    if let Err(reason) = active.unmount() {
                        tracing::warn!(volume = %name, %reason, "could not stop the refused mount");
                    }
                    volumes.store.save_mounts(&name, &MountIds::new())?;
                }
                (Some(active), None) if !ids.is_empty() => {
                    tracing::info!(volume = %name, mount_ids = ids.len(), "adopted a running mount");
                    volumes.mounts.insert(name, MountState { ids, active });
                }
                (_, _) => {
                    tracing::info!(volume = %name, "forgot mount IDs of a mount that is gone");
                    volumes.store.save_mounts(&name, &MountIds::new())?;
                }
            }
        }
        Ok(volumes)
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

    /// Restricts which paths may be volumes (checked at Create and at every Mount, so a rule added later also
    /// applies to volumes created before it).
    pub fn set_access(&mut self, access: crate::access::AccessRules) {
        self.access = access;
    }

    fn check_access(&self, name: &str, namespace: Option<&str>) -> Result<(), VolumeError> {
        let path = Self::vault_path(name)?;
        self.access.decide(namespace, &path).map(|_| ()).map_err(|refusal| {
            tracing::warn!(volume = %name, reason = %refusal, "volume refused by the access rules");
            VolumeError::from(refusal)
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
        let parsed = VolumeOptions::parse(&options)?;
        self.check_access(name, parsed.namespace.as_deref())?;
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
        let namespace = VolumeOptions::parse(&record.options)?.namespace;
        self.check_access(name, namespace.as_deref())?;
        let mountpoint = self.mountpoint_of(name);
        let mut state = match self.mounts.remove(name) {
            // A dead server's mountpoint is never handed out: serve it again, keeping the counts.
            Some(state) if !state.active.is_alive() => {
                tracing::warn!(volume = %name, "the mount's server is gone; mounting again");
                let _ = state.active.unmount();
                MountState {
                    ids: state.ids,
                    active: self.mount_filesystem(record, &mountpoint)?,
                }
            }
            Some(state) => state,
            None => MountState {
                ids: MountIds::new(),
                active: self.mount_filesystem(record, &mountpoint)?,
            },
        };
        *state.ids.entry(id.to_owned()).or_default() += 1;
        let saved = self.store.save_mounts(name, &state.ids);
        self.mounts.insert(name.to_owned(), state);
        saved?;
        Ok(mountpoint)
    }

    fn mount_filesystem(
        &self,
        record: &VolumeRecord,
        mountpoint: &Path,
    ) -> Result<Box<dyn ActiveMount>, VolumeError> {
        let path = Self::vault_path(&record.name)?;
        self.mounter
            .mount(record, &path, mountpoint)
            .map_err(|reason| VolumeError::Mount {
                name: record.name.clone(),
                reason,
            })
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
        self.store.save_mounts(name, &state.ids)?;
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

    /// The options volume `name` was created with.
    pub fn options_of(&self, name: &str) -> Result<BTreeMap<String, String>, VolumeError> {
        self.records
            .get(name)
            .map(|record| record.options.clone())
            .ok_or_else(|| VolumeError::NotFound(name.to_owned()))
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
            mount_ids: state.map_or(0, |s| s.ids.len()),
        }
    }

    /// Volumes and live mounts, for status lines.
    pub fn counts(&self) -> (usize, usize) {
        (self.records.len(), self.mounts.len())
    }

    /// Driver shutdown: unmounts what this process serves, and leaves mounts that outlive it (systemd units)
    /// running for running containers, to be adopted by the next driver process.
    pub fn shutdown(&mut self) {
        for (name, state) in self.mounts.drain() {
            if state.active.outlives_driver() {
                continue;
            }
            if let Err(reason) = state.active.unmount() {
                tracing::warn!(volume = %name, %reason, "unmount at shutdown failed");
            }
            if let Err(error) = self.store.save_mounts(&name, &MountIds::new()) {
                tracing::warn!(volume = %name, %error, "could not clear mount IDs");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryRecordStore as MemoryStore;
    use std::sync::{Arc, Mutex};

    /// Counts live mounts so tests can see exactly when the filesystem comes and goes. `outlives` makes its mounts
    /// behave like systemd units: they survive the driver and can be adopted.
    #[derive(Default, Clone)]
    struct FakeMounter {
        live: Arc<Mutex<Vec<PathBuf>>>,
        outlives: bool,
    }

    struct FakeMount(Arc<Mutex<Vec<PathBuf>>>, PathBuf, bool);

    impl ActiveMount for FakeMount {
        fn unmount(self: Box<Self>) -> Result<(), String> {
            self.0.lock().unwrap().retain(|p| p != &self.1);
            Ok(())
        }
        fn is_alive(&self) -> bool {
            self.0.lock().unwrap().contains(&self.1)
        }
        fn outlives_driver(&self) -> bool {
            self.2
        }
    }

    impl Mounter for FakeMounter {
        fn mount(
            &self,
            _record: &VolumeRecord,
            _path: &VaultPath,
            mountpoint: &Path,
        ) -> Result<Box<dyn ActiveMount>, String> {
            self.live.lock().unwrap().push(mountpoint.to_owned());
            Ok(Box::new(FakeMount(
                self.live.clone(),
                mountpoint.to_owned(),
                self.outlives,
            )))
        }
        fn adopt(&self, _record: &VolumeRecord, mountpoint: &Path) -> Option<Box<dyn ActiveMount>> {
            let alive = self.live.lock().unwrap().iter().any(|p| p == mountpoint);
            (self.outlives && alive).then(|| {
                Box::new(FakeMount(self.live.clone(), mountpoint.to_owned(), true))
                    as Box<dyn ActiveMount>
            })
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
        assert_eq!(mounter.live.lock().unwrap().len(), 1);
        assert!(!volumes.unmount("secret/app-1/", "A").unwrap());
        assert_eq!(volumes.get("secret/app-1/").unwrap().mount_ids, 1);
        assert!(volumes.unmount("secret/app-1/", "B").unwrap());
        assert!(mounter.live.lock().unwrap().is_empty());
        assert_eq!(volumes.get("secret/app-1/").unwrap().mountpoint, None);
    }

    #[test]
    fn a_repeated_mount_id_mounts_once_and_needs_its_own_unmount() {
        let (mut volumes, _, mounter) = volumes();
        created(&mut volumes, "secret/a");
        volumes.mount("secret/a", "A").unwrap();
        volumes.mount("secret/a", "A").unwrap();
        assert_eq!(mounter.live.lock().unwrap().len(), 1);
        assert_eq!(volumes.get("secret/a").unwrap().mount_ids, 1);
        assert!(!volumes.unmount("secret/a", "A").unwrap());
        assert!(volumes.unmount("secret/a", "A").unwrap());
        assert!(mounter.live.lock().unwrap().is_empty());
    }

    #[test]
    fn unknown_and_stale_unmounts_are_harmless() {
        let (mut volumes, _, mounter) = volumes();
        created(&mut volumes, "secret/a");
        assert!(!volumes.unmount("secret/a", "never-mounted").unwrap());
        assert!(!volumes.unmount("no/such/volume", "X").unwrap());
        volumes.mount("secret/a", "A").unwrap();
        assert!(!volumes.unmount("secret/a", "stale").unwrap());
        assert_eq!(mounter.live.lock().unwrap().len(), 1);
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

    fn reopen(store: &MemoryStore, mounter: &FakeMounter) -> Volumes {
        Volumes::open(
            Box::new(store.clone()),
            Box::new(mounter.clone()),
            PathBuf::from("/run/test/mounts"),
        )
        .unwrap()
    }

    /// Volumes over mounts that outlive the driver (like systemd units), with `secret/a` mounted by ID `A`.
    fn units_with_one_mount() -> (MemoryStore, FakeMounter, Volumes) {
        let store = MemoryStore::default();
        let mounter = FakeMounter {
            outlives: true,
            ..FakeMounter::default()
        };
        let mut volumes = reopen(&store, &mounter);
        created(&mut volumes, "secret/a");
        volumes.mount("secret/a", "A").unwrap();
        (store, mounter, volumes)
    }

    #[test]
    fn a_restarted_driver_adopts_live_mounts_with_their_counts() {
        let (store, mounter, mut volumes) = units_with_one_mount();
        volumes.mount("secret/a", "B").unwrap();
        volumes.shutdown();
        assert_eq!(
            mounter.live.lock().unwrap().len(),
            1,
            "the unit keeps running"
        );
        let mut volumes = reopen(&store, &mounter);
        assert_eq!(volumes.get("secret/a").unwrap().mount_ids, 2);
        assert!(!volumes.unmount("secret/a", "A").unwrap());
        assert!(volumes.unmount("secret/a", "B").unwrap());
        assert!(mounter.live.lock().unwrap().is_empty());
        assert!(store.mounted_names().is_empty());
    }

    #[test]
    fn a_running_mount_the_rules_now_refuse_is_stopped_not_adopted() {
        let (store, mounter, mut volumes) = units_with_one_mount();
        volumes.shutdown();
        assert_eq!(mounter.live.lock().unwrap().len(), 1);
        // The operator adds a deny rule for the volume while the driver is down.
        let access = crate::access::AccessRules::new(
            vec![crate::access::Rule {
                path: "secret/a".into(),
                namespace: None,
                allow: false,
                own_auth: false,
            }],
            "test",
        );
        let volumes = Volumes::open_with_access(
            Box::new(store.clone()),
            Box::new(mounter.clone()),
            PathBuf::from("/run/test/mounts"),
            access,
        )
        .unwrap();
        assert!(
            mounter.live.lock().unwrap().is_empty(),
            "the refused unit is stopped"
        );
        assert_eq!(volumes.get("secret/a").unwrap().mount_ids, 0);
        assert!(store.mounted_names().is_empty());
    }

    #[test]
    fn mount_ids_of_mounts_gone_by_a_reboot_are_forgotten() {
        let (store, mounter, mut volumes) = units_with_one_mount();
        volumes.shutdown();
        mounter.live.lock().unwrap().clear(); // the reboot
        let mut volumes = reopen(&store, &mounter);
        assert_eq!(volumes.get("secret/a").unwrap().mount_ids, 0);
        assert!(store.mounted_names().is_empty());
        // Docker mounts again with the old ID for a restart-policy container.
        volumes.mount("secret/a", "A").unwrap();
        assert_eq!(mounter.live.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_dead_mount_is_served_again_before_its_mountpoint_is_handed_out() {
        let (mut volumes, _, mounter) = volumes();
        created(&mut volumes, "secret/a");
        volumes.mount("secret/a", "A").unwrap();
        mounter.live.lock().unwrap().clear(); // the server died
        volumes.mount("secret/a", "B").unwrap();
        assert_eq!(mounter.live.lock().unwrap().len(), 1);
        assert_eq!(volumes.get("secret/a").unwrap().mount_ids, 2);
    }

    #[test]
    fn in_process_mounts_end_with_the_driver() {
        let (mut volumes, store, mounter) = volumes();
        created(&mut volumes, "secret/a");
        volumes.mount("secret/a", "A").unwrap();
        volumes.shutdown();
        assert!(mounter.live.lock().unwrap().is_empty());
        assert!(store.mounted_names().is_empty());
    }

    #[test]
    fn ownership_options_are_numeric_ids_and_octal_modes() {
        let options = BTreeMap::from([
            ("uid".to_owned(), "1000".to_owned()),
            ("gid".to_owned(), "1001".to_owned()),
            ("mode".to_owned(), "0400".to_owned()),
            ("dir_mode".to_owned(), "550".to_owned()),
        ]);
        let parsed = VolumeOptions::parse(&options).unwrap();
        let fs = parsed.fs_options(&crate::fs::FsOptions::default());
        assert_eq!(
            (fs.uid, fs.gid, fs.file_mode, fs.dir_mode),
            (1000, 1001, 0o400, 0o550)
        );
        for (option, value) in [
            ("uid", "-1"),
            ("uid", "root"),
            ("gid", "4294967296"),
            ("mode", "0999"),
            ("mode", "4755"),
            ("mode", ""),
            ("dir_mode", "rwx"),
        ] {
            let result =
                VolumeOptions::parse(&BTreeMap::from([(option.to_owned(), value.to_owned())]));
            assert!(
                matches!(result, Err(VolumeError::BadOption { .. })),
                "{option}={value}"
            );
        }
        for option in [
            "token",
            "vault_token",
            "secret_id",
            "password",
            "role_id",
            "client_key",
        ] {
            let error =
                VolumeOptions::parse(&BTreeMap::from([(option.to_owned(), "x".to_owned())]))
                    .unwrap_err();
            assert!(
                matches!(error, VolumeError::CredentialOption { .. }),
                "{option}"
            );
            assert!(error.to_string().contains("credential"), "{error}");
        }
    }

    #[test]
    fn the_namespace_option_is_a_plain_child_namespace() {
        let parse = |value: &str| {
            VolumeOptions::parse(&BTreeMap::from([(
                "namespace".to_owned(),
                value.to_owned(),
            )]))
        };
        assert_eq!(
            parse("team-a/").unwrap().namespace.as_deref(),
            Some("team-a")
        );
        for bad in ["", "../root", "a b", "a//b"] {
            assert!(
                matches!(parse(bad), Err(VolumeError::BadOption { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn refresh_interval_is_validated_and_credentials_are_refused_unechoed() {
        let parse = |k: &str, v: &str| {
            VolumeOptions::parse(&BTreeMap::from([(k.to_owned(), v.to_owned())]))
        };
        assert_eq!(
            parse("refresh_interval", "5s").unwrap().refresh_interval,
            Some(std::time::Duration::from_secs(5))
        );
        for bad in ["soon", "0s", "500ms", "2d"] {
            assert!(
                matches!(
                    parse("refresh_interval", bad),
                    Err(VolumeError::BadOption { .. })
                ),
                "{bad}"
            );
        }
        let error = parse("token", "hvs.secret").unwrap_err().to_string();
        assert!(
            error.contains("looks like a credential") && !error.contains("hvs.secret"),
            "{error}"
        );
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
            Err(VolumeError::CredentialOption { .. })
        ));
        let options = BTreeMap::from([("colour".to_owned(), "x".to_owned())]);
        assert!(matches!(
            volumes.create("secret/a", options, String::new()),
            Err(VolumeError::UnknownOption { .. })
        ));
        assert!(store.volume_names().is_empty());
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
