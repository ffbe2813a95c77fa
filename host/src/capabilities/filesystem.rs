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
//!   linear memories; see [`listing_cost`]),
//!   bytes written through every write path (`limits.write_bytes`), and
//!   every new directory entry from the same budget (see [`entry_cost`]);
//! - turns a full resource table (`limits.handles`, enforced by wasmtime's
//!   `ResourceTable`) into an error the guest sees where the interface has
//!   one.
//!
//! Past a cap the guest gets `quota` and the output says, once, which
//! `limits.<key>` it reached. Every other call goes straight to
//! wasmtime-wasi. The linker gets this implementation in place of
//! wasmtime-wasi's own (see [`add_to_linker`]).

use super::output::{Level, Output};
use crate::capabilities::budget::MemoryBudget;
use crate::manifest::ResourceLimits;
use bytes::Bytes;
use std::collections::HashMap;
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable, ResourceTableError};
use wasmtime_wasi::filesystem::{Descriptor, Dir, File, WasiFilesystemCtxView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, ErrorCode, HostDescriptor, HostDirectoryEntryStream,
};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, FsError, FsResult, OutputStream, Pollable, ReaddirIterator,
    StreamError, StreamResult,
};
use wasmtime_wasi::{FsPerms, OpenMode};

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
            budget: Arc::new(WriteBudget {
                cap: resources.write_bytes,
                used: AtomicU64::new(0),
                output: output.clone(),
                warned: AtomicBool::new(false),
            }),
            output: output.clone(),
            blocking_current_thread,
            warned_descriptors: false,
            warned_listings: false,
            warned_memory: false,
            warned_handles: false,
        }
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

/// The bytes a run may still write. Shared with the output streams it makes
/// from its files, which outlive any one call.
struct WriteBudget {
    cap: u64,
    used: AtomicU64,
    output: Output,
    warned: AtomicBool,
}

/// The error a write past `limits.write_bytes` fails with; the guest reads
/// it as `quota`.
#[derive(Debug, thiserror::Error)]
#[error("limits.write_bytes: the run's write budget of {cap} bytes is spent")]
pub struct WriteBudgetSpent {
    cap: u64,
}

impl WriteBudget {
    /// Takes `bytes` from the budget, or refuses them all.
    fn charge(&self, bytes: u64) -> Result<(), WriteBudgetSpent> {
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
    fn refund(&self, bytes: u64) {
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
fn entry_cost(path: &str, target: &str) -> u64 {
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
fn listing_cost(dir: &std::fs::File) -> std::io::Result<(u64, usize)> {
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
fn write_cost(file: &std::fs::File, offset: Option<u64>, len: u64) -> std::io::Result<u64> {
    let hole = match offset {
        Some(offset) if offset > 0 => offset.saturating_sub(file.metadata()?.len()),
        _ => 0,
    };
    Ok(len.saturating_add(hole))
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

impl types::Host for GuardedFs<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        self.fs.convert_error_code(err)
    }

    fn filesystem_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        if self
            .fs
            .table
            .get(&err)?
            .downcast_ref::<WriteBudgetSpent>()
            .is_some()
        {
            return Ok(Some(ErrorCode::Quota));
        }
        self.fs.filesystem_error_code(err)
    }
}

impl HostDescriptor for GuardedFs<'_> {
    async fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        flags: types::DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        let dir = match self.fs.table.get(&fd)? {
            Descriptor::Dir(d) => d.clone(),
            Descriptor::File(_) => return Err(ErrorCode::NotDirectory.into()),
        };
        if self.guard.descriptors_full() {
            return Err(self.guard.descriptors_exhausted());
        }
        let blocking = self.guard.blocking_current_thread;
        let budget = self.guard.budget.clone();
        let opened = match open_at(dir, path_flags, path, oflags, flags, blocking, budget).await {
            Ok(opened) => opened,
            Err(Refused::Error(code)) => return Err(code.into()),
            Err(Refused::Special { path, kind }) => {
                self.guard.output.log(
                    Level::Warn,
                    &format!(
                        "refused to open {path:?}: it is {kind}; a task may open only regular files and directories (`not-permitted`)"
                    ),
                );
                return Err(ErrorCode::NotPermitted.into());
            }
        };
        let handle = Arc::downgrade(match &opened {
            Descriptor::File(f) => &f.file,
            Descriptor::Dir(d) => &d.dir,
        });
        let fd = match self.fs.table.push(opened) {
            Ok(fd) => fd,
            Err(e) => return Err(self.guard.table_error(e)),
        };
        self.guard.opened.push(handle);
        Ok(fd)
    }

    async fn read_directory(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<ReaddirIterator>> {
        if self.guard.listings >= self.guard.limits.dir_streams {
            return Err(self.guard.listings_exhausted());
        }
        // wasmtime-wasi reads the whole directory into host memory at once:
        // what that will hold is counted first, without holding it, and
        // taken from the run's memory budget until the listing is dropped.
        let (entries, bytes) = match self.fs.table.get(&fd)? {
            Descriptor::Dir(d) => {
                let dir = d.dir.clone();
                let count = move || listing_cost(&dir);
                if self.guard.blocking_current_thread {
                    count()?
                } else {
                    wasmtime_wasi::runtime::spawn_blocking(count).await?
                }
            }
            // wasmtime-wasi refuses it.
            Descriptor::File(_) => (0, 0),
        };
        if !self.guard.memory.take(bytes) {
            return Err(self.guard.listing_memory_exhausted(entries, bytes));
        }
        match self.fs.read_directory(fd).await {
            Ok(stream) => {
                self.guard.listings += 1;
                self.guard.listing_bytes.insert(stream.rep(), bytes);
                Ok(stream)
            }
            Err(e) => {
                self.guard.memory.give_back(bytes);
                Err(self.guard.fs_error(e))
            }
        }
    }

    async fn write(
        &mut self,
        fd: Resource<Descriptor>,
        buffer: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        if let Some(file) = writable_file(self.fs.table, &fd)? {
            let cost = write_cost(&file, Some(offset), buffer.len() as u64)?;
            self.guard
                .budget
                .charge(cost)
                .map_err(|_| ErrorCode::Quota)?;
        }
        self.fs.write(fd, buffer, offset).await
    }

    async fn set_size(&mut self, fd: Resource<Descriptor>, size: types::Filesize) -> FsResult<()> {
        if let Some(file) = writable_file(self.fs.table, &fd)? {
            let growth = size.saturating_sub(file.metadata()?.len());
            self.guard
                .budget
                .charge(growth)
                .map_err(|_| ErrorCode::Quota)?;
        }
        self.fs.set_size(fd, size).await
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        let file = writable_file(self.fs.table, &fd)?;
        let stream = self.fs.write_via_stream(fd, offset);
        self.budgeted(stream, file, Some(offset))
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let file = writable_file(self.fs.table, &fd)?;
        let stream = self.fs.append_via_stream(fd);
        self.budgeted(stream, file, None)
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        self.fs
            .read_via_stream(fd, offset)
            .map_err(|e| self.guard.fs_error(e))
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        HostDescriptor::drop(&mut self.fs, fd)
    }

    async fn advise(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        self.fs.advise(fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.fs.sync_data(fd).await
    }

    async fn get_flags(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorFlags> {
        self.fs.get_flags(fd).await
    }

    async fn get_type(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorType> {
        self.fs.get_type(fd).await
    }

    async fn set_times(
        &mut self,
        fd: Resource<Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.fs.set_times(fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Resource<Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        self.fs.read(fd, len, offset).await
    }

    async fn sync(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.fs.sync(fd).await
    }

    async fn create_directory_at(
        &mut self,
        fd: Resource<Descriptor>,
        path: String,
    ) -> FsResult<()> {
        let cost = self.charge_entry(&fd, entry_cost(&path, ""))?;
        let made = self.fs.create_directory_at(fd, path).await;
        self.refund_unless_made(made, cost)
    }

    async fn stat(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorStat> {
        self.fs.stat(fd).await
    }

    async fn stat_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        self.fs.stat_at(fd, path_flags, path).await
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.fs.set_times_at(fd, path_flags, path, atim, mtim).await
    }

    async fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path_flags: types::PathFlags,
        old_path: String,
        new_descriptor: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        // A hard link takes no inode, but an entry in its directory.
        let cost = self.charge_entry(&new_descriptor, entry_cost(&new_path, ""))?;
        let made = self
            .fs
            .link_at(fd, old_path_flags, old_path, new_descriptor, new_path)
            .await;
        self.refund_unless_made(made, cost)
    }

    async fn readlink_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<String> {
        self.fs.readlink_at(fd, path).await
    }

    async fn remove_directory_at(
        &mut self,
        fd: Resource<Descriptor>,
        path: String,
    ) -> FsResult<()> {
        self.fs.remove_directory_at(fd, path).await
    }

    async fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path: String,
        new_fd: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        // Not charged: a rename removes the entry it adds, and moves no
        // inode, so the run holds no more entries than it was charged for.
        self.fs.rename_at(fd, old_path, new_fd, new_path).await
    }

    async fn symlink_at(
        &mut self,
        fd: Resource<Descriptor>,
        src_path: String,
        dest_path: String,
    ) -> FsResult<()> {
        // The target is stored with the link: `src_path` is its content.
        let cost = self.charge_entry(&fd, entry_cost(&dest_path, &src_path))?;
        let made = self.fs.symlink_at(fd, src_path, dest_path).await;
        self.refund_unless_made(made, cost)
    }

    async fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.fs.unlink_file_at(fd, path).await
    }

    async fn is_same_object(
        &mut self,
        a: Resource<Descriptor>,
        b: Resource<Descriptor>,
    ) -> wasmtime::Result<bool> {
        self.fs.is_same_object(a, b).await
    }

    async fn metadata_hash(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<types::MetadataHashValue> {
        self.fs.metadata_hash(fd).await
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        self.fs.metadata_hash_at(fd, path_flags, path).await
    }
}

impl HostDirectoryEntryStream for GuardedFs<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<ReaddirIterator>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        self.fs.read_directory_entry(stream).await
    }

    fn drop(&mut self, stream: Resource<ReaddirIterator>) -> wasmtime::Result<()> {
        let rep = stream.rep();
        HostDirectoryEntryStream::drop(&mut self.fs, stream)?;
        self.guard.listings = self.guard.listings.saturating_sub(1);
        if let Some(bytes) = self.guard.listing_bytes.remove(&rep) {
            self.guard.memory.give_back(bytes);
        }
        Ok(())
    }
}

impl GuardedFs<'_> {
    /// Charges the write budget `cost` for a new entry in the directory
    /// `fd`, before it is made. Returns what was charged: nothing where
    /// wasmtime-wasi will refuse the call itself (not a directory, a
    /// read-only grant).
    fn charge_entry(&mut self, fd: &Resource<Descriptor>, cost: u64) -> FsResult<u64> {
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
    fn refund_unless_made(&mut self, made: FsResult<()>, cost: u64) -> FsResult<()> {
        if made.is_err() {
            self.guard.budget.refund(cost);
        }
        made
    }

    /// Replaces the stream wasmtime-wasi made with one that charges the
    /// run's write budget for every byte, whichever call writes it.
    fn budgeted(
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
fn writable_file(
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

/// Why an open was refused.
enum Refused {
    Error(ErrorCode),
    Special { path: String, kind: &'static str },
}

impl From<std::io::Error> for Refused {
    fn from(e: std::io::Error) -> Self {
        Refused::Error(e.into())
    }
}

impl From<rustix::io::Errno> for Refused {
    fn from(e: rustix::io::Errno) -> Self {
        Refused::Error(std::io::Error::from(e).into())
    }
}

/// `open-at` as wasmtime-wasi does it (`Dir::open_at`: the same flags, the
/// same permission checks, the same sandboxed path resolution from
/// cap-primitives), except that the file is opened `O_NONBLOCK` and anything
/// but a regular file or a directory is closed again and refused. Opening a
/// FIFO without `O_NONBLOCK` blocks until the other end is opened, which a
/// guest could wait for forever; with it, the open returns at once (or
/// fails, `ENXIO`, for a FIFO opened to write or a socket), and checking the
/// type of what was opened — not of what a path named a moment earlier —
/// leaves nothing to race. An open that creates a file spends the write
/// budget's charge for a new entry first (given back if the open fails).
async fn open_at(
    dir: Dir,
    path_flags: types::PathFlags,
    path: String,
    oflags: types::OpenFlags,
    flags: types::DescriptorFlags,
    blocking_current_thread: bool,
    budget: Arc<WriteBudget>,
) -> Result<Descriptor, Refused> {
    use cap_primitives::fs::{FollowSymlinks, OpenOptions};
    use types::{DescriptorFlags, OpenFlags, PathFlags};

    let mut create = false;
    let mut open_mode = OpenMode::empty();
    let mut opts = OpenOptions::new();
    if oflags.contains(OpenFlags::CREATE) {
        if oflags.contains(OpenFlags::EXCLUSIVE) {
            opts.create_new(true);
        } else {
            opts.create(true);
        }
        create = true;
        opts.write(true);
        open_mode |= OpenMode::WRITE;
    }
    if oflags.contains(OpenFlags::TRUNCATE) {
        opts.truncate(true).write(true);
        open_mode |= OpenMode::WRITE;
    }
    if flags.contains(DescriptorFlags::READ) {
        opts.read(true);
        open_mode |= OpenMode::READ;
    }
    if flags.contains(DescriptorFlags::WRITE) {
        opts.write(true);
        open_mode |= OpenMode::WRITE;
    } else {
        opts.read(true);
        open_mode |= OpenMode::READ;
    }
    let follow = if path_flags.contains(PathFlags::SYMLINK_FOLLOW) {
        FollowSymlinks::Yes
    } else {
        FollowSymlinks::No
    };
    opts._cap_fs_ext_follow(follow);
    opts._cap_fs_ext_nonblock(true);
    if flags.intersects(
        DescriptorFlags::FILE_INTEGRITY_SYNC
            | DescriptorFlags::DATA_INTEGRITY_SYNC
            | DescriptorFlags::REQUESTED_WRITE_SYNC,
    ) {
        return Err(Refused::Error(ErrorCode::Unsupported));
    }
    if oflags.contains(OpenFlags::DIRECTORY)
        && oflags.intersects(OpenFlags::CREATE | OpenFlags::EXCLUSIVE | OpenFlags::TRUNCATE)
    {
        return Err(Refused::Error(ErrorCode::Invalid));
    }
    if dir.perms.write_not_permitted() && (create || open_mode.contains(OpenMode::WRITE)) {
        return Err(Refused::Error(ErrorCode::NotPermitted));
    }

    enum Opened {
        Dir(std::fs::File),
        File(std::fs::File),
    }
    let start = dir.dir.clone();
    let want_dir = oflags.contains(OpenFlags::DIRECTORY);
    let exclusive = oflags.contains(OpenFlags::EXCLUSIVE);
    let open = move || -> Result<Opened, Refused> {
        // Whether this open makes a new entry: an exclusive create always
        // does; a plain one when nothing is there yet.
        let charged = if create
            && (exclusive
                || matches!(
                    cap_primitives::fs::stat(&start, path.as_ref(), follow),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound
                )) {
            let cost = entry_cost(&path, "");
            budget
                .charge(cost)
                .map_err(|_| Refused::Error(ErrorCode::Quota))?;
            cost
        } else {
            0
        };
        let opened = cap_primitives::fs::open(&start, path.as_ref(), &opts);
        if opened.is_err() {
            budget.refund(charged);
        }
        let file = match opened {
            Ok(file) => file,
            // What the kernel says when a socket or a FIFO without a reader
            // is opened without blocking.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) => {
                let kind = cap_primitives::fs::stat(&start, path.as_ref(), follow)
                    .map(|m| {
                        use cap_primitives::fs::FileTypeExt as _;
                        let t = m.file_type();
                        special_kind([
                            t.is_fifo(),
                            t.is_socket(),
                            t.is_char_device(),
                            t.is_block_device(),
                        ])
                    })
                    .unwrap_or("a special file");
                return Err(Refused::Special { path, kind });
            }
            Err(e) => return Err(e.into()),
        };
        let file_type = file.metadata()?.file_type();
        if file_type.is_dir() {
            Ok(Opened::Dir(file))
        } else if want_dir {
            Err(Refused::Error(ErrorCode::NotDirectory))
        } else if file_type.is_file() {
            // Reads and writes of a regular file ignore O_NONBLOCK on Linux
            // anyway; clear it so the descriptor is what the guest asked for.
            let flags = rustix::fs::fcntl_getfl(&file)?;
            rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)?;
            Ok(Opened::File(file))
        } else {
            Err(Refused::Special {
                path,
                kind: special_kind([
                    file_type.is_fifo(),
                    file_type.is_socket(),
                    file_type.is_char_device(),
                    file_type.is_block_device(),
                ]),
            })
        }
    };
    let opened = if blocking_current_thread {
        open()?
    } else {
        wasmtime_wasi::runtime::spawn_blocking(open).await?
    };
    Ok(match opened {
        Opened::Dir(d) => {
            Descriptor::Dir(Dir::new(d, dir.perms, open_mode, blocking_current_thread))
        }
        Opened::File(f) => {
            Descriptor::File(File::new(f, dir.perms, open_mode, blocking_current_thread))
        }
    })
}

/// A special file's kind in words, from its `[fifo, socket, char, block]`
/// flags.
fn special_kind(is: [bool; 4]) -> &'static str {
    match is {
        [true, ..] => "a FIFO",
        [_, true, ..] => "a socket",
        [_, _, true, _] => "a character device",
        [_, _, _, true] => "a block device",
        _ => "a special file",
    }
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
