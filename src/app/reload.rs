//! `systemctl reload` (SIGHUP): the config is read again and what can change without dropping a mount is put in
//! force — the access rules, `log_level`, the caches' lifetimes (`cache_ttl`, `stale_ttl`, `negative_ttl`), and the
//! file options of mounts made from now on (`uid`, `gid`, `mode`, `dir_mode`, `refresh_interval`, `audit*`). Anything
//! else (Vault's address and credentials, a rule's own
//! credentials, sockets, directories, caches, limits) needs a restart: such a reload is refused, and the running
//! configuration is kept, as it is for a file that does not load.

use std::sync::Arc;

use sd_notify::NotifyState;
use serde_json::Value;

use crate::config::Config;
use crate::source::router::VolumeCaches;
use crate::volumes::Volumes;

use super::all_scopes;

/// A reload: the config as read again, or why it could not be.
pub type ReloadRequest = Result<Config, String>;

/// Top-level keys a reload puts in force. `rules` is checked further: its credentials must stay the same.
const LIVE_KEYS: &[&str] = &[
    "rules",
    "log_level",
    "cache_ttl",
    "stale_ttl",
    "negative_ttl",
    "uid",
    "gid",
    "mode",
    "dir_mode",
    "refresh_interval",
    "audit",
    "audit_interval",
    "audit_every_open",
    "source_file",
];

/// The keys (`vault.addr`, `state_dir`) whose values differ between `a` and `b`, below `prefix`. Only names are
/// returned: values may be credentials.
fn differing_keys(prefix: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => differing_keys(&name, x, y, out),
                    _ => out.push(name),
                }
            }
        }
        (a, b) if a != b => out.push(prefix.to_owned()),
        _ => {}
    }
}

/// What in `new` cannot be put in force without a restart, by key; empty: the reload may go ahead.
pub fn needs_restart(running: &Config, new: &Config) -> Vec<String> {
    let (Ok(Value::Object(mut old)), Ok(Value::Object(mut next))) =
        (serde_json::to_value(running), serde_json::to_value(new))
    else {
        return vec!["(the configuration could not be compared)".to_owned()];
    };
    for key in LIVE_KEYS {
        old.remove(*key);
        next.remove(*key);
    }
    let mut keys = Vec::new();
    differing_keys("", &Value::Object(old), &Value::Object(next), &mut keys);
    // Rules may change freely except for their credentials: the driver logged in once per set of them, and its
    // mount units borrow those tokens by each scope's fingerprint.
    let scopes = |config: &Config| -> Vec<(String, String)> {
        all_scopes(config)
            .into_iter()
            .map(|scope| (scope.to_string(), config.scope_fingerprint(scope)))
            .collect()
    };
    // (Vault's own settings changing shows above, and changes every fingerprint too.)
    if keys.is_empty() && scopes(running) != scopes(new) {
        keys.push(
            "rules (a rule with its own auth was added, removed, moved or changed, or the rules now need the \
             [vault] credentials where they did not)"
                .to_owned(),
        );
    }
    keys
}

/// The config of `request` if it may be put in force over `running`; else `None`, with the refusal logged. `what`
/// names who reloads in the log line (`the driver`, `mount unit of secret/app-1`).
pub fn admit(running: &Config, request: ReloadRequest, what: &str) -> Option<Config> {
    let file = running.source_file.display().to_string();
    match request {
        Err(error) => {
            tracing::error!("reload refused, the running configuration is kept ({what}): {error}");
            None
        }
        Ok(new) => {
            let restart = needs_restart(running, &new);
            if restart.is_empty() {
                return Some(new);
            }
            tracing::error!(
                "reload of {file} refused, the running configuration is kept ({what}): changing {} needs \
                 `systemctl restart docker-volume-libsecret` (mount units keep serving across it)",
                restart.join(", ")
            );
            None
        }
    }
}

/// Where a reload is put in force.
pub struct Reloader {
    pub running: Config,
    pub caches: Arc<VolumeCaches>,
    pub volumes: Arc<Volumes>,
}

impl Reloader {
    /// Puts `request` in force, or refuses it and keeps the running configuration; logs which, naming the file.
    /// Mount units are asked to reload too (SIGHUP): each decides its reads by the rules it holds.
    pub async fn reload(&mut self, request: ReloadRequest) {
        let _ = sd_notify::notify(&[NotifyState::Reloading]);
        if let Some(new) = admit(&self.running, request, "the driver") {
            self.apply(new);
            self.volumes.reload_mount_units().await;
        }
        let _ = sd_notify::notify(&[NotifyState::Ready]);
    }

    fn apply(&mut self, new: Config) {
        if new.log_level != self.running.log_level {
            match crate::sys::logging::set_filter(&new.log_level) {
                // Shows only if the new level lets it through.
                Ok(()) => tracing::debug!("log_level {:?} in force", new.log_level),
                Err(error) => tracing::warn!("log_level {:?} not applied: {error}", new.log_level),
            }
        }
        let access = new.access_rules();
        self.caches.set_access(access.clone());
        self.caches.set_times(new.cache_times());
        let refused = self.volumes.reconfigure(access, &new.fs_options());
        for (volume, reason) in &refused {
            tracing::warn!(
                volume = %volume,
                reason = %reason,
                "volume {volume} is mounted, and the reloaded rules refuse it: {reason}; its running containers \
                 keep their mount, and its next Mount is refused"
            );
        }
        tracing::info!(
            rules = new.rules.len(),
            log_level = %new.log_level,
            refused_mounts = refused.len(),
            "configuration reloaded from {}: {} rule(s) in force for every Create, Mount and in-process read; \
             mounts made from now on use the new file options",
            new.source_file.display(),
            new.rules.len()
        );
        self.running = new;
    }
}

/// A mount unit's reloads (the driver sends SIGHUP after its own): the rules of `config` read again are put in force
/// for every read of the unit's caches, and their digest is recorded where a later driver looks for it before
/// adopting the unit. Refused like the driver's when they need a restart.
pub async fn reload_unit_rules(
    mut running: Config,
    plan: crate::mount::MountPlan,
    caches: Arc<VolumeCaches>,
    filesystem: Arc<crate::fs::SecretFs>,
    unit: String,
    mut reloads: tokio::sync::mpsc::Receiver<ReloadRequest>,
) {
    let what = format!("mount unit of {}", plan.name);
    while let Some(request) = reloads.recv().await {
        let Some(new) = admit(&running, request, &what) else {
            continue;
        };
        let access = new.access_rules();
        let tag = crate::mount::systemd::rules_tag(&access, &plan);
        caches.set_access(access);
        caches.set_times(new.cache_times());
        let dir = new
            .control_socket()
            .parent()
            .map(std::path::Path::to_path_buf);
        let recorded = match dir {
            Some(dir) => record_rules(
                &crate::mount::systemd::reloaded_rules_file(&dir, &unit),
                &tag,
            ),
            None => Ok(()),
        };
        if let Err(error) = recorded {
            tracing::warn!(volume = %plan.name, "the mount unit of {} could not record its reloaded rules ({error}): a restarted driver will not adopt it", plan.name);
        }
        // Names already looked up go through the new rules now, not at the next refresh: one the rules refuse
        // now is retired, and its next lookup is refused.
        let retired = filesystem.refresh().await;
        tracing::info!(volume = %plan.name, unit = %unit, retired, "mount unit of {} reloaded its rules from {}", plan.name, new.source_file.display());
        running = new;
    }
}

/// Writes `tag` to `path` atomically, its directory created root-only.
fn record_rules(path: &std::path::Path, tag: &str) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let partial = path.with_extension("rules.partial");
    std::fs::write(&partial, tag)?;
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthMethod, RuleConfig};

    fn rule(path: &str, allow: bool, auth: Option<AuthMethod>) -> RuleConfig {
        let mut rule: RuleConfig =
            serde_json::from_value(serde_json::json!({ "path": path, "allow": allow })).unwrap();
        rule.auth = auth;
        rule
    }

    #[test]
    fn rules_log_level_and_file_options_reload_and_everything_else_needs_a_restart() {
        let running = Config {
            rules: vec![rule("secret/a", true, None)],
            ..Config::default()
        };
        let mut live = running.clone();
        live.rules.push(rule("secret/b", false, None));
        live.log_level = "debug".into();
        live.refresh_interval = std::time::Duration::from_secs(7);
        live.uid = 1000;
        live.stale_ttl = std::time::Duration::from_secs(9);
        assert_eq!(needs_restart(&running, &live), Vec::<String>::new());

        let mut restart = running.clone();
        restart.state_dir = "/elsewhere".into();
        restart.vault.addr = vec!["http://127.0.0.1:1".into()];
        restart.cache_ttl = std::time::Duration::from_secs(1);
        restart.limits.volume_rate = std::num::NonZeroU32::MIN;
        assert_eq!(
            needs_restart(&running, &restart),
            vec!["limits.volume_rate", "state_dir", "vault.addr"]
        );
    }

    #[test]
    fn a_rule_with_its_own_credentials_cannot_change_by_reload() {
        let running = Config {
            rules: vec![
                rule("secret/a", true, None),
                rule("secret/b", true, Some(AuthMethod::Approle)),
            ],
            ..Config::default()
        };
        let mut moved = running.clone();
        moved.rules.insert(0, rule("secret/c", false, None));
        let refused = needs_restart(&running, &moved);
        assert!(
            refused[0].starts_with("rules (a rule with its own auth"),
            "{refused:?}"
        );
        let mut changed = running.clone();
        changed.rules[1].path = "secret/b2".into();
        assert_eq!(needs_restart(&running, &changed).len(), 1);
        let mut plain = running.clone();
        plain.rules[0].path = "secret/a2".into();
        assert!(needs_restart(&running, &plain).is_empty());
    }
}
