//! Command-line flags. The original tool's flags (`--addr`, `--backend`, `--store-opt key=value`, `-r/--root`) keep
//! their meaning; as with Go's flag package, `-addr` works like `--addr`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use crate::config::{BackendKind, FlagOverrides, DEFAULT_CONFIG_PATH};

/// Serves HashiCorp Vault secrets to Docker containers as read-only files.
#[derive(Debug, Parser)]
#[command(name = "docker-volume-libsecret", version, about, long_about = None)]
pub struct Cli {
    /// Config file (TOML). Absent is fine unless given explicitly (or checked with check-config).
    #[arg(long, env = "LIBSECRET_CONFIG", value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

    /// Vault address, such as https://vault.example.com:8200 (sets vault.addr).
    #[arg(long, value_name = "URL")]
    pub addr: Option<String>,

    /// Secret backend.
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,

    /// Backend option KEY=VALUE, repeatable: token, token_file, timeout, ca_cert, namespace.
    /// A token here is visible in `ps`: prefer token_file.
    #[arg(long = "store-opt", value_name = "KEY=VALUE", value_parser = parse_store_opt)]
    pub store_opt: Vec<(String, String)>,

    /// A root-only file holding the Vault token (sets vault.token_file).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Directory holding the volumes' mountpoints (sets mount_root).
    #[arg(short = 'r', long = "root", value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Plugin socket to bind when not socket-activated (sets socket).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Directory for volume records (sets state_dir).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Secrets file or directory for the file backend (sets file.path).
    #[arg(long, value_name = "PATH")]
    pub secrets_file: Option<PathBuf>,

    /// Log filter, such as info or debug (sets log_level).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Modes other than the driver itself.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Serve one volume's FUSE mount until SIGTERM. The driver runs this as a transient systemd unit.
    #[command(hide = true)]
    ServeMount {
        /// The volume name (a Vault path).
        #[arg(long)]
        volume: String,
        /// Where to mount it.
        #[arg(long)]
        mountpoint: PathBuf,
        /// One of the volume's options, KEY=VALUE (repeatable), validated as at Create. Never a credential.
        #[arg(long = "option", value_parser = parse_store_opt)]
        options: Vec<(String, String)>,
        /// A dynamic volume's lease holder (the container's mount ID, or `per-volume`): the unit issues, keeps and
        /// at its end revokes that holder's lease. Not a credential.
        #[arg(long)]
        lease_holder: Option<String>,
    },
    /// Check the config before a restart: validate the file (errors name the file and the key), log in with every
    /// rule's credentials, and print what each rule allows with which policies. Exits non-zero on any problem. The
    /// running driver is not touched.
    CheckConfig,
    /// Show the running driver's state: each volume with its mounts and units, their last refresh, stale flag
    /// and last error, the Vault node and whether it answers, each login's token TTL and next renewal, and the
    /// leases of dynamic volumes. Asks the driver over its root-only control socket. Exits 0 when healthy, 1 when
    /// unhealthy, 3 when the driver cannot be asked.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the man page (roff) to standard output, or with --out-dir write one page per command there.
    #[command(hide = true)]
    Man {
        /// Write docker-volume-libsecret.8 and a page for each subcommand into this directory.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish, ...) to standard output.
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Backend {
    Vault,
    File,
}

fn parse_store_opt(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        // Never echo the text: it may be a token.
        _ => Err("expected KEY=VALUE".to_owned()),
    }
}

/// Long flags the original (Go) tool accepted with one dash.
const GO_STYLE_FLAGS: &[&str] = &["addr", "backend", "store-opt", "root", "config"];

/// Rewrites `-addr` to `--addr` (and `-addr=x` to `--addr=x`) for the original tool's flags.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    args.into_iter()
        .map(|arg| {
            let Some(text) = arg.to_str() else { return arg };
            let Some(rest) = text.strip_prefix('-').filter(|r| !r.starts_with('-')) else {
                return arg;
            };
            let name = rest.split('=').next().unwrap_or(rest);
            if GO_STYLE_FLAGS.contains(&name) {
                OsString::from(format!("-{text}"))
            } else {
                arg
            }
        })
        .collect()
}

impl Cli {
    /// Parses argv. A rejected value is not echoed back, because it may be a token.
    pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(normalize_args(args)).map_err(|error| {
            if error.kind() != clap::error::ErrorKind::ValueValidation {
                return error;
            }
            let flag = match error.get(clap::error::ContextKind::InvalidArg) {
                Some(clap::error::ContextValue::String(flag)) => flag.clone(),
                _ => "a flag".to_owned(),
            };
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for {flag} (value not shown; it may be a credential)\n"),
            )
        })
    }

    /// Reads a mount unit's argv as the driver writes it ([`Cli::replay_args`], then `serve-mount --volume V
    /// --mountpoint M [--option KEY=VALUE]...`) without clap, whose parser is ~90 KiB of code that each of hundreds of
    /// mount units would otherwise map (issue #6, target P5). `None` for anything else, even what clap would read
    /// the same way: [`Cli::parse_args`] then reads it, so clap stays the judge of every other command line.
    pub fn parse_mount_unit_args(args: &[OsString]) -> Option<Cli> {
        let args: Vec<&str> = args
            .iter()
            .skip(1)
            .map(|arg| arg.to_str())
            .collect::<Option<_>>()?;
        let (global, mount) = args.split_at(args.iter().position(|arg| *arg == "serve-mount")?);
        let mut cli = Cli {
            config: None,
            addr: None,
            backend: None,
            store_opt: Vec::new(),
            token_file: None,
            root: None,
            socket: None,
            state_dir: None,
            secrets_file: None,
            log_level: None,
            command: None,
        };
        for (flag, value) in flag_values(global)? {
            match flag {
                "--config" => set(&mut cli.config, path(value)?)?,
                "--addr" => set(&mut cli.addr, value.to_owned())?,
                "--backend" => set(
                    &mut cli.backend,
                    match value {
                        "vault" => Backend::Vault,
                        "file" => Backend::File,
                        _ => return None,
                    },
                )?,
                "--token-file" => set(&mut cli.token_file, path(value)?)?,
                "--root" => set(&mut cli.root, path(value)?)?,
                "--state-dir" => set(&mut cli.state_dir, path(value)?)?,
                "--secrets-file" => set(&mut cli.secrets_file, path(value)?)?,
                "--log-level" => set(&mut cli.log_level, value.to_owned())?,
                "--store-opt" => cli.store_opt.push(parse_store_opt(value).ok()?),
                _ => return None,
            }
        }
        // Without --config, clap would read LIBSECRET_CONFIG.
        cli.config.as_ref()?;
        let (mut volume, mut mountpoint, mut options) = (None, None, Vec::new());
        let mut lease_holder = None;
        for (flag, value) in flag_values(mount.get(1..)?)? {
            match flag {
                "--volume" => set(&mut volume, value.to_owned())?,
                "--mountpoint" => set(&mut mountpoint, path(value)?)?,
                "--option" => options.push(parse_store_opt(value).ok()?),
                "--lease-holder" => set(&mut lease_holder, value.to_owned())?,
                _ => return None,
            }
        }
        cli.command = Some(Command::ServeMount {
            volume: volume?,
            mountpoint: mountpoint?,
            options,
            lease_holder,
        });
        Some(cli)
    }

    /// The config file and whether it was named explicitly.
    pub fn config_path(&self) -> (PathBuf, bool) {
        match &self.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        }
    }

    /// Arguments that give a mount unit the same configuration: the config file and every non-secret flag.
    /// A `--store-opt token=` is left out on purpose: credentials never go into a unit's argv.
    pub fn replay_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut push = |flag: &str, value: Option<String>| {
            if let Some(value) = value {
                args.push(flag.to_owned());
                args.push(value);
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        push("--config", Some(self.config_path().0.display().to_string()));
        push("--addr", self.addr.clone());
        push(
            "--backend",
            self.backend.map(|b| match b {
                Backend::Vault => "vault".to_owned(),
                Backend::File => "file".to_owned(),
            }),
        );
        push("--token-file", path(&self.token_file));
        push("--root", path(&self.root));
        push("--state-dir", path(&self.state_dir));
        push("--secrets-file", path(&self.secrets_file));
        push("--log-level", self.log_level.clone());
        for (key, value) in &self.store_opt {
            if key != "token" {
                push("--store-opt", Some(format!("{key}={value}")));
            }
        }
        args
    }

    pub fn overrides(&self) -> FlagOverrides {
        FlagOverrides {
            backend: self.backend.map(|b| match b {
                Backend::Vault => BackendKind::Vault,
                Backend::File => BackendKind::File,
            }),
            addr: self.addr.clone(),
            mount_root: self.root.clone(),
            socket: self.socket.clone(),
            state_dir: self.state_dir.clone(),
            token_file: self.token_file.clone(),
            secrets_file: self.secrets_file.clone(),
            log_level: self.log_level.clone(),
            store_opts: self.store_opt.clone(),
        }
    }
}

/// `--flag value` pairs, for [`Cli::parse_mount_unit_args`]; `None` when a value is missing or looks like a flag.
fn flag_values<'a>(args: &[&'a str]) -> Option<Vec<(&'a str, &'a str)>> {
    args.chunks(2)
        .map(|pair| match pair {
            [flag, value] if !value.starts_with('-') => Some((*flag, *value)),
            _ => None,
        })
        .collect()
}

/// Sets a flag's value; `None` when it was already set (clap refuses that).
fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

/// A path flag's value; `None` for an empty one (clap refuses that).
fn path(value: &str) -> Option<PathBuf> {
    (!value.is_empty()).then(|| PathBuf::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let args = normalize_args(args.iter().map(OsString::from));
        Cli::try_parse_from(args).unwrap()
    }

    #[test]
    fn mount_unit_args_are_read_without_clap_as_clap_reads_them() {
        let argv =
            |line: &str| -> Vec<OsString> { line.split_whitespace().map(OsString::from).collect() };
        let drivers = [
            "x",
            "x --config /etc/l/config.toml --addr https://vault:8200 --backend file --token-file /etc/l/token \
             -r /mnt/s --socket /run/x.sock --state-dir /var/lib/x --secrets-file /etc/x.json \
             --log-level debug,hyper=warn --store-opt timeout=5s --store-opt token=hvs.x --store-opt namespace=a=b",
        ];
        for driver in drivers {
            let driver = Cli::parse_args(argv(driver)).unwrap();
            for options in [
                "",
                "--option uid=1000 --option mode=0440",
                "--lease-holder 0123abcd --option lease=per-container",
            ] {
                let mut unit = vec![OsString::from("x")];
                unit.extend(driver.replay_args().into_iter().map(OsString::from));
                unit.extend(argv(&format!(
                    "serve-mount --volume secret/app-1 --mountpoint /m/a {options}"
                )));
                let fast = Cli::parse_mount_unit_args(&unit).expect("a mount unit's argv");
                let clap = Cli::parse_args(unit).unwrap();
                assert_eq!(format!("{fast:?}"), format!("{clap:?}"));
            }
        }
        // Everything else is left to clap.
        let unit = "serve-mount --volume v --mountpoint /m";
        assert!(Cli::parse_mount_unit_args(&argv(&format!("x --config /c {unit}"))).is_some());
        for line in [
            format!("x {unit}"),
            format!("x --config /c --addr a --addr b {unit}"),
            format!("x --config /c --log-level -x {unit}"),
            format!("x --config /c --log-level {unit}"),
            format!("x -config /c {unit}"),
            format!("x --config=/c {unit}"),
            format!("x --config /c --backend vault2 {unit}"),
            format!("x --config /c --store-opt =x {unit}"),
            format!("x --config /c {unit} --help"),
            format!("x --config /c {unit} --option novalue"),
            format!("x --config /c {unit} --volume w"),
            format!("x --config /c {unit} --lease-holder a --lease-holder b"),
            "x --config /c serve-mount --volume v".to_owned(),
            "x --config /c man".to_owned(),
        ] {
            assert!(Cli::parse_mount_unit_args(&argv(&line)).is_none(), "{line}");
        }
        let empty_path = [
            "x",
            "--config",
            "",
            "serve-mount",
            "--volume",
            "v",
            "--mountpoint",
            "/m",
        ];
        assert!(Cli::parse_mount_unit_args(&empty_path.map(OsString::from)).is_none());
    }

    #[test]
    fn the_original_invocation_parses() {
        let cli = parse(&[
            "docker-volume-libsecret",
            "--addr",
            "http://127.0.0.1:8200",
            "--backend",
            "vault",
            "--store-opt",
            "token=abc",
            "-r",
            "/mnt/secrets",
        ]);
        let flags = cli.overrides();
        assert_eq!(flags.addr.as_deref(), Some("http://127.0.0.1:8200"));
        assert_eq!(flags.backend, Some(BackendKind::Vault));
        assert_eq!(
            flags.store_opts,
            vec![("token".to_owned(), "abc".to_owned())]
        );
        assert_eq!(flags.mount_root, Some(PathBuf::from("/mnt/secrets")));
        assert!(flags.has_argv_token());
    }

    #[test]
    fn go_style_single_dash_flags_work() {
        let cli = parse(&[
            "docker-volume-libsecret",
            "-addr=http://v:8200",
            "-backend",
            "vault",
            "-store-opt",
            "token_file=/etc/t",
            "-root",
            "/x",
        ]);
        assert_eq!(cli.addr.as_deref(), Some("http://v:8200"));
        assert_eq!(
            cli.store_opt,
            vec![("token_file".to_owned(), "/etc/t".to_owned())]
        );
        assert_eq!(cli.root, Some(PathBuf::from("/x")));
    }

    #[test]
    fn mount_units_get_every_non_secret_flag_and_never_the_token() {
        let cli = parse(&[
            "docker-volume-libsecret",
            "--addr",
            "http://v:8200",
            "--store-opt",
            "token=hvs.SECRET",
            "--store-opt",
            "namespace=ns1/",
            "-r",
            "/mnt",
        ]);
        let args = cli.replay_args();
        assert!(!args.iter().any(|a| a.contains("SECRET")), "{args:?}");
        let reparsed = parse(
            &[
                &["docker-volume-libsecret"],
                &args.iter().map(String::as_str).collect::<Vec<_>>()[..],
            ]
            .concat(),
        );
        assert_eq!(reparsed.addr.as_deref(), Some("http://v:8200"));
        assert_eq!(reparsed.root, Some(PathBuf::from("/mnt")));
        assert_eq!(
            reparsed.store_opt,
            vec![("namespace".to_owned(), "ns1/".to_owned())]
        );
        assert_eq!(reparsed.config, Some(PathBuf::from(DEFAULT_CONFIG_PATH)));
    }

    #[test]
    fn serve_mount_is_a_hidden_subcommand() {
        let cli = parse(&[
            "docker-volume-libsecret",
            "--config",
            "/etc/x.toml",
            "serve-mount",
            "--volume",
            "secret/a",
            "--mountpoint",
            "/run/m",
        ]);
        assert!(
            matches!(cli.command, Some(Command::ServeMount { ref volume, .. }) if volume == "secret/a")
        );
        let cli = parse(&[
            "docker-volume-libsecret",
            "serve-mount",
            "--volume",
            "secret/a",
            "--mountpoint",
            "/run/m",
            "--option",
            "refresh_interval=1s",
            "--option",
            "mode=0400",
        ]);
        let expected = vec![
            ("refresh_interval".to_owned(), "1s".to_owned()),
            ("mode".to_owned(), "0400".to_owned()),
        ];
        assert!(
            matches!(cli.command, Some(Command::ServeMount { ref options, .. }) if *options == expected)
        );
    }

    #[test]
    fn a_malformed_store_opt_is_refused_without_echoing_it() {
        let error = Cli::parse_args(["x", "--store-opt", "hvs.SECRETTOKEN"].map(OsString::from))
            .unwrap_err()
            .to_string();
        assert!(error.contains("--store-opt"), "{error}");
        assert!(!error.contains("SECRETTOKEN"), "{error}");
    }
}
