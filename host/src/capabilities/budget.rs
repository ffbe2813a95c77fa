//! What a run spends that guest code and host calls both draw on: its
//! memory budget (linear memories and tables through the runtime's limiter,
//! directory listings through the filesystem capability) and the error that
//! says its deadline passed (raised by the runtime's epoch callback and by
//! SQL calls alike). The runtime imports these; capabilities never import
//! the runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A run's `limits.memory`: the host memory the run may make the host hold.
/// Its linear memories and tables take from it (through the runtime's `MemoryLimiter`),
/// and so do the directory listings the host holds for it
/// (`capabilities/filesystem.rs`); whichever asks last past the cap is
/// refused.
#[derive(Debug)]
pub struct MemoryBudget {
    max: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(max_bytes: u64) -> Arc<Self> {
        Arc::new(MemoryBudget {
            max: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            used: AtomicUsize::new(0),
        })
    }

    /// Takes `bytes` from the budget, or nothing if they do not fit.
    pub fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    /// Gives back bytes taken earlier.
    pub fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// Raised from the epoch callback when the run's deadline has passed.
#[derive(Debug)]
pub struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("wall-clock deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}
