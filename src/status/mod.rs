//! What `docker-volume-libsecret status` and `docker volume inspect` show: each mount's health ([`MountHealth`],
//! kept by its filesystem), and the driver's whole picture ([`DriverStatus`]), answered over the root-only
//! [`control`] socket. Nothing here holds a secret value or a token: paths, times, counts and error messages only.

pub mod control;
mod render;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

pub use render::render_text;

/// Unix seconds now.
pub fn now_unix() -> u64 {
    crate::lease::journal::unix_seconds(SystemTime::now())
}

/// One mount's health as its filesystem sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthState {
    /// When a refresh last read every secret in use from the source (Unix seconds); `None`: none has yet.
    pub last_refresh: Option<u64>,
    /// Whether values are served from memory through an outage (they may be stale).
    pub stale: bool,
    /// The last failure to read from the source, naming the path (never a value).
    pub last_error: Option<String>,
    /// When `last_error` happened (Unix seconds).
    pub last_error_at: Option<u64>,
}

impl HealthState {
    /// Whether the mount serves current values: not stale, and no failure since the last good refresh.
    pub fn is_healthy(&self) -> bool {
        let failed_since_refresh = match (self.last_error_at, self.last_refresh) {
            (Some(failed), Some(refreshed)) => failed >= refreshed,
            (Some(_), None) => true,
            (None, _) => false,
        };
        !self.stale && !failed_since_refresh
    }
}

/// A mount's health, shared by its filesystem (which updates it) and whoever reports it.
#[derive(Debug, Default)]
pub struct MountHealth {
    state: Mutex<HealthState>,
}

impl MountHealth {
    pub fn new() -> Arc<MountHealth> {
        Arc::new(MountHealth::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A refresh pass ended: `stale` says whether any value came from memory for an outage, `failure` names a path
    /// that could not be read at all. A pass with neither is a successful refresh.
    pub fn refreshed(&self, stale: bool, failure: Option<String>) {
        let now = now_unix();
        let mut state = self.lock();
        state.stale = stale;
        match failure {
            Some(failure) => {
                state.last_error = Some(failure);
                state.last_error_at = Some(now);
            }
            None if !stale => state.last_refresh = Some(now),
            None => {}
        }
    }

    /// A read failed for the source (unreachable, denied), outside a refresh.
    pub fn failed(&self, failure: String) {
        let mut state = self.lock();
        state.last_error = Some(failure);
        state.last_error_at = Some(now_unix());
    }

    /// Whether values are served from memory through an outage.
    pub fn is_stale(&self) -> bool {
        self.lock().stale
    }

    pub fn snapshot(&self) -> HealthState {
        self.lock().clone()
    }

    /// Takes what a mount unit reported about its filesystem.
    pub fn replace(&self, state: HealthState) {
        *self.lock() = state;
    }
}

/// How often a mount unit reports its health to the driver.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// A unit report older than this is no report: the unit hangs, or cannot reach the driver.
const REPORT_EXPIRES: Duration = Duration::from_secs(20);

/// The most units whose reports are kept: a runaway reporter cannot grow the driver without bound.
const MAX_UNIT_REPORTS: usize = 20_000;

/// The latest health each mount unit reported over the control socket.
#[derive(Debug, Default)]
pub struct UnitReports {
    reports: Mutex<HashMap<String, (HealthState, Instant)>>,
}

impl UnitReports {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (HealthState, Instant)>> {
        self.reports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `unit`'s report; refused for a name that is no mount unit's, or beyond [`MAX_UNIT_REPORTS`].
    pub fn record(&self, unit: &str, health: HealthState) -> Result<(), String> {
        if !unit.starts_with(crate::mount::systemd::UNIT_PREFIX)
            || !unit.ends_with(".service")
            || unit.len() > 256
        {
            return Err(format!(
                "{unit:?} is not a mount unit's name ({}….service)",
                crate::mount::systemd::UNIT_PREFIX
            ));
        }
        let mut reports = self.lock();
        if reports.len() >= MAX_UNIT_REPORTS && !reports.contains_key(unit) {
            return Err(format!("more than {MAX_UNIT_REPORTS} mount units report"));
        }
        reports.insert(unit.to_owned(), (health, Instant::now()));
        Ok(())
    }

    /// `unit`'s last report, unless it is too old to say anything.
    pub fn get(&self, unit: &str) -> Option<HealthState> {
        self.lock()
            .get(unit)
            .filter(|(_, at)| at.elapsed() < REPORT_EXPIRES)
            .map(|(health, _)| health.clone())
    }

    /// The unit is stopped.
    pub fn forget(&self, unit: &str) {
        self.lock().remove(unit);
    }
}

/// Where a mount's health is read, without waiting for the mount itself.
#[derive(Debug, Clone)]
pub enum HealthProbe {
    /// A mount with no health to tell (the test fakes).
    Unknown,
    /// A filesystem of this process.
    Filesystem(Arc<MountHealth>),
    /// A mount unit, through what it reports.
    Unit {
        unit: String,
        reports: Arc<UnitReports>,
    },
}

impl HealthProbe {
    pub fn read(&self) -> Option<HealthState> {
        match self {
            HealthProbe::Unknown => None,
            HealthProbe::Filesystem(health) => Some(health.snapshot()),
            HealthProbe::Unit { unit, reports } => reports.get(unit),
        }
    }

    /// The unit serving the mount (`None`: this process).
    pub fn unit(&self) -> Option<&str> {
        match self {
            HealthProbe::Unit { unit, .. } => Some(unit),
            _ => None,
        }
    }
}

/// One mount of a volume: the volume's own, or one container's lease of a dynamic volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountStatus {
    /// The lease holder (a container's mount ID, `per-volume`); `None`: the volume's shared mount.
    pub holder: Option<String>,
    /// Docker mount IDs using it.
    pub mount_count: usize,
    /// The systemd unit serving it; `None`: served by the driver process.
    pub unit: Option<String>,
    /// `None`: not known yet (a unit that has not reported since the driver started).
    pub health: Option<HealthState>,
}

/// One volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeStatus {
    pub name: String,
    /// The Vault path it reads (the name, or its `path` option).
    pub path: String,
    pub mount_count: usize,
    pub mounts: Vec<MountStatus>,
}

/// One set of credentials the driver logs in with (`[vault]` or a rule's own auth).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginStatus {
    /// `[vault]` or `rules[N]`.
    pub scope: String,
    /// The auth method, as logs name it (never a credential).
    pub auth: String,
    pub logged_in: bool,
    /// Seconds left of the token's TTL, as this driver counts it; `None`: no token, or it never expires.
    pub token_ttl: Option<u64>,
    /// Seconds until the token is renewed or replaced (about 2/3 of its TTL); `None`: nothing scheduled.
    pub next_renewal: Option<u64>,
    /// What keeps it from reading (unreachable, rejected) and since when.
    pub trouble: Option<String>,
}

/// The Vault node in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultStatus {
    /// The node requests go to now (the first of an HA list that answers).
    pub node: String,
    /// Every configured address.
    pub addresses: Vec<String>,
    /// Whether it answered a request made for this status (lookup-self of the `[vault]` login, or a health check).
    pub reachable: bool,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// One dynamic volume's lease, as the lease journal has it (no credential is kept there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseStatus {
    pub volume: String,
    pub holder: String,
    /// The Vault path it was issued at.
    pub path: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// `serving`, or what is wrong.
    pub state: String,
    /// Whether its holder process runs.
    pub holder_alive: bool,
    /// Replaced leases waiting for their revocation.
    pub retiring: usize,
}

/// The driver's whole state, as `status` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriverStatus {
    pub version: String,
    pub pid: u32,
    /// `vault` or `file`.
    pub backend: String,
    /// `in-process` or `systemd`.
    pub mount_mode: String,
    pub volumes: Vec<VolumeStatus>,
    /// `None` for the file backend.
    pub vault: Option<VaultStatus>,
    pub logins: Vec<LoginStatus>,
    pub leases: Vec<LeaseStatus>,
    /// Everything that makes the driver unhealthy; empty: healthy.
    pub problems: Vec<String>,
}

impl DriverStatus {
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty()
    }

    /// Finds what is wrong in the rest of the status, into `problems`.
    pub fn judge(&mut self) {
        let mut problems = Vec::new();
        if let Some(vault) = &self.vault {
            if !vault.reachable {
                problems.push(format!(
                    "Vault node {} cannot be used: {}",
                    vault.node,
                    vault.error.as_deref().unwrap_or("no reason given")
                ));
            }
        }
        for login in &self.logins {
            if let Some(trouble) = &login.trouble {
                problems.push(format!("login {}: {trouble}", login.scope));
            } else if !login.logged_in {
                problems.push(format!("login {}: not logged in yet", login.scope));
            }
        }
        for volume in &self.volumes {
            for mount in &volume.mounts {
                let which = match &mount.holder {
                    Some(holder) => format!("volume {} (lease holder {holder})", volume.name),
                    None => format!("volume {}", volume.name),
                };
                match &mount.health {
                    Some(health) if health.stale => problems.push(format!(
                        "{which}: serving values from memory (Vault unreachable)"
                    )),
                    Some(health) if !health.is_healthy() => problems.push(format!(
                        "{which}: {}",
                        health.last_error.as_deref().unwrap_or("read failed")
                    )),
                    Some(_) => {}
                    None => problems.push(format!(
                        "{which}: its mount unit {} has not reported its health",
                        mount.unit.as_deref().unwrap_or("?")
                    )),
                }
            }
        }
        for lease in &self.leases {
            if lease.state != "serving" && lease.holder_alive {
                problems.push(format!(
                    "lease of {} for {}: {}",
                    lease.volume, lease.holder, lease.state
                ));
            }
        }
        self.problems = problems;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_is_healthy_after_a_good_refresh_and_not_after_a_failure_or_while_stale() {
        let health = MountHealth::new();
        assert!(health.snapshot().is_healthy(), "a new mount has no failure");
        health.failed("reading secret/app/db: unavailable".to_owned());
        assert!(!health.snapshot().is_healthy());
        // A refresh in the same second as the failure does not hide it; one later does.
        health.replace(HealthState {
            last_refresh: Some(now_unix() + 1),
            ..health.snapshot()
        });
        assert!(health.snapshot().is_healthy());
        health.refreshed(true, None);
        let stale = health.snapshot();
        assert!(stale.stale && !stale.is_healthy());
        assert_eq!(
            stale.last_refresh,
            Some(now_unix() + 1),
            "a stale pass is not a refresh"
        );
        health.replace(HealthState {
            last_refresh: Some(now_unix() - 10),
            ..health.snapshot()
        });
        health.refreshed(false, Some("reading secret/app/x: denied".to_owned()));
        let failed = health.snapshot();
        assert!(!failed.stale && !failed.is_healthy());
        assert_eq!(
            failed.last_error.as_deref(),
            Some("reading secret/app/x: denied")
        );
    }

    fn driver(volumes: Vec<VolumeStatus>) -> DriverStatus {
        DriverStatus {
            version: "0".into(),
            pid: 1,
            backend: "vault".into(),
            mount_mode: "systemd".into(),
            volumes,
            vault: Some(VaultStatus {
                node: "http://127.0.0.1:8200".into(),
                addresses: vec!["http://127.0.0.1:8200".into()],
                reachable: true,
                error: None,
            }),
            logins: vec![LoginStatus {
                scope: "[vault]".into(),
                auth: "token".into(),
                logged_in: true,
                token_ttl: Some(100),
                next_renewal: Some(60),
                trouble: None,
            }],
            leases: vec![],
            problems: vec![],
        }
    }

    #[test]
    fn the_driver_is_unhealthy_for_a_silent_unit_a_stale_mount_or_an_unreachable_vault() {
        let mount = |health: Option<HealthState>| MountStatus {
            holder: None,
            mount_count: 1,
            unit: Some("unit-a.service".into()),
            health,
        };
        let volume = |mounts| VolumeStatus {
            name: "secret/app".into(),
            path: "secret/app".into(),
            mount_count: 1,
            mounts,
        };
        let mut healthy = driver(vec![volume(vec![mount(Some(HealthState::default()))])]);
        healthy.judge();
        assert!(healthy.is_healthy(), "{:?}", healthy.problems);

        let mut silent = driver(vec![volume(vec![mount(None)])]);
        silent.judge();
        assert!(
            silent.problems[0].contains("unit-a.service has not reported"),
            "{:?}",
            silent.problems
        );

        let mut stale = driver(vec![volume(vec![mount(Some(HealthState {
            stale: true,
            ..HealthState::default()
        }))])]);
        stale.judge();
        assert!(stale.problems[0].contains("volume secret/app: serving values from memory"));

        let mut down = driver(vec![]);
        if let Some(vault) = &mut down.vault {
            vault.reachable = false;
            vault.error = Some("connection refused".into());
        }
        down.logins[0].trouble = Some("Vault unreachable since 2026-12-07T00:00:00Z".into());
        down.judge();
        assert_eq!(down.problems.len(), 2, "{:?}", down.problems);
        assert!(down.problems[0].contains("connection refused"));
    }
}
