//! Prometheus metrics: one process-global set of counters and one latency histogram, encoded with
//! `prometheus-client` in the Prometheus text format (0.0.4) and served by [`server`] on the opt-in
//! `metrics_listen` listener.
//!
//! Every series exists from the start (at 0) with every value of its labels, and the labels come from fixed lists
//! (a result, a method, a kind): never a secret, a token, a key or a path, so the number of series is bounded.
//! Counting is one relaxed atomic add, cheap enough for the read path.
//!
//! Mount units are processes of their own. A unit takes a [`unit_snapshot`] of its counters; the driver adds what a
//! unit reports with [`absorb_unit`], as the increase since that unit's last report, into the same series, so the
//! driver's `/metrics` counts the whole host and its counters never go down when a unit stops ([`forget_unit`]).

pub mod server;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

/// The `Content-Type` of what [`encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Declares a label's values as an enum, in the order of its `VALUES` (the order the series are encoded in).
macro_rules! label {
    ($(#[$doc:meta])* $name:ident, $key:literal, [$($variant:ident => $value:literal),+ $(,)?]) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            const DIMENSION: Dimension = Dimension {
                key: $key,
                values: &[$($value),+],
            };

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label!(
    /// What the cache answered a read with.
    CacheResult, "result", [Hit => "hit", Miss => "miss"]
);
label!(
    /// How a name was answered missing from memory: remembered as missing, or absent from its folder's index.
    NegativeKind, "kind", [Name => "name", Index => "index"]
);
label!(
    /// Which request budget refused a request.
    Budget, "budget", [Volume => "volume", Process => "process"]
);
label!(
    /// Which limit of a budget was still reached.
    Limit, "limit", [Concurrency => "concurrency", Rate => "rate"]
);
label!(
    /// The HTTP method of a Vault request.
    Method, "method", [Get => "GET", List => "LIST", Post => "POST", Put => "PUT", Delete => "DELETE", Other => "other"]
);
label!(
    /// How Vault answered a request.
    VaultResult, "result", [
        Ok => "ok",
        NotFound => "not_found",
        Denied => "denied",
        Unavailable => "unavailable",
        Error => "error",
    ]
);
label!(
    /// How a token was obtained: the auth method, or lent by the driver's token broker.
    LoginMethod, "method", [Token => "token", Approle => "approle", Cert => "cert", Lent => "lent"]
);
label!(
    /// Whether something worked.
    Outcome, "result", [Ok => "ok", Failed => "failed"]
);
label!(
    /// What a refresh found about a name in use.
    Change, "change", [Changed => "changed", Removed => "removed"]
);
label!(
    /// What was done with a dynamic secret's lease.
    LeaseOp, "op", [Issue => "issue", Renew => "renew", Revoke => "revoke"]
);

/// One label: its key and every value it may take.
#[derive(Debug, Clone, Copy)]
struct Dimension {
    key: &'static str,
    values: &'static [&'static str],
}

/// A counter family: one atomic per combination of its labels' values.
struct CounterFamily {
    /// The name without `_total` (the encoder adds it).
    name: &'static str,
    help: &'static str,
    dimensions: &'static [Dimension],
    counts: Box<[AtomicU64]>,
}

impl CounterFamily {
    fn new(name: &'static str, help: &'static str, dimensions: &'static [Dimension]) -> Self {
        let series: usize = dimensions.iter().map(|d| d.values.len()).product();
        CounterFamily {
            name,
            help,
            dimensions,
            counts: (0..series).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Adds `n` to the series at `index` (label value indexes in mixed radix, first label most significant).
    fn add(&self, index: usize, n: u64) {
        if let Some(count) = self.counts.get(index) {
            count.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn labels(&self, mut index: usize) -> Vec<(&'static str, &'static str)> {
        let mut labels = Vec::with_capacity(self.dimensions.len());
        for dimension in self.dimensions.iter().rev() {
            let size = dimension.values.len().max(1);
            let value = dimension
                .values
                .get(index % size)
                .copied()
                .unwrap_or_default();
            labels.push((dimension.key, value));
            index /= size;
        }
        labels.reverse();
        labels
    }

    /// The series' key in a [`UnitCounters`]: `name_total{key="value",...}`.
    fn key(&self, index: usize) -> String {
        series_key(&format!("{}_total", self.name), &self.labels(index))
    }
}

fn series_key(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: Vec<String> = labels
        .iter()
        .map(|(key, value)| format!("{key}=\"{value}\""))
        .collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// Upper bounds of the Vault latency buckets, in seconds: a loopback answer takes about a millisecond, a remote
/// one tens, and `vault.timeout` (10 s by default) ends the rest.
const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram family with one label: per value, a count per bucket (not cumulative; the last bucket is `+Inf`)
/// and the sum in nanoseconds, all atomics so that a unit's buckets can be added to the driver's.
struct HistogramFamily {
    name: &'static str,
    help: &'static str,
    dimension: Dimension,
    bounds: &'static [f64],
    buckets: Box<[AtomicU64]>,
    sums_ns: Box<[AtomicU64]>,
}

impl HistogramFamily {
    fn new(
        name: &'static str,
        help: &'static str,
        dimension: Dimension,
        bounds: &'static [f64],
    ) -> Self {
        let values = dimension.values.len();
        HistogramFamily {
            name,
            help,
            dimension,
            bounds,
            buckets: (0..values * (bounds.len() + 1))
                .map(|_| AtomicU64::new(0))
                .collect(),
            sums_ns: (0..values).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn observe(&self, value: usize, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        if let Some(count) = self.buckets.get(value * (self.bounds.len() + 1) + bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(sum) = self.sums_ns.get(value) {
            let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
            sum.fetch_add(nanos, Ordering::Relaxed);
        }
    }

    fn label_value(&self, value: usize) -> &'static str {
        self.dimension
            .values
            .get(value)
            .copied()
            .unwrap_or_default()
    }

    fn bound_text(&self, bucket: usize) -> String {
        match self.bounds.get(bucket) {
            Some(bound) => bound.to_string(),
            None => "+Inf".to_owned(),
        }
    }

    /// Every atomic of the family with its key in a [`UnitCounters`].
    fn series(&self) -> Vec<(String, &AtomicU64)> {
        let per_value = self.bounds.len() + 1;
        let mut series = Vec::with_capacity(self.buckets.len() + self.sums_ns.len());
        for (index, count) in self.buckets.iter().enumerate() {
            let (value, bucket) = (index / per_value, index % per_value);
            let bound = self.bound_text(bucket);
            let labels = [
                (self.dimension.key, self.label_value(value)),
                ("le", bound.as_str()),
            ];
            series.push((series_key(&format!("{}_bucket", self.name), &labels), count));
        }
        for (value, sum) in self.sums_ns.iter().enumerate() {
            let labels = [(self.dimension.key, self.label_value(value))];
            series.push((
                series_key(&format!("{}_sum_nanoseconds", self.name), &labels),
                sum,
            ));
        }
        series
    }
}

/// A set of metrics: this process's is [`METRICS`]; tests make their own.
struct Metrics {
    reads: CounterFamily,
    cache: CounterFamily,
    stale: CounterFamily,
    negative: CounterFamily,
    refusals: CounterFamily,
    vault_requests: CounterFamily,
    vault_latency: HistogramFamily,
    logins: CounterFamily,
    renewals: CounterFamily,
    rotations: CounterFamily,
    mounts: CounterFamily,
    unmounts: CounterFamily,
    units_started: CounterFamily,
    units_stopped: CounterFamily,
    leases: CounterFamily,
    /// What each unit reported last (the driver's).
    units: Mutex<BTreeMap<String, UnitCounters>>,
    /// Each series' position in [`series`](Self::series) by its key, for [`absorb_unit`].
    by_key: OnceLock<BTreeMap<String, usize>>,
}

impl Metrics {
    fn new() -> Self {
        Metrics {
            reads: CounterFamily::new(
                "libsecret_fs_reads",
                "FUSE reads that reached the driver or mount unit (the kernel's page cache answers the rest)",
                &[],
            ),
            cache: CounterFamily::new(
                "libsecret_cache_lookups",
                "Secret reads answered from memory (hit) or that needed a request to the source (miss)",
                &[CacheResult::DIMENSION],
            ),
            stale: CounterFamily::new(
                "libsecret_cache_stale_served",
                "Reads answered with a last-known value through an outage of the source (within stale_ttl)",
                &[],
            ),
            negative: CounterFamily::new(
                "libsecret_negative_cache_answers",
                "Lookups answered ENOENT from memory: a name found missing within negative_ttl, or absent from its folder's index",
                &[NegativeKind::DIMENSION],
            ),
            refusals: CounterFamily::new(
                "libsecret_rate_limit_refusals",
                "Requests to the source refused because a request budget stayed exhausted (each one a read that gave EIO)",
                &[Budget::DIMENSION, Limit::DIMENSION],
            ),
            vault_requests: CounterFamily::new(
                "libsecret_vault_requests",
                "Requests to Vault (after failing over between nodes), by method and answer",
                &[Method::DIMENSION, VaultResult::DIMENSION],
            ),
            vault_latency: HistogramFamily::new(
                "libsecret_vault_request_duration_seconds",
                "How long requests to Vault took, failover included",
                Method::DIMENSION,
                LATENCY_BOUNDS,
            ),
            logins: CounterFamily::new(
                "libsecret_vault_logins",
                "Tokens obtained: logins with the auth method (a token file read and checked), or tokens lent by the driver",
                &[LoginMethod::DIMENSION, Outcome::DIMENSION],
            ),
            renewals: CounterFamily::new(
                "libsecret_vault_token_renewals",
                "Renewals of the login token",
                &[Outcome::DIMENSION],
            ),
            rotations: CounterFamily::new(
                "libsecret_rotations",
                "Names a refresh retired: the value changed (a rotation) or the secret is gone",
                &[Change::DIMENSION],
            ),
            mounts: CounterFamily::new(
                "libsecret_mounts",
                "Filesystems mounted for volumes (the first user of a volume; later users share it)",
                &[Outcome::DIMENSION],
            ),
            unmounts: CounterFamily::new(
                "libsecret_unmounts",
                "Filesystems unmounted after their last user",
                &[Outcome::DIMENSION],
            ),
            units_started: CounterFamily::new(
                "libsecret_mount_units_started",
                "Transient systemd mount units started",
                &[Outcome::DIMENSION],
            ),
            units_stopped: CounterFamily::new(
                "libsecret_mount_units_stopped",
                "Transient systemd mount units stopped",
                &[Outcome::DIMENSION],
            ),
            leases: CounterFamily::new(
                "libsecret_lease_operations",
                "Dynamic secrets' leases issued, renewed and revoked",
                &[LeaseOp::DIMENSION, Outcome::DIMENSION],
            ),
            units: Mutex::new(BTreeMap::new()),
            by_key: OnceLock::new(),
        }
    }

    fn counters(&self) -> [&CounterFamily; 14] {
        [
            &self.reads,
            &self.cache,
            &self.stale,
            &self.negative,
            &self.refusals,
            &self.vault_requests,
            &self.logins,
            &self.renewals,
            &self.rotations,
            &self.mounts,
            &self.unmounts,
            &self.units_started,
            &self.units_stopped,
            &self.leases,
        ]
    }

    /// Every atomic with its key in a [`UnitCounters`].
    fn series(&self) -> Vec<(String, &AtomicU64)> {
        let mut series = Vec::new();
        for family in self.counters() {
            for (index, count) in family.counts.iter().enumerate() {
                series.push((family.key(index), count));
            }
        }
        series.extend(self.vault_latency.series());
        series
    }
}

/// This process's metrics.
static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process among the reports a driver gets: drawn once at start.
static PROCESS: LazyLock<u64> = LazyLock::new(|| fastrand::u64(..));

/// Encodes a [`Metrics`] for `prometheus-client`, reading every value at encode time.
#[derive(Debug)]
struct Families(&'static Metrics);

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let metrics = self.0;
        for family in metrics.counters() {
            let mut metric =
                encoder.encode_descriptor(family.name, family.help, None, MetricType::Counter)?;
            if family.dimensions.is_empty() {
                let count = family
                    .counts
                    .first()
                    .map_or(0, |c| c.load(Ordering::Relaxed));
                ConstCounter::new(count).encode(metric)?;
                continue;
            }
            for (index, count) in family.counts.iter().enumerate() {
                let labels = family.labels(index);
                ConstCounter::new(count.load(Ordering::Relaxed))
                    .encode(metric.encode_family(&labels)?)?;
            }
        }
        let histogram = &metrics.vault_latency;
        let mut metric = encoder.encode_descriptor(
            histogram.name,
            histogram.help,
            None,
            MetricType::Histogram,
        )?;
        let per_value = histogram.bounds.len() + 1;
        for value in 0..histogram.dimension.values.len() {
            let buckets: Vec<(f64, u64)> = (0..per_value)
                .map(|bucket| {
                    let bound = histogram
                        .bounds
                        .get(bucket)
                        .copied()
                        .unwrap_or(f64::INFINITY);
                    let count = histogram
                        .buckets
                        .get(value * per_value + bucket)
                        .map_or(0, |c| c.load(Ordering::Relaxed));
                    (bound, count)
                })
                .collect();
            let count = buckets.iter().map(|(_, n)| n).sum();
            let sum_ns = histogram
                .sums_ns
                .get(value)
                .map_or(0, |s| s.load(Ordering::Relaxed));
            let labels = [(histogram.dimension.key, histogram.label_value(value))];
            metric
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum_ns as f64 / 1e9, count, &buckets, None)?;
        }
        Ok(())
    }
}

/// A process's counter values as a mount unit reports them to the driver: never a secret, only counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitCounters {
    /// Which process took the snapshot (drawn at its start): a unit restarted under the same name starts again
    /// from zero and is not mistaken for the one before it.
    pub process: u64,
    /// Each non-zero series by its key (`libsecret_fs_reads_total{}`, `...{result="hit"}`); histogram buckets are
    /// counted per bucket, not cumulatively, and their sums in nanoseconds.
    pub counters: BTreeMap<String, u64>,
}

impl Metrics {
    fn encode(&'static self) -> Result<String, fmt::Error> {
        // A registry per scrape: it holds only the collector, and the values are read from the atomics anyway.
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Families(self)));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
        Ok(text)
    }

    fn snapshot(&self, process: u64) -> UnitCounters {
        UnitCounters {
            process,
            counters: self
                .series()
                .into_iter()
                .filter_map(|(key, count)| {
                    let value = count.load(Ordering::Relaxed);
                    (value > 0).then_some((key, value))
                })
                .collect(),
        }
    }

    fn absorb(&self, unit: &str, counters: UnitCounters) {
        let by_key = self.by_key.get_or_init(|| {
            self.series()
                .into_iter()
                .enumerate()
                .map(|(position, (key, _))| (key, position))
                .collect()
        });
        let atomics: Vec<&AtomicU64> = self.series_atomics();
        let mut units = self
            .units
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let empty = BTreeMap::new();
        let before = match units.get(unit) {
            Some(last) if last.process == counters.process => &last.counters,
            _ => &empty,
        };
        for (key, value) in &counters.counters {
            let Some(count) = by_key.get(key).and_then(|position| atomics.get(*position)) else {
                continue;
            };
            let increase = value.saturating_sub(before.get(key).copied().unwrap_or(0));
            if increase > 0 {
                count.fetch_add(increase, Ordering::Relaxed);
            }
        }
        units.insert(unit.to_owned(), counters);
    }

    fn forget(&self, unit: &str) {
        self.units
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(unit);
    }

    /// The atomics of [`series`](Self::series), in the same order, without building the keys.
    fn series_atomics(&self) -> Vec<&AtomicU64> {
        let mut atomics: Vec<&AtomicU64> = self
            .counters()
            .into_iter()
            .flat_map(|family| family.counts.iter())
            .collect();
        atomics.extend(self.vault_latency.buckets.iter());
        atomics.extend(self.vault_latency.sums_ns.iter());
        atomics
    }

    fn fs_read(&self) {
        self.reads.add(0, 1);
    }

    fn rate_limit_refusal(&self, budget: Budget, limit: Limit) {
        self.refusals.add(
            budget.index() * Limit::DIMENSION.values.len() + limit.index(),
            1,
        );
    }

    fn vault_request(&self, method: Method, result: VaultResult, elapsed: Duration) {
        self.vault_requests.add(
            method.index() * VaultResult::DIMENSION.values.len() + result.index(),
            1,
        );
        self.vault_latency.observe(method.index(), elapsed);
    }

    fn login(&self, method: LoginMethod, outcome: Outcome) {
        self.logins.add(
            method.index() * Outcome::DIMENSION.values.len() + outcome.index(),
            1,
        );
    }

    fn lease(&self, op: LeaseOp, outcome: Outcome) {
        self.leases.add(
            op.index() * Outcome::DIMENSION.values.len() + outcome.index(),
            1,
        );
    }
}

/// The value of one series of this process's (its [`UnitCounters`] key), for the tests of the modules that count.
/// Other tests run in parallel and count too: compare increases with `>=`.
#[cfg(test)]
pub(crate) fn current(key: &str) -> u64 {
    METRICS
        .series()
        .into_iter()
        .find(|(series, _)| series == key)
        .map_or(0, |(_, count)| count.load(Ordering::Relaxed))
}

/// This process's metrics (with what units reported, in the driver), in the Prometheus text format.
pub fn encode() -> Result<String, fmt::Error> {
    METRICS.encode()
}

/// This process's counters, for a mount unit to report to the driver.
pub fn unit_snapshot() -> UnitCounters {
    METRICS.snapshot(*PROCESS)
}

/// Adds what unit `unit` counted since its last report into this process's series. A report from another process
/// than the last one (the unit restarted) counts from zero. Keys this version does not know are left out, and a
/// value lower than the last report's adds nothing: the series never go down.
pub fn absorb_unit(unit: &str, counters: UnitCounters) {
    METRICS.absorb(unit, counters);
}

/// Forgets unit `unit` (stopped): what it counted stays in the series, and a unit of the same name counts from
/// zero.
pub fn forget_unit(unit: &str) {
    METRICS.forget(unit);
}

/// A lease revocation ended: `gone` when Vault has the lease no more (revoked now, or already gone).
pub fn lease_revoked(gone: bool) {
    lease(
        LeaseOp::Revoke,
        if gone { Outcome::Ok } else { Outcome::Failed },
    );
}

/// A FUSE read reached this process.
pub fn fs_read() {
    METRICS.fs_read();
}

/// A secret read was answered from memory (`Hit`) or needed the source (`Miss`).
pub fn cache_lookup(result: CacheResult) {
    METRICS.cache.add(result.index(), 1);
}

/// A last-known value was served through an outage.
pub fn stale_served() {
    METRICS.stale.add(0, 1);
}

/// A lookup was answered ENOENT from memory.
pub fn negative_answer(kind: NegativeKind) {
    METRICS.negative.add(kind.index(), 1);
}

/// A request budget refused a request.
pub fn rate_limit_refusal(budget: Budget, limit: Limit) {
    METRICS.rate_limit_refusal(budget, limit);
}

/// One request to Vault, answered with `result` after `elapsed`.
pub fn vault_request(method: Method, result: VaultResult, elapsed: Duration) {
    METRICS.vault_request(method, result, elapsed);
}

/// A token was obtained (or not) with `method`.
pub fn login(method: LoginMethod, outcome: Outcome) {
    METRICS.login(method, outcome);
}

/// The login token was renewed (or not).
pub fn token_renewal(outcome: Outcome) {
    METRICS.renewals.add(outcome.index(), 1);
}

/// A refresh retired a name.
pub fn rotation(change: Change) {
    METRICS.rotations.add(change.index(), 1);
}

/// A volume's filesystem was mounted (or the mount failed).
pub fn mount(outcome: Outcome) {
    METRICS.mounts.add(outcome.index(), 1);
}

/// A volume's filesystem was unmounted (or the unmount failed).
pub fn unmount(outcome: Outcome) {
    METRICS.unmounts.add(outcome.index(), 1);
}

/// A mount unit was started (or its start failed).
pub fn unit_started(outcome: Outcome) {
    METRICS.units_started.add(outcome.index(), 1);
}

/// A mount unit was stopped (or its stop failed).
pub fn unit_stopped(outcome: Outcome) {
    METRICS.units_stopped.add(outcome.index(), 1);
}

/// A lease was issued, renewed or revoked (or that failed).
pub fn lease(op: LeaseOp, outcome: Outcome) {
    METRICS.lease(op, outcome);
}

impl Outcome {
    /// `Ok` for an `Ok`, `Failed` for an `Err`.
    pub fn of<T, E>(result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(_) => Outcome::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A set of metrics of the test's own: the process's are shared by every unit test running in parallel.
    fn fresh() -> &'static Metrics {
        Box::leak(Box::new(Metrics::new()))
    }

    /// The value of one series in encoded output (`name{labels}` exactly as printed).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn value(metrics: &'static Metrics, series: &str) -> f64 {
        let text = metrics.encode().unwrap();
        sample(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    }

    #[test]
    fn every_series_exists_from_the_start_with_every_label_value() {
        let text = encode().unwrap();
        for series in [
            "libsecret_fs_reads_total",
            "libsecret_cache_lookups_total{result=\"hit\"}",
            "libsecret_cache_lookups_total{result=\"miss\"}",
            "libsecret_rate_limit_refusals_total{budget=\"process\",limit=\"rate\"}",
            "libsecret_vault_requests_total{method=\"LIST\",result=\"not_found\"}",
            "libsecret_vault_logins_total{method=\"lent\",result=\"failed\"}",
            "libsecret_lease_operations_total{op=\"revoke\",result=\"ok\"}",
            "libsecret_vault_request_duration_seconds_bucket{method=\"GET\",le=\"+Inf\"}",
            "libsecret_vault_request_duration_seconds_count{method=\"POST\"}",
        ] {
            assert!(sample(&text, series).is_some(), "{series} missing:\n{text}");
        }
        assert!(text.contains("# TYPE libsecret_vault_requests_total counter"));
        assert!(text.contains("# TYPE libsecret_vault_request_duration_seconds histogram"));
        // 14 counter families and one histogram.
        assert_eq!(text.matches("# TYPE ").count(), 15, "{text}");
    }

    #[test]
    fn counting_shows_in_the_right_series_and_nowhere_else() {
        let metrics = fresh();
        metrics.rate_limit_refusal(Budget::Volume, Limit::Rate);
        metrics.rate_limit_refusal(Budget::Volume, Limit::Rate);
        metrics.lease(LeaseOp::Renew, Outcome::Failed);
        metrics.vault_request(Method::List, VaultResult::Denied, Duration::from_millis(3));
        metrics.vault_request(Method::List, VaultResult::Ok, Duration::from_millis(30));
        metrics.fs_read();
        let text = metrics.encode().unwrap();
        let at = |series: &str| sample(&text, series).unwrap_or(f64::NAN);
        assert_eq!(at("libsecret_fs_reads_total"), 1.0);
        assert_eq!(
            at("libsecret_rate_limit_refusals_total{budget=\"volume\",limit=\"rate\"}"),
            2.0
        );
        assert_eq!(
            at("libsecret_lease_operations_total{op=\"renew\",result=\"failed\"}"),
            1.0
        );
        assert_eq!(
            at("libsecret_vault_requests_total{method=\"LIST\",result=\"denied\"}"),
            1.0
        );
        assert_eq!(
            at("libsecret_vault_requests_total{method=\"LIST\",result=\"ok\"}"),
            1.0
        );
        // Everything else is still 0 (the 6 samples above, and the LIST latency checked below).
        let non_zero: Vec<&str> = text
            .lines()
            .filter(|line| {
                !line.starts_with('#')
                    && line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) != Some(0.0)
            })
            .filter(|line| !line.contains("method=\"LIST\""))
            .collect();
        assert_eq!(non_zero.len(), 3, "{non_zero:#?}");
        // 3 ms is in the 5 ms bucket and above; 30 ms only from the 50 ms bucket (buckets are cumulative).
        let bucket = |le: &str| {
            at(&format!(
                "libsecret_vault_request_duration_seconds_bucket{{method=\"LIST\",le=\"{le}\"}}"
            ))
        };
        assert_eq!(bucket("0.0025"), 0.0);
        assert_eq!(bucket("0.005"), 1.0);
        assert_eq!(bucket("0.025"), 1.0);
        assert_eq!(bucket("0.05"), 2.0);
        assert_eq!(bucket("+Inf"), 2.0);
        assert_eq!(
            at("libsecret_vault_request_duration_seconds_count{method=\"LIST\"}"),
            2.0
        );
        let sum = at("libsecret_vault_request_duration_seconds_sum{method=\"LIST\"}");
        assert!((sum - 0.033).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn a_units_counters_are_added_as_increases_and_never_go_down() {
        let metrics = fresh();
        let series = "libsecret_mount_units_stopped_total{result=\"failed\"}";
        let read = || value(metrics, series);
        let report = |process: u64, value: u64| UnitCounters {
            process,
            counters: BTreeMap::from([
                (series.to_owned(), value),
                ("libsecret_from_a_newer_version_total{}".to_owned(), 7),
            ]),
        };
        metrics.units_stopped.add(Outcome::Failed.index(), 1);
        assert_eq!(read(), 1.0, "the driver's own count");
        metrics.absorb("unit-a", report(1, 5));
        assert_eq!(read(), 6.0);
        metrics.absorb("unit-a", report(1, 8));
        assert_eq!(read(), 9.0, "only the increase is added");
        metrics.absorb("unit-b", report(2, 1));
        assert_eq!(read(), 10.0, "units are summed");
        metrics.absorb("unit-a", report(1, 8));
        assert_eq!(read(), 10.0, "the same report again adds nothing");
        metrics.absorb("unit-a", report(3, 2));
        assert_eq!(read(), 12.0, "a restarted unit counts from zero");
        metrics.forget("unit-a");
        assert_eq!(read(), 12.0, "a stopped unit's counts stay");
        metrics.absorb("unit-a", report(3, 2));
        assert_eq!(read(), 14.0, "after forget_unit, a unit counts from zero");
        metrics.absorb("unit-b", report(2, 0));
        assert_eq!(read(), 14.0, "a lower value never takes counts away");
        assert_eq!(
            value(
                metrics,
                "libsecret_mount_units_stopped_total{result=\"ok\"}"
            ),
            0.0,
            "nothing else moved"
        );
    }

    #[test]
    fn a_snapshot_carries_the_counts_and_a_driver_absorbs_all_of_it() {
        let unit = fresh();
        unit.units_stopped.add(Outcome::Ok.index(), 1);
        unit.vault_request(Method::Delete, VaultResult::Ok, Duration::from_millis(2));
        unit.fs_read();
        let snapshot = unit.snapshot(42);
        assert_eq!(
            snapshot.counters,
            BTreeMap::from([
                ("libsecret_fs_reads_total{}".to_owned(), 1),
                (
                    "libsecret_mount_units_stopped_total{result=\"ok\"}".to_owned(),
                    1
                ),
                (
                    "libsecret_vault_requests_total{method=\"DELETE\",result=\"ok\"}".to_owned(),
                    1
                ),
                (
                    "libsecret_vault_request_duration_seconds_bucket{method=\"DELETE\",le=\"0.0025\"}"
                        .to_owned(),
                    1
                ),
                (
                    "libsecret_vault_request_duration_seconds_sum_nanoseconds{method=\"DELETE\"}"
                        .to_owned(),
                    2_000_000
                ),
            ]),
            "only non-zero series"
        );
        let json = serde_json::to_string(&snapshot).unwrap();
        let received: UnitCounters = serde_json::from_str(&json).unwrap();
        assert_eq!(received, snapshot);
        // The driver's output after absorbing is the unit's own output.
        let driver = fresh();
        driver.absorb("unit", received);
        assert_eq!(driver.encode().unwrap(), unit.encode().unwrap());
        // The process's own snapshot names this process.
        assert_eq!(unit_snapshot().process, *PROCESS);
    }

    #[test]
    fn a_units_histogram_is_added_bucket_by_bucket() {
        let metrics = fresh();
        metrics.vault_request(Method::Put, VaultResult::Ok, Duration::from_millis(100));
        metrics.absorb(
            "unit-h",
            UnitCounters {
                process: 9,
                counters: BTreeMap::from([
                    (
                        "libsecret_vault_request_duration_seconds_bucket{method=\"PUT\",le=\"0.25\"}"
                            .to_owned(),
                        3,
                    ),
                    (
                        "libsecret_vault_request_duration_seconds_sum_nanoseconds{method=\"PUT\"}"
                            .to_owned(),
                        600_000_000,
                    ),
                ]),
            },
        );
        let text = metrics.encode().unwrap();
        let at = |series: &str| sample(&text, series).unwrap();
        assert_eq!(
            at("libsecret_vault_request_duration_seconds_count{method=\"PUT\"}"),
            4.0
        );
        assert_eq!(
            at("libsecret_vault_request_duration_seconds_bucket{method=\"PUT\",le=\"0.1\"}"),
            1.0
        );
        assert_eq!(
            at("libsecret_vault_request_duration_seconds_bucket{method=\"PUT\",le=\"0.5\"}"),
            4.0
        );
        let sum = at("libsecret_vault_request_duration_seconds_sum{method=\"PUT\"}");
        assert!((sum - 0.7).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn labels_are_decoded_in_the_order_they_are_declared() {
        let family = &METRICS.vault_requests;
        let index = Method::Post.index() * VaultResult::DIMENSION.values.len()
            + VaultResult::Unavailable.index();
        assert_eq!(
            family.labels(index),
            vec![("method", "POST"), ("result", "unavailable")]
        );
        assert_eq!(
            family.key(index),
            "libsecret_vault_requests_total{method=\"POST\",result=\"unavailable\"}"
        );
        assert_eq!(METRICS.series().len(), METRICS.series_atomics().len());
    }
}
