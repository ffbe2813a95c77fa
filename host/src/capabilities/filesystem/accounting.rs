//! What a run's writes and listings cost, and the budget they are charged
//! to: the write budget (`limits.write_bytes`) shared by every write path
//! and every new directory entry, and the output stream that charges it
//! for each byte whichever call writes it.

use super::GuardedFs;
use crate::capabilities::output::{Level, Output};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::FsPerms;
use wasmtime_wasi::filesystem::Descriptor;
use wasmtime_wasi::p2::bindings::filesystem::types::ErrorCode;
use wasmtime_wasi::p2::{
    DynOutputStream, FsResult, OutputStream, Pollable, StreamError, StreamResult,
};

/// The bytes a run may still write. Shared with the output streams it makes
/// from its files, which outlive any one call.
pub(crate) struct WriteBudget {
    pub(super) cap: u64,
    pub(super) used: AtomicU64,
    pub(super) output: Output,
    pub(super) warned: AtomicBool,
}

/// The error a write past `limits.write_bytes` fails with; the guest reads
/// it as `quota`.
#[derive(Debug, thiserror::Error)]
#[error("limits.write_bytes: the run's write budget of {cap} bytes is spent")]
pub struct WriteBudgetSpent {
    cap: u64,
}

impl WriteBudget {
    pub(crate) fn new(cap: u64, output: &Output) -> Self {
        WriteBudget {
            cap,
            used: AtomicU64::new(0),
            output: output.clone(),
            warned: AtomicBool::new(false),
        }
    }

    /// The bytes charged so far.
    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
    /// Takes `bytes` from the budget, or refuses them all.
    pub(crate) fn charge(&self, bytes: u64) -> Result<(), WriteBudgetSpent> {
        // Calls of one run never overlap, so load-then-add cannot race.
        let used = self.used.load(Ordering::Relaxed);
        if bytes > self.cap.saturating_sub(used) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                self.output.log(
                    Level::Warn,
                    &format!(
                        "limits.write_bytes: the task has written {used} of its {} bytes and asked for {bytes} more; writes that would pass the cap fail with `quota`",
                        self.cap
                    ),
                );
            }
            return Err(WriteBudgetSpent { cap: self.cap });
        }
        self.used.store(used + bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Gives back what a call that then made nothing was charged.
    pub(super) fn refund(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// What one new directory entry costs the disk before any byte is written
/// to it: the inode a file, directory or symlink takes, or the block its
/// directory grows by. Filesystems allocate both in 4 KiB units.
const ENTRY_BYTES: u64 = 4096;

/// What the budget is charged for a new entry named by `path` (the name
/// stored in its directory, counted whole) whose content is `target` (a
/// symlink's target; empty otherwise).
pub(super) fn entry_cost(path: &str, target: &str) -> u64 {
    ENTRY_BYTES + path.len() as u64 + target.len() as u64
}

/// What one entry of a listing costs the host besides its name: the entry
/// and its `Result` in wasmtime-wasi's vector (which may be twice as long as
/// it holds while it grows), the name's allocation, the allocator's
/// overhead. A listing of 200,000 short names was measured holding about
/// 96 MB of host RSS, some 480 bytes an entry.
const LISTING_ENTRY_BYTES: usize = 512;

/// How many entries a listing of `dir` will have and about how many bytes
/// of host memory wasmtime-wasi's listing will hold for them. Reads the
/// directory through a fixed buffer, holding no entry.
pub(super) fn listing_cost(dir: &std::fs::File) -> std::io::Result<(u64, usize)> {
    let mut entries = 0u64;
    let mut bytes = 0usize;
    // Its own open file description, so the guest's descriptor keeps its
    // offset.
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        entries += 1;
        bytes = bytes.saturating_add(LISTING_ENTRY_BYTES + name.len());
    }
    Ok((entries, bytes))
}

/// What writing `len` bytes at `offset` costs: the bytes, plus the hole
/// that writing past the end of the file leaves.
pub(super) fn write_cost(
    file: &std::fs::File,
    offset: Option<u64>,
    len: u64,
) -> std::io::Result<u64> {
    let hole = match offset {
        Some(offset) if offset > 0 => offset.saturating_sub(file.metadata()?.len()),
        _ => 0,
    };
    Ok(len.saturating_add(hole))
}

impl GuardedFs<'_> {
    /// Charges the write budget `cost` for a new entry in the directory
    /// `fd`, before it is made. Returns what was charged: nothing where
    /// wasmtime-wasi will refuse the call itself (not a directory, a
    /// read-only grant).
    pub(super) fn charge_entry(&mut self, fd: &Resource<Descriptor>, cost: u64) -> FsResult<u64> {
        match self.fs.table.get(fd)? {
            Descriptor::Dir(d) if !d.perms.write_not_permitted() => {
                self.guard
                    .budget
                    .charge(cost)
                    .map_err(|_| ErrorCode::Quota)?;
                Ok(cost)
            }
            _ => Ok(0),
        }
    }

    /// Gives back an entry's charge if the call failed: nothing was made.
    pub(super) fn refund_unless_made(&mut self, made: FsResult<()>, cost: u64) -> FsResult<()> {
        if made.is_err() {
            self.guard.budget.refund(cost);
        }
        made
    }

    /// Replaces the stream wasmtime-wasi made with one that charges the
    /// run's write budget for every byte, whichever call writes it.
    pub(super) fn budgeted(
        &mut self,
        made: FsResult<Resource<DynOutputStream>>,
        file: Option<Arc<std::fs::File>>,
        position: Option<u64>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let stream = made.map_err(|e| self.guard.fs_error(e))?;
        // wasmtime-wasi checked the grant's permissions; a stream exists
        // only for a writable file.
        let Some(file) = file else {
            return Ok(stream);
        };
        let inner = self.fs.table.delete(stream)?;
        let wrapped: DynOutputStream = Box::new(BudgetedStream {
            inner,
            file,
            position,
            budget: self.guard.budget.clone(),
        });
        // The slot just freed takes it: this push cannot find the table full.
        Ok(self.fs.table.push(wrapped)?)
    }
}

/// The file behind `fd` when the grant lets the run write to it; `None`
/// when wasmtime-wasi will refuse the write itself.
pub(super) fn writable_file(
    table: &ResourceTable,
    fd: &Resource<Descriptor>,
) -> FsResult<Option<Arc<std::fs::File>>> {
    Ok(match table.get(fd)? {
        Descriptor::File(f) if f.perms == FsPerms::ReadWrite => Some(f.file.clone()),
        _ => None,
    })
}

/// An output stream to a file that spends the run's write budget.
struct BudgetedStream {
    inner: DynOutputStream,
    file: Arc<std::fs::File>,
    /// Where the next byte goes; `None` when appending.
    position: Option<u64>,
    budget: Arc<WriteBudget>,
}

impl BudgetedStream {
    fn charge(&mut self, len: usize) -> StreamResult<()> {
        let cost = write_cost(&self.file, self.position, len as u64)
            .map_err(|e| StreamError::LastOperationFailed(e.into()))?;
        self.budget
            .charge(cost)
            .map_err(|e| StreamError::LastOperationFailed(e.into()))?;
        if let Some(p) = &mut self.position {
            *p += len as u64;
        }
        Ok(())
    }
}

// `write_zeroes` and `splice` keep their default implementations, which
// write through `write` (and `blocking_splice` through
// `blocking_write_and_flush`), so both are charged below.
#[wasmtime_wasi::async_trait]
impl OutputStream for BudgetedStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.charge(bytes.len())?;
        self.inner.write(bytes)
    }

    async fn blocking_write_and_flush(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.charge(bytes.len())?;
        self.inner.blocking_write_and_flush(bytes).await
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for BudgetedStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_budget_refuses_what_would_pass_it_and_says_so_once() {
        let output = Output::new("t", "r", 1 << 16);
        let budget = WriteBudget {
            cap: 100,
            used: AtomicU64::new(0),
            output: output.clone(),
            warned: AtomicBool::new(false),
        };
        assert!(budget.charge(60).is_ok());
        assert!(budget.charge(41).is_err());
        assert!(budget.charge(40).is_ok());
        assert!(budget.charge(1).is_err());
        assert!(budget.charge(0).is_ok());
        let text = output.finish();
        assert_eq!(text.matches("limits.write_bytes").count(), 1, "{text}");
    }
}
