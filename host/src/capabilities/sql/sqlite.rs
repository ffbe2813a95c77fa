//! Running checked statements on SQLite. SQLite has no statement timeout:
//! the caller's time-out bounds the call, and a busy database waits at most
//! the connection's busy timeout. A statement does not outlive its call:
//! for the call's duration the connection also carries a progress handler
//! (`sqlite3_progress_handler`), which interrupts the statement as soon as
//! the call is over (its deadline passed, or the run was stopped), so the
//! connection's thread and the connection itself are free again.
//!
//! SQLite itself checks every guest statement again: for the duration of
//! the call the connection carries an authorizer (`sqlite3_set_authorizer`)
//! that SQLite asks, while it prepares the statement, about every table
//! read and written, every function, PRAGMA, ATTACH/DETACH, schema change
//! and transaction statement. It answers from the same grants as the guard,
//! so a statement that got past the parse is still held to the grant.
//! (`VACUUM` and `ANALYZE` are never guest SQL: the typed calls run them.)

use super::guard::{self, Denial, Grants};
use super::{Collect, Failure, Outcome, Prepared, Reached, SqlLimits, collect, too_large};
use super::{functions, heap, temp_files};
use crate::bindings::housekeeper::task::sql as wit;
use crate::capabilities::filesystem::WriteBudget;
use crate::manifest::SqlVerb;
use chrono::{DateTime, Utc};
use libsqlite3_sys as ffi;
use sqlx::pool::PoolConnection;
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{Executor, Row, Sqlite, TypeInfo, ValueRef};
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub(super) async fn run(
    pool: &SqlitePool,
    statements: &[Prepared],
    want_rows: bool,
    dry_run: bool,
    limits: &SqlLimits,
    grants: &Grants,
    writes: Option<&Arc<WriteBudget>>,
    heap: &Arc<heap::Window>,
    reached: &Reached,
) -> Result<Vec<Outcome>, Failure> {
    if !heap::installed() {
        return Err(refused_failure(
            "SQLite's memory cannot be bounded in this process (SQLite was started before the host's allocator)",
        ));
    }
    // What the host does before the guest's statements is charged to no
    // one (a call of this run cut off earlier may have left it open).
    heap.close();
    let mut call = Call::acquire(pool).await?;
    let conn = &mut call.conn;
    let mut policy = Policy::new(grants.clone(), writes.cloned());
    policy.heap = Some(heap.clone());
    // The call's transaction is the host's own `BEGIN`, not sqlx's: SQLite
    // rolls a transaction back by itself on some errors (a full disk, an
    // interrupt), after which sqlx's count of open transactions would be
    // wrong for every later call on the connection. Whether one is open is
    // asked of SQLite instead.
    //
    // The host reads the schema first, so that it is loaded (or reloaded,
    // if another connection changed it) before the guest's statements:
    // SQLite holds a database's whole schema in memory on each connection,
    // which is the database's to pay for, not the run's. (Outside the
    // transaction: a read transaction left open would make SQLite refuse,
    // rather than wait for, the lock a later write needs.)
    conn.execute(sqlx::raw_sql("SELECT 1 FROM sqlite_schema LIMIT 0; BEGIN"))
        .await
        .map_err(error)?;
    if grants_ddl(grants) {
        let used = schema_bytes(conn).await?;
        policy.schema_full = (used >= limits.sqlite_memory / 2).then_some(used);
    }
    let policy = Arc::new(policy);
    let _ended = Ended(policy.clone());
    let installed = install(conn, &policy, true).await?;
    let result = statements_in(conn, statements, want_rows, limits, &policy, reached).await;
    remove(conn, installed).await?;
    let outcomes = match result {
        Ok(outcomes) => outcomes,
        Err(failure) => {
            roll_back(conn).await?;
            call.finished = true;
            return Err(failure);
        }
    };
    if dry_run {
        roll_back(conn).await?;
    } else {
        conn.execute("COMMIT").await.map_err(error)?;
    }
    call.finished = true;
    Ok(outcomes)
}

/// A pooled connection during a call. A call dropped before it finished
/// (at its deadline) closes it, which rolls back its transaction and frees
/// its locks at once, instead of handing it back with them.
pub(super) struct Call {
    pub(super) conn: PoolConnection<Sqlite>,
    pub(super) finished: bool,
    interrupter: Option<functions::Interrupter>,
}

impl Call {
    /// A connection from `pool` with no authorizer and no transaction
    /// left on it.
    pub(super) async fn acquire(pool: &SqlitePool) -> Result<Call, Failure> {
        let mut conn = pool.acquire().await.map_err(error)?;
        clear(&mut conn).await?;
        let interrupter = {
            let mut handle = conn.lock_handle().await.map_err(error)?;
            // SAFETY: the handle is this connection's, open and locked.
            unsafe { functions::Interrupter::of(handle.as_raw_handle().as_ptr()) }
        };
        Ok(Call {
            conn,
            finished: false,
            interrupter,
        })
    }
}

impl Drop for Call {
    /// A call dropped before it finished (at its deadline) stops what its
    /// statement is doing (some single steps, such as counting a table's
    /// rows, take long without looking at the progress handler, but do
    /// look at `sqlite3_interrupt`) and closes its connection.
    fn drop(&mut self) {
        if !self.finished {
            if let Some(interrupter) = &self.interrupter {
                interrupter.interrupt();
            }
            self.conn.close_on_drop();
        }
    }
}

/// Runs `statements`, built by the host (`VACUUM`, `ANALYZE`), with what
/// they make SQLite write to temporary files charged to `writes` and
/// interrupted once the call is over.
pub(super) async fn host_statements(
    call: &mut Call,
    statements: &[String],
    writes: Option<&Arc<WriteBudget>>,
) -> Result<(), Failure> {
    let policy = Arc::new(Policy::new(Grants::default(), writes.cloned()));
    let _ended = Ended(policy.clone());
    let installed = install(&mut call.conn, &policy, false).await?;
    // `VACUUM` copies every row whole: the cap on a task statement's values
    // (`HOUSEKEEPER_SQLITE_MAX_VALUE`) is not the host's, so SQLite's own
    // ceiling holds while they run. Every row is a loop step, which the
    // progress handler sees.
    let task_cap = value_cap(&mut call.conn, SQLITE_CEILING).await?;
    let mut result = Ok(());
    for statement in statements {
        result = call
            .conn
            .execute(sqlx::raw_sql(statement))
            .await
            .map(|_| ())
            .map_err(|e| policy.error(e));
        if result.is_err() {
            break;
        }
    }
    value_cap(&mut call.conn, task_cap).await?;
    remove(&mut call.conn, installed).await?;
    call.finished = true;
    result
}

/// SQLite's largest value, whatever a connection's cap.
const SQLITE_CEILING: c_int = 1_000_000_000;

/// Sets the connection's cap on a value's size (`SQLITE_LIMIT_LENGTH`) and
/// returns the one it had.
async fn value_cap(conn: &mut SqliteConnection, bytes: c_int) -> Result<c_int, Failure> {
    let mut handle = conn.lock_handle().await.map_err(error)?;
    // SAFETY: the handle is locked for the call.
    Ok(unsafe {
        ffi::sqlite3_limit(
            handle.as_raw_handle().as_ptr(),
            ffi::SQLITE_LIMIT_LENGTH,
            bytes,
        )
    })
}

async fn statements_in(
    conn: &mut SqliteConnection,
    statements: &[Prepared],
    want_rows: bool,
    limits: &SqlLimits,
    policy: &Policy,
    reached: &Reached,
) -> Result<Vec<Outcome>, Failure> {
    let mut outcomes = Vec::with_capacity(statements.len());
    for (index, statement) in statements.iter().enumerate() {
        reached.at(index);
        // Prepared afresh each time, so the authorizer sees it: a cached
        // statement would have been authorized under another call's grants.
        let query = bind(
            sqlx::query(&statement.sql).persistent(false),
            &statement.params,
        );
        if want_rows {
            let stream = (&mut *conn).fetch(query);
            match collect(stream, values, |e| policy.error(e), limits).await {
                Ok(rows) => outcomes.push(Outcome::Rows(rows)),
                Err(Collect::TooLarge) => return Err(Failure::Guest(too_large(limits))),
                Err(Collect::Failed(e)) => return Err(e),
            }
        } else {
            let done = conn.execute(query).await.map_err(|e| policy.error(e))?;
            outcomes.push(Outcome::Changed(done.rows_affected()));
        }
    }
    Ok(outcomes)
}

/// What SQLite may do while it prepares a guest statement.
struct Policy {
    grants: Grants,
    /// Set once the guest's call is over (or dropped): the host may then
    /// end the transaction it opened, even if this authorizer is still on
    /// the connection, and a statement still running is interrupted.
    ended: AtomicBool,
    /// The first refusal, for the error the guest sees.
    denied: Mutex<Option<Denial>>,
    /// Indexes this call was allowed to create (lower-cased): SQLite asks
    /// to rebuild each one it fills, and only those.
    created_indexes: Mutex<Vec<String>>,
    /// The run's write budget, which SQLite's temporary files are charged.
    writes: Option<Arc<WriteBudget>>,
    /// What the run's statements may hold of SQLite's heap (task calls
    /// only: the host's `VACUUM` copies rows whole).
    heap: Option<Arc<heap::Window>>,
    /// What the database's schema takes of SQLite's memory, when that is
    /// already half of `HOUSEKEEPER_SQLITE_MEMORY` or more: the schema may
    /// not grow (`CREATE TABLE`, `CREATE INDEX`, `ALTER TABLE`).
    schema_full: Option<usize>,
}

impl functions::CallEnd for Policy {
    fn is_over(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }
}

impl temp_files::TempWrites for Policy {
    fn charge(&self, bytes: u64) -> bool {
        // A statement still running after its call writes nothing more:
        // it is interrupted within a few steps, or fails here first.
        if self.ended.load(Ordering::SeqCst) {
            return false;
        }
        let Some(budget) = &self.writes else {
            return true;
        };
        match budget.charge(bytes) {
            Ok(()) => true,
            Err(spent) => {
                self.record(Denial::Refused(format!(
                    "{spent}: SQLite's temporary files (a sort, DISTINCT or index too large for memory) are charged to it"
                )));
                false
            }
        }
    }
}

/// Marks the policy's call as over when dropped, also when the call's
/// future is dropped at a deadline.
struct Ended(Arc<Policy>);

impl Drop for Ended {
    fn drop(&mut self) {
        // The heap window stays open: a statement still running (the call
        // was dropped at its deadline) stays within it until its
        // connection closes. A call that ends normally closes it first
        // (`remove`).
        self.0.ended.store(true, Ordering::SeqCst);
    }
}

/// Tables SQLite maintains itself; it refuses a guest's direct writes to
/// them (there is no `writable_schema` without PRAGMA).
fn is_schema_table(table: &str) -> bool {
    matches!(
        table.to_ascii_lowercase().as_str(),
        "sqlite_master" | "sqlite_schema" | "sqlite_temp_master" | "sqlite_temp_schema"
    )
}

impl Policy {
    fn new(grants: Grants, writes: Option<Arc<WriteBudget>>) -> Self {
        Policy {
            grants,
            ended: AtomicBool::new(false),
            denied: Mutex::new(None),
            created_indexes: Mutex::new(Vec::new()),
            writes,
            heap: None,
            schema_full: None,
        }
    }

    /// Charges this connection thread's SQLite allocations to the call.
    fn charge_heap(&self) {
        if let Some(window) = &self.heap {
            heap::charge_to(window);
        }
    }

    /// Ends the call's heap window: the host's statements that follow are
    /// charged to no one.
    fn close_heap(&self) {
        if let Some(window) = &self.heap {
            window.close();
        }
    }

    /// One authorizer question: `action` with its two arguments and the
    /// database (`main`, `temp`, an attached name) it concerns.
    fn decide(
        &self,
        action: c_int,
        first: Option<&str>,
        second: Option<&str>,
        database: Option<&str>,
    ) -> Result<(), Denial> {
        let refused = |what: &str| Err(Denial::Refused(format!("{what} is not allowed")));
        let table = |name: Option<&str>| name.unwrap_or_default().to_ascii_lowercase();
        // `ALTER TABLE` names its database first (and, for `DROP COLUMN`,
        // the column where other actions name the database).
        let database = if action == ffi::SQLITE_ALTER_TABLE {
            first
        } else {
            database
        };
        // SQLite reads (and, for `ALTER TABLE`, rewrites) the `temp`
        // schema's own table too; it refuses a statement's own writes to any
        // schema table.
        let schema_table = matches!(
            action,
            ffi::SQLITE_READ | ffi::SQLITE_INSERT | ffi::SQLITE_UPDATE | ffi::SQLITE_DELETE
        ) && first.is_some_and(is_schema_table);
        if let Some(db) = database
            && db != "main"
            && !schema_table
        {
            return refused(&format!("database `{db}`"));
        }
        if let Some(used) = self.schema_full
            && matches!(
                action,
                ffi::SQLITE_CREATE_TABLE | ffi::SQLITE_CREATE_INDEX | ffi::SQLITE_ALTER_TABLE
            )
        {
            return Err(Denial::Refused(format!(
                "the database's schema already takes {} MiB of SQLite's memory on every connection, half of HOUSEKEEPER_SQLITE_MEMORY or more: it may shrink (DROP) but not grow",
                used >> 20
            )));
        }
        match action {
            ffi::SQLITE_SELECT | ffi::SQLITE_RECURSIVE => Ok(()),
            ffi::SQLITE_READ => {
                let t = table(first);
                // A table the statement may change it may also read, as
                // the guard allows (`DELETE … WHERE`, `RETURNING`, the
                // columns `CREATE INDEX` reads).
                let readable = is_schema_table(&t)
                    || [
                        SqlVerb::Select,
                        SqlVerb::Insert,
                        SqlVerb::Update,
                        SqlVerb::Delete,
                        SqlVerb::Ddl,
                    ]
                    .iter()
                    .any(|v| self.grants.allows(&t, *v));
                if readable {
                    Ok(())
                } else {
                    Err(denied(t, SqlVerb::Select))
                }
            }
            ffi::SQLITE_INSERT | ffi::SQLITE_UPDATE | ffi::SQLITE_DELETE => {
                let t = table(first);
                if is_schema_table(&t) {
                    return Ok(());
                }
                let verb = match action {
                    ffi::SQLITE_INSERT => SqlVerb::Insert,
                    ffi::SQLITE_UPDATE => SqlVerb::Update,
                    _ => SqlVerb::Delete,
                };
                // DROP TABLE deletes the table's rows too; `ddl` may.
                if verb == SqlVerb::Delete && self.grants.allows(&t, SqlVerb::Ddl) {
                    return Ok(());
                }
                require(&self.grants, t, verb)
            }
            ffi::SQLITE_FUNCTION => {
                let name = second.unwrap_or_default().to_ascii_lowercase();
                // SQLite's own helpers for `ALTER TABLE`, which it calls
                // from the statements it makes for one and refuses to a
                // statement's own text.
                let alter_helper = matches!(
                    name.as_str(),
                    "sqlite_rename_column"
                        | "sqlite_rename_table"
                        | "sqlite_rename_test"
                        | "sqlite_drop_column"
                        | "sqlite_rename_quotefix"
                );
                if guard::function_allowed(&name) || alter_helper {
                    Ok(())
                } else {
                    refused(&format!("function `{name}`"))
                }
            }
            ffi::SQLITE_CREATE_TABLE | ffi::SQLITE_DROP_TABLE => {
                require(&self.grants, table(first), SqlVerb::Ddl)
            }
            ffi::SQLITE_CREATE_INDEX => {
                require(&self.grants, table(second), SqlVerb::Ddl)?;
                if let Ok(mut created) = self.created_indexes.lock() {
                    created.push(table(first));
                }
                Ok(())
            }
            ffi::SQLITE_DROP_INDEX => require(&self.grants, table(second), SqlVerb::Ddl),
            ffi::SQLITE_ALTER_TABLE => require(&self.grants, table(second), SqlVerb::Ddl),
            // SQLite asks this for an index it fills while creating it,
            // naming the index; a `REINDEX` of existing indexes (any table's,
            // by name or all at once) is not a task's to run.
            ffi::SQLITE_REINDEX => {
                let index = table(first);
                let creating = self
                    .created_indexes
                    .lock()
                    .is_ok_and(|created| created.contains(&index));
                if creating {
                    Ok(())
                } else {
                    refused(&format!("REINDEX of `{index}`"))
                }
            }
            ffi::SQLITE_ANALYZE => require(&self.grants, table(first), SqlVerb::Analyze),
            ffi::SQLITE_TRANSACTION if self.ended.load(Ordering::SeqCst) => Ok(()),
            ffi::SQLITE_TRANSACTION | ffi::SQLITE_SAVEPOINT => {
                refused("transaction control (each call is its own transaction)")
            }
            ffi::SQLITE_PRAGMA => refused(&format!("PRAGMA {}", first.unwrap_or_default())),
            ffi::SQLITE_ATTACH | ffi::SQLITE_DETACH => refused("ATTACH/DETACH"),
            ffi::SQLITE_CREATE_TEMP_INDEX
            | ffi::SQLITE_CREATE_TEMP_TABLE
            | ffi::SQLITE_DROP_TEMP_INDEX
            | ffi::SQLITE_DROP_TEMP_TABLE => refused("a temporary table or index"),
            ffi::SQLITE_CREATE_TRIGGER
            | ffi::SQLITE_CREATE_TEMP_TRIGGER
            | ffi::SQLITE_DROP_TRIGGER
            | ffi::SQLITE_DROP_TEMP_TRIGGER => refused("a trigger"),
            ffi::SQLITE_CREATE_VIEW
            | ffi::SQLITE_CREATE_TEMP_VIEW
            | ffi::SQLITE_DROP_VIEW
            | ffi::SQLITE_DROP_TEMP_VIEW => refused("a view"),
            ffi::SQLITE_CREATE_VTABLE | ffi::SQLITE_DROP_VTABLE => refused("a virtual table"),
            other => refused(&format!("SQLite action {other}")),
        }
    }

    fn record(&self, denial: Denial) {
        if let Ok(mut first) = self.denied.lock()
            && first.is_none()
        {
            *first = Some(denial);
        }
    }

    /// A statement's error: the authorizer's refusal if it made one.
    fn error(&self, e: sqlx::Error) -> Failure {
        let denial = self.denied.lock().ok().and_then(|mut d| d.take());
        if let Some(window) = &self.heap
            && window.exceeded()
            && denial.is_none()
        {
            return Failure::Guest(wit::SqlError::Refused(format!(
                "the statement needs more than {} MiB of SQLite's memory (HOUSEKEEPER_SQLITE_MEMORY){}",
                window.limit() >> 20,
                match e {
                    sqlx::Error::Database(db) => format!(": {}", db.message()),
                    _ => String::new(),
                }
            )));
        }
        match denial {
            Some(Denial::AccessDenied { table, verb }) => {
                Failure::Guest(wit::SqlError::AccessDenied(wit::Denial {
                    table,
                    verb: verb.as_str().to_owned(),
                }))
            }
            Some(Denial::Refused(reason)) => Failure::Guest(wit::SqlError::Refused(reason)),
            None => error(e),
        }
    }
}

fn denied(table: String, verb: SqlVerb) -> Denial {
    Denial::AccessDenied { table, verb }
}

fn require(grants: &Grants, table: String, verb: SqlVerb) -> Result<(), Denial> {
    if grants.allows(&table, verb) {
        Ok(())
    } else {
        Err(denied(table, verb))
    }
}

/// SQLite's authorizer callback. It never unwinds into SQLite: a panic
/// denies.
unsafe extern "C" fn authorize(
    data: *mut c_void,
    action: c_int,
    first: *const c_char,
    second: *const c_char,
    database: *const c_char,
    _trigger: *const c_char,
) -> c_int {
    let answer = std::panic::catch_unwind(|| {
        // SAFETY: `data` is the `Policy` `install` handed to SQLite; its
        // reference count is not released while the authorizer can run.
        let policy = std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(data as *const Policy) });
        // What SQLite writes to temporary files and allocates for this
        // statement is charged to its call.
        temp_files::charge_to(&*policy);
        policy.charge_heap();
        let text = |p: *const c_char| {
            // SAFETY: SQLite passes NUL-terminated strings or NULL.
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        };
        let (first, second, database) = (text(first), text(second), text(database));
        match policy.decide(
            action,
            first.as_deref(),
            second.as_deref(),
            database.as_deref(),
        ) {
            Ok(()) => ffi::SQLITE_OK,
            Err(denial) => {
                policy.record(denial);
                ffi::SQLITE_DENY
            }
        }
    });
    answer.unwrap_or(ffi::SQLITE_DENY)
}

/// SQLite's progress handler: a statement still running once its call is
/// over (dropped at the deadline, or with its run) is interrupted.
unsafe extern "C" fn progress(data: *mut c_void) -> c_int {
    // SAFETY: `data` is the `Policy` `install` handed to SQLite, alive while
    // the handler is installed.
    let policy = std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(data as *const Policy) });
    temp_files::charge_to(&*policy);
    policy.charge_heap();
    if let Some(window) = &policy.heap {
        heap::stepping(window);
    }
    c_int::from(policy.ended.load(Ordering::SeqCst))
}

/// SQLite's trace callback, for `SQLITE_TRACE_ROW` only: the row about to
/// be handed over may be copied whole, past the heap's limit.
unsafe extern "C" fn trace(
    _mask: std::ffi::c_uint,
    data: *mut c_void,
    stmt: *mut c_void,
    _: *mut c_void,
) -> c_int {
    // SAFETY: `data` is the `Policy` `install` handed to SQLite, alive while
    // the callback is installed; `stmt` is the statement traced.
    let policy = std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(data as *const Policy) });
    if let Some(window) = &policy.heap {
        // SAFETY: SQLite's row announcement, on the stepping thread.
        unsafe { heap::row_ready(window, stmt as *mut ffi::sqlite3_stmt) };
    }
    0
}

/// How many virtual-machine steps SQLite takes between two calls of the
/// progress handler: an atomic load every few microseconds of work.
const PROGRESS_STEPS: c_int = 1_000;

/// The authorizer's policy, as handed to SQLite (an `Arc` count of its own).
struct Installed(usize);

/// Puts the policy on the connection: as its authorizer when
/// `with_authorizer`,
/// and as its progress handler, which also charges temporary files to it.
async fn install(
    conn: &mut SqliteConnection,
    policy: &Arc<Policy>,
    with_authorizer: bool,
) -> Result<Installed, Failure> {
    let mut handle = conn.lock_handle().await.map_err(error)?;
    let data = Arc::into_raw(policy.clone());
    if with_authorizer {
        // SAFETY: the handle is locked, so no statement runs meanwhile;
        // `data` stays valid until `remove` (or for ever, if the call is
        // dropped before it: the count is then never released).
        let rc = unsafe {
            ffi::sqlite3_set_authorizer(
                handle.as_raw_handle().as_ptr(),
                Some(authorize),
                data as *mut c_void,
            )
        };
        if rc != ffi::SQLITE_OK {
            // SAFETY: SQLite did not take the pointer.
            unsafe { drop(Arc::from_raw(data)) };
            return Err(refused_failure("the database refused the authorizer"));
        }
    }
    // SAFETY: as for the authorizer, with the same pointer and lifetime.
    // The host's versions of the functions that can run long ask the same
    // policy whether their call is over.
    unsafe {
        let db = handle.as_raw_handle().as_ptr();
        ffi::sqlite3_progress_handler(db, PROGRESS_STEPS, Some(progress), data as *mut c_void);
        if let Some(window) = &policy.heap {
            window.open();
            ffi::sqlite3_trace_v2(
                db,
                ffi::SQLITE_TRACE_ROW as std::ffi::c_uint,
                Some(trace),
                data as *mut c_void,
            );
        }
        functions::serve(db, Some(policy.clone()));
    }
    Ok(Installed(data as usize))
}

/// Takes the authorizer off and releases its policy. If the connection's
/// worker is gone this fails and the policy stays alive; the next call on
/// the connection clears the authorizer before anything else (`clear`).
async fn remove(conn: &mut SqliteConnection, installed: Installed) -> Result<(), Failure> {
    // SAFETY: the pointer `install` made, whose count is still held.
    unsafe { (*(installed.0 as *const Policy)).close_heap() };
    let mut handle = conn.lock_handle().await.map_err(error)?;
    // SAFETY: the handle is locked; NULL callbacks remove the authorizer
    // and the progress handler.
    unsafe {
        let db = handle.as_raw_handle().as_ptr();
        ffi::sqlite3_set_authorizer(db, None, std::ptr::null_mut());
        ffi::sqlite3_progress_handler(db, 0, None, std::ptr::null_mut());
        ffi::sqlite3_trace_v2(db, 0, None, std::ptr::null_mut());
        functions::serve(db, None);
    }
    drop(handle);
    // SAFETY: SQLite no longer holds the pointer `install` gave it.
    unsafe { drop(Arc::from_raw(installed.0 as *const Policy)) };
    Ok(())
}

/// Whether `grants` let a statement change the schema.
fn grants_ddl(grants: &Grants) -> bool {
    !grants.tables_with(SqlVerb::Ddl).is_empty()
}

/// What the connection's schemas take of SQLite's memory, in bytes
/// (`SQLITE_DBSTATUS_SCHEMA_USED`).
async fn schema_bytes(conn: &mut SqliteConnection) -> Result<usize, Failure> {
    let mut handle = conn.lock_handle().await.map_err(error)?;
    let (mut current, mut highest) = (0, 0);
    // SAFETY: the handle is locked for the call; SQLite fills the two ints.
    unsafe {
        ffi::sqlite3_db_status(
            handle.as_raw_handle().as_ptr(),
            ffi::SQLITE_DBSTATUS_SCHEMA_USED,
            &mut current,
            &mut highest,
            0,
        )
    };
    Ok(current.max(0) as usize)
}

async fn clear(conn: &mut PoolConnection<Sqlite>) -> Result<(), Failure> {
    let mut handle = conn.lock_handle().await.map_err(error)?;
    // SAFETY: the handle is locked; NULL callbacks remove any authorizer
    // and progress handler.
    unsafe {
        let db = handle.as_raw_handle().as_ptr();
        ffi::sqlite3_set_authorizer(db, None, std::ptr::null_mut());
        ffi::sqlite3_progress_handler(db, 0, None, std::ptr::null_mut());
        ffi::sqlite3_trace_v2(db, 0, None, std::ptr::null_mut());
        functions::serve(db, None);
    }
    drop(handle);
    roll_back(conn).await
}

/// Rolls back the connection's transaction, if SQLite has one open.
async fn roll_back(conn: &mut SqliteConnection) -> Result<(), Failure> {
    let mut handle = conn.lock_handle().await.map_err(error)?;
    // SAFETY: the handle is locked for the call.
    let open = unsafe { ffi::sqlite3_get_autocommit(handle.as_raw_handle().as_ptr()) == 0 };
    drop(handle);
    if open {
        conn.execute("ROLLBACK").await.map_err(error)?;
    }
    Ok(())
}

fn refused_failure(reason: &str) -> Failure {
    Failure::Guest(wit::SqlError::Refused(reason.to_owned()))
}

pub(super) fn error(e: sqlx::Error) -> Failure {
    let (code, message) = match &e {
        sqlx::Error::Database(db) => (
            db.code().map(|c| c.into_owned()).unwrap_or_default(),
            db.message().to_owned(),
        ),
        other => (String::new(), other.to_string()),
    };
    // SQLite's words for two caps of the host's.
    let hint = match code.as_str() {
        "18" => {
            " (a value larger than a task statement may read or make on SQLite: HOUSEKEEPER_SQLITE_MAX_VALUE)"
        }
        "7" => {
            " (or the statement compiles to more SQLite instructions than a task statement may hold)"
        }
        _ => "",
    };
    Failure::Guest(wit::SqlError::Database(wit::DatabaseError {
        code,
        message: message + hint,
    }))
}

fn bind<'q>(
    mut query: Query<'q, Sqlite, SqliteArguments<'q>>,
    params: &[wit::Value],
) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    for param in params {
        query = match param {
            wit::Value::Null => query.bind(None::<i64>),
            wit::Value::Boolean(b) => query.bind(*b),
            wit::Value::Integer(i) => query.bind(*i),
            wit::Value::Float(f) => query.bind(*f),
            wit::Value::Text(s) | wit::Value::Json(s) => query.bind(s.clone()),
            wit::Value::Bytes(b) => query.bind(b.clone()),
            wit::Value::Timestamp(ms) => query.bind(DateTime::<Utc>::from_timestamp_millis(*ms)),
        };
    }
    query
}

fn values(row: &SqliteRow) -> Result<Vec<wit::Value>, Failure> {
    (0..row.len())
        .map(|i| {
            let raw = row.try_get_raw(i).map_err(error)?;
            if raw.is_null() {
                return Ok(wit::Value::Null);
            }
            // The value's storage class, not the column's declared type.
            let class = raw.type_info().name().to_owned();
            Ok(match class.as_str() {
                "INTEGER" | "BOOLEAN" => {
                    wit::Value::Integer(row.try_get_unchecked(i).map_err(error)?)
                }
                "REAL" => wit::Value::Float(row.try_get_unchecked(i).map_err(error)?),
                "BLOB" => wit::Value::Bytes(row.try_get_unchecked(i).map_err(error)?),
                _ => wit::Value::Text(row.try_get_unchecked(i).map_err(error)?),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! The authorizer on its own: statements go to `run` as if the parse
    //! had passed them, so only SQLite's own check stands in their way.
    use super::*;
    use crate::capabilities::sql::guard::{Checked, Grants, Kind};
    use SqlVerb::*;
    use sqlx::sqlite::SqlitePoolOptions;
    use std::collections::BTreeMap;

    async fn pool() -> SqlitePool {
        // One connection, so every call (and the checks after it) use the
        // same one.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO events VALUES (1, 'a'), (2, 'b');
             CREATE TABLE secrets (id INTEGER PRIMARY KEY, value TEXT);
             INSERT INTO secrets VALUES (1, 'the-secret-row');",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool
    }

    fn grants(tables: &[(&str, &[SqlVerb])]) -> Grants {
        let map: BTreeMap<String, Vec<SqlVerb>> = tables
            .iter()
            .map(|(t, v)| (t.to_string(), v.to_vec()))
            .collect();
        Grants::new(&map)
    }

    fn unchecked(sql: &str, kind: Kind, verb: SqlVerb) -> Prepared {
        Prepared {
            sql: sql.to_owned(),
            params: Vec::new(),
            checked: Checked { kind, verb },
        }
    }

    async fn call(pool: &SqlitePool, grants: &Grants, sql: &str) -> Result<usize, String> {
        let window = heap::Window::new(SqlLimits::default().sqlite_memory);
        call_in(pool, grants, sql, &window).await
    }

    /// A call of the run whose SQLite heap is `window`.
    async fn call_in(
        pool: &SqlitePool,
        grants: &Grants,
        sql: &str,
        window: &Arc<heap::Window>,
    ) -> Result<usize, String> {
        let (kind, verb) = (Kind::Change, Select);
        let limits = SqlLimits {
            sqlite_memory: window.limit(),
            ..SqlLimits::default()
        };
        run(
            pool,
            &[unchecked(sql, kind, verb)],
            true,
            false,
            &limits,
            grants,
            None,
            window,
            &Reached::default(),
        )
        .await
        .map(|outcomes| outcomes.len())
        .map_err(|f| match f {
            Failure::Guest(wit::SqlError::AccessDenied(d)) => {
                format!("access denied: {} {}", d.table, d.verb)
            }
            Failure::Guest(wit::SqlError::Refused(r)) => format!("refused: {r}"),
            Failure::Guest(wit::SqlError::Database(e)) => format!("database: {}", e.message),
            Failure::Guest(wit::SqlError::Timeout) => "timeout".into(),
            Failure::Deadline => "deadline".into(),
        })
    }

    /// What SQLite writes to temporary files for a statement still running
    /// after its call is refused: the call's budget no longer covers it.
    #[test]
    fn a_call_that_is_over_is_charged_nothing_more() {
        use crate::capabilities::output::Output;
        use temp_files::TempWrites;
        let budget = Arc::new(WriteBudget::new(1 << 20, &Output::new("t", "r", 1 << 10)));
        let policy = Policy::new(grants(&[]), Some(budget.clone()));
        assert!(policy.charge(4096));
        policy.ended.store(true, Ordering::SeqCst);
        assert!(!policy.charge(4096));
        assert!(!policy.charge(0));
        assert_eq!(budget.used(), 4096);
    }

    /// `CREATE TABLE name` with 200 columns of long names: about 60 KB of
    /// schema in SQLite's memory.
    fn wide_table(name: &str) -> String {
        let columns: Vec<String> = (0..200)
            .map(|i| format!("column_{i}_{} TEXT DEFAULT 'x'", "n".repeat(60)))
            .collect();
        format!("CREATE TABLE {name} ({})", columns.join(", "))
    }

    /// Adds `count` tables of `wide_table` (`w0`, `w1`, …) through `pool`,
    /// the host's own connection, not a task's.
    async fn add_wide_tables(pool: &SqlitePool, count: usize) {
        let tables: Vec<String> = (0..count).map(|i| wide_table(&format!("w{i}"))).collect();
        sqlx::raw_sql(&tables.join("; "))
            .execute(pool)
            .await
            .unwrap();
    }

    /// SQLite holds a database's whole schema in memory on each connection.
    /// Loading it, or loading it again after another connection changed
    /// it, is the host's doing and charged to no run: a run whose SQLite
    /// heap is smaller than the schema still queries the database.
    #[tokio::test]
    async fn the_schema_is_loaded_by_the_host_and_charged_to_no_run() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
        let own = SqlitePoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        sqlx::raw_sql("CREATE TABLE events (id INTEGER PRIMARY KEY)")
            .execute(&own)
            .await
            .unwrap();
        add_wide_tables(&own, 100).await;
        // A connection of its own, whose schema is not loaded yet.
        let task = SqlitePoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        let g = grants(&[("events", &[Select])]);
        let window = heap::Window::new(2 << 20);
        assert_eq!(
            call_in(&task, &g, "SELECT count(*) FROM events", &window).await,
            Ok(1)
        );
        // Another connection changes the schema: the next call loads it
        // again, before the guest's statement.
        sqlx::raw_sql(&wide_table("w_new"))
            .execute(&own)
            .await
            .unwrap();
        assert_eq!(
            call_in(&task, &g, "SELECT count(*) FROM events", &window).await,
            Ok(1)
        );
    }

    /// What a run's statements leave in SQLite's memory stays charged to
    /// the run after the call (here: the schema of the tables it creates),
    /// so that many calls of one run cannot together hold more than one.
    #[tokio::test]
    async fn a_runs_calls_share_one_heap_bound() {
        let pool = pool().await;
        let g = grants(&[("*", &[Select, Ddl])]);
        let window = heap::Window::new(2 << 20);
        let mut refused = None;
        for i in 0..200 {
            match call_in(&pool, &g, &wide_table(&format!("grown{i}")), &window).await {
                Ok(_) => {}
                Err(e) => {
                    refused = Some((i, e));
                    break;
                }
            }
        }
        let (at, error) = refused.expect("200 tables of schema fit in one 2 MiB run");
        assert!(at > 3, "refused at the call {at}: {error}");
        assert!(error.contains("HOUSEKEEPER_SQLITE_MEMORY"), "{error}");
        // Another run starts with its own bound; the connection serves it.
        let fresh = heap::Window::new(2 << 20);
        assert_eq!(
            call_in(&pool, &g, "SELECT count(*) FROM events", &fresh).await,
            Ok(1)
        );
    }

    /// Every form of `ALTER TABLE` works with `ddl` on its table, and not
    /// without it, also on a schema of a few megabytes, which SQLite reloads
    /// whole to finish each one.
    #[tokio::test]
    async fn alter_table_in_every_form_runs_with_its_grant() {
        let pool = pool().await;
        let g = grants(&[
            ("events", &[Select, Ddl]),
            ("renamed", &[Select, Ddl]),
            ("*", &[Select]),
        ]);
        for sql in [
            "ALTER TABLE events ADD COLUMN extra TEXT",
            "ALTER TABLE events RENAME COLUMN extra TO spare",
            "ALTER TABLE events DROP COLUMN spare",
            "ALTER TABLE events RENAME TO renamed",
            "ALTER TABLE renamed RENAME TO events",
        ] {
            assert_eq!(call(&pool, &g, sql).await, Ok(1), "{sql}");
        }
        assert_eq!(
            call(&pool, &g, "ALTER TABLE secrets ADD COLUMN x").await,
            Err("access denied: secrets ddl".into())
        );
        // Altering makes SQLite reload the whole schema, charged to the
        // run: within a run's bound while the schema may grow at all.
        add_wide_tables(&pool, 50).await;
        let window = heap::Window::new(8 << 20);
        assert_eq!(
            call_in(
                &pool,
                &g,
                "ALTER TABLE events ADD COLUMN more TEXT",
                &window
            )
            .await,
            Ok(1)
        );
    }

    /// A database whose schema already takes half of the run's SQLite heap
    /// or more may not grow through a task (SQLite holds it whole on every
    /// connection); it may shrink, and it may be read.
    #[tokio::test]
    async fn a_schema_past_half_the_heap_may_not_grow() {
        let pool = pool().await;
        add_wide_tables(&pool, 100).await;
        let g = grants(&[("*", &[Select, Ddl])]);
        let window = heap::Window::new(4 << 20);
        for sql in [
            "CREATE TABLE more (x)",
            "CREATE INDEX events_v ON events (v)",
            "ALTER TABLE events ADD COLUMN x",
        ] {
            let error = call_in(&pool, &g, sql, &window).await.unwrap_err();
            assert!(
                error.contains("schema") && error.contains("HOUSEKEEPER_SQLITE_MEMORY"),
                "{sql}: {error}"
            );
        }
        assert_eq!(
            call_in(&pool, &g, "SELECT count(*) FROM events", &window).await,
            Ok(1)
        );
        assert_eq!(call_in(&pool, &g, "DROP TABLE w0", &window).await, Ok(1));
        // With room for it, the same schema grows.
        let roomy = heap::Window::new(64 << 20);
        assert_eq!(
            call_in(&pool, &g, "CREATE TABLE more (x)", &roomy).await,
            Ok(1)
        );
    }

    async fn secrets(pool: &SqlitePool) -> Vec<(i64, String)> {
        sqlx::query_as("SELECT id, value FROM secrets")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn sqlite_itself_holds_a_statement_to_the_grant() {
        let pool = pool().await;
        let g = grants(&[("events", &[Select, Delete]), ("scratch", &[Ddl])]);
        let stopped: &[(&str, &str)] = &[
            ("SELECT * FROM secrets", "access denied: secrets select"),
            ("SELECT * FROM \"SECRETS\"", "access denied: secrets select"),
            (
                "SELECT (SELECT value FROM secrets) FROM events",
                "access denied: secrets select",
            ),
            (
                "WITH RECURSIVE r(x) AS (SELECT value FROM secrets) SELECT * FROM r",
                "access denied: secrets select",
            ),
            (
                "SELECT * FROM events WHERE v IN (SELECT value FROM main.secrets)",
                "access denied: secrets select",
            ),
            ("DELETE FROM secrets", "access denied: secrets"),
            (
                "DELETE FROM events WHERE id IN (SELECT id FROM secrets)",
                "access denied: secrets select",
            ),
            (
                "INSERT INTO events (id, v) VALUES (9, 'x')",
                "access denied: events insert",
            ),
            ("UPDATE events SET v = 'x'", "access denied: events update"),
            (
                "INSERT INTO secrets SELECT 2, 'x'",
                "access denied: secrets insert",
            ),
            (
                "SELECT load_extension('/tmp/evil.so')",
                "refused: function `load_extension`",
            ),
            (
                "SELECT sqlite_compileoption_used('x'), id FROM events",
                "refused: function",
            ),
            ("PRAGMA writable_schema = 1", "refused: PRAGMA"),
            ("PRAGMA table_info(secrets)", "refused: PRAGMA"),
            (
                "ATTACH DATABASE ':memory:' AS other",
                "refused: ATTACH/DETACH",
            ),
            ("DETACH DATABASE main", "refused"),
            ("CREATE TABLE x (id INTEGER)", "access denied: x ddl"),
            ("DROP TABLE secrets", "access denied: secrets ddl"),
            (
                "ALTER TABLE secrets ADD COLUMN y TEXT",
                "access denied: secrets ddl",
            ),
            (
                "CREATE INDEX s_value ON secrets (value)",
                "access denied: secrets ddl",
            ),
            ("CREATE TEMP TABLE t (x)", "refused"),
            ("CREATE VIEW v AS SELECT * FROM events", "refused: a view"),
            (
                "CREATE TRIGGER tr AFTER DELETE ON events BEGIN DELETE FROM secrets; END",
                "refused",
            ),
            ("COMMIT", "refused: transaction control"),
            ("SAVEPOINT s", "refused: transaction control"),
            ("ANALYZE secrets", "access denied"),
        ];
        let mut failures = Vec::new();
        for (sql, want) in stopped {
            match call(&pool, &g, sql).await {
                Err(got) if got.starts_with(want) => {}
                other => failures.push(format!("{sql}: {other:?}")),
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
        assert_eq!(secrets(&pool).await, vec![(1, "the-secret-row".to_owned())]);

        // What the grant allows still runs, with SQLite's own reads of its
        // schema while it prepares.
        for sql in [
            "SELECT id, lower(v), count(*) OVER () FROM events",
            "SELECT name FROM sqlite_master WHERE type = 'table'",
            "SELECT name FROM sqlite_schema",
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE v = 'a') RETURNING id",
            "CREATE TABLE scratch (id INTEGER PRIMARY KEY, v TEXT)",
            "CREATE INDEX scratch_v ON scratch (v)",
            "ALTER TABLE scratch ADD COLUMN w TEXT",
            "DROP INDEX scratch_v",
            "DROP TABLE scratch",
        ] {
            if let Err(e) = call(&pool, &g, sql).await {
                panic!("{sql}: {e}");
            }
        }
    }

    #[tokio::test]
    async fn the_authorizer_is_gone_after_every_call() {
        let pool = pool().await;
        let g = grants(&[("events", &[Select])]);
        assert!(call(&pool, &g, "SELECT * FROM secrets").await.is_err());
        assert!(call(&pool, &g, "SELECT * FROM events").await.is_ok());
        // The host's own statements on the same connection are not held to
        // the task's grant.
        assert_eq!(secrets(&pool).await.len(), 1);
        sqlx::raw_sql("PRAGMA table_info(secrets); BEGIN; COMMIT;")
            .execute(&pool)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_cached_statement_is_authorized_again() {
        let pool = pool().await;
        let wide = grants(&[("events", &[Select]), ("secrets", &[Select])]);
        let narrow = grants(&[("events", &[Select])]);
        let sql = "SELECT value FROM secrets";
        assert!(call(&pool, &wide, sql).await.is_ok());
        match call(&pool, &narrow, sql).await {
            Err(e) => assert!(e.contains("secrets"), "{e}"),
            Ok(_) => panic!("a statement prepared under another grant ran"),
        }
    }
}
