//! `check-config`: the step before `systemctl restart`. The file has already been loaded (so it is valid: every
//! error names the file and the key); this logs in with each set of credentials the rules use, asks Vault what
//! each token may do (its policies), says what each rule allows with which credentials, and revokes the tokens it
//! logged in with (never an operator's token file). A running driver is not touched.

use std::fmt::Write as _;
use std::path::Path;

use crate::access::AuthScope;
use crate::config::{BackendKind, Config, RuleConfig};
use crate::source::file::FileSource;
use crate::source::vault::VaultSource;

use super::backend::all_scopes;

/// What `check-config` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigCheck {
    /// One line per finding, for a person.
    pub report: String,
    /// Whether every finding is fine (the exit status).
    pub ok: bool,
}

/// How the report names a set of credentials.
fn credentials_of(config: &Config, scope: AuthScope) -> String {
    let method = |rule: Option<&RuleConfig>| {
        let auth = match rule.and_then(|rule| rule.auth.as_ref()) {
            Some(auth) => auth,
            None => &config.vault.auth,
        };
        format!("{auth:?}").to_lowercase()
    };
    match scope {
        AuthScope::Default => format!("[vault] ({})", method(None)),
        AuthScope::Rule(index) => {
            let rule = config.rules.get(index);
            let path = rule.map_or("?", |rule| rule.path.as_str());
            format!("rule {} {path} ({})", index + 1, method(rule))
        }
    }
}

/// Checks the loaded `config` (read from `path`).
pub async fn check_config(config: &Config, path: &Path) -> ConfigCheck {
    let mut report = String::new();
    let mut ok = true;
    let _ = writeln!(report, "ok    {}: valid", path.display());
    match config.backend() {
        BackendKind::File => match FileSource::open(&config.file.path) {
            Ok(_) => {
                let _ = writeln!(
                    report,
                    "ok    file backend {}: readable",
                    config.file.path.display()
                );
            }
            Err(error) => {
                ok = false;
                let _ = writeln!(
                    report,
                    "FAIL  file backend {}: {error}",
                    config.file.path.display()
                );
            }
        },
        BackendKind::Vault => {
            for scope in all_scopes(config) {
                let settings = config.vault_for(scope);
                let name = credentials_of(config, scope);
                let login = match VaultSource::new(&settings) {
                    Ok(vault) => {
                        let checked = vault.check_login(settings.timeout * 2).await;
                        // A token logged in here is of no further use (a token file's is left alone).
                        vault.revoke_login().await;
                        checked
                    }
                    Err(error) => Err(error),
                };
                match login {
                    Ok((policies, ttl)) => {
                        let ttl = if ttl.is_zero() {
                            "never expires".to_owned()
                        } else {
                            format!("TTL {}s", ttl.as_secs())
                        };
                        let _ = writeln!(
                            report,
                            "ok    {name}: logged in to {}; policies {}; {ttl}",
                            settings.addr.join(", "),
                            policies.join(", ")
                        );
                    }
                    Err(error) => {
                        ok = false;
                        let _ = writeln!(report, "FAIL  {name}: {error}");
                    }
                }
            }
        }
    }
    if config.rules.is_empty() {
        let _ = writeln!(
            report,
            "warn  no [[rules]]: a volume may name any path the [vault] credentials can read"
        );
    }
    for (index, rule) in config.rules.iter().enumerate() {
        let namespace = rule
            .namespace
            .as_deref()
            .map_or(String::new(), |namespace| {
                format!(" in namespace {namespace}")
            });
        let what = match (rule.allow, rule.dynamic) {
            (false, _) => "refuses".to_owned(),
            (true, dynamic) => {
                let scope = match rule.auth {
                    Some(_) => AuthScope::Rule(index),
                    None => AuthScope::Default,
                };
                let kind = if dynamic {
                    "dynamic secrets"
                } else {
                    "KV secrets"
                };
                format!("allows {kind}, read with {}", credentials_of(config, scope))
            }
        };
        let _ = writeln!(
            report,
            "rule  {}: {}{namespace} {what}",
            index + 1,
            rule.path
        );
    }
    let _ = writeln!(
        report,
        "{}",
        if ok {
            "config OK: restart the driver to use it (systemctl restart docker-volume-libsecret)"
        } else {
            "config NOT OK: fix the lines marked FAIL before restarting the driver"
        }
    );
    ConfigCheck { report, ok }
}
