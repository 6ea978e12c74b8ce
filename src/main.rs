//! The `docker-volume-libsecret` binary: wires config, backend, volumes and the plugin server together, and runs
//! the `serve-mount` mode that each mount unit uses.
// `deny`, not `forbid`: src/pow.rs needs `no_mangle`, the one exception.
#![deny(unsafe_code)]

mod pow;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::CommandFactory;
use sd_notify::NotifyState;

use docker_volume_libsecret::access::AuthScope;
use docker_volume_libsecret::config::cli::{Cli, Command};
use docker_volume_libsecret::config::{BackendKind, Config, MountMode};
use docker_volume_libsecret::mount::broker::{self, Broker};
use docker_volume_libsecret::mount::in_process::{mount_volume, InProcessMounter};
use docker_volume_libsecret::mount::mountpoint::{clean_stale_mounts, detach, prepare_mountpoint};
use docker_volume_libsecret::mount::systemd::{
    mount_unit_environment, sets_secret_table, MountUnitTemplate, SystemdMounter,
};
use docker_volume_libsecret::names::VaultPath;
use docker_volume_libsecret::plugin::server;
use docker_volume_libsecret::plugin::Plugin;
use docker_volume_libsecret::source::cache::SecretCache;
use docker_volume_libsecret::source::file::FileSource;
use docker_volume_libsecret::source::limits::RequestBudget;
use docker_volume_libsecret::source::router::VolumeCaches;
use docker_volume_libsecret::source::vault::{Lending, VaultSetupError, VaultSource};
use docker_volume_libsecret::source::SecretSource;
use docker_volume_libsecret::sys::{hardening, logging};
use docker_volume_libsecret::volumes::store::DirRecordStore;
use docker_volume_libsecret::volumes::{Mounter, VolumeOptions, Volumes};

/// How long a stopping mount unit waits for the kernel to release its filesystem.
const UNMOUNT_WAIT: Duration = Duration::from_secs(2);

/// Exit status for an invalid configuration (sysexits' EX_CONFIG); the unit does not restart on it.
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::parse_mount_unit_args(&args).map_or_else(|| Cli::parse_args(args), Ok) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    if let Some(Command::Man) = cli.command {
        return match clap_mangen::Man::new(Cli::command())
            .section("8")
            .render(&mut std::io::stdout())
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("{error}");
                ExitCode::FAILURE
            }
        };
    }
    // Before anything secret is read (the config may hold a token).
    let hardening = hardening::harden_process();
    let (config_path, required) = cli.config_path();
    let flags = cli.overrides();
    let config = match Config::load(&config_path, required, &flags) {
        Ok(config) => config,
        Err(error) => {
            logging::init("info");
            tracing::error!("invalid configuration: {error}");
            refuse_queued_calls();
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(&config.log_level);
    for warning in &hardening.warnings {
        tracing::warn!("{warning}");
    }
    // A mount unit is one of possibly hundreds of processes: one thread drives its few Vault requests; FUSE
    // requests are answered on fuser's own thread.
    let mut builder = match cli.command {
        Some(Command::ServeMount { .. }) => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(2);
            builder
        }
    };
    let runtime = match builder.thread_name("libsecret").enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "could not start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = match &cli.command {
        Some(Command::ServeMount {
            volume,
            mountpoint,
            options,
        }) => runtime.block_on(serve_mount(
            config,
            volume.clone(),
            mountpoint.clone(),
            options.iter().cloned().collect(),
        )),
        _ => {
            if flags.has_argv_token() {
                tracing::warn!(
                    "a Vault token was given on the command line (--store-opt token=): any local user can read it \
                     with ps; put it in a root-only file and use token_file instead"
                );
            }
            runtime.block_on(serve(config, &cli))
        }
    };
    // A mount unit that stopped while its filesystem was in use leaves the FUSE thread waiting for the kernel:
    // do not wait for it (exiting is what ends the connection).
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A cache of one set of credentials; every cache of the process shares `total`, the process's request budget.
fn new_cache(
    config: &Config,
    source: Arc<dyn SecretSource>,
    total: &Arc<RequestBudget>,
) -> SecretCache {
    SecretCache::new(source, config.cache_ttl, config.vault.timeout)
        .with_stale_ttl(config.stale_ttl)
        .with_negative_ttl(config.negative_ttl)
        .with_max_secrets(config.limits.cached_secrets.get())
        .with_total_budget(total.clone())
}

/// The caches volumes read through, and the Vault logins behind them, by scope (none for the file backend).
struct Backend {
    caches: VolumeCaches,
    logins: Vec<(AuthScope, Arc<VaultSource>)>,
}

/// How the first contact with Vault goes at start.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FirstContact {
    /// In the foreground (the original tool's way): log in before serving, and stop at once with what to fix if
    /// Vault rejects the credentials or its certificate. An unreachable Vault is only warned about.
    Wait,
    /// Under systemd: serve at once and log in in the background, so a host whose Vault is down or starts later
    /// keeps its plugin API (and Docker its containers).
    Background,
}

impl FirstContact {
    /// Background when systemd runs this process (it gave it a notify socket or activated sockets).
    fn detect() -> FirstContact {
        let under_systemd = ["NOTIFY_SOCKET", "LISTEN_FDS"]
            .iter()
            .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()));
        if under_systemd {
            FirstContact::Background
        } else {
            FirstContact::Wait
        }
    }
}

/// Opens one Vault login. Nothing but a config error stops the driver here: Vault being unreachable, sealed or
/// refusing the credentials leaves the plugin API up, with reads failing (EIO) until a login works.
async fn open_vault(
    config: &Config,
    scope: AuthScope,
    first_contact: FirstContact,
) -> anyhow::Result<VaultSource> {
    let settings = config.vault_for(scope);
    let vault =
        VaultSource::new(&settings).with_context(|| format!("Vault credentials of {scope}"))?;
    if first_contact == FirstContact::Wait {
        match vault.first_login(settings.timeout * 2).await {
            Ok(()) => {}
            Err(error @ VaultSetupError::Unreachable { .. }) => tracing::warn!(
                "Vault credentials of {scope}: {error}; serving the plugin API anyway and logging in as soon as \
                 Vault answers (reads give EIO until then)"
            ),
            Err(error) => {
                return Err(error).with_context(|| format!("Vault credentials of {scope}"))
            }
        }
    }
    vault.keep_trying();
    Ok(vault)
}

/// Where a process's Vault tokens come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tokens {
    /// The driver's way: it logs in with each scope's credentials.
    LogIn(FirstContact),
    /// A mount unit's way: the driver's token broker lends them; no credential file is read.
    Lent,
}

/// A mount unit's Vault backend for `scope`: the token comes from the driver's token broker.
fn lent_vault(config: &Config, scope: AuthScope) -> anyhow::Result<VaultSource> {
    let lending = Lending {
        socket: config.broker_socket.clone(),
        scope,
        fingerprint: config.scope_fingerprint(scope),
    };
    let vault = VaultSource::lent(&config.vault_for(scope), lending)
        .with_context(|| format!("Vault settings of {scope}"))?;
    vault.keep_trying();
    Ok(vault)
}

/// Opens the configured backend (a Vault login, or a lent token, for each set of credentials in `scopes`) and the
/// caches volumes read through.
async fn open_caches(
    config: &Config,
    scopes: &[AuthScope],
    tokens: Tokens,
) -> anyhow::Result<Backend> {
    let access = config.access_rules();
    let total = Arc::new(RequestBudget::new("all volumes", config.limits.total()));
    Ok(match config.backend() {
        BackendKind::Vault => {
            let mut sources: HashMap<AuthScope, Arc<VaultSource>> = HashMap::new();
            let mut roots = HashMap::new();
            for scope in scopes {
                let vault = Arc::new(match tokens {
                    Tokens::LogIn(first_contact) => {
                        open_vault(config, *scope, first_contact).await?
                    }
                    Tokens::Lent => lent_vault(config, *scope)?,
                });
                roots.insert(*scope, Arc::new(new_cache(config, vault.clone(), &total)));
                sources.insert(*scope, vault);
            }
            let logins = sources
                .iter()
                .map(|(scope, vault)| (*scope, vault.clone()))
                .collect();
            let config = config.clone();
            let caches = VolumeCaches::new(
                access,
                roots,
                Box::new(move |scope, namespace| {
                    let vault = sources
                        .get(&scope)
                        .ok_or_else(|| format!("the credentials of {scope} were not loaded"))?;
                    Ok(new_cache(
                        &config,
                        Arc::new(vault.in_namespace(namespace)),
                        &total,
                    ))
                }),
            );
            Backend { caches, logins }
        }
        BackendKind::File => {
            let source = FileSource::open(&config.file.path)
                .with_context(|| format!("file backend: {}", config.file.path.display()))?;
            tracing::info!(path = %config.file.path.display(), "serving secrets from the file backend");
            Backend {
                caches: VolumeCaches::single(
                    access,
                    Arc::new(new_cache(config, Arc::new(source), &total)),
                    "the file backend has no namespaces",
                ),
                logins: Vec::new(),
            }
        }
    })
}

/// Every set of credentials some volume may read with: `[vault]` unless every allowing rule has its own, and
/// each rule that has its own.
fn all_scopes(config: &Config) -> Vec<AuthScope> {
    let rules = &config.rules;
    let default_needed = rules.is_empty() || rules.iter().any(|r| r.allow && r.auth.is_none());
    let mut scopes: Vec<AuthScope> = default_needed
        .then_some(AuthScope::Default)
        .into_iter()
        .collect();
    scopes.extend(
        rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule.allow && rule.auth.is_some())
            .map(|(index, _)| AuthScope::Rule(index)),
    );
    scopes
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot watch SIGTERM/SIGINT; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received, stopping"),
        _ = interrupt.recv() => tracing::info!("SIGINT received, stopping"),
    }
}

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
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
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

/// The mounter, and for mount units the token broker lending them the driver's tokens.
async fn choose_mounter(
    config: &Config,
    cli: &Cli,
    caches: Arc<VolumeCaches>,
    logins: &[(AuthScope, Arc<VaultSource>)],
) -> anyhow::Result<(Box<dyn Mounter>, Option<tokio::task::JoinHandle<()>>)> {
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
                    "serving mounts in-process (they end when the driver stops): {error:#}"
                );
                use_units = false;
            }
            // Mounts are the driver's own here: only units of an earlier driver would have needed it.
            Err(error) => tracing::info!("mount units cannot be lent tokens: {error:#}"),
        }
    }
    if !use_units {
        tracing::info!(
            mount_mode = "in-process",
            "mounts are served by the driver process"
        );
        return Ok((
            Box::new(InProcessMounter::new(
                caches,
                config.fs_options(),
                tokio::runtime::Handle::current(),
            )),
            None,
        ));
    }
    let template = MountUnitTemplate {
        executable: std::env::current_exe().context("locating this binary for mount units")?,
        config_args: cli.replay_args(),
        environment: mount_unit_environment(std::env::vars_os()),
        start_timeout: config.vault.timeout + Duration::from_secs(20),
        access: config.access_rules(),
    };
    let mounter = SystemdMounter::connect(template)
        .await
        .context("connecting to systemd over D-Bus for mount units (set mount_mode = \"in-process\" to do without)")?;
    tracing::info!(
        mount_mode = "systemd",
        "each mount is served by a transient systemd unit"
    );
    Ok((Box::new(mounter), lending))
}

/// `STATUS=`: volumes and mounts, then whatever keeps a Vault login from reading (unreachable, rejected, since
/// when).
fn status_line(volumes: &Mutex<Volumes>, logins: &[(AuthScope, Arc<VaultSource>)]) -> String {
    let (volumes, mounts) = volumes.lock().unwrap_or_else(|p| p.into_inner()).counts();
    let mut status = format!("{volumes} volume(s), {mounts} mounted");
    let mut troubles: Vec<String> = logins
        .iter()
        .filter_map(|(_, login)| login.status())
        .collect();
    troubles.dedup();
    for trouble in troubles {
        status.push_str("; ");
        status.push_str(&trouble);
    }
    status
}

/// Sends STATUS= (and WATCHDOG=1 when systemd asks for it) while the runtime is healthy.
async fn report_health(volumes: Arc<Mutex<Volumes>>, logins: Vec<(AuthScope, Arc<VaultSource>)>) {
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog.map_or(Duration::from_secs(10), |timeout| timeout / 3);
    let mut ticker = tokio::time::interval(period);
    loop {
        ticker.tick().await;
        let volumes = volumes.clone();
        let logins = logins.clone();
        let Ok(status) = tokio::task::spawn_blocking(move || status_line(&volumes, &logins)).await
        else {
            continue;
        };
        let mut states = vec![NotifyState::Status(&status)];
        if watchdog.is_some() {
            states.push(NotifyState::Watchdog);
        }
        let _ = sd_notify::notify(&states);
    }
}

/// Under socket activation, answers the plugin calls queued on the socket before the driver exits on an invalid
/// config, so that systemd does not start it again for them (see [`server::refuse_queued`]). The answer names no
/// part of the config: a figment error can quote a value, and Docker shows the answer to whoever ran `docker`.
fn refuse_queued_calls() {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::warn!(%error, "could not answer the queued plugin calls");
            return;
        }
    };
    runtime.block_on(async {
        match server::activated_listener() {
            Ok(Some(listener)) => {
                server::refuse_queued(
                    listener,
                    "docker-volume-libsecret cannot start: its configuration is invalid (journalctl -u \
                     docker-volume-libsecret says where)",
                )
                .await;
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "could not take the activated socket"),
        }
    });
}

async fn serve(config: Config, cli: &Cli) -> anyhow::Result<()> {
    if config.rules.is_empty() {
        tracing::warn!(
            "no access rules: anyone who may run docker can mount any path the Vault credentials can read; add \
             [[rules]] to the config to restrict volumes to the paths they need"
        );
    }
    let backend = open_caches(
        &config,
        &all_scopes(&config),
        Tokens::LogIn(FirstContact::detect()),
    )
    .await?;
    let logins = backend.logins;
    let caches = Arc::new(backend.caches);
    let (mounter, lending) = choose_mounter(&config, cli, caches.clone(), &logins).await?;
    for path in clean_stale_mounts(&config.mount_root) {
        tracing::info!(mountpoint = %path.display(), "removed a leftover mountpoint");
    }
    let store = DirRecordStore::open(&config.state_dir).context("state directory")?;
    let mount_root = config.mount_root.clone();
    let access = config.access_rules();
    // Adoption asks systemd about units, which blocks: keep it off the async threads.
    let volumes = tokio::task::spawn_blocking(move || {
        Volumes::open_with_access(Box::new(store), mounter, mount_root, access)
    })
    .await
    .context("loading volume records")?
    .context("loading volume records")?;
    let (volume_count, mount_count) = volumes.counts();
    let volumes = Arc::new(Mutex::new(volumes));
    let (listener, activated) = server::listener(&config.socket)
        .with_context(|| format!("plugin socket {}", config.socket.display()))?;
    tracing::info!(
        socket = %config.socket.display(),
        socket_activated = activated,
        volumes = volume_count,
        mounts = mount_count,
        mount_root = %config.mount_root.display(),
        "ready"
    );
    let status = status_line(&volumes, &logins);
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    let health = tokio::spawn(report_health(volumes.clone(), logins));

    let plugin = Plugin::new(volumes.clone()).with_gate(caches);
    server::run(listener, plugin, shutdown_signal()).await;

    health.abort();
    if let Some(lending) = lending {
        // Units keep the tokens they hold (valid until their TTL) and find the next driver on the same path.
        lending.abort();
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    let _ = tokio::task::spawn_blocking(move || {
        volumes.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
    })
    .await;
    if !activated {
        let _ = std::fs::remove_file(&config.socket);
    }
    Ok(())
}

/// Mount-unit mode: serves one volume until SIGTERM. The config gives the Vault address and TLS settings; the
/// tokens are lent by the driver's token broker (no credential file is read here).
async fn serve_mount(
    config: Config,
    volume: String,
    mountpoint: PathBuf,
    options: BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let vault_path =
        VaultPath::from_volume_name(&volume).with_context(|| format!("volume {volume:?}"))?;
    let options = VolumeOptions::parse(&options).context("volume options")?;
    let namespace = options.namespace.as_deref();
    // Every read below the volume is decided by its own rule, so the unit borrows the token of each set of
    // credentials those rules may name (and none other).
    let access = config.access_rules();
    access
        .decide(namespace, &vault_path)
        .context("access rules")?;
    let scopes = access.scopes_below(namespace, &vault_path);
    // A mount unit never waits for Vault nor the driver: it mounts at once, and reads give EIO until the driver
    // lends a token.
    let backend = open_caches(&config, &scopes, Tokens::Lent).await?;
    let caches = Arc::new(backend.caches);
    let router = caches.router(namespace);
    // The driver starts this unit only when no live server has the volume: anything mounted here is dead.
    detach(&mountpoint).map_err(anyhow::Error::msg)?;
    prepare_mountpoint(&mountpoint).map_err(anyhow::Error::msg)?;
    let mount = mount_volume(
        &volume,
        &vault_path,
        router,
        options.fs_options(&config.fs_options()),
        &mountpoint,
        tokio::runtime::Handle::current(),
    )
    .with_context(|| format!("FUSE mount at {}", mountpoint.display()))?;
    tracing::info!(
        volume = %volume,
        vault_path = %vault_path,
        mountpoint = %mountpoint.display(),
        "serving mount"
    );
    let status = format!("serving {volume} at {}", mountpoint.display());
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    shutdown_signal().await;
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    // The unmount detaches at once, then waits for the kernel to release the filesystem, which it does only when
    // no container holds it. A unit stopped while in use (its volume refused after a rules change, the package
    // removed) does not wait for that: exiting closes the FUSE connection.
    let unmounting = tokio::task::spawn_blocking(move || mount.unmount());
    let unmounted = tokio::time::timeout(UNMOUNT_WAIT, unmounting).await;
    // The tokens are the driver's (lent, and other units read with them): a unit never revokes them.
    let in_use = match unmounted {
        Ok(joined) => match joined.context("unmounting")? {
            Ok(()) => false,
            Err(error) if error.raw_os_error() == Some(nix::libc::EBUSY) => {
                detach(&mountpoint).map_err(anyhow::Error::msg)?;
                true
            }
            Err(error) => {
                return Err(error).with_context(|| format!("unmounting {}", mountpoint.display()))
            }
        },
        Err(_) => true,
    };
    if in_use {
        tracing::warn!(
            volume = %volume,
            mountpoint = %mountpoint.display(),
            "the mount is still in use by a container; ending its FUSE connection"
        );
    }
    tracing::info!(volume = %volume, "mount served to the end");
    Ok(())
}
