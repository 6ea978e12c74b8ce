//! Fault injection knobs shared between the test handle and the server.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Default)]
pub(crate) struct Faults {
    latency_ms: AtomicU64,
    /// 0 = no override.
    status_override: AtomicU16,
    connection_reset: AtomicBool,
}

impl Faults {
    pub(crate) fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::SeqCst))
    }
    pub(crate) fn status_override(&self) -> Option<u16> {
        match self.status_override.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
    pub(crate) fn connection_reset(&self) -> bool {
        self.connection_reset.load(Ordering::SeqCst)
    }
}

/// Handle for injecting faults into a running [`crate::TestVault`].
#[derive(Debug, Clone)]
pub struct FaultsHandle(pub(crate) Arc<Faults>);

impl FaultsHandle {
    /// Sleep this long before answering every request (zero = off).
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.0.latency_ms.store(ms, Ordering::SeqCst);
    }
    /// Answer every request with this status and `{"errors":["injected fault"]}`.
    pub fn set_status_override(&self, status: Option<u16>) {
        self.0
            .status_override
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }
    /// Accept connections, then drop them without answering.
    pub fn set_connection_reset(&self, reset: bool) {
        self.0.connection_reset.store(reset, Ordering::SeqCst);
    }
}
