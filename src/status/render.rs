//! `status` as a person reads it.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use super::{now_unix, DriverStatus, HealthState};

fn when(unix: u64) -> String {
    let now = now_unix();
    let relative = if unix <= now {
        format!(
            "{} ago",
            humantime::format_duration(Duration::from_secs(now - unix))
        )
    } else {
        format!(
            "in {}",
            humantime::format_duration(Duration::from_secs(unix - now))
        )
    };
    format!(
        "{} ({relative})",
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix))
    )
}

fn seconds(value: Option<u64>) -> String {
    match value {
        Some(value) => humantime::format_duration(Duration::from_secs(value)).to_string(),
        None => "-".to_owned(),
    }
}

fn health_line(health: Option<&HealthState>) -> String {
    let Some(health) = health else {
        return "health not reported yet".to_owned();
    };
    let mut line = match health.last_refresh {
        Some(at) => format!("last refresh {}", when(at)),
        None => "no refresh yet".to_owned(),
    };
    if health.stale {
        line.push_str(", STALE (serving values from memory)");
    }
    if let (Some(error), Some(at)) = (&health.last_error, health.last_error_at) {
        let _ = write!(line, ", last error {}: {error}", when(at));
    }
    line
}

/// The status as text: a verdict, then volumes, Vault, logins and leases.
pub fn render_text(status: &DriverStatus) -> String {
    let mut out = String::new();
    let verdict = if status.is_healthy() {
        "healthy"
    } else {
        "UNHEALTHY"
    };
    let _ = writeln!(
        out,
        "docker-volume-libsecret {} (pid {}): {verdict}; backend {}, mounts {}",
        status.version, status.pid, status.backend, status.mount_mode
    );
    for problem in &status.problems {
        let _ = writeln!(out, "  problem: {problem}");
    }
    let _ = writeln!(out, "\nvolumes: {}", status.volumes.len());
    for volume in &status.volumes {
        let path = if volume.path == volume.name {
            String::new()
        } else {
            format!(" (path {})", volume.path)
        };
        let _ = writeln!(
            out,
            "  {}{path}: {} mount(s)",
            volume.name, volume.mount_count
        );
        for mount in &volume.mounts {
            let holder = mount
                .holder
                .as_deref()
                .map(|h| format!("lease holder {h}, "))
                .unwrap_or_default();
            let server = mount.unit.as_deref().unwrap_or("the driver process");
            let _ = writeln!(
                out,
                "    {holder}{} mount ID(s), served by {server}: {}",
                mount.mount_count,
                health_line(mount.health.as_ref())
            );
        }
    }
    if let Some(vault) = &status.vault {
        let reach = if vault.reachable {
            "reachable".to_owned()
        } else {
            format!(
                "NOT reachable: {}",
                vault.error.as_deref().unwrap_or("no answer")
            )
        };
        let _ = writeln!(out, "\nvault: node {} {reach}", vault.node);
        if vault.addresses.len() > 1 {
            let _ = writeln!(out, "  addresses: {}", vault.addresses.join(", "));
        }
    }
    if !status.logins.is_empty() {
        let _ = writeln!(out, "\nlogins:");
    }
    for login in &status.logins {
        let state = if login.logged_in {
            format!(
                "token TTL {}, next renewal in {}",
                seconds(login.token_ttl),
                seconds(login.next_renewal)
            )
        } else {
            "not logged in".to_owned()
        };
        let _ = writeln!(out, "  {} ({}): {state}", login.scope, login.auth);
        if let Some(trouble) = &login.trouble {
            let _ = writeln!(out, "    {trouble}");
        }
    }
    if !status.leases.is_empty() {
        let _ = writeln!(out, "\nleases:");
    }
    for lease in &status.leases {
        let alive = if lease.holder_alive {
            ""
        } else {
            ", holder gone (to be revoked)"
        };
        let _ = writeln!(
            out,
            "  {} for {} at {}: {}, expires {}{alive}{}",
            lease.volume,
            lease.holder,
            lease.path,
            lease.state,
            when(lease.expires_at),
            if lease.retiring > 0 {
                format!(
                    ", {} replaced lease(s) waiting for revocation",
                    lease.retiring
                )
            } else {
                String::new()
            }
        );
    }
    out
}
