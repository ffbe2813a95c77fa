//! `row-retention`: deletes rows older than an age from a plain table, in
//! batches, so no single statement holds locks or bloats WAL for long.
//!
//! `[config]`: `table` (required), `column` (a timestamp column, default
//! `created_at`), `older_than` (required, e.g. `90 days`), `batch_size`
//! (rows per batch, default 10000), `pause_ms` between batches (default 0),
//! `strategy` (PostgreSQL only: `blocks`, the default, or `limit`).
//! Grants: the table needs `delete`.
//!
//! `blocks` walks the table once in ranges of physical blocks (`ctid`
//! range scans), each range sized from the last so that a batch deletes
//! about `batch_size` rows: the whole run reads the table once, as a single
//! `DELETE` would, and ranges with nothing to delete are crossed quickly.
//! `limit` deletes `ctid = ANY(ARRAY(SELECT ctid … LIMIT n))`, which suits
//! a huge table with few old rows and an index on the column. On SQLite a
//! batch selects by `rowid`. On PostgreSQL each batch commits without
//! waiting for the disk (`execute-async-commit`): a crash of the database
//! can undo the last batches, which the next run deletes again, and the
//! host waits for all of them to be on disk before the run ends. Many
//! batches then cost about what one `DELETE` costs. In a dry-run the host rolls every statement
//! back, so the task issues one unbatched delete to report how many rows
//! would go.

use housekeeper_sdk::sql::{self, Dialect, Ident, Value};
use housekeeper_sdk::{Context, Error, Info, Report, Task, config, log};
use std::time::Duration;

struct RowRetention;

impl Task for RowRetention {
    fn describe() -> Info {
        Info::new(
            "row-retention",
            "Deletes rows older than an age, in batches",
        )
        .schedule("0 2 * * *")
        .wants("sql:<table>:delete")
    }

    fn run(ctx: &Context) -> Result<Report, Error> {
        let table = config::table("table")?;
        let column = config::ident_or("column", "created_at")?;
        let older_than = config::age("older_than")?.ok_or_else(|| {
            Error::InvalidConfig("`older_than` is required, e.g. \"90 days\"".into())
        })?;
        let batch_size = config::u64("batch_size")?.unwrap_or(10_000).max(1);
        let pause = Duration::from_millis(config::u64("pause_ms")?.unwrap_or(0));
        let cutoff = Value::Timestamp(older_than.ago());

        let condition = format!("{column} < $1");
        if ctx.dry_run {
            let n = sql::execute(&format!("DELETE FROM {table} WHERE {condition}"), &[cutoff])?;
            return Ok(Report::new(format!(
                "{table}: would delete {n} rows older than {older_than}"
            ))
            .metric("rows_deleted", n));
        }
        let strategy = config::string_or("strategy", "blocks")?;
        let between = |total: u64| {
            log::debug(format!("{total} rows deleted so far"));
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
            true
        };
        let (deleted, batches) = match (sql::dialect()?, strategy.as_str()) {
            (Dialect::Postgres, "blocks") => {
                by_blocks(&table, &column, &cutoff, batch_size, between)?
            }
            (Dialect::Postgres, "limit") | (Dialect::Sqlite, _) => {
                sql::delete_in_batches(&table, &condition, &[cutoff], batch_size, between)?
            }
            (_, other) => {
                return Err(Error::InvalidConfig(format!(
                    "`strategy` = {other:?}; use blocks or limit"
                )));
            }
        };
        Ok(Report::new(format!(
            "{table}: deleted {deleted} rows older than {older_than} in {batches} batches"
        ))
        .metric("rows_deleted", deleted)
        .metric("batches", batches))
    }
}

/// PostgreSQL's default page size; a server built with another one only
/// gets differently sized (still complete) ranges.
const BLOCK_SIZE: i64 = 8192;

/// Deletes in ranges of blocks, each sized so it deletes about
/// `batch_size` rows judging by the range before it, then once more past
/// the last block seen (rows added meanwhile).
fn by_blocks(
    table: &Ident,
    column: &Ident,
    cutoff: &Value,
    batch_size: u64,
    mut between: impl FnMut(u64) -> bool,
) -> Result<(u64, u64), Error> {
    let shape = sql::query(
        "SELECT pg_relation_size(c.oid), c.reltuples::float8, c.relpages::int8
         FROM pg_class c WHERE c.oid = to_regclass($1)",
        &[Value::Text(table.to_string())],
    )?;
    let row = shape
        .rows
        .first()
        .ok_or_else(|| Error::from(format!("table {table} does not exist")))?;
    let blocks = row[0].as_i64().unwrap_or(0) / BLOCK_SIZE;
    let tuples = row[1].as_f64().unwrap_or(0.0);
    let pages = row[2].as_i64().unwrap_or(0);
    let per_block = if tuples > 0.0 && pages > 0 {
        (tuples / pages as f64).max(1.0)
    } else {
        100.0
    };
    let mut step = ((batch_size as f64 / per_block) as i64).max(1);
    let range = format!(
        "DELETE FROM {table} WHERE ctid >= $2::text::tid AND ctid < $3::text::tid AND {column} < $1"
    );
    let (mut total, mut batches, mut start) = (0, 0, 0);
    while start < blocks {
        let end = start + step;
        let deleted = sql::execute_async_commit(
            &range,
            &[
                cutoff.clone(),
                Value::Text(format!("({start},0)")),
                Value::Text(format!("({end},0)")),
            ],
        )?;
        total += deleted;
        batches += 1;
        start = end;
        // At most four times larger or smaller than the last range.
        let scale = if deleted == 0 {
            4.0
        } else {
            (batch_size as f64 / deleted as f64).clamp(0.25, 4.0)
        };
        step = ((step as f64 * scale) as i64).max(1);
        if !between(total) {
            return Ok((total, batches));
        }
    }
    total += sql::execute_async_commit(
        &format!("DELETE FROM {table} WHERE ctid >= $2::text::tid AND {column} < $1"),
        &[cutoff.clone(), Value::Text(format!("({start},0)"))],
    )?;
    Ok((total, batches + 1))
}

housekeeper_sdk::export_task!(RowRetention);
