//! Configuration, layered with figment. Lowest first: built-in defaults, the config file
//! (`/etc/docker-volume-libsecret/config.toml`), Vault's own variables (`VAULT_ADDR`, `VAULT_TOKEN`, `VAULT_CACERT`,
//! `VAULT_NAMESPACE`), `LIBSECRET_*` variables (`LIBSECRET_VAULT__ADDR` for `vault.addr`), then command-line flags.

pub mod cli;
pub mod dynamic;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use dynamic::DynamicConfig;

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
    /// A name found missing (neither a secret nor a folder) is answered `ENOENT` from memory for this long, so a
    /// container probing names cannot turn each attempt into Vault requests; a key created in Vault shows up
    /// within it. `0s` disables it.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// How mounts are served: `"auto"`, `"systemd"` (transient units) or `"in-process"`.
    pub mount_mode: MountMode,
    /// The token broker's control socket (root-only; its directory is created 0700 if missing): the driver logs in
    /// once per set of credentials and lends the tokens to its mount units over it, so only the driver reads
    /// credential files.
    pub broker_socket: PathBuf,
    /// The control socket `docker-volume-libsecret status` asks and mount units report their health to (root-only
    /// like the broker's). Unset: `control.sock` beside `broker_socket`.
    pub control_socket: Option<PathBuf>,
    /// Owner of the files and directory of every volume (numeric); a volume's `uid` option overrides it.
    pub uid: u32,
    /// Group of the files and directory of every volume (numeric); a volume's `gid` option overrides it.
    pub gid: u32,
    /// Permission bits of the files, an octal string (`"0444"`); a volume's `mode` option overrides it.
    pub mode: Mode,
    /// Permission bits of the directory, an octal string (`"0555"`); a volume's `dir_mode` option overrides it.
    pub dir_mode: Mode,
    /// Log one journal line per secret read and per refused lookup (volume, key, result, pid, uid, container).
    pub audit: bool,
    /// At most one audit line per (container, key, result) per this window; repeats are counted in the next line.
    #[serde(with = "humantime_serde")]
    pub audit_interval: Duration,
    /// Audit every open, not only the accesses that reach the driver past the kernel's caches. Costs one round trip
    /// to the driver per open.
    pub audit_every_open: bool,
    /// Log filter, in `tracing` syntax (`info`, `debug`, `docker_volume_libsecret=debug`). Values are never logged.
    pub log_level: String,
    /// Access rules (`[[rules]]`), tried in order: which Vault paths may be volumes and with which credentials they
    /// are read. None: every path the `[vault]` credentials can read (a warning is logged at start).
    pub rules: Vec<RuleConfig>,
    /// The Vault backend.
    pub vault: VaultConfig,
    /// The file backend.
    pub file: FileConfig,
    /// `[limits]`: how much memory and how many Vault requests volumes may take.
    pub limits: LimitsConfig,
    /// `[dynamic]`: how the leases of dynamic volumes are held, replaced and revoked.
    pub dynamic: DynamicConfig,
    /// Where the driver serves Prometheus metrics (`GET /metrics`): a loopback address and port
    /// (`"127.0.0.1:9475"`, `"[::1]:9475"`) or a unix socket (`"unix:/run/docker-volume-libsecret/metrics.sock"`,
    /// created 0600). Any other address is refused: the counts are not secrets, but they say what runs on the
    /// host. Unset: no listener. Mount units never listen; the driver's counts include what they report.
    pub metrics_listen: Option<MetricsListen>,
    /// The config file this was loaded from (for messages).
    #[serde(skip)]
    pub source_file: PathBuf,
}

/// `[[rules]]`: one access rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// A Vault path prefix (`secret/app-1` covers it and everything below), or a glob over the whole path (`*`
    /// within one segment, `**` across segments).
    pub path: String,
    /// The child namespace of `vault.namespace` this rule covers, as the `namespace` volume option names it
    /// (`team-a`; `*` within a segment as a glob). Unset: only `vault.namespace` itself. A volume's `namespace`
    /// option is refused unless a rule covers it.
    pub namespace: Option<String>,
    /// Whether paths matching this rule may be read (true) or are refused (false).
    #[serde(default = "allowed")]
    pub allow: bool,
    /// This rule's own auth method; unset: the `[vault]` credentials. Give each rule credentials whose Vault
    /// policy covers only its paths, so Vault itself enforces least privilege.
    pub auth: Option<AuthMethod>,
    /// Whether the paths this rule allows are dynamic secrets (`database/creds/<role>`, `pki/issue/<role>`):
    /// issued per container, renewed while it runs and revoked when it stops. Dynamic engines are served only
    /// where a rule says so, and a rule that says so serves nothing else.
    #[serde(default)]
    pub dynamic: bool,
    /// For `auth = "token"`: a root-only file holding this rule's token.
    pub token_file: Option<PathBuf>,
    /// For `auth = "approle"`: this rule's AppRole.
    pub approle: Option<AppRoleConfig>,
    /// For `auth = "cert"`: this rule's cert role (with `vault.client_cert` and `vault.client_key`).
    pub cert: Option<CertAuthConfig>,
}

fn allowed() -> bool {
    true
}

/// `[vault]`: how to reach and authenticate to Vault.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Vault's address, such as `https://vault.example.com:8200` (also `VAULT_ADDR`, `--addr`). For an HA
    /// cluster, a list (or a comma-separated string): requests move to the next node when one cannot be reached or
    /// is sealed, and standby redirects are followed to listed nodes only.
    #[serde(deserialize_with = "one_or_many", serialize_with = "serialize_addrs")]
    pub addr: Vec<String>,
    /// How the driver logs in: `"token"` (`token_file` or `token`), `"approle"` (`[vault.approle]`) or `"cert"`
    /// (`client_cert` and `client_key`, `[vault.cert]`).
    pub auth: AuthMethod,
    /// A token given inline (also `VAULT_TOKEN`, `--store-opt token=`). Prefer `token_file`: inline tokens in argv
    /// show up in `ps`.
    pub token: Option<Credential>,
    /// A root-only file holding the token (recommended). Read again when Vault stops accepting the token, so a tool
    /// that rotates the file is followed.
    pub token_file: Option<PathBuf>,
    /// The longest any one Vault request may take; a container's read fails with EIO after it.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// A PEM CA bundle for Vault's TLS certificate (also `VAULT_CACERT`). Replaces the system's CA store.
    pub ca_cert: Option<PathBuf>,
    /// A directory of PEM CA certificates (`*.pem`, `*.crt`) for Vault's TLS certificate (also `VAULT_CAPATH`).
    pub ca_path: Option<PathBuf>,
    /// A PEM client certificate presented to Vault (also `VAULT_CLIENT_CERT`); needed by `auth = "cert"`.
    pub client_cert: Option<PathBuf>,
    /// The root-only PEM private key of `client_cert` (also `VAULT_CLIENT_KEY`).
    pub client_key: Option<PathBuf>,
    /// The name Vault's certificate is verified against when it differs from the host in `addr` (also
    /// `VAULT_TLS_SERVER_NAME`).
    pub tls_server_name: Option<String>,
    /// Do not verify Vault's TLS certificate (also `VAULT_SKIP_VERIFY`). Insecure: a warning is logged at every start.
    pub tls_skip_verify: bool,
    /// Vault Enterprise namespace for every request (also `VAULT_NAMESPACE`). A volume's `namespace` option names a
    /// child of it.
    pub namespace: Option<String>,
    /// `[vault.approle]`: AppRole login, for `auth = "approle"`.
    pub approle: AppRoleConfig,
    /// `[vault.cert]`: TLS certificate login, for `auth = "cert"`.
    pub cert: CertAuthConfig,
    /// KV version per mount, overriding detection: `{ "secret/" = 2, "legacy/" = 1 }`.
    pub kv_version: BTreeMap<String, u8>,
    /// The token role (`auth/token/roles/<name>`) dynamic secrets are issued under. Vault revokes a lease with the
    /// token that created it, so leases issued with the login token die at the login token's max TTL; with this
    /// set, the driver creates an orphan periodic token from the role (`auth/token/create/<name>`, with the login
    /// token), issues with it and renews it at 2/3 of its period, so leases outlive every login. The role needs
    /// `orphan=true`, a `period`, and `allowed_policies` that may read the dynamic paths. Unset: leases are
    /// children of the login token and re-issued when it is replaced. README: "Vault settings for dynamic secrets".
    pub lease_token_role: Option<String>,
}

/// Permission bits, written as an octal string (`"0440"`) so a decimal number cannot be mistaken for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u16);

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("write a mode as an octal string, such as \"0440\"")
        })?;
        crate::volumes::parse_mode(&text)
            .map(Mode)
            .map_err(serde::de::Error::custom)
    }
}

/// `metrics_listen`: a loopback TCP address, or `unix:` and an absolute socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl MetricsListen {
    /// Parses `text`, refusing an address that is not loopback (the listener has no authentication).
    pub fn parse(text: &str) -> Result<MetricsListen, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!(
                    "{text:?}: a unix socket is written `unix:` and an absolute path"
                ));
            }
            return Ok(MetricsListen::Unix(path));
        }
        let address: std::net::SocketAddr = text.parse().map_err(|_| {
            format!(
                "{text:?} is neither an address and port (\"127.0.0.1:9475\", \"[::1]:9475\") nor `unix:/path`"
            )
        })?;
        if !address.ip().is_loopback() {
            return Err(format!(
                "{text:?} is not a loopback address: metrics are served without authentication, so only on \
                 127.0.0.0/8, ::1 or a unix socket (put a proxy in front to expose them)"
            ));
        }
        Ok(MetricsListen::Tcp(address))
    }
}

impl fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsListen::Tcp(address) => write!(f, "{address}"),
            MetricsListen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Serialize for MetricsListen {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MetricsListen {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("write the listener as a string, such as \"127.0.0.1:9475\"")
        })?;
        MetricsListen::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Which auth method obtains the Vault token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// A token from `token_file` (or `token`).
    #[default]
    Token,
    /// AppRole: a role ID and a secret ID read from root-only files.
    Approle,
    /// TLS certificate auth with `client_cert` and `client_key`.
    Cert,
}

/// `[vault.approle]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppRoleConfig {
    /// Where the AppRole auth method is mounted (`auth/<mount>`).
    pub mount: String,
    /// A root-only file holding the role ID.
    pub role_id_file: Option<PathBuf>,
    /// A root-only file holding the secret ID, or with `secret_id_wrapped` a response-wrapping token for it.
    pub secret_id_file: Option<PathBuf>,
    /// The secret ID file holds a response-wrapping token: it is unwrapped once at start (wrapping tokens are
    /// single-use) and the secret ID is kept in memory only.
    pub secret_id_wrapped: bool,
}

impl Default for AppRoleConfig {
    fn default() -> Self {
        AppRoleConfig {
            mount: "approle".to_owned(),
            role_id_file: None,
            secret_id_file: None,
            secret_id_wrapped: false,
        }
    }
}

/// `[vault.cert]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertAuthConfig {
    /// Where the cert auth method is mounted (`auth/<mount>`).
    pub mount: String,
    /// The cert role to log in with; unset lets Vault pick the role matching the certificate.
    pub role: Option<String>,
}

impl Default for CertAuthConfig {
    fn default() -> Self {
        CertAuthConfig {
            mount: "cert".to_owned(),
            role: None,
        }
    }
}

/// `addr` as a string (possibly comma-separated) or a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let list = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(text) => text.split(',').map(str::to_owned).collect(),
        OneOrMany::Many(list) => list,
    };
    Ok(list
        .into_iter()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect())
}

fn serialize_addrs<S: serde::Serializer>(
    addrs: &[String],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    addrs.serialize(serializer)
}

/// `[limits]`: bounds that keep one container (probing names, reading in a loop) from taking memory or Vault from
/// the others. Every value must be at least 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most secrets kept in memory per set of credentials (and per volume `namespace`); the least recently used
    /// are dropped first and read again when next needed.
    pub cached_secrets: std::num::NonZeroUsize,
    /// Most Vault requests one volume may have in flight at once.
    pub volume_concurrency: std::num::NonZeroUsize,
    /// Vault requests one volume may start per second, sustained. A read that waits longer than `vault.timeout`
    /// for its turn gives EIO.
    pub volume_rate: std::num::NonZeroU32,
    /// Vault requests one volume may start at once after a quiet spell (on top of `volume_rate`).
    pub volume_burst: std::num::NonZeroU32,
    /// Most Vault requests in flight at once for the whole process (the driver, or one mount unit).
    pub total_concurrency: std::num::NonZeroUsize,
    /// Vault requests the whole process may start per second, sustained.
    pub total_rate: std::num::NonZeroU32,
    /// Vault requests the whole process may start at once after a quiet spell (on top of `total_rate`).
    pub total_burst: std::num::NonZeroU32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let volume = crate::source::limits::BudgetLimits::volume_default();
        let total = crate::source::limits::BudgetLimits::total_default();
        LimitsConfig {
            cached_secrets: std::num::NonZeroUsize::new(crate::source::cache::DEFAULT_MAX_SECRETS)
                .unwrap_or(std::num::NonZeroUsize::MIN),
            volume_concurrency: volume.concurrency,
            volume_rate: volume.rate,
            volume_burst: volume.burst,
            total_concurrency: total.concurrency,
            total_rate: total.rate,
            total_burst: total.burst,
        }
    }
}

impl LimitsConfig {
    /// The budget of each volume.
    pub fn volume(&self) -> crate::source::limits::BudgetLimits {
        crate::source::limits::BudgetLimits {
            concurrency: self.volume_concurrency,
            rate: self.volume_rate,
            burst: self.volume_burst,
        }
    }

    /// The budget of the whole process.
    pub fn total(&self) -> crate::source::limits::BudgetLimits {
        crate::source::limits::BudgetLimits {
            concurrency: self.total_concurrency,
            rate: self.total_rate,
            burst: self.total_burst,
        }
    }
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
            negative_ttl: Duration::from_secs(5),
            mount_mode: MountMode::Auto,
            broker_socket: PathBuf::from(crate::mount::broker::DEFAULT_SOCKET),
            control_socket: None,
            audit: true,
            audit_interval: Duration::from_secs(60),
            audit_every_open: false,
            uid: 0,
            gid: 0,
            mode: Mode(0o444),
            dir_mode: Mode(0o555),
            log_level: "info".to_owned(),
            rules: Vec::new(),
            vault: VaultConfig::default(),
            file: FileConfig::default(),
            limits: LimitsConfig::default(),
            dynamic: DynamicConfig::default(),
            metrics_listen: None,
            source_file: PathBuf::new(),
        }
    }
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            addr: Vec::new(),
            auth: AuthMethod::Token,
            token: None,
            token_file: None,
            timeout: Duration::from_secs(10),
            ca_cert: None,
            ca_path: None,
            client_cert: None,
            client_key: None,
            tls_server_name: None,
            tls_skip_verify: false,
            namespace: None,
            approle: AppRoleConfig::default(),
            cert: CertAuthConfig::default(),
            kv_version: BTreeMap::new(),
            lease_token_role: None,
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
pub const STORE_OPT_KEYS: &[&str] = &[
    "token",
    "token_file",
    "timeout",
    "ca_cert",
    "ca_path",
    "tls_server_name",
    "tls_skip_verify",
    "namespace",
];

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
        "VAULT_CAPATH" => Some("vault.ca_path"),
        "VAULT_CLIENT_CERT" => Some("vault.client_cert"),
        "VAULT_CLIENT_KEY" => Some("vault.client_key"),
        "VAULT_TLS_SERVER_NAME" => Some("vault.tls_server_name"),
        "VAULT_SKIP_VERIFY" => Some("vault.tls_skip_verify"),
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
            if may_hold_secret(&key) {
                format!("{source}: key `{key}`: {}", without_value(&error.kind))
            } else {
                format!("{source}: key `{key}`: {}", error.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether a config key may hold a secret (`vault.token`, a `secret_id`), as opposed to a file that holds one.
/// figment quotes the offending value in its errors, and the error goes to the journal.
fn may_hold_secret(key: &str) -> bool {
    key.split('.').any(|segment| {
        (segment.contains("token") || segment.contains("secret") || segment.contains("password"))
            && !segment.ends_with("_file")
            && !segment.ends_with("_ttl")
    })
}

/// figment's error without the value it found: "invalid type: expected a string (value not shown: …)".
fn without_value(kind: &figment::error::Kind) -> String {
    const NOT_SHOWN: &str = "the value is not shown: this key may hold a secret";
    match kind {
        figment::error::Kind::InvalidType(_, expected) => {
            format!("invalid type: expected {expected} ({NOT_SHOWN})")
        }
        figment::error::Kind::InvalidValue(_, expected) => {
            format!("invalid value: expected {expected} ({NOT_SHOWN})")
        }
        _ => format!("invalid value ({NOT_SHOWN})"),
    }
}

impl Config {
    /// The control socket: `control_socket`, or `control.sock` beside the broker's socket.
    pub fn control_socket(&self) -> PathBuf {
        match &self.control_socket {
            Some(path) => path.clone(),
            None => self.broker_socket.with_file_name("control.sock"),
        }
    }

    /// How long the caches keep values fresh, serve them through an outage, and remember missing names.
    pub fn cache_times(&self) -> crate::source::cache::CacheTimes {
        crate::source::cache::CacheTimes {
            ttl: self.cache_ttl,
            stale_ttl: self.stale_ttl,
            negative_ttl: self.negative_ttl,
        }
    }

    /// Ownership, modes and refresh of the files the mounts show.
    pub fn fs_options(&self) -> crate::fs::FsOptions {
        crate::fs::FsOptions {
            uid: self.uid,
            gid: self.gid,
            file_mode: self.mode.0,
            dir_mode: self.dir_mode.0,
            refresh_interval: self.refresh_interval,
            audit_every_open: self.audit && self.audit_every_open,
            audit_window: self.audit.then_some(self.audit_interval),
            volume_limits: self.limits.volume(),
            ..crate::fs::FsOptions::default()
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
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        config.source_file = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
        config.validate()?;
        config.validate_rules()?;
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
        if self.backend() == BackendKind::Vault && self.vault.addr.is_empty() {
            return Err(ConfigError::Invalid(
                "key `vault.addr`: the vault backend needs Vault's address (config file, VAULT_ADDR or --addr)".to_owned(),
            ));
        }
        let vault = &self.vault;
        if vault.client_cert.is_some() != vault.client_key.is_some() {
            return Err(ConfigError::Invalid(
                "keys `vault.client_cert` and `vault.client_key`: set both or neither".to_owned(),
            ));
        }
        match vault.auth {
            AuthMethod::Approle
                if vault.approle.role_id_file.is_none()
                    || vault.approle.secret_id_file.is_none() =>
            {
                return Err(ConfigError::Invalid(
                    "key `vault.auth`: \"approle\" needs `vault.approle.role_id_file` and `vault.approle.secret_id_file`"
                        .to_owned(),
                ));
            }
            AuthMethod::Cert if vault.client_cert.is_none() => {
                return Err(ConfigError::Invalid(
                    "key `vault.auth`: \"cert\" needs `vault.client_cert` and `vault.client_key`"
                        .to_owned(),
                ));
            }
            _ => {}
        }
        if let Some(role) = &vault.lease_token_role {
            // The name goes into a request path (`auth/token/create/<role>`): one plain segment.
            if role.is_empty()
                || !role
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                || role.starts_with('.')
            {
                return Err(ConfigError::Invalid(format!(
                    "key `vault.lease_token_role`: {role:?} is not a token role name (letters, digits, `-`, `_`, `.`)"
                )));
            }
        }
        if let Some(namespace) = &vault.namespace {
            crate::names::validate_namespace(namespace).map_err(|reason| {
                ConfigError::Invalid(format!("key `vault.namespace`: {reason}"))
            })?;
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
        self.dynamic.validate()?;
        Ok(())
    }

    /// The lease policy of dynamic volumes (`[dynamic]`).
    pub fn lease_policy(&self) -> crate::lease::LeasePolicy {
        self.dynamic.lease_policy()
    }

    /// The access rules as the volume core applies them.
    pub fn access_rules(&self) -> crate::access::AccessRules {
        let rules = self
            .rules
            .iter()
            .map(|rule| crate::access::Rule {
                path: rule.path.clone(),
                namespace: rule
                    .namespace
                    .as_deref()
                    .map(|ns| ns.trim_matches('/').to_owned()),
                allow: rule.allow,
                own_auth: rule.auth.is_some(),
                dynamic: rule.dynamic,
            })
            .collect();
        crate::access::AccessRules::new(rules, &format!("{} [[rules]]", self.source_file.display()))
            .with_fingerprints(self.rule_fingerprints())
    }

    /// Per rule, its whole configuration and the credentials it reads with, never a secret (file paths and
    /// methods, not tokens): what tells a mount unit started under other rules from a current one.
    fn rule_fingerprints(&self) -> Vec<String> {
        self.rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                let scope = match rule.auth {
                    Some(_) => crate::access::AuthScope::Rule(index),
                    None => crate::access::AuthScope::Default,
                };
                let vault = self.vault_for(scope);
                serde_json::json!({
                    "rule": rule,
                    "auth": vault.auth,
                    "token_file": vault.token_file,
                    "approle": vault.approle,
                    "cert": vault.cert,
                    "namespace": vault.namespace,
                })
                .to_string()
            })
            .collect()
    }

    /// What identifies a scope's credentials (and its rule) across processes: a unit asks the driver's token broker
    /// for the token of a scope with this, and a unit whose config differs is refused. A SHA-256 over the rule's
    /// fingerprint (or `[vault]`'s credential settings) and the Vault addresses; never a secret.
    pub fn scope_fingerprint(&self, scope: crate::access::AuthScope) -> String {
        let identity = match scope {
            crate::access::AuthScope::Rule(index) => self
                .rule_fingerprints()
                .get(index)
                .cloned()
                .unwrap_or_else(|| format!("no rule {index}")),
            crate::access::AuthScope::Default => {
                let vault = &self.vault;
                serde_json::json!({
                    "auth": vault.auth,
                    "token_file": vault.token_file,
                    "approle": vault.approle,
                    "cert": vault.cert,
                    "namespace": vault.namespace,
                })
                .to_string()
            }
        };
        crate::names::sha256_hex(&format!("{identity}\0{}", self.vault.addr.join(",")))
    }

    /// The Vault settings a scope reads with: `[vault]`, or `[vault]` with rule N's credentials instead.
    pub fn vault_for(&self, scope: crate::access::AuthScope) -> VaultConfig {
        let crate::access::AuthScope::Rule(index) = scope else {
            return self.vault.clone();
        };
        let mut vault = self.vault.clone();
        if let Some(rule) = self.rules.get(index) {
            vault.auth = rule.auth.unwrap_or(vault.auth);
            vault.token = None;
            vault.token_file = rule.token_file.clone();
            vault.approle = rule.approle.clone().unwrap_or_default();
            vault.cert = rule.cert.clone().unwrap_or_default();
        }
        vault
    }

    fn validate_rules(&self) -> Result<(), ConfigError> {
        for (index, rule) in self.rules.iter().enumerate() {
            let key = format!("rules[{index}]");
            let path = rule.path.trim_matches('/');
            if path.is_empty()
                || path
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == "..")
                || path.chars().any(char::is_control)
            {
                return Err(ConfigError::Invalid(format!(
                    "key `{key}.path`: {:?} is not a Vault path prefix or glob",
                    rule.path
                )));
            }
            if let Some(namespace) = &rule.namespace {
                // A glob's `*` stands for namespace characters.
                crate::names::validate_namespace(&namespace.replace('*', "x")).map_err(
                    |reason| ConfigError::Invalid(format!("key `{key}.namespace`: {reason}")),
                )?;
            }
            let Some(auth) = rule.auth else {
                if rule.token_file.is_some() || rule.approle.is_some() || rule.cert.is_some() {
                    return Err(ConfigError::Invalid(format!(
                        "key `{key}.auth`: credentials are given but `auth` is not; set auth = \"token\", \"approle\" or \"cert\""
                    )));
                }
                continue;
            };
            if self.backend() != BackendKind::Vault {
                return Err(ConfigError::Invalid(format!(
                    "key `{key}.auth`: per-rule credentials need the vault backend"
                )));
            }
            let missing = match auth {
                AuthMethod::Token if rule.token_file.is_none() => Some("token_file"),
                AuthMethod::Approle
                    if !rule.approle.as_ref().is_some_and(|a| {
                        a.role_id_file.is_some() && a.secret_id_file.is_some()
                    }) =>
                {
                    Some("approle.role_id_file and approle.secret_id_file")
                }
                AuthMethod::Cert if self.vault.client_cert.is_none() => {
                    Some("vault.client_cert and vault.client_key")
                }
                _ => None,
            };
            if let Some(missing) = missing {
                return Err(ConfigError::Invalid(format!(
                    "key `{key}.auth`: {auth:?} needs {missing}"
                )));
            }
        }
        Ok(())
    }

    /// The backend in effect.
    pub fn backend(&self) -> BackendKind {
        match self.backend {
            Some(kind) => kind,
            None if !self.vault.addr.is_empty() => BackendKind::Vault,
            None => BackendKind::File,
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures must return figment's (large) error type
mod tests {
    use super::*;
    use crate::access::AuthScope;
    use crate::names::VaultPath;

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
            assert_eq!(config.vault.addr, vec!["http://file:8200".to_owned()]);
            assert_eq!(config.backend(), BackendKind::Vault);
            assert_eq!(config.cache_ttl, Duration::from_secs(5));

            jail.set_env("VAULT_ADDR", "http://vault-env:8200");
            jail.set_env("VAULT_NAMESPACE", "env-ns");
            jail.set_env("VAULT_TOKEN", "env-token");
            let config = Config::load(path, true, &FlagOverrides::default()).unwrap();
            assert_eq!(config.vault.addr, vec!["http://vault-env:8200".to_owned()]);
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
                config.vault.addr,
                vec!["http://libsecret-env:8200".to_owned()]
            );
            assert_eq!(config.mount_root, PathBuf::from("/from/env"));

            let flags = FlagOverrides {
                addr: Some("http://flag:8200".into()),
                mount_root: Some("/from/flag".into()),
                store_opts: vec![("token".into(), "flag-token".into())],
                ..FlagOverrides::default()
            };
            let config = Config::load(path, true, &flags).unwrap();
            assert_eq!(config.vault.addr, vec!["http://flag:8200".to_owned()]);
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
    fn a_lease_token_role_is_one_plain_name() {
        jail(|jail| {
            jail.create_file(
                "config.toml",
                "[vault]\naddr = \"http://x\"\ntoken = \"t\"\nlease_token_role = \"libsecret-leases\"\n",
            )?;
            let config =
                Config::load(Path::new("config.toml"), true, &FlagOverrides::default()).unwrap();
            assert_eq!(
                config.vault.lease_token_role.as_deref(),
                Some("libsecret-leases")
            );
            for bad in ["", "../root", "a/b", "a b"] {
                jail.create_file(
                    "config.toml",
                    &format!(
                        "[vault]\naddr = \"http://x\"\ntoken = \"t\"\nlease_token_role = {bad:?}\n"
                    ),
                )?;
                let error = Config::load(Path::new("config.toml"), true, &FlagOverrides::default())
                    .unwrap_err()
                    .to_string();
                assert!(error.contains("vault.lease_token_role"), "{bad:?}: {error}");
            }
            Ok(())
        });
    }

    /// A token typed as a number (or a table) is still a secret: the error names the key, not the value.
    #[test]
    fn a_wrongly_typed_secret_is_not_quoted_in_the_error() {
        jail(|jail| {
            jail.create_file(
                "config.toml",
                "[vault]\naddr = \"http://x\"\ntoken = 98765432\n",
            )?;
            let error = Config::load(Path::new("config.toml"), true, &FlagOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(error.contains("vault.token"), "{error}");
            assert!(error.contains("expected a string"), "{error}");
            assert!(!error.contains("98765432"), "{error}");
            // Other keys keep figment's whole message, value included: it helps and is no secret.
            jail.create_file("config.toml", "log_level = 8200\n")?;
            let error = Config::load(Path::new("config.toml"), true, &FlagOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("log_level") && error.contains("8200"),
                "{error}"
            );
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
            for bad in ["mode = 400", "mode = \"0999\"", "dir_mode = \"4755\""] {
                jail.create_file("config.toml", bad)?;
                let error = Config::load(Path::new("config.toml"), true, &FlagOverrides::default())
                    .unwrap_err()
                    .to_string();
                assert!(
                    error.contains("mode") && error.contains("config.toml"),
                    "{bad}: {error}"
                );
            }
            jail.create_file("config.toml", "mode = \"0440\"\nuid = 1000\n")?;
            let config =
                Config::load(Path::new("config.toml"), true, &FlagOverrides::default()).unwrap();
            assert_eq!(
                (config.fs_options().file_mode, config.fs_options().uid),
                (0o440, 1000)
            );
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
        let example = include_str!("../../packaging/config.toml");
        let uncommented: String = example
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with("[[")
                        || rest.split_once(" = ").is_some_and(|(key, _)| {
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
            assert_eq!(full.vault.auth, AuthMethod::Approle);
            assert_eq!(full.rules.len(), 3);
            assert_eq!(full.mode, Mode(0o444));
            assert_eq!(full.vault.addr.len(), 2);
            assert_eq!(
                full.limits.volume(),
                crate::source::limits::BudgetLimits::volume_default()
            );
            assert_eq!(
                full.limits.total(),
                crate::source::limits::BudgetLimits::total_default()
            );
            assert_eq!(full.fs_options().volume_limits, full.limits.volume());
            assert_eq!(full.dynamic.reissue_before, Some(Duration::from_secs(600)));
            assert_eq!(
                full.metrics_listen,
                Some(MetricsListen::Tcp("127.0.0.1:9475".parse().unwrap()))
            );
            assert_eq!(defaults.metrics_listen, None);
            assert_eq!(
                defaults.lease_policy(),
                crate::lease::LeasePolicy::default()
            );
            Ok(())
        });
    }

    /// Every top-level key is documented where operators look: the packaged example and the README's table.
    #[test]
    fn every_top_level_key_is_in_the_packaged_example_and_the_readme() {
        let example = include_str!("../../packaging/config.toml");
        let readme = include_str!("../../README.md");
        let keys = serde_json::to_value(Config::default()).unwrap();
        for key in keys.as_object().unwrap().keys() {
            assert!(
                example.contains(&format!("# {key} = "))
                    || example.contains(&format!("[{key}]"))
                    || example.contains(&format!("[[{key}]]")),
                "packaging/config.toml does not document `{key}`"
            );
            // A row of the README's table starts with the key (`uid`, `vault.addr`, `[[rules]]`), or lists it next
            // to the one it goes with (`uid`, `gid`).
            assert!(
                readme.lines().any(|line| line.starts_with("| `")
                    && line.split(" | ").next().is_some_and(|cell| {
                        cell.contains(&format!("`{key}`"))
                            || cell.contains(&format!("`{key}."))
                            || cell.contains(&format!("`[[{key}]]`"))
                    })),
                "README.md's configuration table has no row for `{key}`"
            );
        }
    }

    #[test]
    fn dynamic_defaults_match_the_lease_policy_default() {
        jail(|_| {
            let config =
                Config::load(Path::new("absent.toml"), false, &FlagOverrides::default()).unwrap();
            assert_eq!(config.dynamic.unmount_grace, Duration::ZERO);
            assert_eq!(config.dynamic.reissue_grace, Duration::from_secs(30));
            assert_eq!(config.dynamic.reissue_before, None);
            assert_eq!(config.lease_policy(), crate::lease::LeasePolicy::default());
            Ok(())
        });
    }

    #[test]
    fn dynamic_is_read_from_its_table_and_the_environment() {
        jail(|jail| {
            jail.create_file(
                "config.toml",
                "[dynamic]\nunmount_grace = \"2m\"\nreissue_grace = \"45s\"\nreissue_before = \"10m\"\n",
            )?;
            let config =
                Config::load(Path::new("config.toml"), true, &FlagOverrides::default()).unwrap();
            assert_eq!(
                config.lease_policy(),
                crate::lease::LeasePolicy {
                    unmount_grace: Duration::from_secs(120),
                    reissue_grace: Duration::from_secs(45),
                    reissue_before: Some(Duration::from_secs(600)),
                }
            );
            jail.set_env("LIBSECRET_DYNAMIC__UNMOUNT_GRACE", "5s");
            jail.set_env("LIBSECRET_DYNAMIC__REISSUE_BEFORE", "1h");
            let config =
                Config::load(Path::new("config.toml"), true, &FlagOverrides::default()).unwrap();
            assert_eq!(config.dynamic.unmount_grace, Duration::from_secs(5));
            assert_eq!(config.dynamic.reissue_grace, Duration::from_secs(45));
            assert_eq!(
                config.dynamic.reissue_before,
                Some(Duration::from_secs(3600))
            );
            Ok(())
        });
    }

    #[test]
    fn bad_dynamic_keys_and_values_are_refused_with_their_key() {
        jail(|jail| {
            for (bad, key) in [
                ("unmount_grace = \"25h\"", "dynamic.unmount_grace"),
                ("reissue_grace = \"2d\"", "dynamic.reissue_grace"),
                ("reissue_before = \"0s\"", "dynamic.reissue_before"),
                ("reissue_grace = \"soon\"", "dynamic.reissue_grace"),
                ("unmount_grace = 5", "dynamic.unmount_grace"),
                ("reissue_gracee = \"30s\"", "reissue_gracee"),
            ] {
                jail.create_file("config.toml", &format!("[dynamic]\n{bad}\n"))?;
                let error = Config::load(Path::new("config.toml"), true, &FlagOverrides::default())
                    .unwrap_err()
                    .to_string();
                assert!(error.contains(key), "{bad}: {error}");
            }
            // The bounds themselves are accepted.
            jail.create_file(
                "config.toml",
                "[dynamic]\nunmount_grace = \"24h\"\nreissue_grace = \"0s\"\n",
            )?;
            let config =
                Config::load(Path::new("config.toml"), true, &FlagOverrides::default()).unwrap();
            assert_eq!(config.dynamic.unmount_grace, Duration::from_secs(24 * 3600));
            assert_eq!(config.dynamic.reissue_grace, Duration::ZERO);
            Ok(())
        });
    }

    #[test]
    fn metrics_listen_is_loopback_or_a_unix_socket_and_unset_means_no_listener() {
        jail(|jail| {
            let config =
                Config::load(Path::new("absent.toml"), false, &FlagOverrides::default()).unwrap();
            assert_eq!(config.metrics_listen, None, "no listener unless asked for");
            for (text, expected) in [
                (
                    "127.0.0.1:9475",
                    MetricsListen::Tcp("127.0.0.1:9475".parse().unwrap()),
                ),
                (
                    "[::1]:9475",
                    MetricsListen::Tcp("[::1]:9475".parse().unwrap()),
                ),
                (
                    "unix:/run/metrics.sock",
                    MetricsListen::Unix(PathBuf::from("/run/metrics.sock")),
                ),
            ] {
                jail.create_file("config.toml", &format!("metrics_listen = \"{text}\"\n"))?;
                let config =
                    Config::load(Path::new("config.toml"), true, &FlagOverrides::default())
                        .unwrap();
                assert_eq!(config.metrics_listen.as_ref(), Some(&expected), "{text}");
                assert_eq!(expected.to_string(), text);
            }
            for bad in [
                "0.0.0.0:9475",
                "192.168.1.10:9475",
                "[::]:9475",
                "localhost:9475",
                "127.0.0.1",
                "unix:relative.sock",
            ] {
                jail.create_file("config.toml", &format!("metrics_listen = \"{bad}\"\n"))?;
                let error = Config::load(Path::new("config.toml"), true, &FlagOverrides::default())
                    .unwrap_err()
                    .to_string();
                assert!(
                    error.contains("config.toml")
                        && error.contains("key `metrics_listen`")
                        && error.contains(bad),
                    "{bad}: {error}"
                );
            }
            jail.set_env("LIBSECRET_METRICS_LISTEN", "10.0.0.1:9475");
            let error = Config::load(Path::new("absent.toml"), false, &FlagOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("metrics_listen") && error.contains("not a loopback address"),
                "{error}"
            );
            Ok(())
        });
    }

    #[test]
    fn limits_are_read_from_their_block_and_zero_is_refused_by_file_and_key() {
        jail(|jail| {
            jail.create_file(
                "config.toml",
                "[limits]\ncached_secrets = 5\nvolume_rate = 3\nvolume_burst = 7\ntotal_concurrency = 2\n",
            )?;
            let config =
                Config::load(Path::new("config.toml"), true, &FlagOverrides::default()).unwrap();
            assert_eq!(config.limits.cached_secrets.get(), 5);
            assert_eq!(
                config.limits.volume(),
                crate::source::limits::BudgetLimits::new(8, 3, 7)
            );
            assert_eq!(config.limits.total().concurrency.get(), 2);
            for bad in [
                "volume_rate = 0",
                "total_burst = 0",
                "cached_secrets = 0",
                "rate = 5",
            ] {
                jail.create_file("config.toml", &format!("[limits]\n{bad}\n"))?;
                let error = Config::load(Path::new("config.toml"), true, &FlagOverrides::default())
                    .unwrap_err()
                    .to_string();
                let key = bad.split(' ').next().unwrap_or_default();
                assert!(
                    error.contains("config.toml")
                        && error.contains("limits")
                        && error.contains(key),
                    "{bad}: {error}"
                );
            }
            Ok(())
        });
    }

    #[test]
    fn addresses_auth_methods_and_tls_variables_are_checked() {
        jail(|jail| {
            jail.set_env("VAULT_ADDR", "https://a:8200, https://b:8200");
            jail.set_env("VAULT_SKIP_VERIFY", "true");
            jail.set_env("VAULT_CAPATH", "/etc/cas");
            jail.set_env("VAULT_TLS_SERVER_NAME", "vault.internal");
            let config =
                Config::load(Path::new("absent.toml"), false, &FlagOverrides::default()).unwrap();
            assert_eq!(config.vault.addr, vec!["https://a:8200", "https://b:8200"]);
            assert!(config.vault.tls_skip_verify);
            assert_eq!(config.vault.ca_path, Some(PathBuf::from("/etc/cas")));
            assert_eq!(
                config.vault.tls_server_name.as_deref(),
                Some("vault.internal")
            );

            for (file, key) in [
                (
                    "[vault]\naddr = \"http://x\"\nauth = \"approle\"\n",
                    "vault.approle.role_id_file",
                ),
                (
                    "[vault]\naddr = \"http://x\"\nauth = \"cert\"\n",
                    "vault.client_cert",
                ),
                (
                    "[vault]\naddr = \"http://x\"\nclient_cert = \"/c.pem\"\n",
                    "vault.client_key",
                ),
                (
                    "[vault]\naddr = \"http://x\"\nnamespace = \"../up\"\n",
                    "vault.namespace",
                ),
                (
                    "[vault]\naddr = \"http://x\"\nauth = \"kerberos\"\n",
                    "vault.auth",
                ),
            ] {
                jail.create_file("config.toml", file)?;
                let error = Config::load(Path::new("config.toml"), true, &FlagOverrides::default())
                    .unwrap_err()
                    .to_string();
                assert!(error.contains(key), "{file}: {error}");
            }
            Ok(())
        });
    }

    #[test]
    fn rules_load_in_order_and_bad_rules_name_their_key() {
        jail(|jail| {
            jail.create_file(
                "config.toml",
                r#"
                [vault]
                addr = "http://x"
                token_file = "/t"
                [[rules]]
                path = "secret/admin"
                allow = false
                [[rules]]
                path = "secret/team-a/*"
                auth = "approle"
                approle = { role_id_file = "/r", secret_id_file = "/s" }
                [[rules]]
                path = "secret/app-1"
                namespace = "team-*"
                "#,
            )?;
            let config =
                Config::load(Path::new("config.toml"), true, &FlagOverrides::default()).unwrap();
            let rules = config.access_rules();
            assert_eq!(rules.rules().len(), 3);
            let app = VaultPath::from_volume_name("secret/app-1/db").unwrap();
            assert!(rules.decide(Some("team-b"), &app).is_ok());
            assert!(rules.decide(None, &app).is_err());
            let scope = crate::access::AuthScope::Rule(1);
            let path = VaultPath::from_volume_name("secret/team-a/app").unwrap();
            assert_eq!(
                rules.decide(None, &path).map(|grant| grant.scope),
                Ok(scope)
            );
            let vault = config.vault_for(scope);
            assert_eq!(vault.auth, AuthMethod::Approle);
            assert_eq!(vault.token_file, None);
            assert_eq!(vault.approle.role_id_file, Some(PathBuf::from("/r")));

            for (rule, key) in [
                ("path = \"secret/../x\"", "rules[0].path"),
                ("path = \"secret/a\"\nauth = \"approle\"", "rules[0].auth"),
                ("path = \"secret/a\"\ntoken_file = \"/t\"", "rules[0].auth"),
                ("path = \"secret/a\"\nauth = \"token\"", "rules[0].auth"),
                ("path = \"secret/a\"\ncolour = 1", "rules"),
                (
                    "path = \"secret/a\"\nnamespace = \"../up\"",
                    "rules[0].namespace",
                ),
            ] {
                jail.create_file(
                    "config.toml",
                    &format!("[vault]\naddr = \"http://x\"\n[[rules]]\n{rule}\n"),
                )?;
                let error = Config::load(Path::new("config.toml"), true, &FlagOverrides::default())
                    .unwrap_err()
                    .to_string();
                assert!(error.contains(key), "{rule}: {error}");
            }
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

    #[test]
    fn scope_fingerprints_follow_credentials_and_rules_and_never_hold_a_token() {
        jail(|jail| {
            let write = |jail: &mut figment::Jail, secret_file: &str, token: &str| {
                jail.create_file(
                    "config.toml",
                    &format!(
                        r#"
                        [vault]
                        addr = "http://vault:8200"
                        token = "{token}"
                        [[rules]]
                        path = "secret/app"
                        auth = "approle"
                        approle = {{ role_id_file = "/r", secret_id_file = "{secret_file}" }}
                        [[rules]]
                        path = "secret"
                        "#
                    ),
                )
            };
            let load =
                || Config::load(Path::new("config.toml"), true, &FlagOverrides::default()).unwrap();
            write(jail, "/s", "token-one")?;
            let base = load();
            let rule = base.scope_fingerprint(AuthScope::Rule(0));
            let default = base.scope_fingerprint(AuthScope::Default);
            assert_ne!(rule, default);
            assert_eq!(
                rule,
                load().scope_fingerprint(AuthScope::Rule(0)),
                "stable across loads"
            );
            assert!(!default.contains("token-one") && !rule.contains("token-one"));
            // An inline token is not a credential setting the fingerprint covers (units never see it).
            write(jail, "/s", "token-two")?;
            assert_eq!(load().scope_fingerprint(AuthScope::Default), default);
            // Other credentials for the rule change its fingerprint, not [vault]'s.
            write(jail, "/other-secret-id", "token-one")?;
            let changed = load();
            assert_ne!(changed.scope_fingerprint(AuthScope::Rule(0)), rule);
            assert_eq!(changed.scope_fingerprint(AuthScope::Default), default);
            // Another Vault changes every fingerprint.
            jail.set_env("VAULT_ADDR", "http://elsewhere:8200");
            let moved = load();
            assert_ne!(moved.scope_fingerprint(AuthScope::Default), default);
            assert_ne!(moved.scope_fingerprint(AuthScope::Rule(0)), rule);
            assert_eq!(
                base.broker_socket,
                PathBuf::from(crate::mount::broker::DEFAULT_SOCKET)
            );
            Ok(())
        });
    }
}
