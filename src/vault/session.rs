//! The token's lifecycle, after Vault Agent's rules.
//!
//! - A renewable token is renewed at about 2/3 of its TTL (with jitter, so many hosts do not renew in step).
//! - A token that cannot be renewed any more (refused, not renewable, or capped by its max TTL) is replaced by a new
//!   login at about 2/3 of its TTL, when the auth method can log in (AppRole, cert) or the token file can be re-read.
//! - Failed renewals and logins are retried with jittered exponential backoff (1 s up to 5 min).
//! - A request answered 403 because the token died anyway (revoked, expired during an outage) gets a new token and is
//!   retried once, so a container never sees a failure a valid login could have prevented.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use rustify::endpoint::Endpoint;
use tokio::sync::watch;
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use super::auth::{self, Auth, AuthError, Login};
use super::status_of;
use super::transport::Transport;

/// Backoff bounds for failed renewals and logins (Vault Agent's defaults).
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A 403 is checked against lookup-self at most this often; in between it is a policy denial.
const VERIFY_INTERVAL: Duration = Duration::from_secs(5);
/// How often a token that never expires, or a token file, is looked at again.
const IDLE_CHECK: Duration = Duration::from_secs(300);

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
}

/// `0.75..=1.0` of `duration`: spreads renewals and retries.
fn jitter(duration: Duration) -> Duration {
    duration.mul_f64(0.75 + fastrand::f64() * 0.25)
}

impl Session {
    /// Logs in (or reads and looks up the token), failing with what to fix.
    pub async fn start(
        transport: Transport,
        auth: Auth,
        namespace: Option<String>,
    ) -> Result<Arc<Session>, AuthError> {
        // A token method's login is its lookup-self; a minted token's login reply says the same.
        let login = auth.login(&transport, namespace.as_deref()).await?;
        tracing::info!(
            vault_addr = %transport.current_address(),
            auth = %auth.describe(),
            policies = ?login.policies,
            ttl_seconds = login.ttl.as_secs(),
            renewable = login.renewable,
            "Vault token accepted"
        );
        let (changed, _) = watch::channel(0);
        Ok(Arc::new(Session {
            transport,
            auth,
            namespace,
            state: RwLock::new(TokenState::new(login, 0)),
            replacing: tokio::sync::Mutex::new(()),
            changed,
            closed: AtomicBool::new(false),
        }))
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
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
        let (token, generation) = self.token();
        let result = self.transport.exec(&token, namespace, &make).await;
        match result {
            Err(error) if status_of(&error) == Some(403) && self.auth.can_replace_token() => {
                if !self.token_is_dead(generation).await {
                    return Err(error);
                }
                if let Err(reason) = self.replace_token(generation).await {
                    tracing::warn!(%reason, "the Vault token is no longer valid and could not be replaced");
                    return Err(error);
                }
                let (token, _) = self.token();
                self.transport.exec(&token, namespace, &make).await
            }
            other => other,
        }
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

    /// Replaces the token of `generation` by a new login, unless another task already has.
    async fn replace_token(&self, generation: u64) -> Result<(), AuthError> {
        let _replacing = self.replacing.lock().await;
        if self.is_closed() {
            return Err(AuthError::Unavailable(
                "the Vault login was ended (its token revoked)".to_owned(),
            ));
        }
        if self.token().1 != generation {
            return Ok(());
        }
        let login = self.auth.login(&self.transport, self.namespace()).await?;
        tracing::info!(auth = %self.auth.describe(), ttl_seconds = login.ttl.as_secs(), "logged in to Vault again");
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
        let (token, _) = self.token();
        auth::revoke_self(&self.transport, self.namespace(), &token).await
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
    // A renewal that granted under half of the login's TTL means the max TTL is close: log in instead.
    let capped = state.ttl < state.login_ttl / 2;
    let next = if state.renewable && !(capped && session.auth.mints_tokens()) {
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
    let mut warned_expiry = false;
    loop {
        let Some(strong) = session.upgrade() else {
            return;
        };
        if strong.is_closed() {
            return;
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
                backoff = (backoff * 2).min(MAX_BACKOFF);
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
    session.replace_token(generation).await
}
