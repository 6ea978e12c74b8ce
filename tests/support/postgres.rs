//! A real PostgreSQL 15 server (Debian's `postgresql` package) for the tests of OpenBao's database secrets engine:
//! a throw-away cluster in a temp dir, run as the `postgres` user on a free 127.0.0.1 port, with scram-sha-256
//! password authentication. Stopped (`pg_ctl stop -m immediate`) and removed on drop.
//!
//! The binaries are in [`PG_BIN`], installed by `scripts/setup-test-host.sh`. Tests that need them never skip:
//! [`Postgres::start`] panics if they are missing.
//!
//! Facts this module relies on (checked by hand on Debian 12, PostgreSQL 15):
//! - `initdb` and `postgres` refuse to run as root, hence `runuser -u postgres --`. The temp dir is chowned to
//!   `postgres` (initdb creates the data directory inside it, and the server its unix socket there, `-k`).
//! - The package's own cluster (`15/main` on 5432) is not started without systemd; when it is, it does not get in
//!   the way: ours has its own port and socket directory.
//! - `psql` run as root as a TCP client (`-h 127.0.0.1`) needs no local account: with `-w` it never prompts, and
//!   the password comes from `PGPASSWORD`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::http::free_port;

/// Where Debian's `postgresql-15` puts the server binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running PostgreSQL 15 on 127.0.0.1:<free port> whose superuser `postgres` has [`Postgres::admin_password`].
pub struct Postgres {
    port: u16,
    admin_password: String,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Initialises a cluster in a new temp dir and starts it on a free port; waits until it accepts connections
    /// (`pg_ctl -w`). Panics (never skips) if PostgreSQL is not installed or does not come up.
    pub fn start() -> Postgres {
        for tool in ["initdb", "pg_ctl", "postgres", "psql"] {
            let path = Path::new(PG_BIN).join(tool);
            assert!(
                path.is_file(),
                "{} is missing: install postgresql: scripts/setup-test-host.sh (as root; Debian's postgresql, \
                 version 15)",
                path.display()
            );
        }
        assert!(
            nix::unistd::geteuid().is_root(),
            "PostgreSQL tests must run as root (they start the server as the postgres user)"
        );
        let pg_user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!("no `postgres` user: install postgresql: scripts/setup-test-host.sh")
            });

        let dir = tempfile::Builder::new()
            .prefix("postgres-test-")
            .tempdir()
            .unwrap();
        nix::unistd::chown(dir.path(), Some(pg_user.uid), Some(pg_user.gid)).unwrap();
        let admin_password = format!("pg-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{admin_password}\n")).unwrap();
        std::fs::set_permissions(&pwfile, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        nix::unistd::chown(&pwfile, Some(pg_user.uid), Some(pg_user.gid)).unwrap();

        let mut pg = Postgres {
            port: 0,
            admin_password,
            dir,
        };
        let init = pg.as_postgres(
            "initdb",
            &[
                "-D",
                &pg.data_dir().display().to_string(),
                "-A",
                "scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        assert!(
            init.status.success(),
            "initdb failed ({}):\n{}{}",
            init.status,
            String::from_utf8_lossy(&init.stdout),
            String::from_utf8_lossy(&init.stderr)
        );
        std::fs::remove_file(&pwfile).unwrap();

        // A free port can be taken by another process between the probe and the bind: retry a few times.
        let mut last_err = String::new();
        for _attempt in 0..3 {
            pg.port = free_port();
            let started = pg.as_postgres(
                "pg_ctl",
                &[
                    "-D",
                    &pg.data_dir().display().to_string(),
                    "-o",
                    &format!(
                        "-p {} -k {} -c listen_addresses=127.0.0.1",
                        pg.port,
                        pg.dir.path().display()
                    ),
                    "-l",
                    &pg.log_path().display().to_string(),
                    "-t",
                    "60",
                    "-w",
                    "start",
                ],
            );
            if started.status.success() {
                return pg;
            }
            last_err = format!(
                "pg_ctl start on port {} failed ({}):\n{}{}\n{}",
                pg.port,
                started.status,
                String::from_utf8_lossy(&started.stdout),
                String::from_utf8_lossy(&started.stderr),
                pg.logs_tail()
            );
        }
        panic!("could not start PostgreSQL: {last_err}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password of the superuser `postgres`.
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// The `connection_url` of OpenBao's `postgresql-database-plugin` for this server, with the `{{username}}` and
    /// `{{password}}` placeholders the engine fills from its `username` and `password` fields.
    pub fn connection_url_template(&self) -> String {
        format!(
            "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// Whether `user` with `password` can log in over TCP and run `select 1`.
    pub fn can_log_in(&self, user: &str, password: &str) -> bool {
        self.psql(user, password, "select 1").status.success()
    }

    /// The names of the roles (from `pg_roles`) that start with `prefix`, sorted.
    pub fn roles_like(&self, prefix: &str) -> Vec<String> {
        let out = self.admin_query("select rolname from pg_roles order by rolname");
        out.lines()
            .filter(|name| name.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    /// Whether the role `name` exists.
    pub fn role_exists(&self, name: &str) -> bool {
        let out = self.admin_query("select rolname from pg_roles");
        out.lines().any(|line| line == name)
    }

    /// Runs `sql` as the superuser and returns its unaligned, tuples-only output. Panics if psql fails.
    pub fn admin_query(&self, sql: &str) -> String {
        let out = self.psql("postgres", &self.admin_password, sql);
        assert!(
            out.status.success(),
            "psql as postgres: {sql}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs_tail()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The last lines of the server's log, for panic messages.
    pub fn logs_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "----- postgres server.log (last 30 lines) -----\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// `psql` as a TCP client of 127.0.0.1:port, never prompting, with a 5 s connect timeout.
    fn psql(&self, user: &str, password: &str, sql: &str) -> Output {
        Command::new(Path::new(PG_BIN).join("psql"))
            .args(["-X", "-w", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", user, "-d", "postgres", "-c", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .env_remove("PGSERVICE")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("spawn psql: {e}"))
    }

    /// Runs the server tool `tool` from [`PG_BIN`] as the `postgres` user, in the temp dir.
    fn as_postgres(&self, tool: &str, args: &[&str]) -> Output {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(PG_BIN).join(tool))
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("spawn runuser -u postgres -- {tool}: {e}"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.data_dir().join("postmaster.pid").exists() {
            let _ = self.as_postgres(
                "pg_ctl",
                &[
                    "-D",
                    &self.data_dir().display().to_string(),
                    "-m",
                    "immediate",
                    "-t",
                    "20",
                    "-w",
                    "stop",
                ],
            );
        }
        // `-w` waited for the postmaster to exit; TempDir's drop then removes the directory.
    }
}
