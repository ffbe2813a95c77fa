//! Taking over the reference service's PostgreSQL tables in place.
//!
//! The reference service created `housekeeper_runs`, `housekeeper_config`
//! and `get_housekeeper_stats()` itself (seed 000, "Database Schema"). A
//! team moving from it has months of history and hand-made toggles in them,
//! so they cannot simply be dropped for our first migration to create its
//! own. When they exist and that migration is not recorded, [`adopt`]
//! upgrades them to exactly what the migration creates, in one transaction,
//! and records the migration as applied, as sqlx would; the migrator then
//! continues from there.
//!
//! Everything is checked before the first change: a shape it does not know
//! (a missing column, a type it cannot convert, a constraint or view that
//! would break) is refused, naming the table and column and what to do, and
//! nothing is changed. The transaction makes a failure later on just as
//! harmless.

mod inspect;
mod plan;
mod report;
mod schema;

use super::{query, query_scalar};
use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;
use inspect::inspect;
use sqlx::postgres::{PgConnection, PgPool};
use std::fmt;
use std::time::{Duration, Instant};

/// The migration whose result adoption produces; later ones are applied by
/// the migrator as usual.
pub const ADOPTED_VERSION: i64 = 20261123000001;

/// `replica` of the rows the reference service wrote.
pub const REFERENCE_REPLICA: &str = "reference";

/// `triggered_by` of old rows that recorded none.
pub const UNKNOWN_TRIGGER: &str = crate::model::Trigger::Unknown.as_str();

/// `error` of runs the reference service left `running`, now `interrupted`.
pub const LEFT_RUNNING: &str = "the reference service stopped while the run was in progress";

/// How the reference service's tables are taken over.
#[derive(Debug, Clone)]
pub struct AdoptOptions {
    /// Zone in which the reference service wrote its `TIMESTAMP` (without
    /// time zone) values; each becomes the instant it named there.
    pub timezone: Tz,
    /// How long to wait for another session's locks on the reference
    /// tables (a reference service still running) before giving up.
    pub lock_timeout: Duration,
}

impl Default for AdoptOptions {
    fn default() -> Self {
        AdoptOptions {
            timezone: chrono_tz::Etc::UTC,
            lock_timeout: Duration::from_secs(10),
        }
    }
}

/// What the database holds, as far as adoption is concerned.
#[derive(Debug, Clone)]
pub enum Finding {
    /// None of the reference service's objects: the migrations create
    /// everything.
    Fresh,
    /// housekeeper's first migration is recorded: nothing to adopt.
    Migrated,
    /// The reference service's tables, and how they are taken over.
    Reference(Box<Plan>),
}

/// The reference tables as found, and the statements that take them over.
#[derive(Debug, Clone)]
pub struct Plan {
    pub timezone: Tz,
    pub runs: i64,
    pub run_tasks: i64,
    pub ids: Option<(i64, i64)>,
    /// The id the next run gets.
    pub next_id: i64,
    /// Runs still `running`: the reference service stopped during them.
    pub left_running: i64,
    /// Runs with `triggered_by = 'scheduler'` (become `schedule`).
    pub by_scheduler: i64,
    /// Runs with no `triggered_by` (become `unknown`).
    pub untriggered: i64,
    pub config_tasks: i64,
    pub disabled: Vec<String>,
    /// The newest `started_at` as stored, and the instant it becomes (only
    /// when it is a `TIMESTAMP` without time zone).
    pub newest_start: Option<(NaiveDateTime, DateTime<Utc>)>,
    pub replaces_function: bool,
    /// Columns neither schema has, kept as they are.
    pub kept_columns: Vec<String>,
    pub statements: Vec<String>,
}

/// Something about the reference tables that adoption cannot take over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `table`, `table.column` or `function()`.
    pub object: String,
    pub problem: String,
    /// What the operator can do about it.
    pub fix: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.object, self.problem, self.fix)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(
        "cannot take over the reference service's tables, nothing was changed:{}",
        list(.0)
    )]
    Refused(Vec<Refusal>),
    #[error(
        "cannot take over the reference service's tables: another session holds a lock on them \
         (is the reference service still running? stop it, then start again); nothing was changed"
    )]
    Busy,
    #[error("cannot take over the reference service's tables ({step}); nothing was changed")]
    Database {
        step: String,
        #[source]
        source: sqlx::Error,
    },
}

fn list(refusals: &[Refusal]) -> String {
    refusals.iter().map(|r| format!("\n  - {r}")).collect()
}

fn db(step: impl Into<String>) -> impl FnOnce(sqlx::Error) -> AdoptError {
    let step = step.into();
    move |source| {
        let busy = source
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == "55P03");
        if busy {
            AdoptError::Busy
        } else {
            AdoptError::Database { step, source }
        }
    }
}

/// Takes over the reference service's tables if they are there and our
/// migrations are not, and says what it found: one transaction under the
/// migration lock, so that of two processes starting at once one adopts and
/// the other finds the migration recorded.
pub async fn adopt(pool: &PgPool, options: &AdoptOptions) -> Result<Finding, AdoptError> {
    let mut tx = pool.begin().await.map_err(db("connecting to PostgreSQL"))?;
    let done = async {
        super::migrate::lock(&mut tx)
            .await
            .map_err(db("taking the migration lock"))?;
        adopt_in(&mut tx, options).await
    }
    .await;
    match done {
        Ok(finding) => {
            tx.commit().await.map_err(db("committing"))?;
            Ok(finding)
        }
        Err(e) => {
            // Released now, not when the connection is next used.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// [`adopt`] in the transaction `tx`, which holds the migration lock and
/// which the caller commits (with the migrations that follow, at start).
pub(super) async fn adopt_in(
    tx: &mut PgConnection,
    options: &AdoptOptions,
) -> Result<Finding, AdoptError> {
    let started = Instant::now();
    let finding = inspect(tx, options, true).await?;
    let Finding::Reference(plan) = &finding else {
        return Ok(finding);
    };
    for statement in &plan.statements {
        sqlx::raw_sql(statement)
            .execute(&mut *tx)
            .await
            .map_err(db(first_line(statement)))?;
    }
    // As sqlx does, the time it took replaces the -1 it starts as.
    query("UPDATE _sqlx_migrations SET execution_time = $1 WHERE version = $2")
        .bind(started.elapsed().as_nanos() as i64)
        .bind(ADOPTED_VERSION)
        .execute(&mut *tx)
        .await
        .map_err(db("recording the time taken"))?;
    // The lock timeout was for taking the reference tables; what follows in
    // the transaction waits as long as it needs.
    sqlx::raw_sql("SET LOCAL lock_timeout = DEFAULT")
        .execute(&mut *tx)
        .await
        .map_err(db("resetting lock_timeout"))?;
    Ok(finding)
}

/// What [`adopt`] would do, changing nothing (a read-only transaction).
pub async fn inspect_only(pool: &PgPool, options: &AdoptOptions) -> Result<Finding, AdoptError> {
    let mut tx = pool.begin().await.map_err(db("connecting to PostgreSQL"))?;
    sqlx::raw_sql("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(db("starting a read-only transaction"))?;
    let finding = inspect(&mut tx, options, false).await;
    tx.rollback().await.map_err(db("ending the inspection"))?;
    finding
}

fn first_line(statement: &str) -> String {
    statement
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Runs one inspection query returning a single value.
async fn scalar<T>(conn: &mut PgConnection, sql: &str, step: &str) -> Result<T, AdoptError>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    query_scalar(sql)
        .fetch_one(&mut *conn)
        .await
        .map_err(db(step))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_object_and_what_to_do() {
        let e = AdoptError::Refused(vec![
            Refusal {
                object: "housekeeper_runs.started_at".into(),
                problem: "is text, expected timestamp".into(),
                fix: "change it back".into(),
            },
            Refusal {
                object: "housekeeper_config".into(),
                problem: "has no primary key".into(),
                fix: "add one".into(),
            },
        ]);
        assert_eq!(
            e.to_string(),
            "cannot take over the reference service's tables, nothing was changed:\n  \
             - housekeeper_runs.started_at: is text, expected timestamp; change it back\n  \
             - housekeeper_config: has no primary key; add one"
        );
    }
}
