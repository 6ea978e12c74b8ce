//! Runs the real `docker-volume-libsecret` binary as a child process for a test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_docker-volume-libsecret");

pub struct Driver {
    child: Option<Child>,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Driver {
    /// Starts the driver with `args` (no config file is read) and waits until its socket accepts connections.
    pub fn start(args: &[&str], socket: &Path, log: &Path) -> Driver {
        Self::start_with_env(args, socket, log, &[])
    }

    pub fn start_with_env(
        args: &[&str],
        socket: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> Driver {
        Self::start_with_config(Path::new("/dev/null"), args, socket, log, env)
    }

    /// Starts the driver with the config file `config`.
    pub fn start_with_config(
        config: &Path,
        args: &[&str],
        socket: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> Driver {
        let log_file = std::fs::File::create(log).unwrap();
        let _ = std::fs::remove_file(socket);
        let child = Command::new(BINARY)
            .arg("--config")
            .arg(config)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("JOURNAL_STREAM")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {BINARY}: {e}"));
        let mut driver = Driver {
            child: Some(child),
            socket: socket.to_owned(),
            log: log.to_owned(),
        };
        driver.wait_ready();
        driver
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the driver exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the driver's socket {} never accepted connections:\n{}",
            self.socket.display(),
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the driver process has not exited.
    #[allow(dead_code)]
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().ok().flatten().is_none())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or_default()
    }

    /// SIGKILL (a crash: nothing runs at exit), and waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop();
        // A failing test shows what the driver said (it never logs a secret value).
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of the driver log ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Runs the binary to completion with `args`, returning (exit code, combined output).
pub fn run_once(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let output = Command::new(BINARY)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("JOURNAL_STREAM")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}
