//! `dedupe-orphans`: keeps the newest row per key and deletes rows whose
//! parent row is gone.
//!
//! `[config]`: `table` (required), `key` (columns that should be unique,
//! separated by commas; no key: no dedupe), `newest_by` (default
//! `reported_at`), `id` (a unique column breaking ties, default `id`),
//! `parent_table` and `parent_column` with `column` (the referencing column
//! in `table`; no parent: no orphan cleanup).
//! Grants: `table` needs `delete`; `parent_table` needs `select`.

use housekeeper_sdk::sql::{self, quote_ident};
use housekeeper_sdk::{Context, Error, Info, Report, Task, config, identifier};

struct DedupeOrphans;

fn column(key: &str, default: &str) -> Result<String, Error> {
    Ok(quote_ident(&identifier(
        key,
        &config::string_or(key, default)?,
    )?))
}

impl Task for DedupeOrphans {
    fn describe() -> Info {
        Info::new(
            "dedupe-orphans",
            "Keeps the newest row per key and deletes rows whose parent is gone",
        )
        .schedule("0 3 * * *")
        .wants("sql:<table>:delete")
        .wants("sql:<parent_table>:select")
    }

    fn run(ctx: &Context) -> Result<Report, Error> {
        let table = config::string("table")?
            .ok_or_else(|| Error::InvalidConfig("`table` is required".into()))?;
        let table = quote_ident(&identifier("table", &table)?);
        let id = column("id", "id")?;

        let mut duplicates = 0;
        if let Some(key) = config::string("key")? {
            let keys = key
                .split(',')
                .map(|k| identifier("key", k.trim()).map(|k| quote_ident(&k)))
                .collect::<Result<Vec<_>, _>>()?;
            let newest = column("newest_by", "reported_at")?;
            duplicates = sql::execute(
                &format!(
                    "DELETE FROM {table} WHERE {id} IN (
                         SELECT {id} FROM (
                             SELECT {id}, row_number() OVER (
                                 PARTITION BY {} ORDER BY {newest} DESC, {id} DESC) AS rn
                             FROM {table}) AS rned
                         WHERE rn > 1)",
                    keys.join(", ")
                ),
                &[],
            )?;
        }

        let mut orphans = 0;
        if let Some(parent) = config::string("parent_table")? {
            let parent = quote_ident(&identifier("parent_table", &parent)?);
            let parent_column = column("parent_column", "id")?;
            let child_column = config::string("column")?
                .ok_or_else(|| Error::InvalidConfig("`column` (the column that references the parent) is required with `parent_table`".into()))?;
            let child_column = quote_ident(&identifier("column", &child_column)?);
            orphans = sql::execute(
                &format!(
                    "DELETE FROM {table} WHERE {child_column} IS NOT NULL AND NOT EXISTS (
                         SELECT 1 FROM {parent} AS p WHERE p.{parent_column} = {table}.{child_column})"
                ),
                &[],
            )?;
        }
        let verb = if ctx.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        Ok(Report::new(format!(
            "{table}: {verb} {duplicates} duplicates and {orphans} orphans"
        ))
        .metric("duplicates_deleted", duplicates as f64)
        .metric("orphans_deleted", orphans as f64))
    }
}

housekeeper_sdk::export_task!(DedupeOrphans);
