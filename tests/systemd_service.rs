//! A real systemd host (a Debian bookworm container running systemd, with its own dockerd): the Debian package
//! installed with apt, the socket enabled, socket activation, journald, mounts as transient units, driver
//! restarts, SIGKILL, upgrade, reboot, remove and purge.
//!
//! Vault is a real OpenBao inside the host (tests/support/openbao_in_host.rs, `install_persistent`): a raft-backed
//! server run as an enabled unit, so a reboot of the host brings back the same server with the same data, as it
//! would in production, unsealed by its unit before Docker starts.
//!
//! Needs the systemd host image and bao (scripts/build-systemd-host.sh, scripts/setup-test-host.sh) and the package
//! (packaging/build-deb.sh, run by scripts/test.sh). Fails, never skips.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/openbao_in_host.rs"]
mod openbao_in_host;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::docker::TEST_IMAGE;
use support::systemd_host::{self, package, SystemdHost};

const SECRET: &str = "s3cr3t-from-vault-9f2c";
const DRIVER: &str = "docker-volume-libsecret.service";
const SOCKET: &str = "docker-volume-libsecret.socket";

/// A systemd host with OpenBao on its loopback, the busybox image, and the package copied in.
struct Host {
    host: SystemdHost,
    /// OpenBao's root token (from its init): what the driver is configured with.
    token: String,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for Host {
    type Target = SystemdHost;
    fn deref(&self) -> &SystemdHost {
        &self.host
    }
}

impl Host {
    fn start() -> Host {
        // One host at a time: each runs its own dockerd and they are heavy for a 2-core machine.
        let turn = support::one_at_a_time();
        let deb = package();
        let host = SystemdHost::start();
        host.copy_in(&deb, "/root/docker-volume-libsecret.deb");
        host.load_image(TEST_IMAGE);
        // A real OpenBao with raft storage as an enabled unit ordered before Docker: after a reboot it is the same
        // server with the same secrets and token, unsealed by its unit, not a fresh one seeded again.
        let token = openbao_in_host::install_persistent(&host);
        openbao_in_host::bao_as(
            &host,
            &token,
            &format!("kv put secret/app-1/db-password value={SECRET} >/dev/null"),
        );
        openbao_in_host::bao_as(
            &host,
            &token,
            "kv put secret/app-1/api user=svc key=k3y >/dev/null",
        );
        Host {
            host,
            token,
            _turn: turn,
        }
    }

    /// apt install, configure Vault with a root-only token file, enable the socket.
    fn install_and_enable(&self) {
        self.exec_ok("DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/docker-volume-libsecret.deb");
        self.exec_ok(&format!(
            r#"set -e
            umask 077
            printf '%s\n' '{token}' > /etc/docker-volume-libsecret/token
            cat > /etc/docker-volume-libsecret/config.toml <<'TOML'
metrics_listen = "127.0.0.1:9475"
[vault]
addr = "http://127.0.0.1:8200"
token_file = "/etc/docker-volume-libsecret/token"
TOML
            systemctl enable --now {SOCKET}"#,
            token = self.token
        ));
    }

    /// Rewrites the config with `rules` (TOML `[[rules]]` tables) after the `[vault]` table.
    fn write_rules(&self, rules: &str) {
        self.exec_ok(&format!(
            r#"cat > /etc/docker-volume-libsecret/config.toml <<'TOML'
[vault]
addr = "http://127.0.0.1:8200"
token_file = "/etc/docker-volume-libsecret/token"

{rules}
TOML"#
        ));
    }

    /// [`Self::write_rules`], then restarts the driver (a running driver reads its config at start and reload).
    fn set_rules_and_restart(&self, rules: &str) {
        self.write_rules(rules);
        self.restart_driver();
    }

    /// [`Self::write_rules`], then `systemctl reload`, and waits for `wanted` in the driver's journal.
    fn set_rules_and_reload(&self, rules: &str, wanted: &str) {
        self.write_rules(rules);
        self.reload_and_wait(wanted);
    }

    /// `systemctl reload` of the driver; waits until its journal has `wanted` once more than before.
    fn reload_and_wait(&self, wanted: &str) {
        let before = self
            .journal(&format!("-u {DRIVER}"))
            .matches(wanted)
            .count();
        self.exec_ok(&format!("systemctl reload {DRIVER}"));
        self.wait_for(wanted, || {
            self.journal(&format!("-u {DRIVER}"))
                .matches(wanted)
                .count()
                > before
        });
    }

    /// Restarts the driver and waits for the new process; socket activation: the restarted driver adopts units
    /// once it runs, and a Get makes sure it has.
    fn restart_driver(&self) {
        let before = self.driver_pid();
        self.exec_ok(&format!("systemctl restart {DRIVER}"));
        self.wait_for("the restarted driver", || {
            let pid = self.driver_pid();
            pid != before && pid != "0"
        });
        let _ = self.get("secret/app-1/");
    }

    fn driver_pid(&self) -> String {
        self.exec_ok(&format!("systemctl show -p MainPID --value {DRIVER}"))
            .trim()
            .to_owned()
    }

    fn mount_units(&self) -> Vec<String> {
        self.exec_ok("systemctl list-units --plain --no-legend --state=active 'docker-volume-libsecret-mount-*' | awk '{print $1}'")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// `VolumeDriver.Get` straight on the plugin socket (this also socket-activates the driver).
    fn get(&self, volume: &str) -> serde_json::Value {
        let out = self.exec_ok(&format!(
            "curl -s --unix-socket /run/docker/plugins/libsecret.sock -X POST -d '{{\"Name\":\"{volume}\"}}' \
             http://plugin/VolumeDriver.Get"
        ));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("Get reply {out:?}: {e}"))
    }

    fn wait_for(&self, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !condition() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.journal("-n 60")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts a container reading the secret every 50 ms, counting reads and failures.
    fn start_reader(&self, name: &str) {
        self.exec_ok(&format!(
            "docker run -d --name {name} --volume-driver libsecret -v secret/app-1/:/secrets {TEST_IMAGE} sh -c \
             'while true; do if [ \"$(cat /secrets/db-password)\" = \"{SECRET}\" ]; then echo ok; else echo FAIL; fi; \
             sleep 0.05; done'"
        ));
        self.wait_for("the reader's first read", || self.reads(name).0 > 0);
    }

    /// (successful reads, failed reads) of a reader so far.
    fn reads(&self, name: &str) -> (usize, usize) {
        let logs = self.exec_ok(&format!("docker logs {name} 2>&1"));
        (
            logs.lines().filter(|l| *l == "ok").count(),
            logs.lines().filter(|l| *l != "ok").count(),
        )
    }
}

#[test]
fn install_enable_and_read_a_secret_with_socket_activation_and_journald() {
    let host = Host::start();
    host.exec_ok(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/docker-volume-libsecret.deb",
    );
    // Installing starts nothing until the admin enables the socket.
    for unit in [SOCKET, DRIVER] {
        let (_, state, _) = host.exec(&format!("systemctl is-active {unit}"));
        assert_eq!(state.trim(), "inactive", "{unit} after install");
    }
    let mode = host.exec_ok("stat -c %a /etc/docker-volume-libsecret/config.toml");
    assert_eq!(mode.trim(), "600");
    assert!(host
        .exec_ok("man -w docker-volume-libsecret 2>/dev/null || ls /usr/share/man/man8/")
        .contains("docker-volume-libsecret"));
    host.exec_ok(
        "test -s /usr/share/man/man8/docker-volume-libsecret-check-config.8.gz \
         && grep -q check-config /usr/share/bash-completion/completions/docker-volume-libsecret \
         && test -s /usr/share/zsh/vendor-completions/_docker-volume-libsecret \
         && test -s /usr/share/fish/vendor_completions.d/docker-volume-libsecret.fish",
    );
    let conffiles = host.exec_ok("cat /var/lib/dpkg/info/docker-volume-libsecret.conffiles");
    assert!(
        conffiles.contains("/etc/docker-volume-libsecret/config.toml")
            && conffiles.contains("/etc/containers/containers.conf.d/docker-volume-libsecret.conf"),
        "{conffiles}"
    );
    // Podman's registration names the plugin socket (tests/podman_plugin.rs runs Podman with it).
    host.exec_ok(
        "grep -qx 'libsecret = \"/run/docker/plugins/libsecret.sock\"' \
         /etc/containers/containers.conf.d/docker-volume-libsecret.conf",
    );

    host.install_and_enable();
    let (_, state, _) = host.exec(&format!("systemctl is-active {DRIVER}"));
    assert_eq!(
        state.trim(),
        "inactive",
        "socket activation starts the driver on first use only"
    );
    let out = host.exec_ok(&format!(
        "docker run --rm --volume-driver libsecret -v secret/app-1/:/secrets {TEST_IMAGE} cat /secrets/db-password"
    ));
    assert_eq!(out, SECRET);
    let status = host.exec_ok(&format!(
        "systemctl show -p ActiveState -p StatusText {DRIVER}"
    ));
    assert!(
        status.contains("ActiveState=active") && status.contains("volume(s)"),
        "{status}"
    );

    // The documented way to follow one volume: a structured field match.
    let journal = host.journal(&format!("-u {DRIVER} -o cat VOLUME=secret/app-1/"));
    assert!(
        journal.contains("volume secret/app-1/ mounted at")
            && journal.contains("mount unit of secret/app-1/ started"),
        "{journal}"
    );
    // Plain journalctl, as an operator types it: every line about the volume names it in the message.
    let plain = host.journal(&format!("-u {DRIVER}"));
    for line in [
        "volume secret/app-1/ mounted at /run/docker-volume-libsecret/mounts/",
        "mount unit of secret/app-1/ started",
        "volume secret/app-1/ unmounted after Unmount of mount ID",
        "mount unit of secret/app-1/ stopped",
    ] {
        assert!(plain.contains(line), "{line:?} is not in:\n{plain}");
    }
    let (_, _, refused) = host.exec(&format!(
        "docker run --rm --volume-driver libsecret -v secret/../etc:/secrets {TEST_IMAGE} true"
    ));
    let plain = host.journal(&format!("-u {DRIVER}"));
    assert!(
        plain.contains("VolumeDriver.Create of volume secret/../etc failed:"),
        "a refused call names its volume ({refused}):\n{plain}"
    );
    let units = host.journal("-t docker-volume-libsecret -o verbose");
    assert!(
        units.contains("_SYSTEMD_UNIT=docker-volume-libsecret-mount-"),
        "mount units log under the identifier"
    );
    assert!(
        units.contains("VOLUME=secret/app-1/"),
        "structured fields: {units}"
    );
    // Every journal entry on the host, OpenBao's own included (no credential is on its command line).
    let entries = host.journal("-o json");
    let all: Vec<&str> = entries.lines().collect();
    assert!(all.len() > 20, "{entries}");
    for entry in all {
        assert!(
            !entry.contains(SECRET),
            "the secret value reached the journal: {entry}"
        );
        assert!(
            !entry.contains(&host.token),
            "the token reached the journal: {entry}"
        );
    }
    // Neither the driver's nor a mount unit's argv and environment hold a credential.
    host.exec_ok(&format!(
        "docker run -d --name holder --volume-driver libsecret -v secret/app-1/:/secrets {TEST_IMAGE} sleep 1000"
    ));
    assert_eq!(host.mount_units().len(), 1);
    check_mount_unit_hardening(&host);
    check_status_of_a_unit_mount(&host);
    let procs = host.exec_ok(
        "for p in $(pgrep -f '^/usr/bin/docker-volume-libsecret'); do tr '\\0' ' ' < /proc/$p/cmdline; echo; \
         tr '\\0' '\\n' < /proc/$p/environ; done",
    );
    assert!(
        procs.contains("serve-mount") && procs.contains("--config"),
        "{procs}"
    );
    assert!(
        !procs.contains(&host.token) && !procs.contains(SECRET),
        "{procs}"
    );
    // Each process maps libc and the loader, nothing more: every other shared object costs each of hundreds of
    // mount units its resident pages (libm.so.6 alone was 320 KB; src/pow.rs).
    let libraries = host.exec_ok(
        "for p in $(pgrep -f '^/usr/bin/docker-volume-libsecret'); do \
           awk '$6 ~ /\\.so/ {print $6}' /proc/$p/maps | sort -u | tr '\\n' ' '; echo; done",
    );
    for line in libraries.lines() {
        assert_eq!(
            line.trim(),
            "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 /usr/lib/x86_64-linux-gnu/libc.so.6",
            "shared objects a driver process maps: {libraries}"
        );
    }
    assert_eq!(
        libraries.lines().count(),
        2,
        "the driver and one mount unit: {libraries}"
    );
    // Nor the state directory, the unit properties, or what Docker shows about the volume and the container.
    let stored = host.exec_ok(
        "cat /var/lib/docker-volume-libsecret/*/*.json; systemctl show 'docker-volume-libsecret-mount-*'; \
         curl -sf --unix-socket /var/run/docker.sock http://docker/volumes; docker inspect holder",
    );
    assert!(stored.contains("secret/app-1"), "{stored}");
    assert!(
        !stored.contains(&host.token) && !stored.contains(SECRET),
        "{stored}"
    );
    host.exec_ok("docker rm -f holder");
    host.wait_for("the holder's unmount", || host.mount_units().is_empty());
    assert!(
        host.mount_units().is_empty(),
        "the last unmount stops the unit: {:?}",
        host.mount_units()
    );
    let leftovers = host.exec_ok("ls -A /run/docker-volume-libsecret/mounts");
    assert!(leftovers.trim().is_empty(), "mountpoints left: {leftovers}");
}

/// `status` and `docker volume inspect` of the holder's volume: the mount unit reports its health to the driver
/// (every 5 s), so both show which unit serves it and its last refresh; `status` exits 0 and shows no credential.
fn check_status_of_a_unit_mount(host: &Host) {
    let unit = host.mount_units().remove(0);
    let mut shown = serde_json::Value::Null;
    host.wait_for("the mount unit's health report", || {
        let (code, out, _) = host.exec("docker-volume-libsecret status --json");
        shown = serde_json::from_str(&out).unwrap_or_default();
        code == 0 && !shown["volumes"][0]["mounts"][0]["health"].is_null()
    });
    let mount = &shown["volumes"][0]["mounts"][0];
    assert_eq!(mount["unit"], unit.as_str(), "{shown:#}");
    assert_eq!(shown["mount_mode"], "systemd", "{shown:#}");
    assert_eq!(shown["vault"]["reachable"], true, "{shown:#}");
    let text = host.exec_ok("docker-volume-libsecret status");
    assert!(
        text.contains("healthy") && text.contains(&format!("served by {unit}")),
        "{text}"
    );
    assert!(!text.contains(&host.token) && !shown.to_string().contains(&host.token));
    // Docker's API drops a name's trailing slash (secret/app-1/ is not found by inspect): another volume's.
    host.exec_ok(&format!(
        "docker run -d --name inspected --volume-driver libsecret -v secret/app-1:/secrets {TEST_IMAGE} sleep 1000"
    ));
    let mut status = serde_json::Value::Null;
    host.wait_for("the health in docker volume inspect", || {
        let inspect =
            host.exec_ok("docker volume inspect --format '{{json .Status}}' secret/app-1");
        status = serde_json::from_str(inspect.trim()).unwrap_or_default();
        status["Healthy"] == true
    });
    assert_eq!(status["Mounts"], 1, "{status}");
    assert_eq!(status["Stale"], false, "{status}");
    // The first refresh comes after refresh_interval (60 s here); tests/fuse_status.rs waits for one.
    assert!(status["LastRefresh"].is_string(), "{status}");
    assert!(
        status["Units"][0].as_str().is_some_and(|u| u
            .starts_with("docker-volume-libsecret-mount-secret-app")
            && u != unit),
        "{status}"
    );
    host.exec_ok("docker rm -f inspected");
    host.wait_for("the inspected container's unmount", || {
        host.mount_units().len() == 1
    });
    // Reads happen in the mount unit's process: the unit's reports carry its counts into the driver's metrics.
    let reads = || -> u64 {
        let scraped = host.exec_ok("curl -sf http://127.0.0.1:9475/metrics");
        scraped
            .lines()
            .find_map(|line| line.strip_prefix("libsecret_fs_reads_total "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map_or(0, |value| value as u64)
    };
    // (The driver serves no mount itself here, so every read counted is a unit's.)
    host.wait_for("the unit's reads in the driver's metrics", || reads() >= 1);
    // As a user other than root: refused, with what to do.
    let (code, _, err) = host
        .exec("setpriv --reuid=65534 --regid=65534 --clear-groups docker-volume-libsecret status");
    assert!(
        code == 3 && err.contains("status needs root"),
        "{code} {err}"
    );
}

/// A mount unit parses every FUSE request a container sends: it carries the service's hardening (without anything
/// that creates a mount namespace), and still serves its secret. Prints `systemd-analyze security` of both.
fn check_mount_unit_hardening(host: &Host) {
    let unit = host.mount_units().remove(0);
    let shown = host.exec_ok(&format!(
        "systemctl show -p NoNewPrivileges -p CapabilityBoundingSet -p AmbientCapabilities -p RestrictAddressFamilies \
         -p SystemCallFilter -p SystemCallArchitectures -p RestrictNamespaces -p MemoryMax -p TasksMax \
         -p DevicePolicy -p DeviceAllow -p LockPersonality -p MemoryDenyWriteExecute -p RestrictRealtime \
         -p RestrictSUIDSGID -p PrivateTmp -p ProtectSystem -p PrivateDevices -p UMask '{unit}'"
    ));
    for wanted in [
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=cap_ipc_lock cap_sys_admin",
        "AmbientCapabilities=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallArchitectures=native",
        "RestrictNamespaces=yes",
        "MemoryMax=134217728",
        "TasksMax=32",
        "DevicePolicy=closed",
        "DeviceAllow=/dev/fuse rw",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "UMask=0077",
        // Nothing that would hide the FUSE mount from dockerd in a namespace of its own.
        "PrivateTmp=no",
        "ProtectSystem=no",
        "PrivateDevices=no",
    ] {
        assert!(
            format!("{shown}\n").contains(wanted),
            "{wanted:?} missing from {unit}:\n{shown}"
        );
    }
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("SystemCallFilter=") && l.contains("mount")),
        "{shown}"
    );
    // The hardened unit still serves: the holder container reads its secret through it.
    let read = host.exec_ok("docker exec holder cat /secrets/db-password");
    assert_eq!(read, SECRET);
    let exposure = |unit: &str| -> f64 {
        let report = host.exec_ok(&format!(
            "systemd-analyze security --no-pager '{unit}' | tail -n 1"
        ));
        println!("systemd-analyze security {unit}: {}", report.trim());
        report
            .split_whitespace()
            .find_map(|word| word.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no exposure score in {report:?}"))
    };
    let service = exposure(DRIVER);
    let mount = exposure(&unit);
    assert!(
        mount <= service,
        "a mount unit ({mount}) is less hardened than the service ({service})"
    );
}

#[test]
fn running_containers_keep_reading_through_restart_sigkill_and_upgrade() {
    let host = Host::start();
    host.install_and_enable();
    host.start_reader("reader");
    assert_eq!(host.mount_units().len(), 1, "{:?}", host.mount_units());
    let unit = host.mount_units()[0].clone();
    let unit_pid = host.exec_ok(&format!("systemctl show -p MainPID --value '{unit}'"));

    let first = host.driver_pid();
    host.exec_ok(&format!("systemctl restart {DRIVER}"));
    host.wait_for("the restarted driver", || {
        host.driver_pid() != first && host.driver_pid() != "0"
    });
    let get = host.get("secret/app-1/");
    assert_eq!(
        get["Volume"]["Status"]["Mounts"], 1,
        "re-adopted with its mount ID: {get}"
    );

    let before_kill = host.driver_pid();
    host.exec_ok(&format!("systemctl kill -s KILL {DRIVER}"));
    host.wait_for("the driver back after SIGKILL", || {
        let pid = host.driver_pid();
        pid != before_kill && pid != "0"
    });
    assert_eq!(host.get("secret/app-1/")["Volume"]["Status"]["Mounts"], 1);

    let before_upgrade = host.driver_pid();
    host.exec_ok("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall /root/docker-volume-libsecret.deb");
    host.wait_for("the driver restarted by the upgrade", || {
        let pid = host.driver_pid();
        pid != before_upgrade && pid != "0"
    });
    let reads_before = host.reads("reader").0;
    host.wait_for("more reads after the upgrade", || {
        host.reads("reader").0 > reads_before + 10
    });
    let (ok, failed) = host.reads("reader");
    assert_eq!(failed, 0, "{failed} failed reads out of {}", ok + failed);
    assert_eq!(
        host.exec_ok(&format!("systemctl show -p MainPID --value '{unit}'")),
        unit_pid,
        "the mount unit was never restarted"
    );

    // A mount unit that dies is detected: the next container gets a fresh mount, never a dead mountpoint.
    host.exec_ok(&format!("systemctl kill -s KILL '{unit}'"));
    let out = host.exec_ok(&format!(
        "docker run --rm --volume-driver libsecret -v secret/app-1/:/secrets {TEST_IMAGE} cat /secrets/db-password"
    ));
    assert_eq!(out, SECRET);

    host.exec_ok("docker rm -f reader");
    host.wait_for("the mount unit to stop", || host.mount_units().is_empty());

    // A running unit decides every read by the rules it started with. A restarted driver adopts it while the
    // rules that decide its volume are unchanged (whatever else changed), and stops it when they are not.
    let allow_app = "[[rules]]\npath = \"secret/app-1\"\n";
    host.set_rules_and_restart(allow_app);
    host.start_reader("reader2");
    let unit = host.mount_units()[0].clone();
    let unit_pid = host.exec_ok(&format!("systemctl show -p MainPID --value '{unit}'"));
    host.set_rules_and_restart(&format!("{allow_app}\n[[rules]]\npath = \"kv/other\"\n"));
    assert_eq!(
        host.exec_ok(&format!("systemctl show -p MainPID --value '{unit}'")),
        unit_pid,
        "an edit elsewhere keeps the unit:\n{}",
        host.journal("-u docker-volume-libsecret.service -n 30")
    );
    assert_eq!(host.get("secret/app-1/")["Volume"]["Status"]["Mounts"], 1);

    // systemctl reload: the driver and the running unit put new rules in force for every read, and no mount is
    // dropped; a restart then adopts the unit, whose recorded rules are those in force.
    let deny_db = "[[rules]]\npath = \"secret/app-1/db-password\"\nallow = false\n";
    host.set_rules_and_reload(
        &format!("{deny_db}\n{allow_app}"),
        "configuration reloaded from",
    );
    let journal = host.journal(&format!("-u {DRIVER}"));
    assert!(
        journal.contains("configuration reloaded from /etc/docker-volume-libsecret/config.toml")
            && journal.contains(&format!("asked mount unit {unit} to reload its rules")),
        "{journal}"
    );
    host.wait_for("the unit's reload", || {
        host.journal(&format!("-u '{unit}'"))
            .contains("reloaded its rules from")
    });
    let (_, out, err) = host.exec("docker exec reader2 cat /secrets/db-password");
    assert!(
        format!("{out}{err}").contains("Permission denied"),
        "{out}{err}"
    );
    host.restart_driver();
    assert_eq!(
        host.exec_ok(&format!("systemctl show -p MainPID --value '{unit}'")),
        unit_pid,
        "neither the reload nor the restart after it dropped the mount:\n{}",
        host.journal(&format!("-u {DRIVER} -n 30"))
    );
    // A config that does not load: refused, the driver keeps running with the rules in force.
    let driver_pid = host.driver_pid();
    host.exec_ok("echo 'bogus_key = 1' >> /etc/docker-volume-libsecret/config.toml");
    host.reload_and_wait("reload refused, the running configuration is kept");
    assert_eq!(host.driver_pid(), driver_pid);
    let (_, state, _) = host.exec(&format!("systemctl is-active {DRIVER}"));
    assert_eq!(state.trim(), "active");
    let refusal = host.journal(&format!("-u {DRIVER}"));
    assert!(refusal.contains("bogus_key"), "{refusal}");

    // Rules changed behind a unit's back (edited, then restarted): the unit is stopped.
    host.set_rules_and_restart(&format!(
        "{deny_db}\n[[rules]]\npath = \"secret/app-1/other\"\nallow = false\n\n{allow_app}"
    ));
    host.wait_for("the unit under old rules to stop", || {
        host.mount_units().is_empty()
    });
    let journal = host.journal(&format!("-u {DRIVER} -o cat"));
    assert!(
        journal.contains("other access rules than those now in force"),
        "{journal}"
    );
    // The next container reads under the rules in force: the denied secret is EACCES.
    let (_, out, err) = host.exec(&format!(
        "docker run --rm --volume-driver libsecret -v secret/app-1/:/secrets {TEST_IMAGE} cat /secrets/db-password"
    ));
    assert!(
        format!("{out}{err}").contains("Permission denied"),
        "{out}{err}"
    );
    host.exec_ok("docker rm -f reader2");
}

#[test]
fn volumes_come_back_after_a_reboot_and_remove_and_purge_clean_up() {
    let host = Host::start();
    host.install_and_enable();
    host.exec_ok(&format!(
        "docker run -d --name keeper --restart always --volume-driver libsecret -v secret/app-1/:/secrets {TEST_IMAGE} \
         sh -c 'cat /secrets/db-password; echo; sleep 100000'"
    ));
    host.exec_ok("docker volume create -d libsecret secret/idle");
    host.wait_for("keeper's first read", || {
        host.exec_ok("docker logs keeper").contains(SECRET)
    });

    host.reboot();
    let volumes = host.exec_ok("docker volume ls --format '{{.Driver}} {{.Name}}'");
    assert!(
        volumes.contains("libsecret secret/app-1/") && volumes.contains("libsecret secret/idle"),
        "{volumes}"
    );
    host.wait_for("keeper restarted by Docker", || {
        host.exec_ok("docker logs keeper").matches(SECRET).count() == 2
    });
    assert_eq!(
        host.exec_ok("docker exec keeper cat /secrets/db-password"),
        SECRET
    );
    assert_eq!(host.mount_units().len(), 1);

    // An invalid config makes the service fail with one line naming the file and the key.
    host.exec_ok(
        "cp /etc/docker-volume-libsecret/config.toml /root/config.good && \
         echo 'bogus_key = 1' >> /etc/docker-volume-libsecret/config.toml",
    );
    host.exec(&format!("systemctl restart {DRIVER}"));
    host.wait_for("the driver to fail", || {
        host.exec(&format!("systemctl is-failed {DRIVER}")).1.trim() == "failed"
    });
    let restarts = host.exec_ok(&format!("systemctl show -p NRestarts --value {DRIVER}"));
    assert_eq!(restarts.trim(), "0", "an invalid config is not retried");
    let journal = host.journal(&format!("-u {DRIVER} -o cat -n 20"));
    let line = journal
        .lines()
        .find(|l| l.contains("invalid configuration"))
        .unwrap_or_else(|| panic!("{journal}"));
    assert!(
        line.contains("/etc/docker-volume-libsecret/config.toml") && line.contains("bogus_key"),
        "{line}"
    );
    assert_eq!(
        host.exec_ok("docker exec keeper cat /secrets/db-password"),
        SECRET,
        "mounts outlive a failed driver"
    );
    host.exec_ok(&format!(
        "cp /root/config.good /etc/docker-volume-libsecret/config.toml && systemctl reset-failed {DRIVER}"
    ));

    host.exec_ok("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q docker-volume-libsecret");
    assert!(
        host.mount_units().is_empty(),
        "remove stops the mount units"
    );
    for unit in [SOCKET, DRIVER] {
        let (_, state, _) = host.exec(&format!("systemctl is-active {unit}"));
        assert_ne!(state.trim(), "active", "{unit} after remove");
    }
    assert!(Path::new("/").exists());
    host.exec_ok("test -f /etc/docker-volume-libsecret/config.toml");
    host.exec_ok("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q docker-volume-libsecret");
    host.exec_ok(
        "test ! -e /etc/docker-volume-libsecret && test ! -e /var/lib/docker-volume-libsecret",
    );
}

/// The leases of `pki/issue/web` in the host's OpenBao (a LIST of none is a 404 with no errors).
fn pki_leases(host: &Host) -> Vec<String> {
    let out = host.exec_ok(&format!(
        "curl -s -H 'X-Vault-Token: {}' -X LIST http://127.0.0.1:8200/v1/sys/leases/lookup/pki/issue/web/",
        host.token
    ));
    let reply: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("leases {out:?}: {e}"));
    match (reply["data"]["keys"].as_array(), reply["errors"].as_array()) {
        (Some(keys), _) => keys
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect(),
        (None, Some(errors)) if errors.is_empty() => Vec::new(),
        _ => panic!("leases: {out}"),
    }
}

#[test]
fn a_dynamic_lease_outlives_driver_sigkill_and_restart_and_after_a_reboot_the_successor_gets_a_new_one(
) {
    let host = Host::start();
    host.install_and_enable();
    for setting in [
        "secrets enable pki",
        "secrets tune -max-lease-ttl=87600h pki",
        "write -field=certificate pki/root/generate/internal common_name=test-ca ttl=87600h",
        "write pki/roles/web allowed_domains=internal allow_subdomains=true max_ttl=72h generate_lease=true",
    ] {
        openbao_in_host::bao_as(&host, &host.token, &format!("{setting} >/dev/null"));
    }
    host.set_rules_and_restart(
        "[[rules]]\npath = \"pki/issue\"\ndynamic = true\n\n[[rules]]\npath = \"secret\"\n",
    );
    host.exec_ok(
        "docker volume create -d libsecret -o common_name=web.internal -o ttl=1h pki/issue/web",
    );
    host.exec_ok(&format!(
        "docker run -d --name tls --restart always -v pki/issue/web:/tls {TEST_IMAGE} \
         sh -c 'cat /tls/serial_number; echo; sleep 100000'"
    ));
    let serials = || -> Vec<String> {
        host.exec_ok("docker logs tls")
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    };
    host.wait_for("the container's certificate", || serials().len() == 1);
    assert_eq!(pki_leases(&host).len(), 1, "{:?}", pki_leases(&host));
    // The container's own mount unit keeps its lease: a driver SIGKILL and a restart change no credential and
    // revoke nothing, and the next driver adopts the unit.
    let units = host.mount_units();
    assert_eq!(
        units.len(),
        1,
        "one unit for the container's lease: {units:?}"
    );
    assert!(units[0].contains(".lease-"), "{units:?}");
    let unit_pid = host.exec_ok(&format!("systemctl show -p MainPID --value '{}'", units[0]));
    let (serial, leases) = (serials()[0].clone(), pki_leases(&host));
    let before_kill = host.driver_pid();
    host.exec_ok(&format!("systemctl kill -s KILL {DRIVER}"));
    host.wait_for("the driver back after SIGKILL", || {
        let pid = host.driver_pid();
        pid != before_kill && pid != "0"
    });
    let before_restart = host.driver_pid();
    host.exec_ok(&format!("systemctl restart {DRIVER}"));
    host.wait_for("the restarted driver", || {
        let pid = host.driver_pid();
        pid != before_restart && pid != "0"
    });
    // The journal's reaper runs at each driver start: it must find the lease held by the unit.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        host.exec_ok("docker exec tls cat /tls/serial_number"),
        serial,
        "the container's certificate changed"
    );
    assert_eq!(
        pki_leases(&host),
        leases,
        "{}",
        host.journal(&format!("-u {DRIVER} -n 30"))
    );
    let revocation = openbao_in_host::bao_as(
        &host,
        &host.token,
        &format!("read -field=revocation_time pki/cert/{serial}"),
    );
    assert_eq!(revocation.trim(), "0", "the certificate was revoked");
    assert_eq!(
        host.exec_ok(&format!("systemctl show -p MainPID --value '{}'", units[0])),
        unit_pid,
        "the mount unit was never restarted"
    );
    let get = host.get("pki/issue/web");
    assert_eq!(get["Volume"]["Status"]["Mounts"], 1, "adopted: {get}");
    // The unit itself killed: its lease is the journal's. The container's restart unmounts the dead mount (and
    // mounts under a new mount ID), and the driver's journal pass then revokes the dead unit's lease at once.
    host.exec_ok(&format!("systemctl kill -s KILL '{}'", units[0]));
    host.exec_ok("docker restart -t 1 tls");
    host.wait_for("a new certificate after the unit was killed", || {
        serials().len() == 2
    });
    assert_ne!(
        serials()[1],
        serial,
        "a new lease for the restarted container"
    );
    host.wait_for("the killed unit's lease revoked", || {
        let now = pki_leases(&host);
        now.len() == 1 && now != leases
    });
    let revocation = openbao_in_host::bao_as(
        &host,
        &host.token,
        &format!("read -field=revocation_time pki/cert/{serial}"),
    );
    assert_ne!(
        revocation.trim(),
        "0",
        "the killed unit's certificate is revoked"
    );
    // After each boot the restart-policy container (same container, same mount ID) gets a new certificate, and the
    // lease from before the boot is revoked, which revokes its certificate too.
    let boot_and_check = |boot: &dyn Fn(), what: &str| {
        let (earlier_serial, earlier_leases) =
            (serials().last().unwrap().clone(), pki_leases(&host));
        let reads = serials().len();
        boot();
        host.wait_for(&format!("a new certificate after {what}"), || {
            serials().len() == reads + 1
        });
        assert_ne!(serials()[reads], earlier_serial, "a new lease after {what}");
        host.wait_for(&format!("the lease from before {what} revoked"), || {
            let leases = pki_leases(&host);
            leases.len() == 1 && leases != earlier_leases
        });
        let revoked = openbao_in_host::bao_as(
            &host,
            &host.token,
            &format!("read -field=revocation_time pki/cert/{earlier_serial}"),
        );
        assert_ne!(
            revoked.trim(),
            "0",
            "the certificate from before {what} is revoked"
        );
    };
    // A clean reboot: Docker stops the container first, so its Unmount may revoke the lease already.
    boot_and_check(&|| host.reboot(), "a reboot");
    // A power cut: no Unmount reaches the driver, so the lease is still in Vault and in the journal when the host
    // comes back, and the next driver revokes it.
    boot_and_check(&|| host.crash_and_boot(), "a power cut");
    let journal = host.journal(&format!("-u {DRIVER} -o cat"));
    assert!(
        !journal.contains("PRIVATE KEY"),
        "a key reached the journal"
    );
    host.exec_ok("docker rm -f tls");
    host.wait_for("no lease once the container is gone", || {
        pki_leases(&host).is_empty()
    });
    host.wait_for("no mount unit once the container is gone", || {
        host.mount_units().is_empty()
    });
}

#[test]
fn lintian_finds_no_errors_in_the_package() {
    let output = std::process::Command::new("lintian")
        .args(["--fail-on", "error", "--no-tag-display-limit"])
        .arg(package())
        .output()
        .expect("lintian is needed (apt-get install lintian; scripts/setup-test-host.sh does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "lintian:\n{text}");
    assert!(!text.lines().any(|l| l.starts_with("E: ")), "{text}");
}
