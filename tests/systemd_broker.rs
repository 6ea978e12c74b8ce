//! Issue 12, "one login per rule, not per mount", on a real systemd host with the Debian package installed and a
//! real OpenBao inside the host (tests/support/openbao_in_host.rs), counting `auth/approle/login` in its audit log:
//! 100 mount units over two AppRole scopes (`[vault]` with a response-wrapped secret ID, and a rule with its own
//! AppRole whose secret ID allows fewer logins than there are units) cost one login per scope per driver start and
//! per token lifetime, and keep reading while the driver is stopped, across `systemctl restart`, and across the
//! expiry of the tokens they were lent (short token_ttl / token_max_ttl, stale serving off).
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

#[path = "support/docker.rs"]
mod docker;
#[path = "support/openbao_in_host.rs"]
mod openbao_in_host;
#[path = "support/systemd_host.rs"]
mod systemd_host;

use std::time::{Duration, Instant};

use openbao_in_host as bao;
use systemd_host::{package, SystemdHost};

const DRIVER: &str = "docker-volume-libsecret.service";
const SOCKET: &str = "docker-volume-libsecret.socket";
const ETC: &str = "/etc/docker-volume-libsecret";
/// Volumes per scope: `secret/team-a/vN` (rule 0's AppRole) and `secret/other/vN` (`[vault]`'s).
const PER_SCOPE: usize = 50;
const SCOPES: usize = 2;
/// team-a's secret ID allows this many logins: far fewer than its 50 units, plenty for its driver.
const TEAM_A_SECRET_ID_USES: u32 = 20;
/// The roles' token TTLs: short, so tokens run out (and are replaced) within the test.
const TOKEN_TTL: &str = "15s";
const TOKEN_MAX_TTL_SECS: u64 = 30;

fn volumes() -> Vec<String> {
    ["team-a", "other"]
        .iter()
        .flat_map(|group| (0..PER_SCOPE).map(move |i| format!("secret/{group}/v{i}")))
        .collect()
}

/// Writes the secret `<volume>/<key>` = `<key>-<volume>` (its `value`, the file `key` of the volume) for every
/// volume, through the HTTP API (one curl each).
fn write_keys(host: &SystemdHost, key: &str) {
    let paths: Vec<String> = volumes()
        .iter()
        .map(|v| v.trim_start_matches("secret/").to_owned())
        .collect();
    host.exec_ok(&format!(
        "for p in {}; do curl -fs -o /dev/null -H 'X-Vault-Token: {}' -X POST \
           -d \"{{\\\"data\\\":{{\\\"value\\\":\\\"{key}-$p\\\"}}}}\" {}/v1/secret/data/$p/{key}; done",
        paths.join(" "),
        bao::ROOT_TOKEN,
        bao::ADDR
    ));
}

/// Reads `key` through every mount; the volumes whose read failed or was wrong.
fn failed_reads(host: &SystemdHost, key: &str) -> Vec<String> {
    let out = host.exec_ok(&format!(
        "for p in {}; do m=/run/docker-volume-libsecret/mounts/secret%2F$(echo $p | sed 's|/|%2F|g'); \
           [ \"$(cat $m/{key} 2>/dev/null)\" = \"{key}-$p\" ] || echo $p; done",
        volumes()
            .iter()
            .map(|v| v.trim_start_matches("secret/"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    out.lines().map(str::to_owned).collect()
}

fn plugin(host: &SystemdHost, method: &str, volume: &str) -> String {
    host.exec_ok(&format!(
        "curl -s --unix-socket /run/docker/plugins/libsecret.sock -X POST \
         -d '{{\"Name\":\"{volume}\",\"ID\":\"broker-test\"}}' http://plugin/VolumeDriver.{method}"
    ))
}

/// Writes a fresh wrapping token for `[vault]`'s secret ID: each driver start unwraps one (they are single-use).
fn rewrap(host: &SystemdHost) {
    let wrapped = bao::wrapped_secret_id(host, "shared");
    host.exec_ok(&format!(
        "umask 077; printf '%s\\n' '{wrapped}' > {ETC}/shared.secret-id"
    ));
}

#[test]
fn a_hundred_approle_mount_units_cost_one_login_per_rule_and_read_across_restarts_and_token_expiry()
{
    let deb = package();
    let host = SystemdHost::start();
    host.copy_in(&deb, "/root/docker-volume-libsecret.deb");
    bao::install(&host);
    let shared_role = bao::approle(
        &host,
        "shared",
        "other",
        TOKEN_TTL,
        &format!("{TOKEN_MAX_TTL_SECS}s"),
        0,
    );
    let team_role = bao::approle(
        &host,
        "team-a",
        "team-a",
        TOKEN_TTL,
        &format!("{TOKEN_MAX_TTL_SECS}s"),
        TEAM_A_SECRET_ID_USES,
    );
    let team_secret = bao::secret_id(&host, "team-a");
    write_keys(&host, "key");
    host.exec_ok(&format!(
        r#"set -e
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/docker-volume-libsecret.deb >/dev/null
        umask 077
        printf '%s\n' '{shared_role}' > {ETC}/shared.role-id
        printf '%s\n' '{team_role}' > {ETC}/team-a.role-id
        printf '%s\n' '{team_secret}' > {ETC}/team-a.secret-id
        cat > {ETC}/config.toml <<'TOML'
# Reads go to Vault (no cache, no stale serving), so each one needs a live token.
cache_ttl = "1s"
stale_ttl = "0s"
negative_ttl = "0s"
[vault]
addr = "{addr}"
auth = "approle"
[vault.approle]
role_id_file = "{ETC}/shared.role-id"
secret_id_file = "{ETC}/shared.secret-id"
secret_id_wrapped = true

[[rules]]
path = "secret/team-a"
auth = "approle"
approle = {{ role_id_file = "{ETC}/team-a.role-id", secret_id_file = "{ETC}/team-a.secret-id" }}

[[rules]]
path = "secret/other"
TOML"#,
        addr = bao::ADDR
    ));
    rewrap(&host);
    host.exec_ok(&format!("systemctl enable --now {SOCKET}"));
    let started = Instant::now();
    let mut driver_starts = 0;

    // 100 volumes, each mounted by its own unit.
    for volume in volumes() {
        plugin(&host, "Create", &volume);
        let reply = plugin(&host, "Mount", &volume);
        assert!(
            reply.contains("Mountpoint"),
            "Mount {volume}: {reply}\n{}",
            host.journal(&format!("-u {DRIVER} -n 30"))
        );
    }
    driver_starts += 1;
    let units = host.exec_ok(
        "systemctl list-units --no-legend --state=active 'docker-volume-libsecret-mount-*' | wc -l",
    );
    assert_eq!(
        units.trim(),
        (SCOPES * PER_SCOPE).to_string(),
        "mount units active"
    );
    let journal = host.journal(&format!("-u {DRIVER}"));
    assert!(
        journal.contains("each mount is served by a transient systemd unit"),
        "{journal}"
    );
    assert!(
        !journal.contains("serving mounts in-process"),
        "a wrapped secret ID no longer forces in-process mounts:\n{journal}"
    );
    let failed = failed_reads(&host, "key");
    assert!(
        failed.is_empty(),
        "first reads failed: {failed:?}\n{}\n{}",
        host.exec("ls /run/docker-volume-libsecret/mounts | head -3; cat /run/docker-volume-libsecret/mounts/secret%2Fother%2Fv0/key").1,
        host.journal("-t docker-volume-libsecret -n 40")
    );
    assert_eq!(
        failed_reads(&host, "key"),
        Vec::<String>::new(),
        "first reads"
    );
    let logins_after_mounting = bao::requests(&host, "auth/approle/login");
    assert_eq!(
        logins_after_mounting, SCOPES,
        "one login per scope for 100 mount units"
    );

    // The driver stopped: units keep reading with the tokens they hold.
    host.exec_ok(&format!("systemctl stop {DRIVER} {SOCKET}"));
    write_keys(&host, "down");
    assert_eq!(
        failed_reads(&host, "down"),
        Vec::<String>::new(),
        "reads while the driver is stopped"
    );
    rewrap(&host);
    host.exec_ok(&format!("systemctl start {SOCKET} {DRIVER}"));
    driver_starts += 1;

    // The first driver's tokens (not renewed since it stopped) expire; units move to the new driver's, which
    // themselves reach their max TTL and are replaced by new logins. Reads must never fail meanwhile.
    let until = Instant::now() + Duration::from_secs(TOKEN_MAX_TTL_SECS + 20);
    let mut round = 0;
    while Instant::now() < until {
        round += 1;
        let key = format!("r{round}");
        write_keys(&host, &key);
        let failed = failed_reads(&host, &key);
        assert!(
            failed.is_empty(),
            "round {round}: {} reads failed ({failed:?})\n{}",
            failed.len(),
            host.journal("-t docker-volume-libsecret -n 40")
        );
        std::thread::sleep(Duration::from_secs(5));
    }

    // systemctl restart: the same again, with the units adopted by the new driver.
    rewrap(&host);
    host.exec_ok(&format!("systemctl restart {DRIVER}"));
    driver_starts += 1;
    write_keys(&host, "restarted");
    assert_eq!(
        failed_reads(&host, "restarted"),
        Vec::<String>::new(),
        "reads after systemctl restart"
    );
    let units = host.exec_ok(
        "systemctl list-units --no-legend --state=active 'docker-volume-libsecret-mount-*' | wc -l",
    );
    assert_eq!(
        units.trim(),
        (SCOPES * PER_SCOPE).to_string(),
        "every unit still serving"
    );

    // Logins: per scope, one per driver start and one per token lifetime (max TTL), whatever the number of units.
    let logins = bao::requests(&host, "auth/approle/login");
    let lifetimes = started.elapsed().as_secs() / (TOKEN_MAX_TTL_SECS * 2 / 3) + 1;
    let bound = SCOPES * (driver_starts + lifetimes as usize);
    println!(
        "{} mount units, {driver_starts} driver starts, {}s: {logins} AppRole logins (bound {bound}), {} live tokens, \
         {} renewals",
        SCOPES * PER_SCOPE,
        started.elapsed().as_secs(),
        bao::live_tokens(&host),
        bao::requests(&host, "auth/token/renew-self"),
    );
    assert!(
        logins >= SCOPES * driver_starts,
        "each driver start logs in once per scope: {logins}"
    );
    assert!(
        logins <= bound,
        "{logins} logins for {} units (bound {bound})",
        SCOPES * PER_SCOPE
    );
    assert!(
        bao::live_tokens(&host) <= bound,
        "live tokens: {} (bound {bound})",
        bao::live_tokens(&host)
    );
    // The credentials never reached the journal.
    let everything = host.journal("");
    for secret in [&shared_role, &team_role, &team_secret] {
        assert!(
            !everything.contains(secret.as_str()),
            "a credential is in the journal"
        );
    }
}
