//! The driver and a mount unit, as functions: `main` parses arguments, loads the config and binds the socket, then
//! calls [`run`] (the driver) or [`run_mount_unit`] (one systemd mount unit). Tests call them in-process.
//!
//! Policy lives here and in the modules it calls, not in `main`: which credentials a unit gets
//! ([`run_mount_unit`]), the mount mode ([`mounting`]), health ([`health`]).

mod backend;
mod check;
mod control;
mod health;
mod mounting;
mod reload;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::net::UnixListener;

use crate::access::AuthScope;
use crate::config::Config;
use crate::lease::journal::LeaseJournal;
use crate::lease::reaper;
use crate::mount::in_process::{InProcessMount, Leases};
use crate::mount::mountpoint::{clean_stale_mounts, detach};
use crate::mount::{MountError, MountPlan};
use crate::plugin::{server, Plugin};
use crate::status::UnitReports;
use crate::volumes::store::DirRecordStore;
use crate::volumes::{lease_plan, plan_mount, StoreError, VolumeError, VolumeRecord, Volumes};

pub use backend::{all_scopes, FirstContact, Tokens};
pub use check::{check_config, ConfigCheck};
pub use health::status_line;
pub use reload::{needs_restart, ReloadRequest};

/// How often the lease journal is searched for leases whose holder is gone.
const REAP_EVERY: Duration = Duration::from_secs(300);

/// How long a stopping mount unit waits for the kernel to release its filesystem.
const UNMOUNT_WAIT: Duration = Duration::from_secs(2);

/// Why the driver or a mount unit could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("Vault credentials of {scope}: {source}")]
    Vault {
        scope: AuthScope,
        source: crate::source::vault::VaultSetupError,
    },
    #[error("file backend: {}: {source}", path.display())]
    FileBackend {
        path: PathBuf,
        source: crate::source::SourceError,
    },
    #[error("locating this binary for mount units: {0}")]
    CurrentExe(std::io::Error),
    #[error("connecting to systemd over D-Bus for mount units (set mount_mode = \"in-process\" to do without): {0}")]
    Systemd(crate::mount::systemd::UnitError),
    #[error("state directory: {0}")]
    State(#[from] StoreError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// Runs the driver: serves the plugin API on `listener` until `shutdown` completes, then unmounts what this process
/// serves (mount units keep running for the next driver). `unit_args` are the non-secret arguments mount units
/// are started with. Each config read again that arrives on `reloads` (`systemctl reload`) is put in force, or
/// refused, without dropping a mount.
pub async fn run(
    config: Config,
    unit_args: Vec<String>,
    first_contact: FirstContact,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
    mut reloads: tokio::sync::mpsc::Receiver<ReloadRequest>,
) -> Result<(), AppError> {
    if config.rules.is_empty() {
        tracing::warn!(
            "no access rules: anyone who may run docker can mount any path the Vault credentials can read; add \
             [[rules]] to the config to restrict volumes to the paths they need"
        );
    }
    let metrics = config.metrics_listen.as_ref().and_then(|listen| {
        match crate::metrics::server::bind(listen) {
            Ok(listener) => {
                tracing::info!(metrics_listen = %listen, "serving metrics at {listen}");
                Some(AbortOnDrop(tokio::spawn(crate::metrics::server::run(
                    listener,
                    std::future::pending(),
                ))))
            }
            // Containers' secrets matter more than the scrapes: a port taken by another process costs the metrics,
            // not the plugin API (and the scrapes' `up` says so).
            Err(error) => {
                tracing::error!(
                    metrics_listen = %listen,
                    %error,
                    "{}: key `metrics_listen`: cannot listen on {listen}: {error}; serving without metrics",
                    config.source_file.display()
                );
                None
            }
        }
    });
    let backend =
        backend::open_caches(&config, &all_scopes(&config), Tokens::LogIn(first_contact)).await?;
    let logins = backend.logins;
    let caches = Arc::new(backend.caches);
    // Leases of holders gone with a crash or a reboot are revoked in the background: Vault may be down, and the
    // plugin API never waits for it.
    let journal = LeaseJournal::open(&config.state_dir)?;
    let reap_trigger = reaper::ReapTrigger::default();
    let reaper = reaper::spawn_periodic(
        journal.clone(),
        caches.clone(),
        REAP_EVERY,
        reap_trigger.clone(),
    );
    let leases = Leases {
        policy: config.lease_policy(),
        journal: Some(journal.clone()),
    };
    let reports = Arc::new(UnitReports::default());
    let chosen = mounting::choose_mounter(
        &config,
        unit_args,
        caches.clone(),
        &logins,
        leases,
        reap_trigger,
        reports.clone(),
    )
    .await?;
    let (mounter, lending) = (chosen.mounter, chosen.lending);
    for path in clean_stale_mounts(&config.mount_root) {
        tracing::info!(mountpoint = %path.display(), "removed a leftover mountpoint");
    }
    let store = DirRecordStore::open(&config.state_dir)?;
    let volumes = Volumes::open_with_access(
        Box::new(store),
        mounter,
        config.mount_root.clone(),
        config.access_rules(),
    )
    .await?
    .with_gate(caches.clone());
    let (volume_count, mount_count) = volumes.counts();
    let volumes = Arc::new(volumes);
    tracing::info!(
        socket = %config.socket.display(),
        volumes = volume_count,
        mounts = mount_count,
        mount_root = %config.mount_root.display(),
        "ready"
    );
    let status = status_line(&volumes, &logins);
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    let control = control::start(
        config.control_socket(),
        control::DriverControl {
            volumes: volumes.clone(),
            logins: logins.clone(),
            journal,
            reports,
            backend: match config.backend() {
                crate::config::BackendKind::Vault => "vault",
                crate::config::BackendKind::File => "file",
            },
            mount_mode: chosen.mode,
        },
    );
    let mut reloader = reload::Reloader {
        running: config.clone(),
        caches,
        volumes: volumes.clone(),
    };
    let reloading = tokio::spawn(async move {
        while let Some(request) = reloads.recv().await {
            reloader.reload(request).await;
        }
    });
    let health = tokio::spawn(health::report(volumes.clone(), logins));

    server::run(listener, Plugin::new(volumes.clone()), shutdown).await;

    health.abort();
    reloading.abort();
    if let Some(control) = control {
        control.abort();
    }
    reaper.abort();
    // Scrapes end with the plugin API: a stopping driver's counts are no longer the host's.
    drop(metrics);
    if let Some(lending) = lending {
        // Units keep the tokens they hold (valid until their TTL) and find the next driver on the same path.
        lending.abort();
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    volumes.shutdown().await;
    Ok(())
}

/// A task that ends with its owner, also when [`run`] returns early with an error.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one mount unit serves, from its argv (none of it a credential).
#[derive(Debug, Clone)]
pub struct MountUnitArgs {
    pub volume: String,
    pub mountpoint: PathBuf,
    pub options: BTreeMap<String, String>,
    /// A dynamic volume's lease holder: the container's mount ID, or [`crate::lease::VOLUME_HOLDER`].
    pub lease_holder: Option<String>,
}

/// Runs one mount unit: serves the volume at its mountpoint until `shutdown` completes. The config gives the Vault
/// address and TLS settings; the tokens are lent by the driver's token broker (no credential file is read here).
///
/// A dynamic volume's unit keeps its holder's lease itself: it issues the credential before it reports ready, renews
/// and re-issues it, writes the journal entry (held by this process, so the driver's reaper leaves it alone while
/// the unit runs, also across a driver restart or crash), and revokes it when the unit is stopped (the last
/// Unmount), after the unmount grace.
pub async fn run_mount_unit(
    config: Config,
    args: MountUnitArgs,
    shutdown: impl Future<Output = ()>,
    reloads: tokio::sync::mpsc::Receiver<ReloadRequest>,
) -> Result<(), AppError> {
    let record = VolumeRecord {
        name: args.volume,
        options: args.options,
        created_at: String::new(),
    };
    let mut plan = plan_mount(&record, args.mountpoint)?;
    let namespace = plan.parsed.namespace.as_deref();
    // Every read below the volume is decided by its own rule, so the unit borrows the token of each set of
    // credentials those rules may name (and none other).
    let access = config.access_rules();
    let grant = crate::volumes::decide_access(&access, &plan)?;
    if let Some(holder) = args.lease_holder {
        if !grant.dynamic {
            return Err(VolumeError::NotServed {
                name: plan.name.clone(),
                reason: "a lease holder was given, and no access rule with dynamic = true covers this path"
                    .to_owned(),
            }
            .into());
        }
        plan.lease = Some(lease_plan(&plan, &holder));
    }
    let scopes = access.scopes_below(namespace, &plan.path);
    // A mount unit never waits for Vault nor the driver: it mounts at once, and reads give EIO until the driver
    // lends a token. A dynamic volume's unit waits for its first credential instead.
    let backend = backend::open_caches(&config, &scopes, Tokens::Lent).await?;
    let caches = Arc::new(backend.caches);
    // The driver starts this unit only when no live server has the volume: anything mounted here is dead.
    let stale = plan.mountpoint.clone();
    tokio::task::spawn_blocking(move || detach(&stale))
        .await
        .map_err(MountError::from)?
        .map_err(MountError::Mountpoint)?;
    let leases = Leases {
        policy: config.lease_policy(),
        journal: match plan.lease {
            Some(_) => Some(LeaseJournal::open(&config.state_dir)?),
            None => None,
        },
    };
    let fs_options = plan.parsed.fs_options(&config.fs_options());
    let mount = InProcessMount::serve_planned(&plan, &caches, &leases, fs_options).await?;
    let keeper = mount.filesystem().lease().cloned();
    tracing::info!(
        volume = %plan.name,
        vault_path = %plan.path,
        mountpoint = %plan.mountpoint.display(),
        lease_holder = plan.lease.as_ref().map(|lease| lease.holder.as_str()),
        "serving mount of {}",
        plan.name
    );
    let unit = crate::mount::systemd::unit_of(&plan);
    let reporter = control::spawn_reporter(
        config.control_socket(),
        unit.clone(),
        plan.name.clone(),
        mount.filesystem().health().clone(),
    );
    let reloading = tokio::spawn(reload::reload_unit_rules(
        config.clone(),
        plan.clone(),
        caches.clone(),
        mount.filesystem().clone(),
        unit,
        reloads,
    ));
    let status = format!("serving {} at {}", plan.name, plan.mountpoint.display());
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    shutdown.await;
    reporter.abort();
    reloading.abort();
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    let ended = end_mount_unit(&plan, mount).await;
    if let Some(keeper) = keeper {
        // Stopped: the last container of the lease is gone (the driver never stops a unit for its own restart).
        keeper.finish().await;
        tracing::info!(volume = %plan.name, "the lease of {} is ended", plan.name);
    }
    ended
}

/// Unmounts at the end of a mount unit. The unmount detaches at once, then waits for the kernel to release the
/// filesystem, which it does only when no container holds it. A unit stopped while in use (its volume refused after
/// a rules change, the package removed) does not wait for that: exiting closes the FUSE connection. The tokens are
/// the driver's (lent, and other units read with them): a unit never revokes them.
async fn end_mount_unit(plan: &MountPlan, mount: InProcessMount) -> Result<(), AppError> {
    let unmounting = tokio::task::spawn_blocking(move || mount.unmount_blocking());
    let in_use = match tokio::time::timeout(UNMOUNT_WAIT, unmounting).await {
        Ok(joined) => match joined.map_err(MountError::from)? {
            Ok(()) => false,
            Err(MountError::Unmount { source, .. })
                if source.raw_os_error() == Some(nix::libc::EBUSY) =>
            {
                detach(&plan.mountpoint).map_err(MountError::Mountpoint)?;
                true
            }
            Err(error) => return Err(error.into()),
        },
        Err(_) => true,
    };
    if in_use {
        tracing::warn!(
            volume = %plan.name,
            mountpoint = %plan.mountpoint.display(),
            "the mount of {} is still in use by a container; ending its FUSE connection",
            plan.name
        );
    }
    tracing::info!(volume = %plan.name, "mount of {} served to the end", plan.name);
    Ok(())
}
