//! Host versions of the SQLite built-ins whose single call can outlast any
//! deadline: `instr`, `replace`, `trim`/`ltrim`/`rtrim`, `like` and
//! `glob`.
//!
//! SQLite looks at its progress handler (and at `sqlite3_interrupt`) only
//! between steps of a statement, and one function call is one step. Its
//! `instr` and `replace` compare the needle at every position of the
//! haystack, `trim` compares every character against every character of its
//! set, and `LIKE`/`GLOB` rescan the string for every wildcard: over values
//! of a megabyte, one call takes seconds to hours, holding the connection
//! and its locks long after the run that made it is over. Task connections
//! get these instead: `instr` and `replace` search with `memchr`'s linear
//! substring search, and every one of them asks, when it starts and every
//! few thousand comparisons, whether its call is over, and fails with
//! `SQLITE_INTERRUPT` if it is. Each returns exactly what SQLite's own does
//! (a property test holds them to it), ported from SQLite 3.46's `func.c`.
//!
//! The same per-connection slot serves the connection's busy handler,
//! which stops waiting for another connection's lock once the call is
//! over, and an [`Interrupter`] that calls `sqlite3_interrupt` from another
//! thread without ever touching a closed connection.

use libsqlite3_sys as ffi;
use std::ffi::{CStr, c_int, c_void};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Whether the call a connection is serving is over.
pub(super) trait CallEnd: Send + Sync {
    fn is_over(&self) -> bool;
}

/// What a connection's functions ask (the call it serves, if any), and
/// the connection itself for as long as it is open.
#[derive(Default)]
struct Slot {
    call: Mutex<Option<Arc<dyn CallEnd>>>,
    /// The open connection (`*mut sqlite3`); `None` once it closes.
    db: Mutex<Option<usize>>,
    /// Longest wait for another connection's lock.
    busy_timeout: Duration,
}

impl Slot {
    fn over(&self) -> bool {
        let call = self.call.lock().unwrap_or_else(|p| p.into_inner());
        call.as_ref().is_some_and(|c| c.is_over())
    }
}

/// The name the slot is kept under on the connection (`sqlite3_set_clientdata`).
const SLOT: &CStr = c"housekeeper-call";

unsafe extern "C" fn drop_slot(slot: *mut c_void) {
    // SAFETY: `register` made this pointer with `Box::into_raw`, and SQLite
    // calls this once, while the connection closes and before it frees it.
    let slot = unsafe { Box::from_raw(slot as *mut Arc<Slot>) };
    // Waits for an `Interrupter::interrupt` under way: the connection is
    // not freed while one runs.
    *slot.db.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// Interrupts a connection's running statement (`sqlite3_interrupt`) from
/// any thread, and does nothing once the connection is closed.
pub(super) struct Interrupter(Arc<Slot>);

impl Interrupter {
    /// The interrupter of `db`, if it has the host's functions.
    ///
    /// # Safety
    /// `db` is an open connection.
    pub(super) unsafe fn of(db: *mut ffi::sqlite3) -> Option<Interrupter> {
        // SAFETY: `db` is open; the slot, if any, lives as long as it.
        let slot = unsafe { ffi::sqlite3_get_clientdata(db, SLOT.as_ptr()) } as *const Arc<Slot>;
        // SAFETY: as above.
        unsafe { slot.as_ref() }.map(|slot| Interrupter(slot.clone()))
    }

    /// Stops the statement the connection runs at its next step, or
    /// within the step when it is a long one SQLite checks (counting a
    /// table's rows); the next statement starts afresh.
    pub(super) fn interrupt(&self) {
        let db = self.0.db.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = *db {
            // SAFETY: the connection is open: it clears `db` (under this
            // lock) before it is freed. `sqlite3_interrupt` may be called
            // from any thread.
            unsafe { ffi::sqlite3_interrupt(db as *mut ffi::sqlite3) };
        }
    }
}

/// SQLite's busy handler for task connections: SQLite's own schedule of
/// sleeps (`sqliteDefaultBusyCallback`), up to the slot's timeout, and none
/// once the call is over: a statement of a run that has ended gets
/// `SQLITE_BUSY` instead of the lock it waited for.
unsafe extern "C" fn busy(slot: *mut c_void, count: c_int) -> c_int {
    // SAFETY: `register` gave SQLite the slot, alive while the connection is.
    let slot = unsafe { &*(slot as *const Slot) };
    if slot.over() {
        return 0;
    }
    match busy_delay(count.max(0) as u64, slot.busy_timeout) {
        Some(delay) => {
            std::thread::sleep(delay);
            c_int::from(!slot.over())
        }
        None => 0,
    }
}

/// How long the `count`th wait for a lock sleeps, or `None` once `timeout`
/// has been slept: SQLite's delays of 1, 2, 5, 10, 15, 20, 25, 25, 25, 50,
/// 50 ms, then 100 ms each.
fn busy_delay(count: u64, timeout: Duration) -> Option<Duration> {
    const DELAYS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];
    let (delay, prior) = match DELAYS.get(count as usize) {
        Some(delay) => (*delay, DELAYS[..count as usize].iter().sum::<u64>()),
        None => (100, 328 + 100 * (count - 12)),
    };
    let timeout = timeout.as_millis() as u64;
    (prior < timeout).then(|| Duration::from_millis(delay.min(timeout - prior)))
}

type Function =
    unsafe extern "C" fn(*mut ffi::sqlite3_context, c_int, *mut *mut ffi::sqlite3_value);

/// Puts the host versions on `db`, in place of SQLite's own, and a busy
/// handler that waits up to `busy_timeout` for another connection's lock,
/// but no longer than its call lasts. Once per connection, before its
/// first statement.
///
/// # Safety
/// `db` is an open connection no other thread uses meanwhile.
pub(super) unsafe fn register(db: *mut ffi::sqlite3, busy_timeout: Duration) -> Result<(), String> {
    let shared = Arc::new(Slot {
        db: Mutex::new(Some(db as usize)),
        busy_timeout,
        ..Slot::default()
    });
    let slot = Arc::as_ptr(&shared);
    let data = Box::into_raw(Box::new(shared));
    // SAFETY: `db` is open; SQLite owns `data` from here and frees it with
    // `drop_slot` when the connection closes.
    let rc = unsafe {
        ffi::sqlite3_set_clientdata(db, SLOT.as_ptr(), data as *mut c_void, Some(drop_slot))
    };
    if rc != ffi::SQLITE_OK {
        // SAFETY: SQLite did not take the pointer.
        drop(unsafe { Box::from_raw(data) });
        return Err(format!("cannot attach the call slot (SQLite error {rc})"));
    }
    // SAFETY: as for the functions below.
    let rc = unsafe { ffi::sqlite3_busy_handler(db, Some(busy), slot as *mut c_void) };
    if rc != ffi::SQLITE_OK {
        return Err(format!("cannot set the busy handler (SQLite error {rc})"));
    }
    let functions: [(&CStr, c_int, Function); 11] = [
        (c"instr", 2, instr),
        (c"replace", 3, replace),
        (c"trim", 1, trim::<true, true>),
        (c"trim", 2, trim::<true, true>),
        (c"ltrim", 1, trim::<true, false>),
        (c"ltrim", 2, trim::<true, false>),
        (c"rtrim", 1, trim::<false, true>),
        (c"rtrim", 2, trim::<false, true>),
        (c"like", 2, pattern::<false>),
        (c"like", 3, pattern::<false>),
        (c"glob", 2, pattern::<true>),
    ];
    let flags = ffi::SQLITE_UTF8 | ffi::SQLITE_DETERMINISTIC | ffi::SQLITE_INNOCUOUS;
    for (name, args, function) in functions {
        // SAFETY: `db` is open; the slot outlives every function on it.
        let rc = unsafe {
            ffi::sqlite3_create_function_v2(
                db,
                name.as_ptr(),
                args,
                flags,
                slot as *mut c_void,
                Some(function),
                None,
                None,
                None,
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(format!(
                "cannot register {}() (SQLite error {rc})",
                name.to_string_lossy()
            ));
        }
    }
    Ok(())
}

/// Tells `db`'s functions which call they serve from now on (`None`: no
/// call; they run to their end). Nothing happens on a connection without
/// the host versions.
///
/// # Safety
/// `db` is an open connection.
pub(super) unsafe fn serve(db: *mut ffi::sqlite3, call: Option<Arc<dyn CallEnd>>) {
    // SAFETY: `db` is open; the slot, if any, lives as long as it.
    let slot = unsafe { ffi::sqlite3_get_clientdata(db, SLOT.as_ptr()) } as *const Arc<Slot>;
    // SAFETY: as above.
    if let Some(slot) = unsafe { slot.as_ref() } {
        *slot.call.lock().unwrap_or_else(|p| p.into_inner()) = call;
    }
}

/// The call was over: the function stopped.
#[derive(Debug)]
struct Over;

/// Counts a function's work and asks the slot every so often whether the
/// call is over.
struct Meter<'a> {
    slot: &'a Slot,
    work: u32,
}

/// Comparisons between two looks at the slot: well under a millisecond.
const CHECK_EVERY: u32 = 1 << 16;

impl<'a> Meter<'a> {
    fn start(slot: &'a Slot) -> Result<Self, Over> {
        if slot.over() {
            return Err(Over);
        }
        Ok(Meter { slot, work: 0 })
    }

    fn step(&mut self, units: u32) -> Result<(), Over> {
        self.work = self.work.saturating_add(units);
        if self.work >= CHECK_EVERY {
            self.work = 0;
            if self.slot.over() {
                return Err(Over);
            }
        }
        Ok(())
    }
}

/// The slot and the arguments of one call, or `None` when it already
/// failed (the result is set).
///
/// # Safety
/// SQLite's arguments to a function registered by `register`.
unsafe fn enter<'a>(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) -> Option<(Meter<'a>, &'a [*mut ffi::sqlite3_value])> {
    // SAFETY: the user data is the slot `register` gave, alive while the
    // connection is; SQLite passes `argc` arguments.
    let slot = unsafe { &*(ffi::sqlite3_user_data(ctx) as *const Slot) };
    let args = unsafe { std::slice::from_raw_parts(argv, argc as usize) };
    match Meter::start(slot) {
        Ok(meter) => Some((meter, args)),
        Err(Over) => {
            interrupted(ctx);
            None
        }
    }
}

fn interrupted(ctx: *mut ffi::sqlite3_context) {
    // SAFETY: `ctx` is the call's context.
    unsafe { ffi::sqlite3_result_error_code(ctx, ffi::SQLITE_INTERRUPT) };
}

/// A value as text (`sqlite3_value_text`): `None` for NULL (or when SQLite
/// cannot make the text).
///
/// # Safety
/// `value` is an argument of the running call; the slice is valid until the
/// value is converted again or the call returns.
unsafe fn text<'a>(value: *mut ffi::sqlite3_value) -> Option<&'a [u8]> {
    // SAFETY: as the function says; text first, then its length.
    unsafe {
        let p = ffi::sqlite3_value_text(value);
        if p.is_null() {
            return None;
        }
        let n = ffi::sqlite3_value_bytes(value);
        Some(std::slice::from_raw_parts(p, n.max(0) as usize))
    }
}

/// A value as a blob (`sqlite3_value_blob`); empty for a zero-length blob,
/// `None` when SQLite cannot make it (a `zeroblob` it could not expand).
///
/// # Safety
/// As for [`text`].
unsafe fn blob<'a>(value: *mut ffi::sqlite3_value) -> Option<&'a [u8]> {
    // SAFETY: as the function says.
    unsafe {
        let p = ffi::sqlite3_value_blob(value) as *const u8;
        let n = ffi::sqlite3_value_bytes(value);
        if n <= 0 {
            Some(&[])
        } else if p.is_null() {
            None
        } else {
            Some(std::slice::from_raw_parts(p, n as usize))
        }
    }
}

fn value_type(value: *mut ffi::sqlite3_value) -> c_int {
    // SAFETY: `value` is an argument of the running call.
    unsafe { ffi::sqlite3_value_type(value) }
}

/// Sets `bytes` (copied) as the call's text result.
fn result_text(ctx: *mut ffi::sqlite3_context, bytes: &[u8]) {
    // SAFETY: SQLite copies the bytes before this returns.
    unsafe {
        ffi::sqlite3_result_text64(
            ctx,
            bytes.as_ptr() as *const _,
            bytes.len() as u64,
            ffi::SQLITE_TRANSIENT(),
            ffi::SQLITE_UTF8 as u8,
        )
    };
}

/// `instr(X, Y)`: one more than the characters (bytes, when both are blobs)
/// before the first `Y` in `X`; 0 when there is none.
unsafe extern "C" fn instr(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite's arguments.
    let Some((_, args)) = (unsafe { enter(ctx, argc, argv) }) else {
        return;
    };
    let (haystack, needle) = (args[0], args[1]);
    let (h_type, n_type) = (value_type(haystack), value_type(needle));
    if h_type == ffi::SQLITE_NULL || n_type == ffi::SQLITE_NULL {
        return;
    }
    let is_text = !(h_type == ffi::SQLITE_BLOB && n_type == ffi::SQLITE_BLOB);
    // SAFETY: the arguments of this call; each converted once.
    let (hay, nee) = unsafe {
        let both = if is_text {
            (text(haystack), text(needle))
        } else {
            (blob(haystack), blob(needle))
        };
        match both {
            (Some(h), Some(n)) => (h, n),
            _ => return ffi::sqlite3_result_error_nomem(ctx),
        }
    };
    let position = instr_position(hay, nee, is_text);
    // SAFETY: `ctx` is the call's context.
    unsafe { ffi::sqlite3_result_int64(ctx, position) };
}

/// SQLite's `instr` result. SQLite tries the needle at the start of the
/// haystack, and then (for text) only where a character starts.
fn instr_position(hay: &[u8], needle: &[u8], is_text: bool) -> i64 {
    let continuation = |b: u8| b & 0xc0 == 0x80;
    if needle.is_empty() {
        return 1;
    }
    if is_text && continuation(needle[0]) {
        // Only the first position can start with a continuation byte.
        return i64::from(hay.starts_with(needle));
    }
    let Some(at) = memchr::memmem::find(hay, needle) else {
        return 0;
    };
    if !is_text {
        return at as i64 + 1;
    }
    if at == 0 {
        return 1;
    }
    2 + hay[1..at].iter().filter(|b| !continuation(**b)).count() as i64
}

/// `replace(X, Y, Z)`: `X` with every `Y` (left to right, not
/// overlapping) replaced by `Z`.
unsafe extern "C" fn replace(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite's arguments.
    let Some((_, args)) = (unsafe { enter(ctx, argc, argv) }) else {
        return;
    };
    // SAFETY: the arguments of this call, in SQLite's order.
    let Some(string) = (unsafe { text(args[0]) }) else {
        return;
    };
    let Some(pattern) = (unsafe { text(args[1]) }) else {
        return;
    };
    // SQLite stops at the first byte: a pattern that starts with NUL is
    // empty to it.
    if pattern.first().is_none_or(|b| *b == 0) {
        return result_text(ctx, string);
    }
    let Some(with) = (unsafe { text(args[2]) }) else {
        return;
    };
    // SAFETY: `ctx` is the call's context and its connection is open.
    let limit = unsafe {
        ffi::sqlite3_limit(
            ffi::sqlite3_context_db_handle(ctx),
            ffi::SQLITE_LIMIT_LENGTH,
            -1,
        )
    }
    .max(0) as usize;
    let mut out = Vec::with_capacity(string.len());
    let mut from = 0;
    for at in memchr::memmem::find_iter(string, pattern) {
        out.extend_from_slice(&string[from..at]);
        out.extend_from_slice(with);
        from = at + pattern.len();
        if with.len() > pattern.len() && out.len() + (string.len() - from) > limit {
            // SAFETY: `ctx` is the call's context.
            return unsafe { ffi::sqlite3_result_error_toobig(ctx) };
        }
    }
    out.extend_from_slice(&string[from..]);
    result_text(ctx, &out);
}

/// `trim(X[, Y])` (`LEFT` and `RIGHT`), `ltrim` and `rtrim`: `X` without
/// the characters of `Y` (a space when there is no `Y`) at those ends.
unsafe extern "C" fn trim<const LEFT: bool, const RIGHT: bool>(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite's arguments.
    let Some((mut meter, args)) = (unsafe { enter(ctx, argc, argv) }) else {
        return;
    };
    if value_type(args[0]) == ffi::SQLITE_NULL {
        return;
    }
    // SAFETY: the arguments of this call, in SQLite's order.
    let Some(input) = (unsafe { text(args[0]) }) else {
        return;
    };
    let set: Vec<&[u8]> = if args.len() == 1 {
        vec![b" "]
    } else {
        // SAFETY: as above.
        let Some(set) = (unsafe { text(args[1]) }) else {
            return;
        };
        characters(until_nul(set))
    };
    match trimmed(input, &set, LEFT, RIGHT, &mut meter) {
        Ok(kept) => result_text(ctx, kept),
        Err(Over) => interrupted(ctx),
    }
}

/// `s` up to its first NUL: what SQLite's C-string loops see of it.
fn until_nul(s: &[u8]) -> &[u8] {
    memchr::memchr(0, s).map_or(s, |end| &s[..end])
}

/// `s` cut into characters as SQLite's `SQLITE_SKIP_UTF8` does: a byte from
/// 0xC0 up takes the continuation bytes after it, any other byte stands
/// alone.
fn characters(s: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let start = i;
        i += 1;
        if s[start] >= 0xc0 {
            while i < s.len() && s[i] & 0xc0 == 0x80 {
                i += 1;
            }
        }
        out.push(&s[start..i]);
    }
    out
}

fn trimmed<'a>(
    mut s: &'a [u8],
    set: &[&[u8]],
    left: bool,
    right: bool,
    meter: &mut Meter,
) -> Result<&'a [u8], Over> {
    if set.is_empty() {
        return Ok(s);
    }
    if left {
        'outer: while !s.is_empty() {
            for c in set {
                meter.step(1)?;
                if s.starts_with(c) {
                    s = &s[c.len()..];
                    continue 'outer;
                }
            }
            break;
        }
    }
    if right {
        'outer: while !s.is_empty() {
            for c in set {
                meter.step(1)?;
                if s.ends_with(c) {
                    s = &s[..s.len() - c.len()];
                    continue 'outer;
                }
            }
            break;
        }
    }
    Ok(s)
}

/// How `LIKE` or `GLOB` reads a pattern (SQLite's `compareInfo`).
#[derive(Clone, Copy)]
struct Pattern {
    /// `%` or `*`; 0 when it is the escape character.
    all: u32,
    /// `_` or `?`; 0 when it is the escape character.
    one: u32,
    /// `GLOB`'s `[…]` sets.
    sets: bool,
    /// `LIKE` folds ASCII case.
    no_case: bool,
}

const GLOB: Pattern = Pattern {
    all: b'*' as u32,
    one: b'?' as u32,
    sets: true,
    no_case: false,
};
const LIKE: Pattern = Pattern {
    all: b'%' as u32,
    one: b'_' as u32,
    sets: false,
    no_case: true,
};

/// `like(P, S[, E])` and (`IS_GLOB`) `glob(P, S)`: whether `S` matches
/// pattern `P` (`S LIKE P ESCAPE E` in SQL).
unsafe extern "C" fn pattern<const IS_GLOB: bool>(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    let mut info = if IS_GLOB { GLOB } else { LIKE };
    // SAFETY: SQLite's arguments.
    let Some((mut meter, args)) = (unsafe { enter(ctx, argc, argv) }) else {
        return;
    };
    // SAFETY: the arguments of this call, in SQLite's order; `ctx`'s
    // connection is open.
    unsafe {
        let length = ffi::sqlite3_value_bytes(args[0]);
        let db = ffi::sqlite3_context_db_handle(ctx);
        if length > ffi::sqlite3_limit(db, ffi::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, -1) {
            return ffi::sqlite3_result_error(
                ctx,
                c"LIKE or GLOB pattern too complex".as_ptr(),
                -1,
            );
        }
    }
    let escape = if args.len() == 3 {
        // SAFETY: as above.
        let Some(escape) = (unsafe { text(args[2]) }) else {
            return;
        };
        let escape = until_nul(escape);
        if characters(escape).len() != 1 {
            // SAFETY: `ctx` is the call's context.
            return unsafe {
                ffi::sqlite3_result_error(
                    ctx,
                    c"ESCAPE expression must be a single character".as_ptr(),
                    -1,
                )
            };
        }
        let escape = read_char(escape, &mut 0);
        if escape == info.all {
            info.all = 0;
        }
        if escape == info.one {
            info.one = 0;
        }
        escape
    } else if info.sets {
        u32::from(b'[')
    } else {
        0
    };
    // SAFETY: as above.
    let (Some(pattern), Some(string)) = (unsafe { text(args[0]) }, unsafe { text(args[1]) }) else {
        return;
    };
    match matches(
        until_nul(pattern),
        until_nul(string),
        info,
        escape,
        &mut meter,
    ) {
        // SAFETY: `ctx` is the call's context.
        Ok(matched) => unsafe { ffi::sqlite3_result_int(ctx, c_int::from(matched)) },
        Err(Over) => interrupted(ctx),
    }
}

/// The byte at `i`, or the terminating 0 past the end.
fn at(s: &[u8], i: usize) -> u8 {
    s.get(i).copied().unwrap_or(0)
}

/// SQLite's `sqlite3Utf8Read`: the character at `*i` (0 at the end), with
/// malformed sequences read as SQLite reads them.
fn read_char(s: &[u8], i: &mut usize) -> u32 {
    const TRANS1: [u8; 64] = [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
        0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d,
        0x1e, 0x1f, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c,
        0x0d, 0x0e, 0x0f, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x00, 0x01, 0x02, 0x03,
        0x00, 0x01, 0x00, 0x00,
    ];
    let mut c = u32::from(at(s, *i));
    *i += 1;
    if c >= 0xc0 {
        c = u32::from(TRANS1[(c - 0xc0) as usize]);
        while at(s, *i) & 0xc0 == 0x80 {
            c = (c << 6) + u32::from(0x3f & at(s, *i));
            *i += 1;
        }
        if c < 0x80 || (c & 0xFFFF_F800) == 0xD800 || (c & 0xFFFF_FFFE) == 0xFFFE {
            c = 0xFFFD;
        }
    }
    c
}

fn skip_char(s: &[u8], i: &mut usize) {
    let lead = at(s, *i);
    *i += 1;
    if lead >= 0xc0 {
        while at(s, *i) & 0xc0 == 0x80 {
            *i += 1;
        }
    }
}

fn lower(c: u32) -> u32 {
    if (u32::from(b'A')..=u32::from(b'Z')).contains(&c) {
        c + 32
    } else {
        c
    }
}

fn upper(c: u32) -> u32 {
    if (u32::from(b'a')..=u32::from(b'z')).contains(&c) {
        c - 32
    } else {
        c
    }
}

/// What matching from one point of the pattern came to (SQLite's
/// `patternCompare` results, plus the wildcard it reached).
enum Step {
    /// The final answer: SQLite's `SQLITE_MATCH` (true) or
    /// `SQLITE_NOWILDCARDMATCH` (false).
    Done(bool),
    /// `SQLITE_NOMATCH`: the caller tries its wildcard's next candidate.
    NoMatch,
    /// Reached a wildcard: its candidates are tried from here on, and no
    /// earlier wildcard's are (SQLite returns whatever this one finds).
    Wildcard(Candidates),
}

/// The places a wildcard may end, tried in SQLite's order: after each
/// occurrence of the character that follows it in the pattern, or (for
/// `*[…]`) at every character.
struct Candidates {
    /// Where in the pattern matching resumes at each candidate.
    resume: usize,
    /// Where in the string the search for the next candidate starts.
    next: usize,
    kind: Search,
}

enum Search {
    /// An ASCII character, in either case when folding.
    Ascii(u8, u8),
    /// Any other character, exactly.
    Char(u32),
    /// `*[…]`: every character.
    Every,
}

impl Candidates {
    /// The string position of the next candidate, or `None`.
    fn next(&mut self, s: &[u8], meter: &mut Meter) -> Result<Option<usize>, Over> {
        match self.kind {
            Search::Ascii(a, b) => {
                let rest = s.get(self.next..).unwrap_or_default();
                let found = memchr::memchr3(a, b, 0, rest);
                meter.step(found.unwrap_or(rest.len()) as u32)?;
                match found {
                    Some(k) if rest[k] != 0 => {
                        self.next += k + 1;
                        Ok(Some(self.next))
                    }
                    _ => Ok(None),
                }
            }
            Search::Char(c) => loop {
                meter.step(1)?;
                let c2 = read_char(s, &mut self.next);
                if c2 == 0 {
                    return Ok(None);
                }
                if c2 == c {
                    return Ok(Some(self.next));
                }
            },
            Search::Every => {
                meter.step(1)?;
                if at(s, self.next) == 0 {
                    return Ok(None);
                }
                let here = self.next;
                skip_char(s, &mut self.next);
                Ok(Some(here))
            }
        }
    }
}

/// Whether `s` matches `p`: SQLite's `patternCompare`, with its recursion
/// (one level per wildcard, as deep as the pattern is long) unrolled. Once
/// a nested match reaches a wildcard, SQLite returns what that wildcard
/// finds, so only the innermost wildcard's candidates are ever live.
fn matches(
    p: &[u8],
    s: &[u8],
    info: Pattern,
    escape: u32,
    meter: &mut Meter,
) -> Result<bool, Over> {
    let mut wildcard: Option<Candidates> = None;
    let (mut pi, mut si) = (0, 0);
    loop {
        match step(p, pi, s, si, info, escape, meter)? {
            Step::Done(matched) => return Ok(matched),
            Step::NoMatch => {}
            Step::Wildcard(candidates) => wildcard = Some(candidates),
        }
        let Some(candidates) = wildcard.as_mut() else {
            return Ok(false);
        };
        match candidates.next(s, meter)? {
            Some(at) => (pi, si) = (candidates.resume, at),
            None => return Ok(false),
        }
    }
}

/// One level of `patternCompare`, from pattern position `pi` and string
/// position `si`, up to the end or the next wildcard.
fn step(
    p: &[u8],
    mut pi: usize,
    s: &[u8],
    mut si: usize,
    info: Pattern,
    escape: u32,
    meter: &mut Meter,
) -> Result<Step, Over> {
    let mut escaped: Option<usize> = None;
    loop {
        meter.step(1)?;
        let mut c = read_char(p, &mut pi);
        if c == 0 {
            break;
        }
        if c == info.all {
            loop {
                c = read_char(p, &mut pi);
                if c == info.all || (c == info.one && info.one != 0) {
                    meter.step(1)?;
                    if c == info.one && read_char(s, &mut si) == 0 {
                        return Ok(Step::Done(false));
                    }
                } else {
                    break;
                }
            }
            if c == 0 {
                return Ok(Step::Done(true));
            }
            if c == escape {
                if !info.sets {
                    c = read_char(p, &mut pi);
                    if c == 0 {
                        return Ok(Step::Done(false));
                    }
                } else {
                    return Ok(Step::Wildcard(Candidates {
                        resume: pi - 1,
                        next: si,
                        kind: Search::Every,
                    }));
                }
            }
            let kind = if c < 0x80 {
                let (a, b) = if info.no_case {
                    (upper(c) as u8, lower(c) as u8)
                } else {
                    (c as u8, c as u8)
                };
                Search::Ascii(a, b)
            } else {
                Search::Char(c)
            };
            return Ok(Step::Wildcard(Candidates {
                resume: pi,
                next: si,
                kind,
            }));
        }
        if c == escape {
            if !info.sets {
                c = read_char(p, &mut pi);
                if c == 0 {
                    return Ok(Step::NoMatch);
                }
                escaped = Some(pi);
            } else {
                let mut prior = 0;
                let mut seen = false;
                let mut invert = false;
                let c = read_char(s, &mut si);
                if c == 0 {
                    return Ok(Step::NoMatch);
                }
                let mut c2 = read_char(p, &mut pi);
                if c2 == u32::from(b'^') {
                    invert = true;
                    c2 = read_char(p, &mut pi);
                }
                if c2 == u32::from(b']') {
                    if c == u32::from(b']') {
                        seen = true;
                    }
                    c2 = read_char(p, &mut pi);
                }
                while c2 != 0 && c2 != u32::from(b']') {
                    meter.step(1)?;
                    if c2 == u32::from(b'-') && at(p, pi) != b']' && at(p, pi) != 0 && prior > 0 {
                        c2 = read_char(p, &mut pi);
                        if c >= prior && c <= c2 {
                            seen = true;
                        }
                        prior = 0;
                    } else {
                        if c == c2 {
                            seen = true;
                        }
                        prior = c2;
                    }
                    c2 = read_char(p, &mut pi);
                }
                if c2 == 0 || seen == invert {
                    return Ok(Step::NoMatch);
                }
                continue;
            }
        }
        let c2 = read_char(s, &mut si);
        if c == c2 {
            continue;
        }
        if info.no_case && lower(c) == lower(c2) && c < 0x80 && c2 < 0x80 {
            continue;
        }
        if c == info.one && Some(pi) != escaped && c2 != 0 {
            continue;
        }
        return Ok(Step::NoMatch);
    }
    Ok(if at(s, si) == 0 {
        Step::Done(true)
    } else {
        Step::NoMatch
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use sqlx::{Connection, Row, SqliteConnection};

    /// An in-memory connection, with the host versions when `host`.
    async fn open(host: bool) -> SqliteConnection {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        if host {
            let mut handle = conn.lock_handle().await.unwrap();
            // SAFETY: the connection is open and locked.
            unsafe { register(handle.as_raw_handle().as_ptr(), Duration::from_secs(5)) }.unwrap();
        }
        conn
    }

    #[derive(Clone, Debug)]
    enum Arg {
        Text(String),
        Blob(Vec<u8>),
        Int(i64),
        Null,
    }

    /// Short values made of what the functions treat specially: wildcards,
    /// set brackets, escapes, both cases, multi-byte and malformed UTF-8,
    /// NUL.
    fn arg() -> impl Strategy<Value = Arg> {
        let chars = prop::sample::select(vec![
            '%', '_', '*', '?', '[', ']', '^', '-', '\\', 'a', 'A', 'b', 'B', 'é', 'É', ' ', '.',
            '\0', 'x', '🙂',
        ]);
        let bytes = prop::sample::select(vec![
            b'%', b'_', b'*', b'?', b'[', b']', b'a', b'A', b' ', 0x00, 0x80, 0xa9, 0xbf, 0xc3,
            0xe0, 0xf0, 0xff,
        ]);
        prop_oneof![
            6 => prop::collection::vec(chars, 0..10).prop_map(|c| Arg::Text(c.into_iter().collect())),
            3 => prop::collection::vec(bytes, 0..10).prop_map(Arg::Blob),
            1 => (-20i64..200).prop_map(Arg::Int),
            1 => Just(Arg::Null),
        ]
    }

    const CALLS: &[&str] = &[
        "like(?1, ?2)",
        "like(?1, ?2, ?3)",
        "glob(?1, ?2)",
        "instr(?1, ?2)",
        "instr(?2, ?1)",
        "replace(?1, ?2, ?3)",
        "trim(?1)",
        "ltrim(?1)",
        "rtrim(?1)",
        "trim(?1, ?2)",
        "ltrim(?1, ?2)",
        "rtrim(?1, ?2)",
    ];

    /// `call`'s result as its type and bytes, or its error's message.
    async fn eval(
        conn: &mut SqliteConnection,
        call: &str,
        args: &[Arg],
    ) -> Result<(String, String), String> {
        let sql = format!("SELECT typeof(v), hex(v) FROM (SELECT {call} AS v)");
        let mut query = sqlx::query(&sql);
        for a in args {
            query = match a {
                Arg::Text(t) => query.bind(t.clone()),
                Arg::Blob(b) => query.bind(b.clone()),
                Arg::Int(i) => query.bind(*i),
                Arg::Null => query.bind(None::<i64>),
            };
        }
        match query.fetch_one(&mut *conn).await {
            Ok(row) => Ok((row.get(0), row.get(1))),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn the_host_versions_answer_as_sqlite_does() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (sqlite, host) = rt.block_on(async { (open(false).await, open(true).await) });
        let (sqlite, host) = (
            std::cell::RefCell::new(sqlite),
            std::cell::RefCell::new(host),
        );
        let mut runner = TestRunner::new(Config {
            cases: 2_000,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&(arg(), arg(), arg()), |(a, b, c)| {
                let args = [a, b, c];
                for call in CALLS {
                    let want = rt.block_on(eval(&mut sqlite.borrow_mut(), call, &args));
                    let got = rt.block_on(eval(&mut host.borrow_mut(), call, &args));
                    prop_assert_eq!(&got, &want, "{} with {:?}", call, args);
                }
                Ok(())
            })
            .unwrap();
    }

    /// Hand-picked cases the generator may miss: long runs, nested sets,
    /// escapes of the wildcards themselves.
    #[tokio::test]
    async fn the_host_versions_answer_as_sqlite_does_on_known_cases() {
        let (mut sqlite, mut host) = (open(false).await, open(true).await);
        let text = |s: &str| Arg::Text(s.to_owned());
        let cases: &[(&str, &[Arg])] = &[
            (
                "like(?1, ?2, ?3)",
                &[text("a%%b_%"), text("a%xb_yz"), text("%")],
            ),
            ("like(?1, ?2, ?3)", &[text("a__b"), text("a_cb"), text("_")]),
            (
                "like(?1, ?2, ?3)",
                &[text("a\\%b"), text("a%b"), text("\\")],
            ),
            ("like(?1, ?2, ?3)", &[text("ab"), text("ab"), text("xy")]),
            ("like(?1, ?2, ?3)", &[text("ab\\"), text("ab"), text("\\")]),
            ("like(?1, ?2)", &[text("%ÉTÉ%"), text("un été")]),
            ("like(?1, ?2)", &[text("%a%b%c%d%e"), text("aXbXcXdXeXe")]),
            ("glob(?1, ?2)", &[text("*[a-c]*[^x-z]"), text("zzbzzq")]),
            ("glob(?1, ?2)", &[text("*[]]*"), text("a]b")]),
            ("glob(?1, ?2)", &[text("[a-]"), text("-")]),
            ("glob(?1, ?2)", &[text("*[é-ö]"), text("xxô")]),
            ("glob(?1, ?2)", &[text("*?*?"), text("ab")]),
            ("instr(?1, ?2)", &[text("ééaé"), text("aé")]),
            (
                "instr(?1, ?2)",
                &[Arg::Blob(vec![0xc3, 0xa9, 0xa9, 0x61]), text("a")],
            ),
            (
                "instr(?1, ?2)",
                &[Arg::Blob(vec![0xa9, 0xa9, 0xa9]), Arg::Blob(vec![0xa9])],
            ),
            (
                "instr(?1, ?2)",
                &[
                    Arg::Blob(vec![0x61, 0xa9, 0xa9]),
                    Arg::Blob(vec![0xa9, 0xa9]),
                ],
            ),
            (
                "replace(?1, ?2, ?3)",
                &[text("aaaa"), text("aa"), text("b")],
            ),
            (
                "replace(?1, ?2, ?3)",
                &[text("abc"), text("\0x"), Arg::Null],
            ),
            ("trim(?1, ?2)", &[text("xyéyx"), text("yx")]),
            (
                "rtrim(?1, ?2)",
                &[
                    Arg::Blob(vec![0x61, 0xc3, 0xa9, 0xa9]),
                    Arg::Blob(vec![0xc3, 0xa9, 0xa9, 0xc3]),
                ],
            ),
        ];
        for (call, args) in cases {
            let want = eval(&mut sqlite, call, args).await;
            let got = eval(&mut host, call, args).await;
            assert_eq!(got, want, "{call} with {args:?}");
        }
    }

    struct Ended;
    impl CallEnd for Ended {
        fn is_over(&self) -> bool {
            true
        }
    }

    /// Calls whose work grows with the product of their arguments' sizes
    /// (SQLite's own take hours over these) stop once their call is over.
    #[tokio::test]
    async fn a_call_that_is_over_stops_the_functions() {
        let mut host = open(true).await;
        let long = "a".repeat(1 << 20);
        let needle = format!("{}b", "a".repeat(1 << 19));
        let set = format!("{}a", "b".repeat(1 << 19));
        let pattern = format!("%{}b", "a".repeat(40_000));
        for (call, args) in [
            ("trim(?1, ?2)", [long.clone(), set.clone()]),
            ("instr(?1, ?2)", [long.clone(), needle.clone()]),
            ("replace(?1, ?2, 'c')", [long.clone(), needle.clone()]),
            ("like(?2, ?1)", [long.clone(), pattern.clone()]),
        ] {
            {
                let mut handle = host.lock_handle().await.unwrap();
                // SAFETY: the connection is open and locked.
                unsafe { serve(handle.as_raw_handle().as_ptr(), Some(Arc::new(Ended))) };
            }
            let args = args.map(Arg::Text);
            let err = eval(&mut host, call, &args).await.unwrap_err();
            assert!(err.contains("interrupted"), "{call}: {err}");
            {
                let mut handle = host.lock_handle().await.unwrap();
                // SAFETY: as above.
                unsafe { serve(handle.as_raw_handle().as_ptr(), None) };
            }
        }
        // With no call over, the same work completes: linear for `instr`,
        // `replace` and `trim` here.
        let long = [long.clone(), needle.clone()].map(Arg::Text);
        assert_eq!(
            eval(&mut host, "instr(?1, ?2)", &long).await.unwrap().1,
            "30"
        );
    }

    /// `trim` and `LIKE` check the slot while they run, not only when they
    /// start: a call that ends meanwhile stops them.
    #[test]
    fn a_long_match_looks_at_the_slot_while_it_runs() {
        struct AfterChecks(std::sync::atomic::AtomicU32);
        impl CallEnd for AfterChecks {
            fn is_over(&self) -> bool {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 2
            }
        }
        // Over at its third look: the start, one while running, then over.
        let slot = || Slot {
            call: Mutex::new(Some(Arc::new(AfterChecks(0.into())))),
            ..Slot::default()
        };
        let long = "a".repeat(1 << 20);
        let set: Vec<u8> = "b".repeat(1 << 12).into_bytes();
        let mut set: Vec<&[u8]> = set.chunks(1).collect();
        set.push(b"a");
        let slot_a = slot();
        let mut meter = Meter::start(&slot_a).unwrap();
        assert!(trimmed(long.as_bytes(), &set, true, false, &mut meter).is_err());
        let pattern = format!("%{}b", "a".repeat(4_000));
        let slot_b = slot();
        let mut meter = Meter::start(&slot_b).unwrap();
        assert!(matches(pattern.as_bytes(), long.as_bytes(), LIKE, 0, &mut meter).is_err());
    }

    #[test]
    fn the_busy_schedule_is_sqlites_up_to_the_timeout() {
        let second = Duration::from_secs(1);
        let slept: Vec<u64> = (0..)
            .map_while(|n| busy_delay(n, second))
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(slept[..12], [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100]);
        assert_eq!(slept.iter().sum::<u64>(), 1000);
        assert_eq!(busy_delay(0, Duration::ZERO), None);
    }

    #[test]
    fn the_busy_handler_stops_waiting_once_the_call_is_over() {
        let slot = |call: Option<Arc<dyn CallEnd>>| Slot {
            call: Mutex::new(call),
            busy_timeout: Duration::from_secs(1),
            ..Slot::default()
        };
        let waiting = slot(None);
        let over = slot(Some(Arc::new(Ended)));
        let ask = |slot: &Slot, count| {
            // SAFETY: `slot` outlives the call, as SQLite's argument would.
            unsafe { busy(slot as *const Slot as *mut c_void, count) }
        };
        assert_eq!(ask(&waiting, 0), 1);
        assert_eq!(ask(&over, 0), 0);
        // Past the timeout even a call that is not over stops waiting.
        assert_eq!(ask(&waiting, 30), 0);
    }

    /// An interrupter outlives its connection safely: once the connection
    /// closes, it no longer holds it, and interrupting does nothing.
    #[tokio::test]
    async fn an_interrupter_lets_go_of_a_closed_connection() {
        let mut conn = open(true).await;
        let interrupter = {
            let mut handle = conn.lock_handle().await.unwrap();
            // SAFETY: the connection is open and locked.
            unsafe { Interrupter::of(handle.as_raw_handle().as_ptr()) }
        }
        .expect("a task connection has an interrupter");
        let held = || interrupter.0.db.lock().unwrap().is_some();
        assert!(held());
        conn.close().await.unwrap();
        assert!(!held());
        interrupter.interrupt();
        // A connection without the host's functions has none.
        let mut plain = open(false).await;
        let mut handle = plain.lock_handle().await.unwrap();
        // SAFETY: as above.
        assert!(unsafe { Interrupter::of(handle.as_raw_handle().as_ptr()) }.is_none());
    }
}
