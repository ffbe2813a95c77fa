//! The host's own state: run history, per-task toggles and the per-task
//! summary. All of the host's SQL lives here, for SQLite (embedded default)
//! and PostgreSQL; the schema is in `migrations/`.
//!
//! Queries are written once and run on either pool: `on_pool!` expands the
//! same sqlx code for each backend. On PostgreSQL, the reference service's
//! own tables are taken over before the migrations run (`adopt`).
//!
//! On PostgreSQL the store keeps no state in the database session, so that
//! a pooler in transaction mode (PgBouncer's `pool_mode = transaction`),
//! which may give each transaction another server session, sits in between
//! safely: every statement runs inside an explicit transaction (`in_tx!`,
//! or a `begin` of its own), is sent unnamed ([`query`]) rather than as a
//! prepared statement cached per connection, and the migrations take a
//! transaction-scoped lock instead of a session one (`migrate`).

pub mod adopt;
mod migrate;

use crate::model::{RunStatus, Trigger};
use adopt::{AdoptOptions, Finding};
use anyhow::Context as _;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Serialize;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::query::{Query, QueryScalar};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// How the store sends a statement to a backend.
trait Statements: sqlx::Database + sqlx::database::HasStatementCache {
    /// Whether a statement is prepared once per connection and kept. On
    /// PostgreSQL it is not: behind a pooler in transaction mode the next
    /// transaction may run on another server session, where a statement
    /// prepared on this one does not exist (or another client's of the
    /// same name does). An unnamed statement is parsed in the transaction
    /// that runs it. SQLite is embedded and keeps its cache.
    const PERSISTENT: bool;
}

impl Statements for sqlx::Postgres {
    const PERSISTENT: bool = false;
}

impl Statements for sqlx::Sqlite {
    const PERSISTENT: bool = true;
}

/// `sqlx::query`, sent as the backend's [`Statements`] say.
fn query<'q, DB>(sql: &'q str) -> Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: Statements,
{
    sqlx::query(sql).persistent(DB::PERSISTENT)
}

/// `sqlx::query_scalar`, sent as the backend's [`Statements`] say.
fn query_scalar<'q, DB, O>(
    sql: &'q str,
) -> QueryScalar<'q, DB, O, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: Statements,
    (O,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    sqlx::query_scalar(sql).persistent(DB::PERSISTENT)
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// `$body` with `$pool` the store's pool, for a body that begins its own
/// transaction. A statement run on a PostgreSQL pool directly is outside
/// any transaction, which a pooler in transaction mode does not keep on
/// one server session: use `in_tx!` for those.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// `$body` with `$conn` a connection of the store's: on PostgreSQL inside
/// a transaction, committed when `$body` is done (a pooler in transaction
/// mode keeps one server session for it, where the parse and the execution
/// of an unnamed statement may otherwise land on two); on SQLite, as it
/// comes from the pool. `$body` uses it as `&mut *$conn`; an early return
/// or an error rolls back.
macro_rules! in_tx {
    ($store:expr, $conn:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite(pool) => {
                let mut connection = pool.acquire().await?;
                let $conn = &mut *connection;
                $body
            }
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let $conn = &mut *tx;
                let out = $body;
                tx.commit().await?;
                out
            }
        }
    };
}

mod lease;
mod replica;
mod retry;
pub use lease::{Claim, Holder, Lease, Reaped, Renewal, ReplicaRow, STARTUP_WINDOW};
pub use retry::PendingRetry;

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    replica: String,
    lease: Duration,
}

/// How the store's connection pool behaves.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub pool_max: u32,
    /// How long a query waits for a free connection.
    pub acquire_timeout: Duration,
    /// How long a running run's lease lasts unless its replica renews it.
    pub lease: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            pool_max: 10,
            acquire_timeout: Duration::from_secs(30),
            lease: Duration::from_secs(15),
        }
    }
}

/// A run about to start.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub task_name: &'a str,
    pub triggered_by: Trigger,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub dry_run: bool,
    pub component_hash: Option<&'a str>,
    /// Whether the task's overlap policy keeps other runs of it from
    /// running at the same time (anything but `allow`).
    pub exclusive: bool,
    /// Which attempt of the fire this is: 0, then 1 for the first retry.
    pub attempt: u32,
}

/// A row of `housekeeper_runs`.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub task_name: String,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub status: RunStatus,
    pub duration_ms: Option<i64>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub triggered_by: Trigger,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub component_hash: Option<String>,
    pub dry_run: bool,
    pub metrics: Option<serde_json::Value>,
    pub fuel_used: Option<i64>,
    pub replica: String,
    pub heartbeat_at: Option<DateTime<Utc>>,
}

/// Lifetime totals of one task, from the maintained summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskStats {
    pub task_name: String,
    pub total_runs: i64,
    pub success_count: i64,
    pub error_count: i64,
    pub skipped_count: i64,
    pub avg_duration_ms: Option<f64>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_status: Option<RunStatus>,
    pub last_success_at: Option<DateTime<Utc>>,
}

/// Persisted per-task settings (`housekeeper_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSettings {
    pub enabled: bool,
    pub schedule: Option<String>,
    pub last_modified_at: DateTime<Utc>,
}

const RUN_COLUMNS: &str = "id, task_name, started_at, completed_at, status, duration_ms, output, error, \
     triggered_by, scheduled_for, component_hash, dry_run, CAST(metrics AS TEXT) AS metrics, fuel_used, \
     replica, heartbeat_at";

impl Store {
    /// Opens (creating if needed) the store at `url` and applies migrations.
    /// `sqlite:PATH` or `postgres://…`. `replica` names this process in the
    /// rows it writes. The reference service's tables, if any, are taken
    /// over with old `TIMESTAMP` values read in UTC.
    pub async fn open(url: &str, replica: &str, options: &StoreOptions) -> anyhow::Result<Self> {
        Self::open_with(url, replica, options, &AdoptOptions::default()).await
    }

    /// [`Store::open`], taking over the reference service's tables (on
    /// PostgreSQL) as `adoption` says.
    pub async fn open_with(
        url: &str,
        replica: &str,
        options: &StoreOptions,
        adoption: &AdoptOptions,
    ) -> anyhow::Result<Self> {
        let pool_max = options.pool_max.max(1);
        let backend = if is_postgres(url) {
            let pool = connect_postgres(url, options).await?;
            if let Finding::Reference(plan) =
                migrate::run(&pool, &POSTGRES_MIGRATIONS, adoption).await?
            {
                tracing::info!(
                    runs = plan.runs,
                    tasks = plan.run_tasks,
                    disabled = plan.disabled.len(),
                    timezone = plan.timezone.name(),
                    "took over the reference service's tables"
                );
            }
            Backend::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)
                .context("invalid SQLite URL")?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            // Switching to WAL needs the database to itself: do it on one
            // connection before the pool opens several at once.
            use sqlx::Connection as _;
            sqlx::sqlite::SqliteConnection::connect_with(&connect)
                .await
                .context("cannot open the SQLite database")?
                .close()
                .await?;
            // Connections are opened up front and kept: an embedded
            // database has no reason to recycle them.
            let pool = SqlitePoolOptions::new()
                .max_connections(pool_max)
                .min_connections(pool_max)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await
                .context("cannot open the SQLite database")?;
            SQLITE_MIGRATIONS
                .run(&pool)
                .await
                .context("cannot apply SQLite migrations")?;
            Backend::Sqlite(pool)
        } else {
            anyhow::bail!("unsupported database URL: expected sqlite:PATH or postgres://…");
        };
        Ok(Store {
            backend,
            replica: replica.to_owned(),
            lease: options.lease,
        })
    }

    /// What taking over the reference service's tables at `url` would do,
    /// changing nothing.
    pub async fn inspect_reference(
        url: &str,
        options: &StoreOptions,
        adoption: &AdoptOptions,
    ) -> anyhow::Result<Finding> {
        let pool = connect_postgres(url, options).await?;
        let finding = adopt::inspect_only(&pool, adoption).await;
        pool.close().await;
        Ok(finding?)
    }

    /// Takes over the reference service's tables at `url` now, if they are
    /// there and housekeeper's migrations are not, and says what it found.
    pub async fn adopt_reference(
        url: &str,
        options: &StoreOptions,
        adoption: &AdoptOptions,
    ) -> anyhow::Result<Finding> {
        let pool = connect_postgres(url, options).await?;
        let finding = adopt::adopt(&pool, adoption).await;
        pool.close().await;
        Ok(finding?)
    }

    /// A store over an existing SQLite pool with migrations applied
    /// (`#[sqlx::test]`).
    pub fn from_sqlite(pool: SqlitePool, replica: &str) -> Self {
        Store {
            backend: Backend::Sqlite(pool),
            replica: replica.to_owned(),
            lease: StoreOptions::default().lease,
        }
    }

    /// A store over an existing PostgreSQL pool with migrations applied.
    pub fn from_postgres(pool: PgPool, replica: &str) -> Self {
        Store {
            backend: Backend::Postgres(pool),
            replica: replica.to_owned(),
            lease: StoreOptions::default().lease,
        }
    }

    /// How a transaction that writes starts: on SQLite it takes the write
    /// lock at once, so that a transaction that reads first never fails
    /// with "database is locked" on upgrading to a writer.
    fn begin_write(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "BEGIN IMMEDIATE",
            Backend::Postgres(_) => "BEGIN",
        }
    }

    /// Whether other replicas may share this store: PostgreSQL. SQLite
    /// serves one process (see [`lock_single_replica`]).
    pub fn shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The same store with leases of `lease`.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    pub fn sqlite_migrator() -> &'static sqlx::migrate::Migrator {
        &SQLITE_MIGRATIONS
    }

    pub fn postgres_migrator() -> &'static sqlx::migrate::Migrator {
        &POSTGRES_MIGRATIONS
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> anyhow::Result<()> {
        // One simple-protocol message: no transaction needed around it.
        on_pool!(self, pool => sqlx::raw_sql("SELECT 1").execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// Ends run `id` if it is still running. With `epoch`, only while the
    /// run's lease has that epoch, and the lease goes with it: a replica
    /// whose lease was reaped cannot overwrite what the reaper recorded.
    /// Returns whether the run was ended by this call.
    async fn complete(&self, id: i64, epoch: Option<i64>, c: Completion) -> anyhow::Result<bool> {
        let metrics_param = match self.backend {
            Backend::Postgres(_) => "CAST($6 AS JSONB)",
            Backend::Sqlite(_) => "$6",
        };
        let update = format!(
            "UPDATE housekeeper_runs SET status = $1, completed_at = $2, duration_ms = $3, output = $4, \
             error = $5, metrics = {metrics_param}, fuel_used = $7, \
             component_hash = COALESCE($8, component_hash), heartbeat_at = $2 \
             WHERE id = $9 AND status = 'running' RETURNING task_name"
        );
        let success = c.status == RunStatus::Success;
        let failed = !success;
        let stats = "INSERT INTO housekeeper_task_stats \
             (task_name, total_runs, success_count, error_count, total_duration_ms, last_run_at, last_status, last_success_at) \
             VALUES ($1, 1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (task_name) DO UPDATE SET \
               total_runs = housekeeper_task_stats.total_runs + 1, \
               success_count = housekeeper_task_stats.success_count + excluded.success_count, \
               error_count = housekeeper_task_stats.error_count + excluded.error_count, \
               total_duration_ms = housekeeper_task_stats.total_duration_ms + excluded.total_duration_ms, \
               last_run_at = excluded.last_run_at, \
               last_status = excluded.last_status, \
               last_success_at = COALESCE(excluded.last_success_at, housekeeper_task_stats.last_success_at)";
        let ended = on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            if let Some(epoch) = epoch {
                let released = query("DELETE FROM housekeeper_leases WHERE run_id = $1 AND epoch = $2")
                    .bind(id)
                    .bind(epoch)
                    .execute(&mut *tx)
                    .await
                    .context("cannot release the run's lease")?
                    .rows_affected();
                if released == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
            }
            let task: Option<String> = query_scalar(&update)
                .bind(c.status.as_str())
                .bind(c.completed_at)
                .bind(c.duration_ms)
                .bind(&c.output)
                .bind(&c.error)
                .bind(&c.metrics)
                .bind(c.fuel_used)
                .bind(&c.component_hash)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .context("cannot record the end of a run")?;
            // A row that is no longer running was already ended (e.g. marked
            // interrupted by recovery): keep what it says.
            let ended = task.is_some();
            if let Some(task) = task {
                query(stats)
                    .bind(&task)
                    .bind(i64::from(success))
                    .bind(i64::from(failed))
                    .bind(c.duration_ms)
                    .bind(c.completed_at)
                    .bind(c.status.as_str())
                    .bind(success.then_some(c.completed_at))
                    .execute(&mut *tx)
                    .await
                    .context("cannot update the task summary")?;
            }
            tx.commit().await?;
            ended
        });
        Ok(ended)
    }

    /// Records a fire that was not run, with the reason. A scheduled
    /// occurrence is recorded once; returns `None` if it already was.
    pub async fn record_skipped(
        &self,
        task_name: &str,
        triggered_by: Trigger,
        scheduled_for: Option<DateTime<Utc>>,
        reason: &str,
    ) -> anyhow::Result<Option<i64>> {
        let now = self.db_now().await?;
        let sql = "INSERT INTO housekeeper_runs \
                   (task_name, started_at, completed_at, status, duration_ms, error, triggered_by, scheduled_for, replica) \
                   VALUES ($1, $2, $2, 'skipped', 0, $3, $4, $5, $6) \
                   ON CONFLICT (task_name, scheduled_for) WHERE triggered_by = 'schedule' DO NOTHING \
                   RETURNING id";
        let stats = "INSERT INTO housekeeper_task_stats (task_name, skipped_count) VALUES ($1, 1) \
                     ON CONFLICT (task_name) DO UPDATE SET skipped_count = housekeeper_task_stats.skipped_count + 1";
        let id = on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            let id: Option<i64> = query_scalar(sql)
                .bind(task_name)
                .bind(now)
                .bind(reason)
                .bind(triggered_by.as_str())
                .bind(scheduled_for)
                .bind(&self.replica)
                .fetch_optional(&mut *tx)
                .await
                .context("cannot record a skipped run")?;
            if id.is_some() {
                query(stats).bind(task_name).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            id
        });
        Ok(id)
    }

    /// The most recent runs of `task`, newest first.
    pub async fn runs(&self, task: &str, limit: i64) -> anyhow::Result<Vec<RunRecord>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM housekeeper_runs WHERE task_name = $1 \
             ORDER BY started_at DESC, id DESC LIMIT $2"
        );
        in_tx!(self, conn => {
            let rows = query(&sql).bind(task).bind(limit).fetch_all(&mut *conn).await?;
            rows.iter().map(run_record).collect()
        })
    }

    pub async fn runs_page(
        &self,
        task: &str,
        limit: i64,
        offset: i64,
    ) -> anyhow::Result<(Vec<RunRecord>, i64)> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM housekeeper_runs WHERE task_name = $1 \
             ORDER BY started_at DESC, id DESC LIMIT $2 OFFSET $3"
        );
        let count = "SELECT COUNT(*) FROM housekeeper_runs WHERE task_name = $1";
        in_tx!(self, conn => {
            let rows = query(&sql).bind(task).bind(limit).bind(offset).fetch_all(&mut *conn).await?;
            let total: i64 = query_scalar(count).bind(task).fetch_one(&mut *conn).await?;
            Ok((rows.iter().map(run_record).collect::<anyhow::Result<Vec<_>>>()?, total))
        })
    }

    pub async fn run(&self, id: i64) -> anyhow::Result<Option<RunRecord>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM housekeeper_runs WHERE id = $1");
        in_tx!(self, conn => {
            let row = query(&sql).bind(id).fetch_optional(&mut *conn).await?;
            row.as_ref().map(run_record).transpose()
        })
    }

    /// The summary of every task that has run.
    pub async fn stats(&self) -> anyhow::Result<HashMap<String, TaskStats>> {
        let sql = "SELECT task_name, total_runs, success_count, error_count, skipped_count, total_duration_ms, \
                   last_run_at, last_status, last_success_at FROM housekeeper_task_stats";
        in_tx!(self, conn => {
            let rows = query(sql).fetch_all(&mut *conn).await?;
            rows.iter()
                .map(|row| {
                    let total: i64 = row.try_get("total_runs")?;
                    let duration: i64 = row.try_get("total_duration_ms")?;
                    let task_name: String = row.try_get("task_name")?;
                    let last_status: Option<String> = row.try_get("last_status")?;
                    let last_status = last_status
                        .map(|text| {
                            decode(&text, "housekeeper_task_stats", "last_status")
                                .with_context(|| format!("task {task_name:?}"))
                        })
                        .transpose()?;
                    let stats = TaskStats {
                        task_name,
                        total_runs: total,
                        success_count: row.try_get("success_count")?,
                        error_count: row.try_get("error_count")?,
                        skipped_count: row.try_get("skipped_count")?,
                        avg_duration_ms: (total > 0).then(|| duration as f64 / total as f64),
                        last_run_at: row.try_get("last_run_at")?,
                        last_status,
                        last_success_at: row.try_get("last_success_at")?,
                    };
                    Ok((stats.task_name.clone(), stats))
                })
                .collect::<anyhow::Result<_>>()
        })
    }

    /// The latest occurrence of `task`'s schedule that was recorded (run or
    /// skipped): where a restarted scheduler picks up.
    pub async fn last_scheduled_for(&self, task: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        let sql = "SELECT MAX(scheduled_for) FROM housekeeper_runs WHERE task_name = $1 AND triggered_by = 'schedule'";
        let last: Option<DateTime<Utc>> =
            in_tx!(self, conn => query_scalar(sql).bind(task).fetch_one(&mut *conn).await?);
        Ok(last)
    }

    /// When `task` last succeeded.
    pub async fn last_success(&self, task: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        let sql = "SELECT last_success_at FROM housekeeper_task_stats WHERE task_name = $1";
        let last: Option<Option<DateTime<Utc>>> =
            in_tx!(self, conn => query_scalar(sql).bind(task).fetch_optional(&mut *conn).await?);
        Ok(last.flatten())
    }

    /// Persisted settings of every task that has any.
    pub async fn settings(&self) -> anyhow::Result<HashMap<String, TaskSettings>> {
        let sql = "SELECT task_name, enabled, schedule, last_modified_at FROM housekeeper_config";
        in_tx!(self, conn => {
            let rows = query(sql).fetch_all(&mut *conn).await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get::<String, _>("task_name")?,
                        TaskSettings {
                            enabled: row.try_get("enabled")?,
                            schedule: row.try_get("schedule")?,
                            last_modified_at: row.try_get("last_modified_at")?,
                        },
                    ))
                })
                .collect::<anyhow::Result<_>>()
        })
    }

    /// Persists `task`'s enabled flag.
    pub async fn set_enabled(&self, task: &str, enabled: bool) -> anyhow::Result<()> {
        let sql = "INSERT INTO housekeeper_config (task_name, enabled, last_modified_at) VALUES ($1, $2, $3) \
                   ON CONFLICT (task_name) DO UPDATE SET enabled = excluded.enabled, last_modified_at = excluded.last_modified_at";
        let now = self.db_now().await?;
        in_tx!(self, conn => {
            query(sql).bind(task).bind(enabled).bind(now).execute(&mut *conn).await?;
        });
        Ok(())
    }

    /// Deletes `task`'s finished runs older than `keep_days`, and beyond the
    /// newest `keep_last`. Returns how many rows went.
    pub async fn prune(&self, task: &str, keep_days: u32, keep_last: u32) -> anyhow::Result<u64> {
        let cutoff = self.db_now().await? - ChronoDuration::days(i64::from(keep_days));
        let sql = "DELETE FROM housekeeper_runs WHERE task_name = $1 AND status <> 'running' AND ( \
                     started_at < $2 OR id NOT IN ( \
                       SELECT id FROM housekeeper_runs WHERE task_name = $1 \
                       ORDER BY started_at DESC, id DESC LIMIT $3))";
        let done = in_tx!(self, conn => query(sql)
            .bind(task)
            .bind(cutoff)
            .bind(i64::from(keep_last))
            .execute(&mut *conn)
            .await?
            .rows_affected());
        Ok(done)
    }
}

/// Makes this process the only `serve` on the SQLite database at `url`: an
/// exclusive lock (the kernel's `flock`, released when the process ends,
/// however it ends) on the database file itself, held for as long as the
/// returned file is. The lock is on the file, not its name, so another path
/// to it (a symbolic or hard link) meets it too; SQLite's own locks are
/// `fcntl` locks, which `flock` leaves alone. SQLite serves one replica;
/// several need PostgreSQL. `None` for a PostgreSQL URL or an in-memory
/// database.
pub fn lock_single_replica(url: &str) -> anyhow::Result<Option<std::fs::File>> {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Ok(None);
    };
    let path = rest.strip_prefix("//").unwrap_or(rest);
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(None);
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the SQLite database {path}"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another housekeeper serve is using the SQLite database {path}: SQLite serves one replica; \
             to run several replicas, give them one PostgreSQL database (DATABASE_URL=postgres://…)"
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("cannot lock {path}")))
        }
    }
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres:") || url.starts_with("postgresql:")
}

async fn connect_postgres(url: &str, options: &StoreOptions) -> anyhow::Result<PgPool> {
    // No `extra_float_digits` at startup: PgBouncer refuses a startup
    // parameter it does not know unless told to ignore it, and the store
    // reads no float as text (PostgreSQL 12 and later print the shortest
    // exact form whatever it is).
    let connect = PgConnectOptions::from_str(url)
        .context("invalid PostgreSQL URL")?
        .extra_float_digits(None);
    PgPoolOptions::new()
        .max_connections(options.pool_max.max(1))
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await
        .context("cannot connect to PostgreSQL")
}

struct Completion {
    status: RunStatus,
    completed_at: DateTime<Utc>,
    duration_ms: i64,
    output: Option<String>,
    error: Option<String>,
    metrics: Option<String>,
    fuel_used: Option<i64>,
    component_hash: Option<String>,
}

fn run_record<R>(row: &R) -> anyhow::Result<RunRecord>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> DateTime<Utc>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let id: i64 = row.try_get("id")?;
    let text = |column: &str| -> anyhow::Result<String> { Ok(row.try_get(column)?) };
    let status = decode(&text("status")?, "housekeeper_runs", "status")
        .with_context(|| format!("run {id}"))?;
    let triggered_by = decode(&text("triggered_by")?, "housekeeper_runs", "triggered_by")
        .with_context(|| format!("run {id}"))?;
    let metrics: Option<String> = row.try_get("metrics")?;
    Ok(RunRecord {
        id,
        task_name: row.try_get("task_name")?,
        started_at: row.try_get("started_at")?,
        completed_at: row.try_get("completed_at")?,
        status,
        duration_ms: row.try_get("duration_ms")?,
        output: row.try_get("output")?,
        error: row.try_get("error")?,
        triggered_by,
        scheduled_for: row.try_get("scheduled_for")?,
        component_hash: row.try_get("component_hash")?,
        dry_run: row.try_get("dry_run")?,
        metrics: metrics.and_then(|m| serde_json::from_str(&m).ok()),
        fuel_used: row.try_get("fuel_used")?,
        replica: row.try_get("replica")?,
        heartbeat_at: row.try_get("heartbeat_at")?,
    })
}

/// A stored name (`status`, `triggered_by`) as its type. A value this
/// version does not know is an error naming it and its column, never a
/// guess.
fn decode<T: FromStr<Err = String>>(text: &str, table: &str, column: &str) -> anyhow::Result<T> {
    text.parse()
        .map_err(|e| anyhow::anyhow!("{table}.{column} holds {e}"))
}
