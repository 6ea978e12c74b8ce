//! The `docker-volume-libsecret` binary: parses the command line, loads the config, sets up logging and the
//! runtime, binds the plugin socket, then hands over to [`app::run`] (the driver) or [`app::run_mount_unit`] (one
//! mount unit). Everything else lives in the library.
// `deny`, not `forbid`: src/pow.rs needs `no_mangle`, the one exception.
#![deny(unsafe_code)]

mod pow;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use docker_volume_libsecret::app::{self, FirstContact};
use docker_volume_libsecret::config::cli::{Cli, Command};
use docker_volume_libsecret::config::Config;
use docker_volume_libsecret::plugin::server;
use docker_volume_libsecret::sys::{hardening, logging};

/// Exit status for an invalid configuration (sysexits' EX_CONFIG); the unit does not restart on it.
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::parse_mount_unit_args(&args).map_or_else(|| Cli::parse_args(args), Ok) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    match &cli.command {
        Some(Command::Man { out_dir }) => {
            return match write_man_pages(out_dir.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("{error}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Completions { shell }) => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "docker-volume-libsecret",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    // Before anything secret is read (the config may hold a token).
    let hardening = hardening::harden_process();
    let (config_path, required) = cli.config_path();
    let flags = cli.overrides();
    if let Some(Command::CheckConfig) = cli.command {
        return check_config(&config_path, &flags);
    }
    if let Some(Command::Status { json }) = cli.command {
        return status(&config_path, required, &flags, json);
    }
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
            lease_holder,
        }) => runtime
            .block_on(async {
                // The driver sends SIGHUP after its own reload: the unit reads the same config file again.
                let (reload, reloads) = tokio::sync::mpsc::channel(4);
                let (config_path, required) = cli.config_path();
                let watching = tokio::spawn(reload_on_sighup(
                    config_path,
                    required,
                    cli.overrides(),
                    reload,
                ));
                let served = app::run_mount_unit(
                    config,
                    app::MountUnitArgs {
                        volume: volume.clone(),
                        mountpoint: mountpoint.clone(),
                        options: options.iter().cloned().collect(),
                        lease_holder: lease_holder.clone(),
                    },
                    shutdown_signal(),
                    reloads,
                )
                .await;
                watching.abort();
                served
            })
            .map_err(anyhow::Error::from),
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

/// The man pages (section 8): the program's to stdout, or with `out_dir` the program's and one per visible
/// subcommand (`docker-volume-libsecret-check-config.8`) written there.
fn write_man_pages(out_dir: Option<&std::path::Path>) -> std::io::Result<()> {
    let command = Cli::command();
    let Some(dir) = out_dir else {
        return clap_mangen::Man::new(command)
            .section("8")
            .render(&mut std::io::stdout());
    };
    let name = command.get_name().to_owned();
    let mut pages = vec![(format!("{name}.8"), command.clone())];
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        let page = format!("{name}-{}", sub.get_name());
        let synopsis = format!("{name} {}", sub.get_name());
        let sub = sub.clone().display_name(page.clone()).bin_name(synopsis);
        pages.push((format!("{page}.8"), sub));
    }
    for (file, page) in pages {
        let mut out = std::fs::File::create(dir.join(file))?;
        clap_mangen::Man::new(page).section("8").render(&mut out)?;
    }
    Ok(())
}

/// `check-config`: the file must exist (it is what the next start reads); the report goes to stdout, and the exit
/// status says whether the driver can start with it.
fn check_config(
    path: &std::path::Path,
    flags: &docker_volume_libsecret::config::FlagOverrides,
) -> ExitCode {
    let config = match Config::load(path, true, flags) {
        Ok(config) => config,
        Err(error) => {
            println!("FAIL  invalid configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Login and renewal details go to stderr at warn and above only: the report is the output.
    logging::init("warn");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            println!("FAIL  could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let checked = runtime.block_on(app::check_config(&config, path));
    print!("{}", checked.report);
    if checked.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Exit status of `status` when the driver cannot be asked (LSB's "program is not running").
const EXIT_NOT_RUNNING: u8 = 3;

/// `status`: asks the running driver over its control socket; exits 0 healthy, 1 unhealthy, 3 not answering.
fn status(
    path: &std::path::Path,
    required: bool,
    flags: &docker_volume_libsecret::config::FlagOverrides,
    json: bool,
) -> ExitCode {
    use docker_volume_libsecret::status::control::{ask, ControlReply, ControlRequest};
    let config = match Config::load(path, required, flags) {
        Ok(config) => config,
        // The config is root-only (it may hold a token), as is the control socket.
        Err(error) if !nix::unistd::geteuid().is_root() => {
            eprintln!(
                "{error}\nstatus needs root: the config and the driver's control socket are root-only \
                 (sudo docker-volume-libsecret status)"
            );
            return ExitCode::from(EXIT_NOT_RUNNING);
        }
        Err(error) => {
            eprintln!("invalid configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The driver asks Vault for the status (within vault.timeout): wait a little longer than that.
    let wait = config.vault.timeout + std::time::Duration::from_secs(5);
    let socket = config.control_socket();
    let reply = runtime.block_on(ask(&socket, &ControlRequest::Status, wait));
    let status = match reply {
        Ok(ControlReply::Status(status)) => status,
        Ok(other) => {
            eprintln!("the driver answered {other:?} to a status request");
            return ExitCode::from(EXIT_NOT_RUNNING);
        }
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_NOT_RUNNING);
        }
    };
    if json {
        match serde_json::to_string_pretty(&status) {
            Ok(text) => println!("{text}"),
            Err(error) => {
                eprintln!("{error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", docker_volume_libsecret::status::render_text(&status));
    }
    if status.is_healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The driver: binds the plugin socket (or takes the activated one) and runs [`app::run`] on it.
async fn serve(config: Config, cli: &Cli) -> anyhow::Result<()> {
    let (listener, activated) = server::listener(&config.socket)
        .with_context(|| format!("plugin socket {}", config.socket.display()))?;
    tracing::info!(socket = %config.socket.display(), socket_activated = activated, "plugin socket open");
    let socket = config.socket.clone();
    let (reload, reloads) = tokio::sync::mpsc::channel(4);
    let (config_path, required) = cli.config_path();
    let reload_signal = tokio::spawn(reload_on_sighup(
        config_path,
        required,
        cli.overrides(),
        reload,
    ));
    let result = app::run(
        config,
        cli.replay_args(),
        FirstContact::detect(),
        listener,
        shutdown_signal(),
        reloads,
    )
    .await;
    reload_signal.abort();
    if !activated {
        let _ = std::fs::remove_file(&socket);
    }
    Ok(result?)
}

/// `systemctl reload` sends SIGHUP: the config is read again, from the same file, environment and flags, and handed
/// to the driver to put in force (or to refuse, saying why, when it does not load).
async fn reload_on_sighup(
    path: std::path::PathBuf,
    required: bool,
    flags: docker_volume_libsecret::config::FlagOverrides,
    reload: tokio::sync::mpsc::Sender<app::ReloadRequest>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP; systemctl reload will not work");
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reading {} again", path.display());
        let loaded = Config::load(&path, required, &flags).map_err(|error| error.to_string());
        if reload.send(loaded).await.is_err() {
            return;
        }
    }
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
