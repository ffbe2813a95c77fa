//! `dedupe-orphans`: keeps the newest row per key and deletes rows whose
//! parent row is gone.
//!
//! `[config]`: `table` (required), `key` (columns that should be unique,
//! separated by commas; no key: no dedupe), `newest_by` (default
//! `reported_at`), `id` (a unique column breaking ties, default `id`),
//! `parent_table` and `parent_column` with `column` (the referencing column
//! in `table`; no parent: no orphan cleanup).
//! Grants: `table` needs `delete`; `parent_table` needs `select`.

use housekeeper_sdk::sql;
use housekeeper_sdk::{Context, Error, Info, Report, Task, config};

struct DedupeOrphans;

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
        let table = config::table("table")?;
        let id = config::ident_or("id", "id")?;

        let mut duplicates = 0;
        let keys = config::idents("key")?;
        if !keys.is_empty() {
            let keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
            let newest = config::ident_or("newest_by", "reported_at")?;
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
        if let Some(parent) = config::ident("parent_table")? {
            let parent_column = config::ident_or("parent_column", "id")?;
            let child_column = config::ident("column")?
                .ok_or_else(|| Error::InvalidConfig("`column` (the column that references the parent) is required with `parent_table`".into()))?;
            orphans = sql::execute(
                &format!(
                    "DELETE FROM {table} WHERE {child_column} IS NOT NULL AND NOT EXISTS (
                         SELECT 1 FROM {parent} AS p WHERE p.{parent_column} = {table}.{child_column})"
                ),
                &[],
            )?;
        }
        Ok(Report::new(format!(
            "{table}: {} {duplicates} duplicates and {orphans} orphans",
            ctx.verb("deleted", "would delete")
        ))
        .metric("duplicates_deleted", duplicates)
        .metric("orphans_deleted", orphans))
    }
}

housekeeper_sdk::export_task!(DedupeOrphans);
