//! Request budgets: how many Vault requests may be in flight at once, and how fast new ones may start.
//!
//! Every request that goes to the source passes two budgets: its volume's (owned by the mount, so two volumes that
//! share a cache still have separate budgets) and the process's (shared by every cache). The volume's is taken
//! first, so a container probing names queues on its own volume's budget and holds at most that volume's share of
//! the process's. A request that has no budget after `wait` (`vault.timeout`) is refused: the read gives EIO, and
//! the budget logs one line per interval with the count of refusals. Answers from memory never pass a budget, and
//! readers waiting on a request already in flight share its admission.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most one "limit reached" line per budget per this interval; the refusals between lines are counted.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The limits of one budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimits {
    /// Most requests in flight at once.
    pub concurrency: NonZeroUsize,
    /// Requests that may start per second, sustained.
    pub rate: NonZeroU32,
    /// Requests that may start at once after a quiet spell (the bucket's size).
    pub burst: NonZeroU32,
}

impl BudgetLimits {
    /// `concurrency`, `rate` and `burst`, each raised to at least 1.
    pub fn new(concurrency: usize, rate: u32, burst: u32) -> Self {
        BudgetLimits {
            concurrency: NonZeroUsize::new(concurrency).unwrap_or(NonZeroUsize::MIN),
            rate: NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
        }
    }

    /// The default of one volume (`limits.volume_*`).
    pub fn volume_default() -> Self {
        BudgetLimits::new(8, 50, 200)
    }

    /// The default of one process (`limits.total_*`).
    pub fn total_default() -> Self {
        BudgetLimits::new(64, 500, 2000)
    }
}

/// Why a request was not sent: the budget named was still exhausted when the wait ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the Vault request limit of {budget} ({which}) was still reached after {waited_ms} ms")]
pub struct Refused {
    pub budget: String,
    /// `"concurrency"` or `"rate"`.
    pub which: &'static str,
    pub waited_ms: u128,
}

struct RefusalLog {
    last_line: Option<Instant>,
    unreported: u64,
}

/// One budget: a concurrency limit (a semaphore) and a rate limit (a token bucket).
pub struct RequestBudget {
    label: String,
    limits: BudgetLimits,
    slots: Arc<Semaphore>,
    rate: RateLimiter<NotKeyed, InMemoryState, DefaultClock>,
    log: Mutex<RefusalLog>,
    admitted: AtomicU64,
    refused: AtomicU64,
    lines: AtomicU64,
}

impl std::fmt::Debug for RequestBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBudget")
            .field("label", &self.label)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Permits held while a request is in flight; dropping it frees the concurrency slots.
#[derive(Debug)]
pub struct Admission {
    _permits: Vec<OwnedSemaphorePermit>,
}

impl RequestBudget {
    /// A budget named `label` in log lines (a volume's path, or "all volumes").
    pub fn new(label: &str, limits: BudgetLimits) -> Self {
        RequestBudget {
            label: label.to_owned(),
            limits,
            slots: Arc::new(Semaphore::new(limits.concurrency.get())),
            rate: RateLimiter::direct(Quota::per_second(limits.rate).allow_burst(limits.burst)),
            log: Mutex::new(RefusalLog {
                last_line: None,
                unreported: 0,
            }),
            admitted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            lines: AtomicU64::new(0),
        }
    }

    /// A budget so large it never bites (tests and tools that make no requests on anyone's behalf).
    pub fn unlimited(label: &str) -> Self {
        // A million a second: far above anything a Vault answers, and a refill interval governor can represent.
        RequestBudget::new(
            label,
            BudgetLimits::new(Semaphore::MAX_PERMITS, 1_000_000, 1_000_000),
        )
    }

    pub fn limits(&self) -> BudgetLimits {
        self.limits
    }

    /// Requests let through so far.
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Requests refused so far (each one a read that gave EIO).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// "Limit reached" lines logged so far.
    pub fn lines_logged(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// Waits until `deadline` for a concurrency slot and a rate token.
    async fn take(&self, deadline: tokio::time::Instant) -> Result<OwnedSemaphorePermit, Refused> {
        let started = tokio::time::Instant::now();
        let refused = |which| Refused {
            budget: self.label.clone(),
            which,
            waited_ms: started.elapsed().as_millis(),
        };
        let permit = tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| refused("concurrency"))?
            // The semaphore is never closed.
            .map_err(|_| refused("concurrency"))?;
        loop {
            match self.rate.check() {
                Ok(()) => return Ok(permit),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    let now = tokio::time::Instant::now();
                    if now + wait > deadline {
                        // The next token comes after the deadline: the read waits out its time, then fails.
                        tokio::time::sleep_until(deadline).await;
                        return Err(refused("rate"));
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Counts a refusal and logs it, at most one line per [`REFUSAL_LOG_INTERVAL`].
    fn note_refusal(&self, refusal: &Refused) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.unreported += 1;
        let due = log
            .last_line
            .map_or(true, |last| last.elapsed() >= REFUSAL_LOG_INTERVAL);
        if due {
            let refused = std::mem::take(&mut log.unreported);
            log.last_line = Some(Instant::now());
            drop(log);
            self.lines.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                budget = %self.label,
                limit = refusal.which,
                refused,
                concurrency = self.limits.concurrency.get(),
                rate_per_s = self.limits.rate.get(),
                burst = self.limits.burst.get(),
                "Vault request limit reached: reads waited and gave EIO (refused counts them since the last line)"
            );
        }
    }
}

/// Admits one request through `volume` (if any), then `total`, waiting at most `wait` in all.
pub async fn admit(
    volume: Option<&RequestBudget>,
    total: &RequestBudget,
    wait: Duration,
) -> Result<Admission, Refused> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut permits = Vec::with_capacity(2);
    for budget in volume.into_iter().chain(std::iter::once(total)) {
        match budget.take(deadline).await {
            Ok(permit) => permits.push(permit),
            Err(refusal) => {
                budget.note_refusal(&refusal);
                crate::metrics::rate_limit_refusal(
                    if std::ptr::eq(budget, total) {
                        crate::metrics::Budget::Process
                    } else {
                        crate::metrics::Budget::Volume
                    },
                    match refusal.which {
                        "rate" => crate::metrics::Limit::Rate,
                        _ => crate::metrics::Limit::Concurrency,
                    },
                );
                return Err(refusal);
            }
        }
    }
    for budget in volume.into_iter().chain(std::iter::once(total)) {
        budget.admitted.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Admission { _permits: permits })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_rate_bites_after_the_burst_and_refusals_are_logged_once_per_interval() {
        let volume = RequestBudget::new("secret/app", BudgetLimits::new(100, 1, 5));
        let total = RequestBudget::unlimited("all volumes");
        let wait = Duration::from_millis(20);
        let counted = || {
            crate::metrics::current(
                "libsecret_rate_limit_refusals_total{budget=\"volume\",limit=\"rate\"}",
            )
        };
        let counted_before = counted();
        let started = Instant::now();
        let mut admitted = 0;
        let mut refused = 0;
        for _ in 0..50 {
            match admit(Some(&volume), &total, wait).await {
                Ok(_) => admitted += 1,
                Err(refusal) => {
                    assert_eq!(refusal.which, "rate");
                    assert_eq!(refusal.budget, "secret/app");
                    refused += 1;
                }
            }
        }
        // The burst, plus the tokens refilled (1/s) while the refusals waited.
        let refilled = started.elapsed().as_secs() + 1;
        assert!(
            admitted >= 5 && admitted <= 5 + refilled,
            "{admitted} admitted"
        );
        assert_eq!(refused, 50 - admitted);
        assert_eq!(volume.refused(), refused);
        assert!(
            counted() - counted_before >= refused,
            "each refusal is in the metrics, as the volume's budget's"
        );
        assert_eq!(volume.lines_logged(), 1, "one line per interval");
        assert_eq!(
            total.admitted(),
            admitted,
            "a refused request takes nothing from the total"
        );
    }

    #[tokio::test]
    async fn concurrency_is_bounded_and_freed_when_a_request_ends() {
        let volume = RequestBudget::new("secret/app", BudgetLimits::new(2, 1000, 1000));
        let total = RequestBudget::unlimited("all volumes");
        let wait = Duration::from_millis(50);
        let first = admit(Some(&volume), &total, wait).await.unwrap();
        let _second = admit(Some(&volume), &total, wait).await.unwrap();
        let third = admit(Some(&volume), &total, wait).await.unwrap_err();
        assert_eq!(third.which, "concurrency");
        drop(first);
        assert!(admit(Some(&volume), &total, wait).await.is_ok());
    }

    #[tokio::test]
    async fn the_total_is_shared_and_a_volume_budget_is_taken_first() {
        let total = RequestBudget::new("all volumes", BudgetLimits::new(100, 1, 3));
        let a = RequestBudget::new("secret/a", BudgetLimits::new(100, 1, 2));
        let b = RequestBudget::new("secret/b", BudgetLimits::new(100, 1, 10));
        let wait = Duration::from_millis(10);
        let started = Instant::now();
        let mut a_ok = 0;
        for _ in 0..10 {
            a_ok += u64::from(admit(Some(&a), &total, wait).await.is_ok());
        }
        let refilled = started.elapsed().as_secs();
        assert!(
            a_ok >= 2 && a_ok <= 2 + refilled,
            "volume a is held to its own burst: {a_ok}"
        );
        assert_eq!(
            total.admitted(),
            a_ok,
            "a's refusals took nothing from the total"
        );
        let mut b_ok = 0;
        for _ in 0..10 {
            b_ok += u64::from(admit(Some(&b), &total, wait).await.is_ok());
        }
        let refilled = started.elapsed().as_secs();
        assert!(
            b_ok >= 1 && a_ok + b_ok <= 3 + refilled,
            "the total's last tokens; the rest is refused by the total: {b_ok}"
        );
        assert!(total.refused() >= 10 - b_ok);
    }
}
