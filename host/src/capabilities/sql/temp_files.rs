//! SQLite's temporary files on task connections, charged to the run's
//! write budget (`limits.write_bytes`).
//!
//! A guest statement can make SQLite write to disk outside any granted
//! directory: a sort or `DISTINCT` too large for memory spills to a
//! temporary file, a statement journal backs out a failed statement. Task
//! connections open their database through the VFS [`NAME`], a thin layer
//! over SQLite's default VFS: every file SQLite opens as temporary (its
//! temporary database, transient tables, sorter and statement journals) is
//! wrapped, and each write to it is charged before it reaches the disk. A
//! write past the budget fails with `SQLITE_FULL`, which ends the statement;
//! the guest sees `refused`, naming the limit. Other files (the database,
//! its journal and WAL) are the default VFS's own, untouched.
//!
//! Each connection runs its statements on a thread of its own, and SQLite
//! writes a statement's temporary files on that thread while it steps the
//! statement, so the call that is charged is the one the connection's
//! thread last prepared or stepped a statement for ([`charge_to`], from the
//! authorizer and the progress handler). A statement still running after
//! its call is over is refused every write. The host's `VACUUM` and
//! `ANALYZE` are charged to their run the same way (through the progress
//! handler); the host's own small statements (`BEGIN`, `COMMIT`) are
//! charged to no one.

use libsqlite3_sys as ffi;
use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::{Arc, OnceLock, Weak};

/// The VFS task connections open their database with.
pub(crate) const NAME: &str = "housekeeper-task";
const C_NAME: &CStr = c"housekeeper-task";

/// What a temporary-file write is charged to.
pub(super) trait TempWrites: Send + Sync {
    /// Takes `bytes` from the call's budget; `false` refuses the write.
    fn charge(&self, bytes: u64) -> bool;
}

thread_local! {
    /// The call this connection thread's statements are charged to.
    static CHARGED_TO: RefCell<Option<Weak<dyn TempWrites>>> = const { RefCell::new(None) };
}

/// Charges this thread's temporary-file writes to `call` from now on.
/// Called by the authorizer while SQLite prepares a statement, so on the
/// connection's own thread; cheap when `call` is already the one.
pub(super) fn charge_to<T: TempWrites + 'static>(call: &Arc<T>) {
    CHARGED_TO.with(|current| {
        let mut current = current.borrow_mut();
        let same = current
            .as_ref()
            .is_some_and(|w| std::ptr::addr_eq(w.as_ptr(), Arc::as_ptr(call)));
        if !same {
            let call: Arc<dyn TempWrites> = call.clone();
            *current = Some(Arc::downgrade(&call));
        }
    });
}

fn charge(bytes: u64) -> bool {
    CHARGED_TO.with(
        |current| match current.borrow().as_ref().and_then(Weak::upgrade) {
            Some(call) => call.charge(bytes),
            None => true,
        },
    )
}

/// Registers the VFS (once per process). Connections name it with
/// `SqliteConnectOptions::vfs(NAME)`.
pub(crate) fn register() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            // SAFETY: NULL asks for the default VFS, which lives for the
            // process.
            let inner = unsafe { ffi::sqlite3_vfs_find(std::ptr::null()) };
            if inner.is_null() {
                return Err("SQLite has no default VFS".to_owned());
            }
            // SAFETY: `inner` is a registered VFS; its fields are read only.
            let (inner_size, max_path) = unsafe { ((*inner).szOsFile, (*inner).mxPathname) };
            let _ = INNER.set(Inner(inner));
            let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
                iVersion: 2,
                szOsFile: HEADER as c_int + inner_size,
                mxPathname: max_path,
                pNext: std::ptr::null_mut(),
                zName: C_NAME.as_ptr(),
                pAppData: std::ptr::null_mut(),
                xOpen: Some(open),
                xDelete: Some(delete),
                xAccess: Some(access),
                xFullPathname: Some(full_pathname),
                // No loadable extensions on task connections.
                xDlOpen: None,
                xDlError: None,
                xDlSym: None,
                xDlClose: None,
                xRandomness: Some(randomness),
                xSleep: Some(sleep),
                xCurrentTime: Some(current_time),
                xGetLastError: Some(last_error),
                xCurrentTimeInt64: Some(current_time_int64),
                xSetSystemCall: None,
                xGetSystemCall: None,
                xNextSystemCall: None,
            }));
            // SAFETY: `vfs` is leaked, so it outlives every connection.
            match unsafe { ffi::sqlite3_vfs_register(vfs, 0) } {
                ffi::SQLITE_OK => Ok(()),
                rc => Err(format!("SQLite refused the task VFS (code {rc})")),
            }
        })
        .clone()
}

struct Inner(*mut ffi::sqlite3_vfs);
// SAFETY: a registered VFS is immutable and shared by every thread.
unsafe impl Send for Inner {}
unsafe impl Sync for Inner {}
static INNER: OnceLock<Inner> = OnceLock::new();

fn inner() -> *mut ffi::sqlite3_vfs {
    INNER.get().map_or(std::ptr::null_mut(), |i| i.0)
}

/// A temporary file: ours in front, the default VFS's after [`HEADER`].
#[repr(C)]
struct Temp {
    base: ffi::sqlite3_file,
    /// The blocks of the file written so far (a `Blocks` made at open,
    /// freed at close).
    written: *mut Blocks,
}

/// What a temporary file is charged by: each [`BLOCK`] of it once, the
/// first time anything is written into it. Rewriting a page (SQLite's
/// temporary b-trees rewrite theirs as they change) takes no more disk,
/// and neither does the hole a write at a far offset leaves.
#[derive(Default)]
struct Blocks(Vec<u64>);

/// The unit temporary files are charged in: the filesystem's block.
const BLOCK: u64 = 4096;

impl Blocks {
    /// The blocks `[offset, offset + amount)` touches.
    fn range(offset: u64, amount: u64) -> std::ops::RangeInclusive<u64> {
        if amount == 0 {
            // An empty range.
            return 1..=0;
        }
        offset / BLOCK..=(offset + amount - 1) / BLOCK
    }

    fn has(&self, block: u64) -> bool {
        self.0
            .get((block / 64) as usize)
            .is_some_and(|w| w & (1 << (block % 64)) != 0)
    }

    /// Bytes of the blocks `[offset, offset + amount)` touches that were
    /// not written before.
    fn unwritten(&self, offset: u64, amount: u64) -> u64 {
        Self::range(offset, amount)
            .filter(|b| !self.has(*b))
            .count() as u64
            * BLOCK
    }

    /// Marks the blocks `[offset, offset + amount)` touches as written.
    fn mark(&mut self, offset: u64, amount: u64) {
        for block in Self::range(offset, amount) {
            let word = (block / 64) as usize;
            if word >= self.0.len() {
                self.0.resize(word + 1, 0);
            }
            self.0[word] |= 1 << (block % 64);
        }
    }
}

/// Where the default VFS's file starts, aligned for any field it has.
const HEADER: usize = std::mem::size_of::<Temp>().next_multiple_of(16);

/// The files SQLite opens as temporary: gone when closed, never shared.
const TEMPORARY: c_int = ffi::SQLITE_OPEN_TEMP_DB
    | ffi::SQLITE_OPEN_TRANSIENT_DB
    | ffi::SQLITE_OPEN_TEMP_JOURNAL
    | ffi::SQLITE_OPEN_SUBJOURNAL;

/// The wrapped file behind `file`.
///
/// # Safety
/// `file` was opened by [`open`] as a temporary file.
unsafe fn wrapped(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    // SAFETY: the VFS's file size leaves HEADER bytes in front of it.
    unsafe { (file as *mut u8).add(HEADER) as *mut ffi::sqlite3_file }
}

/// The wrapped file's method `$m`, called with the wrapped file first.
macro_rules! forward {
    ($file:expr, $m:ident $(, $arg:expr)*) => {{
        // SAFETY: SQLite calls a temporary file's methods only between a
        // successful `open` and `close`, so the wrapped file is open.
        unsafe {
            let inner = wrapped($file);
            match (*(*inner).pMethods).$m {
                Some(method) => method(inner $(, $arg)*),
                None => ffi::SQLITE_IOERR,
            }
        }
    }};
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let inner = inner();
    // SAFETY: `inner` is the default VFS; `file` has room for ours and its.
    unsafe {
        let Some(inner_open) = (*inner).xOpen else {
            (*file).pMethods = std::ptr::null();
            return ffi::SQLITE_CANTOPEN;
        };
        if flags & TEMPORARY == 0 {
            return inner_open(inner, name, file, flags, out_flags);
        }
        let wrapped = wrapped(file);
        let rc = inner_open(inner, name, wrapped, flags, out_flags);
        let temp = file as *mut Temp;
        // SQLite closes a file whose methods are set, even after a failed
        // open: ours then close the wrapped one.
        if (*wrapped).pMethods.is_null() {
            (*temp).base.pMethods = std::ptr::null();
            (*temp).written = std::ptr::null_mut();
        } else {
            (*temp).base.pMethods = &TEMP_METHODS;
            (*temp).written = Box::into_raw(Box::default());
        }
        rc
    }
}

static TEMP_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    // Version 1: no shared memory and no memory mapping on temporary files.
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // The blocks the write takes that the file did not have (see
    // `Blocks`).
    let (offset, amount_u) = (
        u64::try_from(offset).unwrap_or(0),
        u64::try_from(amount).unwrap_or(0),
    );
    // SAFETY: `file` is one of ours, open, so `written` is its `Blocks`;
    // SQLite uses a file from one thread at a time.
    let blocks = unsafe { &mut *(*(file as *mut Temp)).written };
    if !charge(blocks.unwritten(offset, amount_u)) {
        return ffi::SQLITE_FULL;
    }
    blocks.mark(offset, amount_u);
    forward!(file, xWrite, data, amount, offset as ffi::sqlite3_int64)
}

/// Truncating, or growing a file without writing it, takes no disk. The
/// blocks cut off stay charged (the budget counts what was written), and
/// are not charged again when written anew.
unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    forward!(file, xTruncate, size)
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let rc = forward!(file, xClose);
    // SAFETY: `file` is one of ours; closed, it has no methods, and its
    // `Blocks` (made at open) is freed once.
    unsafe {
        let temp = file as *mut Temp;
        (*temp).base.pMethods = std::ptr::null();
        if !(*temp).written.is_null() {
            drop(Box::from_raw((*temp).written));
            (*temp).written = std::ptr::null_mut();
        }
    }
    rc
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    data: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    forward!(file, xRead, data, amount, offset)
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    forward!(file, xSync, flags)
}

unsafe extern "C" fn file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    forward!(file, xFileSize, size)
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    forward!(file, xLock, level)
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    forward!(file, xUnlock, level)
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    forward!(file, xCheckReservedLock, out)
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    forward!(file, xFileControl, op, arg)
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    forward!(file, xSectorSize)
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    forward!(file, xDeviceCharacteristics)
}

// The VFS's own methods are the default VFS's.

/// The default VFS's method `$m`, called with its own pointer first, or
/// `$none` when it has none.
macro_rules! forward_vfs {
    ($m:ident, $none:expr $(, $arg:expr)*) => {{
        let inner = inner();
        // SAFETY: `inner` is the default VFS, registered for the process.
        unsafe { (*inner).$m.map_or($none, |f| f(inner $(, $arg)*)) }
    }};
}

unsafe extern "C" fn delete(
    _: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    forward_vfs!(xDelete, ffi::SQLITE_IOERR, name, sync_dir)
}

unsafe extern "C" fn access(
    _: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    forward_vfs!(xAccess, ffi::SQLITE_IOERR, name, flags, out)
}

unsafe extern "C" fn full_pathname(
    _: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    size: c_int,
    out: *mut c_char,
) -> c_int {
    forward_vfs!(xFullPathname, ffi::SQLITE_IOERR, name, size, out)
}

unsafe extern "C" fn randomness(_: *mut ffi::sqlite3_vfs, size: c_int, out: *mut c_char) -> c_int {
    forward_vfs!(xRandomness, 0, size, out)
}

unsafe extern "C" fn sleep(_: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    forward_vfs!(xSleep, 0, micros)
}

unsafe extern "C" fn current_time(_: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    forward_vfs!(xCurrentTime, ffi::SQLITE_ERROR, out)
}

unsafe extern "C" fn last_error(_: *mut ffi::sqlite3_vfs, size: c_int, out: *mut c_char) -> c_int {
    forward_vfs!(xGetLastError, 0, size, out)
}

unsafe extern "C" fn current_time_int64(
    _: *mut ffi::sqlite3_vfs,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: the default VFS's version says whether it has the method.
    if unsafe { (*inner()).iVersion } < 2 {
        return ffi::SQLITE_ERROR;
    }
    forward_vfs!(xCurrentTimeInt64, ffi::SQLITE_ERROR, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file is charged for the blocks it takes, each once: a rewrite
    /// of a page, a write over part of a block already written, and the
    /// hole before a write at a far offset cost nothing.
    #[test]
    fn a_temporary_file_is_charged_each_block_once() {
        let mut blocks = Blocks::default();
        let mut charged = 0;
        let mut write = |blocks: &mut Blocks, offset: u64, amount: u64| {
            let new = blocks.unwritten(offset, amount);
            blocks.mark(offset, amount);
            charged += new;
            new
        };
        assert_eq!(write(&mut blocks, 0, 4096), 4096);
        for _ in 0..1000 {
            assert_eq!(write(&mut blocks, 0, 4096), 0, "a rewrite was charged");
        }
        // One byte across a boundary takes two blocks; one was written.
        assert_eq!(write(&mut blocks, 4095, 2), 4096);
        // Far away: its own block only, not the hole before it.
        assert_eq!(write(&mut blocks, 1 << 30, 100), 4096);
        assert_eq!(write(&mut blocks, (1 << 30) + 100, 100), 0);
        // A sorter's unaligned chunks: 10 KB at 3 KB takes blocks 0–3.
        assert_eq!(write(&mut blocks, 3 << 10, 10 << 10), 2 * 4096);
        assert_eq!(write(&mut blocks, 0, 0), 0);
        assert_eq!(charged, 5 * 4096);
    }
}
