//! Per-run limits and how a run that hit one is classified.

use crate::model::RunStatus;
use wasmtime::{ResourceLimiter, Trap};

/// Caps linear memory; remembers whether the guest asked for more than its
/// cap so that the resulting trap is reported as `out_of_memory`.
pub struct MemoryLimiter {
    max_bytes: usize,
    denied: bool,
}

/// Tables hold function references; no honest task needs more.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

impl MemoryLimiter {
    pub fn new(max_bytes: u64) -> Self {
        MemoryLimiter {
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            denied: false,
        }
    }

    pub fn denied(&self) -> bool {
        self.denied
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
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

/// Maps an error out of wasmtime to a run status and a message.
pub fn classify(error: &wasmtime::Error, memory_denied: bool) -> (RunStatus, String) {
    if error.downcast_ref::<DeadlineExceeded>().is_some() {
        return (RunStatus::Timeout, "the run's deadline passed".into());
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
        let mut limiter = MemoryLimiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        assert!(!limiter.denied());
        assert!(!limiter.memory_growing(1 << 20, 2 << 20, None).unwrap());
        assert!(limiter.denied());
    }

    #[test]
    fn traps_map_to_statuses() {
        let fuel = wasmtime::Error::from(Trap::OutOfFuel);
        assert_eq!(classify(&fuel, false).0, RunStatus::OutOfFuel);
        let deadline = wasmtime::Error::from(DeadlineExceeded);
        assert_eq!(classify(&deadline, false).0, RunStatus::Timeout);
        let unreachable = wasmtime::Error::from(Trap::UnreachableCodeReached);
        assert_eq!(classify(&unreachable, false).0, RunStatus::Trapped);
        assert_eq!(classify(&unreachable, true).0, RunStatus::OutOfMemory);
    }
}
