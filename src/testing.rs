//! In-memory fakes for tests of the cores (also used by the integration tests under `tests/`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::fs::audit::{AuditRecord, AuditSink, ContainerResolver, Suppressed};
use crate::lease::{IssueRequest, Issued, LeaseRef, Renewed};
use crate::mount::{ActiveMount, MountError, MountPlan, Mounter};
use crate::names::VaultPath;
use crate::source::{DynamicKind, Secret, SecretSource, SourceError};
use crate::volumes::{MountIds, RecordStore, StoreError, VolumeRecord};

/// A [`SecretSource`] backed by a map, counting its reads, with an optional delay and forced error.
#[derive(Debug, Default)]
pub struct MemorySource {
    secrets: Mutex<BTreeMap<String, serde_json::Value>>,
    delay: Mutex<Duration>,
    failure: Mutex<Option<SourceError>>,
    list_failure: Mutex<Option<SourceError>>,
    reads: AtomicUsize,
    folder_checks: AtomicUsize,
    lists: AtomicUsize,
}

impl MemorySource {
    /// Stores `fields` (a JSON object) at `path`.
    pub fn put(&self, path: &str, fields: serde_json::Value) {
        lock(&self.secrets).insert(path.to_owned(), fields);
    }

    pub fn remove(&self, path: &str) {
        lock(&self.secrets).remove(path);
    }

    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.delay) = delay;
    }

    /// Makes every call fail with `error` until cleared with `None`.
    pub fn set_failure(&self, error: Option<SourceError>) {
        *lock(&self.failure) = error;
    }

    /// How many `read` calls reached the source.
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    /// How many `is_folder` calls reached the source.
    pub fn folder_checks(&self) -> usize {
        self.folder_checks.load(Ordering::SeqCst)
    }

    /// How many `list` calls reached the source.
    pub fn lists(&self) -> usize {
        self.lists.load(Ordering::SeqCst)
    }

    /// Every call that reached the source: reads, folder checks and lists.
    pub fn requests(&self) -> usize {
        self.reads() + self.folder_checks() + self.lists()
    }

    /// Makes `list` (only) fail with `error` until cleared with `None`, as a policy without `list` would.
    pub fn set_list_failure(&self, error: Option<SourceError>) {
        *lock(&self.list_failure) = error;
    }

    async fn pause(&self) -> Result<(), SourceError> {
        let delay = *lock(&self.delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match lock(&self.failure).clone() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl SecretSource for MemorySource {
    async fn read(&self, path: &VaultPath) -> Result<Secret, SourceError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.pause().await?;
        let value = lock(&self.secrets).get(path.as_str()).cloned();
        match value {
            Some(serde_json::Value::Object(map)) => Ok(Secret::new(map.into_iter().collect())),
            Some(_) => Err(SourceError::Unavailable("not a JSON object".into())),
            None => Err(SourceError::NotFound),
        }
    }

    async fn check_served(&self, _path: &VaultPath) -> Result<(), SourceError> {
        self.pause().await
    }

    async fn is_folder(&self, path: &VaultPath) -> Result<bool, SourceError> {
        self.folder_checks.fetch_add(1, Ordering::SeqCst);
        self.pause().await?;
        let prefix = format!("{}/", path.as_str());
        Ok(lock(&self.secrets).keys().any(|k| k.starts_with(&prefix)))
    }

    async fn list(&self, dir: &VaultPath) -> Result<Vec<String>, SourceError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.pause().await?;
        if let Some(error) = lock(&self.list_failure).clone() {
            return Err(error);
        }
        crate::source::children_of(lock(&self.secrets).keys(), dir)
    }
}

/// A dynamic engine in memory: each issue mints `user-N`/`pass-N` under the lease `<path>/lease-N` with a TTL of
/// `ttl`, renewable until `max_ttl` after its issue (then a renewal is granted only what is left, and `NotFound`
/// once nothing is). Its clock is tokio's, so a paused test clock drives it. While [`FakeEngine::set_down`] is on,
/// every issue, renewal and revocation fails as an outage would.
#[derive(Debug)]
pub struct FakeEngine {
    issued: AtomicUsize,
    renewals: AtomicUsize,
    revoked: Mutex<Vec<String>>,
    down: AtomicBool,
    revoke_failure: Mutex<Option<SourceError>>,
    ttl: Duration,
    max_ttl: Duration,
    started: Mutex<BTreeMap<String, tokio::time::Instant>>,
}

impl FakeEngine {
    pub fn new(ttl: Duration, max_ttl: Duration) -> Self {
        FakeEngine {
            issued: AtomicUsize::new(0),
            renewals: AtomicUsize::new(0),
            revoked: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
            revoke_failure: Mutex::new(None),
            ttl,
            max_ttl,
            started: Mutex::new(BTreeMap::new()),
        }
    }

    /// How many credentials were issued.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    /// How many renewals reached the engine (granted or not).
    pub fn renewals(&self) -> usize {
        self.renewals.load(Ordering::SeqCst)
    }

    /// What was revoked, in order: the lease ID, or `serial:<serial>` for a lease-less certificate.
    pub fn revoked(&self) -> Vec<String> {
        lock(&self.revoked).clone()
    }

    /// An outage: every call fails with `Unavailable` until set back to `false`.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Makes revocations (only) fail with `error` until cleared with `None`, as a policy without
    /// `sys/leases/revoke` would.
    pub fn set_revoke_failure(&self, error: Option<SourceError>) {
        *lock(&self.revoke_failure) = error;
    }

    fn check_up(&self) -> Result<(), SourceError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SourceError::Unavailable("the fake engine is down".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl SecretSource for FakeEngine {
    async fn read(&self, _path: &VaultPath) -> Result<Secret, SourceError> {
        Err(SourceError::NotFound)
    }

    async fn is_folder(&self, _path: &VaultPath) -> Result<bool, SourceError> {
        Ok(false)
    }

    async fn check_dynamic(&self, _path: &VaultPath) -> Result<DynamicKind, SourceError> {
        Ok(DynamicKind::Read)
    }

    async fn issue(&self, request: &IssueRequest) -> Result<Issued, SourceError> {
        self.check_up()?;
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let lease_id = format!("{}/lease-{n}", request.path);
        lock(&self.started).insert(lease_id.clone(), tokio::time::Instant::now());
        let fields = BTreeMap::from([
            (
                "username".to_owned(),
                serde_json::json!(format!("user-{n}")),
            ),
            (
                "password".to_owned(),
                serde_json::json!(format!("pass-{n}")),
            ),
        ]);
        Ok(Issued {
            secret: Secret::new(fields),
            lease: LeaseRef {
                path: request.path.to_string(),
                lease_id,
                serial: None,
                owner_accessor: None,
            },
            ttl: self.ttl,
            renewable: true,
            ends_by: None,
        })
    }

    async fn renew_lease(
        &self,
        lease: &LeaseRef,
        increment: Duration,
    ) -> Result<Renewed, SourceError> {
        self.check_up()?;
        self.renewals.fetch_add(1, Ordering::SeqCst);
        let started = *lock(&self.started)
            .get(&lease.lease_id)
            .ok_or(SourceError::NotFound)?;
        let left = (started + self.max_ttl).saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(SourceError::NotFound);
        }
        Ok(Renewed {
            ttl: increment.min(left),
            renewable: true,
        })
    }

    async fn revoke_lease(&self, lease: &LeaseRef) -> Result<(), SourceError> {
        self.check_up()?;
        if let Some(error) = lock(&self.revoke_failure).clone() {
            return Err(error);
        }
        let revoked = match (&lease.serial, lease.lease_id.is_empty()) {
            (Some(serial), true) => format!("serial:{serial}"),
            _ => lease.lease_id.clone(),
        };
        lock(&self.revoked).push(revoked);
        Ok(())
    }
}

/// Containers by pid, for an [`crate::fs::audit::Auditor`] under test.
#[derive(Debug)]
pub struct FixedContainers(pub HashMap<u32, String>);

impl ContainerResolver for FixedContainers {
    fn container_of(&self, pid: u32) -> Option<String> {
        self.0.get(&pid).cloned()
    }
}

/// An [`AuditSink`] that keeps what it is given; clones share the records.
#[derive(Debug, Default, Clone)]
pub struct RecordingAuditSink(Arc<Mutex<Vec<AuditRecord>>>, Arc<Mutex<Vec<Suppressed>>>);

impl RecordingAuditSink {
    pub fn records(&self) -> Vec<AuditRecord> {
        lock(&self.0).clone()
    }

    /// The "N similar lines suppressed" reports.
    pub fn suppressed(&self) -> Vec<Suppressed> {
        lock(&self.1).clone()
    }
}

impl AuditSink for RecordingAuditSink {
    fn emit(&self, record: &AuditRecord) {
        lock(&self.0).push(record.clone());
    }

    fn emit_suppressed(&self, summary: &Suppressed) {
        lock(&self.1).push(summary.clone());
    }
}

/// A [`RecordStore`] in memory; clones share the records, so a test can reopen a `Volumes` on the same store.
#[derive(Debug, Default, Clone)]
pub struct MemoryRecordStore {
    records: Arc<Mutex<BTreeMap<String, VolumeRecord>>>,
    mounts: Arc<Mutex<BTreeMap<String, MountIds>>>,
}

impl MemoryRecordStore {
    /// Names of the stored volumes.
    pub fn volume_names(&self) -> Vec<String> {
        lock(&self.records).keys().cloned().collect()
    }

    /// Names of the volumes with stored mount IDs.
    pub fn mounted_names(&self) -> Vec<String> {
        lock(&self.mounts).keys().cloned().collect()
    }
}

impl RecordStore for MemoryRecordStore {
    fn load_all(&self) -> Result<Vec<VolumeRecord>, StoreError> {
        Ok(lock(&self.records).values().cloned().collect())
    }
    fn save(&self, record: &VolumeRecord) -> Result<(), StoreError> {
        lock(&self.records).insert(record.name.clone(), record.clone());
        Ok(())
    }
    fn remove(&self, name: &str) -> Result<(), StoreError> {
        lock(&self.records).remove(name);
        Ok(())
    }
    fn load_mounts(&self) -> Result<Vec<(String, MountIds)>, StoreError> {
        Ok(lock(&self.mounts).clone().into_iter().collect())
    }
    fn save_mounts(&self, name: &str, ids: &MountIds) -> Result<(), StoreError> {
        let mut mounts = lock(&self.mounts);
        if ids.is_empty() {
            mounts.remove(name);
        } else {
            mounts.insert(name.to_owned(), ids.clone());
        }
        Ok(())
    }
}

/// The one fake [`Mounter`] of the test suite: tracks live mountpoints and counts mounts and unmounts, and records
/// every way a mount request breaks an invariant (see [`FakeMounter::violations`]). Clones share their state.
///
/// - [`FakeMounter::outliving`] mounts behave like systemd units: they survive the driver and can be adopted.
/// - [`FakeMounter::hold`] makes the mounts of one volume take a while, as a slow unit start does (a tokio sleep,
///   so a paused clock skips it).
/// - [`FakeMounter::kill_all`] is a reboot, or every mount server dying.
#[derive(Debug, Clone, Default)]
pub struct FakeMounter {
    state: Arc<FakeMounterState>,
    outlives: bool,
}

#[derive(Debug, Default)]
struct FakeMounterState {
    live: Mutex<BTreeSet<PathBuf>>,
    violations: Mutex<Vec<String>>,
    held: Mutex<HashMap<String, Duration>>,
    failing: Mutex<Option<String>>,
    mounts: AtomicUsize,
    unmounts: AtomicUsize,
    /// The lease holder of every dynamic volume's mount, in order.
    lease_holders: Mutex<Vec<String>>,
    /// The lease holder each live mount was made for, so an adoption can be checked against it.
    holder_of: Mutex<HashMap<PathBuf, Option<String>>>,
}

/// One mount of a [`FakeMounter`].
#[derive(Debug)]
pub struct FakeMount {
    state: Arc<FakeMounterState>,
    mountpoint: PathBuf,
    outlives: bool,
}

impl FakeMounter {
    /// A mounter whose mounts end with the driver (the in-process mode).
    pub fn new() -> Self {
        Self::default()
    }

    /// A mounter whose mounts outlive the driver and are adopted by the next one (the systemd mode).
    pub fn outliving() -> Self {
        FakeMounter {
            outlives: true,
            ..Self::default()
        }
    }

    /// The live mountpoints.
    pub fn live(&self) -> Vec<PathBuf> {
        lock(&self.state.live).iter().cloned().collect()
    }

    /// Every mount server dies (or the host reboots): nothing is live any more.
    pub fn kill_all(&self) {
        lock(&self.state.live).clear();
    }

    /// Mounts of `volume` take `delay` from now on.
    pub fn hold(&self, volume: &str, delay: Duration) {
        lock(&self.state.held).insert(volume.to_owned(), delay);
    }

    /// Mounts fail with `reason` from now on (`None`: they work again).
    pub fn fail_with(&self, reason: Option<&str>) {
        *lock(&self.state.failing) = reason.map(str::to_owned);
    }

    /// How many mounts were started.
    pub fn mounts(&self) -> usize {
        self.state.mounts.load(Ordering::SeqCst)
    }

    /// The lease holder of each dynamic volume's mount so far, in order.
    pub fn lease_holders(&self) -> Vec<String> {
        lock(&self.state.lease_holders).clone()
    }

    /// How many mounts were ended.
    pub fn unmounts(&self) -> usize {
        self.state.unmounts.load(Ordering::SeqCst)
    }

    /// Broken invariants seen so far: a mountpoint mounted twice, an unmount of what is not mounted, a plan whose
    /// Vault path or mountpoint does not follow from the volume name.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.state.violations).clone()
    }

    fn violation(&self, what: String) {
        lock(&self.state.violations).push(what);
    }
}

#[async_trait]
impl ActiveMount for FakeMount {
    async fn unmount(self: Box<Self>) -> Result<(), MountError> {
        self.state.unmounts.fetch_add(1, Ordering::SeqCst);
        if !lock(&self.state.live).remove(&self.mountpoint) {
            lock(&self.state.violations).push(format!(
                "unmount of {:?}, which is not mounted",
                self.mountpoint
            ));
        }
        Ok(())
    }

    async fn is_alive(&self) -> bool {
        lock(&self.state.live).contains(&self.mountpoint)
    }

    fn outlives_driver(&self) -> bool {
        self.outlives
    }
}

#[async_trait]
impl Mounter for FakeMounter {
    async fn mount(&self, plan: &MountPlan) -> Result<Box<dyn ActiveMount>, MountError> {
        let delay = lock(&self.state.held).get(&plan.name).copied();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(reason) = lock(&self.state.failing).clone() {
            return Err(MountError::Mountpoint(reason));
        }
        let named = match plan.options.get("path") {
            Some(path) => VaultPath::from_volume_name(path),
            None => VaultPath::from_volume_name(&plan.name),
        };
        match named {
            Ok(expected) if expected == plan.path => {}
            other => self.violation(format!(
                "mounting {:?} at Vault path {:?}; the name parses as {other:?}",
                plan.name, plan.path
            )),
        }
        // A container's own lease has its own mountpoint: the escaped volume name and mount ID.
        let slot = match &plan.lease {
            Some(lease) if lease.holder != crate::lease::VOLUME_HOLDER => {
                format!("{}\n{}", plan.name, lease.holder)
            }
            _ => plan.name.clone(),
        };
        if let Some(lease) = &plan.lease {
            lock(&self.state.lease_holders).push(lease.holder.clone());
        }
        let escaped = crate::names::escape_component(&slot);
        if plan.mountpoint.file_name() != Some(std::ffi::OsStr::new(&escaped)) {
            self.violation(format!(
                "mountpoint {:?} of {:?} is not its escaped slot name",
                plan.mountpoint, plan.name
            ));
        }
        self.state.mounts.fetch_add(1, Ordering::SeqCst);
        lock(&self.state.holder_of).insert(
            plan.mountpoint.clone(),
            plan.lease.as_ref().map(|lease| lease.holder.clone()),
        );
        if !lock(&self.state.live).insert(plan.mountpoint.clone()) {
            self.violation(format!("{:?} mounted twice", plan.mountpoint));
        }
        Ok(Box::new(FakeMount {
            state: self.state.clone(),
            mountpoint: plan.mountpoint.clone(),
            outlives: self.outlives,
        }))
    }

    async fn adopt(&self, plan: &MountPlan) -> Option<Box<dyn ActiveMount>> {
        let alive = lock(&self.state.live).contains(&plan.mountpoint);
        if alive {
            // A mount unit is found by its lease holder: adopting with another would look for another unit.
            let mounted_for = lock(&self.state.holder_of).get(&plan.mountpoint).cloned();
            let adopting_for = plan.lease.as_ref().map(|lease| lease.holder.clone());
            if mounted_for != Some(adopting_for.clone()) {
                self.violation(format!(
                    "adopting {:?} for lease holder {adopting_for:?}; it was mounted for {mounted_for:?}",
                    plan.mountpoint
                ));
            }
        }
        (self.outlives && alive).then(|| {
            Box::new(FakeMount {
                state: self.state.clone(),
                mountpoint: plan.mountpoint.clone(),
                outlives: true,
            }) as Box<dyn ActiveMount>
        })
    }
}
