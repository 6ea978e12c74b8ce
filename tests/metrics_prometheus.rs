//! The metrics as an operator scrapes them: the real binary with `metrics_listen` set, reading from a real OpenBao
//! through a real FUSE mount made over the plugin socket; its `/metrics` checked by Debian's `promtool check metrics`
//! and scraped by Debian's `prometheus`, started here, with the series read back through Prometheus's HTTP API.
//! Needs root, /dev/fuse, `/usr/local/bin/bao` and the `prometheus` package (scripts/setup-test-host.sh): a missing
//! one fails the test with the reason.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::driver::Driver;
use support::http::{free_port, try_request};
use support::openbao::OpenBao;
use support::plugin_client::{call, create_and_mount, err_of};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

fn require_prometheus() {
    for binary in [PROMETHEUS, PROMTOOL] {
        assert!(
            Path::new(binary).exists(),
            "{binary} is missing: this test needs Debian's prometheus package (apt-get install prometheus, or run \
             scripts/setup-test-host.sh as root)"
        );
    }
}

/// `GET url`: the status and the body as text (the one HTTP client of the tests, which hands back a body that is
/// not JSON as a string).
fn get_text(url: &str) -> Result<(u16, String), String> {
    let (status, body) = try_request("GET", url, &[], None, Duration::from_secs(10))?;
    Ok(match body {
        Value::String(text) => (status, text),
        Value::Null => (status, String::new()),
        other => (status, other.to_string()),
    })
}

/// The value of one exact series (`name{labels}` as the driver prints it) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A Prometheus server run by this test, stopped (and waited for) when dropped, also when the test fails.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: libsecret\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let data = dir.join("tsdb");
        std::fs::create_dir_all(&data).unwrap();
        let log = dir.join("prometheus.log");
        let port = free_port();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("prometheus.err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {PROMETHEUS}: {e}"));
        let mut prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log: dir.join("prometheus.err"),
        };
        let ready = format!("{}/-/ready", prometheus.url);
        let started = std::time::Instant::now();
        loop {
            if let Ok((200, _)) = get_text(&ready) {
                break;
            }
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", prometheus.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "prometheus was not ready within 60 s:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An instant query through `/api/v1/query`: each result's labels and value.
    fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let url = format!("{}/api/v1/query?query={encoded}", self.url);
        let (status, reply) = try_request("GET", &url, &[], None, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(status, 200, "{promql}: {reply}");
        assert_eq!(reply["status"], "success", "{promql}: {reply}");
        reply["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{promql}: {reply}"))
            .iter()
            .map(|result| {
                let value = result["value"][1].as_str().unwrap().parse().unwrap();
                (result["metric"].clone(), value)
            })
            .collect()
    }

    /// The one value of `promql`, which must select exactly one series.
    fn value(&self, promql: &str) -> f64 {
        let results = self.query(promql);
        assert_eq!(results.len(), 1, "{promql}: {results:?}");
        results[0].1
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log());
        }
    }
}

#[test]
fn prometheus_scrapes_the_drivers_metrics_and_promtool_finds_nothing_to_lint() {
    support::require_fuse();
    require_prometheus();
    let _turn = support::one_at_a_time();
    let vault = OpenBao::start();
    for (key, value) in [("db-password", "pw-1"), ("api-key", "k-1"), ("cert", "c-1")] {
        vault.kv_put(
            None,
            "secret",
            &format!("app-1/{key}"),
            json!({ "value": value }),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let token = support::root_only_file(dir.path(), "token", vault.root_token());
    let metrics_port = free_port();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let config = support::root_only_file(
        dir.path(),
        "config.toml",
        &format!(
            "mount_mode = \"in-process\"\nstate_dir = \"{}\"\nmount_root = \"{}\"\nbroker_socket = \"{}\"\n\
             metrics_listen = \"127.0.0.1:{metrics_port}\"\ncache_ttl = \"1s\"\nrefresh_interval = \"1s\"\n\
             [vault]\naddr = \"{}\"\ntoken_file = \"{}\"\n",
            dir.path().join("state").display(),
            dir.path().join("mounts").display(),
            dir.path().join("broker.sock").display(),
            vault.addr(),
            token.display()
        ),
    );
    let socket = dir.path().join("plugin.sock");
    let driver = Driver::start_with_config(&config, &[], &socket, &dir.path().join("log"), &[]);
    let scrape = || {
        let (status, text) =
            get_text(&metrics_url).unwrap_or_else(|e| panic!("{metrics_url}: {e}"));
        assert_eq!(status, 200, "{text}");
        text
    };
    let before = scrape();
    assert_eq!(
        sample(&before, "libsecret_fs_reads_total"),
        Some(0.0),
        "{before}"
    );
    assert_eq!(
        sample(&before, "libsecret_mounts_total{result=\"ok\"}"),
        Some(0.0)
    );

    // Traffic: one Mount through the plugin socket, each of three secrets read once, a name that is not there
    // looked up twice, a value rotated in Vault and seen by the refresh, then the Unmount.
    let mountpoint = create_and_mount(&socket, "secret/app-1", json!({}), "c1").unwrap();
    for (key, value) in [("db-password", "pw-1"), ("api-key", "k-1"), ("cert", "c-1")] {
        assert_eq!(
            std::fs::read_to_string(mountpoint.join(key)).unwrap(),
            value
        );
    }
    let reads_done = sample(&scrape(), "libsecret_fs_reads_total").unwrap();
    for _ in 0..2 {
        let error = std::fs::read_to_string(mountpoint.join("no-such-key")).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(nix::libc::ENOENT));
    }
    vault.kv_put(
        None,
        "secret",
        "app-1/db-password",
        json!({ "value": "pw-2" }),
    );
    support::wait_until(
        "the refresh to find the rotated value",
        Duration::from_secs(30),
        || sample(&scrape(), "libsecret_rotations_total{change=\"changed\"}") == Some(1.0),
    );
    let (_, reply) = call(
        &socket,
        "/VolumeDriver.Unmount",
        json!({"Name": "secret/app-1", "ID": "c1"}),
    );
    assert_eq!(err_of(&reply), "", "{reply}");

    let text = scrape();
    // What the driver itself says, before Prometheus is asked.
    assert_eq!(
        reads_done, 3.0,
        "each of the 3 files read once is one FUSE read reaching the driver:\n{text}"
    );
    assert_eq!(
        sample(&text, "libsecret_fs_reads_total"),
        Some(3.0),
        "no read after those: {text}"
    );
    assert_eq!(
        sample(&text, "libsecret_mounts_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "libsecret_unmounts_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            "libsecret_vault_requests_total{method=\"GET\",result=\"ok\"}"
        )
        .unwrap()
            >= 3.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "libsecret_vault_logins_total{method=\"token\",result=\"ok\"}"
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );
    let negative = sample(
        &text,
        "libsecret_negative_cache_answers_total{kind=\"index\"}",
    )
    .unwrap()
        + sample(
            &text,
            "libsecret_negative_cache_answers_total{kind=\"name\"}",
        )
        .unwrap();
    assert!(
        negative >= 2.0,
        "both lookups of the missing name answered from memory: {text}"
    );
    assert!(
        !text.contains(vault.root_token()) && !text.contains("pw-1") && !text.contains("k-1\""),
        "no token or value in the metrics: {text}"
    );

    // (a) promtool: the exposition parses and has nothing to lint.
    let scraped = dir.path().join("scrape.txt");
    std::fs::write(&scraped, &text).unwrap();
    let checked = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&scraped).unwrap())
        .output()
        .unwrap_or_else(|e| panic!("running {PROMTOOL}: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}: {said}",
        checked.status
    );

    // (b) a real Prometheus scrapes the listener; the series are read back through its HTTP API.
    let prometheus = Prometheus::start(dir.path(), &format!("127.0.0.1:{metrics_port}"));
    support::wait_until(
        "a successful scrape of the driver",
        Duration::from_secs(60),
        || {
            prometheus
                .query("up{job=\"libsecret\"}")
                .first()
                .is_some_and(|(_, value)| *value == 1.0)
        },
    );
    assert_eq!(prometheus.value("libsecret_fs_reads_total"), 3.0);
    assert_eq!(
        prometheus.value("libsecret_mounts_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        prometheus.value("libsecret_unmounts_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        prometheus.value("libsecret_rotations_total{change=\"changed\"}"),
        1.0
    );
    assert!(
        prometheus.value("libsecret_vault_requests_total{method=\"GET\",result=\"ok\"}") >= 3.0
    );
    assert!(prometheus.value("libsecret_cache_lookups_total{result=\"miss\"}") >= 3.0);
    assert!(
        prometheus.value("sum(libsecret_vault_request_duration_seconds_count{method=\"GET\"})")
            >= 3.0
    );
    assert!(
        prometheus.value("libsecret_vault_logins_total{method=\"token\",result=\"ok\"}") >= 1.0
    );
    assert!(
        prometheus.value("sum(libsecret_negative_cache_answers_total{kind=~\"index|name\"})")
            >= 2.0
    );
    // Every family is there, each with its full set of label values (series exist from the start at 0).
    let families = prometheus.query("count by (__name__) ({__name__=~\"libsecret_.+\"})");
    assert!(families.len() >= 17, "{families:?}");
    assert_eq!(
        prometheus.value("count(libsecret_vault_requests_total)"),
        30.0,
        "6 methods x 5 results"
    );
    drop(prometheus);
    drop(driver);
}

#[test]
fn without_metrics_listen_nothing_listens() {
    // The same config without the key: the driver serves the plugin API and binds no metrics port.
    let dir = tempfile::tempdir().unwrap();
    let secrets = support::root_only_file(dir.path(), "secrets.toml", "\"secret/a/b\" = \"v\"\n");
    let config = support::root_only_file(
        dir.path(),
        "config.toml",
        &format!(
            "mount_mode = \"in-process\"\nstate_dir = \"{}\"\nmount_root = \"{}\"\nbroker_socket = \"{}\"\n\
             [file]\npath = \"{}\"\n",
            dir.path().join("state").display(),
            dir.path().join("mounts").display(),
            dir.path().join("broker.sock").display(),
            secrets.display()
        ),
    );
    let _turn = support::one_at_a_time();
    let socket = dir.path().join("plugin.sock");
    let driver = Driver::start_with_config(&config, &[], &socket, &dir.path().join("log"), &[]);
    let pid = driver.pid();
    let listening = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap()
        + &std::fs::read_to_string(format!("/proc/{pid}/net/tcp6")).unwrap_or_default();
    // Sockets of the driver's own: its fds' inodes, against the TCP sockets in LISTEN state (0A).
    let own: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let listeners: Vec<&str> = listening
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(3) == Some(&"0A")
                && fields
                    .get(9)
                    .is_some_and(|inode| own.iter().any(|o| o == inode))
        })
        .collect();
    assert!(
        listeners.is_empty(),
        "the driver listens on TCP: {listeners:?}"
    );
    assert!(
        !driver.log().contains("serving metrics"),
        "{}",
        driver.log()
    );
    // With the key, the log says where (the listener is what the other test scrapes).
    drop(driver);
}

#[test]
fn a_metrics_listen_that_is_not_loopback_stops_the_driver_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["0.0.0.0:9475", "192.0.2.1:9475"] {
        let config = support::root_only_file(
            dir.path(),
            "config.toml",
            &format!("metrics_listen = \"{bad}\"\n"),
        );
        let (code, output) =
            support::driver::run_once(&["--config", config.to_str().unwrap()], &[]);
        assert_eq!(code, 78, "EX_CONFIG: {output}");
        assert!(
            output.contains(config.to_str().unwrap())
                && output.contains("key `metrics_listen`")
                && output.contains("not a loopback address"),
            "{output}"
        );
    }
}

#[test]
fn a_metrics_port_already_taken_costs_the_metrics_and_not_the_plugin_api() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let secrets = support::root_only_file(dir.path(), "secrets.toml", "\"secret/a/b\" = \"v\"\n");
    let config = support::root_only_file(
        dir.path(),
        "config.toml",
        &format!(
            "mount_mode = \"in-process\"\nstate_dir = \"{}\"\nmount_root = \"{}\"\nbroker_socket = \"{}\"\n\
             metrics_listen = \"127.0.0.1:{port}\"\n[file]\npath = \"{}\"\n",
            dir.path().join("state").display(),
            dir.path().join("mounts").display(),
            dir.path().join("broker.sock").display(),
            secrets.display()
        ),
    );
    let _turn = support::one_at_a_time();
    let socket = dir.path().join("plugin.sock");
    let driver = Driver::start_with_config(&config, &[], &socket, &dir.path().join("log"), &[]);
    let (_, reply) = call(&socket, "/VolumeDriver.List", json!({}));
    assert_eq!(err_of(&reply), "", "{reply}");
    let log = driver.log();
    assert!(
        log.contains("key `metrics_listen`: cannot listen on")
            && log.contains(config.to_str().unwrap())
            && log.contains("serving without metrics"),
        "{log}"
    );
    drop(taken);
}
