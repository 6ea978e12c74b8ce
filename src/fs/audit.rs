//! The audit trail: who read which secret, and which lookups were refused.
//!
//! Each event names the volume, the key (a path, never a value), the result, the requesting pid and uid, and the
//! container, resolved from the pid's cgroup. Events are rate-limited per (container, key, result): the first is
//! logged, repeats within the window are counted and reported with the next line, so a read loop cannot flood the
//! journal. At most `MAX_WINDOWS` such windows are remembered (least recently used dropped first). A container
//! probing distinct names makes distinct events: past `REFUSAL_BURST` refused, missing or unavailable lines per
//! volume per `REFUSAL_WINDOW`, the rest are counted and reported in one "N similar lines suppressed" line. Reads
//! of secrets are never suppressed that way.
//!
//! Which accesses reach the driver: the kernel caches names and pages, so by default a key is audited when it is
//! first looked up or read through a mount (and again after each rotation). With `audit_every_open`, every open
//! reaches the driver and is audited, at the cost of one round trip per open.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

/// The process that made a filesystem request, as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester {
    pub pid: u32,
    pub uid: u32,
}

/// What happened to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The secret was opened or read.
    Read,
    /// Vault (or an access rule) refused.
    Denied,
    /// No such secret.
    NotFound,
    /// Vault could not be asked.
    Unavailable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Read => "read",
            Outcome::Denied => "denied",
            Outcome::NotFound => "not-found",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// One audit line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub volume: String,
    /// The secret's path and view (`secret/app-1/db-password#user`); never its value.
    pub key: String,
    pub outcome: Outcome,
    pub pid: u32,
    pub uid: u32,
    /// The container's full ID, or `None` for a process outside any container.
    pub container: Option<String>,
    /// How many identical events were suppressed since the last line for this (container, key, result).
    pub repeated: u64,
    /// Why a lookup was refused, when the driver refused it: the access rule, or the engine that is not KV.
    pub reason: Option<String>,
}

/// Lines of refused, missing or unavailable lookups left out of the journal (rate limit), reported in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    pub volume: String,
    /// How many lines were left out.
    pub lines: u64,
    /// Over how long (from the first line of the window to this report).
    pub over: Duration,
}

/// Where audit lines go.
pub trait AuditSink: Send + Sync {
    fn emit(&self, record: &AuditRecord);
    /// Reports lines left out by the rate limit.
    fn emit_suppressed(&self, summary: &Suppressed);
}

/// Audit lines as journald entries (`AUDIT_*` fields), or stderr lines in the foreground.
#[derive(Debug)]
pub struct LogSink;

impl AuditSink for LogSink {
    fn emit(&self, record: &AuditRecord) {
        tracing::info!(
            target: "docker_volume_libsecret::audit",
            audit_volume = %record.volume,
            audit_key = %record.key,
            audit_result = %record.outcome.as_str(),
            audit_pid = record.pid,
            audit_uid = record.uid,
            audit_container = %record.container.as_deref().unwrap_or("-"),
            audit_repeated = record.repeated,
            audit_reason = record.reason.as_deref().unwrap_or("-"),
            "secret access"
        );
    }

    fn emit_suppressed(&self, summary: &Suppressed) {
        tracing::info!(
            target: "docker_volume_libsecret::audit",
            audit_volume = %summary.volume,
            audit_suppressed = summary.lines,
            "{} similar lines suppressed in the last {} s",
            summary.lines,
            summary.over.as_secs()
        );
    }
}

/// Finds the container a process runs in.
pub trait ContainerResolver: Send + Sync {
    fn container_of(&self, pid: u32) -> Option<String>;
}

/// Reads `/proc/<pid>/cgroup`.
#[derive(Debug)]
pub struct ProcCgroups;

impl ContainerResolver for ProcCgroups {
    fn container_of(&self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        container_id_from_cgroup(&text)
    }
}

/// The container ID in a `/proc/<pid>/cgroup` text: a 64-hex-digit cgroup path segment, as Docker (`/docker/<id>`
/// with the cgroupfs driver, `docker-<id>.scope` with the systemd driver), containerd (`cri-containerd-<id>.scope`),
/// CRI-O (`crio-<id>.scope`) and Podman (`libpod-<id>.scope`) name them.
///
/// The outermost one (the first from the root) wins: a container allowed to write its cgroup can create sub-cgroups
/// named after any other container's ID and move into them, but it cannot leave the cgroup its runtime made for it.
pub fn container_id_from_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .find_map(|path| path.split('/').find_map(container_id_of_segment))
}

/// The container ID one cgroup path segment names, if it names one.
fn container_id_of_segment(segment: &str) -> Option<String> {
    let id = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = ["docker-", "cri-containerd-", "crio-", "libpod-"]
        .iter()
        .find_map(|prefix| id.strip_prefix(prefix))
        .unwrap_or(id);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

type EventKey = (Option<String>, String, Outcome);

/// Most distinct (container, key, result) windows remembered; the least recently used are dropped first, and the
/// repeats they counted are reported in the next "suppressed" line.
pub const MAX_WINDOWS: usize = 4096;
/// At most this many refused, missing or unavailable lines per volume per `REFUSAL_WINDOW`.
pub const REFUSAL_BURST: u64 = 50;
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(10);

/// The lines of refusals written in the current window, and those left out.
struct RefusalLines {
    window_start: Instant,
    written: u64,
    suppressed: u64,
}

/// One volume's audit trail.
pub struct Auditor {
    volume: String,
    window: Duration,
    resolver: Box<dyn ContainerResolver>,
    sink: Box<dyn AuditSink>,
    /// Per event key: when its window started, and how many events it suppressed.
    windows: Mutex<LruCache<EventKey, (Instant, u64)>>,
    refusals: Mutex<RefusalLines>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("volume", &self.volume)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Auditor {
    pub fn new(
        volume: &str,
        window: Duration,
        resolver: Box<dyn ContainerResolver>,
        sink: Box<dyn AuditSink>,
    ) -> Self {
        Auditor {
            volume: volume.to_owned(),
            window,
            resolver,
            sink,
            windows: Mutex::new(crate::source::cache::bounded_lru(MAX_WINDOWS)),
            refusals: Mutex::new(RefusalLines {
                window_start: Instant::now(),
                written: 0,
                suppressed: 0,
            }),
        }
    }

    /// The journal-backed auditor of a mounted volume.
    pub fn for_volume(volume: &str, window: Duration) -> Self {
        Auditor::new(volume, window, Box::new(ProcCgroups), Box::new(LogSink))
    }

    fn refusals_lock(&self) -> std::sync::MutexGuard<'_, RefusalLines> {
        self.refusals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether one more refused, missing or unavailable line may be written at `now`; reports the lines left out
    /// of the last window first.
    fn may_write_refusal(&self, now: Instant) -> bool {
        let mut lines = self.refusals_lock();
        let elapsed = now.saturating_duration_since(lines.window_start);
        if elapsed >= REFUSAL_WINDOW {
            let suppressed = std::mem::take(&mut lines.suppressed);
            lines.window_start = now;
            lines.written = 0;
            if suppressed > 0 {
                self.sink.emit_suppressed(&Suppressed {
                    volume: self.volume.clone(),
                    lines: suppressed,
                    over: elapsed,
                });
            }
        }
        if lines.written < REFUSAL_BURST {
            lines.written += 1;
            true
        } else {
            lines.suppressed += 1;
            false
        }
    }

    /// Windows remembered (at most [`MAX_WINDOWS`]).
    pub fn windows(&self) -> usize {
        self.windows.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn record(&self, key: &str, outcome: Outcome, requester: Requester) {
        self.record_at(key, outcome, requester, Instant::now());
    }

    /// [`record`](Self::record) with the reason the driver refused the lookup (the rule that denied it).
    pub fn record_because(
        &self,
        key: &str,
        outcome: Outcome,
        reason: Option<&str>,
        requester: Requester,
    ) {
        self.record_detailed(key, outcome, reason, requester, Instant::now());
    }

    fn record_at(&self, key: &str, outcome: Outcome, requester: Requester, now: Instant) {
        self.record_detailed(key, outcome, None, requester, now);
    }

    fn record_detailed(
        &self,
        key: &str,
        outcome: Outcome,
        reason: Option<&str>,
        requester: Requester,
        now: Instant,
    ) {
        let container = self.resolver.container_of(requester.pid);
        let event = (container.clone(), key.to_owned(), outcome);
        let repeated = {
            let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            match windows.get_mut(&event) {
                Some((started, suppressed)) if now.duration_since(*started) < self.window => {
                    *suppressed += 1;
                    return;
                }
                Some((started, suppressed)) => {
                    let repeated = *suppressed;
                    *started = now;
                    *suppressed = 0;
                    repeated
                }
                None => {
                    if let Some((_, (_, dropped))) = windows.push(event, (now, 0)) {
                        // A window pushed out by newer ones: its repeats are reported as suppressed lines.
                        self.refusals_lock().suppressed += dropped;
                    }
                    0
                }
            }
        };
        if outcome != Outcome::Read && !self.may_write_refusal(now) {
            return;
        }
        self.sink.emit(&AuditRecord {
            volume: self.volume.clone(),
            key: key.to_owned(),
            outcome,
            pid: requester.pid,
            uid: requester.uid,
            container,
            repeated,
            reason: reason.map(str::to_owned),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FixedContainers, RecordingAuditSink};
    use std::collections::HashMap;

    const ID_A: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const ID_B: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    #[test]
    fn container_ids_come_from_every_common_cgroup_layout() {
        for text in [
            format!("0::/docker/{ID_A}\n"),
            format!("0::/system.slice/docker-{ID_A}.scope\n"),
            format!("12:pids:/docker/{ID_A}\n11:memory:/docker/{ID_A}\n"),
            format!("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID_A}.scope\n"),
            format!("0::/kubepods.slice/kubepods-pod1.slice/crio-{ID_A}.scope\n"),
            format!("0::/machine.slice/libpod-{ID_A}.scope/container\n"),
        ] {
            assert_eq!(
                container_id_from_cgroup(&text).as_deref(),
                Some(ID_A),
                "{text}"
            );
        }
        for text in [
            "0::/user.slice/user-0.slice/session-1.scope\n",
            "0::/system.slice/docker.service\n",
            "0::/docker/not-hex\n",
            "",
            "garbage",
        ] {
            assert_eq!(container_id_from_cgroup(text), None, "{text}");
        }
    }

    /// A container that can write its cgroup makes a sub-cgroup named after another container (ID_B) and moves into
    /// it: its reads are still blamed on itself (ID_A), in every layout.
    #[test]
    fn a_sub_cgroup_named_after_another_container_does_not_move_the_blame() {
        for text in [
            format!("0::/docker/{ID_A}/{ID_B}\n"),
            format!("0::/docker/{ID_A}/docker-{ID_B}.scope\n"),
            format!("0::/system.slice/docker-{ID_A}.scope/docker-{ID_B}.scope\n"),
            format!("0::/system.slice/docker-{ID_A}.scope/{ID_B}\n"),
            format!("12:pids:/docker/{ID_A}/{ID_B}\n11:memory:/docker/{ID_A}\n"),
            format!(
                "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID_A}.scope/cri-containerd-{ID_B}.scope\n"
            ),
            format!("0::/kubepods.slice/kubepods-pod1.slice/crio-{ID_A}.scope/crio-{ID_B}.scope\n"),
            format!("0::/machine.slice/libpod-{ID_A}.scope/container/libpod-{ID_B}.scope\n"),
        ] {
            assert_eq!(
                container_id_from_cgroup(&text).as_deref(),
                Some(ID_A),
                "{text}"
            );
        }
    }

    #[test]
    fn events_are_rate_limited_per_container_key_and_result() {
        let sink = RecordingAuditSink::default();
        let resolver = FixedContainers(HashMap::from([
            (10, ID_A.to_owned()),
            (20, ID_B.to_owned()),
        ]));
        let auditor = Auditor::new(
            "secret/app",
            Duration::from_secs(60),
            Box::new(resolver),
            Box::new(sink.clone()),
        );
        let a = Requester { pid: 10, uid: 1000 };
        let b = Requester { pid: 20, uid: 0 };
        let host = Requester { pid: 30, uid: 0 };
        let start = Instant::now();
        for i in 0..100 {
            auditor.record_at(
                "secret/app/db",
                Outcome::Read,
                a,
                start + Duration::from_millis(i),
            );
        }
        auditor.record_at("secret/app/db", Outcome::Read, b, start);
        auditor.record_at("secret/app/db", Outcome::Denied, a, start);
        auditor.record_at("secret/app/other", Outcome::Read, a, start);
        auditor.record_at("secret/app/db", Outcome::Read, host, start);
        auditor.record_at(
            "secret/app/db",
            Outcome::Read,
            a,
            start + Duration::from_secs(61),
        );
        let records = sink.records();
        let summary: Vec<(Option<&str>, &str, Outcome, u64)> = records
            .iter()
            .map(|r| {
                (
                    r.container.as_deref(),
                    r.key.as_str(),
                    r.outcome,
                    r.repeated,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (Some(ID_A), "secret/app/db", Outcome::Read, 0),
                (Some(ID_B), "secret/app/db", Outcome::Read, 0),
                (Some(ID_A), "secret/app/db", Outcome::Denied, 0),
                (Some(ID_A), "secret/app/other", Outcome::Read, 0),
                (None, "secret/app/db", Outcome::Read, 0),
                (Some(ID_A), "secret/app/db", Outcome::Read, 99),
            ]
        );
        assert_eq!(
            (records[0].pid, records[0].uid, records[0].volume.as_str()),
            (10, 1000, "secret/app")
        );
    }

    /// A container probing 20,000 distinct names: at most REFUSAL_BURST lines per window and one line counting the
    /// rest, a bounded map, and reads still audited.
    #[test]
    fn a_flood_of_distinct_refusals_is_a_few_lines_with_a_count_and_a_bounded_map() {
        let sink = RecordingAuditSink::default();
        let auditor = Auditor::new(
            "secret/app",
            Duration::from_secs(60),
            Box::new(FixedContainers(HashMap::from([(10, ID_A.to_owned())]))),
            Box::new(sink.clone()),
        );
        let a = Requester { pid: 10, uid: 0 };
        let start = Instant::now();
        for i in 0..20_000u64 {
            auditor.record_at(
                &format!("secret/app/probe-{i}"),
                Outcome::NotFound,
                a,
                start + Duration::from_micros(i),
            );
        }
        assert_eq!(sink.records().len() as u64, REFUSAL_BURST);
        assert!(auditor.windows() <= MAX_WINDOWS, "{}", auditor.windows());
        // A read in the same window is still written.
        auditor.record_at(
            "secret/app/db",
            Outcome::Read,
            a,
            start + Duration::from_secs(1),
        );
        assert_eq!(sink.records().len() as u64, REFUSAL_BURST + 1);
        assert!(
            sink.suppressed().is_empty(),
            "reported when the window ends"
        );
        // The next refusal after the window reports the count first.
        auditor.record_at(
            "secret/app/probe-late",
            Outcome::NotFound,
            a,
            start + REFUSAL_WINDOW + Duration::from_secs(1),
        );
        let suppressed = sink.suppressed();
        assert_eq!(suppressed.len(), 1);
        assert_eq!(suppressed[0].lines, 20_000 - REFUSAL_BURST);
        assert_eq!(suppressed[0].volume, "secret/app");
        assert_eq!(sink.records().len() as u64, REFUSAL_BURST + 2);
    }
}
