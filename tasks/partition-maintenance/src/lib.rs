//! `partition-maintenance`: keeps a range-partitioned PostgreSQL table ready
//! for inserts and within retention.
//!
//! Creates every missing partition from the current period through
//! `premake` periods ahead (filling gaps), then drops or detaches
//! partitions that lie entirely before the retention cutoff, and warns when
//! the default partition holds rows (which blocks creating partitions for
//! their range). The partitions to create, and those to drop or detach, go
//! to the host in one call each (`sql::create_partitions`,
//! `drop_partitions`, `detach_partitions`): the host builds every
//! statement, checks the catalog and runs them as the table's owner in one
//! transaction, each under a savepoint, so one that fails does not hold
//! back the rest.
//!
//! `[config]`: `table` (required), `interval` (`daily` | `hourly` |
//! `monthly`, default daily), `premake` (periods ahead; default 30 daily, 48
//! hourly, 3 monthly; `premake_days` is accepted too), `retention` (an age
//! such as `90 days`; `retention_days` is accepted too; none: nothing is
//! dropped), `retention_mode` (`drop` | `detach`, default drop). The
//! default partition is found in the catalog.
//!
//! Partitions are named `<table>_YYYY_MM_DD`, `<table>_YYYY_MM_DD_HH` or
//! `<table>_YYYY_MM` with UTC bounds; partitions named otherwise are left
//! alone. Grants: the table needs `select`, `create_partition` and
//! `drop_partition`; the default partition needs `select` for the check.

use housekeeper_sdk::partition::{self, Interval, Partition};
use housekeeper_sdk::sql::{self, Ident, SqlError, Value};
use housekeeper_sdk::time::{self, Age};
use housekeeper_sdk::{Context, Error, Info, Report, Task, config, log};
use std::collections::BTreeSet;

struct PartitionMaintenance;

/// How many rows of the default partition are counted at most.
const DEFAULT_ROWS_CAP: i64 = 1_000_000;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Drop,
    Detach,
}

struct Settings {
    table: Ident,
    interval: Interval,
    premake: u32,
    retention: Option<Age>,
    mode: Mode,
}

fn settings() -> Result<Settings, Error> {
    let table = config::table("table")?;
    let interval = Interval::parse(&config::string_or("interval", "daily")?)
        .map_err(|e| Error::InvalidConfig(format!("`interval`: {e}")))?;
    let premake = match config::u64("premake")? {
        Some(n) => Some(n),
        None => config::u64("premake_days")?,
    }
    .map(|n| n.min(10_000) as u32)
    .unwrap_or(interval.default_premake());
    let retention = match config::age("retention")? {
        Some(age) => Some(age),
        None => config::u64("retention_days")?.map(|d| Age::Days(d as u32)),
    };
    let mode = match config::string_or("retention_mode", "drop")?.as_str() {
        "drop" => Mode::Drop,
        "detach" => Mode::Detach,
        other => {
            return Err(Error::InvalidConfig(format!(
                "`retention_mode` = {other:?}; use drop or detach"
            )));
        }
    };
    Ok(Settings {
        table,
        interval,
        premake,
        retention,
        mode,
    })
}

/// Counts what a batch call did, and its failures by partition name.
fn tally(
    names: Vec<String>,
    results: Result<Vec<Result<(), SqlError>>, SqlError>,
) -> (u64, Vec<String>) {
    match results {
        Err(e) => (
            0,
            names
                .iter()
                .map(|n| format!("{n}: {}", e.message()))
                .collect(),
        ),
        Ok(results) => {
            let mut done = 0;
            let mut failed = Vec::new();
            for (name, result) in names.into_iter().zip(results) {
                match result {
                    Ok(()) => done += 1,
                    Err(e) => failed.push(format!("{name}: {}", e.message())),
                }
            }
            (done, failed)
        }
    }
}

impl Task for PartitionMaintenance {
    fn describe() -> Info {
        Info::new(
            "partition-maintenance",
            "Creates partitions ahead, drops or detaches those past retention, warns about rows in the default partition",
        )
        .schedule("0 1 * * *")
        .run_on_startup(true)
        .wants("sql:<table>:select,create_partition,drop_partition")
    }

    fn run(ctx: &Context) -> Result<Report, Error> {
        let s = settings()?;
        let table_q = s.table.to_string();
        let partitioned = sql::scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass($1))",
            &[Value::Text(table_q.clone())],
        )?
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
        if !partitioned {
            return Err(Error::from(format!(
                "`{}` is not a partitioned table (or does not exist)",
                s.table.name()
            )));
        }
        let children = sql::query(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = to_regclass($1)",
            &[Value::Text(table_q.clone())],
        )?;
        let mut existing = BTreeSet::new();
        let mut default = None;
        for row in &children.rows {
            let name = row[0].as_str().unwrap_or_default().to_owned();
            if row[1].as_bool() == Some(true) {
                default = Some(name.clone());
            }
            existing.insert(name);
        }

        let now = time::now();
        let wanted = partition::wanted(s.table.name(), s.interval, now, s.premake);
        let parent = s.table.relation();
        let missing: Vec<&Partition> = wanted
            .iter()
            .filter(|p| !existing.contains(&p.name))
            .collect();
        let attempted = missing.len() as u64;
        let (created, mut failures) = if missing.is_empty() {
            (0, Vec::new())
        } else {
            let specs: Vec<_> = missing
                .iter()
                .map(|p| (p.relation(&s.table), p.bounds()))
                .collect();
            tally(
                missing.iter().map(|p| p.name.clone()).collect(),
                sql::create_partitions(&parent, &specs),
            )
        };

        let mut removed = 0;
        if let Some(age) = s.retention {
            let cutoff = age.before(now);
            let expired: Vec<Partition> = existing
                .iter()
                .filter_map(|name| Partition::parse(s.table.name(), s.interval, name))
                .filter(|p| p.end <= cutoff)
                .collect();
            if !expired.is_empty() {
                let relations: Vec<_> = expired.iter().map(|p| p.relation(&s.table)).collect();
                let results = match s.mode {
                    Mode::Drop => sql::drop_partitions(&parent, &relations),
                    Mode::Detach => sql::detach_partitions(&parent, &relations),
                };
                let (n, failed) = tally(expired.into_iter().map(|p| p.name).collect(), results);
                removed = n;
                failures.extend(failed);
            }
        }

        let mut default_rows = 0;
        if let Some(default) = default {
            let counted = sql::scalar(
                &format!(
                    "SELECT count(*) FROM (SELECT 1 FROM {} LIMIT {DEFAULT_ROWS_CAP}) AS d",
                    s.table.sibling(&default)
                ),
                &[],
            );
            match counted {
                Ok(v) => default_rows = v.and_then(|v| v.as_i64()).unwrap_or(0),
                Err(SqlError::AccessDenied(_)) => log::warn(format!(
                    "cannot check the default partition: grant `select` on `{default}`"
                )),
                Err(e) => return Err(e.into()),
            }
            if default_rows > 0 {
                log::warn(format!(
                    "the default partition {default} holds {default_rows}{} rows: partitions for their range cannot be created until they are moved",
                    if default_rows >= DEFAULT_ROWS_CAP {
                        "+"
                    } else {
                        ""
                    }
                ));
            }
        }

        let failed_creates = attempted - created;
        let ahead = wanted.len() as u64 - failed_creates;
        let (removal, removed_word, removed_metric) = match s.mode {
            Mode::Drop => ("drop", "dropped", "partitions_dropped"),
            Mode::Detach => ("detach", "detached", "partitions_detached"),
        };
        let mut summary = if ctx.dry_run {
            format!(
                "{}: would create {created}, would {removal} {removed}",
                s.table.name()
            )
        } else {
            format!(
                "{}: created {created}, {removed_word} {removed}",
                s.table.name()
            )
        };
        if default_rows > 0 {
            summary.push_str(&format!("; {default_rows} rows in the default partition"));
        }
        if !failures.is_empty() {
            for f in &failures {
                log::error(f);
            }
            return Err(Error::from(format!(
                "{summary}; failed: {}",
                failures.join("; ")
            )));
        }
        Ok(Report::new(summary)
            .metric("partitions_created", created)
            .metric(removed_metric, removed)
            .metric("partitions_ahead", ahead)
            .metric("default_partition_rows", default_rows))
    }
}

housekeeper_sdk::export_task!(PartitionMaintenance);
