//! SQLite's heap, bounded per run (`HOUSEKEEPER_SQLITE_MEMORY`).
//!
//! What a guest statement makes SQLite hold is not bounded by the size of
//! the statement or of its values alone: preparing a statement copies
//! subqueries and expressions (a few hundred bytes can ask for gigabytes),
//! and a row of two thousand columns of one megabyte each is two gigabytes
//! in SQLite's registers. The process's allocator for SQLite is therefore
//! the host's (`SQLITE_CONFIG_MALLOC`): a thin layer over SQLite's default
//! one that tags every allocation with the [`Window`] it is charged to, if
//! any, and keeps each window's live total. A run has one window, open
//! while one of its SQL calls runs; what its statements allocate stays
//! charged to it until freed, also after the call (the schema of a table
//! it created, pages in a connection's cache), so that many calls cannot
//! together hold more. An allocation that would take a run's window past
//! its limit fails; SQLite handles a failed
//! allocation anywhere in preparing or stepping a statement by failing the
//! statement (`SQLITE_NOMEM`), which the guest sees as `refused`, naming
//! the limit.
//!
//! Which window an allocation is charged to: each connection runs its
//! statements on a thread of its own, so it is the one the connection's
//! thread last prepared or stepped a task statement for ([`charge_to`],
//! from the authorizer and the progress handler), while that call lasts.
//! The host's own statements (`BEGIN`, `COMMIT`, `VACUUM`), its loading
//! of the database's schema before the guest's statements, and the
//! store's connections are charged to no window. A tagged allocation freed later,
//! on any thread, is taken off its own window's total.
//!
//! One kind of allocation must not fail: the copy of each value of a result
//! row that the database driver makes (`sqlite3_value_dup`) once SQLite
//! hands the row over, which the driver does not check. SQLite announces
//! each row first (`SQLITE_TRACE_ROW`, [`row_ready`]), and the window then
//! lets the row's copies through even past its limit. The row's values were
//! themselves made within the limit, so a window holds at most about twice
//! its limit.

use libsqlite3_sys as ffi;
use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Bytes in front of each allocation: the window it is charged to (an
/// `Arc<Window>` count), or NULL. Keeps SQLite's 8-byte alignment.
const TAG: usize = 8;

/// What one run's statements may hold of SQLite's heap at once: open while
/// one of its calls runs, and charged for what its statements allocated
/// until that is freed, also after the call.
pub(super) struct Window {
    /// Bytes charged and not yet freed.
    used: AtomicIsize,
    limit: isize,
    /// Cleared when the call ends: nothing more is charged to it or refused.
    open: AtomicBool,
    /// Set once an allocation was refused.
    exceeded: AtomicBool,
    /// Bytes that may still pass the limit: the copies of the row SQLite is
    /// handing over.
    row_copies: AtomicIsize,
}

impl Window {
    pub(super) fn new(limit: usize) -> Arc<Window> {
        Arc::new(Window {
            used: AtomicIsize::new(0),
            limit: isize::try_from(limit).unwrap_or(isize::MAX),
            open: AtomicBool::new(true),
            exceeded: AtomicBool::new(false),
            row_copies: AtomicIsize::new(0),
        })
    }

    /// Starts a call: its statements' allocations are charged from now on.
    pub(super) fn open(&self) {
        self.exceeded.store(false, Ordering::SeqCst);
        self.open.store(true, Ordering::SeqCst);
    }

    /// Ends a call: later allocations are charged to no window. What the
    /// call's statements left allocated (the schema of a table it created,
    /// pages in the connection's cache) stays charged until it is freed.
    pub(super) fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
    }

    /// Whether allocations are charged to it now.
    fn charging(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// The limit, in bytes.
    pub(super) fn limit(&self) -> usize {
        self.limit as usize
    }

    /// Whether an allocation was refused for this window's limit.
    pub(super) fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::SeqCst)
    }

    /// Bytes the window's allocations hold now.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed).max(0) as usize
    }

    /// Charges `bytes` more; `false` (charging nothing) when that would pass
    /// the limit and `strict` (the allocation is the call's own, on its
    /// connection's thread) and no row copies are due.
    fn charge(&self, bytes: isize, strict: bool) -> bool {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if bytes <= 0 || used <= self.limit || !strict || !self.charging() {
            return true;
        }
        if self.row_copies.fetch_sub(bytes, Ordering::Relaxed) >= bytes {
            return true;
        }
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        self.exceeded.store(true, Ordering::SeqCst);
        false
    }

    fn release(&self, bytes: isize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

thread_local! {
    /// The window this connection thread's allocations are charged to.
    static CURRENT: RefCell<Option<Arc<Window>>> = const { RefCell::new(None) };
}

/// Charges this thread's SQLite allocations to `window` from now on (while
/// it is open). Called from the authorizer and the progress handler, so on
/// the connection's own thread; cheap when `window` is already the one.
pub(super) fn charge_to(window: &Arc<Window>) {
    let _ = CURRENT.try_with(|current| {
        if let Ok(mut current) = current.try_borrow_mut()
            && !current.as_ref().is_some_and(|w| Arc::ptr_eq(w, window))
        {
            *current = Some(window.clone());
        }
    });
}

/// The open window of this thread, with a count for a new allocation's tag.
fn current() -> Option<Arc<Window>> {
    CURRENT
        .try_with(|current| {
            let current = current.try_borrow().ok()?;
            current.as_ref().filter(|w| w.charging()).cloned()
        })
        .ok()
        .flatten()
}

/// Whether `window` is this thread's current one.
fn is_current(window: *const Window) -> bool {
    CURRENT
        .try_with(|current| {
            current.try_borrow().ok().is_some_and(|c| {
                c.as_ref()
                    .is_some_and(|w| std::ptr::eq(Arc::as_ptr(w), window))
            })
        })
        .unwrap_or(false)
}

/// SQLite is about to hand over a row of `stmt`: lets the driver's copies
/// of its values through `window` even past its limit.
///
/// # Safety
/// `stmt` is the statement SQLite's `SQLITE_TRACE_ROW` names, on the thread
/// stepping it.
pub(super) unsafe fn row_ready(window: &Window, stmt: *mut ffi::sqlite3_stmt) {
    // What `sqlite3_value_dup` allocates per value: the value itself, and
    // a copy of its text or blob with room for a terminator (32 bytes at
    // least), each with the allocator's rounding and this layer's tag.
    const VALUE: isize = 64 + TAG as isize;
    let mut bytes: isize = 256;
    // SAFETY: as the function says; none of these allocates for a row
    // SQLite has made (text is already UTF-8 on these connections).
    unsafe {
        let columns = ffi::sqlite3_column_count(stmt);
        for i in 0..columns {
            bytes += VALUE;
            let value = ffi::sqlite3_column_value(stmt, i);
            if value.is_null() {
                continue;
            }
            let kind = ffi::sqlite3_value_type(value);
            if kind == ffi::SQLITE_TEXT || kind == ffi::SQLITE_BLOB {
                let n = ffi::sqlite3_value_bytes(value).max(0) as isize;
                bytes += ((n + 3).max(32) + 7) / 8 * 8 + 2 * TAG as isize;
            }
        }
    }
    window.row_copies.store(bytes, Ordering::Relaxed);
}

/// A statement stepped on past its last row's copies: none are due.
pub(super) fn stepping(window: &Window) {
    window.row_copies.store(0, Ordering::Relaxed);
}

/// SQLite's default allocator, which this one wraps.
struct Inner(ffi::sqlite3_mem_methods);
// SAFETY: SQLite's default allocator is thread-safe, and its methods and
// data are never changed once read.
unsafe impl Send for Inner {}
unsafe impl Sync for Inner {}
static INNER: OnceLock<Inner> = OnceLock::new();

fn inner() -> &'static ffi::sqlite3_mem_methods {
    // Set before SQLite is told of this allocator, so before any call.
    &INNER.get().expect("SQLite allocator installed").0
}

/// Installs this allocator (once per process). SQLite takes a new
/// allocator only before it is first used: `false` if it was already in
/// use with another, and task calls are then refused rather than run
/// unbounded (see [`installed`]). Runs before `main` on Linux, and again
/// (doing nothing) wherever a connection is opened.
pub fn install() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let mut default = std::mem::MaybeUninit::<ffi::sqlite3_mem_methods>::zeroed();
        // SAFETY: SQLITE_CONFIG_GETMALLOC fills the struct it is given; it
        // is allowed before SQLite is initialized.
        let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETMALLOC, default.as_mut_ptr()) };
        if rc != ffi::SQLITE_OK {
            return false;
        }
        // SAFETY: filled by SQLite above.
        let default = unsafe { default.assume_init() };
        if default.xMalloc.is_none()
            || default.xFree.is_none()
            || default.xRealloc.is_none()
            || default.xSize.is_none()
            || default.xRoundup.is_none()
        {
            return false;
        }
        if INNER.set(Inner(default)).is_err() {
            return false;
        }
        let ours: &'static ffi::sqlite3_mem_methods =
            Box::leak(Box::new(ffi::sqlite3_mem_methods {
                xMalloc: Some(x_malloc),
                xFree: Some(x_free),
                xRealloc: Some(x_realloc),
                xSize: Some(x_size),
                xRoundup: Some(x_roundup),
                xInit: Some(x_init),
                xShutdown: Some(x_shutdown),
                pAppData: std::ptr::null_mut(),
            }));
        // SAFETY: SQLite copies the methods; it refuses (SQLITE_MISUSE)
        // once it is initialized, and then keeps its own.
        let rc = unsafe {
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_MALLOC,
                ours as *const ffi::sqlite3_mem_methods,
            )
        };
        rc == ffi::SQLITE_OK
    })
}

/// Whether SQLite allocates through this layer, so that windows bound it.
pub fn installed() -> bool {
    install()
}

#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static INSTALL_BEFORE_MAIN: extern "C" fn() = {
    extern "C" fn before_main() {
        // Nothing else in the process can have started SQLite yet.
        let _ = install();
    }
    before_main
};

/// The allocation at `p` (as SQLite knows it) starts `TAG` bytes earlier.
fn base(p: *mut c_void) -> *mut c_void {
    (p as *mut u8).wrapping_sub(TAG) as *mut c_void
}

/// # Safety
/// `base` is a live allocation of the default allocator made here.
unsafe fn tag_of(base: *mut c_void) -> *const Window {
    // SAFETY: every allocation made here starts with its tag.
    unsafe { *(base as *const *const Window) }
}

/// # Safety
/// `base` is a live allocation of the default allocator, `TAG` bytes or
/// larger.
unsafe fn size_of(base: *mut c_void) -> isize {
    // SAFETY: as the function says.
    unsafe { inner().xSize.expect("checked at install")(base) as isize }
}

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    let window = current();
    let wanted = n as isize + TAG as isize;
    if let Some(w) = &window
        && !w.charge(wanted, true)
    {
        return std::ptr::null_mut();
    }
    // SAFETY: the default allocator, for a size SQLite asked for plus the
    // tag.
    let base = unsafe { inner().xMalloc.expect("checked at install")(wanted as c_int) };
    if base.is_null() {
        if let Some(w) = &window {
            w.release(wanted);
        }
        return std::ptr::null_mut();
    }
    let tag = match window {
        Some(w) => {
            // SAFETY: `base` was just allocated. What the default allocator
            // rounded the size to is charged too, so that freeing it takes
            // off exactly what was charged.
            let actual = unsafe { size_of(base) };
            w.charge(actual - wanted, false);
            Arc::into_raw(w)
        }
        None => std::ptr::null(),
    };
    // SAFETY: `base` has room for the tag, and is 8-byte aligned.
    unsafe { *(base as *mut *const Window) = tag };
    (base as *mut u8).wrapping_add(TAG) as *mut c_void
}

unsafe extern "C" fn x_free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    let base = base(p);
    // SAFETY: `p` came from `x_malloc` or `x_realloc`.
    unsafe {
        let tag = tag_of(base);
        if !tag.is_null() {
            (*tag).release(size_of(base));
            // The count `x_malloc` took for the tag.
            Arc::decrement_strong_count(tag);
        }
        inner().xFree.expect("checked at install")(base);
    }
}

unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    if p.is_null() {
        // SAFETY: SQLite's contract for a NULL reallocation.
        return unsafe { x_malloc(n) };
    }
    let base = base(p);
    let wanted = n as isize + TAG as isize;
    // SAFETY: `p` came from `x_malloc` or `x_realloc`; its tag (and the
    // window's count it holds) moves with it.
    unsafe {
        let tag = tag_of(base);
        let old = size_of(base);
        let window = (!tag.is_null()).then(|| &*tag);
        let grow = wanted - old;
        if let Some(w) = window
            && !w.charge(grow, is_current(tag))
        {
            return std::ptr::null_mut();
        }
        let moved = inner().xRealloc.expect("checked at install")(base, wanted as c_int);
        if moved.is_null() {
            if let Some(w) = window {
                w.release(grow);
            }
            return std::ptr::null_mut();
        }
        if let Some(w) = window {
            w.charge(size_of(moved) - wanted, false);
        }
        (moved as *mut u8).wrapping_add(TAG) as *mut c_void
    }
}

unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    // SAFETY: `p` came from `x_malloc` or `x_realloc`.
    (unsafe { size_of(base(p)) } - TAG as isize) as c_int
}

unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    // SAFETY: the default allocator's own rounding; with the tag in front
    // (8 bytes) the block it makes is as large again.
    unsafe { inner().xRoundup.expect("checked at install")(n) }
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    let inner = inner();
    match inner.xInit {
        // SAFETY: the default allocator's own set-up, with its own data.
        Some(init) => unsafe { init(inner.pAppData) },
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {
    let inner = inner();
    if let Some(shutdown) = inner.xShutdown {
        // SAFETY: as for `x_init`.
        unsafe { shutdown(inner.pAppData) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window charged on this thread, once SQLite's own set-up (which
    /// allocates what it keeps) is done.
    fn window(limit: usize) -> Arc<Window> {
        assert!(installed());
        // SAFETY: idempotent set-up.
        assert_eq!(unsafe { ffi::sqlite3_initialize() }, ffi::SQLITE_OK);
        let window = Window::new(limit);
        charge_to(&window);
        window
    }

    /// An allocation through SQLite on this thread.
    fn sqlite_alloc(n: usize) -> *mut c_void {
        // SAFETY: plain allocation through SQLite's configured allocator.
        unsafe { ffi::sqlite3_malloc64(n as u64) }
    }

    fn sqlite_free(p: *mut c_void) {
        // SAFETY: `p` came from `sqlite_alloc`.
        unsafe { ffi::sqlite3_free(p) }
    }

    #[test]
    fn sqlite_allocates_through_the_host() {
        assert!(
            installed(),
            "SQLite was started before the host's allocator was installed"
        );
    }

    #[test]
    fn a_window_refuses_past_its_limit_and_gets_back_what_is_freed() {
        let window = window(1 << 20);
        let a = sqlite_alloc(600 << 10);
        assert!(!a.is_null());
        assert!(window.used() >= 600 << 10);
        let b = sqlite_alloc(600 << 10);
        assert!(b.is_null(), "a second 600 KiB passed a 1 MiB window");
        assert!(window.exceeded());
        sqlite_free(a);
        assert_eq!(window.used(), 0);
        let c = sqlite_alloc(600 << 10);
        assert!(
            !c.is_null(),
            "freed memory was not given back to the window"
        );
        // Growing in place is charged too.
        // SAFETY: `c` came from SQLite's allocator.
        let grown = unsafe { ffi::sqlite3_realloc64(c, 2 << 20) };
        assert!(grown.is_null(), "a reallocation grew past the window");
        sqlite_free(c);
        assert_eq!(window.used(), 0);
    }

    #[test]
    fn a_closed_window_charges_nothing_and_frees_are_counted_on_any_thread() {
        let window = window(1 << 20);
        let kept = sqlite_alloc(512 << 10) as usize;
        assert!(window.used() >= 512 << 10);
        // Freed on another thread, as the driver frees a row's copies.
        std::thread::spawn(move || sqlite_free(kept as *mut c_void))
            .join()
            .unwrap();
        assert_eq!(window.used(), 0);
        window.close();
        let big = sqlite_alloc(4 << 20);
        assert!(!big.is_null(), "a closed window still refused");
        assert_eq!(window.used(), 0);
        sqlite_free(big);
    }

    #[test]
    fn a_rows_copies_pass_the_limit_and_only_they() {
        let window = window(1 << 20);
        let held = sqlite_alloc(900 << 10);
        window.row_copies.store(300 << 10, Ordering::Relaxed);
        let copy = sqlite_alloc(200 << 10);
        assert!(!copy.is_null(), "a row's copy was refused");
        assert!(!window.exceeded());
        let more = sqlite_alloc(200 << 10);
        assert!(
            more.is_null(),
            "more than the row's copies passed the limit"
        );
        stepping(&window);
        sqlite_free(copy);
        sqlite_free(held);
        assert_eq!(window.used(), 0);
    }
}
