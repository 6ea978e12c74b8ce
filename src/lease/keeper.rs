//! One lease holder's credential, kept valid for as long as the holder lives.
//!
//! A renewable lease is renewed at 2/3 of its TTL. When it can no longer be renewed (Vault granted less than asked:
//! the max TTL; not renewable; a certificate's validity), a successor is issued at 2/3 of the lease's life (or
//! `reissue_before` its end), the files switch to it at once (the `switched` callback: new inodes, kernel
//! invalidation), and the old lease is revoked after `reissue_grace`. While Vault cannot be reached the last
//! credential keeps being served and each step is retried with backoff; a credential that expired meanwhile is
//! replaced as soon as Vault answers. Nothing here reads a secret on a lookup or a refresh: only issuing mints one.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::journal::{unix_seconds, HolderProcess, JournalEntry, LeaseJournal, RetiringLease};
use super::{IssueRequest, Issued, LeasePolicy, LeaseRef};
use crate::source::{Secret, SecretSource, SourceError};

/// Which source issues, renews and revokes for a volume, decided again before every issue and renewal (a rule
/// that no longer makes the path dynamic stops the lease).
pub trait LeaseRoute: Send + Sync {
    fn source(&self) -> Result<Arc<dyn SecretSource>, SourceError>;
}

/// Who holds the lease, for the journal and the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub volume: String,
    /// The container's mount ID, or [`super::VOLUME_HOLDER`].
    pub holder: String,
    pub namespace: Option<String>,
}

/// The shortest and longest wait between retries while Vault cannot be reached.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

struct Held {
    secret: Arc<Secret>,
    lease: LeaseRef,
    source: Arc<dyn SecretSource>,
    issued: Instant,
    issued_wall: SystemTime,
    ttl: Duration,
    renewed: Instant,
    expires: Instant,
    /// When the lease can no longer be extended, once known.
    final_end: Option<Instant>,
}

struct Retiring {
    lease: LeaseRef,
    source: Arc<dyn SecretSource>,
    revoke_at: Instant,
}

#[derive(Default)]
struct KeeperState {
    current: Option<Held>,
    generation: u64,
    retiring: Vec<Retiring>,
    trouble: Option<String>,
    /// The lease of the journal entry this keeper last wrote: at its end, the entry is its own to remove only while
    /// it still names that lease.
    journaled: Option<LeaseRef>,
}

/// What the keeper does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Renew,
    Reissue,
    Idle,
}

/// Keeps one holder's lease.
pub struct LeaseKeeper {
    holder: Holder,
    request: IssueRequest,
    route: Arc<dyn LeaseRoute>,
    policy: LeasePolicy,
    journal: Option<LeaseJournal>,
    state: Mutex<KeeperState>,
    switched: OnceLock<Box<dyn Fn() + Send + Sync>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Names the holder only: the state holds the credential.
impl std::fmt::Debug for LeaseKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKeeper")
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl LeaseKeeper {
    /// Issues the holder's first credential (a Mount waits for it) and starts keeping it.
    pub async fn start(
        holder: Holder,
        request: IssueRequest,
        route: Arc<dyn LeaseRoute>,
        policy: LeasePolicy,
        journal: Option<LeaseJournal>,
    ) -> Result<Arc<LeaseKeeper>, SourceError> {
        let keeper = Arc::new(LeaseKeeper {
            holder,
            request,
            route,
            policy,
            journal,
            state: Mutex::new(KeeperState::default()),
            switched: OnceLock::new(),
            task: Mutex::new(None),
        });
        let (source, issued) = keeper.issue().await?;
        keeper.take_over_orphaned_entry(&source);
        keeper.install(source, issued);
        let weak = Arc::downgrade(&keeper);
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let Some(keeper) = weak.upgrade() else { return };
                let (at, step) = keeper.next_step(failures);
                drop(keeper);
                tokio::time::sleep_until(at).await;
                let Some(keeper) = weak.upgrade() else { return };
                failures = if keeper.act(step).await {
                    0
                } else {
                    failures + 1
                };
            }
        });
        *keeper.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(keeper)
    }

    /// Called after every switch to a new credential (the filesystem retires its names).
    pub fn on_switch(&self, switched: Box<dyn Fn() + Send + Sync>) {
        let _ = self.switched.set(switched);
    }

    fn state(&self) -> MutexGuard<'_, KeeperState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The credential served now and its generation (a new one at every re-issue); `None` once stopped.
    pub fn current(&self) -> Option<(Arc<Secret>, u64)> {
        let state = self.state();
        let generation = state.generation;
        state
            .current
            .as_ref()
            .map(|held| (held.secret.clone(), generation))
    }

    /// Whether the access rules still serve this lease's path as dynamic, decided now without asking Vault: the
    /// filesystem asks at every lookup, so a rule changed by a reload holds for the next file opened.
    pub fn allowed(&self) -> Result<(), SourceError> {
        self.route.source().map(|_| ())
    }

    /// What is wrong, if anything (a failing renewal, an expired credential).
    pub fn trouble(&self) -> Option<String> {
        self.state().trouble.clone()
    }

    async fn issue(&self) -> Result<(Arc<dyn SecretSource>, Issued), SourceError> {
        let source = self.route.source()?;
        // The source decides the engine again for every issue.
        let issued = source.issue(&self.request).await;
        crate::metrics::lease(
            crate::metrics::LeaseOp::Issue,
            crate::metrics::Outcome::of(&issued),
        );
        Ok((source, issued?))
    }

    /// The journal keeps one entry per volume and holder, and this keeper's first write replaces it. An entry left by
    /// a process that is gone (a crash or a reboot before the reaper ran, a keeper whose revocations Vault did not
    /// answer) still names leases: they are retired at once, so replacing the entry leaks none of them. Docker gives
    /// a restarted container the same mount ID, and every container of a per-volume lease shares one holder, so
    /// this is the common case after a reboot, not a corner.
    fn take_over_orphaned_entry(&self, source: &Arc<dyn SecretSource>) {
        let Some(journal) = &self.journal else { return };
        let entry = match journal.load(&self.holder.volume, &self.holder.holder) {
            Ok(Some(entry)) if !entry.holder_is_alive() => entry,
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(volume = %self.holder.volume, %error, "could not read the lease journal; the reaper handles its entry");
                return;
            }
        };
        let now = Instant::now();
        let leases =
            std::iter::once(entry.lease).chain(entry.retiring.into_iter().map(|r| r.lease));
        let mut state = self.state();
        for lease in leases.filter(LeaseRef::needs_revoking) {
            tracing::info!(volume = %self.holder.volume, lease = %lease.name(), "a lease of {} held by a process that is gone is revoked now", self.holder.volume);
            state.retiring.push(Retiring {
                lease,
                source: source.clone(),
                revoke_at: now,
            });
        }
    }

    /// Serves `issued` from now on; the credential it replaces is revoked after the re-issue grace.
    fn install(&self, source: Arc<dyn SecretSource>, issued: Issued) {
        let now = Instant::now();
        let wall = SystemTime::now();
        let expires = now + issued.ttl;
        let ends_by = issued
            .ends_by
            .map(|end| now + end.duration_since(wall).unwrap_or(Duration::ZERO));
        // A lease that cannot be renewed ends at its TTL; a certificate at its expiration; whichever comes first.
        let lease_end = (!issued.renewable && !issued.ttl.is_zero()).then_some(expires);
        let final_end = lease_end.into_iter().chain(ends_by).min();
        let held = Held {
            secret: Arc::new(issued.secret),
            lease: issued.lease,
            source,
            issued: now,
            issued_wall: wall,
            ttl: issued.ttl,
            renewed: now,
            expires,
            final_end,
        };
        let lease_id = held.lease.lease_id.clone();
        let replaced = {
            let mut state = self.state();
            state.generation += 1;
            state.trouble = None;
            let old = state.current.replace(held);
            if let Some(old) = &old {
                let revoke_at = (now + self.policy.reissue_grace).min(old.expires.max(now));
                state.retiring.push(Retiring {
                    lease: old.lease.clone(),
                    source: old.source.clone(),
                    revoke_at,
                });
            }
            old.is_some()
        };
        tracing::info!(
            target: "docker_volume_libsecret::audit",
            audit_volume = %self.holder.volume,
            audit_container = %self.holder.holder,
            audit_lease = %lease_id,
            audit_result = if replaced { "lease-reissued" } else { "lease-issued" },
            "dynamic secret issued for {} to {}",
            self.holder.volume,
            self.holder.holder
        );
        self.write_journal();
        if replaced {
            if let Some(switched) = self.switched.get() {
                switched();
            }
        }
    }

    fn next_step(&self, failures: u32) -> (Instant, Step) {
        let state = self.state();
        let now = Instant::now();
        let retire = state.retiring.iter().map(|r| r.revoke_at).min();
        let (at, step) = match &state.current {
            None => (now + BACKOFF.1, Step::Idle),
            Some(held) => {
                let (at, step) = plan(held, &self.policy, now);
                if failures > 0 {
                    let wait = BACKOFF
                        .0
                        .saturating_mul(1 << failures.min(5))
                        .min(BACKOFF.1);
                    (now + wait, step)
                } else {
                    (at, step)
                }
            }
        };
        match retire {
            Some(retire) if retire <= at => (retire, Step::Idle),
            _ => (at, step),
        }
    }

    /// Does `step` (and any revocation due); whether it worked.
    async fn act(&self, step: Step) -> bool {
        self.revoke_due().await;
        match step {
            Step::Idle => true,
            Step::Renew => self.renew().await,
            Step::Reissue => self.reissue().await,
        }
    }

    async fn revoke_due(&self) {
        let now = Instant::now();
        let due: Vec<Retiring> = {
            let mut state = self.state();
            let (due, keep) = std::mem::take(&mut state.retiring)
                .into_iter()
                .partition(|r| r.revoke_at <= now);
            state.retiring = keep;
            due
        };
        if due.is_empty() {
            return;
        }
        for mut retiring in due {
            if !self.revoke(&retiring.source, &retiring.lease).await {
                retiring.revoke_at = Instant::now() + BACKOFF.1;
                self.state().retiring.push(retiring);
            }
        }
        self.write_journal();
    }

    /// Revokes `lease`; whether Vault has it no more (revoked now, or already gone).
    async fn revoke(&self, source: &Arc<dyn SecretSource>, lease: &LeaseRef) -> bool {
        let revoked = source.revoke_lease(lease).await;
        // Already gone counts as revoked: Vault has it no more.
        crate::metrics::lease_revoked(matches!(revoked, Ok(()) | Err(SourceError::NotFound)));
        match revoked {
            Ok(()) | Err(SourceError::NotFound) => {
                tracing::info!(
                target: "docker_volume_libsecret::audit",
                audit_volume = %self.holder.volume,
                audit_container = %self.holder.holder,
                audit_lease = %lease.lease_id,
                audit_result = "lease-revoked",
                "lease of {} revoked for {}",
                self.holder.volume,
                self.holder.holder
                );
                true
            }
            Err(error) => {
                tracing::warn!(
                    volume = %self.holder.volume,
                    lease = %lease.lease_id,
                    %error,
                    "could not revoke the lease of {}; it is retried",
                    self.holder.volume
                );
                false
            }
        }
    }

    async fn renew(&self) -> bool {
        let (lease, source, ttl, expires) = {
            let state = self.state();
            let Some(held) = &state.current else {
                return true;
            };
            (
                held.lease.clone(),
                held.source.clone(),
                held.ttl,
                held.expires,
            )
        };
        if Instant::now() >= expires {
            return self.reissue().await;
        }
        let renewed = source.renew_lease(&lease, ttl).await;
        crate::metrics::lease(
            crate::metrics::LeaseOp::Renew,
            crate::metrics::Outcome::of(&renewed),
        );
        match renewed {
            Ok(renewed) => {
                let now = Instant::now();
                let mut state = self.state();
                if let Some(held) = state.current.as_mut() {
                    held.renewed = now;
                    held.expires = now + renewed.ttl;
                    // Granted less than asked (beyond a second of rounding): the max TTL is reached.
                    if !renewed.renewable || renewed.ttl + Duration::from_secs(1) < ttl {
                        held.final_end =
                            Some(held.expires.min(held.final_end.unwrap_or(held.expires)));
                    }
                }
                state.trouble = None;
                drop(state);
                tracing::debug!(volume = %self.holder.volume, lease = %lease.lease_id, ttl_seconds = renewed.ttl.as_secs(), "lease renewed");
                self.write_journal();
                true
            }
            // Gone (revoked in Vault, expired) or refused now: issue a successor.
            Err(SourceError::NotFound | SourceError::Denied(_)) => self.reissue().await,
            Err(error) => {
                self.note_trouble(format!("renewal failing: {error}"));
                false
            }
        }
    }

    async fn reissue(&self) -> bool {
        match self.issue().await {
            Ok((source, issued)) => {
                self.install(source, issued);
                true
            }
            Err(SourceError::Refused(reason)) => {
                tracing::warn!(volume = %self.holder.volume, %reason, "dynamic volume {} refused now; its lease is revoked", self.holder.volume);
                let held = self.state().current.take();
                if let Some(held) = held {
                    self.revoke(&held.source, &held.lease).await;
                }
                if let Some(switched) = self.switched.get() {
                    switched();
                }
                self.note_trouble(format!("refused: {reason}"));
                true
            }
            Err(error) => {
                let expired = self
                    .state()
                    .current
                    .as_ref()
                    .is_some_and(|held| Instant::now() >= held.expires);
                self.note_trouble(if expired {
                    format!("the credential expired during an outage; it is replaced as soon as Vault answers ({error})")
                } else {
                    format!("re-issue failing: {error}")
                });
                false
            }
        }
    }

    fn note_trouble(&self, trouble: String) {
        tracing::warn!(volume = %self.holder.volume, container = %self.holder.holder, %trouble, "dynamic volume {}: {trouble}", self.holder.volume);
        self.state().trouble = Some(trouble);
        self.write_journal();
    }

    fn write_journal(&self) {
        let Some(journal) = &self.journal else { return };
        let entry = {
            let state = self.state();
            let Some(held) = &state.current else {
                return;
            };
            let now = Instant::now();
            let wall = SystemTime::now();
            let wall_of = |at: Instant| unix_seconds(wall + at.saturating_duration_since(now));
            JournalEntry {
                volume: self.holder.volume.clone(),
                holder: self.holder.holder.clone(),
                namespace: self.holder.namespace.clone(),
                lease: held.lease.clone(),
                issued_at: unix_seconds(held.issued_wall),
                expires_at: if held.ttl.is_zero() {
                    0
                } else {
                    wall_of(held.expires)
                },
                process: HolderProcess::current(),
                state: state
                    .trouble
                    .clone()
                    .unwrap_or_else(|| "serving".to_owned()),
                retiring: state
                    .retiring
                    .iter()
                    .map(|r| RetiringLease {
                        lease: r.lease.clone(),
                        revoke_at: wall_of(r.revoke_at),
                    })
                    .collect(),
            }
        };
        match journal.save(&entry) {
            Ok(()) => self.state().journaled = Some(entry.lease),
            Err(error) => {
                tracing::warn!(volume = %self.holder.volume, %error, "could not write the lease journal")
            }
        }
    }

    /// The last holder is gone: waits `unmount_grace`, then revokes every lease this keeper issued and forgets them.
    pub async fn finish(&self) {
        self.stop_task();
        tokio::time::sleep(self.policy.unmount_grace).await;
        let (held, retiring) = {
            let mut state = self.state();
            (state.current.take(), std::mem::take(&mut state.retiring))
        };
        let mut unrevoked = Vec::new();
        for retiring in retiring {
            if !self.revoke(&retiring.source, &retiring.lease).await {
                unrevoked.push(retiring.lease);
            }
        }
        if let Some(held) = held {
            if !self.revoke(&held.source, &held.lease).await {
                unrevoked.push(held.lease);
            }
        }
        let Some(journal) = &self.journal else { return };
        // A new keeper of the same holder (the container restarted at once) may have written its entry meanwhile:
        // that one is left alone.
        let mine = self.state().journaled.clone();
        match journal.load(&self.holder.volume, &self.holder.holder) {
            Ok(Some(entry)) if Some(&entry.lease) != mine.as_ref() => {
                if !unrevoked.is_empty() {
                    tracing::warn!(volume = %self.holder.volume, leases = unrevoked.len(), "Vault did not revoke the leases of {}, and a new holder has its journal entry; they end at their TTL", self.holder.volume);
                }
                return;
            }
            _ => {}
        }
        let written = if unrevoked.is_empty() {
            journal.remove(&self.holder.volume, &self.holder.holder)
        } else {
            // Nobody serves these leases any more: the journal gives them to the reaper, which retries (an entry
            // whose holder is no process is an orphan), so a Vault outage at Unmount leaks nothing.
            journal.save(&self.released_entry(unrevoked))
        };
        if let Err(error) = written {
            tracing::warn!(volume = %self.holder.volume, %error, "could not write the lease journal");
        }
    }

    /// The journal entry of leases this keeper could not revoke at its end, held by no process.
    fn released_entry(&self, mut leases: Vec<LeaseRef>) -> JournalEntry {
        let current = leases.pop().unwrap_or_default();
        let now = unix_seconds(SystemTime::now());
        JournalEntry {
            volume: self.holder.volume.clone(),
            holder: self.holder.holder.clone(),
            namespace: self.holder.namespace.clone(),
            lease: current,
            issued_at: now,
            expires_at: 0,
            process: HolderProcess::released(),
            state: "released: to be revoked".to_owned(),
            retiring: leases
                .into_iter()
                .map(|lease| RetiringLease {
                    lease,
                    revoke_at: now,
                })
                .collect(),
        }
    }

    /// Stops renewing without revoking (the process is going away; the journal tells the next driver).
    pub fn stop_task(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop_task();
    }
}

/// When and what next for `held`: a renewal at 2/3 of its TTL, or once it cannot be extended, a re-issue at 2/3 of
/// its life (or `reissue_before` its end).
fn plan(held: &Held, policy: &LeasePolicy, now: Instant) -> (Instant, Step) {
    if let Some(end) = held.final_end {
        let life = end.saturating_duration_since(held.issued);
        let at = match policy.reissue_before {
            Some(before) => end
                .checked_sub(before)
                .unwrap_or(held.issued)
                .max(held.issued),
            None => held.issued + life * 2 / 3,
        };
        return (at, Step::Reissue);
    }
    if held.ttl.is_zero() {
        return (now + Duration::from_secs(3600), Step::Idle);
    }
    (held.renewed + held.ttl * 2 / 3, Step::Renew)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::VaultPath;
    use crate::testing::FakeEngine;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Fixed(Arc<FakeEngine>);
    impl LeaseRoute for Fixed {
        fn source(&self) -> Result<Arc<dyn SecretSource>, SourceError> {
            Ok(self.0.clone())
        }
    }

    fn engine(ttl: u64, max_ttl: u64) -> Arc<FakeEngine> {
        Arc::new(FakeEngine::new(
            Duration::from_secs(ttl),
            Duration::from_secs(max_ttl),
        ))
    }

    async fn keeper(engine: &Arc<FakeEngine>, policy: LeasePolicy) -> Arc<LeaseKeeper> {
        keeper_with(engine, policy, None).await
    }

    async fn keeper_with(
        engine: &Arc<FakeEngine>,
        policy: LeasePolicy,
        journal: Option<LeaseJournal>,
    ) -> Arc<LeaseKeeper> {
        LeaseKeeper::start(
            Holder {
                volume: "database/creds/app".into(),
                holder: "container-1".into(),
                namespace: None,
            },
            IssueRequest {
                path: VaultPath::from_volume_name("database/creds/app").unwrap(),
                params: BTreeMap::new(),
            },
            Arc::new(Fixed(engine.clone())),
            policy,
            journal,
        )
        .await
        .unwrap()
    }

    fn user(keeper: &LeaseKeeper) -> String {
        let (secret, _) = keeper.current().unwrap();
        String::from_utf8(
            secret
                .render(&crate::names::View::Field("username".into()))
                .unwrap()
                .to_vec(),
        )
        .unwrap()
    }

    async fn run_for(seconds: u64) {
        for _ in 0..seconds * 10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_is_renewed_at_two_thirds_and_reissued_before_its_max_ttl_with_the_old_one_revoked(
    ) {
        let engine = engine(10, 30);
        let switches = Arc::new(AtomicUsize::new(0));
        let policy = LeasePolicy {
            reissue_grace: Duration::from_secs(5),
            ..LeasePolicy::default()
        };
        let keeper = keeper(&engine, policy).await;
        let counted = switches.clone();
        keeper.on_switch(Box::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(user(&keeper), "user-1");
        run_for(7).await;
        assert_eq!(engine.renewals(), 1, "renewed at 2/3 of 10 s");
        assert_eq!(engine.issued(), 1);
        // Renewals at ~6.7, ~13.3, ~20 and ~26.7 s; that one is granted 3.3 s, not 10: the max TTL is reached, and
        // a successor is issued at once, before the old lease ends at 30 s.
        run_for(19).await;
        assert_eq!(
            engine.issued(),
            1,
            "no re-issue while renewals are granted in full"
        );
        run_for(2).await;
        assert_eq!(engine.issued(), 2, "re-issued before the max TTL");
        assert_eq!(user(&keeper), "user-2");
        assert_eq!(switches.load(Ordering::SeqCst), 1);
        assert!(
            engine.revoked().is_empty(),
            "the old lease lives until its end (before the 5 s grace is over)"
        );
        run_for(3).await;
        assert_eq!(
            engine.revoked(),
            vec!["database/creds/app/lease-1".to_owned()]
        );
        // Two minutes: the credential is always one Vault still honours, and nothing else is minted.
        run_for(100).await;
        let issued = engine.issued();
        assert!((4..=6).contains(&issued), "one issue per ~27 s: {issued}");
        keeper.finish().await;
        let revoked = engine.revoked();
        assert_eq!(
            revoked.len(),
            issued,
            "every lease issued is revoked at the end: {revoked:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn during_an_outage_the_last_credential_is_served_and_replaced_when_vault_is_back() {
        let engine = engine(10, 3600);
        let keeper = keeper(&engine, LeasePolicy::default()).await;
        engine.set_down(true);
        run_for(30).await;
        assert_eq!(user(&keeper), "user-1", "served through the outage");
        let trouble = keeper.trouble().unwrap();
        assert!(trouble.contains("expired during an outage"), "{trouble}");
        engine.set_down(false);
        run_for(35).await;
        assert_eq!(user(&keeper), "user-2", "replaced once Vault answers");
        assert_eq!(keeper.trouble(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn finishing_waits_the_unmount_grace_then_revokes() {
        let engine = engine(60, 3600);
        let keeper = keeper(
            &engine,
            LeasePolicy {
                unmount_grace: Duration::from_secs(3),
                ..LeasePolicy::default()
            },
        )
        .await;
        let finishing = {
            let keeper = keeper.clone();
            tokio::spawn(async move { keeper.finish().await })
        };
        run_for(2).await;
        assert!(engine.revoked().is_empty());
        run_for(2).await;
        finishing.await.unwrap();
        assert_eq!(engine.revoked().len(), 1);
        assert!(keeper.current().is_none());
    }

    #[tokio::test]
    async fn leases_vault_would_not_revoke_at_the_end_go_to_the_reaper() {
        struct Sources(Arc<FakeEngine>);
        impl crate::lease::reaper::ReapSources for Sources {
            fn source_for(
                &self,
                _: Option<&str>,
                _: &str,
            ) -> Result<Arc<dyn SecretSource>, SourceError> {
                Ok(self.0.clone())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let journal = LeaseJournal::open(dir.path()).unwrap();
        let engine = engine(3600, 7200);
        let keeper = keeper_with(&engine, LeasePolicy::default(), Some(journal.clone())).await;
        let entry = journal
            .load("database/creds/app", "container-1")
            .unwrap()
            .unwrap();
        assert!(
            entry.process.is_alive(),
            "a serving keeper's entry is its process's"
        );
        // Vault is down when the container stops: nothing is revoked, and nothing is forgotten.
        engine.set_down(true);
        keeper.finish().await;
        assert!(engine.revoked().is_empty());
        let released = journal
            .load("database/creds/app", "container-1")
            .unwrap()
            .unwrap();
        assert_eq!(released.lease.lease_id, entry.lease.lease_id);
        assert!(
            !released.process.is_alive(),
            "held by no process: an orphan"
        );
        // The reaper's next pass, with Vault back, revokes it and clears the journal.
        engine.set_down(false);
        let report = crate::lease::reaper::reap(&journal, &Sources(engine.clone())).await;
        assert_eq!(report.revoked, 1);
        assert_eq!(engine.revoked(), [entry.lease.lease_id]);
        assert!(journal
            .load("database/creds/app", "container-1")
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn a_keeper_revokes_the_leases_its_holder_left_in_the_journal_from_a_process_that_is_gone(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let journal = LeaseJournal::open(dir.path()).unwrap();
        let engine = engine(3600, 7200);
        // The container's earlier keeper, in a driver that crashed (or before a reboot): its entry names a current
        // lease and a retiring one, and its process is gone.
        let earlier = keeper_with(&engine, LeasePolicy::default(), Some(journal.clone())).await;
        earlier.stop_task();
        let mut entry = journal
            .load("database/creds/app", "container-1")
            .unwrap()
            .unwrap();
        let retiring = LeaseRef {
            lease_id: "database/creds/app/retiring-one".into(),
            ..entry.lease.clone()
        };
        entry.retiring.push(RetiringLease {
            lease: retiring.clone(),
            revoke_at: 0,
        });
        entry.process.boot_id = "an-earlier-boot".into();
        journal.save(&entry).unwrap();
        drop(earlier);
        // The restarted container mounts again under the same mount ID: a new lease, and the old ones revoked.
        let keeper = keeper_with(&engine, LeasePolicy::default(), Some(journal.clone())).await;
        for _ in 0..50 {
            if engine.revoked().len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut revoked = engine.revoked();
        revoked.sort();
        let mut expected = vec![entry.lease.lease_id.clone(), retiring.lease_id];
        expected.sort();
        assert_eq!(revoked, expected);
        let now = journal
            .load("database/creds/app", "container-1")
            .unwrap()
            .unwrap();
        assert_ne!(now.lease, entry.lease);
        assert!(now.process.is_alive());
        assert!(now.retiring.is_empty(), "{:?}", now.retiring);
        // An entry of a live process (another keeper of this process) is not taken over.
        let _alive = keeper_with(&engine, LeasePolicy::default(), Some(journal.clone())).await;
        run_for(1).await;
        assert_eq!(engine.revoked().len(), 2);
        let alive_entry = journal
            .load("database/creds/app", "container-1")
            .unwrap()
            .unwrap();
        assert_ne!(alive_entry.lease, now.lease);
        // The older keeper ends after the newer one wrote its entry: the newer entry stays.
        keeper.finish().await;
        let kept = journal
            .load("database/creds/app", "container-1")
            .unwrap()
            .unwrap();
        assert_eq!(kept, alive_entry);
    }
}
