//! Volume bookkeeping: records, mount reference counts and the mountpoint of each volume, and the one place a
//! Mount is decided ([`plan_mount`], [`decide_access`], then the [`VolumeGate`]). No I/O of its own: persistence
//! goes through [`RecordStore`] and mounting through [`Mounter`], so tests drive it with fakes.
//!
//! Concurrency: the book (records, slots, counts) is behind one short-held lock that is never held across an
//! await. Each volume has its own async slot lock, held across its mount or unmount: calls for one volume are
//! ordered, calls for different volumes never wait on each other, however long a unit start takes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::access::{AccessRules, Grant};
use crate::lease::{IssueRequest, LeaseSharing, VOLUME_HOLDER};
use crate::mount::{ActiveMount, LeasePlan, MountError, MountPlan, Mounter};
use crate::names::{escape_component, NameError, VaultPath};
use crate::status::{HealthProbe, MountStatus};

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
    #[error("volume {0:?} is being mounted or unmounted; try again")]
    Busy(String),
    #[error("could not save volume state: {0}")]
    Store(#[from] StoreError),
    #[error("could not mount volume {name:?}: {source}")]
    Mount {
        name: String,
        #[source]
        source: Box<MountError>,
    },
    #[error("volume {name:?} cannot be read now: {reason}")]
    Unavailable { name: String, reason: String },
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

/// Admits a volume at Create and Mount by what only the secret source knows (its engine type), once the access
/// rules have granted its path. It may wait for Vault, so it is asked with no lock held.
#[async_trait::async_trait]
pub trait VolumeGate: Send + Sync {
    async fn admit(&self, plan: &MountPlan, grant: Grant) -> Result<(), VolumeError>;
}

/// Everything a Mount acts on, decided from the record alone: the Vault path and the parsed options. The one place
/// a volume's name and options are parsed for mounting.
pub fn plan_mount(record: &VolumeRecord, mountpoint: PathBuf) -> Result<MountPlan, VolumeError> {
    // A name is checked as a path (first, as always) even where the `path` option gives the path: names go into
    // mountpoints, unit names and slot keys, which rely on what a path excludes (control characters, `..`).
    // Podman's and Compose's plain names are paths of one segment.
    let named = vault_path(&record.name)?;
    let parsed = VolumeOptions::parse(&record.options)?;
    let path = parsed.path.clone().unwrap_or(named);
    Ok(MountPlan {
        name: record.name.clone(),
        path,
        options: record.options.clone(),
        parsed,
        mountpoint,
        lease: None,
    })
}

/// The access rules' decision on the planned volume's own path (reads below it are decided again, each one, by
/// the filesystem's router).
pub fn decide_access(access: &AccessRules, plan: &MountPlan) -> Result<Grant, VolumeError> {
    access
        .decide(plan.parsed.namespace.as_deref(), &plan.path)
        .map_err(|refusal| {
            tracing::warn!(volume = %plan.name, reason = %refusal, "volume {} refused by the access rules: {refusal}", plan.name);
            VolumeError::from(refusal)
        })
}

fn vault_path(name: &str) -> Result<VaultPath, VolumeError> {
    VaultPath::from_volume_name(name).map_err(|reason| VolumeError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

#[derive(Debug)]
struct MountState {
    ids: MountIds,
    active: Box<dyn ActiveMount>,
}

/// One mount (a volume's, or one container's of a dynamic volume), behind its own lock: held across a mount or
/// unmount of that mount only.
type Slot = Arc<tokio::sync::Mutex<Option<MountState>>>;

/// Separates a volume name from a lease holder in a slot key. Volume names hold no control characters.
const HOLDER_SEPARATOR: char = '\n';

/// The key of a volume's slot: the volume name, or for a dynamic volume's per-container lease, the name and the
/// container's mount ID (each container gets its own credential and its own mountpoint).
fn slot_key(name: &str, holder: Option<&str>) -> String {
    match holder {
        Some(holder) => format!("{name}{HOLDER_SEPARATOR}{holder}"),
        None => name.to_owned(),
    }
}

/// What the planned dynamic volume's mount for `holder` issues.
pub fn lease_plan(plan: &MountPlan, holder: &str) -> LeasePlan {
    LeasePlan {
        holder: holder.to_owned(),
        request: IssueRequest {
            path: plan.path.clone(),
            params: plan.parsed.pki.clone(),
        },
    }
}

/// The lease of slot `key`, as [`Volumes::slot_for`] made it: a container's own (the key names its mount ID), the
/// volume's (`-o lease=per-volume`, an option only dynamic volumes take), or none (a KV volume).
fn lease_of_slot(plan: &MountPlan, key: &str) -> Option<LeasePlan> {
    match key.split_once(HOLDER_SEPARATOR) {
        Some((_, holder)) => Some(lease_plan(plan, holder)),
        None if plan.parsed.lease == LeaseSharing::PerVolume => {
            Some(lease_plan(plan, VOLUME_HOLDER))
        }
        None => None,
    }
}

/// The volume a slot key belongs to.
fn volume_of(key: &str) -> &str {
    key.split_once(HOLDER_SEPARATOR)
        .map_or(key, |(volume, _)| volume)
}

/// A volume as `Get`/`List` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    /// The Vault path it reads.
    pub path: String,
    pub mountpoint: Option<PathBuf>,
    pub created_at: String,
    pub mount_ids: usize,
    /// Each live mount (a dynamic volume has one per lease), with its health.
    pub mounts: Vec<MountStatus>,
}

/// The bookkeeping: quick to update, never locked across an await.
struct Book {
    store: Box<dyn RecordStore>,
    records: BTreeMap<String, VolumeRecord>,
    /// By slot key ([`slot_key`]).
    slots: HashMap<String, Slot>,
    /// Mount IDs per live slot, as the slots hold them, so Get and List never wait for a mount.
    mounted: HashMap<String, usize>,
    /// Where each live slot's health is read, for the same reason.
    probes: HashMap<String, HealthProbe>,
}

impl Book {
    /// Saves `ids` as slot `key`'s mount IDs and counts them.
    fn record_mounts(&mut self, key: &str, ids: &MountIds) -> Result<(), StoreError> {
        if ids.is_empty() {
            self.mounted.remove(key);
            self.probes.remove(key);
        } else {
            self.mounted.insert(key.to_owned(), ids.len());
        }
        self.store.save_mounts(key, ids)
    }

    /// Each live mount of volume `name`: its holder, mount count, server and health.
    fn mounts_of(&self, name: &str) -> Vec<MountStatus> {
        let mut mounts: Vec<MountStatus> = self
            .mounted
            .iter()
            .filter(|(key, _)| volume_of(key) == name)
            .map(|(key, count)| {
                let probe = self.probes.get(key);
                MountStatus {
                    holder: key
                        .split_once(HOLDER_SEPARATOR)
                        .map(|(_, holder)| holder.to_owned()),
                    mount_count: *count,
                    unit: probe.and_then(HealthProbe::unit).map(str::to_owned),
                    health: probe.and_then(HealthProbe::read),
                }
            })
            .collect();
        mounts.sort_by(|a, b| a.holder.cmp(&b.holder));
        mounts
    }

    /// Mount IDs of volume `name` over all its slots, if any is live.
    fn mount_ids_of(&self, name: &str) -> Option<usize> {
        let mut live = self
            .mounted
            .iter()
            .filter(|(key, _)| volume_of(key) == name)
            .map(|(_, count)| *count)
            .peekable();
        live.peek()?;
        Some(live.sum())
    }
}

/// Every volume of this driver, with its mounts.
pub struct Volumes {
    book: Mutex<Book>,
    mounter: Box<dyn Mounter>,
    /// Admits volumes at Create and Mount by their engine (none: every engine, as for the file backend).
    gate: Option<Arc<dyn VolumeGate>>,
    mount_root: PathBuf,
    /// Swapped whole by a reload ([`Volumes::set_access`]).
    access: std::sync::RwLock<Arc<AccessRules>>,
}

impl std::fmt::Debug for Volumes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volumes")
            .field("mount_root", &self.mount_root)
            .field("mounter", &self.mounter)
            .finish_non_exhaustive()
    }
}

impl Volumes {
    /// Loads the persisted records and adopts the mounts an earlier driver process left running; mount IDs whose
    /// mount is gone (after a reboot or crash) are forgotten, since Docker sends Mount again when it needs one.
    pub async fn open(
        store: Box<dyn RecordStore>,
        mounter: Box<dyn Mounter>,
        mount_root: PathBuf,
    ) -> Result<Self, StoreError> {
        Self::open_with_access(store, mounter, mount_root, AccessRules::allow_all()).await
    }

    /// [`open`](Self::open) under `access`: a running mount whose volume the rules now refuse is stopped, not
    /// adopted, so a rule added while the driver was down also holds for containers that were running.
    pub async fn open_with_access(
        store: Box<dyn RecordStore>,
        mounter: Box<dyn Mounter>,
        mount_root: PathBuf,
        access: AccessRules,
    ) -> Result<Self, StoreError> {
        let records: BTreeMap<String, VolumeRecord> = store
            .load_all()?
            .into_iter()
            .map(|record| (record.name.clone(), record))
            .collect();
        let left_mounted = store.load_mounts()?;
        let volumes = Volumes {
            book: Mutex::new(Book {
                store,
                records,
                slots: HashMap::new(),
                mounted: HashMap::new(),
                probes: HashMap::new(),
            }),
            mounter,
            gate: None,
            mount_root,
            access: std::sync::RwLock::new(Arc::new(access)),
        };
        for (name, ids) in left_mounted {
            volumes.adopt(name, ids).await?;
        }
        Ok(volumes)
    }

    /// The access rules in force.
    fn access(&self) -> Arc<AccessRules> {
        self.access
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `access` in force for every Create and Mount from now on, and `fs_options` for every mount made from
    /// now on (a reload). Returns each live mount the new rules refuse, with why: it keeps serving its containers,
    /// and is refused at its next Mount.
    pub fn reconfigure(
        &self,
        access: AccessRules,
        fs_options: &crate::fs::FsOptions,
    ) -> Vec<(String, String)> {
        let refused = {
            let book = self.book();
            let mut live: Vec<&str> = book.mounted.keys().map(|key| volume_of(key)).collect();
            live.sort_unstable();
            live.dedup();
            live.into_iter()
                .filter_map(|name| {
                    let record = book.records.get(name)?;
                    let plan = plan_mount(record, PathBuf::new()).ok()?;
                    let refusal = access
                        .decide(plan.parsed.namespace.as_deref(), &plan.path)
                        .err()?;
                    Some((name.to_owned(), refusal.to_string()))
                })
                .collect()
        };
        self.mounter.reconfigure(&access, fs_options);
        *self.access.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(access);
        refused
    }

    /// After a reload: every running mount unit reads the config again, so its reads are decided by the rules
    /// now in force.
    pub async fn reload_mount_units(&self) {
        let units: Vec<String> = self
            .book()
            .probes
            .values()
            .filter_map(|probe| probe.unit().map(str::to_owned))
            .collect();
        if !units.is_empty() {
            self.mounter.reload_units(&units).await;
        }
    }

    /// Takes over the mount slot `key` had when the driver last saved it, or forgets its IDs.
    async fn adopt(&self, key: String, ids: MountIds) -> Result<(), StoreError> {
        let name = volume_of(&key).to_owned();
        let record = self.book().records.get(&name).cloned();
        let plan = record
            .and_then(|record| plan_mount(&record, self.mountpoint_of_slot(&key)).ok())
            .map(|mut plan| {
                // A dynamic volume's mount is found by its lease holder (a mount unit per holder), whatever the
                // rules say now: a refused one is found, to be stopped.
                plan.lease = lease_of_slot(&plan, &key);
                plan
            });
        let (adopted, refusal) = match &plan {
            Some(plan) => (
                self.mounter.adopt(plan).await,
                decide_access(&self.access(), plan).err(),
            ),
            None => (None, None),
        };
        match (adopted, refusal) {
            (Some(active), Some(refusal)) => {
                tracing::warn!(volume = %name, reason = %refusal, "stopping a running mount of {name}, which the access rules now refuse: {refusal}");
                if let Err(reason) = active.unmount().await {
                    tracing::warn!(volume = %name, %reason, "could not stop the refused mount of {name}: {reason}");
                }
                self.book().record_mounts(&key, &MountIds::new())
            }
            (Some(active), None) if !ids.is_empty() => {
                tracing::info!(volume = %name, mount_ids = ids.len(), "adopted a running mount of {name}");
                let mut book = self.book();
                book.mounted.insert(key.clone(), ids.len());
                book.probes.insert(key.clone(), active.health_probe());
                let slot = Arc::new(tokio::sync::Mutex::new(Some(MountState { ids, active })));
                book.slots.insert(key, slot);
                Ok(())
            }
            (_, _) => {
                tracing::info!(volume = %name, "forgot mount IDs of a mount of {name} that is gone");
                self.book().record_mounts(&key, &MountIds::new())
            }
        }
    }

    /// Also asks `gate` at every Create and Mount.
    pub fn with_gate(mut self, gate: Arc<dyn VolumeGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The mountpoint a volume gets: one directory per volume name under the mount root, collision-free.
    pub fn mountpoint_of(&self, name: &str) -> PathBuf {
        self.mountpoint_of_slot(name)
    }

    /// The mountpoint of slot `key`: a per-container lease's differs from its volume's, and from every other's.
    fn mountpoint_of_slot(&self, key: &str) -> PathBuf {
        self.mount_root.join(escape_component(key))
    }

    /// Decides whether the planned volume may be mounted now: its path's rule, then its engine. Made at every
    /// Create and Mount, so a rule added later also applies to volumes created before it.
    async fn admit(&self, plan: &MountPlan) -> Result<Grant, VolumeError> {
        let grant = decide_access(&self.access(), plan)?;
        if !grant.dynamic && plan.parsed.has_dynamic_options() {
            return Err(VolumeError::NotServed {
                name: plan.name.clone(),
                reason: "lease, common_name, alt_names, ip_sans and ttl are options of dynamic volumes, and no \
                         access rule with dynamic = true covers this path"
                    .to_owned(),
            });
        }
        if let Some(gate) = &self.gate {
            gate.admit(plan, grant).await?;
        }
        Ok(grant)
    }

    /// Creates a volume, or does nothing when it exists (Docker may repeat Create).
    pub async fn create(
        &self,
        name: &str,
        options: BTreeMap<String, String>,
        now_rfc3339: String,
    ) -> Result<(), VolumeError> {
        let record = VolumeRecord {
            name: name.to_owned(),
            options,
            created_at: now_rfc3339,
        };
        let plan = plan_mount(&record, self.mountpoint_of(name))?;
        self.admit(&plan).await?;
        let mut book = self.book();
        if book.records.contains_key(name) {
            return Ok(());
        }
        book.store.save(&record)?;
        book.records.insert(name.to_owned(), record);
        Ok(())
    }

    /// Removes a volume that no container uses.
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        let mut book = self.book();
        if !book.records.contains_key(name) {
            return Err(VolumeError::NotFound(name.to_owned()));
        }
        if let Some(count) = book.mount_ids_of(name) {
            return Err(VolumeError::InUse(name.to_owned(), count));
        }
        let keys: Vec<String> = book
            .slots
            .keys()
            .filter(|key| volume_of(key) == name)
            .cloned()
            .collect();
        // A Mount or Unmount of it is under way (a slot is held): it decides the volume's state first.
        for key in &keys {
            if book
                .slots
                .get(key)
                .is_some_and(|slot| slot.try_lock().is_err())
            {
                return Err(VolumeError::Busy(name.to_owned()));
            }
        }
        book.store.remove(name)?;
        book.records.remove(name);
        for key in keys {
            book.slots.remove(&key);
        }
        Ok(())
    }

    /// The volume's record, if it exists.
    fn record(&self, name: &str) -> Result<VolumeRecord, VolumeError> {
        self.book()
            .records
            .get(name)
            .cloned()
            .ok_or_else(|| VolumeError::NotFound(name.to_owned()))
    }

    /// The slot of `key`, made on first use.
    fn slot(&self, key: &str) -> Slot {
        self.book().slots.entry(key.to_owned()).or_default().clone()
    }

    /// Which slot a granted Mount by `id` uses: the volume's, or for a dynamic volume's per-container lease, the
    /// container's own, with its own mountpoint and the lease it issues.
    fn slot_for(&self, plan: &mut MountPlan, grant: Grant, id: &str) -> String {
        if !grant.dynamic {
            return plan.name.clone();
        }
        let (key, holder) = match plan.parsed.lease {
            LeaseSharing::PerContainer => (slot_key(&plan.name, Some(id)), id),
            LeaseSharing::PerVolume => (slot_key(&plan.name, None), VOLUME_HOLDER),
        };
        plan.mountpoint = self.mountpoint_of_slot(&key);
        plan.lease = Some(lease_plan(plan, holder));
        key
    }

    /// Mounts for mount ID `id`; the first user mounts the filesystem, later ones share it. A dynamic volume's
    /// containers each get their own mount and lease, unless it was created with `-o lease=per-volume`.
    pub async fn mount(&self, name: &str, id: &str) -> Result<PathBuf, VolumeError> {
        let record = self.record(name)?;
        let mut plan = plan_mount(&record, self.mountpoint_of(name))?;
        let grant = self.admit(&plan).await?;
        let key = self.slot_for(&mut plan, grant, id);
        let slot = self.slot(&key);
        let mut held = slot.lock().await;
        // Removed (and perhaps created again, with a new slot) while this call waited for the slot.
        if !self.holds_current_slot(&key, &slot) {
            return Err(VolumeError::NotFound(name.to_owned()));
        }
        let mut state = match held.take() {
            Some(state) if state.active.is_alive().await => state,
            // A dead server's mountpoint is never handed out: serve it again, keeping the counts.
            Some(state) => {
                tracing::warn!(volume = %name, "the server of {name}'s mount is gone; mounting it again");
                let _ = state.active.unmount().await;
                match self.mount_filesystem(&plan).await {
                    Ok(active) => MountState {
                        ids: state.ids,
                        active,
                    },
                    Err(error) => {
                        // Nothing is mounted now: the counts go with the dead mount, as after a reboot.
                        self.book().record_mounts(&key, &MountIds::new())?;
                        return Err(error);
                    }
                }
            }
            None => MountState {
                ids: MountIds::new(),
                active: self.mount_filesystem(&plan).await?,
            },
        };
        *state.ids.entry(id.to_owned()).or_default() += 1;
        let saved = {
            let mut book = self.book();
            book.probes.insert(key.clone(), state.active.health_probe());
            book.record_mounts(&key, &state.ids)
        };
        *held = Some(state);
        saved?;
        Ok(plan.mountpoint)
    }

    /// Whether `slot` is still slot `key`: a volume removed and created again has new ones.
    fn holds_current_slot(&self, key: &str, slot: &Slot) -> bool {
        let book = self.book();
        book.records.contains_key(volume_of(key))
            && book
                .slots
                .get(key)
                .is_some_and(|current| Arc::ptr_eq(current, slot))
    }

    async fn mount_filesystem(
        &self,
        plan: &MountPlan,
    ) -> Result<Box<dyn ActiveMount>, VolumeError> {
        let mounted = self.mounter.mount(plan).await;
        crate::metrics::mount(crate::metrics::Outcome::of(&mounted));
        mounted.map_err(|source| VolumeError::Mount {
            name: plan.name.clone(),
            source: Box::new(source),
        })
    }

    /// Releases one use by `id`. Unknown volumes and IDs are ignored: Docker replays Unmount after crashes.
    /// Returns whether the filesystem was unmounted.
    pub async fn unmount(&self, name: &str, id: &str) -> Result<bool, VolumeError> {
        // The container's own slot (a dynamic volume's per-container lease), else the volume's.
        let own = slot_key(name, Some(id));
        let Some((key, slot)) = ({
            let book = self.book();
            [own, name.to_owned()]
                .into_iter()
                .find_map(|key| book.slots.get(&key).cloned().map(|slot| (key, slot)))
        }) else {
            return Ok(false);
        };
        let mut held = slot.lock().await;
        let Some(state) = held.as_mut() else {
            return Ok(false);
        };
        if let Some(count) = state.ids.get_mut(id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.ids.remove(id);
            }
        }
        self.book().record_mounts(&key, &state.ids)?;
        if !state.ids.is_empty() {
            return Ok(false);
        }
        if key != name {
            // A container's own slot is never used again: forget it, so slots do not pile up.
            let mut book = self.book();
            if book.slots.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                book.slots.remove(&key);
            }
        }
        if let Some(state) = held.take() {
            let unmounted = state.active.unmount().await;
            crate::metrics::unmount(crate::metrics::Outcome::of(&unmounted));
            unmounted.map_err(|source| VolumeError::Mount {
                name: name.to_owned(),
                source: Box::new(source),
            })?;
        }
        Ok(true)
    }

    /// The options volume `name` was created with.
    pub fn options_of(&self, name: &str) -> Result<BTreeMap<String, String>, VolumeError> {
        self.book()
            .records
            .get(name)
            .map(|record| record.options.clone())
            .ok_or_else(|| VolumeError::NotFound(name.to_owned()))
    }

    pub fn get(&self, name: &str) -> Result<VolumeInfo, VolumeError> {
        let book = self.book();
        let record = book
            .records
            .get(name)
            .ok_or_else(|| VolumeError::NotFound(name.to_owned()))?;
        Ok(self.info(&book, record))
    }

    pub fn list(&self) -> Vec<VolumeInfo> {
        let book = self.book();
        book.records.values().map(|r| self.info(&book, r)).collect()
    }

    fn info(&self, book: &Book, record: &VolumeRecord) -> VolumeInfo {
        // Containers with their own lease each have their own mountpoint: only a shared mount has one to show.
        let shared = book.mounted.contains_key(&record.name);
        // A record is checked at Create: one that does not parse now shows its name.
        let path = plan_mount(record, PathBuf::new())
            .map(|plan| plan.path.to_string())
            .unwrap_or_else(|_| record.name.clone());
        VolumeInfo {
            name: record.name.clone(),
            path,
            mountpoint: shared.then(|| self.mountpoint_of(&record.name)),
            created_at: record.created_at.clone(),
            mount_ids: book.mount_ids_of(&record.name).unwrap_or(0),
            mounts: book.mounts_of(&record.name),
        }
    }

    /// Volumes and live mounts, for status lines.
    pub fn counts(&self) -> (usize, usize) {
        let book = self.book();
        (book.records.len(), book.mounted.len())
    }

    /// Driver shutdown: unmounts what this process serves, and leaves mounts that outlive it (systemd units)
    /// running for running containers, to be adopted by the next driver process.
    pub async fn shutdown(&self) {
        let slots: Vec<(String, Slot)> = self.book().slots.drain().collect();
        for (key, slot) in slots {
            let name = volume_of(&key);
            let Some(state) = slot.lock().await.take() else {
                continue;
            };
            if state.active.outlives_driver() {
                continue;
            }
            if let Err(reason) = state.active.shut_down().await {
                tracing::warn!(volume = %name, %reason, "unmount of {name} at shutdown failed");
            }
            if let Err(error) = self.book().record_mounts(&key, &MountIds::new()) {
                tracing::warn!(volume = %name, %error, "could not clear the mount IDs of {name}: {error}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeMounter;
    use crate::testing::MemoryRecordStore as MemoryStore;

    /// A rule with the `[vault]` credentials.
    fn rule(path: &str, allow: bool, dynamic: bool) -> crate::access::Rule {
        crate::access::Rule {
            path: path.into(),
            namespace: None,
            allow,
            own_auth: false,
            dynamic,
        }
    }

    async fn volumes() -> (Volumes, MemoryStore, FakeMounter) {
        let store = MemoryStore::default();
        let mounter = FakeMounter::default();
        let volumes = Volumes::open(
            Box::new(store.clone()),
            Box::new(mounter.clone()),
            PathBuf::from("/run/test/mounts"),
        )
        .await
        .unwrap();
        (volumes, store, mounter)
    }

    async fn created(volumes: &Volumes, name: &str) {
        volumes
            .create(name, BTreeMap::new(), "2026-11-27T00:00:00Z".into())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn mounts_are_counted_per_id_and_the_last_unmount_unmounts() {
        let (volumes, _, mounter) = volumes().await;
        created(&volumes, "secret/app-1/").await;
        let a = volumes.mount("secret/app-1/", "A").await.unwrap();
        let b = volumes.mount("secret/app-1/", "B").await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a, PathBuf::from("/run/test/mounts/secret%2Fapp-1%2F"));
        assert_eq!(mounter.live().len(), 1);
        assert!(!volumes.unmount("secret/app-1/", "A").await.unwrap());
        assert_eq!(volumes.get("secret/app-1/").unwrap().mount_ids, 1);
        assert!(volumes.unmount("secret/app-1/", "B").await.unwrap());
        assert!(mounter.live().is_empty());
        assert_eq!(volumes.get("secret/app-1/").unwrap().mountpoint, None);
    }

    #[tokio::test]
    async fn a_repeated_mount_id_mounts_once_and_needs_its_own_unmount() {
        let (volumes, _, mounter) = volumes().await;
        created(&volumes, "secret/a").await;
        volumes.mount("secret/a", "A").await.unwrap();
        volumes.mount("secret/a", "A").await.unwrap();
        assert_eq!(mounter.live().len(), 1);
        assert_eq!(volumes.get("secret/a").unwrap().mount_ids, 1);
        assert!(!volumes.unmount("secret/a", "A").await.unwrap());
        assert!(volumes.unmount("secret/a", "A").await.unwrap());
        assert!(mounter.live().is_empty());
    }

    #[tokio::test]
    async fn unknown_and_stale_unmounts_are_harmless() {
        let (volumes, _, mounter) = volumes().await;
        created(&volumes, "secret/a").await;
        assert!(!volumes.unmount("secret/a", "never-mounted").await.unwrap());
        assert!(!volumes.unmount("no/such/volume", "X").await.unwrap());
        volumes.mount("secret/a", "A").await.unwrap();
        assert!(!volumes.unmount("secret/a", "stale").await.unwrap());
        assert_eq!(mounter.live().len(), 1);
        assert!(volumes.unmount("secret/a", "A").await.unwrap());
        assert!(!volumes.unmount("secret/a", "A").await.unwrap());
    }

    #[tokio::test]
    async fn records_persist_and_come_back() {
        let (volumes, store, _) = volumes().await;
        created(&volumes, "secret/a").await;
        created(&volumes, "secret/a").await;
        created(&volumes, "kv/b").await;
        let reopened = Volumes::open(
            Box::new(store),
            Box::new(FakeMounter::default()),
            PathBuf::from("/x"),
        )
        .await
        .unwrap();
        let names: Vec<_> = reopened.list().into_iter().map(|v| v.name).collect();
        assert_eq!(names, vec!["kv/b", "secret/a"]);
    }

    async fn reopen(store: &MemoryStore, mounter: &FakeMounter) -> Volumes {
        Volumes::open(
            Box::new(store.clone()),
            Box::new(mounter.clone()),
            PathBuf::from("/run/test/mounts"),
        )
        .await
        .unwrap()
    }

    /// Volumes over mounts that outlive the driver (like systemd units), with `secret/a` mounted by ID `A`.
    async fn units_with_one_mount() -> (MemoryStore, FakeMounter, Volumes) {
        let store = MemoryStore::default();
        let mounter = FakeMounter::outliving();
        let volumes = reopen(&store, &mounter).await;
        created(&volumes, "secret/a").await;
        volumes.mount("secret/a", "A").await.unwrap();
        (store, mounter, volumes)
    }

    #[tokio::test]
    async fn a_restarted_driver_adopts_live_mounts_with_their_counts() {
        let (store, mounter, volumes) = units_with_one_mount().await;
        volumes.mount("secret/a", "B").await.unwrap();
        volumes.shutdown().await;
        assert_eq!(mounter.live().len(), 1, "the unit keeps running");
        let volumes = reopen(&store, &mounter).await;
        assert_eq!(volumes.get("secret/a").unwrap().mount_ids, 2);
        assert!(!volumes.unmount("secret/a", "A").await.unwrap());
        assert!(volumes.unmount("secret/a", "B").await.unwrap());
        assert!(mounter.live().is_empty());
        assert!(store.mounted_names().is_empty());
    }

    #[tokio::test]
    async fn dynamic_options_need_a_dynamic_rule_and_each_container_gets_its_own_mount() {
        let access = crate::access::AccessRules::new(
            vec![
                rule("database/creds", true, true),
                rule("secret", true, false),
            ],
            "test",
        );
        let mounter = FakeMounter::default();
        let volumes = Volumes::open_with_access(
            Box::new(MemoryStore::default()),
            Box::new(mounter.clone()),
            PathBuf::from("/run/test/mounts"),
            access,
        )
        .await
        .unwrap();
        let ttl = BTreeMap::from([("ttl".to_owned(), "1h".to_owned())]);
        let refused = volumes
            .create("secret/app", ttl.clone(), "t".into())
            .await
            .unwrap_err();
        assert!(
            matches!(refused, VolumeError::NotServed { .. }),
            "{refused}"
        );
        let shared = BTreeMap::from([("lease".to_owned(), "per-volume".to_owned())]);
        for (name, options) in [
            ("database/creds/app", BTreeMap::new()),
            ("database/creds/shared", shared),
        ] {
            volumes.create(name, options, "t".into()).await.unwrap();
        }
        // Per container: two containers, two mounts at two mountpoints, neither the volume's.
        let a = volumes.mount("database/creds/app", "A").await.unwrap();
        let b = volumes.mount("database/creds/app", "B").await.unwrap();
        let again = volumes.mount("database/creds/app", "A").await.unwrap();
        assert_ne!(a, b);
        assert_eq!(a, again, "a repeated Mount ID shares its own mount");
        assert_ne!(a, volumes.mountpoint_of("database/creds/app"));
        assert_eq!(mounter.live().len(), 2);
        assert_eq!(mounter.lease_holders(), ["A", "B"]);
        let info = volumes.get("database/creds/app").unwrap();
        assert_eq!((info.mount_ids, info.mountpoint), (2, None));
        assert!(matches!(
            volumes.remove("database/creds/app"),
            Err(VolumeError::InUse(_, 2))
        ));
        // Per volume: one mount, one lease, at the volume's mountpoint.
        let c = volumes.mount("database/creds/shared", "C").await.unwrap();
        let d = volumes.mount("database/creds/shared", "D").await.unwrap();
        assert_eq!(c, d);
        assert_eq!(c, volumes.mountpoint_of("database/creds/shared"));
        assert_eq!(
            mounter.lease_holders(),
            ["A", "B", crate::lease::VOLUME_HOLDER]
        );
        // Each container's Unmount ends its own mount (A only after its second Unmount), and nobody else's.
        assert!(!volumes.unmount("database/creds/app", "A").await.unwrap());
        assert!(volumes.unmount("database/creds/app", "A").await.unwrap());
        assert_eq!(mounter.live().len(), 2);
        assert!(volumes.unmount("database/creds/app", "B").await.unwrap());
        assert!(!volumes.unmount("database/creds/shared", "C").await.unwrap());
        assert!(volumes.unmount("database/creds/shared", "D").await.unwrap());
        assert!(mounter.live().is_empty());
        assert!(
            mounter.violations().is_empty(),
            "{:?}",
            mounter.violations()
        );
        // A container's own slot is forgotten with its last Unmount.
        assert!(volumes.book().slots.keys().all(|key| !key.contains('\n')));
        volumes.remove("database/creds/app").unwrap();
        // A KV volume under a plain rule takes no lease.
        volumes
            .create("secret/app", BTreeMap::new(), "t".into())
            .await
            .unwrap();
        volumes.mount("secret/app", "E").await.unwrap();
        assert_eq!(mounter.lease_holders().len(), 3);
    }

    /// Mount units keep dynamic volumes' leases: a restarted driver finds each container's unit, and the
    /// per-volume one, by its lease holder, and their Unmounts end them.
    #[tokio::test]
    async fn a_restarted_driver_adopts_dynamic_mounts_by_their_lease_holders() {
        let access =
            crate::access::AccessRules::new(vec![rule("database/creds", true, true)], "test");
        let store = MemoryStore::default();
        let mounter = FakeMounter::outliving();
        let open = || {
            Volumes::open_with_access(
                Box::new(store.clone()),
                Box::new(mounter.clone()),
                PathBuf::from("/run/test/mounts"),
                access.clone(),
            )
        };
        let volumes = open().await.unwrap();
        let shared = BTreeMap::from([("lease".to_owned(), "per-volume".to_owned())]);
        volumes
            .create("database/creds/app", BTreeMap::new(), "t".into())
            .await
            .unwrap();
        volumes
            .create("database/creds/shared", shared, "t".into())
            .await
            .unwrap();
        let a = volumes.mount("database/creds/app", "A").await.unwrap();
        volumes.mount("database/creds/app", "B").await.unwrap();
        volumes.mount("database/creds/shared", "C").await.unwrap();
        volumes.shutdown().await;
        assert_eq!(mounter.live().len(), 3, "the units keep running");
        let volumes = open().await.unwrap();
        assert!(
            mounter.violations().is_empty(),
            "{:?}",
            mounter.violations()
        );
        assert_eq!(volumes.get("database/creds/app").unwrap().mount_ids, 2);
        assert_eq!(volumes.get("database/creds/shared").unwrap().mount_ids, 1);
        // The adopted mount is used again: no new mount, no new lease.
        assert_eq!(volumes.mount("database/creds/app", "A").await.unwrap(), a);
        assert_eq!(mounter.mounts(), 3);
        assert!(!volumes.unmount("database/creds/app", "A").await.unwrap());
        for (name, id) in [
            ("database/creds/app", "A"),
            ("database/creds/app", "B"),
            ("database/creds/shared", "C"),
        ] {
            assert!(volumes.unmount(name, id).await.unwrap(), "{name} {id}");
        }
        assert!(mounter.live().is_empty());
        assert!(store.mounted_names().is_empty());
    }

    #[tokio::test]
    async fn a_running_mount_the_rules_now_refuse_is_stopped_not_adopted() {
        let (store, mounter, volumes) = units_with_one_mount().await;
        volumes.shutdown().await;
        assert_eq!(mounter.live().len(), 1);
        // The operator adds a deny rule for the volume while the driver is down.
        let access = crate::access::AccessRules::new(
            vec![crate::access::Rule {
                path: "secret/a".into(),
                namespace: None,
                allow: false,
                own_auth: false,
                dynamic: false,
            }],
            "test",
        );
        let volumes = Volumes::open_with_access(
            Box::new(store.clone()),
            Box::new(mounter.clone()),
            PathBuf::from("/run/test/mounts"),
            access,
        )
        .await
        .unwrap();
        assert!(mounter.live().is_empty(), "the refused unit is stopped");
        assert_eq!(volumes.get("secret/a").unwrap().mount_ids, 0);
        assert!(store.mounted_names().is_empty());
    }

    #[tokio::test]
    async fn mount_ids_of_mounts_gone_by_a_reboot_are_forgotten() {
        let (store, mounter, volumes) = units_with_one_mount().await;
        volumes.shutdown().await;
        mounter.kill_all(); // the reboot
        let volumes = reopen(&store, &mounter).await;
        assert_eq!(volumes.get("secret/a").unwrap().mount_ids, 0);
        assert!(store.mounted_names().is_empty());
        // Docker mounts again with the old ID for a restart-policy container.
        volumes.mount("secret/a", "A").await.unwrap();
        assert_eq!(mounter.live().len(), 1);
    }

    #[tokio::test]
    async fn a_dead_mount_is_served_again_before_its_mountpoint_is_handed_out() {
        let (volumes, _, mounter) = volumes().await;
        created(&volumes, "secret/a").await;
        volumes.mount("secret/a", "A").await.unwrap();
        mounter.kill_all(); // the server died
        volumes.mount("secret/a", "B").await.unwrap();
        assert_eq!(mounter.live().len(), 1);
        assert_eq!(volumes.get("secret/a").unwrap().mount_ids, 2);
    }

    #[tokio::test]
    async fn in_process_mounts_end_with_the_driver() {
        let (volumes, store, mounter) = volumes().await;
        created(&volumes, "secret/a").await;
        volumes.mount("secret/a", "A").await.unwrap();
        volumes.shutdown().await;
        assert!(mounter.live().is_empty());
        assert!(store.mounted_names().is_empty());
    }

    #[tokio::test]
    async fn ownership_options_are_numeric_ids_and_octal_modes() {
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

    /// `-o path=` names the Vault path for a plain name (Podman, Compose); the rules decide that path, whatever
    /// the name says, and the name must still be a path itself.
    #[tokio::test]
    async fn the_path_option_maps_a_plain_name_to_a_vault_path_the_rules_decide() {
        let access = crate::access::AccessRules::new(
            vec![
                rule("secret/admin", false, false),
                rule("secret", true, false),
            ],
            "test",
        );
        let mounter = FakeMounter::default();
        let volumes = Volumes::open_with_access(
            Box::new(MemoryStore::default()),
            Box::new(mounter.clone()),
            PathBuf::from("/run/test/mounts"),
            access,
        )
        .await
        .unwrap();
        let path = |value: &str| BTreeMap::from([("path".to_owned(), value.to_owned())]);
        volumes
            .create("app1", path("secret/app-1"), "t".into())
            .await
            .unwrap();
        let mountpoint = volumes.mount("app1", "A").await.unwrap();
        assert_eq!(mountpoint, PathBuf::from("/run/test/mounts/app1"));
        assert!(
            mounter.violations().is_empty(),
            "{:?}",
            mounter.violations()
        );
        let record = volumes.record("app1").unwrap();
        assert_eq!(
            plan_mount(&record, mountpoint).unwrap().path.as_str(),
            "secret/app-1"
        );
        // The rules see the path, not the name: a harmless name over a denied path is refused.
        let refused = volumes
            .create("harmless", path("secret/admin/root"), "t".into())
            .await
            .unwrap_err();
        assert!(matches!(refused, VolumeError::Refused(_)), "{refused}");
        for (name, bad) in [("x", "../etc"), ("x", ""), ("x", "secret//a")] {
            let error = volumes
                .create(name, path(bad), "t".into())
                .await
                .unwrap_err();
            assert!(
                matches!(error, VolumeError::BadOption { .. }),
                "{bad:?}: {error}"
            );
        }
        let error = volumes
            .create("bad\nname", path("secret/app-1"), "t".into())
            .await
            .unwrap_err();
        assert!(matches!(error, VolumeError::InvalidName { .. }), "{error}");
    }

    #[tokio::test]
    async fn the_namespace_option_is_a_plain_child_namespace() {
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

    #[tokio::test]
    async fn refresh_interval_is_validated_and_credentials_are_refused_unechoed() {
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

    #[tokio::test]
    async fn create_validates_names_and_options_and_remove_refuses_mounted_volumes() {
        let (volumes, store, _) = volumes().await;
        assert!(matches!(
            volumes
                .create("secret/../x", BTreeMap::new(), String::new())
                .await,
            Err(VolumeError::InvalidName { .. })
        ));
        let options = BTreeMap::from([("token".to_owned(), "x".to_owned())]);
        assert!(matches!(
            volumes.create("secret/a", options, String::new()).await,
            Err(VolumeError::CredentialOption { .. })
        ));
        let options = BTreeMap::from([("colour".to_owned(), "x".to_owned())]);
        assert!(matches!(
            volumes.create("secret/a", options, String::new()).await,
            Err(VolumeError::UnknownOption { .. })
        ));
        assert!(store.volume_names().is_empty());
        created(&volumes, "secret/a").await;
        volumes.mount("secret/a", "A").await.unwrap();
        assert!(matches!(
            volumes.remove("secret/a"),
            Err(VolumeError::InUse(..))
        ));
        volumes.unmount("secret/a", "A").await.unwrap();
        volumes.remove("secret/a").unwrap();
        assert!(matches!(
            volumes.mount("secret/a", "A").await,
            Err(VolumeError::NotFound(_))
        ));
    }
}
