//! In-memory fakes for tests of the cores (also used by the integration tests under `tests/`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::fs::audit::{AuditRecord, AuditSink, ContainerResolver, Suppressed};
use crate::names::VaultPath;
use crate::source::{Secret, SecretSource, SourceError};
use crate::volumes::{MountIds, RecordStore, StoreError, VolumeRecord};

/// A [`SecretSource`] backed by a map, counting its reads, with an optional delay and forced error.
#[derive(Default)]
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

/// Containers by pid, for an [`crate::fs::audit::Auditor`] under test.
pub struct FixedContainers(pub HashMap<u32, String>);

impl ContainerResolver for FixedContainers {
    fn container_of(&self, pid: u32) -> Option<String> {
        self.0.get(&pid).cloned()
    }
}

/// An [`AuditSink`] that keeps what it is given; clones share the records.
#[derive(Default, Clone)]
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
#[derive(Default, Clone)]
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
