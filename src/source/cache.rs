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
//! repeating them costs no request. Before a name that is not in memory is read, the index of its directory says
//! whether it exists: one LIST of the directory, taken at most once per `negative_ttl` and shared by every name in
//! it, so a flood of distinct missing names costs about one request per directory per `negative_ttl`
//! ([`SecretCache::listed`]). An index holds keyed 64-bit hashes of the names, never the names or any value; it only
//! decides existence. Everything is bounded: secrets (least recently used dropped first, `max_secrets`), missing
//! names (`MAX_MISSING`), indexes (`MAX_INDEX_NAMES` per directory, `MAX_INDEXED_NAMES` in all), and "read
//! failed" lines are rate-limited with a count.
//!
//! Every request to the source passes the caller's volume budget and the process's ([`crate::source::limits`]); answers
//! from memory, and readers waiting on a request in flight, pass none.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use tokio::sync::Mutex as AsyncMutex;

use crate::names::{SecretRef, VaultPath};
use crate::source::limits::{self, Refused, RequestBudget};
use crate::source::{Secret, SecretSource, SourceError};

/// One key: its last value, readable at once, and the state of its requests.
#[derive(Default)]
struct Slot {
    /// The last value read and when. Behind a plain lock, so a reader never waits for a request in flight (such as
    /// a refresh waiting for its volume's budget) to use a value that is still fresh.
    fresh: Mutex<Option<(Secret, Instant)>>,
    /// Held while a request for this key is in flight: concurrent misses wait here and share its answer.
    requests: AsyncMutex<Requests>,
}

#[derive(Default)]
struct Requests {
    last_error: Option<SourceError>,
    /// When the source started failing for this key, while it still fails.
    failing_since: Option<Instant>,
}

impl Slot {
    /// The value, if it was read less than `max_age` ago.
    fn fresh_within(&self, max_age: Duration) -> Option<Secret> {
        match &*lock(&self.fresh) {
            Some((secret, fetched)) if fetched.elapsed() < max_age => Some(secret.clone()),
            _ => None,
        }
    }

    /// The last value, however old.
    fn last(&self) -> Option<Secret> {
        lock(&self.fresh).as_ref().map(|(secret, _)| secret.clone())
    }
}

/// The most secrets kept in memory per cache unless configured (`limits.cached_secrets`).
pub const DEFAULT_MAX_SECRETS: usize = 10_000;
/// The most missing names remembered per cache; past it, the least recently found are forgotten.
pub const MAX_MISSING: usize = 10_000;
/// The most names a directory's index holds; a larger folder is not indexed, and its names are read one by one.
pub const MAX_INDEX_NAMES: usize = 10_000;
/// The most names all directory indexes of one cache hold together; past it, the least recently used go.
pub const MAX_INDEXED_NAMES: usize = 50_000;
/// The most directories with an index (or a remembered failure to take one) per cache.
pub const MAX_INDEXED_DIRS: usize = 1_024;
/// At most this many "read failed" lines per `LOG_WINDOW` per cache; the rest are counted in the next line.
const LOG_BURST: u64 = 20;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Counts log lines in a window, so a flood of distinct failing names is a few lines, not one per name.
struct LogBudget {
    window_start: Instant,
    logged: u64,
    suppressed: u64,
}

/// What a directory's index says about one name in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    /// A secret of that name exists.
    pub secret: bool,
    /// A folder of that name exists (it holds at least one secret).
    pub folder: bool,
}

const SECRET_BIT: u8 = 1;
const FOLDER_BIT: u8 = 2;

/// One directory's names by keyed hash, or `None`: the directory could not be listed (denied, too large, the source
/// cannot list), so its names are read one by one.
type Listing = Option<HashMap<u64, u8>>;

struct IndexEntry {
    taken: Instant,
    listing: Arc<Listing>,
}

impl IndexEntry {
    fn names(&self) -> usize {
        self.listing.as_ref().as_ref().map_or(0, HashMap::len)
    }
}

struct Indexes {
    entries: LruCache<VaultPath, IndexEntry>,
    /// Names held by all entries together.
    names: usize,
    /// One lock per directory whose index is being taken, so concurrent lookups share one LIST.
    taking: HashMap<VaultPath, Arc<AsyncMutex<()>>>,
}

/// The shared cache of one set of credentials.
pub struct SecretCache {
    source: Arc<dyn SecretSource>,
    /// `cache_ttl`, `stale_ttl`, `negative_ttl`: replaced whole by a reload.
    times: std::sync::RwLock<CacheTimes>,
    timeout: Duration,
    slots: Mutex<LruCache<SecretRef, Arc<Slot>>>,
    missing: Mutex<LruCache<VaultPath, Instant>>,
    indexes: Mutex<Indexes>,
    hasher: RandomState,
    log_budget: Mutex<LogBudget>,
    total: Arc<RequestBudget>,
}

/// Shows the timings only: the slots hold secret values.
impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCache")
            .field("times", &self.times())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn capacity(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

/// An LRU map of at most `cap` entries that grows as it fills. `LruCache::new` reserves room for all `cap` entries
/// at once: a few hundred kB per map, in every one of hundreds of mount units that mostly hold a handful of secrets.
pub(crate) fn bounded_lru<K: std::hash::Hash + Eq, V>(cap: usize) -> LruCache<K, V> {
    let mut map = LruCache::new(NonZeroUsize::MIN);
    map.resize(capacity(cap));
    map
}

/// The cache's lifetimes, from the config (`cache_ttl`, `stale_ttl`, `negative_ttl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTimes {
    pub ttl: Duration,
    pub stale_ttl: Duration,
    pub negative_ttl: Duration,
}

impl SecretCache {
    /// `ttl` is how long a read value is served before asking the source again; `timeout` bounds every request.
    pub fn new(source: Arc<dyn SecretSource>, ttl: Duration, timeout: Duration) -> Self {
        SecretCache {
            source,
            times: std::sync::RwLock::new(CacheTimes {
                ttl,
                stale_ttl: Duration::ZERO,
                negative_ttl: Duration::ZERO,
            }),
            timeout,
            slots: Mutex::new(bounded_lru(DEFAULT_MAX_SECRETS)),
            missing: Mutex::new(bounded_lru(MAX_MISSING)),
            indexes: Mutex::new(Indexes {
                entries: bounded_lru(MAX_INDEXED_DIRS),
                names: 0,
                taking: HashMap::new(),
            }),
            hasher: RandomState::new(),
            log_budget: Mutex::new(LogBudget {
                window_start: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
            total: Arc::new(RequestBudget::unlimited("all volumes")),
        }
    }

    /// The source behind the cache, for what is never cached (dynamic secrets are issued, not read).
    pub fn source(&self) -> &Arc<dyn SecretSource> {
        &self.source
    }

    /// Remembers names found missing, and directory indexes, for `negative_ttl` (zero: never, and no index is
    /// taken), so asking again costs no request.
    pub fn with_negative_ttl(mut self, negative_ttl: Duration) -> Self {
        self.times_mut().negative_ttl = negative_ttl;
        self
    }

    /// Keeps at most `max` secrets (the least recently used are dropped first, and read again when next needed).
    pub fn with_max_secrets(mut self, max: usize) -> Self {
        self.slots = Mutex::new(bounded_lru(max));
        self
    }

    /// Sends every request through `total`, the process's budget, shared by all caches.
    pub fn with_total_budget(mut self, total: Arc<RequestBudget>) -> Self {
        self.total = total;
        self
    }

    /// Whether `path` was found missing (neither a secret nor a folder) less than `negative_ttl` ago.
    pub fn known_missing(&self, path: &VaultPath) -> bool {
        let mut missing = lock(&self.missing);
        match missing.get(path) {
            Some(since) if since.elapsed() < self.times().negative_ttl => true,
            Some(_) => {
                missing.pop(path);
                false
            }
            None => false,
        }
    }

    /// Remembers that `path` is neither a secret nor a folder.
    pub fn note_missing(&self, path: &VaultPath) {
        if self.times().negative_ttl.is_zero() {
            return;
        }
        lock(&self.missing).put(path.clone(), Instant::now());
    }

    /// How many missing names are remembered (for tests and the memory bound).
    pub fn missing_len(&self) -> usize {
        lock(&self.missing).len()
    }

    /// How many keys have an entry (a value, or a read under way).
    pub fn entries(&self) -> usize {
        lock(&self.slots).len()
    }

    /// How many directories have an index, and how many names those hold together.
    pub fn indexed(&self) -> (usize, usize) {
        let indexes = lock(&self.indexes);
        (indexes.entries.len(), indexes.names)
    }

    /// Whether a "read failed" line may be written now; returns the lines suppressed since the last one.
    fn may_log(&self) -> Option<u64> {
        let mut budget = lock(&self.log_budget);
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
        self.times_mut().stale_ttl = stale_ttl;
        self
    }

    fn times_mut(&mut self) -> &mut CacheTimes {
        self.times.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// How long values are fresh, served through an outage, and remembered missing.
    pub fn times(&self) -> CacheTimes {
        *self.times.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A reload: values read from now on are judged by `times` (also those already in memory).
    pub fn set_times(&self, times: CacheTimes) {
        *self.times.write().unwrap_or_else(|p| p.into_inner()) = times;
    }

    fn slot(&self, secret: &SecretRef) -> Arc<Slot> {
        lock(&self.slots)
            .get_or_insert(secret.clone(), Default::default)
            .clone()
    }

    /// The secret from memory if it was read less than `ttl` ago; never asks the source, never waits (not even for
    /// a request in flight for the same key).
    pub fn cached(&self, secret: &SecretRef) -> Option<Secret> {
        let slot = lock(&self.slots).get(secret).cloned()?;
        slot.fresh_within(self.times().ttl)
    }

    /// Whether a value of the secret is in memory, however old (it existed: a read, not an index, decides now).
    pub fn remembered(&self, secret: &SecretRef) -> bool {
        lock(&self.slots)
            .peek(secret)
            .is_some_and(|slot| lock(&slot.fresh).is_some())
    }

    /// The secret at `path`, from memory when fresh.
    pub async fn read(&self, path: &VaultPath) -> Result<Secret, SourceError> {
        self.read_fresh(&SecretRef::latest(path.clone()), self.times().ttl)
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
        self.read_within(secret, max_age, None).await
    }

    /// [`read_or_stale`](Self::read_or_stale) with a request, if one is needed, charged to `volume` (and the
    /// process's budget). When the budget stays exhausted for `timeout`, a value read before is served as it is
    /// and a key never read gives `Unavailable` (EIO).
    pub async fn read_within(
        &self,
        secret: &SecretRef,
        max_age: Duration,
        volume: Option<&RequestBudget>,
    ) -> Result<(Secret, bool), SourceError> {
        let path = secret;
        let slot = self.slot(secret);
        let max_age = max_age.min(self.times().ttl);
        if let Some(fresh) = slot.fresh_within(max_age) {
            crate::metrics::cache_lookup(crate::metrics::CacheResult::Hit);
            return Ok((fresh, false));
        }
        let mut requests = slot.requests.lock().await;
        // The request this one waited for may have answered it.
        if let Some(fresh) = slot.fresh_within(max_age) {
            crate::metrics::cache_lookup(crate::metrics::CacheResult::Hit);
            return Ok((fresh, false));
        }
        crate::metrics::cache_lookup(crate::metrics::CacheResult::Miss);
        let fetched = match secret.version {
            None => self.send(volume, self.source.read(&secret.path)).await,
            Some(version) => {
                self.send(volume, self.source.read_version(&secret.path, version))
                    .await
            }
        };
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(refused) => {
                // Nothing was learnt about the key: a value read before stays as it is (the refresh pass tries
                // again next time), and a key never read gives EIO. The budget logged the refusal.
                if let Some(last) = slot.last() {
                    return Ok((last, false));
                }
                drop(requests);
                self.drop_empty_slot(secret);
                return Err(SourceError::Unavailable(refused.to_string()));
            }
        };
        match fetched {
            Ok(secret) => {
                if requests.last_error.take().is_some() {
                    tracing::info!(vault_path = %path, "secret {path} readable again");
                }
                requests.failing_since = None;
                *lock(&slot.fresh) = Some((secret.clone(), Instant::now()));
                Ok((secret, false))
            }
            Err(error) => {
                if requests.last_error.as_ref() != Some(&error) {
                    if let Some(suppressed) = self.may_log() {
                        log_source_error(path, &error, suppressed);
                    }
                    requests.last_error = Some(error.clone());
                }
                if let SourceError::Unavailable(_) = error {
                    let since = *requests.failing_since.get_or_insert_with(Instant::now);
                    if let Some(last) = slot.last() {
                        if since.elapsed() < self.times().stale_ttl {
                            crate::metrics::stale_served();
                            return Ok((last, true));
                        }
                    }
                }
                // A definitive answer (not found, denied), or an outage longer than stale_ttl: forget the value, and
                // the entry, so names that never had a value take no memory.
                *lock(&slot.fresh) = None;
                drop(requests);
                self.drop_empty_slot(secret);
                Err(error)
            }
        }
    }

    fn drop_empty_slot(&self, secret: &SecretRef) {
        let mut slots = lock(&self.slots);
        let empty = slots
            .peek(secret)
            .is_some_and(|slot| slot.requests.try_lock().is_ok() && lock(&slot.fresh).is_none());
        if empty {
            slots.pop(secret);
        }
    }

    /// What the index of directory `dir` says about `name` in it; `None`: no index can be used (disabled by a
    /// zero `negative_ttl`, or the directory cannot be listed), so the name must be read. The index is taken with
    /// one LIST charged to `volume`, at most once per `negative_ttl` per directory, and shared by every lookup in
    /// the directory.
    ///
    /// The caller decides that `dir` may be listed with this cache's credentials: the access rules must route `dir`
    /// itself to this cache. A `dir` that does not exist lists nothing: every name in it is missing.
    pub async fn listed(
        &self,
        dir: &VaultPath,
        name: &str,
        volume: Option<&RequestBudget>,
    ) -> Result<Option<Listed>, SourceError> {
        if self.times().negative_ttl.is_zero() {
            return Ok(None);
        }
        let listing = match self.fresh_index(dir) {
            Some(listing) => listing,
            None => self.take_index(dir, volume).await?,
        };
        Ok(listing.as_ref().as_ref().map(|names| {
            let bits = names.get(&self.hasher.hash_one(name)).copied().unwrap_or(0);
            Listed {
                secret: bits & SECRET_BIT != 0,
                folder: bits & FOLDER_BIT != 0,
            }
        }))
    }

    fn fresh_index(&self, dir: &VaultPath) -> Option<Arc<Listing>> {
        let mut indexes = lock(&self.indexes);
        match indexes.entries.get(dir) {
            Some(entry) if entry.taken.elapsed() < self.times().negative_ttl => {
                Some(entry.listing.clone())
            }
            _ => None,
        }
    }

    async fn take_index(
        &self,
        dir: &VaultPath,
        volume: Option<&RequestBudget>,
    ) -> Result<Arc<Listing>, SourceError> {
        let taking = lock(&self.indexes)
            .taking
            .entry(dir.clone())
            .or_default()
            .clone();
        let _taking = taking.lock().await;
        // Another lookup may have taken it while this one waited.
        if let Some(listing) = self.fresh_index(dir) {
            return Ok(listing);
        }
        let listed = match self.send(volume, self.source.list(dir)).await {
            Ok(listed) => listed,
            Err(refused) => {
                lock(&self.indexes).taking.remove(dir);
                return Err(SourceError::Unavailable(refused.to_string()));
            }
        };
        let listing: Listing = match listed {
            Ok(names) if names.len() <= MAX_INDEX_NAMES => Some(self.hash_names(&names)),
            Ok(names) => {
                if let Some(suppressed) = self.may_log() {
                    tracing::info!(vault_path = %dir, names = names.len(), limit = MAX_INDEX_NAMES, suppressed,
                        "folder too large to index: each name looked up in it is read");
                }
                None
            }
            Err(SourceError::NotFound) => Some(HashMap::new()),
            Err(error) => {
                if let Some(suppressed) = self.may_log() {
                    tracing::info!(vault_path = %dir, %error, suppressed,
                        "folder not indexed (LIST failed): each name looked up in it is read");
                }
                None
            }
        };
        let listing = Arc::new(listing);
        self.install_index(dir, listing.clone());
        Ok(listing)
    }

    fn hash_names(&self, names: &[String]) -> HashMap<u64, u8> {
        let mut hashed = HashMap::with_capacity(names.len());
        for name in names {
            let (name, bit) = match name.strip_suffix('/') {
                Some(folder) => (folder, FOLDER_BIT),
                None => (name.as_str(), SECRET_BIT),
            };
            *hashed.entry(self.hasher.hash_one(name)).or_insert(0) |= bit;
        }
        hashed
    }

    fn install_index(&self, dir: &VaultPath, listing: Arc<Listing>) {
        let mut indexes = lock(&self.indexes);
        let indexes = &mut *indexes;
        indexes.taking.remove(dir);
        let entry = IndexEntry {
            taken: Instant::now(),
            listing,
        };
        let size = entry.names();
        if let Some(old) = indexes.entries.pop(dir) {
            indexes.names -= old.names();
        }
        while indexes.names + size > MAX_INDEXED_NAMES {
            match indexes.entries.pop_lru() {
                Some((_, old)) => indexes.names -= old.names(),
                None => break,
            }
        }
        if let Some((_, evicted)) = indexes.entries.push(dir.clone(), entry) {
            indexes.names -= evicted.names();
        }
        indexes.names += size;
    }

    /// Whether `path` is a folder, with the same timeout as reads. Not cached: it is asked only for nested names
    /// whose directory has no index.
    pub async fn is_folder(&self, path: &VaultPath) -> Result<bool, SourceError> {
        self.is_folder_within(path, None).await
    }

    /// [`is_folder`](Self::is_folder), charged to `volume`.
    pub async fn is_folder_within(
        &self,
        path: &VaultPath,
        volume: Option<&RequestBudget>,
    ) -> Result<bool, SourceError> {
        self.send(volume, self.source.is_folder(path))
            .await
            .unwrap_or_else(|refused| Err(SourceError::Unavailable(refused.to_string())))
    }

    /// Whether `path` may be served at all (its engine is KV), with the same timeout as reads.
    pub async fn check_served(&self, path: &VaultPath) -> Result<(), SourceError> {
        self.bounded(self.source.check_served(path)).await
    }

    /// Sends one source request once `volume` and the process's budget admit it (waiting at most `timeout`), and
    /// gives up on the answer after `timeout`.
    async fn send<T>(
        &self,
        volume: Option<&RequestBudget>,
        call: impl std::future::Future<Output = Result<T, SourceError>>,
    ) -> Result<Result<T, SourceError>, Refused> {
        let _admission = limits::admit(volume, &self.total, self.timeout).await?;
        Ok(self.bounded(call).await)
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
            tracing::info!(vault_path = %path, status = "not found", suppressed, "secret {path} not found")
        }
        SourceError::Denied(reason) => {
            tracing::warn!(vault_path = %path, status = "denied", reason = %reason, suppressed, "secret {path}: read denied: {reason}")
        }
        SourceError::Refused(reason) => {
            tracing::warn!(vault_path = %path, status = "refused", reason = %reason, suppressed, "secret {path}: read refused: {reason}")
        }
        SourceError::Unavailable(reason) => {
            tracing::warn!(vault_path = %path, status = "unavailable", reason = %reason, suppressed, "secret {path}: read failed: {reason}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemorySource;
    use serde_json::json;

    #[test]
    fn a_bounded_lru_keeps_its_cap_and_drops_the_least_recently_used() {
        let mut map = bounded_lru::<u32, u32>(3);
        for key in 0..3 {
            map.put(key, key);
        }
        map.get(&0);
        map.put(3, 3);
        assert_eq!(map.len(), 3);
        assert_eq!(map.cap().get(), 3);
        assert!(
            map.contains(&0) && !map.contains(&1),
            "1 was the least recently used"
        );
    }

    fn path(p: &str) -> VaultPath {
        VaultPath::from_volume_name(p).unwrap()
    }

    #[tokio::test]
    async fn reloaded_times_judge_the_values_already_in_memory() {
        let source = Arc::new(MemorySource::default());
        source.put("secret/a", json!({"value": "1"}));
        let cache = SecretCache::new(source, Duration::from_secs(3600), Duration::from_secs(1));
        let secret = SecretRef::latest(path("secret/a"));
        cache.read(&path("secret/a")).await.unwrap();
        assert!(cache.cached(&secret).is_some());
        let times = CacheTimes {
            ttl: Duration::ZERO,
            ..cache.times()
        };
        cache.set_times(times);
        assert_eq!(cache.times(), times);
        assert!(
            cache.cached(&secret).is_none(),
            "a zero ttl leaves nothing fresh"
        );
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
        let stale_served = || crate::metrics::current("libsecret_cache_stale_served_total{}");
        let misses = || crate::metrics::current("libsecret_cache_lookups_total{result=\"miss\"}");
        let (stale_before, misses_before) = (stale_served(), misses());
        assert!(cache.read(&path("secret/a")).await.is_ok());
        assert!(misses() > misses_before, "the first read is a miss");
        source.set_failure(Some(SourceError::Unavailable("sealed".into())));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (secret, stale) = cache
            .read_or_stale(&SecretRef::latest(path("secret/a")), Duration::ZERO)
            .await
            .unwrap();
        assert!(stale);
        assert!(stale_served() > stale_before, "a stale answer is counted");
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
