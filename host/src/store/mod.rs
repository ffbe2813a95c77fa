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
//!
//! Here: the handle, how a statement is sent, and the macros every part
//! uses. Opening a store is in `open`, run history in `runs`, the per-task
//! summary and settings in `stats`; what replicas share in `lease`,
//! `replica` and `retry`.

pub mod adopt;
mod migrate;

use sqlx::postgres::PgPool;
use sqlx::query::{Query, QueryScalar};
use sqlx::sqlite::SqlitePool;
use std::str::FromStr;
use std::time::Duration;

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
mod open;
mod replica;
mod retry;
mod runs;
mod stats;
pub use lease::{Claim, Holder, Lease, Reaped, Renewal, ReplicaRow, STARTUP_WINDOW};
pub use open::{StoreOptions, is_postgres, lock_single_replica};
pub use retry::PendingRetry;
use runs::Completion;
pub use runs::{NewRun, RunRecord};
pub use stats::{TaskSettings, TaskStats};

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    replica: String,
    lease: Duration,
}

impl Store {
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
}

/// A stored name (`status`, `triggered_by`) as its type. A value this
/// version does not know is an error naming it and its column, never a
/// guess.
fn decode<T: FromStr<Err = String>>(text: &str, table: &str, column: &str) -> anyhow::Result<T> {
    text.parse()
        .map_err(|e| anyhow::anyhow!("{table}.{column} holds {e}"))
}
