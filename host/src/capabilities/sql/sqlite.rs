//! Running checked statements on SQLite. SQLite has no statement timeout:
//! the caller's time-out bounds the call, and a busy database waits at most
//! the connection's busy timeout.

use super::guard::Kind;
use super::{Collect, Failure, Outcome, Prepared, SqlLimits, collect, too_large};
use crate::bindings::housekeeper::task::sql as wit;
use chrono::{DateTime, Utc};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqlitePool, SqliteRow};
use sqlx::{Connection, Executor, Row, Sqlite, TypeInfo, ValueRef};

pub(super) async fn run(
    pool: &SqlitePool,
    statements: &[Prepared],
    want_rows: bool,
    dry_run: bool,
    limits: &SqlLimits,
) -> Result<Vec<Outcome>, Failure> {
    let mut conn = pool.acquire().await.map_err(error)?;
    if let [only] = statements
        && only.checked.kind == Kind::Maintenance
    {
        conn.execute(sqlx::raw_sql(&only.sql))
            .await
            .map_err(error)?;
        return Ok(vec![Outcome::Changed(0)]);
    }
    let mut tx = (&mut *conn).begin().await.map_err(error)?;
    let mut outcomes = Vec::with_capacity(statements.len());
    for statement in statements {
        let query = bind(sqlx::query(&statement.sql), &statement.params);
        if want_rows {
            let stream = (&mut *tx).fetch(query);
            match collect(stream, values, error, limits).await {
                Ok(rows) => outcomes.push(Outcome::Rows(rows)),
                Err(Collect::TooLarge) => return Err(Failure::Guest(too_large(limits))),
                Err(Collect::Failed(e)) => return Err(e),
            }
        } else {
            let done = tx.execute(query).await.map_err(error)?;
            outcomes.push(Outcome::Changed(done.rows_affected()));
        }
    }
    if dry_run {
        tx.rollback().await.map_err(error)?;
    } else {
        tx.commit().await.map_err(error)?;
    }
    Ok(outcomes)
}

fn error(e: sqlx::Error) -> Failure {
    let (code, message) = match &e {
        sqlx::Error::Database(db) => (
            db.code().map(|c| c.into_owned()).unwrap_or_default(),
            db.message().to_owned(),
        ),
        other => (String::new(), other.to_string()),
    };
    Failure::Guest(wit::SqlError::Database(wit::DatabaseError {
        code,
        message,
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
