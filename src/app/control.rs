//! The driver's answers on its control socket ([`crate::status::control`]): the status it is asked for, and the
//! health its mount units report. A mount unit's reporter is here too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::access::AuthScope;
use crate::lease::journal::LeaseJournal;
use crate::source::vault::VaultSource;
use crate::status::control::{self, Control, ControlRequest, Controlled, UnitReport};
use crate::status::{
    DriverStatus, LeaseStatus, MountHealth, UnitReports, VolumeStatus, REPORT_EVERY,
};
use crate::volumes::Volumes;

/// What the driver's status is made of.
#[derive(Debug)]
pub struct DriverControl {
    pub volumes: Arc<Volumes>,
    pub logins: Vec<(AuthScope, Arc<VaultSource>)>,
    pub journal: LeaseJournal,
    pub reports: Arc<UnitReports>,
    pub backend: &'static str,
    pub mount_mode: &'static str,
}

#[async_trait::async_trait]
impl Controlled for DriverControl {
    async fn status(&self) -> DriverStatus {
        let volumes = self
            .volumes
            .list()
            .into_iter()
            .map(|info| VolumeStatus {
                name: info.name,
                path: info.path,
                mount_count: info.mount_ids,
                mounts: info.mounts,
            })
            .collect();
        // The node is asked through the `[vault]` login (or the first rule's): the one every other login shares.
        let vault = match self.logins.first() {
            Some((_, login)) => Some(login.probe().await),
            None => None,
        };
        let logins = self
            .logins
            .iter()
            .map(|(scope, login)| login.login_status(scope.to_string()))
            .collect();
        let leases = match self.journal.load_all() {
            Ok(entries) => entries
                .into_iter()
                .map(|entry| LeaseStatus {
                    holder_alive: entry.holder_is_alive(),
                    volume: entry.volume,
                    holder: entry.holder,
                    path: entry.lease.path,
                    expires_at: entry.expires_at,
                    state: entry.state,
                    retiring: entry.retiring.len(),
                })
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "status: the lease journal cannot be read: {error}");
                Vec::new()
            }
        };
        let mut status = DriverStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            backend: self.backend.to_owned(),
            mount_mode: self.mount_mode.to_owned(),
            volumes,
            vault,
            logins,
            leases,
            problems: Vec::new(),
        };
        status.judge();
        status
    }

    fn report(&self, report: UnitReport) -> Result<(), String> {
        self.reports.record(&report.unit, report.health)?;
        if let Some(counters) = report.counters {
            crate::metrics::absorb_unit(&report.unit, counters);
        }
        Ok(())
    }
}

/// Serves the control socket at `path` until the returned task is aborted. A socket that cannot be bound is logged
/// and left out: the plugin API does not depend on it.
pub fn start(path: PathBuf, driver: DriverControl) -> Option<tokio::task::JoinHandle<()>> {
    let listener = match crate::mount::broker::bind_root_only(&path, "control socket") {
        Ok(listener) => listener,
        Err(error) => {
            tracing::warn!("`status` will not answer: {error}");
            return None;
        }
    };
    tracing::info!(socket = %path.display(), "control socket ready (docker-volume-libsecret status)");
    let control = Control::new(nix::unistd::geteuid().as_raw(), Arc::new(driver));
    Some(tokio::spawn(control::run(
        Arc::new(control),
        listener,
        std::future::pending(),
    )))
}

/// A mount unit's reporter: sends its filesystem's health and its metrics' counts to the driver every
/// [`REPORT_EVERY`], until aborted. A
/// driver that is down (restarting) is asked again at the next round.
pub fn spawn_reporter(
    socket: PathBuf,
    unit: String,
    volume: String,
    health: Arc<MountHealth>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(REPORT_EVERY);
        let mut failing = false;
        loop {
            ticker.tick().await;
            let request = ControlRequest::Report(UnitReport {
                unit: unit.clone(),
                volume: volume.clone(),
                health: health.snapshot(),
                counters: Some(crate::metrics::unit_snapshot()),
            });
            match control::ask(&socket, &request, Duration::from_secs(2)).await {
                Ok(_) => failing = false,
                Err(error) if !failing => {
                    failing = true;
                    tracing::info!(volume = %volume, "the health of {volume} cannot be reported to the driver (reads go on): {error}");
                }
                Err(_) => {}
            }
        }
    })
}
