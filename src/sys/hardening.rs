//! Keeps secrets in this process's memory: no core dumps, not dumpable (no ptrace attach by other users, no
//! `/proc/<pid>/mem` reads), and memory locked against swap where the process is allowed to lock it.

use nix::sys::mman::{mlockall, MlockAllFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// `CAP_IPC_LOCK`'s bit in `/proc/self/status`'s `CapEff`.
const CAP_IPC_LOCK: u32 = 14;

/// What [`harden_process`] could not do, as one line each for the log.
#[derive(Debug, Default)]
pub struct Hardening {
    pub warnings: Vec<String>,
    pub memory_locked: bool,
}

/// Whether the effective capability set holds `CAP_IPC_LOCK` (root outside a bounding set that drops it).
fn has_ipc_lock() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Turns core dumps off, makes the process non-dumpable, and locks its memory (pages as they are touched, so the
/// resident size does not grow) when the memlock limit cannot be hit. Call once, first thing.
pub fn harden_process() -> Hardening {
    let mut result = Hardening::default();
    if let Err(error) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        result
            .warnings
            .push(format!("could not turn core dumps off: {error}"));
    }
    if let Err(error) = nix::sys::prctl::set_dumpable(false) {
        result
            .warnings
            .push(format!("could not make the process non-dumpable: {error}"));
    }
    // Locking every future mapping counts whole mappings (thread stacks, malloc arenas) against RLIMIT_MEMLOCK: with
    // a finite limit, allocations would start failing. Lock only when nothing can run into the limit.
    let unlimited =
        getrlimit(Resource::RLIMIT_MEMLOCK).is_ok_and(|(soft, _)| soft == RLIM_INFINITY);
    if unlimited || has_ipc_lock() {
        let flags = MlockAllFlags::MCL_CURRENT
            | MlockAllFlags::MCL_FUTURE
            | MlockAllFlags::from_bits_retain(nix::libc::MCL_ONFAULT);
        match mlockall(flags) {
            Ok(()) => result.memory_locked = true,
            Err(error) => result.warnings.push(format!(
                "could not lock memory, so secrets could be swapped to disk: {error}"
            )),
        }
    } else {
        result.warnings.push(
            "memory not locked, so secrets could be swapped to disk: no CAP_IPC_LOCK and RLIMIT_MEMLOCK is limited \
             (run as root, or use encrypted or no swap)"
                .to_owned(),
        );
    }
    result
}

/// Whether this process is dumpable (for tests and status).
pub fn is_dumpable() -> bool {
    nix::sys::prctl::get_dumpable().unwrap_or(true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_ends_non_dumpable_without_core_dumps() {
        let result = super::harden_process();
        assert!(!super::is_dumpable(), "{:?}", result.warnings);
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE).unwrap();
        assert_eq!((soft, hard), (0, 0));
        if nix::unistd::geteuid().is_root() {
            assert!(result.memory_locked, "{:?}", result.warnings);
        }
    }
}
