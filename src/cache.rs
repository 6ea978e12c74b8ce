//! An in-memory, time-limited cache in front of a [`SecretSource`].
//!
//! N readers of one key cost one source request per TTL: concurrent misses on the same key wait for the one request
//! in flight instead of sending their own. Errors are not cached, so a key added in Vault shows up on the next
//! lookup; each error is logged once per key until the key's state changes.
//!
//! Outages: while the source is unavailable (unreachable, sealed, 5xx, timing out), a key read before keeps being
//! served from memory for `stale_ttl` from the start of the outage; a key never read gives the error. Values are
//! only ever held in memory.
//!
//! A hostile container: names found missing (not a secret, not a folder) are remembered for `negative_ttl`, so
//! repeating them costs no request; the memory they take is capped (`MAX_MISSING`), entries of keys that have no
//! value are dropped as soon as their read ends, and "read failed" lines are rate-limited with a count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Mutex as AsyncMutex;

use crate::names::{SecretRef, VaultPath};
use crate::secret::{Secret, SecretSource, SourceError};

#[derive(Default)]
struct Slot {
    fresh: Option<(Secret, Instant)>,
    last_error: Option<SourceError>,
    /// When the source started failing for this key, while it still fails.
    failing_since: Option<Instant>,
}

/// The most missing names remembered per cache; past it, expired ones are dropped, then all (never unbounded).
const MAX_MISSING: usize = 10_000;
/// At most this many "read failed" lines per `LOG_WINDOW` per cache; the rest are counted in the next line.
const LOG_BURST: u64 = 20;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Counts log lines in a window, so a flood of distinct failing names is a few lines, not one per name.
struct LogBudget {
    window_start: Instant,
    logged: u64,
    suppressed: u64,
}

/// The shared cache of one driver process.
pub struct SecretCache {
    source: Arc<dyn SecretSource>,
    ttl: Duration,
    timeout: Duration,
    stale_ttl: Duration,
    negative_ttl: Duration,
    slots: Mutex<HashMap<SecretRef, Arc<AsyncMutex<Slot>>>>,
    missing: Mutex<HashMap<VaultPath, Instant>>,
    log_budget: Mutex<LogBudget>,
}

impl SecretCache {
    /// `ttl` is how long a read value is served before asking the source again; `timeout` bounds every request.
    pub fn new(source: Arc<dyn SecretSource>, ttl: Duration, timeout: Duration) -> Self {
        SecretCache {
            source,
            ttl,
            timeout,
            stale_ttl: Duration::ZERO,
            negative_ttl: Duration::ZERO,
            slots: Mutex::new(HashMap::new()),
            missing: Mutex::new(HashMap::new()),
            log_budget: Mutex::new(LogBudget {
                window_start: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Remembers names found missing for `negative_ttl` (zero: never), so asking again costs no request.
    pub fn with_negative_ttl(mut self, negative_ttl: Duration) -> Self {
        self.negative_ttl = negative_ttl;
        self
    }

    /// Whether `path` was found missing (neither a secret nor a folder) less than `negative_ttl` ago.
    pub fn known_missing(&self, path: &VaultPath) -> bool {
        let mut missing = self.missing.lock().unwrap_or_else(|p| p.into_inner());
        match missing.get(path) {
            Some(since) if since.elapsed() < self.negative_ttl => true,
            Some(_) => {
                missing.remove(path);
                false
            }
            None => false,
        }
    }

    /// Remembers that `path` is neither a secret nor a folder.
    pub fn note_missing(&self, path: &VaultPath) {
        if self.negative_ttl.is_zero() {
            return;
        }
        let mut missing = self.missing.lock().unwrap_or_else(|p| p.into_inner());
        if missing.len() >= MAX_MISSING {
            let ttl = self.negative_ttl;
            missing.retain(|_, since| since.elapsed() < ttl);
            if missing.len() >= MAX_MISSING {
                missing.clear();
            }
        }
        missing.insert(path.clone(), Instant::now());
    }

    /// How many missing names are remembered (for tests and the memory bound).
    pub fn missing_len(&self) -> usize {
        self.missing.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// How many keys have an entry (a value, or a read under way).
    pub fn entries(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether a "read failed" line may be written now; returns the lines suppressed since the last one.
    fn may_log(&self) -> Option<u64> {
        let mut budget = self.log_budget.lock().unwrap_or_else(|p| p.into_inner());
        if budget.window_start.elapsed() >= LOG_WINDOW {
            budget.window_start = Instant::now();
            budget.logged = 0;
        }
        if budget.logged < LOG_BURST {
            budget.logged += 1;
            Some(std::mem::take(&mut budget.suppressed))
        } else {
            budget.suppressed += 1;
            None
        }
    }

    /// Serves last-known values through outages of up to `stale_ttl` (zero: never).
    pub fn with_stale_ttl(mut self, stale_ttl: Duration) -> Self {
        self.stale_ttl = stale_ttl;
        self
    }

    fn slot(&self, secret: &SecretRef) -> Arc<AsyncMutex<Slot>> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slots.entry(secret.clone()).or_default().clone()
    }

    /// The secret at `path`, from memory when fresh.
    pub async fn read(&self, path: &VaultPath) -> Result<Secret, SourceError> {
        self.read_fresh(&SecretRef::latest(path.clone()), self.ttl)
            .await
    }

    /// The secret at `path`, from memory only if it was read less than `max_age` ago (the refresh pass asks for a
    /// recent read, so that volumes sharing this cache share one request).
    pub async fn read_fresh(
        &self,
        secret: &SecretRef,
        max_age: Duration,
    ) -> Result<Secret, SourceError> {
        self.read_or_stale(secret, max_age)
            .await
            .map(|(secret, _)| secret)
    }

    /// Like [`read_fresh`](Self::read_fresh), also saying whether the value is a stale one served through an outage.
    pub async fn read_or_stale(
        &self,
        secret: &SecretRef,
        max_age: Duration,
    ) -> Result<(Secret, bool), SourceError> {
        let path = secret;
        let slot = self.slot(secret);
        let mut slot = slot.lock().await;
        if let Some((secret, fetched)) = &slot.fresh {
            if fetched.elapsed() < max_age.min(self.ttl) {
                return Ok((secret.clone(), false));
            }
        }
        let fetched = match secret.version {
            None => self.bounded(self.source.read(&secret.path)).await,
            Some(version) => {
                self.bounded(self.source.read_version(&secret.path, version))
                    .await
            }
        };
        match fetched {
            Ok(secret) => {
                if slot.last_error.take().is_some() {
                    tracing::info!(vault_path = %path, "secret readable again");
                }
                slot.failing_since = None;
                slot.fresh = Some((secret.clone(), Instant::now()));
                Ok((secret, false))
            }
            Err(error) => {
                if slot.last_error.as_ref() != Some(&error) {
                    if let Some(suppressed) = self.may_log() {
                        log_source_error(path, &error, suppressed);
                    }
                    slot.last_error = Some(error.clone());
                }
                if let SourceError::Unavailable(_) = error {
                    let since = *slot.failing_since.get_or_insert_with(Instant::now);
                    if let Some((secret, _)) = &slot.fresh {
                        if since.elapsed() < self.stale_ttl {
                            return Ok((secret.clone(), true));
                        }
                    }
                }
                // A definitive answer (not found, denied), or an outage longer than stale_ttl: forget the value, and
                // the entry, so names that never had a value take no memory.
                slot.fresh = None;
                drop(slot);
                self.drop_empty_slot(secret);
                Err(error)
            }
        }
    }

    fn drop_empty_slot(&self, secret: &SecretRef) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let empty = slots
            .get(secret)
            .is_some_and(|slot| slot.try_lock().is_ok_and(|slot| slot.fresh.is_none()));
        if empty {
            slots.remove(secret);
        }
    }

    /// Whether `path` is a folder, with the same timeout as reads. Not cached: it is asked only for nested names.
    pub async fn is_folder(&self, path: &VaultPath) -> Result<bool, SourceError> {
        self.bounded(self.source.is_folder(path)).await
    }

    /// Whether `path` may be served at all (its engine is KV), with the same timeout as reads.
    pub async fn check_served(&self, path: &VaultPath) -> Result<(), SourceError> {
        self.bounded(self.source.check_served(path)).await
    }

    /// Runs a source call, giving up after the configured timeout.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, SourceError>>,
    ) -> Result<T, SourceError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(SourceError::Unavailable(format!(
                    "no answer within {}s",
                    self.timeout.as_secs_f32()
                )))
            })
    }
}

/// One "read failed" line; `suppressed` counts the lines left out before it (rate limit).
fn log_source_error(path: &SecretRef, error: &SourceError, suppressed: u64) {
    match error {
        SourceError::NotFound => {
            tracing::info!(vault_path = %path, status = "not found", suppressed, "secret read failed")
        }
        SourceError::Denied(reason) => {
            tracing::warn!(vault_path = %path, status = "denied", reason = %reason, suppressed, "secret read failed")
        }
        SourceError::Refused(reason) => {
            tracing::warn!(vault_path = %path, status = "refused", reason = %reason, suppressed, "secret read refused")
        }
        SourceError::Unavailable(reason) => {
            tracing::warn!(vault_path = %path, status = "unavailable", reason = %reason, suppressed, "secret read failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemorySource;
    use serde_json::json;

    fn path(p: &str) -> VaultPath {
        VaultPath::from_volume_name(p).unwrap()
    }

    #[tokio::test]
    async fn one_request_per_ttl_for_many_readers() {
        let source = Arc::new(MemorySource::default());
        source.put("secret/a", json!({"value": "1"}));
        let cache = Arc::new(SecretCache::new(
            source.clone(),
            Duration::from_secs(60),
            Duration::from_secs(5),
        ));
        let mut readers = Vec::new();
        for _ in 0..50 {
            let cache = cache.clone();
            readers.push(tokio::spawn(
                async move { cache.read(&path("secret/a")).await },
            ));
        }
        for reader in readers {
            assert!(reader.await.unwrap().is_ok());
        }
        assert_eq!(source.reads(), 1);
    }

    #[tokio::test]
    async fn concurrent_misses_are_coalesced_while_the_source_is_slow() {
        let source = Arc::new(MemorySource::default());
        source.put("secret/a", json!({"value": "1"}));
        source.set_delay(Duration::from_millis(200));
        let cache = Arc::new(SecretCache::new(
            source.clone(),
            Duration::from_secs(60),
            Duration::from_secs(5),
        ));
        let a = tokio::spawn({
            let cache = cache.clone();
            async move { cache.read(&path("secret/a")).await }
        });
        let b = tokio::spawn({
            let cache = cache.clone();
            async move { cache.read(&path("secret/a")).await }
        });
        assert!(a.await.unwrap().is_ok() && b.await.unwrap().is_ok());
        assert_eq!(source.reads(), 1);
    }

    #[tokio::test]
    async fn expired_entries_are_read_again_and_errors_are_not_cached() {
        let source = Arc::new(MemorySource::default());
        let cache = SecretCache::new(
            source.clone(),
            Duration::from_millis(50),
            Duration::from_secs(5),
        );
        assert_eq!(
            cache.read(&path("secret/a")).await,
            Err(SourceError::NotFound)
        );
        source.put("secret/a", json!({"value": "1"}));
        assert!(cache.read(&path("secret/a")).await.is_ok());
        source.put("secret/a", json!({"value": "2"}));
        tokio::time::sleep(Duration::from_millis(80)).await;
        let secret = cache.read(&path("secret/a")).await.unwrap();
        assert_eq!(
            secret
                .render(&crate::names::View::Default)
                .unwrap()
                .as_slice(),
            b"2"
        );
        assert_eq!(source.reads(), 3);
    }

    #[tokio::test]
    async fn an_outage_serves_keys_read_before_for_stale_ttl_and_never_keys_not_read() {
        let source = Arc::new(MemorySource::default());
        source.put("secret/a", json!({"value": "1"}));
        source.put("secret/b", json!({"value": "2"}));
        let cache = SecretCache::new(
            source.clone(),
            Duration::from_millis(1),
            Duration::from_secs(5),
        )
        .with_stale_ttl(Duration::from_millis(300));
        assert!(cache.read(&path("secret/a")).await.is_ok());
        source.set_failure(Some(SourceError::Unavailable("sealed".into())));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (secret, stale) = cache
            .read_or_stale(&SecretRef::latest(path("secret/a")), Duration::ZERO)
            .await
            .unwrap();
        assert!(stale);
        assert_eq!(
            secret
                .render(&crate::names::View::Default)
                .unwrap()
                .as_slice(),
            b"1"
        );
        assert!(matches!(
            cache.read(&path("secret/b")).await,
            Err(SourceError::Unavailable(_))
        ));
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(matches!(
            cache.read(&path("secret/a")).await,
            Err(SourceError::Unavailable(_))
        ));
        source.set_failure(None);
        let (_, stale) = cache
            .read_or_stale(&SecretRef::latest(path("secret/a")), Duration::ZERO)
            .await
            .unwrap();
        assert!(!stale, "recovered without a restart");
    }

    #[tokio::test]
    async fn stale_ttl_zero_never_serves_stale_and_not_found_is_definitive() {
        let source = Arc::new(MemorySource::default());
        source.put("secret/a", json!({"value": "1"}));
        let cache = SecretCache::new(
            source.clone(),
            Duration::from_millis(1),
            Duration::from_secs(5),
        );
        assert!(cache.read(&path("secret/a")).await.is_ok());
        source.set_failure(Some(SourceError::Unavailable("down".into())));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(cache.read(&path("secret/a")).await.is_err());
        let cache = SecretCache::new(
            source.clone(),
            Duration::from_millis(1),
            Duration::from_secs(5),
        )
        .with_stale_ttl(Duration::from_secs(60));
        source.set_failure(None);
        assert!(cache.read(&path("secret/a")).await.is_ok());
        source.remove("secret/a");
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            cache.read(&path("secret/a")).await,
            Err(SourceError::NotFound)
        );
    }

    #[tokio::test]
    async fn a_hanging_source_gives_unavailable_within_the_timeout() {
        let source = Arc::new(MemorySource::default());
        source.put("secret/a", json!({"value": "1"}));
        source.set_delay(Duration::from_secs(30));
        let cache = SecretCache::new(source, Duration::from_secs(60), Duration::from_millis(100));
        let started = Instant::now();
        let result = cache.read(&path("secret/a")).await;
        assert!(
            matches!(result, Err(SourceError::Unavailable(_))),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
