//! SQL on the connection the manifest grants. Every statement passes the
//! host's guard; a denial comes back as [`SqlError::AccessDenied`], never as
//! a trap. Each call is its own transaction; use [`transaction`] for several
//! statements that must succeed together.
//!
//! Write placeholders as `$1`, `$2`, … on both databases: on SQLite they
//! are sent as `?1`, `?2`, … Table and column names from config go through
//! [`Ident`] (see [`crate::config::table`]), never straight into the text.
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
use std::borrow::Cow;
use std::cell::Cell;

pub use host::{
    DatabaseError, Denial, HashBounds, PartitionBounds, RangeBound, RangeBounds, Relation, Rows,
    SqlDialect as Dialect, SqlError, VacuumOptions, Value,
};

thread_local! {
    // A run is one instance with one connection, so its dialect never
    // changes; asked once instead of before every statement.
    static DIALECT: Cell<Option<Dialect>> = const { Cell::new(None) };
}

/// The granted connection's SQL flavour.
pub fn dialect() -> Result<Dialect, SqlError> {
    if let Some(d) = DIALECT.get() {
        return Ok(d);
    }
    let d = host::dialect()?;
    DIALECT.set(Some(d));
    Ok(d)
}

/// `sql` as the connection expects its placeholders. Without a connection
/// the text goes unchanged, and the host answers the call with why.
fn for_connection(sql: &str) -> Cow<'_, str> {
    match dialect() {
        Ok(Dialect::Sqlite) => sqlite_placeholders(sql),
        _ => Cow::Borrowed(sql),
    }
}

/// `$1` → `?1` outside string literals, quoted identifiers and comments.
/// SQLite reads `$1` as a parameter named `$1`, numbered by where it first
/// appears rather than by its digits, so the rewrite keeps `$2 … $1` bound
/// as written.
pub fn sqlite_placeholders(sql: &str) -> Cow<'_, str> {
    if !sql.contains('$') {
        return Cow::Borrowed(sql);
    }
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        let skip_to = match bytes[i] {
            q @ (b'\'' | b'"' | b'`') => {
                // A doubled quote inside is two literals back to back: the
                // same skip handles it.
                sql[i + 1..].find(q as char).map(|j| i + 1 + j + 1)
            }
            b'[' => sql[i..].find(']').map(|j| i + j + 1),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                Some(sql[i..].find('\n').map_or(bytes.len(), |j| i + j + 1))
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => Some(
                sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |j| i + 2 + j + 2),
            ),
            b'$' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
                && !(i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_')) =>
            {
                out.push_str(&sql[copied..i]);
                out.push('?');
                copied = i + 1;
                Some(i + 1)
            }
            _ => None,
        };
        i = match skip_to {
            Some(j) => j,
            // An unterminated literal or comment: nothing after it is a
            // placeholder; the database reports the syntax error.
            None if matches!(bytes[i], b'\'' | b'"' | b'`' | b'[') => bytes.len(),
            None => i + 1,
        };
    }
    out.push_str(&sql[copied..]);
    Cow::Owned(out)
}

/// Runs one statement and returns its rows.
pub fn query(sql: &str, params: &[Value]) -> Result<Rows, SqlError> {
    host::query(&for_connection(sql), params)
}

/// Runs one statement and returns how many rows it changed.
pub fn execute(sql: &str, params: &[Value]) -> Result<u64, SqlError> {
    host::execute(&for_connection(sql), params)
}

/// As [`execute`], with PostgreSQL's asynchronous commit: returns once the
/// statement's transaction has committed, without waiting for the commit to
/// reach disk. A crash of the database can undo the last such commits (whole
/// and in order, never part of one); when the run ends, however it ends,
/// the host waits until all of them are on disk. For batches a later run would redo, such
/// as deleting what is past retention. On SQLite it is [`execute`].
pub fn execute_async_commit(sql: &str, params: &[Value]) -> Result<u64, SqlError> {
    host::execute_async_commit(&for_connection(sql), params)
}

/// Runs every statement in one transaction: all succeed or none does.
pub fn transaction(statements: &[(&str, Vec<Value>)]) -> Result<Vec<u64>, SqlError> {
    let statements: Vec<host::Statement> = statements
        .iter()
        .map(|(sql, params)| host::Statement {
            sql: for_connection(sql).into_owned(),
            params: params.clone(),
        })
        .collect();
    host::transaction(&statements)
}

/// `CREATE TABLE <partition> PARTITION OF <parent> FOR VALUES …`, built by
/// the host from the names and bounds (see [`crate::partition`] for ranges
/// of time). Needs `create_partition` on `parent`; `partition` goes into
/// the parent's schema unless it names one.
pub fn create_partition(
    parent: &Relation,
    partition: &Relation,
    bounds: &PartitionBounds,
) -> Result<(), SqlError> {
    host::create_partition(parent, partition, bounds)
}

/// `ALTER TABLE <parent> ATTACH PARTITION <partition> FOR VALUES …`, built
/// by the host: makes a table that already exists (in the parent's schema,
/// owned by the parent's owner, not a partition or inheritance child) a
/// partition of `parent`. Needs `create_partition` on both.
pub fn attach_partition(
    parent: &Relation,
    partition: &Relation,
    bounds: &PartitionBounds,
) -> Result<(), SqlError> {
    host::attach_partition(parent, partition, bounds)
}

/// `DROP TABLE <partition>`, when the catalog says it is a partition of
/// `parent`, which needs `drop_partition`.
pub fn drop_partition(parent: &Relation, partition: &Relation) -> Result<(), SqlError> {
    host::drop_partition(parent, partition)
}

/// `ALTER TABLE <parent> DETACH PARTITION <partition> [CONCURRENTLY]`, with
/// the checks of [`drop_partition`].
pub fn detach_partition(
    parent: &Relation,
    partition: &Relation,
    concurrently: bool,
) -> Result<(), SqlError> {
    host::detach_partition(parent, partition, concurrently)
}

/// [`create_partition`] for each `(partition, bounds)`, in one transaction:
/// one that fails is rolled back alone. One result per partition, in order;
/// the outer error is for the call as a whole (then nothing changed).
pub fn create_partitions(
    parent: &Relation,
    partitions: &[(Relation, PartitionBounds)],
) -> Result<Vec<Result<(), SqlError>>, SqlError> {
    let partitions: Vec<host::NewPartition> = partitions
        .iter()
        .map(|(partition, bounds)| host::NewPartition {
            partition: partition.clone(),
            bounds: bounds.clone(),
        })
        .collect();
    host::create_partitions(parent, &partitions)
}

/// [`drop_partition`] for each of `partitions`, as [`create_partitions`].
pub fn drop_partitions(
    parent: &Relation,
    partitions: &[Relation],
) -> Result<Vec<Result<(), SqlError>>, SqlError> {
    host::drop_partitions(parent, partitions)
}

/// [`detach_partition`] (not concurrently) for each of `partitions`, as
/// [`create_partitions`].
pub fn detach_partitions(
    parent: &Relation,
    partitions: &[Relation],
) -> Result<Vec<Result<(), SqlError>>, SqlError> {
    host::detach_partitions(parent, partitions)
}

/// `VACUUM` of `table`, or of the whole database (a grant on `*`).
pub fn vacuum(table: Option<&Relation>, options: VacuumOptions) -> Result<(), SqlError> {
    host::vacuum(table, options)
}

/// `ANALYZE` of `table`, or of the whole database (a grant on `*`).
pub fn analyze(table: Option<&Relation>) -> Result<(), SqlError> {
    host::analyze(table)
}

impl Relation {
    /// `name`, found on the search path (or, for a partition, in its
    /// parent's schema).
    pub fn new(name: impl Into<String>) -> Self {
        Relation {
            schema: None,
            name: name.into(),
        }
    }

    /// `schema.name`.
    pub fn in_schema(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Relation {
            schema: Some(schema.into()),
            name: name.into(),
        }
    }
}

impl VacuumOptions {
    /// Plain `VACUUM`: no option set.
    pub fn plain() -> Self {
        VacuumOptions {
            full: false,
            analyze: false,
            freeze: false,
            skip_locked: false,
        }
    }
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

/// A checked table or column name: a plain identifier (letters, digits,
/// `_`, not starting with a digit, at most 63 bytes) or `schema.name`,
/// folded to lower case as PostgreSQL folds unquoted names. It prints
/// quoted, so it goes into a statement as it is:
/// `format!("DELETE FROM {table}")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident(String);

impl Ident {
    /// Checks `name`, read from config key `key`; the error names both.
    pub fn parse(key: &str, name: &str) -> Result<Ident, Error> {
        let part_ok = |p: &str| {
            p.len() <= 63
                && p.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() <= 2 && parts.iter().all(|p| part_ok(p)) {
            Ok(Ident(name.to_ascii_lowercase()))
        } else {
            Err(Error::InvalidConfig(format!(
                "`{key}` = {name:?} is not a plain table or column name"
            )))
        }
    }

    /// The name unquoted, e.g. `app.events`.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The name without its schema, e.g. `events`.
    pub fn bare(&self) -> &str {
        self.0.rsplit('.').next().unwrap_or(&self.0)
    }

    /// The table for the structured calls ([`create_partition`], [`vacuum`]…).
    pub fn relation(&self) -> Relation {
        match self.0.split_once('.') {
            Some((schema, name)) => Relation::in_schema(schema, name),
            None => Relation::new(self.0.as_str()),
        }
    }

    /// `name` in the same schema, for the structured calls.
    pub fn sibling_relation(&self, name: &str) -> Relation {
        match self.0.split_once('.') {
            Some((schema, _)) => Relation::in_schema(schema, name),
            None => Relation::new(name),
        }
    }

    /// `name` in the same schema, quoted.
    pub fn sibling(&self, name: &str) -> String {
        match self.0.rsplit_once('.') {
            Some((schema, _)) => quote_ident(&format!("{schema}.{name}")),
            None => quote_ident(name),
        }
    }
}

impl std::fmt::Display for Ident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&quote_ident(&self.0))
    }
}

/// Deletes the rows of `table` matching `condition` in batches of
/// `batch_size`, one statement each, picking rows by `ctid` (PostgreSQL)
/// or `rowid` (SQLite). `condition` uses `$1`… for `params`; the batch
/// size is bound after them. `between` is as for [`in_batches`]. Each batch
/// commits asynchronously ([`execute_async_commit`]): a deletion undone by a
/// crash of the database is done again by the next run, and the host waits
/// for every batch to be on disk before the run ends. Returns the total
/// deleted and the number of batches.
pub fn delete_in_batches(
    table: &Ident,
    condition: &str,
    params: &[Value],
    batch_size: u64,
    between: impl FnMut(u64) -> bool,
) -> Result<(u64, u64), SqlError> {
    let limit = format!("${}", params.len() + 1);
    let statement = match dialect()? {
        Dialect::Postgres => format!(
            "DELETE FROM {table} WHERE ctid = ANY (ARRAY (SELECT ctid FROM {table} WHERE {condition} LIMIT {limit}))"
        ),
        Dialect::Sqlite => format!(
            "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {condition} LIMIT {limit})"
        ),
    };
    let mut params = params.to_vec();
    params.push(Value::Integer(batch_size as i64));
    in_batches(
        batch_size,
        || execute_async_commit(&statement, &params),
        between,
    )
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
    fn names_are_quoted_per_part() {
        assert_eq!(quote_ident("events"), "\"events\"");
        assert_eq!(quote_ident("app.Events"), "\"app\".\"Events\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn identifiers_are_plain_or_schema_qualified_names_only() {
        let t = Ident::parse("t", "Events").unwrap();
        assert_eq!((t.name(), t.to_string()), ("events", "\"events\"".into()));
        let t = Ident::parse("t", "app.device_logs").unwrap();
        assert_eq!(t.to_string(), "\"app\".\"device_logs\"");
        assert_eq!(t.bare(), "device_logs");
        assert_eq!(
            t.sibling("device_logs_2026"),
            "\"app\".\"device_logs_2026\""
        );
        assert_eq!(Ident::parse("t", "_x1").unwrap().sibling("y"), "\"y\"");
        let parts = |r: Relation| (r.schema, r.name);
        assert_eq!(
            parts(t.relation()),
            (Some("app".into()), "device_logs".into())
        );
        assert_eq!(
            parts(t.sibling_relation("device_logs_2026")),
            (Some("app".into()), "device_logs_2026".into())
        );
        let bare = Ident::parse("t", "Events").unwrap();
        assert_eq!(parts(bare.relation()), (None, "events".into()));
        assert_eq!(parts(bare.sibling_relation("e_1")), (None, "e_1".into()));
        assert!(Ident::parse("t", &"a".repeat(63)).is_ok());
        for bad in [
            "",
            "a b",
            "x;drop",
            "1abc",
            "a.b.c",
            "\"q\"",
            "a-b",
            ".a",
            "a.",
            "a..b",
            "é",
            "a\"b",
            "a/*",
            "t--",
            "a\0",
            &"a".repeat(64),
        ] {
            let e = Ident::parse("tokens_table", bad).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidConfig(m) if m.starts_with("`tokens_table` = ")),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn sqlite_placeholders_are_numbered_as_written() {
        assert_eq!(
            sqlite_placeholders("DELETE FROM t WHERE a < $1 AND b = $12 LIMIT $2"),
            "DELETE FROM t WHERE a < ?1 AND b = ?12 LIMIT ?2"
        );
        assert!(matches!(sqlite_placeholders("SELECT ?1"), Cow::Borrowed(_)));
        for kept in [
            "SELECT '$1', 'it''s $2'",
            "SELECT \"$1\" FROM [$2] JOIN `$3`",
            "SELECT 1 -- $1\n",
            "SELECT /* $1 */ 1",
            "SELECT a$1, $x, $ FROM t",
            "SELECT 'open $1",
        ] {
            assert_eq!(sqlite_placeholders(kept), kept);
        }
        assert_eq!(
            sqlite_placeholders("SELECT '$1' || $1 -- $2\n, $2 /* $3 */ , $3"),
            "SELECT '$1' || ?1 -- $2\n, ?2 /* $3 */ , ?3"
        );
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
