//! `housekeeper:task/sql`: SQL on the connection a task's manifest grants.
//!
//! Every statement passes the [`guard`] first. Each call then runs as its
//! own transaction on a pooled connection, with `statement_timeout` and
//! `lock_timeout` set to what is left of the run's deadline (at most
//! [`SqlLimits::call_timeout`]). When that limit is the run's deadline, a
//! cancelled statement ends the run as `timeout`; otherwise the guest gets
//! `sql-error::timeout`. Query results are capped in rows and bytes. In a
//! dry-run every transaction is rolled back and `VACUUM`/`ANALYZE` are
//! recorded in the output instead of run.

pub mod connections;
mod functions;
pub mod guard;
pub mod heap;
mod host;
mod postgres;
pub mod roles;
mod sqlite;
mod structured;
mod temp_files;

use super::output::{Level, Output};
use crate::bindings::housekeeper::task::sql as wit;
use crate::capabilities::budget::DeadlineExceeded;
use crate::capabilities::filesystem::WriteBudget;
use crate::manifest::DatabaseGrant;
use connections::Pool;
pub use connections::{Connection, ConnectionOptions, Connections};
use guard::{Checked, Denial, Grants, Kind};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{HasSelf, Linker};

/// Least time [`SqlCapability::flush`] is given, even past the run's
/// deadline (a run that timed out may have committed asynchronously).
pub const FLUSH_GRACE: Duration = Duration::from_secs(5);

/// Default of `HOUSEKEEPER_SQLITE_MEMORY`.
pub const DEFAULT_SQLITE_MEMORY: usize = 64 << 20;

/// Caps on what one SQL call may take.
#[derive(Debug, Clone)]
pub struct SqlLimits {
    /// Most rows a query may return.
    pub max_rows: usize,
    /// Most bytes (roughly: the values' sizes) a query may return.
    pub max_bytes: usize,
    /// Longest one call may run, even with more of the run's deadline left.
    pub call_timeout: Duration,
    /// Longest statement the guard parses; a longer one is refused unparsed.
    pub max_statement_bytes: usize,
    /// Most SQLite heap one call's statements may hold at once.
    pub sqlite_memory: usize,
    /// For tests only, and set by nothing else (no flag, no variable):
    /// statements reach the database unparsed, so that a test can show what
    /// the database's own privileges stop on their own.
    #[doc(hidden)]
    pub skip_parse: bool,
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits {
            max_rows: 100_000,
            max_bytes: 32 << 20,
            call_timeout: Duration::from_secs(15 * 60),
            max_statement_bytes: guard::DEFAULT_MAX_STATEMENT_BYTES,
            sqlite_memory: DEFAULT_SQLITE_MEMORY,
            skip_parse: false,
        }
    }
}

/// What a run may reach: its grant, resolved against the host's
/// connections.
struct Access {
    connection: Connection,
    grants: Grants,
    /// The grant as PostgreSQL privileges of the task's role; `Err` says
    /// why no role can hold it.
    wanted: Result<roles::Wanted, String>,
}

pub struct SqlCapability {
    task: String,
    /// `Err` says why the run has no database.
    access: Result<Access, String>,
    /// The task's PostgreSQL role once checked this run, or why its SQL may
    /// not run.
    role: Option<Result<String, String>>,
    dry_run: bool,
    deadline: Instant,
    output: Output,
    limits: SqlLimits,
    /// The run's write budget (`limits.write_bytes`), which SQLite's
    /// temporary files are charged to.
    writes: Option<Arc<WriteBudget>>,
    /// What the run's statements make SQLite hold (`HOUSEKEEPER_SQLITE_MEMORY`).
    heap: Arc<heap::Window>,
    /// A call of the run may have committed without waiting for the disk
    /// (`execute-async-commit`): [`SqlCapability::flush`] waits for it.
    unflushed: bool,
    /// Server processes of asynchronous calls not seen to end (see
    /// `postgres::Session::in_flight`).
    in_flight: std::sync::Mutex<Vec<i32>>,
}

/// The index of the statement of a call that is running, so that a call
/// that fails names the statement that failed.
#[derive(Debug, Default)]
pub(crate) struct Reached(std::sync::atomic::AtomicUsize);

impl Reached {
    pub fn at(&self, index: usize) {
        self.0.store(index, std::sync::atomic::Ordering::Relaxed);
    }

    /// The statements up to the one running, which is then the last.
    fn upto<'a>(&self, statements: &'a [Prepared]) -> &'a [Prepared] {
        let index = self.0.load(std::sync::atomic::Ordering::Relaxed);
        statements.get(..=index).unwrap_or(statements)
    }
}

/// Whether a call's commit waits for its WAL to reach disk (PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Commit {
    Wait,
    Async,
}

/// One statement that passed the guard.
pub(crate) struct Prepared {
    pub sql: String,
    pub params: Vec<wit::Value>,
    pub checked: Checked,
}

/// A statement's result.
pub(crate) enum Outcome {
    Rows(wit::Rows),
    Changed(u64),
}

/// Why a call failed: an error the guest sees, or the run's deadline.
pub(crate) enum Failure {
    Guest(wit::SqlError),
    Deadline,
}

impl From<wit::SqlError> for Failure {
    fn from(e: wit::SqlError) -> Self {
        Failure::Guest(e)
    }
}

/// How long a call may take, and whether that limit is the run's deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub limit: Duration,
    pub is_deadline: bool,
}

impl Budget {
    /// The time-out as PostgreSQL settings want it, in milliseconds.
    pub fn millis(&self) -> String {
        self.limit.as_millis().max(1).to_string()
    }

    pub fn expired(&self) -> Failure {
        if self.is_deadline {
            Failure::Deadline
        } else {
            Failure::Guest(wit::SqlError::Timeout)
        }
    }

    /// `call`, given the budget. PostgreSQL enforces the budget itself (its
    /// statement timeout) and has a short grace to say so, which keeps its
    /// session usable; this also bounds waiting for a connection and a
    /// database that stops answering. SQLite has no timeout of its own:
    /// its call ends at the budget, and its statement is interrupted then.
    pub async fn bound<T>(
        &self,
        call: impl Future<Output = Result<T, Failure>>,
        database_enforces: bool,
    ) -> Result<T, Failure> {
        let grace = if database_enforces {
            Duration::from_millis(250)
        } else {
            Duration::ZERO
        };
        tokio::time::timeout(self.limit + grace, call)
            .await
            .unwrap_or_else(|_| Err(self.expired()))
    }
}

impl SqlCapability {
    pub fn new(
        task: &str,
        grant: Option<&DatabaseGrant>,
        connections: &Connections,
        dry_run: bool,
        deadline: Instant,
        output: Output,
        limits: SqlLimits,
    ) -> Self {
        let access = match grant {
            None => Err("the manifest grants no database (grants.database)".to_owned()),
            Some(grant) => match connections.get(&grant.connection) {
                None => Err(format!(
                    "connection `{}` is not configured on this host (set {})",
                    grant.connection,
                    if grant.connection == "main" {
                        "DATABASE_URL".to_owned()
                    } else {
                        format!("HOUSEKEEPER_DB_{}_URL", grant.connection.to_uppercase())
                    }
                )),
                Some(connection) => Ok(Access {
                    connection: connection.clone(),
                    grants: Grants::new(&grant.tables),
                    wanted: roles::Wanted::new(&grant.tables),
                }),
            },
        };
        SqlCapability {
            task: task.to_owned(),
            access,
            role: None,
            dry_run,
            deadline,
            output,
            heap: heap::Window::new(limits.sqlite_memory),
            unflushed: false,
            in_flight: std::sync::Mutex::new(Vec::new()),
            limits,
            writes: None,
        }
    }

    /// Charges SQLite's temporary files to the run's write budget.
    pub(crate) fn charge_writes_to(&mut self, budget: Arc<WriteBudget>) {
        self.writes = Some(budget);
    }

    fn access(&self) -> Result<&Access, wit::SqlError> {
        self.access
            .as_ref()
            .map_err(|reason| wit::SqlError::Refused(reason.clone()))
    }

    fn budget(&self) -> Result<Budget, Failure> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) {
            return Err(Failure::Deadline);
        }
        Ok(if left <= self.limits.call_timeout {
            Budget {
                limit: left,
                is_deadline: true,
            }
        } else {
            Budget {
                limit: self.limits.call_timeout,
                is_deadline: false,
            }
        })
    }

    /// Passes `sql` through the guard, recording a denial in the output.
    /// Parsing runs on a blocking thread and counts against the call's
    /// budget: a statement that takes longer to parse than the run has left
    /// ends as a time-out, and the run's deadline still ends the run.
    async fn check(&self, sql: &str, params: Vec<wit::Value>) -> Result<Prepared, wit::SqlError> {
        let access = self.access()?;
        if self.limits.skip_parse {
            return Ok(Prepared {
                sql: sql.to_owned(),
                params,
                checked: Checked {
                    kind: Kind::Change,
                    verb: crate::manifest::SqlVerb::Select,
                },
            });
        }
        let budget = self.budget().map_err(|_| wit::SqlError::Timeout)?;
        let (dialect, grants, cap) = (
            access.connection.dialect(),
            access.grants.clone(),
            self.limits.max_statement_bytes,
        );
        let text = sql.to_owned();
        let parse =
            tokio::task::spawn_blocking(move || guard::check_bounded(dialect, &text, &grants, cap));
        let verdict = match tokio::time::timeout(budget.limit, parse).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(_)) => Err(Denial::Refused("the statement could not be checked".into())),
            Err(_) => {
                self.output.log(
                    Level::Warn,
                    &format!("sql timed out while being checked: {}", excerpt(sql)),
                );
                return Err(wit::SqlError::Timeout);
            }
        };
        match verdict {
            Ok(checked) => Ok(Prepared {
                sql: sql.to_owned(),
                params,
                checked,
            }),
            Err(denial) => {
                self.output
                    .log(Level::Warn, &format!("sql {denial}: {}", excerpt(sql)));
                Err(match denial {
                    Denial::AccessDenied { table, verb } => {
                        wit::SqlError::AccessDenied(wit::Denial {
                            table,
                            verb: verb.as_str().to_owned(),
                        })
                    }
                    Denial::Refused(reason) => wit::SqlError::Refused(reason),
                })
            }
        }
    }

    async fn run(
        &mut self,
        statements: Vec<Prepared>,
        want_rows: bool,
        commit: Commit,
    ) -> wasmtime::Result<Result<Vec<Outcome>, wit::SqlError>> {
        let budget = match self.budget() {
            Ok(b) => b,
            Err(f) => return self.fail(f, &statements),
        };
        let (connection, grants) = match self.access() {
            Ok(a) => (a.connection.clone(), a.grants.clone()),
            Err(e) => return Ok(Err(e)),
        };
        let role = match &connection.pool {
            Pool::Postgres(pool) => match self.task_role(&connection, pool, budget).await {
                Ok(role) => role,
                Err(failure) => return self.fail(failure, &statements),
            },
            Pool::Sqlite(_) => String::new(),
        };
        let limits = self.limits.clone();
        let async_commit = commit == Commit::Async && matches!(connection.pool, Pool::Postgres(_));
        // Marked before the call: one dropped at its deadline may still have
        // committed.
        self.unflushed |= async_commit && !self.dry_run;
        let reached = Reached::default();
        let call = async {
            match &connection.pool {
                Pool::Postgres(pool) => {
                    let session = postgres::Session {
                        role: &role,
                        dry_run: self.dry_run,
                        async_commit,
                        budget,
                        limits: &limits,
                        reached: &reached,
                        in_flight: &self.in_flight,
                    };
                    postgres::run(pool, &statements, want_rows, session).await
                }
                Pool::Sqlite(pool) => {
                    sqlite::run(
                        pool,
                        &statements,
                        want_rows,
                        self.dry_run,
                        &limits,
                        &grants,
                        self.writes.as_ref(),
                        &self.heap,
                        &reached,
                    )
                    .await
                }
            }
        };
        let enforces = matches!(connection.pool, Pool::Postgres(_));
        match budget.bound(call, enforces).await {
            Ok(outcomes) => {
                self.record(&statements, &outcomes);
                Ok(Ok(outcomes))
            }
            Err(failure) => self.fail(failure, reached.upto(&statements)),
        }
    }

    /// The task's PostgreSQL role, checked (and where the host may, brought
    /// in line with the grant) once per run, before its first statement.
    async fn task_role(
        &mut self,
        connection: &Connection,
        pool: &sqlx::PgPool,
        budget: Budget,
    ) -> Result<String, Failure> {
        if let Some(known) = &self.role {
            return known
                .clone()
                .map_err(|reason| Failure::Guest(wit::SqlError::Refused(reason)));
        }
        let wanted = match self.access()?.wanted.clone() {
            Ok(wanted) => wanted,
            Err(reason) => {
                self.role = Some(Err(reason.clone()));
                return Err(Failure::Guest(wit::SqlError::Refused(reason)));
            }
        };
        let ensure = async {
            let _one_at_a_time = connection.roles.lock().await;
            let mut conn = pool.acquire().await?;
            roles::ensure(&mut conn, &self.task, &wanted, connection.unsafe_superuser).await
        };
        let outcome = match tokio::time::timeout(budget.limit, ensure).await {
            Err(_) => return Err(budget.expired()),
            Ok(Err(e)) => return Err(postgres::error(e, budget)),
            Ok(Ok(outcome)) => outcome,
        };
        match outcome {
            Ok(ready) => {
                for sql in &ready.applied {
                    self.output
                        .log(Level::Info, &format!("sql role `{}`: {sql}", ready.role));
                }
                self.role = Some(Ok(ready.role.clone()));
                Ok(ready.role)
            }
            Err(reason) => {
                self.role = Some(Err(reason.clone()));
                Err(Failure::Guest(wit::SqlError::Refused(reason)))
            }
        }
    }

    /// When a call of the run committed asynchronously, waits until those
    /// commits are on disk, and checks that they are. A transaction that
    /// wrote no WAL commits without waiting, whatever `synchronous_commit`
    /// says (taking an ID is not enough), so the host's transaction writes
    /// one record, a transactional logical message (prefix `housekeeper`,
    /// as `pg_logical_emit_message` writes it), and commits with
    /// `synchronous_commit = on`: its commit waits for the WAL up to it,
    /// every earlier commit's included. Then it asks the server how far the
    /// WAL is flushed. The runtime calls this however the run ended, with
    /// what is left of the run's deadline, or [`FLUSH_GRACE`] when that is
    /// less; an error says why the commits are not confirmed.
    pub async fn flush(&mut self) -> Result<(), String> {
        if !std::mem::take(&mut self.unflushed) {
            return Ok(());
        }
        let Ok(Access {
            connection:
                Connection {
                    pool: Pool::Postgres(pool),
                    ..
                },
            ..
        }) = &self.access
        else {
            return Ok(());
        };
        let cut_off =
            std::mem::take(&mut *self.in_flight.lock().unwrap_or_else(|e| e.into_inner()));
        let output = &self.output;
        let wait = async {
            // A call cut off at the deadline may still be ending on the
            // server (a deferred constraint checked at `COMMIT`, say): it is
            // cancelled, and its process waited for, so that whatever it
            // commits comes before the host's record.
            for pid in cut_off {
                sqlx::query("SELECT pg_cancel_backend($1)")
                    .bind(pid)
                    .execute(pool)
                    .await?;
                loop {
                    let running: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
                    )
                    .bind(pid)
                    .fetch_one(pool)
                    .await?;
                    if !running {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                output.log(
                    Level::Warn,
                    "sql: a call cut off at the run's deadline was still running on the server; it was cancelled and its session waited for",
                );
            }
            let mut transaction = pool.begin().await?;
            let record: String = sqlx::query_scalar(
                "SELECT pg_logical_emit_message(true, 'housekeeper', 'asynchronous commits of a run')::text
                 FROM (SELECT set_config('synchronous_commit', 'on', true)) AS waits",
            )
            .fetch_one(&mut *transaction)
            .await?;
            transaction.commit().await?;
            let (flushed, covered): (String, bool) = sqlx::query_as(
                "SELECT pg_current_wal_flush_lsn()::text, pg_current_wal_flush_lsn() >= $1::pg_lsn",
            )
            .bind(&record)
            .fetch_one(pool)
            .await?;
            Ok::<_, sqlx::Error>((record, flushed, covered))
        };
        let unconfirmed = "the run's asynchronous commits were not confirmed on disk";
        let limit = self
            .deadline
            .saturating_duration_since(Instant::now())
            .max(FLUSH_GRACE);
        let outcome = match tokio::time::timeout(limit, wait).await {
            Err(_) => Err(format!(
                "{unconfirmed}: the database did not answer within {}",
                humantime::format_duration(limit)
            )),
            Ok(Err(e)) => Err(format!("{unconfirmed}: {e}")),
            Ok(Ok((record, flushed, false))) => Err(format!(
                "{unconfirmed}: the WAL is flushed to {flushed}, short of {record}"
            )),
            Ok(Ok((record, flushed, true))) => Ok((record, flushed)),
        };
        match outcome {
            Ok((record, flushed)) => {
                self.output.log(
                    Level::Info,
                    &format!(
                        "sql: the run's asynchronous commits are on disk (WAL flushed to {flushed}, past the host's record at {record})"
                    ),
                );
                Ok(())
            }
            Err(message) => {
                self.output.log(Level::Error, &message);
                Err(message)
            }
        }
    }

    fn fail<T>(
        &self,
        failure: Failure,
        statements: &[Prepared],
    ) -> wasmtime::Result<Result<T, wit::SqlError>> {
        let sql = statements
            .last()
            .map(|s| excerpt(&s.sql))
            .unwrap_or_default();
        match failure {
            Failure::Deadline => {
                self.output.log(
                    Level::Error,
                    &format!("sql cancelled at the run's deadline: {sql}"),
                );
                Err(DeadlineExceeded.into())
            }
            Failure::Guest(error) => {
                let text = match &error {
                    wit::SqlError::Timeout => "timed out".to_owned(),
                    wit::SqlError::Database(e) => format!("failed ({}): {}", e.code, e.message),
                    wit::SqlError::Refused(r) => format!("refused: {r}"),
                    wit::SqlError::AccessDenied(d) => {
                        format!("access denied: `{}` is not granted `{}`", d.table, d.verb)
                    }
                };
                self.output.log(Level::Warn, &format!("sql {text}: {sql}"));
                Ok(Err(error))
            }
        }
    }

    /// Writes every statement that changed (or in a dry-run, would have
    /// changed) something into the run's output.
    fn record(&self, statements: &[Prepared], outcomes: &[Outcome]) {
        for (s, outcome) in statements.iter().zip(outcomes) {
            if s.checked.kind == Kind::Read {
                continue;
            }
            let rows = changed(outcome);
            let line = if self.dry_run {
                format!(
                    "sql (dry-run, rolled back): {} → would change {rows} rows",
                    excerpt(&s.sql)
                )
            } else {
                format!("sql: {} → {rows} rows", excerpt(&s.sql))
            };
            self.output.log(Level::Info, &line);
        }
    }
}

/// The statement on one line, shortened for the output.
fn excerpt(sql: &str) -> String {
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &one_line[..at]),
        None => one_line,
    }
}

/// Adds up the size of a row's values, for the byte cap.
pub(crate) fn value_size(value: &wit::Value) -> usize {
    16 + match value {
        wit::Value::Text(s) | wit::Value::Json(s) => s.len(),
        wit::Value::Bytes(b) => b.len(),
        _ => 0,
    }
}

/// Why reading a result stopped early.
pub(crate) enum Collect {
    TooLarge,
    Failed(Failure),
}

/// Reads a result stream into rows, stopping at the row and byte caps.
pub(crate) async fn collect<R: sqlx::Row>(
    mut stream: impl futures_util::Stream<Item = Result<R, sqlx::Error>> + Unpin,
    values: impl Fn(&R) -> Result<Vec<wit::Value>, Failure>,
    error: impl Fn(sqlx::Error) -> Failure,
    limits: &SqlLimits,
) -> Result<wit::Rows, Collect> {
    use futures_util::TryStreamExt;
    use sqlx::Column;
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = stream
        .try_next()
        .await
        .map_err(|e| Collect::Failed(error(e)))?
    {
        if columns.is_empty() {
            columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
        }
        let values = values(&row).map_err(Collect::Failed)?;
        bytes += values.iter().map(value_size).sum::<usize>();
        rows.push(values);
        if rows.len() > limits.max_rows || bytes > limits.max_bytes {
            return Err(Collect::TooLarge);
        }
    }
    Ok(wit::Rows { columns, rows })
}

/// Rows a statement changed; for a query, the rows it returned.
fn changed(outcome: &Outcome) -> u64 {
    match outcome {
        Outcome::Changed(n) => *n,
        Outcome::Rows(r) => r.rows.len() as u64,
    }
}

pub(crate) fn too_large(limits: &SqlLimits) -> wit::SqlError {
    wit::SqlError::Refused(format!(
        "the result is larger than {} rows or {} bytes; select fewer columns or page with LIMIT",
        limits.max_rows, limits.max_bytes
    ))
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut SqlCapability,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<SqlCapability>>(linker, get)
}
