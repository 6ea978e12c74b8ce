//! Issue 12, "Start without Vault", on a real systemd host (the image of scripts/build-systemd-host.sh) with the
//! Debian package installed and a real OpenBao (`/usr/local/bin/bao`, copied in) as a systemd unit on the host's
//! loopback: a reboot while Vault is unreachable, a reboot with credentials Vault rejects (fixed in the file while
//! the driver runs), and an invalid config (exit 78, no restart loop).
//!
//! OpenBao runs as `bao server -dev` (in memory) with a fixed root token id; an `ExecStartPost=` script writes the
//! same secret after every start. A dev server is chosen over file storage with init/unseal because the driver only
//! needs "the same token and the same secret after Vault comes back", and re-seeding gives that with no unseal key
//! to keep on the host and no init step that could itself fail in the middle of a reboot test.
//!
//! Needs the package (packaging/build-deb.sh), the host image and bao (scripts/setup-test-host.sh). Fails, never
//! skips.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::docker::TEST_IMAGE;
use support::systemd_host::{package, SystemdHost};

const SECRET: &str = "s3cr3t-from-openbao-51c7";
const TOKEN: &str = "outage-root-token-0a9e";
/// A token Vault does not know: what a person might leave in the token file by mistake. (OpenBao refuses a
/// dev root token id with the `hvs.` prefix, so neither has one.)
const WRONG_TOKEN: &str = "outage-wrong-token-77b3";
const DRIVER: &str = "docker-volume-libsecret.service";
const SOCKET: &str = "docker-volume-libsecret.socket";
const VAULT_UNIT: &str = "test-openbao.service";
/// How long Vault stays away after a reboot.
const OUTAGE: Duration = Duration::from_secs(60);
/// How long the container may take to read again once Vault answers (a deadline, not a measured timing).
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);
/// How often the host is sampled during an outage.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

fn bao() -> PathBuf {
    support::openbao::find_bao().unwrap_or_else(|| {
        panic!("bao is missing: scripts/setup-test-host.sh installs /usr/local/bin/bao")
    })
}

/// What the sampler saw on the host during one outage.
#[derive(Default, Debug)]
struct Samples {
    count: usize,
    /// Samples whose `docker volume ls` lacked the volume (with what it listed).
    volume_missing: Vec<String>,
    /// Samples where `systemctl is-failed` of the socket said `failed`.
    socket_failed: usize,
    /// Every distinct StatusText of the driver seen.
    status_texts: Vec<String>,
}

struct Host {
    host: SystemdHost,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for Host {
    type Target = SystemdHost;
    fn deref(&self) -> &SystemdHost {
        &self.host
    }
}

impl Host {
    /// A host with OpenBao as an enabled unit (seeded), the busybox image, the package installed and configured
    /// with `token` in a root-only token file, and the socket enabled.
    fn start(token: &str) -> Host {
        // One host at a time: each runs its own dockerd and they are heavy for a 2-core machine.
        let turn = support::one_at_a_time();
        let deb = package();
        let bao = bao();
        let host = SystemdHost::start();
        host.copy_in(&deb, "/root/docker-volume-libsecret.deb");
        host.copy_in(&bao, "/usr/local/bin/bao");
        host.load_image(TEST_IMAGE);
        host.exec_ok(&format!(
            r#"set -e
            cat > /usr/local/bin/seed-openbao <<'SH'
#!/bin/sh
# A dev server forgets everything on restart: wait for it, then write the same secret again.
export BAO_ADDR=http://127.0.0.1:8200 BAO_TOKEN={TOKEN}
for i in $(seq 1 100); do bao status >/dev/null 2>&1 && break; sleep 0.1; done
bao kv put secret/app-1/db-password value={SECRET} >/dev/null
SH
            chmod 700 /usr/local/bin/seed-openbao
            cat > /etc/systemd/system/{VAULT_UNIT} <<'UNIT'
[Unit]
Description=OpenBao dev server on loopback (test Vault)
Before=docker.service docker-volume-libsecret.service
[Service]
ExecStart=/usr/local/bin/bao server -dev -dev-root-token-id={TOKEN} -dev-listen-address=127.0.0.1:8200 -dev-no-store-token
ExecStartPost=/usr/local/bin/seed-openbao
[Install]
WantedBy=multi-user.target
UNIT
            systemctl daemon-reload
            systemctl enable --now {VAULT_UNIT}
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/docker-volume-libsecret.deb
            umask 077
            printf '%s\n' '{token}' > /etc/docker-volume-libsecret/token
            cat > /etc/docker-volume-libsecret/config.toml <<'TOML'
[vault]
addr = "http://127.0.0.1:8200"
token_file = "/etc/docker-volume-libsecret/token"
TOML
            systemctl enable --now {SOCKET}"#
        ));
        Host { host, _turn: turn }
    }

    /// A `--restart always` container on the driver's volume that prints `start` each time it starts, then reads
    /// the secret every second and prints `ok` or `FAIL` (its stdout, kept by Docker across restarts, is the
    /// record).
    fn start_reader(&self, name: &str) {
        self.exec_ok(&format!(
            "docker run -d --name {name} --restart always --volume-driver libsecret -v secret/app-1/:/secrets \
             {TEST_IMAGE} sh -c 'echo start; while true; do if [ \"$(cat /secrets/db-password)\" = \"{SECRET}\" ]; \
             then echo ok; else echo FAIL; fi; sleep 1; done'"
        ));
    }

    /// How often the reader has started, and its successful reads since it last started. A mount unit that
    /// logged in before the token file changed keeps reading until the reboot, so only reads of the latest
    /// start tell what the driver does after it.
    fn reads(&self, name: &str) -> (usize, usize) {
        let (_, logs, _) = self.exec(&format!("docker logs {name} 2>&1"));
        let starts = logs.lines().filter(|l| *l == "start").count();
        let latest = logs.rsplit("start\n").next().unwrap_or("");
        (starts, latest.lines().filter(|l| *l == "ok").count())
    }

    /// After a reboot: Docker started the reader again, and it has read nothing since (Vault is down, or rejects
    /// the token).
    fn assert_restarted_and_reading_nothing(&self, name: &str) {
        let (starts, reads) = self.reads(name);
        let (_, containers, _) = self.exec("docker ps -a --format '{{.Names}} {{.Status}}'");
        assert!(
            starts >= 2,
            "Docker did not start the container again after the reboot ({starts} start(s)): {containers}\n\
             socket: {}\n{}",
            self.socket_result(),
            self.journal(&format!("-u {DRIVER} -n 60"))
        );
        assert_eq!(reads, 0, "reads succeeded before Vault could give a token");
    }

    /// Polls `condition` every 200 ms until it holds or `within` passes (then panics with the journal).
    fn wait_for(&self, what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !condition() {
            assert!(
                Instant::now() < deadline,
                "timed out ({} s) waiting for {what}\n{}",
                within.as_secs(),
                self.journal(&format!("-u {DRIVER} -n 60"))
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// One sample: the volume list, the socket state and the driver's StatusText.
    fn sample(&self, into: &mut Samples) {
        into.count += 1;
        let (_, volumes, err) = self.exec("docker volume ls --format '{{.Driver}} {{.Name}}'");
        if !volumes
            .lines()
            .any(|l| l.trim() == "libsecret secret/app-1/")
        {
            into.volume_missing.push(format!("{volumes}{err}"));
        }
        let (_, failed, _) = self.exec(&format!("systemctl is-failed {SOCKET}"));
        if failed.trim() == "failed" {
            into.socket_failed += 1;
        }
        let (_, status, _) = self.exec(&format!("systemctl show -p StatusText --value {DRIVER}"));
        let status = status.trim().to_owned();
        if !status.is_empty() && !into.status_texts.contains(&status) {
            into.status_texts.push(status);
        }
    }

    /// Samples every ~2 s until `until` holds (checked at each sample) or `within` passes; returns whether it held.
    fn sample_until(
        &self,
        into: &mut Samples,
        within: Duration,
        mut until: impl FnMut() -> bool,
    ) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let started = Instant::now();
            self.sample(into);
            if until() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(SAMPLE_EVERY.saturating_sub(started.elapsed()));
        }
    }

    /// Every field of every journal entry on the host must be free of the secret and both tokens, except the
    /// test Vault unit's own entries (its argv, in `_CMDLINE`, holds the root token by design).
    fn assert_no_credentials_in_journal(&self) {
        let entries = self.journal("-o json");
        let ours: Vec<&str> = entries
            .lines()
            .filter(|l| !l.contains(&format!("\"_SYSTEMD_UNIT\":\"{VAULT_UNIT}\"")))
            .collect();
        assert!(
            ours.len() > 20,
            "too few journal entries to judge: {entries}"
        );
        for entry in ours {
            for (what, value) in [
                ("secret", SECRET),
                ("token", TOKEN),
                ("wrong token", WRONG_TOKEN),
            ] {
                assert!(
                    !entry.contains(value),
                    "the {what} reached the journal: {entry}"
                );
            }
        }
    }

    /// `journalctl -o cat <args>` of the entries after `cursor`.
    fn journal_since(&self, cursor: &str, args: &str) -> String {
        self.journal(&format!("-o cat --after-cursor='{cursor}' {args}"))
    }

    /// Waits (≤ 20 s: the driver sends STATUS= every 10 s) until the driver's StatusText no longer mentions
    /// `word`.
    fn wait_for_status_without(&self, word: &str) {
        self.wait_for(
            &format!("StatusText without {word:?}"),
            Duration::from_secs(20),
            || {
                !self
                    .exec_ok(&format!("systemctl show -p StatusText --value {DRIVER}"))
                    .to_lowercase()
                    .contains(word)
            },
        );
    }

    fn socket_result(&self) -> String {
        self.exec_ok(&format!(
            "systemctl show -p ActiveState -p SubState -p Result {SOCKET}"
        ))
    }
}

/// The journal's current cursor: later entries are read with [`Host::journal_since`].
fn cursor(host: &Host) -> String {
    let out =
        host.exec_ok("journalctl --sync 2>/dev/null; journalctl -n 0 --show-cursor --no-pager");
    out.lines()
        .find_map(|l| l.strip_prefix("-- cursor: "))
        .unwrap_or_else(|| panic!("no cursor in {out:?}"))
        .trim()
        .to_owned()
}

fn says_unreachable(line: &str) -> bool {
    let l = line.to_lowercase();
    l.contains("vault") && (l.contains("unreachable") || l.contains("cannot be reached"))
}

fn says_recovered(line: &str) -> bool {
    let l = line.to_lowercase();
    l.contains("vault")
        && (l.contains("reachable again") || l.contains("recovered") || l.contains("is back"))
}

#[test]
fn a_reboot_with_vault_unreachable_for_a_minute_keeps_docker_and_the_container_recovers() {
    let test_started = Instant::now();
    let host = Host::start(TOKEN);
    host.start_reader("reader");
    host.wait_for("the reader's first read", Duration::from_secs(60), || {
        host.reads("reader").1 > 0
    });

    // Vault stays down across the reboot: its unit is disabled, so nothing starts it at boot.
    host.exec_ok(&format!("systemctl disable {VAULT_UNIT}"));
    let before_reboot = cursor(&host);
    let rebooted = Instant::now();
    host.reboot();
    let mut samples = Samples::default();
    // Whatever the reboot took, Vault stays away for OUTAGE after it was asked for.
    host.sample_until(
        &mut samples,
        OUTAGE.saturating_sub(rebooted.elapsed()),
        || false,
    );
    let (_, vault_state, _) = host.exec(&format!("systemctl is-active {VAULT_UNIT}"));
    assert_ne!(
        vault_state.trim(),
        "active",
        "Vault must have been down during the outage"
    );
    let outage_samples = samples.count;
    let outage_status = samples.status_texts.clone();
    host.assert_restarted_and_reading_nothing("reader");

    host.exec_ok(&format!("systemctl enable --now {VAULT_UNIT}"));
    let vault_back = Instant::now();
    let recovered = host.sample_until(&mut samples, RECOVERY_DEADLINE, || {
        host.reads("reader").1 > 0
    });
    let recovery = vault_back.elapsed();
    let (_, containers, _) = host.exec("docker ps -a --format '{{.Names}} {{.Status}}'");
    assert!(
        recovered,
        "the reader did not read within {} s of Vault coming back: {containers}\nsocket: {}\n{samples:?}\n{}",
        RECOVERY_DEADLINE.as_secs(),
        host.socket_result(),
        host.journal(&format!("-u {DRIVER} -n 80"))
    );
    eprintln!(
        "outage test: {outage_samples} samples during the outage, {} in all; reader read again {:.1} s after \
         Vault came back; whole test {:.0} s",
        samples.count,
        recovery.as_secs_f64(),
        test_started.elapsed().as_secs_f64()
    );

    assert!(
        samples.volume_missing.is_empty(),
        "`docker volume ls` lacked the volume in {} of {} samples: {:?}",
        samples.volume_missing.len(),
        samples.count,
        samples.volume_missing
    );
    assert_eq!(
        samples.socket_failed,
        0,
        "the socket was `failed` in {} of {} samples: {}",
        samples.socket_failed,
        samples.count,
        host.socket_result()
    );
    assert!(
        outage_status.iter().any(|s| says_unreachable(s)),
        "StatusText during the outage never said Vault is unreachable: {outage_status:?}"
    );
    let this_boot = host.journal_since(&before_reboot, &format!("-u {DRIVER}"));
    let driver_lines: Vec<&str> = this_boot.lines().collect();
    let unreachable = driver_lines.iter().position(|l| says_unreachable(l));
    let recovery_line = driver_lines.iter().rposition(|l| says_recovered(l));
    assert!(
        matches!((unreachable, recovery_line), (Some(u), Some(r)) if u < r),
        "the driver's journal after the reboot needs a line saying Vault is unreachable, then a recovery line:\n{}",
        driver_lines.join("\n")
    );
    host.wait_for_status_without("unreachable");
    host.assert_no_credentials_in_journal();
}

#[test]
fn rejected_credentials_at_boot_leave_docker_up_and_a_fixed_token_file_takes_effect_without_a_restart(
) {
    let test_started = Instant::now();
    let host = Host::start(TOKEN);
    host.start_reader("reader");
    host.wait_for("the reader's first read", Duration::from_secs(60), || {
        host.reads("reader").1 > 0
    });

    // A wrong token in the file, then a reboot: the driver starts with credentials Vault rejects (403).
    host.exec_ok(&format!(
        "umask 077; printf '%s\\n' '{WRONG_TOKEN}' > /etc/docker-volume-libsecret/token"
    ));
    let before_reboot = cursor(&host);
    host.reboot();
    let mut samples = Samples::default();
    // Long enough for several login retries (and for an unlimited restart loop to reach start-limit-hit).
    host.sample_until(&mut samples, Duration::from_secs(20), || false);
    let rejected_status = samples.status_texts.clone();
    host.assert_restarted_and_reading_nothing("reader");
    let pid_before = host.exec_ok(&format!("systemctl show -p MainPID --value {DRIVER}"));
    let restarts_before = host.exec_ok(&format!("systemctl show -p NRestarts --value {DRIVER}"));

    host.exec_ok(&format!(
        "umask 077; printf '%s\\n' '{TOKEN}' > /etc/docker-volume-libsecret/token"
    ));
    let fixed = Instant::now();
    let recovered = host.sample_until(&mut samples, RECOVERY_DEADLINE, || {
        host.reads("reader").1 > 0
    });
    let recovery = fixed.elapsed();
    let (_, containers, _) = host.exec("docker ps -a --format '{{.Names}} {{.Status}}'");
    assert!(
        recovered,
        "the reader did not read within {} s of the token file being fixed: {containers}\nsocket: {}\n{samples:?}\n{}",
        RECOVERY_DEADLINE.as_secs(),
        host.socket_result(),
        host.journal(&format!("-u {DRIVER} -n 80"))
    );
    eprintln!(
        "rejected-credentials test: {} samples; reader read again {:.1} s after the fix; whole test {:.0} s",
        samples.count,
        recovery.as_secs_f64(),
        test_started.elapsed().as_secs_f64()
    );
    assert_eq!(
        host.exec_ok(&format!("systemctl show -p MainPID --value {DRIVER}")),
        pid_before,
        "the fix took effect without restarting the driver"
    );
    assert_eq!(
        host.exec_ok(&format!("systemctl show -p NRestarts --value {DRIVER}")),
        restarts_before
    );
    assert!(
        samples.volume_missing.is_empty(),
        "{:?}",
        samples.volume_missing
    );
    assert_eq!(samples.socket_failed, 0, "{}", host.socket_result());

    assert!(
        rejected_status.iter().any(|s| s.to_lowercase().contains("rejects")),
        "StatusText with the wrong token never said Vault rejects the credentials: {rejected_status:?}"
    );
    let this_boot = host.journal_since(&before_reboot, &format!("-u {DRIVER}"));
    let rejections: Vec<&str> = this_boot
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("403") || l.contains("permission denied") || l.contains("reject")
        })
        .collect();
    assert!(
        !rejections.is_empty(),
        "no rejection error in the driver's journal after the reboot:\n{}",
        host.journal(&format!("-u {DRIVER} -n 80"))
    );
    // The mount unit logs in on demand when a read needs a token; the driver's own status clears at its next
    // background retry (backoff up to 30 s, jittered), so this is a deadline.
    host.wait_for(
        "the driver's line that Vault accepts the credentials",
        Duration::from_secs(45),
        || {
            host.journal_since(&before_reboot, &format!("-u {DRIVER}"))
                .to_lowercase()
                .contains("accepts the credentials")
        },
    );
    host.wait_for_status_without("rejects");
    host.assert_no_credentials_in_journal();
}

/// Breaks the config, starts the driver with `start` (a shell command on the host), and checks that it failed
/// once: exit 78, no restart (neither by Restart= nor by the socket), one journal line naming the file and key.
/// Starts the driver with `start` under a config with an unknown key, checks it fails once, and returns what
/// `start` printed.
fn check_invalid_config_fails_once(start: &str) -> String {
    let host = Host::start(TOKEN);
    host.exec_ok("echo 'bogus_key = 1' >> /etc/docker-volume-libsecret/config.toml");
    let before = cursor(&host);
    let (_, printed, _) = host.exec(start);
    host.wait_for("the driver to fail", Duration::from_secs(60), || {
        host.exec(&format!("systemctl is-failed {DRIVER}")).1.trim() == "failed"
    });
    // Give an (unwanted) restart loop time to show up before counting.
    std::thread::sleep(Duration::from_secs(5));
    let shown = host.exec_ok(&format!(
        "systemctl show -p NRestarts -p Result -p ExecMainStatus {DRIVER}"
    ));
    assert!(
        shown.contains("NRestarts=0"),
        "an invalid config is not retried: {shown}"
    );
    assert!(shown.contains("ExecMainStatus=78"), "{shown}");
    let this_test = host.journal_since(&before, &format!("-u {DRIVER}"));
    // NRestarts counts only Restart= restarts: a connection still queued on the socket starts the service again
    // after each failure, which NRestarts does not show. Counting the driver's exits catches that loop too.
    let runs = this_test
        .lines()
        .filter(|l| l.contains(": Main process exited"))
        .count();
    assert_eq!(
        runs,
        1,
        "one run, no loop through the socket either (socket: {}): {this_test}",
        host.socket_result()
    );
    assert!(shown.contains("Result=exit-code"), "{shown}");
    let invalid: Vec<&str> = this_test
        .lines()
        .filter(|l| l.contains("invalid configuration"))
        .collect();
    assert_eq!(invalid.len(), 1, "one journal line: {this_test:?}");
    assert!(
        invalid[0].contains("/etc/docker-volume-libsecret/config.toml")
            && invalid[0].contains("bogus_key"),
        "{}",
        invalid[0]
    );
    let (_, socket, _) = host.exec(&format!("systemctl is-failed {SOCKET}"));
    assert_ne!(socket.trim(), "failed", "{}", host.socket_result());
    printed
}

#[test]
fn an_invalid_config_exits_78_with_one_line_and_is_not_restarted() {
    check_invalid_config_fails_once(&format!("systemctl start {DRIVER}"));
}

/// What Docker does at boot: a plugin call arrives on the socket and activates a driver whose config is invalid.
/// The driver answers it before exiting, so the socket does not start it again and again until start-limit-hit.
#[test]
fn an_invalid_config_met_by_a_plugin_call_on_the_socket_fails_once() {
    let answer = check_invalid_config_fails_once(
        "curl -s -m 10 --unix-socket /run/docker/plugins/libsecret.sock -X POST -d '{}' \
         http://plugin/VolumeDriver.List",
    );
    assert!(
        answer.contains("configuration is invalid"),
        "the call gets a reason: {answer}"
    );
}
