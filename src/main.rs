//! The `docker-volume-libsecret` binary: wires config, backend, volumes and the plugin server together.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use sd_notify::NotifyState;

use docker_volume_libsecret::cache::SecretCache;
use docker_volume_libsecret::cli::Cli;
use docker_volume_libsecret::config::{BackendKind, Config};
use docker_volume_libsecret::file_source::FileSource;
use docker_volume_libsecret::filesystem::FsOptions;
use docker_volume_libsecret::mounter::{clean_stale_mounts, InProcessMounter};
use docker_volume_libsecret::plugin::Plugin;
use docker_volume_libsecret::secret::SecretSource;
use docker_volume_libsecret::state::DirRecordStore;
use docker_volume_libsecret::vault::VaultSource;
use docker_volume_libsecret::volumes::Volumes;
use docker_volume_libsecret::{logging, server};

fn main() -> ExitCode {
    let cli = match Cli::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let (config_path, required) = cli.config_path();
    let flags = cli.overrides();
    let config = match Config::load(&config_path, required, &flags) {
        Ok(config) => config,
        Err(error) => {
            logging::init("info");
            tracing::error!("invalid configuration: {error}");
            return ExitCode::FAILURE;
        }
    };
    logging::init(&config.log_level);
    if flags.has_argv_token() {
        tracing::warn!(
            "a Vault token was given on the command line (--store-opt token=): any local user can read it with ps; \
             put it in a root-only file and use token_file instead"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("libsecret")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "could not start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn open_source(config: &Config) -> anyhow::Result<Arc<dyn SecretSource>> {
    Ok(match config.backend() {
        BackendKind::Vault => Arc::new(VaultSource::connect(&config.vault).await?),
        BackendKind::File => {
            let source = FileSource::open(&config.file.path)
                .with_context(|| format!("file backend: {}", config.file.path.display()))?;
            tracing::info!(path = %config.file.path.display(), "serving secrets from the file backend");
            Arc::new(source)
        }
    })
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

async fn serve(config: Config) -> anyhow::Result<()> {
    let source = open_source(&config).await?;
    let cache = Arc::new(SecretCache::new(
        source,
        config.cache_ttl,
        config.vault.timeout,
    ));
    for path in clean_stale_mounts(&config.mount_root) {
        tracing::info!(mountpoint = %path.display(), "removed a leftover mountpoint");
    }
    let store = DirRecordStore::open(&config.state_dir).context("state directory")?;
    let mounter = InProcessMounter::new(
        cache,
        FsOptions::default(),
        tokio::runtime::Handle::current(),
    );
    let volumes = Volumes::open(
        Box::new(store),
        Box::new(mounter),
        config.mount_root.clone(),
    )
    .context("loading volume records")?;
    let (volume_count, _) = volumes.counts();
    let volumes = Arc::new(Mutex::new(volumes));
    let (listener, activated) = server::listener(&config.socket)
        .with_context(|| format!("plugin socket {}", config.socket.display()))?;
    tracing::info!(
        socket = %config.socket.display(),
        socket_activated = activated,
        volumes = volume_count,
        mount_root = %config.mount_root.display(),
        "ready"
    );
    let status = format!("serving {volume_count} volume(s)");
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]);

    server::run(listener, Plugin::new(volumes.clone()), shutdown_signal()).await;

    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    let _ = tokio::task::spawn_blocking(move || {
        volumes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unmount_all();
    })
    .await;
    if !activated {
        let _ = std::fs::remove_file(&config.socket);
    }
    Ok(())
}
