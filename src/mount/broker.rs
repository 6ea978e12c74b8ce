//! The token broker: the driver logs in once per set of credentials ([`AuthScope`]) and lends the token to its mount
//! units over a root-only Unix socket, so 500 mounts cost one login per rule rather than 500 (and 500 tokens to
//! renew, and 500 uses of `secret_id_num_uses`), and only the driver ever reads a credential file.
//!
//! Protocol: one JSON line each way per request ([`Request`], [`Reply`]). A unit names the scope and the scope's
//! fingerprint (its credentials and rule as the unit's config has them, [`crate::config::Config::scope_fingerprint`]):
//! a unit started under another config is refused rather than lent a token for other paths. The reply carries the
//! token and what is left of its TTL.
//!
//! The token stays the driver's: a unit never renews or revokes it. It asks again at about 2/3 of the remaining TTL
//! and when Vault answers 403 to a dead token (naming a digest of that token, so the driver checks its own and logs
//! in again if it died). While the driver is down (a restart, an upgrade) a unit keeps reading with the token it has
//! until its TTL, retrying the broker with jittered backoff. That is also why the driver does not revoke its tokens
//! when it stops: units started by it may still be reading with them; they expire at their TTL.
//!
//! Peers are checked with `SO_PEERCRED`: only root and the driver's own uid are answered. The core ([`Broker`],
//! [`run`] over any [`Accept`]) needs no kernel; [`bind`] and [`ask`] are the thin socket edges.

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use zeroize::Zeroizing;

use crate::access::AuthScope;

/// The default control socket (under the root-only runtime directory of the package).
pub const DEFAULT_SOCKET: &str = "/run/docker-volume-libsecret/broker.sock";

/// The longest request or reply line read: requests are about 150 bytes, replies carry one token.
const MAX_LINE: usize = 16 * 1024;

/// Refusals of one kind are logged at most this often (with a count): hundreds of units of another config would
/// otherwise each log one per retry.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A scope as the protocol names it: `"default"` (`[vault]`) or `{"rule": N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireScope {
    Default,
    Rule(usize),
}

impl From<AuthScope> for WireScope {
    fn from(scope: AuthScope) -> Self {
        match scope {
            AuthScope::Default => WireScope::Default,
            AuthScope::Rule(index) => WireScope::Rule(index),
        }
    }
}

impl From<WireScope> for AuthScope {
    fn from(scope: WireScope) -> Self {
        match scope {
            WireScope::Default => AuthScope::Default,
            WireScope::Rule(index) => AuthScope::Rule(index),
        }
    }
}

/// A unit asking for the token of one scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub scope: WireScope,
    /// The scope's fingerprint as the unit's config has it.
    pub fingerprint: String,
    /// The SHA-256 (hex) of a token Vault answered 403 to, which lookup-self says is dead: the driver checks its
    /// own token if it is that one. Never the token itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_token: Option<String>,
}

/// Why the broker did not lend a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The peer is neither root nor the driver's uid.
    Peer,
    /// The request is not one line of the protocol's JSON.
    BadRequest,
    /// The driver does not log in with this scope (its config has no such rule, or the rule has no own auth).
    UnknownScope,
    /// The unit's config differs from the driver's for this scope.
    WrongFingerprint,
    /// The driver has no token for the scope yet (Vault unreachable, credentials rejected): ask again later.
    NoToken,
}

impl Refusal {
    /// Whether asking again later may succeed without a person changing anything.
    pub fn is_transient(self) -> bool {
        matches!(self, Refusal::NoToken)
    }
}

/// The broker's answer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    Token {
        token: Zeroizing<String>,
        /// What is left of the token's TTL; `None`: it never expires.
        ttl_seconds: Option<u64>,
    },
    Refused {
        refusal: Refusal,
        /// What to fix; never a token.
        message: String,
    },
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Token { ttl_seconds, .. } => f
                .debug_struct("Token")
                .field("token", &"<redacted>")
                .field("ttl_seconds", ttl_seconds)
                .finish(),
            Reply::Refused { refusal, message } => f
                .debug_struct("Refused")
                .field("refusal", refusal)
                .field("message", message)
                .finish(),
        }
    }
}

/// A token lent out, and what is left of its TTL (`None`: it never expires).
pub struct Lent {
    pub token: Zeroizing<String>,
    pub ttl: Option<Duration>,
}

/// Never prints the token.
impl std::fmt::Debug for Lent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lent")
            .field("token", &"<redacted>")
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Whatever holds the driver's login for one scope (a Vault session in the driver, a fake in tests).
#[async_trait]
pub trait TokenLender: Send + Sync {
    /// The current token. `dead_token` is the digest of a token a unit found dead: if it is the current one, the
    /// lender checks it and logs in again. `Err` says why there is no token (never a token).
    async fn lend(&self, dead_token: Option<&str>) -> Result<Lent, String>;
}

struct Entry {
    fingerprint: String,
    lender: Arc<dyn TokenLender>,
}

/// The request handling: which scopes are lent, and to whom.
pub struct Broker {
    scopes: HashMap<WireScope, Entry>,
    /// Besides root, the one uid answered: the driver's own.
    own_uid: u32,
    /// Per kind of refusal: when one was last logged, and how many since.
    logged: std::sync::Mutex<HashMap<Refusal, (std::time::Instant, u64)>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("scopes", &self.scopes.len())
            .field("own_uid", &self.own_uid)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker answering root and `own_uid` (the driver's effective uid).
    pub fn new(own_uid: u32) -> Self {
        Broker {
            scopes: HashMap::new(),
            own_uid,
            logged: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Logs a refusal, at most once per `REFUSAL_LOG_INTERVAL` per kind, counting the ones not logged.
    fn log_refusal(&self, refusal: Refusal, message: &str, peer_uid: Option<u32>) {
        let suppressed = {
            let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
            match logged.get_mut(&refusal) {
                Some((at, count)) if at.elapsed() < REFUSAL_LOG_INTERVAL => {
                    *count += 1;
                    return;
                }
                Some((at, count)) => {
                    *at = std::time::Instant::now();
                    std::mem::take(count)
                }
                None => {
                    logged.insert(refusal, (std::time::Instant::now(), 0));
                    0
                }
            }
        };
        tracing::warn!(?refusal, %message, peer_uid, suppressed, "token broker refused a request");
    }

    /// Lends `lender`'s token to units naming `scope` with `fingerprint`.
    pub fn add(&mut self, scope: AuthScope, fingerprint: String, lender: Arc<dyn TokenLender>) {
        self.scopes.insert(
            scope.into(),
            Entry {
                fingerprint,
                lender,
            },
        );
    }

    fn refused(refusal: Refusal, message: String) -> Reply {
        Reply::Refused { refusal, message }
    }

    /// Answers one request line from a peer with `peer_uid` (`None`: its credentials could not be read).
    pub async fn answer(&self, peer_uid: Option<u32>, line: &[u8]) -> Reply {
        match peer_uid {
            Some(uid) if uid == 0 || uid == self.own_uid => {}
            Some(uid) => {
                return Self::refused(
                    Refusal::Peer,
                    format!("uid {uid} may not ask for tokens: only root and the driver's uid"),
                )
            }
            None => {
                return Self::refused(
                    Refusal::Peer,
                    "the peer's credentials could not be read".to_owned(),
                )
            }
        }
        let request: Request = match serde_json::from_slice(line) {
            Ok(request) => request,
            // serde's message may quote the input: keep it out, whatever the peer sent.
            Err(error) => {
                return Self::refused(
                    Refusal::BadRequest,
                    format!(
                        "not a broker request (line {}, column {})",
                        error.line(),
                        error.column()
                    ),
                )
            }
        };
        let scope = AuthScope::from(request.scope);
        let Some(entry) = self.scopes.get(&request.scope) else {
            return Self::refused(
                Refusal::UnknownScope,
                format!("the driver does not log in with the credentials of {scope}; restart the mount with the driver's configuration"),
            );
        };
        if entry.fingerprint != request.fingerprint {
            return Self::refused(
                Refusal::WrongFingerprint,
                format!(
                    "the credentials or rule of {scope} differ between this mount's configuration and the driver's; \
                     the mount was started under another configuration"
                ),
            );
        }
        match entry.lender.lend(request.dead_token.as_deref()).await {
            Ok(lent) => Reply::Token {
                token: lent.token,
                ttl_seconds: lent.ttl.map(|ttl| ttl.as_secs()),
            },
            Err(reason) => Self::refused(
                Refusal::NoToken,
                format!("the driver has no Vault token for {scope} yet: {reason}"),
            ),
        }
    }

    /// Answers request lines on one connection until the peer closes it.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, peer_uid: Option<u32>, stream: S) {
        let (read, mut write) = tokio::io::split(stream);
        let mut lines = BufReader::new(read);
        loop {
            let mut line = Zeroizing::new(Vec::new());
            let read = (&mut lines)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .await;
            let reply = match read {
                Ok(0) | Err(_) => return,
                Ok(n) if n > MAX_LINE => Self::refused(
                    Refusal::BadRequest,
                    format!("request longer than {MAX_LINE} bytes"),
                ),
                Ok(_) => self.answer(peer_uid, &line).await,
            };
            let refused_peer = matches!(
                reply,
                Reply::Refused {
                    refusal: Refusal::Peer | Refusal::BadRequest,
                    ..
                }
            );
            if let Reply::Refused { refusal, message } = &reply {
                self.log_refusal(*refusal, message, peer_uid);
            }
            let Ok(mut bytes) = serde_json::to_vec(&reply).map(Zeroizing::new) else {
                return;
            };
            bytes.push(b'\n');
            if write.write_all(&bytes).await.is_err() || refused_peer {
                return;
            }
        }
    }
}

/// Where connections come from: a Unix listener, or an in-memory one in tests.
#[async_trait]
pub trait Accept: Send {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection and its peer's uid (`None`: unknown); `Err` ends [`run`].
    async fn accept(&mut self) -> std::io::Result<(Self::Stream, Option<u32>)>;
}

#[async_trait]
impl Accept for UnixListener {
    type Stream = UnixStream;
    async fn accept(&mut self) -> std::io::Result<(UnixStream, Option<u32>)> {
        loop {
            match UnixListener::accept(self).await {
                Ok((stream, _)) => {
                    let uid = stream.peer_cred().ok().map(|c| c.uid());
                    return Ok((stream, uid));
                }
                // A peer that went away before being accepted, or a transient lack of descriptors: not the end.
                Err(error) => {
                    tracing::warn!(%error, "accepting a token broker connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Answers connections from `listener` until `shutdown` completes.
pub async fn run<A: Accept>(broker: Arc<Broker>, listener: A, shutdown: impl Future<Output = ()>) {
    accept_until(listener, shutdown, "token broker", move |stream, uid| {
        let broker = broker.clone();
        async move { broker.serve(uid, stream).await }
    })
    .await;
}

/// Hands each connection from `listener` to a task of its own, `handle(stream, peer uid)`, until `shutdown`
/// completes. `what` names the socket in the log line of a listener that fails.
pub async fn accept_until<A, Handle, Handled>(
    mut listener: A,
    shutdown: impl Future<Output = ()>,
    what: &str,
    handle: Handle,
) where
    A: Accept,
    Handle: Fn(A::Stream, Option<u32>) -> Handled,
    Handled: Future<Output = ()> + Send + 'static,
{
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, uid) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "the {what} stopped accepting connections");
                    return;
                }
            },
            () = &mut shutdown => return,
        };
        tokio::spawn(handle(stream, uid));
    }
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: another driver answers on it; give this one its own socket path in the config")]
    InUse { what: &'static str, path: PathBuf },
    #[error("{what} {path}: its directory is not root-only ({reason}); what it serves would be reachable by others")]
    Directory {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// Binds the control socket at `path`: its directory created 0700 if missing (and refused unless owned by this uid
/// and closed to others), the socket 0600 from birth. A leftover socket of an earlier driver is replaced; one that
/// another live driver answers on is not.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    bind_root_only(path, "token broker socket")
}

/// Binds a root-only socket at `path` as [`bind`] does; `what` names it in errors.
pub fn bind_root_only(path: &Path, what: &'static str) -> Result<UnixListener, BindError> {
    let io = |source| BindError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(io)?;
    let metadata = std::fs::metadata(parent).map_err(io)?;
    let own_uid = nix::unistd::geteuid().as_raw();
    let mode = metadata.permissions().mode() & 0o777;
    {
        use std::os::unix::fs::MetadataExt;
        if metadata.uid() != own_uid || mode & 0o077 != 0 {
            return Err(BindError::Directory {
                what,
                path: path.to_owned(),
                reason: format!(
                    "{} is owned by uid {} with mode {mode:04o}",
                    parent.display(),
                    metadata.uid()
                ),
            });
        }
    }
    // A socket someone answers on is another driver's (one run in the foreground beside the service): not taken.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(BindError::InUse {
            what,
            path: path.to_owned(),
        });
    }
    crate::sys::private_socket::bind_private(path).map_err(io)
}

/// Why a unit got no token from the broker.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// The driver is not there (stopped, restarting) or did not answer in time: keep the current token, retry.
    #[error("the driver's token broker at {path} cannot be reached: {reason}")]
    Unreachable { path: PathBuf, reason: String },
    /// The broker answered with a refusal.
    #[error("the driver's token broker refused: {message}")]
    Refused { refusal: Refusal, message: String },
}

/// Asks the broker at `socket` once, waiting at most `timeout` in all.
pub async fn ask(socket: &Path, request: &Request, timeout: Duration) -> Result<Lent, AskError> {
    let unreachable = |reason: String| AskError::Unreachable {
        path: socket.to_owned(),
        reason,
    };
    let exchange = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        exchange(stream, request)
            .await
            .map_err(|e| unreachable(e.to_string()))
    };
    let reply = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {}s", timeout.as_secs_f32())))??;
    match reply {
        Reply::Token { token, ttl_seconds } => Ok(Lent {
            token,
            ttl: ttl_seconds.map(Duration::from_secs),
        }),
        Reply::Refused { refusal, message } => Err(AskError::Refused { refusal, message }),
    }
}

/// One request and its reply over `stream`.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    request: &Request,
) -> std::io::Result<Reply> {
    let (read, mut write) = tokio::io::split(stream);
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.flush().await?;
    let mut reply = Zeroizing::new(Vec::new());
    BufReader::new(read)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut reply)
        .await?;
    if reply.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the broker closed the connection without a reply",
        ));
    }
    // serde's message may quote the reply, which may hold a token: only its position is kept.
    serde_json::from_slice(&reply).map_err(|error| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not a broker reply (line {}, column {})",
                error.line(),
                error.column()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    const TOKEN: &str = "s.broker-test-token-9f3e";

    #[test]
    fn a_lent_token_never_shows_in_debug_output() {
        let lent = Lent {
            token: Zeroizing::new(TOKEN.to_owned()),
            ttl: Some(Duration::from_secs(30)),
        };
        let shown = format!("{lent:?} {lent:#?}");
        assert!(!shown.contains(TOKEN), "{shown}");
        assert!(
            shown.contains("redacted") && shown.contains("30s"),
            "{shown}"
        );
    }

    const FINGERPRINT: &str = "fp-rule-1";

    /// A lender with a fixed token (or none), counting calls and remembering dead-token hints.
    struct Fake {
        token: Option<&'static str>,
        calls: AtomicUsize,
        hints: Mutex<Vec<Option<String>>>,
    }

    impl Fake {
        fn new(token: Option<&'static str>) -> Arc<Fake> {
            Arc::new(Fake {
                token,
                calls: AtomicUsize::new(0),
                hints: Mutex::new(Vec::new()),
            })
        }
    }

    #[async_trait]
    impl TokenLender for Fake {
        async fn lend(&self, dead_token: Option<&str>) -> Result<Lent, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.hints
                .lock()
                .unwrap()
                .push(dead_token.map(str::to_owned));
            match self.token {
                Some(token) => Ok(Lent {
                    token: Zeroizing::new(token.to_owned()),
                    ttl: Some(Duration::from_secs(120)),
                }),
                None => Err("Vault at http://127.0.0.1:8200 cannot be reached".to_owned()),
            }
        }
    }

    fn broker(lender: Arc<Fake>) -> Broker {
        let mut broker = Broker::new(1000);
        broker.add(AuthScope::Rule(1), FINGERPRINT.to_owned(), lender);
        broker
    }

    fn request(scope: WireScope, fingerprint: &str) -> Vec<u8> {
        serde_json::to_vec(&Request {
            scope,
            fingerprint: fingerprint.to_owned(),
            dead_token: None,
        })
        .unwrap()
    }

    fn refusal(reply: &Reply) -> Option<Refusal> {
        match reply {
            Reply::Refused { refusal, .. } => Some(*refusal),
            Reply::Token { .. } => None,
        }
    }

    /// The whole reply as it goes over the wire, for "never the token" checks.
    fn wire(reply: &Reply) -> String {
        serde_json::to_string(reply).unwrap()
    }

    #[test]
    fn the_protocol_is_one_json_object_per_line_with_named_fields() {
        let line = String::from_utf8(request(WireScope::Rule(3), "abc")).unwrap();
        assert_eq!(line, r#"{"scope":{"rule":3},"fingerprint":"abc"}"#);
        let line = String::from_utf8(request(WireScope::Default, "abc")).unwrap();
        assert_eq!(line, r#"{"scope":"default","fingerprint":"abc"}"#);
        let reply: Reply =
            serde_json::from_str(r#"{"token":{"token":"t","ttl_seconds":30}}"#).unwrap();
        assert_eq!(
            reply,
            Reply::Token {
                token: Zeroizing::new("t".to_owned()),
                ttl_seconds: Some(30)
            }
        );
        assert!(!format!("{reply:?}").contains("\"t\""));
    }

    #[tokio::test]
    async fn root_and_the_drivers_uid_get_the_token_and_its_remaining_ttl() {
        let lender = Fake::new(Some(TOKEN));
        let broker = broker(lender.clone());
        for uid in [0, 1000] {
            let reply = broker
                .answer(Some(uid), &request(WireScope::Rule(1), FINGERPRINT))
                .await;
            assert_eq!(
                reply,
                Reply::Token {
                    token: Zeroizing::new(TOKEN.to_owned()),
                    ttl_seconds: Some(120)
                }
            );
        }
        assert_eq!(lender.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn other_users_and_unknown_peers_are_refused_before_the_lender_is_asked() {
        let lender = Fake::new(Some(TOKEN));
        let broker = broker(lender.clone());
        for uid in [Some(1), Some(999), Some(65534), None] {
            let reply = broker
                .answer(uid, &request(WireScope::Rule(1), FINGERPRINT))
                .await;
            assert_eq!(refusal(&reply), Some(Refusal::Peer), "uid {uid:?}");
            assert!(!wire(&reply).contains(TOKEN));
        }
        assert_eq!(lender.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_wrong_fingerprint_or_an_unknown_scope_is_refused_without_the_token() {
        let lender = Fake::new(Some(TOKEN));
        let broker = broker(lender.clone());
        let wrong = broker
            .answer(
                Some(0),
                &request(WireScope::Rule(1), "fp-of-another-config"),
            )
            .await;
        assert_eq!(refusal(&wrong), Some(Refusal::WrongFingerprint));
        assert!(wire(&wrong).contains("rules[1]"));
        for scope in [WireScope::Default, WireScope::Rule(0), WireScope::Rule(2)] {
            let unknown = broker.answer(Some(0), &request(scope, FINGERPRINT)).await;
            assert_eq!(refusal(&unknown), Some(Refusal::UnknownScope), "{scope:?}");
            assert!(!wire(&unknown).contains(TOKEN));
        }
        assert!(!wire(&wrong).contains(TOKEN));
        assert_eq!(lender.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_driver_without_a_token_yet_says_why_and_that_it_is_transient() {
        let broker = broker(Fake::new(None));
        let reply = broker
            .answer(Some(0), &request(WireScope::Rule(1), FINGERPRINT))
            .await;
        assert_eq!(refusal(&reply), Some(Refusal::NoToken));
        assert!(Refusal::NoToken.is_transient());
        assert!(!Refusal::WrongFingerprint.is_transient());
        assert!(wire(&reply).contains("cannot be reached"), "{reply:?}");
    }

    #[tokio::test]
    async fn garbage_is_refused_without_echoing_it() {
        let broker = broker(Fake::new(Some(TOKEN)));
        let secretish = format!(r#"{{"scope":"default","fingerprint":"x","token":"{TOKEN}"}}"#);
        for line in [b"not json".to_vec(), secretish.into_bytes(), Vec::new()] {
            let reply = broker.answer(Some(0), &line).await;
            assert_eq!(refusal(&reply), Some(Refusal::BadRequest));
            assert!(!wire(&reply).contains(TOKEN));
            assert!(!wire(&reply).contains("not json"));
        }
    }

    #[tokio::test]
    async fn the_dead_token_hint_reaches_the_lender() {
        let lender = Fake::new(Some(TOKEN));
        let broker = broker(lender.clone());
        let line = serde_json::to_vec(&Request {
            scope: WireScope::Rule(1),
            fingerprint: FINGERPRINT.to_owned(),
            dead_token: Some("abcd".to_owned()),
        })
        .unwrap();
        broker.answer(Some(0), &line).await;
        assert_eq!(*lender.hints.lock().unwrap(), vec![Some("abcd".to_owned())]);
    }

    /// In-memory connections: each a duplex pipe with a chosen peer uid.
    struct Pipes(tokio::sync::mpsc::Receiver<(tokio::io::DuplexStream, Option<u32>)>);

    #[async_trait]
    impl Accept for Pipes {
        type Stream = tokio::io::DuplexStream;
        async fn accept(&mut self) -> std::io::Result<(Self::Stream, Option<u32>)> {
            self.0
                .recv()
                .await
                .ok_or_else(|| std::io::Error::other("closed"))
        }
    }

    #[tokio::test]
    async fn run_answers_connections_until_shutdown_and_refused_peers_are_cut_off() {
        let (connect, accepted) = tokio::sync::mpsc::channel(4);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(run(
            Arc::new(broker(Fake::new(Some(TOKEN)))),
            Pipes(accepted),
            async move {
                let _ = stopped.await;
            },
        ));
        let ask_as = |uid: Option<u32>, fingerprint: &'static str| {
            let connect = connect.clone();
            async move {
                let (ours, theirs) = tokio::io::duplex(4096);
                connect.send((theirs, uid)).await.unwrap();
                let request = Request {
                    scope: WireScope::Rule(1),
                    fingerprint: fingerprint.to_owned(),
                    dead_token: None,
                };
                exchange(ours, &request).await.unwrap()
            }
        };
        assert!(matches!(
            ask_as(Some(0), FINGERPRINT).await,
            Reply::Token { .. }
        ));
        assert_eq!(
            refusal(&ask_as(Some(4242), FINGERPRINT).await),
            Some(Refusal::Peer)
        );
        assert_eq!(
            refusal(&ask_as(Some(0), "other").await),
            Some(Refusal::WrongFingerprint)
        );
        stop.send(()).unwrap();
        serving.await.unwrap();
    }

    #[tokio::test]
    async fn over_a_real_socket_the_directory_is_root_only_and_the_socket_0600() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/broker.sock");
        let listener = bind(&path).unwrap();
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let own = nix::unistd::geteuid().as_raw();
        let serving = tokio::spawn(run(
            Arc::new(broker(Fake::new(Some(TOKEN)))),
            listener,
            std::future::pending(),
        ));
        // This process is root or the driver's uid (own_uid is 1000 in `broker`; run as root in CI).
        let request = Request {
            scope: WireScope::Rule(1),
            fingerprint: FINGERPRINT.to_owned(),
            dead_token: None,
        };
        let answer = ask(&path, &request, Duration::from_secs(5)).await;
        if own == 0 || own == 1000 {
            assert_eq!(answer.unwrap().token.as_str(), TOKEN);
        } else {
            assert!(matches!(
                answer,
                Err(AskError::Refused {
                    refusal: Refusal::Peer,
                    ..
                })
            ));
        }
        // A live broker's socket is not taken over; once it is gone, a leftover socket is replaced.
        assert!(matches!(bind(&path), Err(BindError::InUse { .. })));
        serving.abort();
        let _ = serving.await;
        bind(&path).unwrap();
        // A directory others may enter is refused.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            bind(&open.join("broker.sock")),
            Err(BindError::Directory { .. })
        ));
    }

    #[tokio::test]
    async fn a_missing_driver_is_unreachable_and_names_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let request = Request {
            scope: WireScope::Default,
            fingerprint: "x".to_owned(),
            dead_token: None,
        };
        let error = ask(&path, &request, Duration::from_secs(2))
            .await
            .err()
            .unwrap();
        assert!(matches!(error, AskError::Unreachable { .. }));
        assert!(error.to_string().contains("absent.sock"), "{error}");
    }
}
