//! The lease journal: one root-only JSON file per lease holder under `<state_dir>/leases/`, written atomically.
//! It holds lease IDs, serials and token accessors, expiry and the holder, never a credential: after a crash or a
//! reboot, the next driver revokes the leases whose holder process is gone ([`JournalEntry::holder_is_alive`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::LeaseRef;
use crate::names::escape_component;
use crate::volumes::store::{read_json_files, remove_file, write_json};
use crate::volumes::StoreError;

/// The process serving a lease: the driver (in-process mounts) or a mount unit. A journal entry whose process is
/// gone (another boot, a dead PID, a reused PID with another start time) belongs to nobody.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HolderProcess {
    pub pid: u32,
    pub boot_id: String,
    /// The process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
}

impl HolderProcess {
    /// This process.
    pub fn current() -> HolderProcess {
        let pid = std::process::id();
        HolderProcess {
            pid,
            boot_id: boot_id(),
            start_ticks: start_ticks(pid).unwrap_or_default(),
        }
    }

    /// No process: the holder of leases whose keeper ended without revoking them (Vault did not answer), so the
    /// reaper takes them over.
    pub fn released() -> HolderProcess {
        HolderProcess {
            pid: 0,
            boot_id: boot_id(),
            start_ticks: 0,
        }
    }

    /// Whether the process still runs, in this boot.
    pub fn is_alive(&self) -> bool {
        self.boot_id == boot_id() && start_ticks(self.pid) == Some(self.start_ticks)
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|text| text.trim().to_owned())
        .unwrap_or_default()
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count fields after its closing one.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A lease the holder replaced, kept valid for the re-issue grace, then revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetiringLease {
    pub lease: LeaseRef,
    /// Unix seconds.
    pub revoke_at: u64,
}

/// What the journal knows about one holder's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalEntry {
    pub volume: String,
    /// The container (Docker's mount ID) holding the lease, or `per-volume`.
    pub holder: String,
    /// The child namespace the volume reads in.
    #[serde(default)]
    pub namespace: Option<String>,
    pub lease: LeaseRef,
    /// Unix seconds.
    pub issued_at: u64,
    /// When the lease ends unless renewed, Unix seconds (0: no lease).
    pub expires_at: u64,
    pub process: HolderProcess,
    /// `serving`, or what is wrong: a renewal failing since when, a credential that expired during an outage.
    pub state: String,
    #[serde(default)]
    pub retiring: Vec<RetiringLease>,
}

impl JournalEntry {
    pub fn holder_is_alive(&self) -> bool {
        self.process.is_alive()
    }
}

/// Unix seconds of `time`.
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// The journal directory.
#[derive(Debug, Clone)]
pub struct LeaseJournal {
    dir: PathBuf,
}

impl LeaseJournal {
    /// Uses `<state_dir>/leases`, creating it (mode 0700) when missing.
    pub fn open(state_dir: &Path) -> Result<LeaseJournal, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = state_dir.join("leases");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StoreError::Io {
                path: dir.clone(),
                source,
            })?;
        Ok(LeaseJournal { dir })
    }

    fn path_of(&self, volume: &str, holder: &str) -> PathBuf {
        // Volume names hold no control characters, so the newline keeps every (volume, holder) pair apart.
        self.dir.join(format!(
            "{}.json",
            escape_component(&format!("{volume}\n{holder}"))
        ))
    }

    pub fn save(&self, entry: &JournalEntry) -> Result<(), StoreError> {
        write_json(
            &self.dir,
            &self.path_of(&entry.volume, &entry.holder),
            entry,
        )
    }

    pub fn remove(&self, volume: &str, holder: &str) -> Result<(), StoreError> {
        remove_file(&self.dir, &self.path_of(volume, holder))
    }

    pub fn load_all(&self) -> Result<Vec<JournalEntry>, StoreError> {
        read_json_files(&self.dir)
    }

    /// The entry of one holder, if there is one: the reaper checks that an entry is still the one it read before
    /// rewriting or removing it, since a new holder of the same volume and mount ID writes to the same file.
    pub fn load(&self, volume: &str, holder: &str) -> Result<Option<JournalEntry>, StoreError> {
        let path = self.path_of(volume, holder);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| StoreError::Corrupt { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entry(volume: &str, holder: &str, process: HolderProcess) -> JournalEntry {
        JournalEntry {
            volume: volume.into(),
            holder: holder.into(),
            namespace: None,
            lease: LeaseRef {
                path: "database/creds/app".into(),
                lease_id: "database/creds/app/abc".into(),
                serial: None,
                owner_accessor: None,
            },
            issued_at: 1,
            expires_at: 2,
            process,
            state: "serving".into(),
            retiring: vec![],
        }
    }

    #[test]
    fn entries_round_trip_root_only_one_file_per_holder() {
        let dir = tempfile::tempdir().unwrap();
        let journal = LeaseJournal::open(dir.path()).unwrap();
        let a = entry("database/creds/app", "c1", HolderProcess::current());
        let b = entry("database/creds/app", "c2", HolderProcess::current());
        journal.save(&a).unwrap();
        journal.save(&b).unwrap();
        journal.save(&a).unwrap();
        let mut all = journal.load_all().unwrap();
        all.sort_by(|x, y| x.holder.cmp(&y.holder));
        assert_eq!(all, vec![a.clone(), b]);
        let mode = std::fs::metadata(dir.path().join("leases"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        for file in std::fs::read_dir(dir.path().join("leases")).unwrap() {
            let mode = file.unwrap().metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            journal.load("database/creds/app", "c1").unwrap(),
            Some(a.clone())
        );
        journal.remove("database/creds/app", "c2").unwrap();
        assert_eq!(journal.load("database/creds/app", "c2").unwrap(), None);
        assert_eq!(journal.load_all().unwrap(), vec![a]);
    }

    #[test]
    fn this_process_is_alive_and_a_dead_or_reused_pid_or_another_boot_is_not() {
        let me = HolderProcess::current();
        assert!(me.start_ticks > 0);
        assert!(me.is_alive());
        let reused = HolderProcess {
            start_ticks: me.start_ticks + 1,
            ..me.clone()
        };
        assert!(!reused.is_alive());
        let other_boot = HolderProcess {
            boot_id: "another-boot".into(),
            ..me.clone()
        };
        assert!(!other_boot.is_alive());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = HolderProcess { pid, ..me };
        assert!(!dead.is_alive());
    }
}
