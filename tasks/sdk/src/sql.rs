//! SQL on the connection the manifest grants. Every statement passes the
//! host's guard; a denial comes back as [`SqlError::AccessDenied`], never as
//! a trap. Each call is its own transaction; use [`transaction`] for several
//! statements that must succeed together.
//!
//! ```ignore
//! use housekeeper_sdk::sql::{self, Value};
//! let n = sql::execute(
//!     "DELETE FROM access_tokens WHERE expires_at < $1",
//!     &[Value::Timestamp(cutoff_ms)],
//! )?;
//! ```

use crate::Error;
use crate::bindings::housekeeper::task::sql as host;

pub use host::{DatabaseError, Denial, Rows, SqlDialect as Dialect, SqlError, Value};

/// The granted connection's SQL flavour.
pub fn dialect() -> Result<Dialect, SqlError> {
    host::dialect()
}

/// Runs one statement and returns its rows.
pub fn query(sql: &str, params: &[Value]) -> Result<Rows, SqlError> {
    host::query(sql, params)
}

/// Runs one statement and returns how many rows it changed.
pub fn execute(sql: &str, params: &[Value]) -> Result<u64, SqlError> {
    host::execute(sql, params)
}

/// Runs every statement in one transaction: all succeed or none does.
pub fn transaction(statements: &[(&str, Vec<Value>)]) -> Result<Vec<u64>, SqlError> {
    let statements: Vec<host::Statement> = statements
        .iter()
        .map(|(sql, params)| host::Statement {
            sql: (*sql).to_owned(),
            params: params.clone(),
        })
        .collect();
    host::transaction(&statements)
}

/// The first column of the first row, if any.
pub fn scalar(sql: &str, params: &[Value]) -> Result<Option<Value>, SqlError> {
    Ok(query(sql, params)?
        .rows
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next()))
}

impl SqlError {
    /// The error in words.
    pub fn message(&self) -> String {
        match self {
            SqlError::AccessDenied(d) => {
                format!("access denied: `{}` is not granted `{}`", d.table, d.verb)
            }
            SqlError::Refused(reason) => format!("refused: {reason}"),
            SqlError::Timeout => "the statement timed out".into(),
            SqlError::Database(e) if e.code.is_empty() => e.message.clone(),
            SqlError::Database(e) => format!("{} (SQLSTATE {})", e.message, e.code),
        }
    }
}

impl From<SqlError> for Error {
    fn from(e: SqlError) -> Self {
        Error::Failed(format!("sql: {}", e.message()))
    }
}

impl Value {
    /// Integers, and text or floats that hold one (NUMERIC arrives as text).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            Value::Float(f) if f.fract() == 0.0 => Some(*f as i64),
            Value::Text(s) => s.trim().parse().ok(),
            Value::Boolean(b) => Some(*b as i64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Integer(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Text(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) | Value::Json(s) => Some(s),
            _ => None,
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_timestamp(&self) -> Option<i64> {
        match self {
            Value::Timestamp(t) => Some(*t),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            Value::Integer(i) => Some(*i != 0),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

/// Quotes an identifier for PostgreSQL or SQLite: `a"b` → `"a""b"`, with
/// each part of a dotted name quoted on its own.
pub fn quote_ident(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Deletes in batches of `batch_size` rows until a batch deletes fewer,
/// calling `between` after each full batch (to pause, log or stop: return
/// `false` to stop). `delete` runs one batch and returns the rows it
/// deleted. Returns the total deleted and the number of batches.
pub fn in_batches(
    batch_size: u64,
    mut delete: impl FnMut() -> Result<u64, SqlError>,
    mut between: impl FnMut(u64) -> bool,
) -> Result<(u64, u64), SqlError> {
    let mut total = 0;
    let mut batches = 0;
    loop {
        let n = delete()?;
        total += n;
        batches += 1;
        if n < batch_size || !between(total) {
            return Ok((total, batches));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_convert() {
        assert_eq!(Value::Text("12".into()).as_i64(), Some(12));
        assert_eq!(Value::Text("1.5".into()).as_f64(), Some(1.5));
        assert_eq!(Value::Integer(3).as_f64(), Some(3.0));
        assert_eq!(Value::Null.as_i64(), None);
        assert!(Value::Null.is_null());
    }

    #[test]
    fn identifiers_are_quoted_per_part() {
        assert_eq!(quote_ident("events"), "\"events\"");
        assert_eq!(quote_ident("app.Events"), "\"app\".\"Events\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn batches_stop_at_a_short_batch_or_when_asked() {
        let mut left = 25u64;
        let (total, batches) = in_batches(
            10,
            || {
                let n = left.min(10);
                left -= n;
                Ok(n)
            },
            |_| true,
        )
        .unwrap();
        assert_eq!((total, batches), (25, 3));
        let (total, batches) = in_batches(10, || Ok(10), |total| total < 30).unwrap();
        assert_eq!((total, batches), (30, 3));
    }
}
