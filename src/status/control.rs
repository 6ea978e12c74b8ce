//! The driver's control socket: `docker-volume-libsecret status` asks it for the [`DriverStatus`], and mount units
//! report their filesystem's health to it. Root-only: the socket is 0600 in a 0700 directory
//! ([`crate::mount::broker::bind_root_only`]), and every peer's uid is checked with `SO_PEERCRED` as well.
//!
//! Protocol: one JSON line each way per request ([`ControlRequest`], [`ControlReply`]). A peer that is not root
//! (nor the driver's uid), or a line that is not a request, gets `{"error": ...}` saying what is wrong and the
//! connection is closed; the driver keeps serving everyone else. The core ([`Control`]) needs no kernel; [`run`]
//! serves any [`Accept`], and [`ask`] is the client edge.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{DriverStatus, HealthState};
use crate::mount::broker::{accept_until, Accept};

/// The default control socket, beside the token broker's in the package's root-only runtime directory.
pub const DEFAULT_SOCKET: &str = "/run/docker-volume-libsecret/control.sock";

/// The longest request line read (a unit's report with its counters is about 10 KB); a status reply of thousands of volumes may be longer, and is read whole.
const MAX_REQUEST: usize = 64 * 1024;

/// The longest reply a client reads.
const MAX_REPLY: u64 = 64 * 1024 * 1024;

/// What a peer asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// The driver's whole status.
    Status,
    /// A mount unit's report on its filesystem.
    Report(UnitReport),
}

/// What a mount unit says about the mount it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitReport {
    /// The unit's name (`docker-volume-libsecret-mount-….service`).
    pub unit: String,
    pub volume: String,
    pub health: HealthState,
    /// What the unit counted, for the driver's metrics (never a secret: counts by series).
    #[serde(default)]
    pub counters: Option<crate::metrics::UnitCounters>,
}

/// The driver's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlReply {
    Status(Box<DriverStatus>),
    Reported,
    /// What was wrong with the request or the peer.
    Error(String),
}

/// What the control socket asks of the driver.
#[async_trait::async_trait]
pub trait Controlled: Send + Sync {
    async fn status(&self) -> DriverStatus;
    /// Takes a unit's report; `Err` says why it was not taken.
    fn report(&self, report: UnitReport) -> Result<(), String>;
}

/// The control socket's core: checks the peer and the request, then asks the driver.
pub struct Control {
    own_uid: u32,
    driver: Arc<dyn Controlled>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("own_uid", &self.own_uid)
            .finish_non_exhaustive()
    }
}

impl Control {
    pub fn new(own_uid: u32, driver: Arc<dyn Controlled>) -> Self {
        Control { own_uid, driver }
    }

    /// The reply to one request line from a peer of uid `peer_uid` (`None`: unknown, refused).
    pub async fn answer(&self, peer_uid: Option<u32>, line: &[u8]) -> ControlReply {
        match peer_uid {
            Some(uid) if uid == 0 || uid == self.own_uid => {}
            Some(uid) => {
                return ControlReply::Error(format!(
                    "the control socket answers root only, and this peer runs as uid {uid}; run the command as root \
                     (sudo docker-volume-libsecret status)"
                ))
            }
            None => {
                return ControlReply::Error(
                    "the control socket answers root only, and this peer's uid is unknown".to_owned(),
                )
            }
        }
        let request: ControlRequest = match serde_json::from_slice(line) {
            Ok(request) => request,
            Err(error) => {
                return ControlReply::Error(format!(
                    "not a control request (expected one JSON line, \"status\" or {{\"report\": ...}}): {error}"
                ))
            }
        };
        match request {
            ControlRequest::Status => ControlReply::Status(Box::new(self.driver.status().await)),
            ControlRequest::Report(report) => match self.driver.report(report) {
                Ok(()) => ControlReply::Reported,
                Err(reason) => ControlReply::Error(reason),
            },
        }
    }

    /// Answers request lines on one connection until the peer closes it or sends something wrong.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, peer_uid: Option<u32>, stream: S) {
        let (read, mut write) = tokio::io::split(stream);
        let mut lines = BufReader::new(read);
        loop {
            let mut line = Vec::new();
            let read = (&mut lines)
                .take(MAX_REQUEST as u64 + 1)
                .read_until(b'\n', &mut line)
                .await;
            let reply = match read {
                Ok(0) | Err(_) => return,
                Ok(n) if n > MAX_REQUEST => {
                    ControlReply::Error(format!("request longer than {MAX_REQUEST} bytes"))
                }
                Ok(_) => self.answer(peer_uid, &line).await,
            };
            let refused = matches!(reply, ControlReply::Error(_));
            if let ControlReply::Error(reason) = &reply {
                tracing::warn!(peer_uid, %reason, "refused a control socket request: {reason}");
            }
            let Ok(mut bytes) = serde_json::to_vec(&reply) else {
                return;
            };
            bytes.push(b'\n');
            if write.write_all(&bytes).await.is_err() || refused {
                return;
            }
        }
    }
}

/// Answers connections from `listener` until `shutdown` completes.
pub async fn run<A: Accept>(
    control: Arc<Control>,
    listener: A,
    shutdown: impl Future<Output = ()>,
) {
    accept_until(listener, shutdown, "control socket", move |stream, uid| {
        let control = control.clone();
        async move { control.serve(uid, stream).await }
    })
    .await;
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("the driver's control socket {path} cannot be reached: {reason} (is the driver running? systemctl status docker-volume-libsecret)")]
    Unreachable { path: PathBuf, reason: String },
    #[error("the driver refused: {0}")]
    Refused(String),
}

/// Sends `request` to the control socket at `socket` and reads the reply, waiting at most `timeout` in all.
pub async fn ask(
    socket: &Path,
    request: &ControlRequest,
    timeout: Duration,
) -> Result<ControlReply, AskError> {
    let unreachable = |reason: String| AskError::Unreachable {
        path: socket.to_owned(),
        reason,
    };
    let exchange = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (read, mut write) = tokio::io::split(stream);
        let mut line = serde_json::to_vec(request).map_err(|e| unreachable(e.to_string()))?;
        line.push(b'\n');
        write
            .write_all(&line)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut reply = Vec::new();
        BufReader::new(read)
            .take(MAX_REPLY)
            .read_until(b'\n', &mut reply)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        serde_json::from_slice::<ControlReply>(&reply)
            .map_err(|e| unreachable(format!("not a control reply: {e}")))
    };
    let reply = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {}s", timeout.as_secs_f32())))??;
    match reply {
        ControlReply::Error(reason) => Err(AskError::Refused(reason)),
        reply => Ok(reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct FakeDriver {
        reports: Mutex<Vec<UnitReport>>,
    }

    #[async_trait::async_trait]
    impl Controlled for FakeDriver {
        async fn status(&self) -> DriverStatus {
            DriverStatus {
                version: "test".into(),
                pid: 7,
                backend: "file".into(),
                mount_mode: "in-process".into(),
                volumes: vec![],
                vault: None,
                logins: vec![],
                leases: vec![],
                problems: vec![],
            }
        }
        fn report(&self, report: UnitReport) -> Result<(), String> {
            if report.unit.is_empty() {
                return Err("a report names its unit".into());
            }
            self.reports.lock().unwrap().push(report);
            Ok(())
        }
    }

    fn control() -> (Control, Arc<FakeDriver>) {
        let driver = Arc::new(FakeDriver::default());
        (Control::new(1000, driver.clone()), driver)
    }

    #[tokio::test]
    async fn root_and_the_drivers_uid_are_answered_and_anyone_else_is_refused_by_uid() {
        let (control, _) = control();
        for uid in [0, 1000] {
            let reply = control.answer(Some(uid), b"\"status\"\n").await;
            assert!(
                matches!(reply, ControlReply::Status(ref s) if s.pid == 7),
                "{reply:?}"
            );
        }
        let ControlReply::Error(refusal) = control.answer(Some(1001), b"\"status\"\n").await else {
            panic!("uid 1001 was answered");
        };
        assert!(
            refusal.contains("root only") && refusal.contains("uid 1001"),
            "{refusal}"
        );
        assert!(matches!(
            control.answer(None, b"\"status\"").await,
            ControlReply::Error(_)
        ));
    }

    #[tokio::test]
    async fn malformed_requests_get_an_error_naming_the_protocol() {
        let (control, driver) = control();
        for line in [
            &b"status\n"[..],
            b"{\"status\": 1, \"x\": 2}",
            b"{\"report\": {\"unit\": \"u\"}}",
            b"\xff\xfe",
            b"",
        ] {
            let ControlReply::Error(reason) = control.answer(Some(0), line).await else {
                panic!("{line:?} was taken");
            };
            assert!(reason.starts_with("not a control request"), "{reason}");
        }
        let refused = control
            .answer(Some(0), br#"{"report": {"unit": "", "volume": "v", "health": {"last_refresh": null, "stale": false, "last_error": null, "last_error_at": null}}}"#)
            .await;
        assert_eq!(
            refused,
            ControlReply::Error("a report names its unit".into())
        );
        assert!(driver.reports.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_connection_is_closed_after_a_refusal_and_kept_for_good_requests() {
        let (control, driver) = control();
        let (client, server) = tokio::io::duplex(1 << 20);
        let serving = tokio::spawn(async move { control.serve(Some(0), server).await });
        let (read, mut write) = tokio::io::split(client);
        let mut lines = BufReader::new(read).lines();
        let report = ControlRequest::Report(UnitReport {
            unit: "u.service".into(),
            volume: "secret/a".into(),
            health: HealthState::default(),
            counters: None,
        });
        let mut line = serde_json::to_vec(&report).unwrap();
        line.push(b'\n');
        write.write_all(&line).await.unwrap();
        let first = lines.next_line().await.unwrap().unwrap();
        assert_eq!(first, "\"reported\"");
        write.write_all(b"{oops}\n").await.unwrap();
        let second = lines.next_line().await.unwrap().unwrap();
        assert!(
            second.starts_with("{\"error\":\"not a control request"),
            "{second}"
        );
        assert!(
            lines.next_line().await.unwrap().is_none(),
            "closed after the refusal"
        );
        serving.await.unwrap();
        assert_eq!(driver.reports.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_overlong_request_is_refused_without_reading_it_all() {
        let (control, _) = control();
        let (client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move { control.serve(Some(0), server).await });
        let (read, mut write) = tokio::io::split(client);
        write.write_all(&vec![b'x'; MAX_REQUEST * 2]).await.unwrap();
        let reply = BufReader::new(read)
            .lines()
            .next_line()
            .await
            .unwrap()
            .unwrap();
        assert!(reply.contains("longer than"), "{reply}");
    }
}
