//! Per-run limits and how a run that hit one is classified.

use super::RunError;
use crate::capabilities::budget::{DeadlineExceeded, MemoryBudget};
use crate::model::RunStatus;
use std::sync::Arc;
use wasmtime::component::ResourceTableError;
use wasmtime::{ResourceLimiter, Trap};

/// Caps the run's memory: every linear memory and table of every instance
/// in the store counts against one budget (a component can hold several
/// core memories; each must not get the whole cap), which it shares with
/// what the host holds for the run (see [`MemoryBudget`]). Remembers
/// whether the guest asked for more so that the resulting trap is reported
/// as `out_of_memory`.
pub struct MemoryLimiter {
    budget: Arc<MemoryBudget>,
    /// The last grant, taken back if the engine then fails to grow.
    last_grant: usize,
    denied: bool,
}

/// Tables hold function references; no honest task needs more.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;
/// What one table element costs the host (a pointer).
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();
/// Instances, memories and tables one run may create. Components built from
/// Rust hold a handful of core instances and one memory; interpreters
/// linked as components (Python, JavaScript) a few dozen instances. Each
/// memory is also an address-space reservation, so their number is bounded
/// apart from their size.
const MAX_INSTANCES: usize = 256;
const MAX_MEMORIES: usize = 16;
const MAX_TABLES: usize = 256;

impl MemoryLimiter {
    pub fn new(budget: Arc<MemoryBudget>) -> Self {
        MemoryLimiter {
            budget,
            last_grant: 0,
            denied: false,
        }
    }

    pub fn denied(&self) -> bool {
        self.denied
    }

    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let more = desired.saturating_sub(current);
        if self.budget.take(more) {
            self.last_grant = more;
            true
        } else {
            self.denied = true;
            false
        }
    }

    fn grow_failed(&mut self) {
        self.budget.give_back(std::mem::take(&mut self.last_grant));
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        Ok(self.grow(
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        ))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

/// Maps an error out of wasmtime, after the guest used `fuel_used`, to how
/// the run ended.
pub fn classify(error: &wasmtime::Error, memory_denied: bool, fuel_used: u64) -> RunError {
    let (status, message) = status_and_message(error, memory_denied);
    RunError {
        status,
        message,
        fuel_used,
    }
}

fn status_and_message(error: &wasmtime::Error, memory_denied: bool) -> (RunStatus, String) {
    if error.downcast_ref::<DeadlineExceeded>().is_some() {
        return (RunStatus::Timeout, "the run's deadline passed".into());
    }
    // A host call found the run's resource table full where its interface
    // has no error to give the guest (e.g. a pollable).
    let table_full = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ResourceTableError>(),
            Some(ResourceTableError::Full)
        )
    });
    if table_full {
        return (
            RunStatus::Trapped,
            format!(
                "the run asked for more host resources than limits.handles allows: {}",
                root_message(error)
            ),
        );
    }
    let trap = error.downcast_ref::<Trap>().copied();
    let status = match trap {
        Some(Trap::OutOfFuel) => RunStatus::OutOfFuel,
        Some(Trap::Interrupt) => RunStatus::Timeout,
        // A guest denied memory usually aborts (Rust) or traps soon after.
        _ if memory_denied => RunStatus::OutOfMemory,
        _ => RunStatus::Trapped,
    };
    let message = match status {
        RunStatus::OutOfFuel => "the run's fuel budget is exhausted".into(),
        RunStatus::OutOfMemory => format!(
            "the guest was refused memory past its cap, then: {}",
            root_message(error)
        ),
        _ => root_message(error),
    };
    (status, message)
}

/// The error and its causes on one line, without the wasm backtrace.
fn root_message(error: &wasmtime::Error) -> String {
    if let Some(trap) = error.downcast_ref::<Trap>() {
        return trap.to_string();
    }
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let first = text.lines().next().unwrap_or_default().trim().to_owned();
        if !first.is_empty() && !parts.contains(&first) {
            parts.push(first);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_above_the_cap_is_refused_and_remembered() {
        let mut limiter = MemoryLimiter::new(MemoryBudget::new(1 << 20));
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        assert!(!limiter.denied());
        assert!(!limiter.memory_growing(1 << 20, 2 << 20, None).unwrap());
        assert!(limiter.denied());
    }

    #[test]
    fn every_memory_and_table_shares_one_budget() {
        let mut limiter = MemoryLimiter::new(MemoryBudget::new(10 << 20));
        // Two memories of 4 MiB fit; a third memory's 4 MiB does not.
        assert!(limiter.memory_growing(0, 4 << 20, None).unwrap());
        assert!(limiter.memory_growing(0, 4 << 20, None).unwrap());
        assert!(!limiter.memory_growing(0, 4 << 20, None).unwrap());
        assert!(limiter.denied());
        // Tables count by their elements' size.
        let mut limiter = MemoryLimiter::new(MemoryBudget::new(8 << 20));
        assert!(limiter.memory_growing(0, 7 << 20, None).unwrap());
        assert!(
            !limiter
                .table_growing(0, (2 << 20) / TABLE_ELEMENT_BYTES, None)
                .unwrap()
        );
        assert!(limiter.table_growing(0, 1000, None).unwrap());
    }

    #[test]
    fn a_grant_the_engine_could_not_use_is_taken_back() {
        let mut limiter = MemoryLimiter::new(MemoryBudget::new(4 << 20));
        assert!(limiter.memory_growing(0, 4 << 20, None).unwrap());
        limiter
            .memory_grow_failed(wasmtime::Error::msg("no room"))
            .unwrap();
        assert!(limiter.memory_growing(0, 4 << 20, None).unwrap());
        assert!(!limiter.denied());
    }

    #[test]
    fn what_the_host_holds_for_the_run_shares_the_budget() {
        let budget = MemoryBudget::new(8 << 20);
        let mut limiter = MemoryLimiter::new(budget.clone());
        assert!(limiter.memory_growing(0, 4 << 20, None).unwrap());
        // A listing held on the host takes 3 MiB: the memory cannot grow by
        // 2 MiB more, and a second listing of 3 MiB does not fit either.
        assert!(budget.take(3 << 20));
        assert!(!budget.take(3 << 20));
        assert!(!limiter.memory_growing(4 << 20, 6 << 20, None).unwrap());
        assert!(limiter.denied());
        // Once the listing is gone the memory may grow.
        budget.give_back(3 << 20);
        assert!(limiter.memory_growing(4 << 20, 6 << 20, None).unwrap());
        assert_eq!(budget.used(), 6 << 20);
    }

    #[test]
    fn traps_map_to_statuses() {
        let fuel = wasmtime::Error::from(Trap::OutOfFuel);
        assert_eq!(classify(&fuel, false, 0).status, RunStatus::OutOfFuel);
        let deadline = wasmtime::Error::from(DeadlineExceeded);
        assert_eq!(classify(&deadline, false, 0).status, RunStatus::Timeout);
        let unreachable = wasmtime::Error::from(Trap::UnreachableCodeReached);
        assert_eq!(classify(&unreachable, false, 0).status, RunStatus::Trapped);
        assert_eq!(
            classify(&unreachable, true, 0).status,
            RunStatus::OutOfMemory
        );
    }
}
