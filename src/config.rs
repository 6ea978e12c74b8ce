//! Configuration, layered with figment. Lowest first: built-in defaults, the config file
//! (`/etc/docker-volume-libsecret/config.toml`), Vault's own variables (`VAULT_ADDR`, `VAULT_TOKEN`, `VAULT_CACERT`,
//! `VAULT_NAMESPACE`), `LIBSECRET_*` variables (`LIBSECRET_VAULT__ADDR` for `vault.addr`), then command-line flags.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Where the config file is read from unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/docker-volume-libsecret/config.toml";

/// A credential. Zeroed on drop; `Debug` and `Display` never show it.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Credential(Zeroizing<String>);

impl Credential {
    pub fn new(value: String) -> Self {
        Credential(Zeroizing::new(value))
    }

    /// The value, for handing to the Vault client only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

/// Which secret source serves the volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// HashiCorp Vault (or any server speaking its HTTP API).
    Vault,
    /// A root-owned TOML file or directory of TOML files on the host.
    File,
}

/// How mounted volumes are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MountMode {
    /// Transient systemd units when systemd runs the host (`/run/systemd/system` exists), else in-process.
    #[default]
    Auto,
    /// Each volume's FUSE server runs in its own transient systemd unit and outlives driver restarts.
    Systemd,
    /// Every volume is served by the driver process itself; mounts end when it stops.
    InProcess,
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Secret backend, `"vault"` or `"file"`. Unset: `vault` when `vault.addr` is set, else `file`.
    pub backend: Option<BackendKind>,
    /// The plugin socket bound in foreground mode (ignored under socket activation).
    pub socket: PathBuf,
    /// Where volume records persist across restarts.
    pub state_dir: PathBuf,
    /// Directory holding one FUSE mountpoint per volume (the original tool's `-r/--root`).
    pub mount_root: PathBuf,
    /// How long a secret read from the backend is served from memory before it is read again.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How often secrets in use are read again, so a value changed or deleted in Vault reaches readers.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Through a Vault outage, secrets already read keep being served from memory for this long; `0s` disables it.
    #[serde(with = "humantime_serde")]
    pub stale_ttl: Duration,
    /// How mounts are served: `"auto"`, `"systemd"` (transient units) or `"in-process"`.
    pub mount_mode: MountMode,
    /// Log filter, in `tracing` syntax (`info`, `debug`, `docker_volume_libsecret=debug`). Values are never logged.
    pub log_level: String,
    /// The Vault backend.
    pub vault: VaultConfig,
    /// The file backend.
    pub file: FileConfig,
}

/// `[vault]`: how to reach and authenticate to Vault.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Vault's address, such as `https://vault.example.com:8200` (also `VAULT_ADDR`, `--addr`).
    pub addr: Option<String>,
    /// A token given inline (also `VAULT_TOKEN`, `--store-opt token=`). Prefer `token_file`: inline tokens in argv
    /// show up in `ps`.
    pub token: Option<Credential>,
    /// A root-only file holding the token (recommended).
    pub token_file: Option<PathBuf>,
    /// The longest any one Vault request may take; a container's read fails with EIO after it.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// A PEM CA bundle for Vault's TLS certificate (also `VAULT_CACERT`).
    pub ca_cert: Option<PathBuf>,
    /// Vault Enterprise namespace sent with every request (also `VAULT_NAMESPACE`).
    pub namespace: Option<String>,
    /// KV version per mount, overriding detection: `{ "secret/" = 2, "legacy/" = 1 }`.
    pub kv_version: BTreeMap<String, u8>,
}

/// `[file]`: the file backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// A TOML file, or a directory whose `*.toml` files are all read. Each top-level key is a secret path and its
    /// value a string (the `value` field) or a table of fields.
    pub path: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: None,
            socket: PathBuf::from("/run/docker/plugins/libsecret.sock"),
            state_dir: PathBuf::from("/var/lib/docker-volume-libsecret"),
            mount_root: PathBuf::from("/run/docker-volume-libsecret/mounts"),
            cache_ttl: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(60),
            stale_ttl: Duration::from_secs(3600),
            mount_mode: MountMode::Auto,
            log_level: "info".to_owned(),
            vault: VaultConfig::default(),
            file: FileConfig::default(),
        }
    }
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            addr: None,
            token: None,
            token_file: None,
            timeout: Duration::from_secs(10),
            ca_cert: None,
            namespace: None,
            kv_version: BTreeMap::new(),
        }
    }
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            path: PathBuf::from("/etc/docker-volume-libsecret/secrets.toml"),
        }
    }
}

/// Why the configuration is unusable. Messages name the source and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("{file}: {reason}")]
    File { file: PathBuf, reason: String },
}

/// `--store-opt` keys, as the original tool took them; each sets `vault.<key>`.
pub const STORE_OPT_KEYS: &[&str] = &["token", "token_file", "timeout", "ca_cert", "namespace"];

/// Settings given on the command line, highest precedence.
#[derive(Debug, Default)]
pub struct FlagOverrides {
    pub backend: Option<BackendKind>,
    pub addr: Option<String>,
    pub mount_root: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub secrets_file: Option<PathBuf>,
    pub log_level: Option<String>,
    /// `--store-opt key=value` pairs, in order.
    pub store_opts: Vec<(String, String)>,
}

impl FlagOverrides {
    /// Whether a token was given in argv (visible to `ps`).
    pub fn has_argv_token(&self) -> bool {
        self.store_opts.iter().any(|(key, _)| key == "token")
    }

    fn apply(&self, mut figment: Figment) -> Result<Figment, ConfigError> {
        fn set<T: Serialize>(figment: Figment, key: &str, value: &Option<T>) -> Figment {
            match value {
                Some(value) => figment.merge(Serialized::default(key, value)),
                None => figment,
            }
        }
        figment = set(figment, "backend", &self.backend);
        figment = set(figment, "vault.addr", &self.addr);
        figment = set(figment, "mount_root", &self.mount_root);
        figment = set(figment, "socket", &self.socket);
        figment = set(figment, "state_dir", &self.state_dir);
        figment = set(figment, "vault.token_file", &self.token_file);
        figment = set(figment, "file.path", &self.secrets_file);
        figment = set(figment, "log_level", &self.log_level);
        for (key, value) in &self.store_opts {
            if !STORE_OPT_KEYS.contains(&key.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "--store-opt {key}=...: unknown key `{key}`; known keys: {}",
                    STORE_OPT_KEYS.join(", ")
                )));
            }
            figment = figment.merge(Serialized::default(&format!("vault.{key}"), value));
        }
        Ok(figment)
    }
}

fn vault_env_key(name: &str) -> Option<&'static str> {
    match name {
        "VAULT_ADDR" => Some("vault.addr"),
        "VAULT_TOKEN" => Some("vault.token"),
        "VAULT_CACERT" => Some("vault.ca_cert"),
        "VAULT_NAMESPACE" => Some("vault.namespace"),
        _ => None,
    }
}

/// Renders a figment error as one line per problem: where it came from and which key.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|error| {
            let key = if error.path.is_empty() {
                String::from("(top level)")
            } else {
                error.path.join(".")
            };
            let source = error
                .metadata
                .as_ref()
                .map(|metadata| match &metadata.source {
                    // figment's own Display shortens paths relative to the working directory.
                    Some(figment::Source::File(path)) => path.display().to_string(),
                    Some(source) => source.to_string(),
                    None => metadata.name.to_string(),
                })
                .unwrap_or_else(|| "configuration".to_owned());
            format!("{source}: key `{key}`: {}", error.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Config {
    /// Ownership, modes and refresh of the files the mounts show.
    pub fn fs_options(&self) -> crate::filesystem::FsOptions {
        crate::filesystem::FsOptions {
            refresh_interval: self.refresh_interval,
            ..crate::filesystem::FsOptions::default()
        }
    }

    /// Loads from `file` (which may be absent unless `file_required`), the environment and the flags.
    pub fn load(
        file: &Path,
        file_required: bool,
        flags: &FlagOverrides,
    ) -> Result<Config, ConfigError> {
        if file_required && !file.exists() {
            return Err(ConfigError::File {
                file: file.to_owned(),
                reason: "no such file".to_owned(),
            });
        }
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if file.exists() {
            figment = figment.merge(Toml::file_exact(file));
        }
        let figment = figment
            .merge(
                Env::raw()
                    .filter_map(|name| vault_env_key(name.as_str()).map(Into::into))
                    .split("."),
            )
            .merge(Env::prefixed("LIBSECRET_").ignore(&["CONFIG"]).split("__"));
        let figment = flags.apply(figment)?;
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (mount, version) in &self.vault.kv_version {
            if *version != 1 && *version != 2 {
                return Err(ConfigError::Invalid(format!(
                    "key `vault.kv_version.{mount}`: KV version must be 1 or 2, not {version}"
                )));
            }
        }
        if self.backend() == BackendKind::Vault && self.vault.addr.is_none() {
            return Err(ConfigError::Invalid(
                "key `vault.addr`: the vault backend needs Vault's address (config file, VAULT_ADDR or --addr)".to_owned(),
            ));
        }
        if self.cache_ttl.is_zero()
            || self.vault.timeout.is_zero()
            || self.refresh_interval.is_zero()
        {
            return Err(ConfigError::Invalid(
                "keys `cache_ttl`, `refresh_interval` and `vault.timeout` must be longer than zero"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// The backend in effect.
    pub fn backend(&self) -> BackendKind {
        match self.backend {
            Some(kind) => kind,
            None if self.vault.addr.is_some() => BackendKind::Vault,
            None => BackendKind::File,
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures must return figment's (large) error type
mod tests {
    use super::*;

    /// figment's Jail isolates the environment and working directory of each test.
    fn jail(test: impl FnOnce(&mut figment::Jail) -> figment::error::Result<()>) {
        figment::Jail::expect_with(test);
    }

    #[test]
    fn defaults_apply_without_a_file() {
        jail(|_| {
            let config =
                Config::load(Path::new("absent.toml"), false, &FlagOverrides::default()).unwrap();
            assert_eq!(config.backend(), BackendKind::File);
            assert_eq!(config.cache_ttl, Duration::from_secs(30));
            assert_eq!(config.vault.timeout, Duration::from_secs(10));
            assert_eq!(
                config.socket,
                PathBuf::from("/run/docker/plugins/libsecret.sock")
            );
            Ok(())
        });
    }

    #[test]
    fn precedence_is_file_then_vault_env_then_libsecret_env_then_flags() {
        jail(|jail| {
            jail.create_file(
                "config.toml",
                r#"
                cache_ttl = "5s"
                mount_root = "/from/file"
                [vault]
                addr = "http://file:8200"
                namespace = "file-ns"
                timeout = "3s"
                "#,
            )?;
            let path = Path::new("config.toml");
            let config = Config::load(path, true, &FlagOverrides::default()).unwrap();
            assert_eq!(config.vault.addr.as_deref(), Some("http://file:8200"));
            assert_eq!(config.backend(), BackendKind::Vault);
            assert_eq!(config.cache_ttl, Duration::from_secs(5));

            jail.set_env("VAULT_ADDR", "http://vault-env:8200");
            jail.set_env("VAULT_NAMESPACE", "env-ns");
            jail.set_env("VAULT_TOKEN", "env-token");
            let config = Config::load(path, true, &FlagOverrides::default()).unwrap();
            assert_eq!(config.vault.addr.as_deref(), Some("http://vault-env:8200"));
            assert_eq!(config.vault.namespace.as_deref(), Some("env-ns"));
            assert_eq!(
                config.vault.token.as_ref().map(Credential::expose),
                Some("env-token")
            );
            assert_eq!(config.vault.timeout, Duration::from_secs(3));

            jail.set_env("LIBSECRET_VAULT__ADDR", "http://libsecret-env:8200");
            jail.set_env("LIBSECRET_MOUNT_ROOT", "/from/env");
            let config = Config::load(path, true, &FlagOverrides::default()).unwrap();
            assert_eq!(
                config.vault.addr.as_deref(),
                Some("http://libsecret-env:8200")
            );
            assert_eq!(config.mount_root, PathBuf::from("/from/env"));

            let flags = FlagOverrides {
                addr: Some("http://flag:8200".into()),
                mount_root: Some("/from/flag".into()),
                store_opts: vec![("token".into(), "flag-token".into())],
                ..FlagOverrides::default()
            };
            let config = Config::load(path, true, &flags).unwrap();
            assert_eq!(config.vault.addr.as_deref(), Some("http://flag:8200"));
            assert_eq!(config.mount_root, PathBuf::from("/from/flag"));
            assert_eq!(
                config.vault.token.as_ref().map(Credential::expose),
                Some("flag-token")
            );
            assert!(flags.has_argv_token());
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_name_the_file_and_the_key() {
        jail(|jail| {
            jail.create_file(
                "config.toml",
                "[vault]\naddr = \"http://x\"\ntokn = \"typo\"\n",
            )?;
            let error = Config::load(Path::new("config.toml"), true, &FlagOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(error.contains("config.toml"), "{error}");
            assert!(error.contains("vault.tokn"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn unknown_libsecret_variables_and_store_opts_are_errors() {
        jail(|jail| {
            jail.set_env("LIBSECRET_NO_SUCH", "1");
            let error = Config::load(Path::new("absent.toml"), false, &FlagOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(error.contains("no_such"), "{error}");
            Ok(())
        });
        jail(|_| {
            let flags = FlagOverrides {
                store_opts: vec![("tokne".into(), "x".into())],
                ..FlagOverrides::default()
            };
            let error = Config::load(Path::new("absent.toml"), false, &flags)
                .unwrap_err()
                .to_string();
            assert!(error.contains("tokne"), "{error}");
            assert!(!error.contains("x\""), "{error}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        jail(|jail| {
            jail.create_file(
                "config.toml",
                "[vault]\naddr = \"http://x\"\nkv_version = { \"secret/\" = 3 }\n",
            )?;
            let error = Config::load(Path::new("config.toml"), true, &FlagOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(error.contains("vault.kv_version.secret/"), "{error}");
            jail.create_file("config.toml", "cache_ttl = \"soon\"\n")?;
            let error = Config::load(Path::new("config.toml"), true, &FlagOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("cache_ttl") && error.contains("config.toml"),
                "{error}"
            );
            Ok(())
        });
    }

    /// The packaged example documents real keys: uncommenting every `# key = value` line still loads.
    #[test]
    fn the_packaged_example_config_loads_with_every_key_set() {
        let example = include_str!("../packaging/config.toml");
        let uncommented: String = example
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(key, _)| {
                        key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
                {
                    rest
                }
                _ => line,
            })
            .fold(String::new(), |text, line| text + line + "\n");
        assert!(uncommented.contains("\ntoken_file = "), "{uncommented}");
        jail(|jail| {
            jail.create_file("example.toml", example)?;
            let defaults =
                Config::load(Path::new("example.toml"), true, &FlagOverrides::default()).unwrap();
            assert_eq!(defaults.backend(), BackendKind::File);
            jail.create_file("full.toml", &uncommented)?;
            let full =
                Config::load(Path::new("full.toml"), true, &FlagOverrides::default()).unwrap();
            assert_eq!(full.backend(), BackendKind::Vault);
            assert_eq!(full.vault.kv_version.get("secret/"), Some(&2));
            Ok(())
        });
    }

    #[test]
    fn a_required_file_that_is_missing_is_an_error_and_tokens_never_print() {
        let error = Config::load(
            Path::new("/nonexistent/c.toml"),
            true,
            &FlagOverrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("/nonexistent/c.toml"), "{error}");
        let credential = Credential::new("hvs.secret".into());
        assert!(!format!("{credential:?}").contains("hvs"));
    }
}
