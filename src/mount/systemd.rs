//! Mounts as transient systemd units, started over D-Bus (StartTransientUnit): each mounted volume is served by
//! its own `docker-volume-libsecret-mount-<volume>.service` running this binary's `serve-mount` mode. The units are
//! not in the driver's cgroup, so containers keep reading their secrets while the driver restarts, crashes or is
//! upgraded; the next driver process adopts them. Transient units never touch the disk: a reboot ends them.
//!
//! A unit reads the root-only config file itself (address, TLS, rules) and borrows its Vault tokens from the
//! driver's token broker (src/mount/broker.rs): it reads no credential file, and nothing secret goes into its argv,
//! environment or unit properties.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zbus::zvariant::{OwnedObjectPath, Value};

use crate::lease::reaper::ReapTrigger;
use crate::mount::mountpoint::{detach, is_stale_mount, prepare_mountpoint, remove_mountpoint};
use crate::mount::{ActiveMount, MountError, MountPlan, Mounter};
use crate::names::sha256_hex;
use crate::status::{HealthProbe, UnitReports};

/// Every mount unit's name starts with this.
pub const UNIT_PREFIX: &str = "docker-volume-libsecret-mount-";

/// systemd's limit on unit name length.
const MAX_UNIT_NAME: usize = 255;

/// The journald identifier of the driver and its mount units.
pub use crate::sys::logging::SYSLOG_IDENTIFIER;

/// glibc's malloc settings for mount units, of which hundreds may run (issue #6, target P5): one arena (the FUSE
/// thread would otherwise get its own), and the default mmap threshold kept fixed, since freeing fuser's 16 MiB
/// buffer would raise it (and the trim threshold with it) so far that the heap would never be trimmed again.
const MOUNT_UNIT_MALLOC: &str =
    "GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=131072";

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;

    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;

    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn description(&self) -> zbus::Result<String>;
}

/// Escapes like `systemd-escape`: `/` becomes `-`, and every byte other than ASCII letters, digits, `:`, `_` and a
/// non-leading `.` becomes `\xNN`. Injective, since a literal `-` is escaped too.
pub fn systemd_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (index, byte) in text.bytes().enumerate() {
        match byte {
            b'/' => out.push('-'),
            b'.' if index > 0 => out.push('.'),
            _ if byte.is_ascii_alphanumeric() || byte == b':' || byte == b'_' => {
                out.push(char::from(byte))
            }
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out
}

/// The mount unit of a volume. Names too long for systemd use a SHA-256 of the volume name instead, after a `.`:
/// [`systemd_escape`] never starts with one (it escapes a leading `.`), so a volume literally named like a hashed
/// name (`sha256/<hex>` escapes to `sha256-<hex>`) never gets, or stops, another volume's unit.
pub fn unit_name(volume: &str) -> String {
    let escaped = systemd_escape(volume);
    let name = format!("{UNIT_PREFIX}{escaped}.service");
    if name.len() <= MAX_UNIT_NAME {
        return name;
    }
    format!("{UNIT_PREFIX}.sha256-{}.service", sha256_hex(volume))
}

/// The mount unit of one lease holder of a dynamic volume (a container's mount ID, or `per-volume`): each holder's
/// unit keeps its own lease. After the prefix comes `.lease-`, which neither [`unit_name`] form starts with, then
/// the escaped holder, which holds no `-` (escaped), so the holder and the volume are told apart. Names too long
/// for systemd use a SHA-256 of both after `.lease.`.
pub fn lease_unit_name(volume: &str, holder: &str) -> String {
    let name = format!(
        "{UNIT_PREFIX}.lease-{}-{}.service",
        systemd_escape(holder),
        systemd_escape(volume)
    );
    if name.len() <= MAX_UNIT_NAME {
        return name;
    }
    format!(
        "{UNIT_PREFIX}.lease.sha256-{}.service",
        sha256_hex(&format!("{holder}\n{volume}"))
    )
}

/// The unit serving the planned mount.
pub fn unit_of(plan: &MountPlan) -> String {
    match &plan.lease {
        Some(lease) => lease_unit_name(&plan.name, &lease.holder),
        None => unit_name(&plan.name),
    }
}

/// Vault's own variables a mount unit needs to load the same configuration as the driver. Never `VAULT_TOKEN`.
const VAULT_VARIABLES: &[&str] = &[
    "VAULT_ADDR",
    "VAULT_CACERT",
    "VAULT_CAPATH",
    "VAULT_CLIENT_CERT",
    "VAULT_CLIENT_KEY",
    "VAULT_TLS_SERVER_NAME",
    "VAULT_SKIP_VERIFY",
    "VAULT_NAMESPACE",
    "RUST_LOG",
];

/// The prefix of the driver's own variables; figment matches it in any case.
const LIBSECRET_PREFIX: &str = "LIBSECRET_";

/// Config keys whose value is a secret.
const SECRET_KEYS: &[&str] = &["vault.token"];

/// The config key a `LIBSECRET_*` variable sets, as figment reads it (`LIBSECRET_VAULT__ADDR`: `vault.addr`), or
/// `None` for any other variable.
fn libsecret_key(name: &str) -> Option<String> {
    let prefix = name.get(..LIBSECRET_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(LIBSECRET_PREFIX) {
        return None;
    }
    let rest = name[LIBSECRET_PREFIX.len()..].to_ascii_lowercase();
    // Empty segments are dropped, so `VAULT____TOKEN` or `VAULT__` cannot slip past as an unknown key.
    let segments: Vec<&str> = rest.split("__").filter(|s| !s.is_empty()).collect();
    Some(segments.join("."))
}

/// Whether an environment variable may hold a secret: `VAULT_TOKEN`, or a `LIBSECRET_*` variable that sets a secret
/// key or a table holding one (figment parses `LIBSECRET_VAULT={token="..."}` as a table), or whose name mentions a
/// token in any other way than a token file's path.
pub fn may_carry_secret(name: &str) -> bool {
    if name == "VAULT_TOKEN" {
        return true;
    }
    let Some(key) = libsecret_key(name) else {
        return false;
    };
    let mentions_token = key
        .split('.')
        .any(|segment| segment.contains("token") && segment != "token_file");
    SECRET_KEYS.contains(&key.as_str()) || is_secret_table(&key) || mentions_token
}

/// Whether a `LIBSECRET_*` variable sets a whole table that holds a secret key (`LIBSECRET_VAULT={...}`). Withheld
/// from mount units, it takes the table's other settings with it, so units would not load the driver's config.
pub fn sets_secret_table(name: &str) -> bool {
    libsecret_key(name).is_some_and(|key| is_secret_table(&key))
}

fn is_secret_table(key: &str) -> bool {
    SECRET_KEYS
        .iter()
        .any(|secret| key.is_empty() || secret.starts_with(&format!("{key}.")))
}

/// Whether a mount unit inherits the variable: Vault's own non-secret ones, and `LIBSECRET_*` (in any case) unless
/// it may hold a secret. Unit properties are shown by `systemctl show` to any local user.
fn passes_to_mount_units(name: &str) -> bool {
    !may_carry_secret(name) && (VAULT_VARIABLES.contains(&name) || libsecret_key(name).is_some())
}

/// The `NAME=VALUE` environment of mount units, out of the driver's `variables`. Variables that are not UTF-8 are
/// left out: systemd's `Environment=` takes text.
pub fn mount_unit_environment(
    variables: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<String> {
    variables
        .into_iter()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, _)| passes_to_mount_units(name))
        .map(|(name, value)| format!("{name}={value}"))
        .collect()
}

/// Why a unit could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("systemd D-Bus call failed: {0}")]
    Bus(#[from] zbus::Error),
    #[error("{unit} failed to start (its state is {state}); see `journalctl -u {unit}`")]
    Failed { unit: String, state: String },
    #[error("{unit} did not become {wanted} within {seconds}s; see `journalctl -u {unit}`")]
    Timeout {
        unit: String,
        wanted: &'static str,
        seconds: u64,
    },
}

/// How mount units are run: which binary, with which (non-secret) arguments and environment.
#[derive(Debug, Clone)]
pub struct MountUnitTemplate {
    /// The binary, normally `/usr/bin/docker-volume-libsecret`.
    pub executable: PathBuf,
    /// Arguments before `serve-mount`: the config file and any non-secret settings the driver got from flags.
    pub config_args: Vec<String>,
    /// Non-secret environment (`LIBSECRET_*` settings other than tokens, `VAULT_ADDR`, ...).
    pub environment: Vec<String>,
    /// How long a unit may take to mount and report READY=1.
    pub start_timeout: Duration,
    /// How long a dynamic volume's unit may take to stop: it waits the unmount grace, then revokes its leases.
    pub lease_stop_timeout: Duration,
    /// The access rules in force: a unit records the digest of those that decide its reads, and a running unit
    /// with another digest is not adopted.
    pub access: crate::access::AccessRules,
    /// The root-only runtime directory (the control socket's), where units record the rules they reloaded.
    pub runtime_dir: PathBuf,
}

/// The digest of the rules deciding the planned volume's reads, as its unit's description carries it
/// (`(rules <hex>)`).
pub fn rules_tag(access: &crate::access::AccessRules, plan: &MountPlan) -> String {
    let namespace = plan.parsed.namespace.as_deref();
    format!("(rules {})", access.digest_below(namespace, &plan.path))
}

/// Where a mount unit records the digest of the rules it reloaded ([`rules_tag`]), in the root-only runtime
/// directory `dir`: its description still has the digest it started with.
pub fn reloaded_rules_file(dir: &Path, unit: &str) -> PathBuf {
    dir.join("units").join(format!("{unit}.rules"))
}

/// Starts and stops mount units over the system bus.
#[derive(Clone)]
pub struct SystemdMounter {
    manager: ManagerProxy<'static>,
    connection: zbus::Connection,
    template: MountUnitTemplate,
    /// Asked for a journal pass after a dynamic volume's unit stops: if it had died, nobody else revokes its lease.
    reap_trigger: ReapTrigger,
    /// What the units report about their filesystems over the control socket.
    reports: Arc<UnitReports>,
    /// The rules in force, whose digest a unit started now records (the template's until a reload).
    access: Arc<std::sync::RwLock<crate::access::AccessRules>>,
}

impl std::fmt::Debug for SystemdMounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemdMounter")
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

impl SystemdMounter {
    pub async fn connect(
        template: MountUnitTemplate,
        reap_trigger: ReapTrigger,
        reports: Arc<UnitReports>,
    ) -> Result<Self, UnitError> {
        let connection = zbus::Connection::system().await?;
        let manager = ManagerProxy::new(&connection).await?;
        Ok(SystemdMounter {
            manager,
            connection,
            access: Arc::new(std::sync::RwLock::new(template.access.clone())),
            template,
            reap_trigger,
            reports,
        })
    }

    fn access(&self) -> crate::access::AccessRules {
        self.access
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The unit's ActiveState, or `None` when systemd does not know the unit (never started, or collected).
    async fn unit(&self, unit: &str) -> Result<Option<UnitProxy<'static>>, UnitError> {
        let path = match self.manager.get_unit(unit).await {
            Ok(path) => path,
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str().ends_with("NoSuchUnit") => {
                return Ok(None)
            }
            Err(error) => return Err(error.into()),
        };
        Ok(Some(
            UnitProxy::builder(&self.connection)
                .path(path)?
                .build()
                .await?,
        ))
    }

    async fn active_state(&self, unit: &str) -> Result<Option<String>, UnitError> {
        match self.unit(unit).await? {
            Some(proxy) => Ok(Some(proxy.active_state().await?)),
            None => Ok(None),
        }
    }

    async fn description(&self, unit: &str) -> Result<Option<String>, UnitError> {
        match self.unit(unit).await? {
            Some(proxy) => Ok(Some(proxy.description().await?)),
            None => Ok(None),
        }
    }

    /// Polls until the unit is active (Ok) or has failed (Err).
    async fn wait_active(&self, unit: &str) -> Result<(), UnitError> {
        let started = Instant::now();
        let mut seen = false;
        loop {
            match self.active_state(unit).await?.as_deref() {
                Some("active") => return Ok(()),
                Some("activating" | "reloading") => seen = true,
                // Collected after failing (CollectMode=inactive-or-failed), or failed.
                Some(state @ ("failed" | "inactive" | "deactivating"))
                    if seen || state == "failed" =>
                {
                    return Err(UnitError::Failed {
                        unit: unit.to_owned(),
                        state: state.to_owned(),
                    })
                }
                None if seen => {
                    return Err(UnitError::Failed {
                        unit: unit.to_owned(),
                        state: "gone".to_owned(),
                    })
                }
                _ => {}
            }
            if started.elapsed() > self.template.start_timeout {
                return Err(UnitError::Timeout {
                    unit: unit.to_owned(),
                    wanted: "active",
                    seconds: self.template.start_timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Asks systemd to stop the unit (a unit that is not there is stopped).
    async fn request_stop(&self, unit: &str) -> Result<(), UnitError> {
        match self.manager.stop_unit(unit, "replace").await {
            Ok(_) => Ok(()),
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str().ends_with("NoSuchUnit") => {
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Stops the unit and waits until systemd has let go of it.
    async fn stop(&self, unit: &str) -> Result<(), UnitError> {
        self.request_stop(unit).await?;
        let started = Instant::now();
        while let Some(state) = self.active_state(unit).await? {
            if state == "failed" {
                let _ = self.manager.reset_failed_unit(unit).await;
            }
            if state == "inactive" || started.elapsed() > Duration::from_secs(30) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    async fn start(&self, unit: &str, plan: &MountPlan) -> Result<(), UnitError> {
        let (volume, mountpoint, options) = (&plan.name, &plan.mountpoint, &plan.options);
        let rules_tag = rules_tag(&self.access(), plan);
        let holder = plan.lease.as_ref().map(|lease| lease.holder.as_str());
        // A failed or stopping leftover of the same name would make StartTransientUnit refuse.
        self.stop(unit).await?;
        let executable = self.template.executable.display().to_string();
        let mut argv = vec![executable.clone()];
        argv.extend(self.template.config_args.iter().cloned());
        argv.extend([
            "serve-mount".to_owned(),
            "--volume".to_owned(),
            volume.to_owned(),
            "--mountpoint".to_owned(),
            mountpoint.display().to_string(),
        ]);
        for (key, value) in options {
            argv.extend(["--option".to_owned(), format!("{key}={value}")]);
        }
        if let Some(holder) = holder {
            argv.extend(["--lease-holder".to_owned(), holder.to_owned()]);
        }
        let exec_start = vec![(executable, argv, false)];
        let mut environment = self.template.environment.clone();
        environment.push(MOUNT_UNIT_MALLOC.to_owned());
        let micros = |duration: Duration| u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        let timeout_usec = micros(self.template.start_timeout);
        let description = match holder {
            Some(holder) => {
                format!("docker-volume-libsecret mount of volume {volume} for lease holder {holder} {rules_tag}")
            }
            None => format!("docker-volume-libsecret mount of volume {volume} {rules_tag}"),
        };
        let mut properties: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(description)),
            ("Type", Value::from("notify")),
            ("NotifyAccess", Value::from("main")),
            ("ExecStart", Value::from(exec_start)),
            ("Environment", Value::from(environment)),
            ("SyslogIdentifier", Value::from(SYSLOG_IDENTIFIER)),
            ("CollectMode", Value::from("inactive-or-failed")),
            ("LimitCORE", Value::from(0u64)),
            ("TimeoutStartUSec", Value::from(timeout_usec)),
            // Stop after dockerd at shutdown, so containers keep their secrets until they end.
            ("Before", Value::from(vec!["docker.service".to_owned()])),
        ];
        if holder.is_some() {
            properties.push((
                "TimeoutStopUSec",
                Value::from(micros(self.template.lease_stop_timeout)),
            ));
        }
        properties.extend(mount_unit_hardening());
        // A stopped unit of the same name is unloaded by systemd's garbage collection soon after, not at once:
        // until then StartTransientUnit answers UnitExists, so it is asked again for a few seconds.
        let started = Instant::now();
        loop {
            match self
                .manager
                .start_transient_unit(unit, "replace", &properties, &[])
                .await
            {
                Ok(_) => break,
                Err(zbus::Error::MethodError(name, _, _))
                    if name.as_str().ends_with("UnitExists") && started.elapsed() < UNLOAD_WAIT =>
                {
                    let _ = self.manager.reset_failed_unit(unit).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
        self.wait_active(unit).await
    }
}

/// How long a start waits for a stopped unit of the same name to be unloaded.
const UNLOAD_WAIT: Duration = Duration::from_secs(10);

/// Linux capability numbers (linux/capability.h) a mount unit keeps.
const CAP_IPC_LOCK: u64 = 14;
const CAP_SYS_ADMIN: u64 = 21;

/// How much memory and how many tasks one mount unit may use: far above what one serves (about 4 MB and a few
/// threads), low enough that a container flooding its mount cannot take the host's memory or pids.
pub const MOUNT_UNIT_MEMORY_MAX: u64 = 128 * 1024 * 1024;
pub const MOUNT_UNIT_TASKS_MAX: u64 = 32;

/// The service unit's hardening, for mount units, which parse every FUSE request a container sends. Nothing here
/// creates a mount namespace (no ProtectSystem, PrivateTmp, PrivateDevices, ...): the FUSE mount must stay
/// visible to dockerd. What is left: no new privileges; only the capabilities mounting (CAP_SYS_ADMIN) and locking
/// secrets in memory (CAP_IPC_LOCK) need; the service's system call filter; Unix and IP sockets only (journald,
/// sd_notify, Vault); /dev/fuse as the one device; no namespaces, realtime, set-uid files, personality changes or
/// writable-executable memory; and memory and task limits.
pub fn mount_unit_hardening() -> Vec<(&'static str, Value<'static>)> {
    let strings = |items: &[&str]| {
        items
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<String>>()
    };
    vec![
        ("NoNewPrivileges", Value::from(true)),
        (
            "CapabilityBoundingSet",
            Value::from((1u64 << CAP_SYS_ADMIN) | (1u64 << CAP_IPC_LOCK)),
        ),
        ("AmbientCapabilities", Value::from(0u64)),
        ("DevicePolicy", Value::from("closed")),
        (
            "DeviceAllow",
            Value::from(vec![("/dev/fuse".to_owned(), "rw".to_owned())]),
        ),
        ("LockPersonality", Value::from(true)),
        ("MemoryDenyWriteExecute", Value::from(true)),
        ("RestrictRealtime", Value::from(true)),
        ("RestrictSUIDSGID", Value::from(true)),
        // The namespace types a unit may create: none.
        ("RestrictNamespaces", Value::from(0u64)),
        (
            "RestrictAddressFamilies",
            Value::from((true, strings(&["AF_UNIX", "AF_INET", "AF_INET6"]))),
        ),
        ("SystemCallArchitectures", Value::from(strings(&["native"]))),
        (
            "SystemCallFilter",
            Value::from((true, strings(&["@system-service", "@mount"]))),
        ),
        ("SystemCallErrorNumber", Value::from(nix::libc::EPERM)),
        ("KeyringMode", Value::from("private")),
        ("UMask", Value::from(0o077u32)),
        ("MemoryMax", Value::from(MOUNT_UNIT_MEMORY_MAX)),
        ("TasksMax", Value::from(MOUNT_UNIT_TASKS_MAX)),
    ]
}

/// A volume served by a mount unit.
#[derive(Debug)]
struct UnitMount {
    mounter: SystemdMounter,
    volume: String,
    unit: String,
    mountpoint: PathBuf,
    /// The unit keeps a dynamic volume's lease, and revokes it after the unmount grace once stopped.
    leased: bool,
}

/// How long an Unmount waits for a stopping dynamic volume's unit to release its filesystem (the unit unmounts
/// within 2 s of being stopped, then ends its lease, which Docker's Unmount does not wait for).
const LEASED_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Whether a filesystem is mounted at `path` (its device differs from its parent directory's).
fn is_mount_root(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(parent) = path.parent() else {
        return false;
    };
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(this), Ok(above)) => this.dev() != above.dev(),
        _ => false,
    }
}

impl UnitMount {
    async fn is_active(&self) -> bool {
        let state = self.mounter.active_state(&self.unit).await;
        matches!(state, Ok(Some(ref s)) if s == "active")
    }

    /// Whether the (stopping) unit still has its filesystem mounted.
    async fn still_serving(&self) -> bool {
        let state = self.mounter.active_state(&self.unit).await;
        if !matches!(state, Ok(Some(ref s)) if s == "active" || s == "deactivating") {
            return false;
        }
        let mountpoint = self.mountpoint.clone();
        tokio::task::spawn_blocking(move || is_mount_root(&mountpoint))
            .await
            .unwrap_or(false)
    }
}

#[async_trait::async_trait]
impl ActiveMount for UnitMount {
    async fn unmount(self: Box<Self>) -> Result<(), MountError> {
        let stopping = if self.leased {
            self.mounter.request_stop(&self.unit).await
        } else {
            self.mounter.stop(&self.unit).await
        };
        crate::metrics::unit_stopped(crate::metrics::Outcome::of(&stopping));
        stopping?;
        if self.leased {
            let started = Instant::now();
            while started.elapsed() < LEASED_RELEASE_WAIT && self.still_serving().await {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // A unit that died (SIGKILL, OOM) left its lease to the journal; one still stopping ends its own, and
            // the pass leaves it alone while its process runs.
            self.mounter.reap_trigger.reap_soon();
        }
        // The unit is gone, so whatever is still mounted there is dead (a SIGKILLed server leaves its mount).
        let mountpoint = self.mountpoint.clone();
        tokio::task::spawn_blocking(move || {
            detach(&mountpoint).map_err(MountError::Mountpoint)?;
            remove_mountpoint(&mountpoint);
            Ok::<(), MountError>(())
        })
        .await??;
        self.mounter.reports.forget(&self.unit);
        let _ = std::fs::remove_file(reloaded_rules_file(
            &self.mounter.template.runtime_dir,
            &self.unit,
        ));
        crate::metrics::forget_unit(&self.unit);
        tracing::info!(volume = %self.volume, unit = %self.unit, mountpoint = %self.mountpoint.display(), "mount unit of {} stopped", self.volume);
        Ok(())
    }

    fn health_probe(&self) -> HealthProbe {
        HealthProbe::Unit {
            unit: self.unit.clone(),
            reports: self.mounter.reports.clone(),
        }
    }

    async fn is_alive(&self) -> bool {
        if !self.is_active().await {
            return false;
        }
        let mountpoint = self.mountpoint.clone();
        tokio::task::spawn_blocking(move || !is_stale_mount(&mountpoint))
            .await
            .unwrap_or(false)
    }

    fn outlives_driver(&self) -> bool {
        true
    }
}

#[async_trait::async_trait]
impl Mounter for SystemdMounter {
    /// Units started from now on read the reloaded config file themselves; they record the new rules' digest.
    fn reconfigure(&self, access: &crate::access::AccessRules, _fs_options: &crate::fs::FsOptions) {
        *self.access.write().unwrap_or_else(|p| p.into_inner()) = access.clone();
    }

    /// SIGHUP to each unit's main process: it reads the config file again and puts the rules in force for its
    /// reads (and records their digest, by which a later driver adopts it).
    async fn reload_units(&self, units: &[String]) {
        for unit in units {
            match self
                .manager
                .kill_unit(unit, "main", nix::libc::SIGHUP)
                .await
            {
                Ok(()) => {
                    tracing::info!(unit = %unit, "asked mount unit {unit} to reload its rules")
                }
                Err(error) => {
                    tracing::warn!(unit = %unit, %error, "could not ask mount unit {unit} to reload its rules: {error}")
                }
            }
        }
    }

    async fn mount(&self, plan: &MountPlan) -> Result<Box<dyn ActiveMount>, MountError> {
        let mountpoint = plan.mountpoint.clone();
        tokio::task::spawn_blocking(move || prepare_mountpoint(&mountpoint))
            .await?
            .map_err(MountError::Mountpoint)?;
        let unit = unit_of(plan);
        let started = Instant::now();
        let starting = self.start(&unit, plan).await;
        crate::metrics::unit_started(crate::metrics::Outcome::of(&starting));
        starting?;
        tracing::info!(
            volume = %plan.name,
            unit = %unit,
            mountpoint = %plan.mountpoint.display(),
            start_ms = started.elapsed().as_millis() as u64,
            "mount unit of {} started: {unit}",
            plan.name
        );
        Ok(Box::new(UnitMount {
            mounter: self.clone(),
            volume: plan.name.clone(),
            unit,
            mountpoint: plan.mountpoint.clone(),
            leased: plan.lease.is_some(),
        }))
    }

    async fn adopt(&self, plan: &MountPlan) -> Option<Box<dyn ActiveMount>> {
        let mount = UnitMount {
            mounter: self.clone(),
            volume: plan.name.clone(),
            unit: unit_of(plan),
            mountpoint: plan.mountpoint.clone(),
            leased: plan.lease.is_some(),
        };
        if mount.is_alive().await {
            // A unit decides every read by the rules it started with: adopt it only if those are still in force.
            let description = self
                .description(&mount.unit)
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            let tag = rules_tag(&self.access(), plan);
            let reloaded = std::fs::read_to_string(reloaded_rules_file(
                &self.template.runtime_dir,
                &mount.unit,
            ))
            .ok();
            let in_force = match reloaded {
                Some(reloaded) => reloaded == tag,
                None => description.ends_with(&tag),
            };
            if in_force {
                tracing::info!(volume = %plan.name, unit = %mount.unit, "re-adopted the running mount unit of {}", plan.name);
                return Some(Box::new(mount));
            }
            tracing::warn!(
                volume = %plan.name,
                unit = %mount.unit,
                "stopping a running mount unit that decides reads by other access rules than those now in force; \
                 containers using it must be restarted"
            );
        }
        // A unit that lost its mount is of no use to anyone: stop it, so the next Mount starts clean.
        let _ = self.stop(&mount.unit).await;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_escaped_like_systemd_escape_and_never_collide() {
        assert_eq!(
            unit_name("secret/app-1"),
            "docker-volume-libsecret-mount-secret-app\\x2d1.service"
        );
        assert_eq!(
            unit_name("secret/app-1/"),
            "docker-volume-libsecret-mount-secret-app\\x2d1-.service"
        );
        let names = [
            "secret/a-b",
            "secret/a/b",
            "secret-a/b",
            "secret/a.b",
            ".x",
            "secret/a b",
            "a\\x2d",
        ];
        let units: Vec<String> = names.iter().map(|n| unit_name(n)).collect();
        for (i, a) in units.iter().enumerate() {
            assert!(a.len() <= MAX_UNIT_NAME);
            assert!(!a[UNIT_PREFIX.len()..].starts_with('.'), "{a}");
            for b in &units[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    fn environment(variables: &[(&str, &str)]) -> Vec<String> {
        mount_unit_environment(
            variables
                .iter()
                .map(|(name, value)| ((*name).into(), (*value).into())),
        )
    }

    #[test]
    fn mount_units_inherit_settings_and_paths_but_never_a_token() {
        let passed = [
            "LIBSECRET_VAULT__ADDR",
            "libsecret_vault__addr",
            "LIBSECRET_CACHE_TTL",
            "LIBSECRET_CONFIG",
            "LIBSECRET_VAULT__TOKEN_FILE",
            "libsecret_vault__token_file",
            "LibSecret_Vault__Token_File",
            "LIBSECRET_VAULT__APPROLE__SECRET_ID_FILE",
            "VAULT_ADDR",
            "VAULT_CACERT",
            "VAULT_CLIENT_KEY",
            "RUST_LOG",
        ];
        let withheld = [
            "VAULT_TOKEN",
            "LIBSECRET_VAULT__TOKEN",
            "LIBSECRET_VAULT__token",
            "libsecret_vault__token",
            "LiBsEcReT_vAuLt__ToKeN",
            "LIBSECRET_VAULT__TOKEN__",
            "LIBSECRET_VAULT____TOKEN",
            "LIBSECRET_VAULT",
            "libsecret_vault",
            "LIBSECRET_VAULT__",
            "LIBSECRET_VAULT__TOKEN_FILEX",
            "LIBSECRET_VAULT__APPROLE__TOKEN",
            "PATH",
            "HOME",
            "vault_addr",
        ];
        let variables: Vec<(&str, &str)> = passed
            .iter()
            .chain(&withheld)
            .map(|name| (*name, "value-of-it"))
            .collect();
        let expected: Vec<String> = passed
            .iter()
            .map(|name| format!("{name}=value-of-it"))
            .collect();
        assert_eq!(environment(&variables), expected);
    }

    #[test]
    fn variables_that_are_not_text_are_left_out() {
        use std::os::unix::ffi::OsStringExt;
        let variables = [
            (
                std::ffi::OsString::from_vec(b"LIBSECRET_\xff".to_vec()),
                "x".into(),
            ),
            (
                "LIBSECRET_MOUNT_ROOT".into(),
                std::ffi::OsString::from_vec(b"/\xff".to_vec()),
            ),
            ("LIBSECRET_STATE_DIR".into(), "/var/lib/x".into()),
        ];
        assert_eq!(
            mount_unit_environment(variables),
            vec!["LIBSECRET_STATE_DIR=/var/lib/x".to_owned()]
        );
    }

    /// Every spelling figment reads as `vault.token` is one `may_carry_secret` withholds: the two rules agree.
    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment's (large) error type
    fn every_variable_figment_reads_as_the_token_is_withheld() {
        use crate::config::{Config, FlagOverrides};
        for (name, value) in [
            ("VAULT_TOKEN", "hvs.a"),
            ("LIBSECRET_VAULT__TOKEN", "hvs.a"),
            ("LIBSECRET_VAULT__token", "hvs.a"),
            ("libsecret_vault__token", "hvs.a"),
            ("LIBSECRET_vault__TOKEN", "hvs.a"),
            ("LIBSECRET_VAULT", "{token=\"hvs.a\"}"),
            ("libsecret_Vault", "{token=\"hvs.a\"}"),
        ] {
            figment::Jail::expect_with(|jail| {
                jail.set_env(name, value);
                let config =
                    Config::load(Path::new("absent.toml"), false, &FlagOverrides::default())
                        .unwrap();
                let token = config.vault.token.as_ref().map(|t| t.expose().to_owned());
                assert_eq!(token.as_deref(), Some("hvs.a"), "{name}");
                assert!(may_carry_secret(name), "{name}");
                assert_eq!(sets_secret_table(name), value.starts_with('{'), "{name}");
                assert_eq!(
                    environment(&[(name, value)]),
                    Vec::<String>::new(),
                    "{name}"
                );
                Ok(())
            });
        }
    }

    #[test]
    fn long_volume_names_get_a_hashed_unit_name() {
        let long = format!("secret/{}", "x".repeat(1000));
        let unit = unit_name(&long);
        assert!(unit.len() <= MAX_UNIT_NAME, "{unit}");
        assert!(unit.starts_with("docker-volume-libsecret-mount-.sha256-"));
        assert_ne!(unit, unit_name(&format!("secret/{}", "y".repeat(1000))));
    }

    /// A volume named after another volume's hashed unit name gets a unit of its own.
    #[test]
    fn a_volume_named_like_a_hashed_unit_name_gets_another_unit() {
        let long = format!("secret/{}", "x".repeat(1000));
        let hashed = unit_name(&long);
        let hex = sha256_hex(&long);
        for literal in [
            format!("sha256/{hex}"),
            format!(".sha256/{hex}"),
            format!("sha256-{hex}"),
        ] {
            let unit = unit_name(&literal);
            assert!(unit.len() <= MAX_UNIT_NAME, "{unit}");
            assert_ne!(unit, hashed, "{literal}");
        }
    }

    /// Each lease holder of a dynamic volume has its own unit, never a KV volume's nor another holder's.
    #[test]
    fn lease_units_are_named_per_holder_and_never_collide_with_other_units() {
        let id = "0123456789abcdef".repeat(4);
        assert_eq!(
            lease_unit_name("database/creds/app", &id),
            format!("docker-volume-libsecret-mount-.lease-{id}-database-creds-app.service")
        );
        let pairs = [
            ("database/creds/app", id.as_str()),
            ("database/creds/app", "per-volume"),
            ("database/creds/app-x", "a"),
            ("x-database/creds/app", "a"),
            ("database/creds/app", "a-x"),
            ("database/creds", "a-app"),
        ];
        let mut names: Vec<String> = pairs
            .iter()
            .map(|(volume, holder)| lease_unit_name(volume, holder))
            .collect();
        // KV volumes named to look like a lease unit's escaped name.
        names.push(unit_name(&format!(".lease/{id}/database/creds/app")));
        names.push(unit_name(&format!("lease/{id}/database/creds/app")));
        let long = format!("pki/issue/{}", "x".repeat(300));
        names.push(lease_unit_name(&long, "a"));
        names.push(lease_unit_name(&long, "b"));
        names.push(unit_name(&long));
        for (i, a) in names.iter().enumerate() {
            assert!(a.len() <= MAX_UNIT_NAME, "{a}");
            for b in &names[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    proptest::proptest! {
        /// Escaped names never start with `.` (an empty name leaves only `.service`), hashed ones always start with
        /// `.sha256-`: the two name spaces are disjoint.
        #[test]
        fn escaped_and_hashed_unit_names_are_disjoint(volume in "\\PC{0,300}") {
            let unit = unit_name(&volume);
            let hashed = systemd_escape(&volume).len() + UNIT_PREFIX.len() + ".service".len() > MAX_UNIT_NAME;
            proptest::prop_assert_eq!(unit[UNIT_PREFIX.len()..].starts_with(".sha256-"), hashed, "{}", unit);
        }
    }
}
