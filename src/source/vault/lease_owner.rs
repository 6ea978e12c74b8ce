//! The tokens that own dynamic secrets' leases (`vault.lease_token_role`).
//!
//! Vault makes every lease a child of the token that created it and revokes the lease when that token dies. A login
//! token dies at its max TTL (an AppRole role's `token_max_ttl`, a token file's `explicit_max_ttl`), often long
//! before a database credential's max TTL, and a container's credential would stop working mid-lease. So when a
//! role is configured, leases are issued with a lease-owning token instead: an orphan periodic token created from
//! the role with the login token (`POST auth/token/create/<role>`). Being an orphan it outlives the login token;
//! being periodic it lives as long as it is renewed, so it is renewed (`renew-self`) at about 2/3 of its period,
//! with backoff on failure. A new one is created only when Vault says the old one is gone: its leases went with it.
//!
//! A lease records its owner's accessor ([`crate::lease::LeaseRef::owner_accessor`]), never the token. A driver
//! process that renews a lease owned by another process's token (an earlier driver's) keeps that token alive by
//! accessor (`auth/token/renew-accessor`, with the login token) for as long as such leases are renewed here.
//!
//! Renewals and revocations of the leases themselves use the login token (`sys/leases/renew`, `sys/leases/revoke`):
//! Vault lets any token with those capabilities act on any lease.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use super::auth::{self, AuthEnvelope, AuthError, LoginRequest};
use super::session::Session;
use super::status_of;

/// Backoff bounds for failed renewals (as the login's).
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often the keep-alive task looks again when nothing is due (a token that never expires).
const IDLE_CHECK: Duration = Duration::from_secs(300);

/// The current lease-owning token.
struct OwnerToken {
    token: Zeroizing<String>,
    accessor: String,
    /// Bumped on every new token, so concurrent issues that find it dead replace it once.
    generation: u64,
    /// What was left of its life at `renewed`; zero: it never expires.
    ttl: Duration,
    renewed: Instant,
    due: Instant,
    backoff: Duration,
    /// The TTL it was created with: a renewal granting clearly less means a max TTL caps it (a role without a
    /// period), which is warned about once.
    created_ttl: Duration,
    warned_capped: bool,
}

/// Another process's lease-owning token, kept alive here by accessor.
struct Adopted {
    /// The leases renewed here that it owns; when the last is revoked or gone, it is left to expire.
    leases: BTreeSet<String>,
    /// Registered without a lease ([`super::VaultSource::keep_owner_alive`]): kept until Vault says it is gone.
    pinned: bool,
    due: Instant,
    backoff: Duration,
}

/// The lease-owning token of one login, and the earlier processes' tokens this one keeps alive.
pub(super) struct LeaseOwner {
    /// `vault.lease_token_role`; `None`: leases are issued with the login token.
    role: Option<String>,
    current: Mutex<Option<OwnerToken>>,
    generation: Mutex<u64>,
    /// Serialises creating a token, so concurrent issues create one.
    creating: tokio::sync::Mutex<()>,
    adopted: Mutex<BTreeMap<String, Adopted>>,
    /// Wakes the keep-alive task when something new is to be renewed.
    wake: Arc<Notify>,
    task_started: AtomicBool,
}

/// Names the role and the accessor only: the token never shows.
impl std::fmt::Debug for LeaseOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseOwner")
            .field("role", &self.role)
            .field("accessor", &self.current_accessor())
            .field("adopted", &self.lock_adopted().len())
            .finish_non_exhaustive()
    }
}

/// `0.75..=1.0` of `duration`: spreads renewals of many hosts.
fn jitter(duration: Duration) -> Duration {
    duration.mul_f64(0.75 + fastrand::f64() * 0.25)
}

/// When a token with `ttl` left should be renewed: at about 2/3 of it.
fn due_after(ttl: Duration) -> Instant {
    if ttl.is_zero() {
        Instant::now() + IDLE_CHECK
    } else {
        Instant::now() + jitter(ttl.mul_f64(2.0 / 3.0))
    }
}

/// A token create or renewal reply's token, accessor and TTL.
struct Granted {
    token: Zeroizing<String>,
    accessor: String,
    ttl: Duration,
}

fn granted(what: &str, reply: AuthEnvelope) -> Result<Granted, ClientError> {
    let auth = reply.auth.ok_or_else(|| ClientError::APIError {
        code: 502,
        errors: vec![format!("{what}: the reply has no auth block")],
    })?;
    Ok(Granted {
        token: auth.client_token,
        accessor: auth.accessor,
        ttl: Duration::from_secs(auth.lease_duration),
    })
}

impl LeaseOwner {
    pub(super) fn new(role: Option<String>) -> Arc<LeaseOwner> {
        Arc::new(LeaseOwner {
            role,
            current: Mutex::new(None),
            generation: Mutex::new(0),
            creating: tokio::sync::Mutex::new(()),
            adopted: Mutex::new(BTreeMap::new()),
            wake: Arc::new(Notify::new()),
            task_started: AtomicBool::new(false),
        })
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<OwnerToken>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_adopted(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Adopted>> {
        self.adopted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The accessor of the current lease-owning token, if there is one.
    pub(super) fn current_accessor(&self) -> Option<String> {
        self.lock_current().as_ref().map(|t| t.accessor.clone())
    }

    /// The lease-owning token to issue with (its token, accessor and generation), created from the role with the
    /// login token when there is none. `None`: no role is configured.
    pub(super) async fn token(
        self: &Arc<Self>,
        session: &Arc<Session>,
    ) -> Result<Option<(Zeroizing<String>, String, u64)>, ClientError> {
        let Some(role) = &self.role else {
            return Ok(None);
        };
        if let Some(found) = self.snapshot() {
            return Ok(Some(found));
        }
        let _creating = self.creating.lock().await;
        if let Some(found) = self.snapshot() {
            return Ok(Some(found));
        }
        let path = format!("auth/token/create/{role}");
        let reply = session
            .exec(session.namespace(), || LoginRequest {
                path: path.clone(),
                body: b"{}".to_vec(),
            })
            .await
            .map_err(|error| ClientError::APIError {
                // A 403 stays a denial; anything else (an unknown role is a 400) is no credential for now, not a
                // missing secret.
                code: if status_of(&error) == Some(403) { 403 } else { 503 },
                errors: vec![format!(
                    "creating the lease-owning token at {path} (vault.lease_token_role; the login token needs \
                     update on it): {}",
                    super::describe_client_error(&error)
                )],
            })?;
        let granted = granted(&path, reply)?;
        if granted.ttl.is_zero() {
            // Not fatal (it lives on), but it is not what the role should make: such a token is never cleaned up.
            tracing::warn!(
                role = %role,
                "the lease token role made a token that never expires; give the role a period"
            );
        }
        let generation = {
            let mut counter = self.generation.lock().unwrap_or_else(|p| p.into_inner());
            *counter += 1;
            *counter
        };
        tracing::info!(
            role = %role,
            accessor = %granted.accessor,
            ttl_seconds = granted.ttl.as_secs(),
            "created a lease-owning Vault token; dynamic secrets are issued with it"
        );
        let found = (granted.token.clone(), granted.accessor.clone(), generation);
        *self.lock_current() = Some(OwnerToken {
            token: granted.token,
            accessor: granted.accessor,
            generation,
            ttl: granted.ttl,
            renewed: Instant::now(),
            due: due_after(granted.ttl),
            backoff: MIN_BACKOFF,
            created_ttl: granted.ttl,
            warned_capped: false,
        });
        self.start_task(session);
        self.wake.notify_one();
        Ok(Some(found))
    }

    fn snapshot(&self) -> Option<(Zeroizing<String>, String, u64)> {
        self.lock_current()
            .as_ref()
            .map(|t| (t.token.clone(), t.accessor.clone(), t.generation))
    }

    /// Drops the token of `generation` (Vault said it is gone), so the next issue creates a new one.
    pub(super) fn forget(&self, generation: u64) {
        let mut current = self.lock_current();
        if current.as_ref().is_some_and(|t| t.generation == generation) {
            if let Some(gone) = current.take() {
                tracing::warn!(
                    accessor = %gone.accessor,
                    "the lease-owning Vault token is gone, and the leases it owned with it; a new token is created \
                     for the next credential"
                );
            }
        }
    }

    /// Keeps another process's lease-owning token alive by accessor, for `lease` (`None`: until Vault says it is
    /// gone). The current token's own accessor needs nothing.
    pub(super) fn adopt(
        self: &Arc<Self>,
        session: &Arc<Session>,
        accessor: &str,
        lease: Option<&str>,
    ) {
        if accessor.is_empty() || self.current_accessor().as_deref() == Some(accessor) {
            return;
        }
        let added = {
            let mut adopted = self.lock_adopted();
            let added = !adopted.contains_key(accessor);
            let entry = adopted
                .entry(accessor.to_owned())
                .or_insert_with(|| Adopted {
                    leases: BTreeSet::new(),
                    pinned: false,
                    due: Instant::now(),
                    backoff: MIN_BACKOFF,
                });
            match lease {
                Some(lease) => {
                    entry.leases.insert(lease.to_owned());
                }
                None => entry.pinned = true,
            }
            added
        };
        if added {
            tracing::info!(%accessor, "keeping an earlier driver's lease-owning Vault token alive by accessor");
            self.start_task(session);
            self.wake.notify_one();
        }
    }

    /// `lease` (owned by `accessor`) is revoked or gone: an adopted token no lease needs any more is left to
    /// expire at the end of its period (not revoked: leases this process never saw may still be its).
    pub(super) fn release(&self, accessor: &str, lease: &str) {
        let mut adopted = self.lock_adopted();
        let unneeded = adopted.get_mut(accessor).is_some_and(|entry| {
            entry.leases.remove(lease);
            entry.leases.is_empty() && !entry.pinned
        });
        if unneeded {
            adopted.remove(accessor);
            tracing::info!(%accessor, "no lease renewed here needs the earlier driver's lease-owning token any more; it expires at the end of its period");
        }
    }

    fn start_task(self: &Arc<Self>, session: &Arc<Session>) {
        if self.task_started.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(keep_alive(
            Arc::downgrade(self),
            Arc::downgrade(session),
            self.wake.clone(),
        ));
    }

    /// The earliest moment something is due.
    fn next_due(&self) -> Instant {
        let current = self.lock_current().as_ref().map(|t| t.due);
        let adopted = self.lock_adopted().values().map(|a| a.due).min();
        [current, adopted]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + IDLE_CHECK)
    }

    /// Renews whatever is due.
    async fn renew_due(&self, session: &Session) {
        let now = Instant::now();
        let current = self
            .lock_current()
            .as_ref()
            .filter(|t| t.due <= now)
            .map(|t| (t.token.clone(), t.generation));
        if let Some((token, generation)) = current {
            self.renew_current(session, &token, generation).await;
        }
        let due: Vec<String> = self
            .lock_adopted()
            .iter()
            .filter(|(_, a)| a.due <= now)
            .map(|(accessor, _)| accessor.clone())
            .collect();
        for accessor in due {
            self.renew_adopted(session, &accessor).await;
        }
    }

    async fn renew_current(&self, session: &Session, token: &str, generation: u64) {
        let namespace = session.namespace();
        let outcome = auth::renew(session.transport(), namespace, token).await;
        let failure = match outcome {
            Ok((ttl, _)) => {
                tracing::debug!(
                    ttl_seconds = ttl.as_secs(),
                    "lease-owning Vault token renewed"
                );
                if let Some(t) = self
                    .lock_current()
                    .as_mut()
                    .filter(|t| t.generation == generation)
                {
                    t.ttl = ttl;
                    t.renewed = Instant::now();
                    t.due = due_after(ttl);
                    t.backoff = MIN_BACKOFF;
                    if ttl.as_secs_f64() < t.created_ttl.as_secs_f64() * 0.75 && !t.warned_capped {
                        t.warned_capped = true;
                        tracing::warn!(
                            accessor = %t.accessor,
                            expires_in_seconds = ttl.as_secs(),
                            "the lease-owning Vault token reaches its max TTL soon, and its leases die with it; give \
                             the lease token role a period"
                        );
                    }
                }
                return;
            }
            Err(AuthError::Rejected(reason)) => {
                // Refused: gone (403), or alive but not renewable (a role without a period). Lookup tells which.
                match auth::lookup_info(session.transport(), namespace, token).await {
                    Err(AuthError::Rejected(_)) => {
                        self.forget(generation);
                        return;
                    }
                    Ok(info) => {
                        tracing::warn!(%reason, ttl_seconds = info.ttl, "Vault refused to renew the lease-owning token; give the lease token role a period, or its leases die with it");
                        if let Some(t) = self
                            .lock_current()
                            .as_mut()
                            .filter(|t| t.generation == generation)
                        {
                            t.ttl = Duration::from_secs(info.ttl);
                            t.renewed = Instant::now();
                            t.due = due_after(t.ttl);
                        }
                        return;
                    }
                    Err(other) => other.to_string(),
                }
            }
            Err(other) => other.to_string(),
        };
        // Vault unreachable or failing: retried with backoff, well before what is left of the token runs out.
        if let Some(t) = self
            .lock_current()
            .as_mut()
            .filter(|t| t.generation == generation)
        {
            let left = t.ttl.saturating_sub(t.renewed.elapsed());
            let delay = jitter(t.backoff).min((left / 3).max(MIN_BACKOFF));
            tracing::warn!(
                reason = %failure,
                expires_in_seconds = left.as_secs(),
                retry_in_seconds = delay.as_secs(),
                "could not renew the lease-owning Vault token; retrying"
            );
            t.due = Instant::now() + delay;
            t.backoff = (t.backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn renew_adopted(&self, session: &Session, accessor: &str) {
        let body =
            serde_json::to_vec(&serde_json::json!({ "accessor": accessor })).unwrap_or_default();
        let reply = session
            .exec(session.namespace(), || LoginRequest {
                path: "auth/token/renew-accessor".to_owned(),
                body: body.clone(),
            })
            .await
            .and_then(|reply| granted("auth/token/renew-accessor", reply));
        let mut adopted = self.lock_adopted();
        let Some(entry) = adopted.get_mut(accessor) else {
            return;
        };
        match reply {
            Ok(granted) => {
                tracing::debug!(%accessor, ttl_seconds = granted.ttl.as_secs(), "an earlier driver's lease-owning token renewed");
                entry.due = due_after(granted.ttl);
                entry.backoff = MIN_BACKOFF;
            }
            // "invalid accessor": the token is gone, and its leases with it.
            Err(error) if status_of(&error) == Some(400) => {
                adopted.remove(accessor);
                tracing::warn!(%accessor, "an earlier driver's lease-owning Vault token is gone, and the leases it owned with it");
            }
            Err(error) => {
                let delay = jitter(entry.backoff);
                tracing::warn!(
                    %accessor,
                    reason = %super::describe_client_error(&error),
                    retry_in_seconds = delay.as_secs(),
                    "could not renew an earlier driver's lease-owning token by accessor (the login token needs update \
                     on auth/token/renew-accessor); retrying"
                );
                entry.due = Instant::now() + delay;
                entry.backoff = (entry.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Renews the lease-owning tokens for as long as their owner and the login live.
async fn keep_alive(owner: Weak<LeaseOwner>, session: Weak<Session>, wake: Arc<Notify>) {
    loop {
        let Some(due) = owner.upgrade().map(|o| o.next_due()) else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = wake.notified() => continue,
        }
        let (Some(owner), Some(session)) = (owner.upgrade(), session.upgrade()) else {
            return;
        };
        owner.renew_due(&session).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_accessor_never_the_token() {
        let owner = LeaseOwner::new(Some("libsecret-leases".to_owned()));
        *owner.lock_current() = Some(OwnerToken {
            token: Zeroizing::new("s.owner-token-secret-1f2e".to_owned()),
            accessor: "acc-123".to_owned(),
            generation: 1,
            ttl: Duration::from_secs(60),
            renewed: Instant::now(),
            due: Instant::now(),
            backoff: MIN_BACKOFF,
            created_ttl: Duration::from_secs(60),
            warned_capped: false,
        });
        let shown = format!("{owner:?}");
        assert!(shown.contains("acc-123"), "{shown}");
        assert!(!shown.contains("owner-token-secret"), "{shown}");
    }

    #[test]
    fn an_adopted_token_is_released_when_no_lease_needs_it_unless_pinned() {
        let owner = LeaseOwner::new(None);
        for (accessor, pinned) in [("a", false), ("b", true)] {
            owner.lock_adopted().insert(
                accessor.to_owned(),
                Adopted {
                    leases: BTreeSet::from(["l1".to_owned(), "l2".to_owned()]),
                    pinned,
                    due: Instant::now(),
                    backoff: MIN_BACKOFF,
                },
            );
        }
        owner.release("a", "l1");
        owner.release("b", "l1");
        assert_eq!(owner.lock_adopted().len(), 2, "l2 still needs both");
        owner.release("a", "l2");
        owner.release("b", "l2");
        let left: Vec<String> = owner.lock_adopted().keys().cloned().collect();
        assert_eq!(left, ["b"], "only the pinned one is kept");
    }
}
