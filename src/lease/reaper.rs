//! The reaper: revokes the leases of holders that are gone.
//!
//! A lease keeper revokes its leases when its last holder unmounts, but a crash, a kill or a reboot ends the
//! process first, and its leases would stay valid in Vault until their max TTL. The journal names the process
//! behind every entry; [`reap`] revokes the current and retiring leases of each entry whose process no longer runs,
//! then forgets the entry. Through a Vault outage an entry keeps what is still to revoke for the next pass.
//!
//! A new keeper of the same volume and holder (a per-volume lease, a container mounted again under its mount ID)
//! writes its entry to the same file, replacing the dead holder's: run a pass at start, before any keeper starts.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::journal::{JournalEntry, LeaseJournal, RetiringLease};
use super::LeaseRef;
use crate::source::{SecretSource, SourceError};

/// Which source revokes the leases of `volume` issued in a namespace (`None`: `vault.namespace` itself): the
/// credentials of the rule that covers the volume's path.
pub trait ReapSources: Send + Sync {
    fn source_for(
        &self,
        namespace: Option<&str>,
        volume: &str,
    ) -> Result<Arc<dyn SecretSource>, SourceError>;
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Leases revoked, or found already gone.
    pub revoked: usize,
    /// Entries kept for the next pass: Vault could not be asked to revoke all their leases.
    pub kept: usize,
    /// Leases given up: the source refused to revoke them, or there is no source for their namespace. They stay
    /// valid in Vault until their TTL ends.
    pub failed: usize,
}

/// The shortest period [`spawn_periodic`] runs at, so a zero period cannot spin.
const MIN_PERIOD: Duration = Duration::from_secs(1);

/// Revokes the leases of every journal entry whose holder process is gone and removes the entry; entries of live
/// holders are left alone. A journal that cannot be read is warned about and reaped at the next pass.
pub async fn reap(journal: &LeaseJournal, sources: &dyn ReapSources) -> ReapReport {
    let mut report = ReapReport::default();
    let entries = match journal.load_all() {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!(%error, "could not read the lease journal; leases of gone holders are revoked at the next pass");
            return report;
        }
    };
    // One outage costs one timeout per namespace and pass, not one per entry.
    let mut unavailable: HashSet<Option<String>> = HashSet::new();
    for entry in entries {
        if entry.holder_is_alive() {
            continue;
        }
        reap_entry(journal, sources, entry, &mut unavailable, &mut report).await;
    }
    report
}

/// What became of one lease.
enum Outcome {
    /// Revoked, found gone, or given up: it leaves the journal.
    Done,
    /// Vault could not be asked: it stays for the next pass.
    Later(SourceError),
}

async fn reap_entry(
    journal: &LeaseJournal,
    sources: &dyn ReapSources,
    entry: JournalEntry,
    unavailable: &mut HashSet<Option<String>>,
    report: &mut ReapReport,
) {
    let mut current = Some(entry.lease.clone()).filter(LeaseRef::needs_revoking);
    let mut pending: VecDeque<RetiringLease> = entry
        .retiring
        .iter()
        .filter(|r| r.lease.needs_revoking())
        .cloned()
        .collect();
    if current.is_none() && pending.is_empty() {
        forget(journal, &entry);
        return;
    }
    if unavailable.contains(&entry.namespace) {
        // Warned about once for the namespace in this pass.
        tracing::debug!(volume = %entry.volume, container = %entry.holder, "orphaned leases kept: Vault did not answer in this pass");
        keep(journal, &entry, current, pending.into(), report);
        return;
    }
    let source = match sources.source_for(entry.namespace.as_deref(), &entry.volume) {
        Ok(source) => source,
        Err(error @ SourceError::Unavailable(_)) => {
            warn_later(&entry, &error);
            unavailable.insert(entry.namespace.clone());
            keep(journal, &entry, current, pending.into(), report);
            return;
        }
        Err(error) => {
            let leases = usize::from(current.is_some()) + pending.len();
            tracing::warn!(
                volume = %entry.volume,
                container = %entry.holder,
                %error,
                "no source revokes the {leases} orphaned lease(s) of {}; they end at their TTL in Vault",
                entry.volume
            );
            report.failed += leases;
            forget(journal, &entry);
            return;
        }
    };
    let mut outage = None;
    while let Some(old) = pending.front() {
        match revoke(&entry, &source, &old.lease, report).await {
            Outcome::Done => {
                pending.pop_front();
            }
            Outcome::Later(error) => {
                outage = Some(error);
                break;
            }
        }
    }
    if outage.is_none() {
        if let Some(lease) = &current {
            match revoke(&entry, &source, lease, report).await {
                Outcome::Done => current = None,
                Outcome::Later(error) => outage = Some(error),
            }
        }
    }
    match outage {
        None => forget(journal, &entry),
        Some(error) => {
            warn_later(&entry, &error);
            unavailable.insert(entry.namespace.clone());
            keep(journal, &entry, current, pending.into(), report);
        }
    }
}

async fn revoke(
    entry: &JournalEntry,
    source: &Arc<dyn SecretSource>,
    lease: &LeaseRef,
    report: &mut ReapReport,
) -> Outcome {
    let revoked = source.revoke_lease(lease).await;
    crate::metrics::lease_revoked(matches!(revoked, Ok(()) | Err(SourceError::NotFound)));
    match revoked {
        // Gone already (revoked elsewhere, expired): nothing is left to revoke.
        Ok(()) | Err(SourceError::NotFound) => {
            report.revoked += 1;
            tracing::info!(
                target: "docker_volume_libsecret::audit",
                audit_volume = %entry.volume,
                audit_container = %entry.holder,
                audit_lease = %lease.name(),
                audit_result = "lease-revoked-orphan",
                "lease of {} revoked for {}, whose process is gone",
                entry.volume,
                entry.holder
            );
            Outcome::Done
        }
        Err(error @ SourceError::Unavailable(_)) => Outcome::Later(error),
        Err(error) => {
            report.failed += 1;
            tracing::warn!(
                volume = %entry.volume,
                container = %entry.holder,
                lease = %lease.name(),
                %error,
                "could not revoke an orphaned lease of {}; it ends at its TTL in Vault",
                entry.volume
            );
            Outcome::Done
        }
    }
}

fn warn_later(entry: &JournalEntry, error: &SourceError) {
    tracing::warn!(
        volume = %entry.volume,
        container = %entry.holder,
        %error,
        "could not revoke the orphaned leases of {} now; the next pass retries",
        entry.volume
    );
}

/// Whether the journal still holds `entry` as read: a new holder of the same volume and mount ID may have replaced
/// it since, and its entry is not the reaper's to change.
fn still_ours(journal: &LeaseJournal, entry: &JournalEntry) -> bool {
    match journal.load(&entry.volume, &entry.holder) {
        Ok(Some(now)) => now.process == entry.process,
        Ok(None) => false,
        Err(error) => {
            tracing::warn!(volume = %entry.volume, %error, "could not read the lease journal");
            false
        }
    }
}

/// Rewrites `entry` with only the leases still to revoke.
fn keep(
    journal: &LeaseJournal,
    entry: &JournalEntry,
    current: Option<LeaseRef>,
    retiring: Vec<RetiringLease>,
    report: &mut ReapReport,
) {
    report.kept += 1;
    let kept = JournalEntry {
        // A revoked current lease stays as its path only, which needs nothing more.
        lease: current.unwrap_or_else(|| LeaseRef {
            path: entry.lease.path.clone(),
            ..LeaseRef::default()
        }),
        retiring,
        ..entry.clone()
    };
    if kept == *entry || !still_ours(journal, entry) {
        return;
    }
    if let Err(error) = journal.save(&kept) {
        // The old entry stays: the next pass revokes its leases again, and Vault answers for those already gone.
        tracing::warn!(volume = %entry.volume, %error, "could not update the lease journal");
    }
}

fn forget(journal: &LeaseJournal, entry: &JournalEntry) {
    if !still_ours(journal, entry) {
        return;
    }
    if let Err(error) = journal.remove(&entry.volume, &entry.holder) {
        tracing::warn!(volume = %entry.volume, %error, "could not clear the lease journal");
    }
}

/// Asks the periodic reaper for a pass now: a lease holder just died (a mount unit found dead and stopped), so its
/// leases need not wait for the next period. Clones share the reaper.
#[derive(Debug, Clone, Default)]
pub struct ReapTrigger(Arc<tokio::sync::Notify>);

impl ReapTrigger {
    /// A pass soon (requests while a pass runs make one more pass, not one each).
    pub fn reap_soon(&self) {
        self.0.notify_one();
    }
}

/// Reaps at once, then every `every` (at least a second) and whenever `trigger` asks, until the handle is aborted.
pub fn spawn_periodic(
    journal: LeaseJournal,
    sources: Arc<dyn ReapSources>,
    every: Duration,
    trigger: ReapTrigger,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every.max(MIN_PERIOD));
        // A pass slowed by an outage is not followed by a burst of passes.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = trigger.0.notified() => {}
            }
            let report = reap(&journal, sources.as_ref()).await;
            if report != ReapReport::default() {
                tracing::info!(
                    revoked = report.revoked,
                    kept = report.kept,
                    failed = report.failed,
                    "orphaned leases: {} revoked, {} entries kept for the next pass, {} given up",
                    report.revoked,
                    report.kept,
                    report.failed
                );
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::journal::HolderProcess;
    use crate::testing::FakeEngine;
    use std::collections::BTreeMap;

    /// One fake engine per namespace; a namespace without one is refused, as a namespace no rule names.
    struct Engines(BTreeMap<Option<String>, Arc<FakeEngine>>);

    impl ReapSources for Engines {
        fn source_for(
            &self,
            namespace: Option<&str>,
            _volume: &str,
        ) -> Result<Arc<dyn SecretSource>, SourceError> {
            match self.0.get(&namespace.map(str::to_owned)) {
                Some(engine) => Ok(engine.clone()),
                None => Err(SourceError::Refused("no rule names this namespace".into())),
            }
        }
    }

    fn engine() -> Arc<FakeEngine> {
        Arc::new(FakeEngine::new(
            Duration::from_secs(60),
            Duration::from_secs(3600),
        ))
    }

    fn sources(engine: &Arc<FakeEngine>) -> Engines {
        Engines(BTreeMap::from([(None, engine.clone())]))
    }

    fn lease(id: &str) -> LeaseRef {
        LeaseRef {
            path: "database/creds/app".into(),
            lease_id: id.into(),
            serial: None,
            owner_accessor: None,
        }
    }

    /// A process of another boot: gone, whatever runs under its pid now.
    fn gone() -> HolderProcess {
        HolderProcess {
            boot_id: "another-boot".into(),
            ..HolderProcess::current()
        }
    }

    /// A process that ran in this boot and exited.
    fn exited() -> HolderProcess {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        HolderProcess {
            pid,
            ..HolderProcess::current()
        }
    }

    fn entry(
        holder: &str,
        process: HolderProcess,
        current: &str,
        retiring: &[&str],
    ) -> JournalEntry {
        JournalEntry {
            volume: "database/creds/app".into(),
            holder: holder.into(),
            namespace: None,
            lease: lease(current),
            issued_at: 1,
            expires_at: 2,
            process,
            state: "serving".into(),
            retiring: retiring
                .iter()
                .map(|id| RetiringLease {
                    lease: lease(id),
                    revoke_at: 3,
                })
                .collect(),
        }
    }

    fn journal() -> (tempfile::TempDir, LeaseJournal) {
        let dir = tempfile::tempdir().unwrap();
        let journal = LeaseJournal::open(dir.path()).unwrap();
        (dir, journal)
    }

    #[tokio::test]
    async fn a_gone_holders_leases_are_revoked_retiring_ones_too_and_its_entry_removed() {
        let (_dir, journal) = journal();
        let engine = engine();
        journal
            .save(&entry("c1", gone(), "lease-1", &["lease-0", "lease-00"]))
            .unwrap();
        journal
            .save(&entry("c2", exited(), "lease-2", &[]))
            .unwrap();
        let report = reap(&journal, &sources(&engine)).await;
        assert_eq!(
            report,
            ReapReport {
                revoked: 4,
                kept: 0,
                failed: 0
            }
        );
        let mut revoked = engine.revoked();
        revoked.sort();
        assert_eq!(revoked, ["lease-0", "lease-00", "lease-1", "lease-2"]);
        assert_eq!(journal.load_all().unwrap(), vec![]);
        // Nothing is left for a second pass.
        assert_eq!(
            reap(&journal, &sources(&engine)).await,
            ReapReport::default()
        );
        assert_eq!(engine.revoked().len(), 4);
    }

    #[tokio::test]
    async fn a_live_holders_entry_is_left_untouched() {
        let (dir, journal) = journal();
        let engine = engine();
        let live = entry("c1", HolderProcess::current(), "lease-1", &["lease-0"]);
        journal.save(&live).unwrap();
        let file = std::fs::read_dir(dir.path().join("leases"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let before = std::fs::read(&file).unwrap();
        assert_eq!(
            reap(&journal, &sources(&engine)).await,
            ReapReport::default()
        );
        assert!(engine.revoked().is_empty());
        assert_eq!(std::fs::read(&file).unwrap(), before);
        assert_eq!(journal.load_all().unwrap(), vec![live]);
    }

    #[tokio::test]
    async fn through_an_outage_the_entry_is_kept_and_a_later_pass_revokes_it() {
        let (_dir, journal) = journal();
        let engine = engine();
        let dead = entry("c1", gone(), "lease-1", &["lease-0"]);
        journal.save(&dead).unwrap();
        journal.save(&entry("c2", gone(), "lease-2", &[])).unwrap();
        engine.set_down(true);
        let report = reap(&journal, &sources(&engine)).await;
        assert_eq!(
            report,
            ReapReport {
                revoked: 0,
                kept: 2,
                failed: 0
            }
        );
        assert_eq!(
            journal.load("database/creds/app", "c1").unwrap(),
            Some(dead)
        );
        engine.set_down(false);
        let report = reap(&journal, &sources(&engine)).await;
        assert_eq!(
            report,
            ReapReport {
                revoked: 3,
                kept: 0,
                failed: 0
            }
        );
        assert_eq!(journal.load_all().unwrap(), vec![]);
    }

    #[tokio::test]
    async fn an_outage_midway_keeps_only_the_leases_still_to_revoke() {
        let (_dir, journal) = journal();
        let engine = engine();
        let dead = entry("c1", gone(), "lease-1", &["lease-0"]);
        journal.save(&dead).unwrap();
        // The retiring lease goes first; then Vault stops answering.
        struct FlakySources(Arc<FakeEngine>);
        impl ReapSources for FlakySources {
            fn source_for(
                &self,
                _: Option<&str>,
                _: &str,
            ) -> Result<Arc<dyn SecretSource>, SourceError> {
                Ok(Arc::new(Flaky(self.0.clone())))
            }
        }
        struct Flaky(Arc<FakeEngine>);
        #[async_trait::async_trait]
        impl SecretSource for Flaky {
            async fn read(
                &self,
                _: &crate::names::VaultPath,
            ) -> Result<crate::source::Secret, SourceError> {
                Err(SourceError::NotFound)
            }
            async fn is_folder(&self, _: &crate::names::VaultPath) -> Result<bool, SourceError> {
                Ok(false)
            }
            async fn revoke_lease(&self, lease: &LeaseRef) -> Result<(), SourceError> {
                let result = self.0.revoke_lease(lease).await;
                self.0.set_down(true);
                result
            }
        }
        let report = reap(&journal, &FlakySources(engine.clone())).await;
        assert_eq!(
            report,
            ReapReport {
                revoked: 1,
                kept: 1,
                failed: 0
            }
        );
        assert_eq!(engine.revoked(), ["lease-0"]);
        let kept = journal.load("database/creds/app", "c1").unwrap().unwrap();
        assert_eq!(kept.lease, dead.lease);
        assert!(kept.retiring.is_empty(), "{kept:?}");
        engine.set_down(false);
        let report = reap(&journal, &sources(&engine)).await;
        assert_eq!(report.revoked, 1);
        assert_eq!(engine.revoked(), ["lease-0", "lease-1"]);
        assert_eq!(journal.load_all().unwrap(), vec![]);
    }

    #[tokio::test]
    async fn gone_leases_count_as_revoked_refusals_are_given_up_and_empty_leases_need_nothing() {
        let (_dir, journal) = journal();
        let engine = engine();
        journal.save(&entry("c1", gone(), "lease-1", &[])).unwrap();
        engine.set_revoke_failure(Some(SourceError::NotFound));
        assert_eq!(reap(&journal, &sources(&engine)).await.revoked, 1);
        assert_eq!(journal.load_all().unwrap(), vec![]);

        journal.save(&entry("c1", gone(), "lease-1", &[])).unwrap();
        engine.set_revoke_failure(Some(SourceError::Denied("no sys/leases/revoke".into())));
        let report = reap(&journal, &sources(&engine)).await;
        assert_eq!((report.revoked, report.kept, report.failed), (0, 0, 1));
        assert_eq!(journal.load_all().unwrap(), vec![]);

        // A certificate without a lease is revoked by serial; a response with neither needs nothing, even down.
        engine.set_revoke_failure(None);
        let mut certificate = entry("c1", gone(), "", &[""]);
        certificate.lease.serial = Some("1a:2b".into());
        journal.save(&certificate).unwrap();
        journal.save(&entry("c2", gone(), "", &[""])).unwrap();
        assert_eq!(reap(&journal, &sources(&engine)).await.revoked, 1);
        assert_eq!(engine.revoked(), ["serial:1a:2b"]);
        journal.save(&entry("c2", gone(), "", &[""])).unwrap();
        engine.set_down(true);
        assert_eq!(
            reap(&journal, &sources(&engine)).await,
            ReapReport::default()
        );
        assert_eq!(journal.load_all().unwrap(), vec![]);
    }

    #[tokio::test]
    async fn each_entry_is_revoked_through_the_source_of_its_namespace() {
        let (_dir, journal) = journal();
        let (root, team) = (engine(), engine());
        let engines = Engines(BTreeMap::from([
            (None, root.clone()),
            (Some("team-a".to_owned()), team.clone()),
        ]));
        let mut in_team = entry("c1", gone(), "lease-team", &[]);
        in_team.namespace = Some("team-a".into());
        let mut unknown = entry("c2", gone(), "lease-unknown", &["lease-old"]);
        unknown.namespace = Some("team-b".into());
        journal.save(&in_team).unwrap();
        journal.save(&unknown).unwrap();
        journal
            .save(&entry("c3", gone(), "lease-root", &[]))
            .unwrap();
        let report = reap(&journal, &engines).await;
        assert_eq!(
            report,
            ReapReport {
                revoked: 2,
                kept: 0,
                failed: 2
            }
        );
        assert_eq!(team.revoked(), ["lease-team"]);
        assert_eq!(root.revoked(), ["lease-root"]);
        assert_eq!(journal.load_all().unwrap(), vec![]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_periodic_reaper_reaps_at_once_and_then_every_period() {
        let (_dir, journal) = journal();
        let engine = engine();
        journal.save(&entry("c1", gone(), "lease-1", &[])).unwrap();
        let trigger = ReapTrigger::default();
        let task = spawn_periodic(
            journal.clone(),
            Arc::new(sources(&engine)),
            Duration::from_secs(60),
            trigger.clone(),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(engine.revoked(), ["lease-1"]);
        journal.save(&entry("c2", gone(), "lease-2", &[])).unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(engine.revoked(), ["lease-1"], "not before the period");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(engine.revoked(), ["lease-1", "lease-2"]);
        // Asked for, a pass comes at once, between periods.
        journal.save(&entry("c3", gone(), "lease-3", &[])).unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(engine.revoked().len(), 2);
        trigger.reap_soon();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(engine.revoked(), ["lease-1", "lease-2", "lease-3"]);
        task.abort();
    }
}
