//! The statements that take over a shape that passed every check, and the
//! counts the report shows, read from the tables; the objects the
//! reference schema lacks come from the first migration's own text.

use super::schema::{ADDED_RUN_COLUMNS, CONFIG_COLUMNS, Found, RUN_COLUMNS, RefColumn};
use super::{
    ADOPTED_VERSION, AdoptError, AdoptOptions, LEFT_RUNNING, Plan, UNKNOWN_TRIGGER, db, scalar,
};
use crate::store::migrate::SQLX_MIGRATIONS_TABLE;
use crate::store::query;
use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::Row as _;
use sqlx::postgres::PgConnection;

/// The statements for a shape that passed every check, and what the
/// tables hold.
pub(super) async fn plan(
    conn: &mut PgConnection,
    options: &AdoptOptions,
    run_columns: &[Found],
    config_columns: &[Found],
    sequence: String,
    has_function: bool,
    kept_columns: Vec<String>,
) -> Result<Plan, AdoptError> {
    let zone = quote_literal(options.timezone.name());
    let found = |columns: &[Found], name: &str| -> (String, bool) {
        let f = columns
            .iter()
            .find(|f| f.name == name)
            .expect("checked: every reference column is there");
        (f.pg_type.clone(), f.not_null)
    };
    // Types that change, and NOT NULLs to add, in one ALTER TABLE each.
    let alterations = |columns: &[Found], spec: &[RefColumn]| -> Vec<String> {
        spec.iter()
            .filter_map(|c| {
                let (pg_type, _) = found(columns, c.name);
                (pg_type != c.kind.target()).then(|| {
                    if pg_type == "timestamp without time zone" {
                        format!(
                            "ALTER COLUMN {0} TYPE {1} USING {0} AT TIME ZONE {zone}",
                            c.name,
                            c.kind.target_sql()
                        )
                    } else {
                        format!("ALTER COLUMN {} TYPE {}", c.name, c.kind.target_sql())
                    }
                })
            })
            .collect()
    };

    let counts = query(
        "SELECT count(*) AS runs, count(DISTINCT task_name) AS tasks, min(id)::int8 AS first, max(id)::int8 AS last, \
                count(*) FILTER (WHERE status = 'running') AS running, \
                count(*) FILTER (WHERE triggered_by = 'scheduler') AS by_scheduler, \
                count(*) FILTER (WHERE triggered_by IS NULL) AS untriggered \
         FROM housekeeper_runs",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db("counting runs"))?;
    let get = |name: &str| -> Result<i64, AdoptError> {
        counts.try_get(name).map_err(db("counting runs"))
    };
    let (runs, run_tasks, left_running, by_scheduler, untriggered) = (
        get("runs")?,
        get("tasks")?,
        get("running")?,
        get("by_scheduler")?,
        get("untriggered")?,
    );
    let first: Option<i64> = counts.try_get("first").map_err(db("counting runs"))?;
    let last: Option<i64> = counts.try_get("last").map_err(db("counting runs"))?;

    let seq = query(&format!(
        "SELECT s.last_value::int8 AS last_value, s.is_called, format_type(p.seqtypid, NULL) AS seq_type, p.seqincrement \
         FROM {sequence} s, pg_sequence p WHERE p.seqrelid = {}::regclass",
        quote_literal(&sequence)
    ))
    .fetch_one(&mut *conn)
    .await
    .map_err(db(format!("reading sequence {sequence}")))?;
    let last_value: i64 = seq
        .try_get("last_value")
        .map_err(db("reading the sequence"))?;
    let is_called: bool = seq
        .try_get("is_called")
        .map_err(db("reading the sequence"))?;
    let seq_type: String = seq
        .try_get("seq_type")
        .map_err(db("reading the sequence"))?;
    let increment: i64 = seq
        .try_get("seqincrement")
        .map_err(db("reading the sequence"))?;
    let sequence_next = if is_called {
        last_value + increment
    } else {
        last_value
    };
    // Rows inserted with explicit ids can be ahead of the sequence; new
    // runs must come after every old one.
    let next_id = match last {
        Some(last) if last >= sequence_next => last + 1,
        _ => sequence_next,
    };

    let (config_tasks, disabled) = {
        let names: Vec<(String, bool)> = sqlx::query_as(
            "SELECT task_name::text, enabled FROM housekeeper_config ORDER BY task_name",
        )
        .persistent(false)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("reading housekeeper_config"))?;
        let disabled = names
            .iter()
            .filter(|(_, enabled)| !enabled)
            .map(|(name, _)| name.clone())
            .collect::<Vec<_>>();
        (names.len() as i64, disabled)
    };
    let null_modified: bool = scalar(
        conn,
        "SELECT EXISTS (SELECT 1 FROM housekeeper_config WHERE last_modified_at IS NULL)",
        "reading housekeeper_config",
    )
    .await?;

    let newest_start = if found(run_columns, "started_at").0 == "timestamp without time zone" {
        sqlx::query_as::<_, (NaiveDateTime, DateTime<Utc>)>(&format!(
            "SELECT started_at, started_at AT TIME ZONE {zone} FROM housekeeper_runs ORDER BY started_at DESC LIMIT 1"
        ))
        .persistent(false)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("reading the newest run"))?
    } else {
        None
    };

    let mut statements = Vec::new();
    // housekeeper_runs: types, NOT NULLs, the columns housekeeper adds.
    let mut run_changes = alterations(run_columns, &RUN_COLUMNS);
    for c in &RUN_COLUMNS {
        if c.not_null && !found(run_columns, c.name).1 && c.name != "triggered_by" {
            run_changes.push(format!("ALTER COLUMN {} SET NOT NULL", c.name));
        }
    }
    if run_columns
        .iter()
        .any(|f| f.name == "triggered_by" && f.default.is_some())
    {
        run_changes.push("ALTER COLUMN triggered_by DROP DEFAULT".into());
    }
    run_changes.extend(
        ADDED_RUN_COLUMNS
            .iter()
            .map(|(name, ty)| format!("ADD COLUMN {name} {ty}")),
    );
    statements.push(format!(
        "ALTER TABLE housekeeper_runs\n    {}",
        run_changes.join(",\n    ")
    ));
    statements.push("ALTER TABLE housekeeper_runs ALTER COLUMN replica DROP DEFAULT".into());
    if seq_type != "bigint" {
        statements.push(format!("ALTER SEQUENCE {sequence} AS BIGINT"));
    }
    if next_id != sequence_next {
        statements.push(format!("ALTER SEQUENCE {sequence} RESTART WITH {next_id}"));
    }
    if by_scheduler > 0 {
        statements.push(
            "UPDATE housekeeper_runs SET triggered_by = 'schedule' WHERE triggered_by = 'scheduler'"
                .into(),
        );
    }
    if untriggered > 0 {
        statements.push(format!(
            "UPDATE housekeeper_runs SET triggered_by = {} WHERE triggered_by IS NULL",
            quote_literal(UNKNOWN_TRIGGER)
        ));
    }
    if !found(run_columns, "triggered_by").1 {
        statements
            .push("ALTER TABLE housekeeper_runs ALTER COLUMN triggered_by SET NOT NULL".into());
    }
    if left_running > 0 {
        statements.push(format!(
            "UPDATE housekeeper_runs SET status = 'interrupted', error = COALESCE(error, {}) WHERE status = 'running'",
            quote_literal(LEFT_RUNNING)
        ));
    }
    statements.extend(RUN_INDEXES.map(|head| init_statement(head).to_owned()));

    // housekeeper_config: types; a missing modification time becomes now.
    let config = alterations(config_columns, &CONFIG_COLUMNS);
    if !config.is_empty() {
        statements.push(format!(
            "ALTER TABLE housekeeper_config\n    {}",
            config.join(",\n    ")
        ));
    }
    if null_modified {
        statements.push(
            "UPDATE housekeeper_config SET last_modified_at = now() WHERE last_modified_at IS NULL"
                .into(),
        );
    }
    statements.push(
        "ALTER TABLE housekeeper_config\n    \
         ALTER COLUMN enabled SET DEFAULT TRUE,\n    \
         ALTER COLUMN enabled SET NOT NULL,\n    \
         ALTER COLUMN last_modified_at SET DEFAULT now(),\n    \
         ALTER COLUMN last_modified_at SET NOT NULL"
            .into(),
    );

    // The summary, filled from the history the way the reference
    // function computed it, and the function over it.
    statements.push(init_statement("CREATE TABLE housekeeper_task_stats ").into());
    statements.push(TASK_STATS_FILL.into());
    if has_function {
        statements.push("DROP FUNCTION get_housekeeper_stats()".into());
    }
    statements.push(init_statement("CREATE FUNCTION get_housekeeper_stats()").into());

    // Our first migration, recorded as sqlx records it.
    let migration = crate::store::Store::postgres_migrator()
        .iter()
        .find(|m| m.version == ADOPTED_VERSION)
        .expect("the first PostgreSQL migration is the one adoption produces");
    statements.push(SQLX_MIGRATIONS_TABLE.trim().into());
    statements.push(format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ({}, {}, TRUE, '\\x{}'::bytea, -1)",
        migration.version,
        quote_literal(&migration.description),
        hex::encode(&*migration.checksum)
    ));

    Ok(Plan {
        timezone: options.timezone,
        runs,
        run_tasks,
        ids: first.zip(last),
        next_id,
        left_running,
        by_scheduler,
        untriggered,
        config_tasks,
        disabled,
        newest_start,
        replaces_function: has_function,
        kept_columns,
        statements,
    })
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Our first migration. The objects the reference schema lacks are made
/// by its own statements, so an adopted database and a migrated one cannot
/// drift apart (migrations are never edited once shipped).
const INIT_MIGRATION: &str =
    include_str!("../../../../migrations/postgres/20261123000001_init.sql");

/// The indexes on `housekeeper_runs`, by the start of their statements.
const RUN_INDEXES: [&str; 3] = [
    "CREATE UNIQUE INDEX housekeeper_runs_occurrence",
    "CREATE INDEX housekeeper_runs_task_started",
    "CREATE INDEX housekeeper_runs_running",
];

/// The statement of [`INIT_MIGRATION`] that starts with `head`, without
/// its `;` (a function's ends with its closing `$$`).
fn init_statement(head: &str) -> &'static str {
    let start = INIT_MIGRATION
        .find(head)
        .unwrap_or_else(|| panic!("the init migration has no statement {head:?}"));
    let rest = &INIT_MIGRATION[start..];
    let end = if rest.starts_with("CREATE FUNCTION") {
        rest.find("$$;").map(|i| i + 2)
    } else {
        rest.find(';')
    };
    &rest[..end.unwrap_or_else(|| panic!("the init migration's {head:?} never ends"))]
}

// The reference function's numbers: every run counts, `error_count` is
// `status = 'error'`, the last run is the latest start. Its average skips
// runs without a duration; the summary keeps a total, so such runs count
// at the task's average (when all durations are known, the plain sum).
const TASK_STATS_FILL: &str = "INSERT INTO housekeeper_task_stats
    (task_name, total_runs, success_count, error_count, skipped_count, total_duration_ms,
     last_run_at, last_status, last_success_at)
SELECT r.task_name,
       count(*),
       count(*) FILTER (WHERE r.status = 'success'),
       count(*) FILTER (WHERE r.status = 'error'),
       0,
       CASE WHEN count(r.duration_ms) = count(*) THEN sum(r.duration_ms)
            ELSE round(COALESCE(avg(r.duration_ms), 0) * count(*)) END::bigint,
       max(r.started_at),
       (SELECT l.status FROM housekeeper_runs l WHERE l.task_name = r.task_name
        ORDER BY l.started_at DESC, l.id DESC LIMIT 1),
       max(COALESCE(r.completed_at, r.started_at)) FILTER (WHERE r.status = 'success')
FROM housekeeper_runs r
GROUP BY r.task_name";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal("Etc/UTC"), "'Etc/UTC'");
        assert_eq!(quote_literal("o'clock"), "'o''clock'");
    }

    #[test]
    fn the_init_migration_provides_every_statement_adoption_takes_from_it() {
        for head in RUN_INDEXES {
            let statement = init_statement(head);
            assert!(
                statement.starts_with(head) && !statement.contains(';'),
                "{statement}"
            );
        }
        let table = init_statement("CREATE TABLE housekeeper_task_stats ");
        assert!(
            table.ends_with(')') && table.contains("last_success_at"),
            "{table}"
        );
        let function = init_statement("CREATE FUNCTION get_housekeeper_stats()");
        assert!(
            function.ends_with("$$") && function.contains("ORDER BY s.task_name"),
            "{function}"
        );
    }
}
