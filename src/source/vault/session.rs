//! The token's lifecycle, after Vault Agent's rules.
//!
//! - A renewable token is renewed at about 2/3 of its TTL (with jitter, so many hosts do not renew in step).
//! - A token that cannot be renewed any more (refused, not renewable, or capped by its max TTL) is replaced by a new
//!   login at about 2/3 of its TTL, when the auth method can log in (AppRole, cert) or the token file can be re-read.
//! - Failed renewals and logins are retried with jittered exponential backoff (1 s up to 5 min).
//! - A request answered 403 because the token died anyway (revoked, expired during an outage) gets a new token and is
//!   retried once, so a container never sees a failure a valid login could have prevented.
//! - A session starts without a token: Vault being unreachable, sealed or rejecting the credentials when the driver
//!   starts is not fatal. The first login is retried in the background with jittered backoff (1 s up to
//!   `LOGIN_MAX_BACKOFF`), and a request that finds no token tries at once (at most once per `ON_DEMAND_INTERVAL`),
//!   so reads recover as soon as Vault answers. Credential files are read again at every attempt.
//! - A mount unit's token is lent by the driver ([`Auth::Lent`], src/mount/broker.rs): it is never renewed nor revoked
//!   here; the broker is asked again at about 2/3 of what is left of its TTL and when Vault says it is dead, and
//!   while the driver is away the unit keeps its token and retries with jittered backoff (1 s up to
//!   `LENT_MAX_BACKOFF`). The driver lends its own token with [`Session::lend`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use rustify::endpoint::Endpoint;
use tokio::sync::watch;
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use super::auth::{self, Auth, AuthError, Login};
use super::health::{Trouble, VaultHealth};
use super::status_of;
use super::transport::Transport;

/// Backoff bounds for failed renewals and logins (Vault Agent's defaults).
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A 403 is checked against lookup-self at most this often; in between it is a policy denial.
const VERIFY_INTERVAL: Duration = Duration::from_secs(5);
/// How often a token that never expires, or a token file, is looked at again.
const IDLE_CHECK: Duration = Duration::from_secs(300);
/// The longest wait between attempts at a first login: short, so a host whose Vault starts late recovers quickly.
const LOGIN_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A request that finds no token tries to log in itself, but not more often than this (a container probing names
/// while Vault is down must not turn into a login storm).
const ON_DEMAND_INTERVAL: Duration = Duration::from_secs(1);
/// The longest wait between asks of the driver's token broker: a local socket, cheap to ask, and a restarted driver
/// should be found well before a lent token runs out.
const LENT_MAX_BACKOFF: Duration = Duration::from_secs(10);

struct TokenState {
    token: Zeroizing<String>,
    /// Bumped on every new token, so concurrent requests replace a dead token once.
    generation: u64,
    ttl: Duration,
    renewable: bool,
    obtained: Instant,
    /// The TTL the last login granted; renewals granting much less mean the max TTL is near.
    login_ttl: Duration,
    /// When lookup-self last confirmed the token.
    verified: Instant,
}

impl TokenState {
    /// No token yet (generation 0): the first login has not succeeded.
    fn none() -> TokenState {
        let now = Instant::now();
        TokenState {
            token: Zeroizing::new(String::new()),
            generation: 0,
            ttl: Duration::ZERO,
            renewable: false,
            obtained: now,
            login_ttl: Duration::ZERO,
            verified: now,
        }
    }

    fn new(login: Login, generation: u64) -> TokenState {
        let now = Instant::now();
        TokenState {
            token: login.token,
            generation,
            ttl: login.ttl,
            renewable: login.renewable,
            obtained: now,
            login_ttl: login.ttl,
            verified: now,
        }
    }

    fn expires_in(&self) -> Option<Duration> {
        (!self.ttl.is_zero()).then(|| self.ttl.saturating_sub(self.obtained.elapsed()))
    }
}

/// A Vault login shared by every read: the transport, the auth method and the current token.
pub struct Session {
    transport: Transport,
    auth: Auth,
    /// The configured namespace: logins and token calls happen there.
    namespace: Option<String>,
    state: RwLock<TokenState>,
    /// Serialises token replacement; holds the generation last replaced.
    replacing: tokio::sync::Mutex<()>,
    changed: watch::Sender<u64>,
    /// Set when the login's token is revoked: no renewal or new login follows.
    closed: AtomicBool,
    health: VaultHealth,
    /// When a login was last tried while there was no token, and why it failed (for requests arriving meanwhile).
    last_attempt: std::sync::Mutex<Option<(Instant, String)>>,
}

/// `0.75..=1.0` of `duration`: spreads renewals and retries.
fn jitter(duration: Duration) -> Duration {
    duration.mul_f64(0.75 + fastrand::f64() * 0.25)
}

impl Session {
    /// A session with no token yet: [`login_now`](Self::login_now) or the lifecycle logs in.
    pub fn new(transport: Transport, auth: Auth, namespace: Option<String>) -> Arc<Session> {
        let (changed, _) = watch::channel(0);
        let health = VaultHealth::new(auth.describe());
        Arc::new(Session {
            transport,
            auth,
            namespace,
            state: RwLock::new(TokenState::none()),
            replacing: tokio::sync::Mutex::new(()),
            changed,
            closed: AtomicBool::new(false),
            health,
            last_attempt: std::sync::Mutex::new(None),
        })
    }

    /// Logs in now unless a token is already held, failing with what to fix (the driver's first contact in the
    /// foreground, and tests).
    pub async fn login_now(&self) -> Result<(), AuthError> {
        let _replacing = self.replacing.lock().await;
        if self.has_token() {
            return Ok(());
        }
        self.first_login().await
    }

    /// Whether a login has succeeded (the token may have died since; requests find that out).
    pub fn has_token(&self) -> bool {
        self.token().1 != 0
    }

    /// What keeps this login from reading, and since when, for `STATUS=`.
    pub fn health(&self) -> &VaultHealth {
        &self.health
    }

    /// One attempt at the first login; the caller holds `replacing`.
    async fn first_login(&self) -> Result<(), AuthError> {
        if self.is_closed() {
            return Err(AuthError::Unavailable(
                "the Vault login was ended".to_owned(),
            ));
        }
        let attempt = self.auth.login(&self.transport, self.namespace()).await;
        let failure = match attempt {
            Ok(login) if self.auth.is_lent() => {
                tracing::info!(
                    auth = %self.auth.describe(),
                    ttl_seconds = login.ttl.as_secs(),
                    "got a Vault token from the driver"
                );
                self.health.logged_in();
                self.install(login, 0);
                *self.last_attempt.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Ok(());
            }
            Ok(login) => {
                tracing::info!(
                    vault_addr = %self.transport.current_address(),
                    auth = %self.auth.describe(),
                    policies = ?login.policies,
                    ttl_seconds = login.ttl.as_secs(),
                    renewable = login.renewable,
                    "Vault token accepted"
                );
                self.health.logged_in();
                self.install(login, 0);
                *self.last_attempt.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Ok(());
            }
            Err(error) => error,
        };
        let trouble = match failure {
            AuthError::Unavailable(_) => Trouble::Unreachable,
            AuthError::Rejected(_) | AuthError::Credential(_) => Trouble::Rejected,
        };
        self.health.failed(trouble, &failure.to_string());
        *self.last_attempt.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), failure.to_string()));
        Err(failure)
    }

    /// A token for a request: the current one, or a login tried now when there is none (at most once per
    /// `ON_DEMAND_INTERVAL`; meanwhile requests fail at once with the last reason).
    async fn ensure_token(&self) -> Result<(), String> {
        if self.has_token() {
            return Ok(());
        }
        let recent = |session: &Session| {
            session
                .last_attempt
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .filter(|(at, _)| at.elapsed() < ON_DEMAND_INTERVAL)
                .map(|(_, reason)| reason.clone())
        };
        if let Some(reason) = recent(self) {
            return Err(reason);
        }
        let _replacing = self.replacing.lock().await;
        if self.has_token() {
            return Ok(());
        }
        if let Some(reason) = recent(self) {
            return Err(reason);
        }
        self.first_login().await.map_err(|error| error.to_string())
    }

    /// The auth method as logs name it (never a credential).
    pub fn describe_auth(&self) -> String {
        self.auth.describe()
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// Whether a token is held, the TTL left of it and when the lifecycle renews or replaces it (about 2/3 of its
    /// TTL, before jitter), as this process counts them (`status`; asks nothing of Vault).
    pub fn token_times(&self) -> (bool, Option<Duration>, Option<Duration>) {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        if state.generation == 0 {
            return (false, None, None);
        }
        let left = state.expires_in();
        let next = left.map(|_| {
            state
                .ttl
                .mul_f64(2.0 / 3.0)
                .saturating_sub(state.obtained.elapsed())
        });
        (true, left, next)
    }

    /// The held token's policies and the TTL left of it, as Vault answers lookup-self now (`check-config`).
    pub async fn token_summary(&self) -> Result<(Vec<String>, Duration), AuthError> {
        let (token, _) = self.token();
        let info = auth::lookup_info(&self.transport, self.namespace(), &token).await?;
        Ok((info.policies, Duration::from_secs(info.ttl)))
    }

    fn token(&self) -> (Zeroizing<String>, u64) {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        (state.token.clone(), state.generation)
    }

    fn install(&self, login: Login, replaced: u64) {
        let generation = replaced + 1;
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            *state = TokenState::new(login, generation);
        }
        self.changed.send_replace(generation);
    }

    /// Sends a request with the current token in `namespace`; a 403 from a dead token gets a new token and one retry.
    pub async fn exec<E: Endpoint>(
        &self,
        namespace: Option<&str>,
        make: impl Fn() -> E,
    ) -> Result<E::Response, ClientError> {
        let (token, generation) = self.request_token().await?;
        let result = self.observe(self.transport.exec(&token, namespace, &make).await);
        match result {
            Err(error) if status_of(&error) == Some(403) && self.auth.can_replace_token() => {
                if !self.token_is_dead(generation).await {
                    return Err(error);
                }
                if let Err(reason) = self.replace_token(generation, Some(&token)).await {
                    tracing::warn!(%reason, "the Vault token is no longer valid and could not be replaced");
                    return Err(error);
                }
                let (token, _) = self.token();
                self.observe(self.transport.exec(&token, namespace, &make).await)
            }
            other => other,
        }
    }

    /// [`exec`](Self::exec) for a request Vault may answer with no body (204), such as a revocation; no retry.
    pub async fn exec_empty<E: Endpoint>(
        &self,
        namespace: Option<&str>,
        make: impl Fn() -> E,
    ) -> Result<(), ClientError> {
        let (token, _) = self.request_token().await?;
        self.observe(self.transport.exec_empty(&token, namespace, &make).await)
    }

    /// Sends a request with `token` rather than the login's (a lease-owning token): no retry, since only its owner
    /// can replace it; Vault's answer counts for the health report like any other.
    pub async fn exec_with<E: Endpoint>(
        &self,
        token: &str,
        namespace: Option<&str>,
        make: impl Fn() -> E,
    ) -> Result<E::Response, ClientError> {
        self.observe(self.transport.exec(token, namespace, &make).await)
    }

    /// The token (and its generation) a request is sent with, logging in first if need be. Requests while Vault
    /// cannot log us in are "unavailable" (EIO), whatever the reason.
    async fn request_token(&self) -> Result<(Zeroizing<String>, u64), ClientError> {
        if let Err(reason) = self.ensure_token().await {
            return Err(ClientError::APIError {
                code: 503,
                errors: vec![format!("not logged in to Vault: {reason}")],
            });
        }
        Ok(self.token())
    }

    /// Notes whether Vault answered, for the health report.
    fn observe<T>(&self, result: Result<T, ClientError>) -> Result<T, ClientError> {
        match &result {
            Ok(_) => self.health.answered(),
            Err(error) => match status_of(error) {
                Some(code) if code < 500 => self.health.answered(),
                _ => self
                    .health
                    .failed(Trouble::Unreachable, &super::describe_client_error(error)),
            },
        }
        result
    }

    /// Whether the token of `generation` is dead (a 403 then means "log in again", not "policy says no").
    async fn token_is_dead(&self, generation: u64) -> bool {
        let (token, current) = self.token();
        if current != generation {
            return true;
        }
        if self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .verified
            .elapsed()
            < VERIFY_INTERVAL
        {
            return false;
        }
        match auth::lookup_info(&self.transport, self.namespace(), &token).await {
            Ok(_) => {
                self.state
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .verified = Instant::now();
                false
            }
            Err(AuthError::Rejected(_)) => true,
            Err(_) => false,
        }
    }

    /// Replaces the token of `generation` by a new login, unless another task already has. `dead`: the token, when
    /// Vault said it is dead (a lent token's broker is told).
    async fn replace_token(&self, generation: u64, dead: Option<&str>) -> Result<(), AuthError> {
        let _replacing = self.replacing.lock().await;
        if self.is_closed() {
            return Err(AuthError::Unavailable(
                "the Vault login was ended (its token revoked)".to_owned(),
            ));
        }
        if self.token().1 != generation {
            return Ok(());
        }
        let login = self
            .auth
            .login_replacing(&self.transport, self.namespace(), dead)
            .await?;
        if self.auth.is_lent() {
            tracing::debug!(auth = %self.auth.describe(), ttl_seconds = login.ttl.as_secs(), "got a new token from the driver");
        } else {
            tracing::info!(auth = %self.auth.describe(), ttl_seconds = login.ttl.as_secs(), "logged in to Vault again");
        }
        self.health.logged_in();
        self.install(login, generation);
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Revokes the token this session obtained by logging in (AppRole, cert), so tokens do not pile up in Vault until
    /// their TTL ends. An operator's token (token_file, inline) is never revoked. Ends the session: no renewal or new
    /// login follows, so a request after this fails. Bounded by `vault.timeout`; the result is logged, never the token.
    pub async fn revoke_login(&self) {
        if !self.auth.mints_tokens() {
            tracing::debug!(auth = %self.auth.describe(), "the Vault token is the operator's: not revoked");
            return;
        }
        // Closed first, so a login under way installs its token before the revocation below, and none follows.
        self.closed.store(true, Ordering::SeqCst);
        self.changed.send_modify(|_| {});
        let timeout = self.transport.timeout();
        match tokio::time::timeout(timeout, self.revoke_current()).await {
            Ok(Ok(())) => {
                tracing::info!(auth = %self.auth.describe(), "revoked the Vault token of this login")
            }
            Ok(Err(reason)) => {
                tracing::warn!(%reason, "could not revoke the Vault token of this login; it lives until its TTL ends")
            }
            Err(_) => tracing::warn!(
                timeout_seconds = timeout.as_secs_f32(),
                "Vault did not answer the revocation of this login's token in time; it lives until its TTL ends"
            ),
        }
    }

    async fn revoke_current(&self) -> Result<(), AuthError> {
        let _replacing = self.replacing.lock().await;
        let (token, generation) = self.token();
        if generation == 0 {
            // Never logged in: nothing to revoke.
            return Ok(());
        }
        auth::revoke_self(&self.transport, self.namespace(), &token).await
    }

    /// The current token and what is left of its TTL (`None`: it never expires), for the driver's token broker to
    /// lend to a mount unit. Without a token a login is tried now (at most once per `ON_DEMAND_INTERVAL`). `dead`:
    /// the digest of a token a unit found dead; if it is this session's, it is checked with lookup-self (at most
    /// once per `VERIFY_INTERVAL`, so units cannot force logins) and replaced if Vault says so.
    pub async fn lend(
        &self,
        dead: Option<&str>,
    ) -> Result<(Zeroizing<String>, Option<Duration>), String> {
        self.ensure_token().await?;
        if let Some(dead) = dead {
            let (token, generation) = self.token();
            if crate::names::sha256_hex(&token) == dead && self.token_is_dead(generation).await {
                tracing::info!(auth = %self.auth.describe(), "a mount unit found the Vault token dead; logging in again");
                self.replace_token(generation, Some(&token))
                    .await
                    .map_err(|error| error.to_string())?;
            }
        }
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        Ok((state.token.clone(), state.expires_in()))
    }

    /// Keeps the token alive for as long as the session lives.
    pub fn spawn_lifecycle(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let session = Arc::downgrade(self);
        let changed = self.changed.subscribe();
        tokio::spawn(lifecycle(session, changed))
    }
}

/// What the lifecycle does next with the current token.
enum Next {
    Renew,
    Replace,
    /// Nothing to do before the token changes or `IDLE_CHECK` passes.
    Idle,
}

fn plan(session: &Session) -> (Duration, Next, u64) {
    let state = session.state.read().unwrap_or_else(|p| p.into_inner());
    let Some(_) = state.expires_in() else {
        return (IDLE_CHECK, Next::Idle, state.generation);
    };
    let due = jitter(state.ttl.mul_f64(2.0 / 3.0)).saturating_sub(state.obtained.elapsed());
    // A renewal that granted clearly less than the login's TTL means the max TTL caps it: log in instead, before
    // the token reaches its max TTL (where Vault refuses renewals with a 500, not a 4xx).
    let capped = state.ttl.as_secs_f64() < state.login_ttl.as_secs_f64() * 0.75;
    let next = if session.auth.is_lent() {
        // The driver's token: the driver renews it; ask the broker again for it (or its successor).
        Next::Replace
    } else if state.renewable && !(capped && session.auth.mints_tokens()) {
        Next::Renew
    } else if session.auth.mints_tokens() {
        Next::Replace
    } else if matches!(session.auth, Auth::TokenFile(_)) {
        // Nothing to renew: look at the token file again before the token runs out.
        return (due.min(IDLE_CHECK), Next::Replace, state.generation);
    } else {
        return (IDLE_CHECK, Next::Idle, state.generation);
    };
    (due, next, state.generation)
}

async fn lifecycle(session: Weak<Session>, mut changed: watch::Receiver<u64>) {
    let mut backoff = MIN_BACKOFF;
    let mut login_backoff = MIN_BACKOFF;
    let mut warned_expiry = false;
    let (max_backoff, max_login_backoff) = match session.upgrade() {
        Some(session) if session.auth.is_lent() => (LENT_MAX_BACKOFF, LENT_MAX_BACKOFF),
        _ => (MAX_BACKOFF, LOGIN_MAX_BACKOFF),
    };
    loop {
        let Some(strong) = session.upgrade() else {
            return;
        };
        if strong.is_closed() {
            return;
        }
        if !strong.has_token() {
            // The first login: retried until it works, more and more slowly up to LOGIN_MAX_BACKOFF. Each failure
            // is reported by the session's health (rate-limited there).
            let outcome = {
                let _replacing = strong.replacing.lock().await;
                if strong.has_token() {
                    Ok(())
                } else {
                    strong.first_login().await
                }
            };
            drop(strong);
            if outcome.is_err() {
                let delay = jitter(login_backoff);
                login_backoff = (login_backoff * 2).min(max_login_backoff);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    result = changed.changed() => if result.is_err() { return },
                }
            }
            continue;
        }
        let (wait, next, generation) = plan(&strong);
        drop(strong);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            result = changed.changed() => {
                if result.is_err() {
                    return;
                }
                backoff = MIN_BACKOFF;
                continue;
            }
        }
        let Some(session) = session.upgrade() else {
            return;
        };
        if session.is_closed() {
            return;
        }
        let outcome = match next {
            Next::Idle => Ok(()),
            Next::Renew => renew(&session, generation).await,
            Next::Replace => replace(&session, generation).await,
        };
        match outcome {
            Ok(()) => {
                backoff = MIN_BACKOFF;
                warned_expiry = false;
            }
            Err(reason) => {
                let expires_in = session
                    .state
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .expires_in();
                if !warned_expiry {
                    tracing::warn!(
                        %reason,
                        expires_in_seconds = expires_in.map(|d| d.as_secs()),
                        retry_in_seconds = backoff.as_secs(),
                        "could not keep the Vault token alive; retrying"
                    );
                    warned_expiry = true;
                }
                let delay = jitter(backoff);
                backoff = (backoff * 2).min(max_backoff);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    result = changed.changed() => if result.is_err() { return },
                }
            }
        }
    }
}

async fn renew(session: &Session, generation: u64) -> Result<(), AuthError> {
    let (token, current) = session.token();
    if current != generation {
        return Ok(());
    }
    match auth::renew(&session.transport, session.namespace(), &token).await {
        Ok((ttl, renewable)) => {
            tracing::debug!(ttl_seconds = ttl.as_secs(), "Vault token renewed");
            let mut state = session.state.write().unwrap_or_else(|p| p.into_inner());
            if state.generation == generation {
                state.ttl = ttl;
                state.renewable = renewable;
                state.obtained = Instant::now();
                state.verified = Instant::now();
            }
            Ok(())
        }
        Err(AuthError::Rejected(reason)) if session.auth.can_replace_token() => {
            tracing::info!(%reason, "Vault refused to renew the token; logging in again");
            replace(session, generation).await
        }
        // Vault answers a renewal past the token's max TTL with a 500 ("past the max TTL, cannot renew"). A method
        // that mints tokens can always log in instead; when Vault is down, that login fails too and is retried.
        Err(error) if session.auth.mints_tokens() => {
            tracing::info!(reason = %error, "could not renew the Vault token; logging in again");
            replace(session, generation).await
        }
        Err(error) => Err(error),
    }
}

/// A new token from the auth method (a login, or the token file read again).
async fn replace(session: &Session, generation: u64) -> Result<(), AuthError> {
    if let Auth::TokenFile(_) = session.auth {
        // Only switch when the file holds a different token; the same token needs no reinstall.
        let login = session
            .auth
            .login(&session.transport, session.namespace())
            .await?;
        let (token, current) = session.token();
        if current == generation && *login.token != *token {
            tracing::info!("the token file holds a new token; using it");
            session.install(login, generation);
        } else {
            let mut state = session.state.write().unwrap_or_else(|p| p.into_inner());
            state.ttl = login.ttl;
            state.renewable = login.renewable;
            state.obtained = Instant::now();
        }
        return Ok(());
    }
    session.replace_token(generation, None).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::AuthScope;
    use crate::config::VaultConfig;
    use crate::mount::broker::{self, Broker, Lent, TokenLender};
    use async_trait::async_trait;

    const TOKEN: &str = "s.lent-session-test-5e1a";

    /// Lends a fixed token with a fixed TTL (`Some(None)`: it never expires), or (`None`) refuses for lack of one.
    struct Fixed(Option<Option<Duration>>);

    #[async_trait]
    impl TokenLender for Fixed {
        async fn lend(&self, _dead: Option<&str>) -> Result<Lent, String> {
            match self.0 {
                Some(ttl) => Ok(Lent {
                    token: Zeroizing::new(TOKEN.to_owned()),
                    ttl,
                }),
                None => Err("Vault at http://127.0.0.1:9 cannot be reached".to_owned()),
            }
        }
    }

    /// A unit's session borrowing `[vault]`'s token (fingerprint "fp") from a broker lending `lender`'s; Vault
    /// itself (a closed port) is never needed.
    async fn unit_session(
        dir: &std::path::Path,
        lender: Option<Fixed>,
    ) -> (Arc<Session>, Option<tokio::task::JoinHandle<()>>) {
        let socket = dir.join("run/broker.sock");
        let serving = lender.map(|lender| {
            let mut lending = Broker::new(0);
            lending.add(AuthScope::Default, "fp".to_owned(), Arc::new(lender));
            tokio::spawn(broker::run(
                Arc::new(lending),
                broker::bind(&socket).unwrap(),
                std::future::pending(),
            ))
        });
        let config = VaultConfig {
            addr: vec!["http://127.0.0.1:9".to_owned()],
            timeout: Duration::from_secs(5),
            ..VaultConfig::default()
        };
        let auth = Auth::Lent(auth::Lending {
            socket,
            scope: AuthScope::Default,
            fingerprint: "fp".to_owned(),
        });
        (
            Session::new(Transport::new(&config).unwrap(), auth, None),
            serving,
        )
    }

    #[tokio::test]
    async fn a_lent_token_is_never_renewed_and_is_asked_for_again_at_two_thirds_of_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let (session, _serving) =
            unit_session(dir.path(), Some(Fixed(Some(Some(Duration::from_secs(30)))))).await;
        session.login_now().await.unwrap();
        assert_eq!(session.token().0.as_str(), TOKEN);
        let (due, next, _) = plan(&session);
        assert!(
            matches!(next, Next::Replace),
            "a lent token is never renewed"
        );
        assert!(
            due <= Duration::from_secs(20),
            "asked again by 2/3 of 30 s: {due:?}"
        );
        assert!(
            !session.auth.mints_tokens(),
            "never revoked as a login of its own"
        );
    }

    #[tokio::test]
    async fn a_lent_token_that_never_expires_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (session, _serving) = unit_session(dir.path(), Some(Fixed(Some(None)))).await;
        session.login_now().await.unwrap();
        assert!(matches!(plan(&session).1, Next::Idle));
    }

    #[tokio::test]
    async fn no_driver_or_a_driver_without_a_token_is_unavailable_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let (absent, _) = unit_session(dir.path(), None).await;
        let error = absent.login_now().await.unwrap_err();
        assert!(matches!(error, AuthError::Unavailable(_)), "{error}");
        assert!(error.to_string().contains("broker.sock"), "{error}");
        let (empty, _serving) = unit_session(dir.path(), Some(Fixed(None))).await;
        let error = empty.login_now().await.unwrap_err();
        assert!(matches!(error, AuthError::Unavailable(_)), "{error}");
        assert!(error.to_string().contains("cannot be reached"), "{error}");
        assert!(!empty.has_token());
    }

    #[tokio::test]
    async fn another_configs_fingerprint_is_rejected_without_the_token_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/broker.sock");
        let mut lending = Broker::new(0);
        lending.add(
            AuthScope::Default,
            "the-drivers-fp".to_owned(),
            Arc::new(Fixed(Some(Some(Duration::from_secs(30))))),
        );
        let _serving = tokio::spawn(broker::run(
            Arc::new(lending),
            broker::bind(&socket).unwrap(),
            std::future::pending(),
        ));
        let (session, _) = unit_session(dir.path(), None).await;
        let error = session.login_now().await.unwrap_err();
        assert!(matches!(error, AuthError::Rejected(_)), "{error}");
        assert!(!error.to_string().contains(TOKEN), "{error}");
    }
}
