//! The secret backend a process reads through: the Vault logins (or the tokens the driver lends a mount unit), or
//! the file backend, and the caches volumes read through.

use std::collections::HashMap;
use std::sync::Arc;

use crate::access::AuthScope;
use crate::config::{BackendKind, Config};
use crate::source::cache::SecretCache;
use crate::source::file::FileSource;
use crate::source::limits::RequestBudget;
use crate::source::router::VolumeCaches;
use crate::source::vault::{Lending, VaultSetupError, VaultSource};
use crate::source::SecretSource;

use super::AppError;

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
pub struct Backend {
    pub caches: VolumeCaches,
    pub logins: Vec<(AuthScope, Arc<VaultSource>)>,
}

/// How the first contact with Vault goes at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstContact {
    /// In the foreground (the original tool's way): log in before serving, and stop at once with what to fix if
    /// Vault rejects the credentials or its certificate. An unreachable Vault is only warned about.
    Wait,
    /// Under systemd: serve at once and log in in the background, so a host whose Vault is down or starts later
    /// keeps its plugin API (and Docker its containers).
    Background,
}

impl FirstContact {
    /// Background when systemd runs this process (it gave it a notify socket or activated sockets).
    pub fn detect() -> FirstContact {
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

/// Where a process's Vault tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokens {
    /// The driver's way: it logs in with each scope's credentials.
    LogIn(FirstContact),
    /// A mount unit's way: the driver's token broker lends them; no credential file is read.
    Lent,
}

/// Opens one Vault login. Nothing but a config error stops the driver here: Vault being unreachable, sealed or
/// refusing the credentials leaves the plugin API up, with reads failing (EIO) until a login works.
async fn open_vault(
    config: &Config,
    scope: AuthScope,
    first_contact: FirstContact,
) -> Result<VaultSource, AppError> {
    let settings = config.vault_for(scope);
    let fail = |source| AppError::Vault { scope, source };
    let vault = VaultSource::new(&settings).map_err(fail)?;
    if first_contact == FirstContact::Wait {
        match vault.first_login(settings.timeout * 2).await {
            Ok(()) => {}
            Err(error @ VaultSetupError::Unreachable { .. }) => tracing::warn!(
                "Vault credentials of {scope}: {error}; serving the plugin API anyway and logging in as soon as \
                 Vault answers (reads give EIO until then)"
            ),
            Err(error) => return Err(fail(error)),
        }
    }
    vault.keep_trying();
    Ok(vault)
}

/// A mount unit's Vault backend for `scope`: the token comes from the driver's token broker.
fn lent_vault(config: &Config, scope: AuthScope) -> Result<VaultSource, AppError> {
    let lending = Lending {
        socket: config.broker_socket.clone(),
        scope,
        fingerprint: config.scope_fingerprint(scope),
    };
    let vault = VaultSource::lent(&config.vault_for(scope), lending)
        .map_err(|source| AppError::Vault { scope, source })?;
    vault.keep_trying();
    Ok(vault)
}

/// Opens the configured backend (a Vault login, or a lent token, for each set of credentials in `scopes`) and the
/// caches volumes read through.
pub async fn open_caches(
    config: &Config,
    scopes: &[AuthScope],
    tokens: Tokens,
) -> Result<Backend, AppError> {
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
            let source =
                FileSource::open(&config.file.path).map_err(|source| AppError::FileBackend {
                    path: config.file.path.clone(),
                    source,
                })?;
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
pub fn all_scopes(config: &Config) -> Vec<AuthScope> {
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
