//! Whether Vault answers and accepts the credentials, as one login sees it: the journal gets one line when that
//! changes (and a reminder while it lasts), and `STATUS=` says what is wrong and since when.
//!
//! The driver never stops for Vault: while it is unreachable, sealed or rejects the credentials, the plugin API
//! keeps serving and reads give EIO. This is what tells the operator.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How often a lasting outage is logged again, with the number of failures in between.
const UNREACHABLE_REMINDER: Duration = Duration::from_secs(300);
/// Rejected credentials need a person: every retry is logged, but at most this often (with a count).
const REJECTED_REPEAT: Duration = Duration::from_secs(10);

/// What keeps this login from reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// Vault could not be asked: unreachable, sealed, 5xx, timing out.
    Unreachable,
    /// Vault answered and refused the credentials, or a credential file is missing or unusable.
    Rejected,
}

struct Ongoing {
    trouble: Trouble,
    reason: String,
    since: SystemTime,
    started: Instant,
    logged: Instant,
    /// Failures not logged since `logged`.
    unlogged: u64,
}

/// The health of one Vault login. `what` names it in log lines (the auth method, never a credential).
pub struct VaultHealth {
    what: String,
    ongoing: Mutex<Option<Ongoing>>,
}

impl VaultHealth {
    pub fn new(what: String) -> Self {
        VaultHealth {
            what,
            ongoing: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Ongoing>> {
        self.ongoing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Vault answered a request (any HTTP answer but 5xx): an outage is over; rejected credentials are not.
    pub fn answered(&self) {
        let mut ongoing = self.lock();
        if ongoing
            .as_ref()
            .is_some_and(|o| o.trouble == Trouble::Unreachable)
        {
            if let Some(ended) = ongoing.take() {
                tracing::info!(
                    auth = %self.what,
                    unreachable_seconds = ended.started.elapsed().as_secs(),
                    "Vault is reachable again"
                );
            }
        }
    }

    /// A login succeeded: whatever kept it from reading is over.
    pub fn logged_in(&self) {
        if let Some(ended) = self.lock().take() {
            let seconds = ended.started.elapsed().as_secs();
            match ended.trouble {
                Trouble::Unreachable => tracing::info!(
                    auth = %self.what,
                    unreachable_seconds = seconds,
                    "Vault is reachable again; logged in"
                ),
                Trouble::Rejected => tracing::info!(
                    auth = %self.what,
                    rejected_seconds = seconds,
                    "Vault accepts the credentials now; logged in"
                ),
            }
        }
    }

    /// A request or login failed with `trouble`. The first failure is logged; repeats are logged every
    /// `REJECTED_REPEAT` (rejected: a person must act) or `UNREACHABLE_REMINDER` (an outage), with a count.
    pub fn failed(&self, trouble: Trouble, reason: &str) {
        let mut ongoing = self.lock();
        let now = Instant::now();
        match ongoing.as_mut() {
            Some(current) if current.trouble == trouble => {
                current.reason = reason.to_owned();
                current.unlogged += 1;
                let repeat = match trouble {
                    Trouble::Unreachable => UNREACHABLE_REMINDER,
                    Trouble::Rejected => REJECTED_REPEAT,
                };
                if current.logged.elapsed() >= repeat {
                    log_failure(&self.what, current, true);
                    current.logged = now;
                    current.unlogged = 0;
                }
            }
            _ => {
                let started = Ongoing {
                    trouble,
                    reason: reason.to_owned(),
                    since: SystemTime::now(),
                    started: now,
                    logged: now,
                    unlogged: 0,
                };
                log_failure(&self.what, &started, false);
                *ongoing = Some(started);
            }
        }
    }

    /// What is wrong and since when, for `STATUS=`; `None` while all is well.
    pub fn status(&self) -> Option<String> {
        self.lock().as_ref().map(|ongoing| {
            let since = humantime::format_rfc3339_seconds(ongoing.since);
            match ongoing.trouble {
                Trouble::Unreachable => {
                    format!(
                        "Vault unreachable since {since} ({}): {}",
                        self.what, ongoing.reason
                    )
                }
                Trouble::Rejected => format!(
                    "Vault rejects the credentials since {since} ({}): {}",
                    self.what, ongoing.reason
                ),
            }
        })
    }

    /// The trouble under way, if any.
    #[cfg(test)]
    fn trouble(&self) -> Option<Trouble> {
        self.lock().as_ref().map(|o| o.trouble)
    }
}

fn log_failure(what: &str, ongoing: &Ongoing, repeat: bool) {
    let since = humantime::format_rfc3339_seconds(ongoing.since);
    let failures = ongoing.unlogged;
    match (ongoing.trouble, repeat) {
        (Trouble::Unreachable, false) => tracing::warn!(
            auth = %what,
            reason = %ongoing.reason,
            "Vault is unreachable; the plugin API keeps serving, reads give EIO until it answers, and the driver \
             keeps trying"
        ),
        (Trouble::Unreachable, true) => tracing::warn!(
            auth = %what,
            reason = %ongoing.reason,
            %since,
            failures,
            "Vault is still unreachable"
        ),
        (Trouble::Rejected, false) => tracing::error!(
            auth = %what,
            reason = %ongoing.reason,
            "Vault rejects the credentials; fix them (the files are read again at every retry, no restart needed); \
             reads give EIO until then"
        ),
        (Trouble::Rejected, true) => tracing::error!(
            auth = %what,
            reason = %ongoing.reason,
            %since,
            failures,
            "Vault still rejects the credentials"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_the_trouble_and_clears_on_the_right_event() {
        let health = VaultHealth::new("approle at auth/approle".to_owned());
        assert_eq!(health.status(), None);
        health.failed(Trouble::Unreachable, "connection refused");
        let status = health.status().unwrap();
        assert!(status.starts_with("Vault unreachable since 20"), "{status}");
        assert!(status.contains("connection refused"), "{status}");
        health.answered();
        assert_eq!(health.status(), None);

        health.failed(Trouble::Rejected, "status 400: invalid secret id");
        health.answered();
        assert_eq!(
            health.trouble(),
            Some(Trouble::Rejected),
            "an answer does not fix credentials"
        );
        assert!(health.status().unwrap().contains("rejects the credentials"));
        health.logged_in();
        assert_eq!(health.trouble(), None);
    }

    #[test]
    fn a_new_kind_of_trouble_replaces_the_old_one() {
        let health = VaultHealth::new("token".to_owned());
        health.failed(Trouble::Rejected, "permission denied");
        health.failed(Trouble::Unreachable, "sealed");
        assert_eq!(health.trouble(), Some(Trouble::Unreachable));
        assert!(health.status().unwrap().contains("sealed"));
    }
}
