//! What the driver tells systemd about its health: `STATUS=` and the watchdog.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::access::AuthScope;
use crate::source::vault::VaultSource;
use crate::volumes::Volumes;

/// `STATUS=`: volumes and mounts, then whatever keeps a Vault login from reading (unreachable, rejected, since
/// when).
pub fn status_line(volumes: &Volumes, logins: &[(AuthScope, Arc<VaultSource>)]) -> String {
    let (volumes, mounts) = volumes.counts();
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

/// Sends STATUS= (and WATCHDOG=1 when systemd asks for it) while the runtime is healthy. Nothing here waits for a
/// mount: the counts are bookkeeping.
pub async fn report(volumes: Arc<Volumes>, logins: Vec<(AuthScope, Arc<VaultSource>)>) {
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog.map_or(Duration::from_secs(10), |timeout| timeout / 3);
    let mut ticker = tokio::time::interval(period);
    loop {
        ticker.tick().await;
        let status = status_line(&volumes, &logins);
        let mut states = vec![NotifyState::Status(&status)];
        if watchdog.is_some() {
            states.push(NotifyState::Watchdog);
        }
        let _ = sd_notify::notify(&states);
    }
}
