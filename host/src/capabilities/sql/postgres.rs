//! Running checked statements on PostgreSQL.

use super::{Budget, Collect, Failure, Outcome, Prepared, Reached, SqlLimits, collect, too_large};
use crate::bindings::housekeeper::task::sql as wit;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use futures_util::StreamExt;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::pool::PoolConnection;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgArguments, PgPool, PgRow, PgTypeInfo};
use sqlx::query::Query;
use sqlx::{Column, Executor, Postgres, Row, TypeInfo, ValueRef};
use std::sync::Mutex;

/// SQLSTATEs that mean a time limit ended the statement.
const QUERY_CANCELED: &str = "57014";
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Settings every task session is returned to after a call: whatever a
/// statement set (`set_config(…, false)`, a role, a cursor, a temporary
/// table, a lock, a listener) does not reach the next task's call. Prepared
/// statements stay: they are the pool's own.
const RESET_SESSION: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; RESET ALL; \
     DISCARD TEMP; DISCARD SEQUENCES; UNLISTEN *; SELECT pg_advisory_unlock_all()";

/// Who a call's statements run as, and under which limits.
pub(super) struct Session<'a> {
    /// The task's role (see `roles`).
    pub role: &'a str,
    pub dry_run: bool,
    /// The transaction commits without waiting for its WAL to reach disk
    /// (`execute-async-commit`).
    pub async_commit: bool,
    pub budget: Budget,
    pub limits: &'a SqlLimits,
    /// Told which statement is running.
    pub reached: &'a Reached,
    /// The server processes of asynchronous calls that have not ended: a
    /// call cut off at the run's deadline leaves its own here, and the
    /// wait for the disk first waits for that process (a `COMMIT` it was
    /// still running would otherwise land after the wait).
    pub in_flight: &'a Mutex<Vec<i32>>,
}

pub(super) async fn run(
    pool: &PgPool,
    statements: &[Prepared],
    want_rows: bool,
    session: Session<'_>,
) -> Result<Vec<Outcome>, Failure> {
    let conn = pool.acquire().await.map_err(|e| error(e, session.budget))?;
    let mut call = Call {
        conn,
        reset: false,
        abandoned: false,
    };
    let mut backend = None;
    let result = run_on(&mut call, statements, want_rows, &session, &mut backend).await;
    if call.abandoned {
        return result;
    }
    // One round trip ends the transaction and resets the session.
    let commit = result.is_ok() && !session.dry_run;
    let end = if commit { "COMMIT" } else { "ROLLBACK" };
    let sql = format!("{end}; {RESET_SESSION}");
    let mut ended = call.conn.execute_many(sqlx::raw_sql(&sql));
    // The first result is the transaction's end; the rest, the reset.
    let committed = ended.next().await;
    let mut reset = committed.as_ref().is_some_and(Result::is_ok);
    while let Some(step) = ended.next().await {
        reset &= step.is_ok();
    }
    drop(ended);
    call.reset = reset;
    // The transaction has ended (or its session is closed with it).
    if let Some(pid) = backend {
        let mut in_flight = session.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        in_flight.retain(|p| *p != pid);
    }
    match committed {
        Some(Err(e)) if commit => Err(error(e, session.budget)),
        _ => result,
    }
}

/// A pooled connection during a call: closed instead of going back to the
/// pool unless its transaction ended and its session was reset, also when
/// the call is dropped half way (at its deadline).
struct Call {
    conn: PoolConnection<Postgres>,
    reset: bool,
    /// The server is still sending rows nobody will read: the connection
    /// is closed rather than read to the end.
    abandoned: bool,
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.reset {
            self.conn.close_on_drop();
        }
    }
}

/// Runs the statements in a transaction it leaves open.
async fn run_on(
    call: &mut Call,
    statements: &[Prepared],
    want_rows: bool,
    session: &Session<'_>,
    backend: &mut Option<i32>,
) -> Result<Vec<Outcome>, Failure> {
    let Session {
        role,
        budget,
        limits,
        ..
    } = *session;
    let fail = |e: sqlx::Error| error(e, budget);
    let conn = &mut call.conn;

    // One round trip opens the transaction, sets its limits (and, when
    // asked, its asynchronous commit) and switches to the task's role (a
    // number and a quoted name of our own, not guest input).
    let millis = budget.millis();
    let role = super::roles::quote_ident(role);
    let commit = if session.async_commit {
        "SET LOCAL synchronous_commit = off; "
    } else {
        ""
    };
    let begin = format!(
        "BEGIN; SET LOCAL statement_timeout = {millis}; SET LOCAL lock_timeout = {millis}; \
         SET LOCAL standard_conforming_strings = on; {commit}SET LOCAL ROLE {role}"
    );
    if session.async_commit {
        // The same round trip says which server process runs the call.
        let row = conn
            .fetch_one(sqlx::raw_sql(&format!("{begin}; SELECT pg_backend_pid()")))
            .await
            .map_err(fail)?;
        let pid: i32 = row.try_get(0).map_err(fail)?;
        *backend = Some(pid);
        let mut in_flight = session.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        in_flight.push(pid);
    } else {
        conn.execute(sqlx::raw_sql(&begin)).await.map_err(fail)?;
    }
    let mut outcomes = Vec::with_capacity(statements.len());
    for (index, statement) in statements.iter().enumerate() {
        session.reached.at(index);
        // Before every statement after the first the role is switched to
        // again: whatever an earlier statement of the call set (a
        // `set_config('role', …, true)` the parse missed) ends there.
        if index > 0 {
            conn.execute(sqlx::raw_sql(&format!("SET LOCAL ROLE {role}")))
                .await
                .map_err(fail)?;
        }
        let query = bind(sqlx::query(&statement.sql), &statement.params);
        if want_rows {
            let stream = (&mut **conn).fetch(query);
            let read = |row: &PgRow| values(row).map_err(Failure::Guest);
            match collect(stream, read, fail, limits).await {
                Ok(rows) => outcomes.push(Outcome::Rows(rows)),
                Err(Collect::TooLarge) => {
                    call.abandoned = true;
                    return Err(Failure::Guest(too_large(limits)));
                }
                Err(Collect::Failed(e)) => return Err(e),
            }
        } else {
            let done = conn.execute(query).await.map_err(fail)?;
            outcomes.push(Outcome::Changed(done.rows_affected()));
        }
    }
    Ok(outcomes)
}

/// A database error, as the guest sees it (or the run's deadline).
pub(super) fn error(e: sqlx::Error, budget: Budget) -> Failure {
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if code == QUERY_CANCELED || code == LOCK_NOT_AVAILABLE {
                return budget.expired();
            }
            Failure::Guest(wit::SqlError::Database(wit::DatabaseError {
                code,
                message: db.message().to_owned(),
            }))
        }
        sqlx::Error::PoolTimedOut => Failure::Guest(wit::SqlError::Database(wit::DatabaseError {
            code: String::new(),
            message: "no database connection became available in time".into(),
        })),
        other => Failure::Guest(wit::SqlError::Database(wit::DatabaseError {
            code: String::new(),
            message: other.to_string(),
        })),
    }
}

/// A NULL whose type the server infers from where it is used.
struct UntypedNull;

impl sqlx::Type<Postgres> for UntypedNull {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(0))
    }
}

impl sqlx::Encode<'_, Postgres> for UntypedNull {
    fn encode_by_ref(&self, _buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Ok(IsNull::Yes)
    }
}

fn bind<'q>(
    mut query: Query<'q, Postgres, PgArguments>,
    params: &[wit::Value],
) -> Query<'q, Postgres, PgArguments> {
    for param in params {
        query = match param {
            wit::Value::Null => query.bind(UntypedNull),
            wit::Value::Boolean(b) => query.bind(*b),
            wit::Value::Integer(i) => query.bind(*i),
            wit::Value::Float(f) => query.bind(*f),
            wit::Value::Text(s) => query.bind(s.clone()),
            wit::Value::Bytes(b) => query.bind(b.clone()),
            wit::Value::Timestamp(ms) => query.bind(DateTime::<Utc>::from_timestamp_millis(*ms)),
            wit::Value::Json(s) => match serde_json::from_str::<serde_json::Value>(s) {
                Ok(v) => query.bind(sqlx::types::Json(v)),
                // Not JSON: let the server say so.
                Err(_) => query.bind(s.clone()),
            },
        };
    }
    query
}

fn values(row: &PgRow) -> Result<Vec<wit::Value>, wit::SqlError> {
    (0..row.len()).map(|i| value(row, i)).collect()
}

fn value(row: &PgRow, i: usize) -> Result<wit::Value, wit::SqlError> {
    let raw = row.try_get_raw(i).map_err(decode_error)?;
    if raw.is_null() {
        return Ok(wit::Value::Null);
    }
    let type_name = raw.type_info().name().to_owned();
    let get = |e: sqlx::Error| decode_error(e);
    Ok(match type_name.as_str() {
        "BOOL" => wit::Value::Boolean(row.try_get(i).map_err(get)?),
        "INT2" => wit::Value::Integer(row.try_get::<i16, _>(i).map_err(get)?.into()),
        "INT4" => wit::Value::Integer(row.try_get::<i32, _>(i).map_err(get)?.into()),
        "INT8" => wit::Value::Integer(row.try_get(i).map_err(get)?),
        "OID" => wit::Value::Integer(row.try_get::<Oid, _>(i).map_err(get)?.0.into()),
        "FLOAT4" => wit::Value::Float(row.try_get::<f32, _>(i).map_err(get)?.into()),
        "FLOAT8" => wit::Value::Float(row.try_get(i).map_err(get)?),
        "NUMERIC" => wit::Value::Text(numeric_text(
            raw.as_bytes()
                .map_err(|e| decode_error(sqlx::Error::Decode(e)))?,
        )?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "CITEXT" => {
            wit::Value::Text(row.try_get_unchecked(i).map_err(get)?)
        }
        "UUID" => wit::Value::Text(row.try_get::<uuid::Uuid, _>(i).map_err(get)?.to_string()),
        "BYTEA" => wit::Value::Bytes(row.try_get(i).map_err(get)?),
        "TIMESTAMPTZ" => wit::Value::Timestamp(
            row.try_get::<DateTime<Utc>, _>(i)
                .map_err(get)?
                .timestamp_millis(),
        ),
        "TIMESTAMP" => wit::Value::Timestamp(
            row.try_get::<NaiveDateTime, _>(i)
                .map_err(get)?
                .and_utc()
                .timestamp_millis(),
        ),
        "DATE" => wit::Value::Timestamp(
            row.try_get::<NaiveDate, _>(i)
                .map_err(get)?
                .and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc()
                .timestamp_millis(),
        ),
        "JSON" | "JSONB" => wit::Value::Json(
            row.try_get::<serde_json::Value, _>(i)
                .map_err(get)?
                .to_string(),
        ),
        other => {
            let column = row.columns()[i].name().to_owned();
            return Err(wit::SqlError::Refused(format!(
                "column `{column}` has type {other}, which the sql interface does not carry; cast it, e.g. `{column}::text`"
            )));
        }
    })
}

fn decode_error(e: sqlx::Error) -> wit::SqlError {
    wit::SqlError::Database(wit::DatabaseError {
        code: String::new(),
        message: format!("cannot read a column: {e}"),
    })
}

/// PostgreSQL's binary NUMERIC as exact decimal text.
fn numeric_text(bytes: &[u8]) -> Result<String, wit::SqlError> {
    let bad = || {
        wit::SqlError::Database(wit::DatabaseError {
            code: String::new(),
            message: "malformed NUMERIC value".into(),
        })
    };
    let word = |at: usize| -> Result<i16, wit::SqlError> {
        bytes
            .get(at..at + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(bad)
    };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i32;
    let sign = word(4)? as u16;
    let dscale = word(6)? as usize;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let digits: Vec<i16> = (0..ndigits)
        .map(|k| word(8 + 2 * k))
        .collect::<Result<_, _>>()?;
    let digit = |k: i32| -> i16 {
        if k >= 0 && (k as usize) < digits.len() {
            digits[k as usize]
        } else {
            0
        }
    };
    let mut text = String::new();
    if sign == 0x4000 {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        for k in 0..=weight {
            if k == 0 {
                text.push_str(&digit(k).to_string());
            } else {
                text.push_str(&format!("{:04}", digit(k)));
            }
        }
    }
    if dscale > 0 {
        let mut fraction = String::new();
        let mut k = weight + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", digit(k)));
            k += 1;
        }
        fraction.truncate(dscale);
        text.push('.');
        text.push_str(&fraction);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: i16, weight: i16, sign: u16, dscale: i16, digits: &[i16]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [ndigits, weight, sign as i16, dscale] {
            b.extend(w.to_be_bytes());
        }
        for d in digits {
            b.extend(d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numerics_read_as_exact_text() {
        assert_eq!(numeric_text(&numeric(0, 0, 0, 0, &[])).unwrap(), "0");
        assert_eq!(numeric_text(&numeric(1, 0, 0, 0, &[42])).unwrap(), "42");
        assert_eq!(
            numeric_text(&numeric(2, 1, 0, 0, &[1, 2])).unwrap(),
            "10002"
        );
        assert_eq!(
            numeric_text(&numeric(2, 0, 0x4000, 2, &[3, 1400])).unwrap(),
            "-3.14"
        );
        assert_eq!(numeric_text(&numeric(1, -1, 0, 4, &[5])).unwrap(), "0.0005");
        assert_eq!(numeric_text(&numeric(1, 1, 0, 0, &[7])).unwrap(), "70000");
        assert_eq!(numeric_text(&numeric(0, 0, 0xC000, 0, &[])).unwrap(), "NaN");
        assert!(numeric_text(&[0, 1]).is_err());
    }
}
