//! Debian's Podman (4.3) through the plugin: the package's registration snippet (with the socket path of the test),
//! `-o path=` for names Podman allows (no `/`), and create, ls, inspect, mount, unmount and rm, against the real
//! driver binary and real OpenBao. `podman run` cannot run on these machines (it fails setting rlimits without
//! CAP_SYS_RESOURCE), so a mount is made with `podman volume mount`, and read on the host.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use support::driver::Driver;
use support::openbao::OpenBao;
use support::plugin_client::{call, err_of};
use support::root_only_file;

/// The socket path the shipped snippet names.
const PACKAGED_SOCKET: &str = "/run/docker/plugins/libsecret.sock";

struct Podman {
    /// `CONTAINERS_CONF`: the shipped snippet, pointed at the test's socket.
    conf: PathBuf,
}

impl Podman {
    fn new(dir: &Path, socket: &Path) -> Podman {
        let snippet = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/packaging/podman/docker-volume-libsecret.conf"
        ))
        .unwrap();
        assert!(snippet.contains(PACKAGED_SOCKET), "{snippet}");
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            snippet.replace(PACKAGED_SOCKET, &socket.display().to_string()),
        )
        .unwrap();
        Podman { conf }
    }

    /// Runs `podman ARGS`: exit code and stdout + stderr.
    fn run(&self, args: &[&str]) -> (i32, String) {
        let output = Command::new("podman")
            .args(args)
            .env("CONTAINERS_CONF", &self.conf)
            .output()
            .unwrap_or_else(|e| {
                panic!("podman is needed (apt-get install podman; scripts/setup-test-host.sh does): {e}")
            });
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code().unwrap_or(-1), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, text) = self.run(args);
        assert_eq!(code, 0, "podman {args:?}: {text}");
        text
    }
}

#[test]
fn podman_creates_inspects_lists_mounts_and_removes_volumes_through_the_plugin() {
    support::require_fuse();
    let bao = OpenBao::start();
    bao.kv_put(
        None,
        "secret",
        "app-1/db-password",
        json!({"value": "podman-s3cr3t"}),
    );
    bao.kv_put(None, "secret", "admin/root", json!({"value": "root-pw"}));
    let dir = tempfile::tempdir().unwrap();
    let token = root_only_file(dir.path(), "token", bao.root_token());
    let mounts = dir.path().join("mounts");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "mount_mode = \"in-process\"\nstate_dir = \"{}\"\nmount_root = \"{}\"\nbroker_socket = \"{}\"\n\
             [vault]\naddr = \"{}\"\ntoken_file = \"{}\"\n\n[[rules]]\npath = \"secret/app-1\"\n",
            dir.path().join("state").display(),
            mounts.display(),
            dir.path().join("broker.sock").display(),
            bao.addr(),
            token.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let socket = dir.path().join("plugin.sock");
    let driver = Driver::start_with_config(&config, &[], &socket, &dir.path().join("log"), &[]);
    let podman = Podman::new(dir.path(), &socket);
    // A volume left by an earlier, failed run of this test would make the create fail.
    let _ = podman.run(&["volume", "rm", "-f", "libsecret-app1"]);

    // Podman allows no `/` in a name, so the Vault path is an option.
    let (code, text) = podman.run(&["volume", "create", "--driver", "libsecret", "secret/app-1"]);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("names must match"), "{text}");
    podman.ok(&[
        "volume",
        "create",
        "--driver",
        "libsecret",
        "-o",
        "path=secret/app-1",
        "libsecret-app1",
    ]);
    let listed = podman.ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert!(
        listed.lines().any(|l| l == "libsecret libsecret-app1"),
        "{listed}"
    );
    let inspected: serde_json::Value =
        serde_json::from_str(&podman.ok(&["volume", "inspect", "libsecret-app1"])).unwrap();
    assert_eq!(inspected[0]["Driver"], "libsecret", "{inspected}");
    // The driver has it too, under the name, for the path.
    let (_, got) = call(
        &socket,
        "/VolumeDriver.Get",
        json!({"Name": "libsecret-app1"}),
    );
    assert_eq!(err_of(&got), "", "{got}");

    // A mount through the plugin serves the path's secrets under the name's mountpoint.
    podman.ok(&["volume", "mount", "libsecret-app1"]);
    let mountpoint = mounts.join("libsecret-app1");
    assert_eq!(
        std::fs::read_to_string(mountpoint.join("db-password")).unwrap(),
        "podman-s3cr3t",
        "{}",
        driver.log()
    );
    podman.ok(&["volume", "unmount", "libsecret-app1"]);
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&mountpoint.display().to_string()),
        "still mounted after podman volume unmount"
    );
    podman.ok(&["volume", "rm", "libsecret-app1"]);
    let (_, got) = call(
        &socket,
        "/VolumeDriver.Get",
        json!({"Name": "libsecret-app1"}),
    );
    assert!(err_of(&got).contains("no volume named"), "{got}");

    // The rules decide the path, whatever the name; credentials are refused as options, unechoed.
    for (option, expected) in [
        ("path=secret/admin", "secret/admin"),
        ("path=../etc", "not a Vault path"),
        ("token=hvs.podman-token", "looks like a credential"),
    ] {
        let (code, text) = podman.run(&[
            "volume",
            "create",
            "--driver",
            "libsecret",
            "-o",
            option,
            "libsecret-refused",
        ]);
        assert_ne!(code, 0, "{option}: {text}");
        assert!(text.contains(expected), "{option}: {text}");
        assert!(!text.contains("hvs.podman-token"), "{text}");
    }
    let listed = podman.ok(&["volume", "ls", "--format", "{{.Name}}"]);
    assert!(!listed.contains("libsecret-"), "{listed}");
    assert!(!driver.log().contains("podman-s3cr3t"), "{}", driver.log());
}
