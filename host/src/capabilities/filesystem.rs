//! `wasi:filesystem/types` under the run's caps. wasmtime-wasi does the work
//! (path sandboxing, grant permissions, I/O); this layer sits in front of it
//! and
//!
//! - opens files so that a special file can never block the guest's thread:
//!   FIFOs, sockets and devices in a granted directory are refused at open
//!   (`not-permitted`, and a line in the run's output saying what the file
//!   is);
//! - counts what one run holds and writes: open descriptors
//!   (`limits.descriptors`), open directory listings (`limits.dir_streams`)
//!   and the host memory they hold (`limits.memory`, shared with the run's
//!   linear memories; see [`accounting::listing_cost`]),
//!   bytes written through every write path (`limits.write_bytes`), and
//!   every new directory entry from the same budget (see [`accounting::entry_cost`]);
//! - turns a full resource table (`limits.handles`, enforced by wasmtime's
//!   `ResourceTable`) into an error the guest sees where the interface has
//!   one.
//!
//! Past a cap the guest gets `quota` and the output says, once, which
//! `limits.<key>` it reached. Every other call goes straight to
//! wasmtime-wasi. The linker gets this implementation in place of
//! wasmtime-wasi's own (see [`add_to_linker`]).
mod accounting;
pub(crate) use accounting::WriteBudget;
mod host;
mod open;

use super::output::{Level, Output};
use crate::capabilities::budget::MemoryBudget;
use crate::manifest::ResourceLimits;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use wasmtime::component::{HasData, Linker, ResourceTableError};
use wasmtime_wasi::filesystem::WasiFilesystemCtxView;
use wasmtime_wasi::p2::FsError;
use wasmtime_wasi::p2::bindings::filesystem::types::{self, ErrorCode};

/// What the filesystem of one run may hold and write.
#[derive(Debug, Clone)]
pub struct FsLimits {
    pub resources: ResourceLimits,
    /// The most descriptors any run may hold, whatever its manifest says:
    /// the service's share of its own open-file limit. `None`: no ceiling.
    pub descriptor_ceiling: Option<u32>,
    /// The run's `limits.memory`, which its directory listings share with
    /// its linear memories.
    pub memory: Arc<MemoryBudget>,
}

impl FsLimits {
    pub fn new(
        resources: ResourceLimits,
        descriptor_ceiling: Option<u32>,
        memory: Arc<MemoryBudget>,
    ) -> Self {
        FsLimits {
            resources,
            descriptor_ceiling,
            memory,
        }
    }
}

/// One run's filesystem accounting.
pub struct FsGuard {
    limits: ResourceLimits,
    /// Set when the service's share, not the manifest, bounds descriptors.
    descriptors_by_service: bool,
    /// Every file and directory this run opened. A descriptor's OS handle
    /// stays open while anything holds it (the descriptor, a stream made
    /// from it, a call in flight), so the live ones are exactly those still
    /// upgradable.
    opened: Vec<Weak<std::fs::File>>,
    listings: u32,
    /// What each open listing holds of `memory`, by its handle.
    listing_bytes: HashMap<u32, usize>,
    memory: Arc<MemoryBudget>,
    budget: Arc<WriteBudget>,
    output: Output,
    blocking_current_thread: bool,
    warned_descriptors: bool,
    warned_listings: bool,
    warned_memory: bool,
    warned_handles: bool,
}

impl FsGuard {
    pub fn new(limits: FsLimits, blocking_current_thread: bool, output: &Output) -> Self {
        let mut resources = limits.resources;
        let ceiling = limits.descriptor_ceiling.unwrap_or(u32::MAX);
        let descriptors_by_service = ceiling < resources.descriptors;
        resources.descriptors = resources.descriptors.min(ceiling);
        FsGuard {
            limits: resources,
            descriptors_by_service,
            opened: Vec::new(),
            listings: 0,
            listing_bytes: HashMap::new(),
            memory: limits.memory,
            budget: Arc::new(WriteBudget::new(resources.write_bytes, output)),
            output: output.clone(),
            blocking_current_thread,
            warned_descriptors: false,
            warned_listings: false,
            warned_memory: false,
            warned_handles: false,
        }
    }

    pub(crate) fn write_budget(&self) -> Arc<WriteBudget> {
        self.budget.clone()
    }

    /// Whether the run holds as many files and directories as it may. The
    /// list is swept of closed ones only when it looks full, which keeps an
    /// open O(1) on average.
    fn descriptors_full(&mut self) -> bool {
        let cap = self.limits.descriptors as usize;
        if self.opened.len() >= cap {
            self.opened.retain(|f| f.strong_count() > 0);
        }
        self.opened.len() >= cap
    }

    fn descriptors_exhausted(&mut self) -> FsError {
        if !std::mem::replace(&mut self.warned_descriptors, true) {
            let cap = self.limits.descriptors;
            let why = if self.descriptors_by_service {
                "the service's share of its open-file limit (RLIMIT_NOFILE), below limits.descriptors"
            } else {
                "its cap"
            };
            self.output.log(
                Level::Warn,
                &format!(
                    "limits.descriptors: the task has {cap} files and directories open, {why}; opening more fails with `quota`"
                ),
            );
        }
        ErrorCode::Quota.into()
    }

    fn listings_exhausted(&mut self) -> FsError {
        if !std::mem::replace(&mut self.warned_listings, true) {
            self.output.log(
                Level::Warn,
                &format!(
                    "limits.dir_streams: the task has {} directory listings open, its cap; listing more fails with `quota`",
                    self.limits.dir_streams
                ),
            );
        }
        ErrorCode::Quota.into()
    }

    fn listing_memory_exhausted(&mut self, entries: u64, bytes: usize) -> FsError {
        if !std::mem::replace(&mut self.warned_memory, true) {
            self.output.log(
                Level::Warn,
                &format!(
                    "limits.memory: a listing of {entries} entries would hold about {bytes} bytes of host memory, and the run already uses {} of its {} bytes; listing fails with `insufficient-memory`",
                    self.memory.used(),
                    self.memory.max()
                ),
            );
        }
        ErrorCode::InsufficientMemory.into()
    }

    /// A push into a full resource table is a trap in wasmtime-wasi; here
    /// it is the guest's `quota`.
    fn table_error(&mut self, error: ResourceTableError) -> FsError {
        match error {
            ResourceTableError::Full => {
                if !std::mem::replace(&mut self.warned_handles, true) {
                    self.output.log(
                        Level::Warn,
                        &format!(
                            "limits.handles: the task holds {} host resources, its cap; making more fails with `quota` or stops the run",
                            self.limits.handles
                        ),
                    );
                }
                ErrorCode::Quota.into()
            }
            other => FsError::trap(other),
        }
    }

    fn fs_error(&mut self, error: FsError) -> FsError {
        match error.downcast() {
            Ok(code) => code.into(),
            Err(trap) => match trap.downcast::<ResourceTableError>() {
                Ok(table) => self.table_error(table),
                Err(trap) => FsError::trap(trap),
            },
        }
    }
}

/// The run's WASI filesystem, as the linker sees it.
pub struct GuardedFs<'a> {
    pub fs: WasiFilesystemCtxView<'a>,
    pub guard: &'a mut FsGuard,
}

struct GuardedFilesystem;

impl HasData for GuardedFilesystem {
    type Data<'a> = GuardedFs<'a>;
}

/// Puts this implementation of `wasi:filesystem/types` in place of
/// wasmtime-wasi's. Call it after `wasmtime_wasi::p2::add_to_linker_async`,
/// which adds the rest of WASI.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> GuardedFs<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = types::add_to_linker::<T, GuardedFilesystem>(linker, get);
    linker.allow_shadowing(false);
    added
}

/// Raises this process's soft limit on open files to its hard limit and
/// returns the limit now in force (`None`: unlimited).
pub fn raise_open_file_limit() -> std::io::Result<Option<u64>> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.maximum.is_some() && limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

/// How many files and directories each of `concurrent_runs` runs may hold
/// when the process may have `limit` open: half goes to guests, split
/// evenly; the other half is the service's own reserve (its listener and
/// connections, the store, connection pools, the compile cache, the
/// watcher).
pub fn descriptors_per_run(limit: Option<u64>, concurrent_runs: u32) -> Option<u32> {
    let share = limit? / 2 / u64::from(concurrent_runs.max(1));
    Some(u32::try_from(share).unwrap_or(u32::MAX).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_share_half_of_the_open_file_limit() {
        assert_eq!(descriptors_per_run(Some(1024), 4), Some(128));
        assert_eq!(descriptors_per_run(Some(1_048_576), 1), Some(524_288));
        assert_eq!(descriptors_per_run(Some(4), 16), Some(1));
        assert_eq!(descriptors_per_run(Some(u64::MAX), 1), Some(u32::MAX));
        assert_eq!(descriptors_per_run(None, 4), None);
    }
}
