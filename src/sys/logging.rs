//! Logging: journald when systemd runs us (it sets `JOURNAL_STREAM`), stderr otherwise. Log lines carry paths,
//! volume names and mount IDs, never secret values or tokens.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// The journald identifier of the driver and its mount units.
pub const SYSLOG_IDENTIFIER: &str = "docker-volume-libsecret";

/// Where a reload changes the filter of the subscriber [`init`] installed.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// `filter` (tracing's `EnvFilter` syntax; `RUST_LOG` wins when set), with the clients' own logging off.
fn env_filter(filter: &str) -> EnvFilter {
    // vaultrs and rustify log every failed request at ERROR (a missing key is routine here) and requests at
    // DEBUG, headers included; the driver logs each outcome itself, once, so they stay off.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    ["vaultrs=off", "rustify=off"]
        .iter()
        .filter_map(|directive| directive.parse().ok())
        .fold(filter, EnvFilter::add_directive)
}

/// Replaces the filter [`init`] installed (a reload of `log_level`).
pub fn set_filter(filter: &str) -> Result<(), String> {
    let handle = FILTER
        .get()
        .ok_or_else(|| "logging was not set up".to_owned())?;
    handle
        .reload(env_filter(filter))
        .map_err(|error| error.to_string())
}

/// Installs the global subscriber with `filter` (tracing's `EnvFilter` syntax; `RUST_LOG` wins when set).
pub fn init(filter: &str) {
    let (filter, handle) = reload::Layer::new(env_filter(filter));
    let _ = FILTER.set(handle);
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            // Plain field names (VOLUME=, MOUNT_ID=), so `journalctl VOLUME=secret/app-1` works.
            let journald = journald
                .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned())
                .with_field_prefix(None);
            registry.with(journald).init();
            return;
        }
    }
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi),
        )
        .init();
}
