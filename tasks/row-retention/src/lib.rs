//! `row-retention`: deletes rows older than an age from a plain table, in
//! batches, so no single statement holds locks or bloats WAL for long.
//!
//! `[config]`: `table` (required), `column` (a timestamp column, default
//! `created_at`), `older_than` (required, e.g. `90 days`), `batch_size`
//! (default 10000), `pause_ms` between batches (default 0).
//! Grants: the table needs `delete`.
//!
//! On PostgreSQL a batch is `DELETE … WHERE ctid = ANY(ARRAY(SELECT ctid …
//! LIMIT n))`; on SQLite it selects by `rowid`. In a dry-run the host rolls
//! every statement back, so the task issues one unbatched delete to report
//! how many rows would go.

use housekeeper_sdk::partition::{self, Age};
use housekeeper_sdk::sql::{self, Dialect, Value, quote_ident};
use housekeeper_sdk::{Context, Error, Info, Report, Task, config, identifier, log};
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
        let table = config::string("table")?
            .ok_or_else(|| Error::InvalidConfig("`table` is required".into()))?;
        let table = quote_ident(&identifier("table", &table)?);
        let column = quote_ident(&identifier(
            "column",
            &config::string_or("column", "created_at")?,
        )?);
        let older_than = config::string("older_than")?.ok_or_else(|| {
            Error::InvalidConfig("`older_than` is required, e.g. \"90 days\"".into())
        })?;
        let age = Age::parse(&older_than)
            .map_err(|e| Error::InvalidConfig(format!("`older_than`: {e}")))?;
        let batch_size = config::u64("batch_size")?.unwrap_or(10_000).max(1);
        let pause = Duration::from_millis(config::u64("pause_ms")?.unwrap_or(0));
        let cutoff = Value::Timestamp(partition::to_millis(age.before(partition::now())));

        let (key, placeholder) = match sql::dialect()? {
            Dialect::Postgres => ("ctid", ["$1", "$2"]),
            Dialect::Sqlite => ("rowid", ["?1", "?2"]),
        };
        if ctx.dry_run {
            let n = sql::execute(
                &format!("DELETE FROM {table} WHERE {column} < {}", placeholder[0]),
                &[cutoff],
            )?;
            return Ok(Report::new(format!(
                "{table}: would delete {n} rows older than {older_than}"
            ))
            .metric("rows_deleted", n as f64));
        }
        let batch = match key {
            "ctid" => format!(
                "DELETE FROM {table} WHERE ctid = ANY (ARRAY (SELECT ctid FROM {table} WHERE {column} < $1 LIMIT $2))"
            ),
            _ => format!(
                "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {column} < ?1 LIMIT ?2)"
            ),
        };
        let (deleted, batches) = sql::in_batches(
            batch_size,
            || sql::execute(&batch, &[cutoff.clone(), Value::Integer(batch_size as i64)]),
            |total| {
                log::debug(format!("{total} rows deleted so far"));
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
                true
            },
        )?;
        Ok(Report::new(format!(
            "{table}: deleted {deleted} rows older than {older_than} in {batches} batches"
        ))
        .metric("rows_deleted", deleted as f64)
        .metric("batches", batches as f64))
    }
}

housekeeper_sdk::export_task!(RowRetention);
