//! A real systemd host for tests: a container of `libsecret-test/systemd-host:bookworm`
//! (built by `scripts/build-systemd-host.sh`: debootstrap'ed Debian bookworm with systemd as
//! PID 1, docker.io and fuse3), started with just enough privileges for systemd, an inner
//! Docker engine and FUSE. `docker restart` of it is a clean reboot (the image's STOPSIGNAL is
//! SIGRTMIN+3): files under /var/lib persist, /run is a fresh tmpfs, transient units are gone.
//!
//! Tests that need it never skip: they panic, naming the script that builds the image.
//!
//! Used both as `support::systemd_host` (next to `support::docker`) and included by path
//! (`#[path = "support/systemd_host.rs"] mod systemd_host;` next to `mod docker;`), so the
//! Docker helpers are reached as `super::docker`, which resolves in both layouts.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::docker::{docker, docker_ok};

/// The workspace root (the package is built below it).
pub fn workspace() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The newest package built by packaging/build-deb.sh; panics naming the script when there is none.
pub fn package() -> std::path::PathBuf {
    let dir = workspace().join("target/debian");
    let newest = std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    newest.unwrap_or_else(|| {
        panic!(
            "no .deb in {}: run packaging/build-deb.sh (scripts/test.sh does)",
            dir.display()
        )
    })
}

/// Built by `scripts/build-systemd-host.sh` (also run by `scripts/setup-test-host.sh`).
pub const SYSTEMD_HOST_IMAGE: &str = "libsecret-test/systemd-host:bookworm";

/// How long `start`/`reboot` wait for systemd and the inner Docker engine.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Set to 1 to keep the container after the test (for debugging with `docker exec`).
const KEEP_ENV: &str = "LIBSECRET_KEEP_SYSTEMD_HOST";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A running systemd host container; removed (with its volumes) on drop.
pub struct SystemdHost {
    id: String,
    name: String,
    /// The named local volume mounted at the inner /var/lib/docker.
    volume: String,
}

impl SystemdHost {
    /// Starts a new host and waits (≤ 90 s) until `systemctl is-system-running` says
    /// `running` or `degraded` and the inner `docker info` works. Panics if the image is
    /// missing (naming scripts/build-systemd-host.sh) or the host does not become ready.
    pub fn start() -> SystemdHost {
        Self::start_with(&[])
    }

    /// [`start`](Self::start) with more `docker run` options, such as `--network`, `--ip` and
    /// `--hostname` for a host among several (tests/support/cluster.rs).
    pub fn start_with(run_options: &[&str]) -> SystemdHost {
        let (code, _out, err) = docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            SYSTEMD_HOST_IMAGE,
        ]);
        if code != 0 {
            let (icode, _, ierr) = docker(&["info", "--format", "{{.ServerVersion}}"]);
            if icode != 0 {
                panic!(
                    "the Docker engine is not usable (`docker info` exited {icode}: {})\n\
                     run scripts/setup-test-host.sh (as root) to install and start dockerd",
                    ierr.trim()
                );
            }
            panic!(
                "the systemd host image {SYSTEMD_HOST_IMAGE} is missing (`docker image inspect` exited {code}: {})\n\
                 run scripts/build-systemd-host.sh (as root; ~1.5 min) to build it \
                 (scripts/setup-test-host.sh runs it too)",
                err.trim()
            );
        }

        let name = format!(
            "libsecret-systemd-host-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        // A leftover container with the same name (a previous process with the same pid
        // that was killed before its Drop ran) would make `docker run` fail.
        let _ = docker(&["rm", "-f", "-v", &name]);
        // The inner /var/lib/docker is a volume (overlay2 cannot sit on the container's
        // overlay root). It is a *named* local volume rather than an anonymous `-v
        // /var/lib/docker`: creating a container with an anonymous volume makes dockerd ask
        // every registered volume driver about the generated name, and when a volume plugin
        // registered earlier (e.g. libsecret) no longer answers, that stalls for ~15 s per
        // container. Same semantics: kept across `docker restart`, removed on drop.
        let volume = format!("{name}-var-lib-docker");
        // (No `docker volume rm` of a possible leftover first: for a name that does not
        // exist that too asks every driver and stalls; `volume create` of an existing local
        // volume just reuses it.)
        docker_ok(&[
            "volume",
            "create",
            "--driver",
            "local",
            "--label",
            "libsecret-test=systemd-host",
            &volume,
        ]);
        let volume_mount = format!("{volume}:/var/lib/docker");
        let mut run = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--cap-add",
            "ALL",
            "--cap-drop",
            "SYS_RESOURCE",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "--cgroupns=host",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--device",
            "/dev/fuse",
            "--label",
            "libsecret-test=systemd-host",
            "-v",
            &volume_mount,
        ];
        run.extend_from_slice(run_options);
        run.extend([SYSTEMD_HOST_IMAGE, "/lib/systemd/systemd"]);
        let (code, out, err) = docker(&run);
        if code != 0 {
            let _ = docker(&["rm", "-f", "-v", &name]);
            let _ = docker(&["volume", "rm", "-f", &volume]);
            panic!(
                "`docker run ... {SYSTEMD_HOST_IMAGE}` exited {code}\n--- stdout ---\n{out}\n--- stderr ---\n{err}\n\
                 (image built by scripts/build-systemd-host.sh)"
            );
        }
        let host = SystemdHost {
            id: out.trim().to_string(),
            name,
            volume,
        };
        assert!(!host.id.is_empty(), "`docker run` printed no container id");
        host.wait_ready("start");
        host
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The container name (`libsecret-systemd-host-<pid>-<n>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `docker exec <id> sh -c <script>` → (exit code, stdout, stderr).
    pub fn exec(&self, script: &str) -> (i32, String, String) {
        docker(&["exec", &self.id, "sh", "-c", script])
    }

    /// Like [`exec`](Self::exec), but panics with all output unless the script exits 0;
    /// returns stdout.
    pub fn exec_ok(&self, script: &str) -> String {
        let (code, out, err) = self.exec(script);
        if code != 0 {
            panic!(
                "in systemd host {}: `sh -c {script:?}` exited {code}\n--- stdout ---\n{out}\n--- stderr ---\n{err}",
                self.name
            );
        }
        out
    }

    /// `docker cp <host_path> <id>:<container_path>`.
    pub fn copy_in(&self, host_path: &Path, container_path: &str) {
        let src = host_path
            .to_str()
            .unwrap_or_else(|| panic!("non-UTF-8 path {host_path:?}"));
        docker_ok(&["cp", src, &format!("{}:{container_path}", self.id)]);
    }

    /// Loads a host image into the inner Docker engine
    /// (`docker save <image> | docker exec -i <id> docker load`).
    pub fn load_image(&self, image: &str) {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `docker save {image}`: {e}"));
        let save_out = save.stdout.take().expect("docker save stdout");
        let load = Command::new("docker")
            .args(["exec", "-i", &self.id, "docker", "load"])
            .stdin(Stdio::from(save_out))
            .output()
            .unwrap_or_else(|e| panic!("cannot run `docker exec -i {} docker load`: {e}", self.id));
        let save_res = save.wait_with_output().expect("wait for docker save");
        if !save_res.status.success() {
            panic!(
                "`docker save {image}` failed ({}): {}\n(is the image built on this machine? \
                 run scripts/setup-test-host.sh)",
                save_res.status,
                String::from_utf8_lossy(&save_res.stderr)
            );
        }
        if !load.status.success() {
            panic!(
                "`docker load` of {image} inside systemd host {} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.name,
                load.status,
                String::from_utf8_lossy(&load.stdout),
                String::from_utf8_lossy(&load.stderr)
            );
        }
    }

    /// `docker restart` (a clean reboot: systemd shuts down on SIGRTMIN+3), then the same
    /// readiness wait as [`start`](Self::start).
    pub fn reboot(&self) {
        docker_ok(&["restart", &self.id]);
        self.wait_ready("reboot");
    }

    /// A power cut and a boot: every process is SIGKILLed at once (nothing shuts down, no Unmount reaches a
    /// plugin), then the same readiness wait as [`start`](Self::start).
    pub fn crash_and_boot(&self) {
        self.kill();
        self.boot();
    }

    /// `journalctl --no-pager -o short <args>` (after `journalctl --sync`), e.g.
    /// `journal("-u docker-volume-libsecret.service")` or `journal("-t smoke-id -o cat")`
    /// (a later `-o` overrides the default). Never panics: on failure the result also holds
    /// journalctl's stderr and exit code, so it can go straight into a failure message.
    ///
    /// Note: the kernel boot id does not change across [`reboot`](Self::reboot) (it is the
    /// machine's), so `-b` also shows the earlier "boots"; the journal is persistent.
    pub fn journal(&self, args: &str) -> String {
        let (code, out, err) = self.exec(&format!(
            "journalctl --sync 2>/dev/null; journalctl --no-pager -o short {args}"
        ));
        if code == 0 {
            out
        } else {
            format!("{out}\n[journalctl {args} exited {code}: {}]", err.trim())
        }
    }

    /// A hard stop: every process is SIGKILLed at once and the host stays down until [`boot`](Self::boot).
    pub fn kill(&self) {
        docker_ok(&["kill", "-s", "KILL", &self.id]);
    }

    /// Starts a host stopped by [`kill`](Self::kill) and waits as [`start`](Self::start) does.
    pub fn boot(&self) {
        docker_ok(&["start", &self.id]);
        self.wait_ready("boot after a hard stop");
    }

    /// Waits until systemd reports running/degraded and the inner `docker info` works.
    fn wait_ready(&self, what: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_state;
        let mut last_docker = String::new();
        loop {
            let running = docker(&["inspect", "--format", "{{.State.Running}}", &self.id]).1;
            if running.trim() != "true" {
                let logs = docker(&["logs", "--tail", "60", &self.id]);
                panic!(
                    "systemd host {} ({what}) is not running any more (State.Running={})\n\
                     --- docker logs ---\n{}{}\n(image built by scripts/build-systemd-host.sh)",
                    self.name,
                    running.trim(),
                    logs.1,
                    logs.2
                );
            }
            let (_, out, err) = self.exec("systemctl is-system-running");
            last_state = format!("{}{}", out.trim(), err.trim());
            if matches!(out.trim(), "running" | "degraded") {
                let (code, out, err) = self.exec("docker info --format '{{.ServerVersion}}'");
                if code == 0 && !out.trim().is_empty() {
                    return;
                }
                last_docker = format!("exit {code}: {}{}", out.trim(), err.trim());
            }
            if Instant::now() > deadline {
                let diag = self
                    .exec(
                        "systemctl --failed --no-pager; systemctl list-jobs --no-pager; \
                         systemctl status docker.service --no-pager -l; \
                         journalctl --no-pager -b -n 80",
                    )
                    .1;
                panic!(
                    "systemd host {} not ready {}s after {what}: is-system-running={last_state:?}, \
                     inner docker info: {last_docker:?}\n--- diagnostics ---\n{diag}\n\
                     (image built by scripts/build-systemd-host.sh)",
                    self.name,
                    READY_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for SystemdHost {
    fn drop(&mut self) {
        if std::env::var(KEEP_ENV).as_deref() == Ok("1") {
            let _ = writeln!(
                std::io::stderr(),
                "{KEEP_ENV}=1: keeping systemd host container {} ({}) and volume {}",
                self.name,
                self.id,
                self.volume
            );
            return;
        }
        let _ = docker(&["rm", "-f", "-v", &self.id]);
        let _ = docker(&["volume", "rm", "-f", &self.volume]);
    }
}
