//! How the driver mounts: in-process or as systemd mount units, and the token broker that lends mount units the
//! driver's Vault tokens.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::access::AuthScope;
use crate::config::{BackendKind, Config, MountMode};
use crate::lease::reaper::ReapTrigger;
use crate::mount::broker::{self, Broker};
use crate::mount::in_process::{InProcessMounter, Leases};
use crate::mount::systemd::{
    mount_unit_environment, sets_secret_table, MountUnitTemplate, SystemdMounter,
};
use crate::mount::Mounter;
use crate::source::router::VolumeCaches;
use crate::source::vault::VaultSource;
use crate::status::UnitReports;

use super::AppError;

/// Why mount units could not load the driver's configuration, if they could not. Their tokens come from the
/// driver's token broker, so how the driver authenticates does not matter (a token from argv or the environment, a
/// response-wrapped secret ID): what remains is a `LIBSECRET_*` variable setting a whole table that may hold the
/// token. Units are not given it, and with it they would lose the table's other settings (such as the address).
fn units_cannot_load_config(config: &Config) -> Option<&'static str> {
    if config.backend() != BackendKind::Vault {
        return None;
    }
    let sets_table = std::env::vars_os()
        .filter(|(_, value)| !value.is_empty())
        .filter_map(|(name, _)| name.into_string().ok())
        .any(|name| sets_secret_table(&name));
    sets_table.then_some(
        "a LIBSECRET_* variable sets a whole table that may hold the token (such as LIBSECRET_VAULT), which \
         mount units must not inherit; set its keys one by one (LIBSECRET_VAULT__ADDR) to use mount units",
    )
}

/// Starts lending the driver's tokens to mount units on `config.broker_socket`, until the driver stops. The
/// driver's tokens are not revoked when it stops: units keep reading with them while it restarts, and they expire
/// at their TTL.
fn start_broker(
    config: &Config,
    logins: &[(AuthScope, Arc<VaultSource>)],
) -> Result<tokio::task::JoinHandle<()>, broker::BindError> {
    let listener = broker::bind(&config.broker_socket)?;
    let mut lender = Broker::new(nix::unistd::geteuid().as_raw());
    for (scope, vault) in logins {
        lender.add(*scope, config.scope_fingerprint(*scope), vault.clone());
    }
    tracing::info!(
        socket = %config.broker_socket.display(),
        scopes = logins.len(),
        "lending Vault tokens to mount units"
    );
    Ok(tokio::spawn(broker::run(
        Arc::new(lender),
        listener,
        std::future::pending(),
    )))
}

/// The mounter chosen.
pub struct Chosen {
    pub mounter: Box<dyn Mounter>,
    /// The token broker lending mount units the driver's tokens, if it runs.
    pub lending: Option<tokio::task::JoinHandle<()>>,
    /// `in-process` or `systemd`, as `status` shows it.
    pub mode: &'static str,
}

/// The mounter, and for mount units the token broker lending them the driver's tokens. `unit_args` are the
/// (non-secret) arguments a mount unit is started with before `serve-mount`; `reports` keeps the health units
/// report.
pub async fn choose_mounter(
    config: &Config,
    unit_args: Vec<String>,
    caches: Arc<VolumeCaches>,
    logins: &[(AuthScope, Arc<VaultSource>)],
    leases: Leases,
    reap_trigger: ReapTrigger,
    reports: Arc<UnitReports>,
) -> Result<Chosen, AppError> {
    let systemd_host = Path::new("/run/systemd/system").is_dir();
    let mut use_units = match config.mount_mode {
        MountMode::InProcess => false,
        MountMode::Systemd => true,
        MountMode::Auto => systemd_host,
    };
    if use_units {
        if let Some(reason) = units_cannot_load_config(config) {
            tracing::warn!("serving mounts in-process (they end when the driver stops): {reason}");
            use_units = false;
        }
    }
    // Lent also with in-process mounts: units an earlier driver started may still be running and need tokens.
    let mut lending = None;
    if config.backend() == BackendKind::Vault {
        match start_broker(config, logins) {
            Ok(task) => lending = Some(task),
            Err(error) if use_units => {
                tracing::warn!(
                    "serving mounts in-process (they end when the driver stops): {error}"
                );
                use_units = false;
            }
            // Mounts are the driver's own here: only units of an earlier driver would have needed it.
            Err(error) => tracing::info!("mount units cannot be lent tokens: {error}"),
        }
    }
    if !use_units {
        tracing::info!(
            mount_mode = "in-process",
            "mounts are served by the driver process"
        );
        let mounter = InProcessMounter::new(caches, config.fs_options()).with_leases(leases);
        return Ok(Chosen {
            mounter: Box::new(mounter),
            lending,
            mode: "in-process",
        });
    }
    let template = MountUnitTemplate {
        executable: std::env::current_exe().map_err(AppError::CurrentExe)?,
        config_args: unit_args,
        environment: mount_unit_environment(std::env::vars_os()),
        start_timeout: config.vault.timeout + Duration::from_secs(20),
        // The grace, then revoking the current lease and any retiring ones, each within the Vault timeout.
        lease_stop_timeout: leases.policy.unmount_grace
            + config.vault.timeout * 4
            + Duration::from_secs(10),
        access: config.access_rules(),
        runtime_dir: config
            .control_socket()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let mounter = SystemdMounter::connect(template, reap_trigger, reports)
        .await
        .map_err(AppError::Systemd)?;
    tracing::info!(
        mount_mode = "systemd",
        "each mount is served by a transient systemd unit (a dynamic volume's: one per lease, which it keeps)"
    );
    Ok(Chosen {
        mounter: Box::new(mounter),
        lending,
        mode: "systemd",
    })
}
