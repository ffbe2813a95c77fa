//! Taking over the reference service's PostgreSQL database in place. The
//! reference schema is the `CREATE TABLE`s and `get_housekeeper_stats()` of
//! the reference service's documentation, verbatim, in
//! `tests/sql/reference-schema.sql`. Each test gets a fresh database without
//! our migrations (`#[sqlx::test]`); "nothing changed" is a `pg_dump` of the
//! whole database before and after. `serve` and `db adopt` run as the real
//! binary.

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use housekeeper::model::RunStatus;
use housekeeper::store::adopt::{
    AdoptOptions, Finding, LEFT_RUNNING, REFERENCE_REPLICA, UNKNOWN_TRIGGER,
};
use housekeeper::store::{NewRun, RunRecord, Store, StoreOptions};
use housekeeper_tests::{binary, database_url, fixture_path, new_run};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

const REFERENCE_SCHEMA: &str = include_str!("../../sql/reference-schema.sql");

const TASKS: [&str; 4] = [
    "api-key-rotation",
    "cleanup-old-logs",
    "database-vacuum",
    "device-logs-retention",
];

/// The whole database as `pg_dump` writes it (schema and rows).
fn dump(url: &str) -> String {
    dump_with(url, &[])
}

fn dump_with(url: &str, args: &[&str]) -> String {
    let out = Command::new("pg_dump")
        .arg("--no-owner")
        .arg("--dbname")
        .arg(url)
        .args(args)
        .output()
        .expect("pg_dump runs (PostgreSQL client tools)");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Newer pg_dump guards its output with a random key per run.
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Empties the database and builds the reference schema from the seed.
async fn reference(pool: &PgPool) {
    exec(pool, "DROP SCHEMA public CASCADE; CREATE SCHEMA public").await;
    // The seed's image_security_scans references the API's image_registry,
    // which the seed does not define.
    exec(pool, "CREATE TABLE image_registry (id SERIAL PRIMARY KEY)").await;
    exec(pool, REFERENCE_SCHEMA).await;
}

/// `n` runs of the four tasks, 9h17m3.123457s apart from 2025-01-01 03:00
/// (so across a daylight saving change), one in seven an error, one in five
/// by hand; `database-vacuum` switched off, `cleanup-old-logs` on.
async fn seed(pool: &PgPool, n: i32) {
    sqlx::query(
        "INSERT INTO housekeeper_runs (task_name, started_at, completed_at, status, duration_ms, output, error, triggered_by) \
         SELECT (ARRAY['api-key-rotation', 'cleanup-old-logs', 'database-vacuum', 'device-logs-retention'])[i % 4 + 1], \
                TIMESTAMP '2025-01-01 03:00:00' + i * INTERVAL '9 hours 17 minutes 3.123457 seconds', \
                TIMESTAMP '2025-01-01 03:00:00' + i * INTERVAL '9 hours 17 minutes 3.123457 seconds' \
                    + (i * 37 % 5000) * INTERVAL '1 millisecond', \
                CASE WHEN i % 7 = 0 THEN 'error' ELSE 'success' END, \
                i * 37 % 5000, \
                'run ' || i, \
                CASE WHEN i % 7 = 0 THEN 'failed ' || i END, \
                CASE WHEN i % 5 = 0 THEN 'manual' ELSE 'scheduler' END \
         FROM generate_series(1, $1) i",
    )
    .bind(n)
    .persistent(false)
    .execute(pool)
    .await
    .unwrap();
    exec(
        pool,
        "INSERT INTO housekeeper_config (task_name, enabled, schedule) VALUES \
         ('database-vacuum', false, '0 4 * * 0'), ('cleanup-old-logs', true, NULL)",
    )
    .await;
}

/// A row of the reference `housekeeper_runs`.
#[derive(Debug, Clone, sqlx::FromRow)]
struct OldRun {
    id: i32,
    task_name: String,
    started_at: NaiveDateTime,
    completed_at: Option<NaiveDateTime>,
    status: String,
    duration_ms: Option<i32>,
    output: Option<String>,
    error: Option<String>,
    triggered_by: Option<String>,
}

/// The reference schema with 300 runs: its runs, its stats and how many
/// runs failed, as read before anything takes it over.
async fn seeded_reference(pool: &PgPool) -> (Vec<OldRun>, Vec<StatsRow<NaiveDateTime>>, usize) {
    reference(pool).await;
    seed(pool, 300).await;
    let old = old_runs(pool).await;
    let errors = old.iter().filter(|r| r.status == "error").count();
    (old, old_stats(pool).await, errors)
}

async fn old_runs(pool: &PgPool) -> Vec<OldRun> {
    sqlx::query_as("SELECT * FROM housekeeper_runs ORDER BY id")
        .persistent(false)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// `get_housekeeper_stats()` with the average to two places, as ours gives it.
type StatsRow<T> = (
    String,
    i64,
    i64,
    i64,
    Option<String>,
    Option<T>,
    Option<String>,
);

const STATS: &str = "SELECT task_name::text, total_runs, success_count, error_count, \
                     round(avg_duration_ms, 2)::text, last_run_at, last_status::text \
                     FROM get_housekeeper_stats() ORDER BY 1";

async fn old_stats(pool: &PgPool) -> Vec<StatsRow<NaiveDateTime>> {
    sqlx::query_as(STATS)
        .persistent(false)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn new_stats(pool: &PgPool) -> Vec<StatsRow<DateTime<Utc>>> {
    sqlx::query_as(STATS)
        .persistent(false)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// What an old stats row says, as instants read in `tz`.
fn in_zone(old: &[StatsRow<NaiveDateTime>], tz: Tz) -> Vec<StatsRow<DateTime<Utc>>> {
    old.iter()
        .cloned()
        .map(|(a, b, c, d, e, f, g)| (a, b, c, d, e, f.map(|t| instant(tz, t)), g))
        .collect()
}

/// The instant a wall-clock time in `tz` names, as PostgreSQL reads it: a
/// time repeated when clocks go back is the later one (standard time); a
/// time skipped when they go forward uses the offset from before the jump.
fn instant(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(_, later) => later.with_timezone(&Utc),
        LocalResult::None => {
            let before = tz
                .from_local_datetime(&(local - Duration::hours(3)))
                .single()
                .unwrap();
            let offset = chrono::Offset::fix(before.offset());
            Utc.from_utc_datetime(&(local - Duration::seconds(offset.local_minus_utc().into())))
        }
    }
}

async fn open(url: &str, tz: Tz) -> anyhow::Result<Store> {
    Store::open_with(
        url,
        "new-replica",
        &StoreOptions::default(),
        &AdoptOptions {
            timezone: tz,
            ..AdoptOptions::default()
        },
    )
    .await
}

async fn all_runs(store: &Store) -> BTreeMap<i64, RunRecord> {
    let mut runs = BTreeMap::new();
    for task in TASKS {
        for r in store.runs(task, 100_000).await.unwrap() {
            runs.insert(r.id, r);
        }
    }
    runs
}

/// Every old run is there with the same id and times (as instants read in
/// `tz`), status, duration and text; `scheduler` is now `schedule`.
fn assert_carried_over(old: &[OldRun], new: &BTreeMap<i64, RunRecord>, tz: Tz) {
    assert_eq!(new.len(), old.len());
    for o in old {
        let n = &new[&i64::from(o.id)];
        assert_eq!(n.task_name, o.task_name);
        assert_eq!(n.started_at, instant(tz, o.started_at), "run {}", o.id);
        assert_eq!(n.completed_at, o.completed_at.map(|t| instant(tz, t)));
        assert_eq!(n.status.as_str(), o.status);
        assert_eq!(n.duration_ms, o.duration_ms.map(i64::from));
        assert_eq!((&n.output, &n.error), (&o.output, &o.error));
        let trigger = match o.triggered_by.as_deref() {
            Some("scheduler") => "schedule",
            Some(other) => other,
            None => UNKNOWN_TRIGGER,
        };
        assert_eq!(n.triggered_by.as_str(), trigger);
        assert_eq!(n.replica, REFERENCE_REPLICA);
        assert!(!n.dry_run);
        assert_eq!(n.scheduled_for, None);
        assert_eq!(n.metrics, None);
    }
}

fn manual(task: &str) -> NewRun<'_> {
    new_run(task, housekeeper::model::Trigger::Manual)
}

/// The seed's own queries still run.
async fn seed_queries_run(pool: &PgPool, runs: usize, errors: usize, tasks: usize) {
    let recent = sqlx::query("SELECT * FROM housekeeper_runs ORDER BY started_at DESC LIMIT 50")
        .persistent(false)
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(recent.len(), runs.min(50));
    let stats = sqlx::query("SELECT * FROM get_housekeeper_stats()")
        .persistent(false)
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(stats.len(), tasks);
    let failed = sqlx::query(
        "SELECT * FROM housekeeper_runs WHERE status = 'error' ORDER BY started_at DESC",
    )
    .persistent(false)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(failed.len(), errors);
    let one = sqlx::query(
        "SELECT task_name, total_runs, success_count, error_count, avg_duration_ms, last_run_at, last_status \
         FROM get_housekeeper_stats() WHERE task_name = 'api-key-rotation'",
    )
    .persistent(false)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(one.len(), 1);
}

#[sqlx::test(migrations = false)]
async fn history_toggles_and_stats_are_taken_over(pool: PgPool) {
    let (old, stats_before, errors) = seeded_reference(&pool).await;
    let url = database_url(&pool);

    let store = open(&url, chrono_tz::Etc::UTC).await.unwrap();

    assert_carried_over(&old, &all_runs(&store).await, chrono_tz::Etc::UTC);
    assert_eq!(
        new_stats(&pool).await,
        in_zone(&stats_before, chrono_tz::Etc::UTC)
    );
    // The summary the API reads says the same.
    let stats = store.stats().await.unwrap();
    for (task, total, success, error, _, last_run_at, last_status) in
        in_zone(&stats_before, chrono_tz::Etc::UTC)
    {
        let s = &stats[&task];
        assert_eq!(
            (s.total_runs, s.success_count, s.error_count),
            (total, success, error)
        );
        assert_eq!(
            (s.last_run_at, s.last_status.map(|l| l.as_str())),
            (last_run_at, last_status.as_deref())
        );
        let durations: Vec<f64> = old
            .iter()
            .filter(|r| r.task_name == task)
            .filter_map(|r| r.duration_ms.map(f64::from))
            .collect();
        let mean = durations.iter().sum::<f64>() / durations.len() as f64;
        assert!((s.avg_duration_ms.unwrap() - mean).abs() < 1e-9);
    }
    let settings = store.settings().await.unwrap();
    assert!(!settings["database-vacuum"].enabled);
    assert_eq!(
        settings["database-vacuum"].schedule.as_deref(),
        Some("0 4 * * 0")
    );
    assert!(settings["cleanup-old-logs"].enabled);
    assert_eq!(settings.len(), 2);

    let max_old = old.iter().map(|r| i64::from(r.id)).max().unwrap();
    let id = store
        .begin_run(&manual("cleanup-old-logs"))
        .await
        .unwrap()
        .lease()
        .unwrap()
        .run_id;
    assert_eq!(id, max_old + 1);
    seed_queries_run(&pool, old.len() + 1, errors, TASKS.len()).await;
}

#[sqlx::test(migrations = false)]
async fn the_adopted_schema_is_the_migrated_schema(pool: PgPool) {
    let url = database_url(&pool);
    let schema = |url: &str| dump_with(url, &["--schema-only", "--exclude-table=image_*"]);
    let migrations = async |pool: &PgPool| -> Vec<(i64, String, bool, Vec<u8>, i64)> {
        sqlx::query_as(
            "SELECT version, description, success, checksum, execution_time FROM _sqlx_migrations ORDER BY version",
        )
        .persistent(false)
        .fetch_all(pool)
        .await
        .unwrap()
    };

    // A fresh database, migrated.
    exec(&pool, "DROP SCHEMA public CASCADE; CREATE SCHEMA public").await;
    drop(open(&url, chrono_tz::Etc::UTC).await.unwrap());
    let migrated = schema(&url);
    let recorded = migrations(&pool).await;

    reference(&pool).await;
    seed(&pool, 40).await;
    drop(open(&url, chrono_tz::Etc::UTC).await.unwrap());
    assert_eq!(schema(&url), migrated);
    let adopted = migrations(&pool).await;
    assert_eq!(adopted.len(), recorded.len());
    for (a, m) in adopted.iter().zip(&recorded) {
        assert_eq!((a.0, &a.1, a.2, &a.3), (m.0, &m.1, m.2, &m.3));
        // Filled in after the commit, as sqlx does.
        assert!(a.4 > 0, "execution_time {}", a.4);
    }
}

#[sqlx::test(migrations = false)]
async fn starting_again_changes_nothing(pool: PgPool) {
    reference(&pool).await;
    seed(&pool, 60).await;
    let url = database_url(&pool);
    drop(open(&url, chrono_tz::Europe::Berlin).await.unwrap());
    let after_first = dump(&url);

    drop(open(&url, chrono_tz::Europe::Berlin).await.unwrap());
    // Another zone changes nothing either: old values were read once.
    drop(open(&url, chrono_tz::America::New_York).await.unwrap());
    let options = AdoptOptions::default();
    let again = Store::adopt_reference(&url, &StoreOptions::default(), &options)
        .await
        .unwrap();
    assert!(matches!(again, Finding::Migrated), "{again:?}");
    let dry = Store::inspect_reference(&url, &StoreOptions::default(), &options)
        .await
        .unwrap();
    assert!(matches!(dry, Finding::Migrated), "{dry:?}");
    assert_eq!(dump(&url), after_first);
}

#[sqlx::test(migrations = false)]
async fn a_fresh_database_is_left_to_the_migrations(pool: PgPool) {
    let url = database_url(&pool);
    exec(&pool, "DROP SCHEMA public CASCADE; CREATE SCHEMA public").await;
    let options = AdoptOptions::default();
    let found = Store::inspect_reference(&url, &StoreOptions::default(), &options)
        .await
        .unwrap();
    assert!(matches!(found, Finding::Fresh), "{found:?}");
    let store = open(&url, chrono_tz::Etc::UTC).await.unwrap();
    let id = store
        .begin_run(&manual("t"))
        .await
        .unwrap()
        .lease()
        .unwrap()
        .run_id;
    assert_eq!(id, 1);
}

/// Builds the reference schema with a few runs, changes it with `change`,
/// and checks that opening the store refuses it with a message holding
/// every one of `expected`, and that nothing changed.
async fn assert_refused(pool: &PgPool, change: &str, expected: &[&str]) {
    reference(pool).await;
    seed(pool, 20).await;
    if !change.is_empty() {
        exec(pool, change).await;
    }
    let url = database_url(pool);
    let before = dump(&url);
    let err = match open(&url, chrono_tz::Etc::UTC).await {
        Ok(_) => panic!("{change}: adopted, but should have been refused"),
        Err(e) => format!("{e:#}"),
    };
    for text in expected {
        assert!(
            err.contains(text),
            "{change}:\n{err}\n-- does not say --\n{text}"
        );
    }
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(dump(&url), before, "{change}: the database changed");
}

#[sqlx::test(migrations = false)]
async fn every_missing_column_is_refused_with_nothing_changed(pool: PgPool) {
    for (table, column, fix) in [
        ("housekeeper_runs", "id", "ADD COLUMN id SERIAL"),
        (
            "housekeeper_runs",
            "task_name",
            "ADD COLUMN task_name VARCHAR(255)",
        ),
        (
            "housekeeper_runs",
            "started_at",
            "ADD COLUMN started_at TIMESTAMP",
        ),
        (
            "housekeeper_runs",
            "completed_at",
            "ADD COLUMN completed_at TIMESTAMP",
        ),
        (
            "housekeeper_runs",
            "status",
            "ADD COLUMN status VARCHAR(50)",
        ),
        (
            "housekeeper_runs",
            "duration_ms",
            "ADD COLUMN duration_ms INTEGER",
        ),
        ("housekeeper_runs", "output", "ADD COLUMN output TEXT"),
        ("housekeeper_runs", "error", "ADD COLUMN error TEXT"),
        (
            "housekeeper_runs",
            "triggered_by",
            "ADD COLUMN triggered_by VARCHAR(50) DEFAULT 'scheduler'",
        ),
        (
            "housekeeper_config",
            "task_name",
            "ADD COLUMN task_name VARCHAR(255)",
        ),
        (
            "housekeeper_config",
            "enabled",
            "ADD COLUMN enabled BOOLEAN DEFAULT true",
        ),
        (
            "housekeeper_config",
            "schedule",
            "ADD COLUMN schedule VARCHAR(255)",
        ),
        (
            "housekeeper_config",
            "last_modified_at",
            "ADD COLUMN last_modified_at TIMESTAMP DEFAULT NOW()",
        ),
    ] {
        assert_refused(
            &pool,
            &format!("ALTER TABLE {table} DROP COLUMN {column}"),
            &[&format!("{table}.{column}: is missing"), fix],
        )
        .await;
    }
}

#[sqlx::test(migrations = false)]
async fn every_unconvertible_type_is_refused_with_nothing_changed(pool: PgPool) {
    for (table, column, change, found) in [
        (
            "housekeeper_runs",
            "id",
            "DROP DEFAULT, ALTER COLUMN id TYPE text USING id::text",
            "text",
        ),
        ("housekeeper_runs", "id", "TYPE numeric", "numeric"),
        (
            "housekeeper_runs",
            "task_name",
            "TYPE bytea USING convert_to(task_name, 'UTF8')",
            "bytea",
        ),
        (
            "housekeeper_runs",
            "task_name",
            "TYPE character(255)",
            "character",
        ),
        (
            "housekeeper_runs",
            "started_at",
            "TYPE text USING started_at::text",
            "text",
        ),
        ("housekeeper_runs", "started_at", "TYPE date", "date"),
        (
            "housekeeper_runs",
            "completed_at",
            "TYPE timestamp(0)[] USING ARRAY[completed_at]",
            "timestamp without time zone[]",
        ),
        (
            "housekeeper_runs",
            "status",
            "TYPE character(50)",
            "character",
        ),
        ("housekeeper_runs", "duration_ms", "TYPE numeric", "numeric"),
        (
            "housekeeper_runs",
            "duration_ms",
            "TYPE double precision",
            "double precision",
        ),
        (
            "housekeeper_runs",
            "duration_ms",
            "TYPE interval USING duration_ms * INTERVAL '1 millisecond'",
            "interval",
        ),
        (
            "housekeeper_runs",
            "output",
            "TYPE jsonb USING to_jsonb(output)",
            "jsonb",
        ),
        (
            "housekeeper_runs",
            "error",
            "TYPE bytea USING convert_to(error, 'UTF8')",
            "bytea",
        ),
        (
            "housekeeper_runs",
            "triggered_by",
            "DROP DEFAULT, ALTER COLUMN triggered_by TYPE text[] USING ARRAY[triggered_by]",
            "text[]",
        ),
        (
            "housekeeper_config",
            "task_name",
            "TYPE bytea USING convert_to(task_name, 'UTF8')",
            "bytea",
        ),
        (
            "housekeeper_config",
            "enabled",
            "DROP DEFAULT, ALTER COLUMN enabled TYPE integer USING enabled::integer",
            "integer",
        ),
        (
            "housekeeper_config",
            "enabled",
            "DROP DEFAULT, ALTER COLUMN enabled TYPE text",
            "text",
        ),
        (
            "housekeeper_config",
            "schedule",
            "TYPE jsonb USING to_jsonb(schedule)",
            "jsonb",
        ),
        (
            "housekeeper_config",
            "last_modified_at",
            "DROP DEFAULT, ALTER COLUMN last_modified_at TYPE text",
            "text",
        ),
        (
            "housekeeper_config",
            "last_modified_at",
            "TYPE date",
            "date",
        ),
    ] {
        assert_refused(
            &pool,
            &format!("ALTER TABLE {table} ALTER COLUMN {column} {change}"),
            &[
                &format!("{table}.{column}: is {found}, expected "),
                &format!("ALTER TABLE {table} ALTER COLUMN {column} TYPE"),
            ],
        )
        .await;
    }
}

#[sqlx::test(migrations = false)]
async fn other_unknown_shapes_are_refused_with_nothing_changed(pool: PgPool) {
    for (change, expected) in [
        (
            "DROP TABLE housekeeper_runs",
            vec![
                "housekeeper_runs: does not exist, but housekeeper_config and get_housekeeper_stats() exist",
            ],
        ),
        (
            "DROP TABLE housekeeper_config; DROP FUNCTION get_housekeeper_stats()",
            vec!["housekeeper_config: does not exist, but housekeeper_runs exists"],
        ),
        (
            "ALTER TABLE housekeeper_runs RENAME TO old_runs; \
             CREATE VIEW housekeeper_runs AS SELECT * FROM old_runs",
            vec!["housekeeper_runs: is a view, not a table"],
        ),
        (
            "ALTER TABLE housekeeper_runs ALTER COLUMN id DROP DEFAULT; DROP SEQUENCE housekeeper_runs_id_seq; \
             ALTER TABLE housekeeper_runs ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY",
            vec!["housekeeper_runs.id: is an identity column"],
        ),
        (
            "ALTER TABLE housekeeper_runs ALTER COLUMN id DROP DEFAULT",
            vec!["housekeeper_runs.id: takes no default from a sequence"],
        ),
        (
            "ALTER TABLE housekeeper_runs DROP CONSTRAINT housekeeper_runs_pkey",
            vec![
                "housekeeper_runs: has no primary key, expected one on (id)",
                "ADD PRIMARY KEY (id)",
            ],
        ),
        (
            "ALTER TABLE housekeeper_config DROP CONSTRAINT housekeeper_config_pkey; \
             ALTER TABLE housekeeper_config ADD PRIMARY KEY (task_name, enabled)",
            vec![
                "housekeeper_config: has its primary key on (task_name, enabled), expected one on (task_name)",
            ],
        ),
        (
            "ALTER TABLE housekeeper_runs ADD CONSTRAINT status_known CHECK (status IN ('success', 'error', 'running'))",
            vec![
                "housekeeper_runs: has constraint status_known (CHECK",
                "DROP CONSTRAINT status_known",
            ],
        ),
        (
            "ALTER TABLE housekeeper_config ADD CONSTRAINT one_schedule UNIQUE (schedule)",
            vec!["housekeeper_config: has constraint one_schedule (UNIQUE (schedule))"],
        ),
        (
            "CREATE VIEW recent_runs AS SELECT task_name, started_at FROM housekeeper_runs",
            vec![
                "housekeeper_runs.started_at: view recent_runs uses it",
                "housekeeper_runs.task_name: view recent_runs uses it",
                "drop the view recent_runs first",
            ],
        ),
        (
            "CREATE MATERIALIZED VIEW last_config AS SELECT last_modified_at FROM housekeeper_config",
            vec!["housekeeper_config.last_modified_at: materialized view last_config uses it"],
        ),
        (
            "CREATE FUNCTION keep_row() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$; \
             CREATE TRIGGER status_watch BEFORE UPDATE OF status ON housekeeper_runs \
             FOR EACH ROW EXECUTE FUNCTION keep_row()",
            vec!["housekeeper_runs.status: trigger status_watch on table housekeeper_runs uses it"],
        ),
        (
            "ALTER TABLE housekeeper_runs ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY hide_vacuum ON housekeeper_runs USING (task_name <> 'database-vacuum')",
            vec![
                "housekeeper_runs.task_name: policy hide_vacuum on table housekeeper_runs uses it",
            ],
        ),
        (
            "CREATE VIEW task_stats AS SELECT * FROM get_housekeeper_stats()",
            vec!["get_housekeeper_stats(): view task_stats uses it, and it is replaced"],
        ),
        (
            "ALTER TABLE housekeeper_runs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'a'; \
             ALTER TABLE housekeeper_runs ALTER COLUMN tenant DROP DEFAULT",
            vec!["housekeeper_runs.tenant: is NOT NULL without a default"],
        ),
        (
            "ALTER TABLE housekeeper_runs ADD COLUMN metrics TEXT",
            vec!["housekeeper_runs.metrics: exists, but the reference schema has no such column"],
        ),
        (
            "ALTER TABLE housekeeper_runs ADD COLUMN replica TEXT",
            vec!["housekeeper_runs.replica: exists"],
        ),
        (
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
                 installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, \
                 checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL); \
             INSERT INTO _sqlx_migrations VALUES (20240101000000, 'api', now(), true, '\\x00', 1)",
            vec!["_sqlx_migrations: records migrations housekeeper does not have (20240101000000)"],
        ),
        (
            "CREATE TABLE housekeeper_task_stats (task_name TEXT)",
            vec!["housekeeper_task_stats: exists, but _sqlx_migrations does not record"],
        ),
        (
            "CREATE INDEX housekeeper_runs_running ON housekeeper_runs (status)",
            vec!["housekeeper_runs_running: exists, and housekeeper creates an index of that name"],
        ),
        (
            "INSERT INTO housekeeper_config (task_name, enabled) VALUES ('noisy', NULL), ('quiet', NULL)",
            vec![
                "housekeeper_config.enabled: is NULL for task noisy, quiet; set it to true or false",
            ],
        ),
        (
            "ALTER TABLE housekeeper_runs ALTER COLUMN task_name DROP NOT NULL; \
             UPDATE housekeeper_runs SET task_name = NULL WHERE id IN (3, 4)",
            vec!["housekeeper_runs.task_name: is NULL in the row with id 3, 4"],
        ),
        (
            "UPDATE housekeeper_runs SET started_at = 'infinity' WHERE id = 2",
            vec!["housekeeper_runs.started_at: is infinity in the row with id 2"],
        ),
        (
            "UPDATE housekeeper_runs SET completed_at = '-infinity' WHERE id BETWEEN 1 AND 7",
            vec![
                "housekeeper_runs.completed_at: is infinity in the row with id 1, 2, 3, 4, 5 and more",
            ],
        ),
        (
            "UPDATE housekeeper_config SET last_modified_at = 'infinity'",
            vec![
                "housekeeper_config.last_modified_at: is infinity in the row with task_name cleanup-old-logs, database-vacuum",
            ],
        ),
        // Every problem is reported at once.
        (
            "ALTER TABLE housekeeper_runs DROP COLUMN output; \
             ALTER TABLE housekeeper_config ALTER COLUMN schedule TYPE jsonb USING to_jsonb(schedule)",
            vec![
                "housekeeper_runs.output: is missing",
                "housekeeper_config.schedule: is jsonb",
            ],
        ),
    ] {
        assert_refused(&pool, change, &expected).await;
    }
}

#[sqlx::test(migrations = false)]
async fn a_failure_midway_changes_nothing(pool: PgPool) {
    // Passes every check, then fails on the rows: the transaction undoes
    // the columns, types and sequence changed before.
    reference(&pool).await;
    seed(&pool, 20).await;
    exec(
        &pool,
        "INSERT INTO housekeeper_runs (id, task_name, started_at, status) VALUES (500, 'api-key-rotation', '2025-06-01', 'running'); \
         CREATE FUNCTION no_updates() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'history is append-only'; END$$; \
         CREATE TRIGGER append_only BEFORE UPDATE ON housekeeper_runs FOR EACH ROW EXECUTE FUNCTION no_updates()",
    )
    .await;
    let url = database_url(&pool);
    let before = dump(&url);
    let err = format!("{:#}", open(&url, chrono_tz::Etc::UTC).await.err().unwrap());
    assert!(
        err.contains("UPDATE housekeeper_runs SET triggered_by = 'schedule'"),
        "{err}"
    );
    assert!(err.contains("history is append-only"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(dump(&url), before);
}

#[sqlx::test(migrations = false)]
async fn a_reference_service_still_holding_its_tables_is_refused(pool: PgPool) {
    reference(&pool).await;
    seed(&pool, 20).await;
    let url = database_url(&pool);
    let before = dump(&url);
    let mut holder = pool.begin().await.unwrap();
    sqlx::raw_sql("LOCK TABLE housekeeper_config IN ROW EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let err = Store::open_with(
        &url,
        "r",
        &StoreOptions::default(),
        &AdoptOptions {
            lock_timeout: std::time::Duration::from_millis(100),
            ..AdoptOptions::default()
        },
    )
    .await
    .err()
    .unwrap();
    let err = format!("{err:#}");
    assert!(err.contains("another session holds a lock"), "{err}");
    assert!(err.contains("stop it"), "{err}");
    holder.rollback().await.unwrap();
    assert_eq!(dump(&url), before);
    // Once it is gone, the takeover goes through.
    open(&url, chrono_tz::Etc::UTC).await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn leftovers_of_the_reference_service_are_carried_over(pool: PgPool) {
    reference(&pool).await;
    seed(&pool, 40).await;
    exec(
        &pool,
        // A run it left running (the newest of its task, no duration), one
        // without a trigger, one with an id ahead of the sequence, a toggle
        // without a time, and a column of the team's own.
        "INSERT INTO housekeeper_runs (task_name, started_at, status) VALUES ('api-key-rotation', '2025-09-01 10:00', 'running'); \
         INSERT INTO housekeeper_runs (task_name, started_at, completed_at, status, duration_ms, triggered_by) \
             VALUES ('cleanup-old-logs', '2025-02-01 10:00', '2025-02-01 10:00:01', 'success', 1000, NULL); \
         INSERT INTO housekeeper_runs (id, task_name, started_at, status, duration_ms, triggered_by) \
             VALUES (1000, 'device-logs-retention', '2025-02-02 10:00', 'error', 7, 'api'); \
         INSERT INTO housekeeper_config (task_name, enabled, last_modified_at) VALUES ('api-key-rotation', false, NULL); \
         ALTER TABLE housekeeper_runs ADD COLUMN note TEXT; \
         UPDATE housekeeper_runs SET note = 'kept' WHERE id = 5",
    )
    .await;
    let old = old_runs(&pool).await;
    let stats_before = old_stats(&pool).await;
    let url = database_url(&pool);
    let before_open = Utc::now();
    let store = open(&url, chrono_tz::Etc::UTC).await.unwrap();

    let mut runs = all_runs(&store).await;
    let running = old.iter().find(|r| r.status == "running").unwrap();
    let interrupted = runs.remove(&i64::from(running.id)).unwrap();
    assert_eq!(interrupted.status, RunStatus::Interrupted);
    assert_eq!(interrupted.error.as_deref(), Some(LEFT_RUNNING));
    assert_eq!(interrupted.completed_at, None);
    let others: Vec<OldRun> = old.iter().filter(|r| r.id != running.id).cloned().collect();
    assert_carried_over(&others, &runs, chrono_tz::Etc::UTC);

    // The reference numbers, but the last status of the task it left
    // running is what that run now says, and that run counts at the
    // task's average duration (see a_run_without_a_duration_counts_at_the_average).
    assert!(
        stats_before
            .iter()
            .any(|r| r.6.as_deref() == Some("running")),
        "the left-running run is the newest of its task"
    );
    let runs_of = old
        .iter()
        .filter(|r| r.task_name == running.task_name)
        .count() as f64;
    let mut expected = in_zone(&stats_before, chrono_tz::Etc::UTC);
    let mut after = new_stats(&pool).await;
    for (old_row, new_row) in expected.iter_mut().zip(after.iter_mut()) {
        if old_row.0 == running.task_name {
            assert_eq!(old_row.6.as_deref(), Some("running"));
            old_row.6 = Some("interrupted".into());
            let avg = |row: &mut StatsRow<DateTime<Utc>>| -> f64 {
                row.4.take().unwrap().parse().unwrap()
            };
            let (was, is) = (avg(old_row), avg(new_row));
            assert!((was - is).abs() <= 0.5 / runs_of + 0.005, "{was} {is}");
        }
    }
    assert_eq!(after, expected);

    let note: Option<String> = sqlx::query_scalar("SELECT note FROM housekeeper_runs WHERE id = 5")
        .persistent(false)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(note.as_deref(), Some("kept"));
    let settings = store.settings().await.unwrap();
    let toggled = &settings["api-key-rotation"];
    assert!(!toggled.enabled);
    assert!(toggled.last_modified_at >= before_open - Duration::seconds(1));
    assert!(toggled.last_modified_at <= Utc::now());
    let id = store
        .begin_run(&manual("api-key-rotation"))
        .await
        .unwrap()
        .lease()
        .unwrap()
        .run_id;
    assert_eq!(id, 1001, "new runs come after the highest old id");
}

#[sqlx::test(migrations = false)]
async fn a_run_without_a_duration_counts_at_the_average(pool: PgPool) {
    reference(&pool).await;
    exec(
        &pool,
        "INSERT INTO housekeeper_runs (task_name, started_at, completed_at, status, duration_ms) VALUES \
         ('t', '2025-01-01 01:00', '2025-01-01 01:00:01', 'success', 101), \
         ('t', '2025-01-02 01:00', '2025-01-02 01:00:01', 'error', 202), \
         ('t', '2025-01-03 01:00', NULL, 'success', NULL), \
         ('u', '2025-01-03 01:00', NULL, 'error', NULL)",
    )
    .await;
    let before = old_stats(&pool).await;
    let url = database_url(&pool);
    let store = open(&url, chrono_tz::Etc::UTC).await.unwrap();
    let after = new_stats(&pool).await;
    // t: (101 + 202) / 2 = 151.5, and 3 runs of 151.5 make 454.5 ms (455).
    assert_eq!(before[0].4.as_deref(), Some("151.50"));
    assert_eq!(after[0].4.as_deref(), Some("151.67"));
    assert_eq!(
        store.stats().await.unwrap()["t"].avg_duration_ms,
        Some(455.0 / 3.0)
    );
    // u: nothing known; the reference said NULL, the total is 0.
    assert_eq!(before[1].4, None);
    assert_eq!(after[1].4.as_deref(), Some("0.00"));
    assert_eq!(
        (after[0].1, after[0].2, after[0].3, after[1].1, after[1].3),
        (3, 2, 1, 1, 1)
    );
}

#[sqlx::test(migrations = false)]
async fn variants_of_the_reference_schema_are_taken_over(pool: PgPool) {
    let url = database_url(&pool);
    for change in [
        // Already timestamptz: instants are kept as they are.
        "ALTER TABLE housekeeper_runs ALTER COLUMN started_at TYPE timestamptz USING started_at AT TIME ZONE 'UTC', \
                                      ALTER COLUMN completed_at TYPE timestamptz USING completed_at AT TIME ZONE 'UTC'; \
         ALTER TABLE housekeeper_config ALTER COLUMN last_modified_at TYPE timestamptz USING last_modified_at AT TIME ZONE 'UTC'",
        // Wider and narrower integers, text instead of varchar.
        "ALTER TABLE housekeeper_runs ALTER COLUMN id TYPE bigint, ALTER COLUMN duration_ms TYPE smallint, \
                                      ALTER COLUMN task_name TYPE text, ALTER COLUMN status TYPE text; \
         ALTER SEQUENCE housekeeper_runs_id_seq AS bigint",
        // No stats function; nullable columns that hold no NULLs.
        "DROP FUNCTION get_housekeeper_stats(); \
         ALTER TABLE housekeeper_runs ALTER COLUMN started_at DROP NOT NULL, ALTER COLUMN status DROP NOT NULL",
        // NOT NULL already, no defaults.
        "ALTER TABLE housekeeper_runs ALTER COLUMN triggered_by SET NOT NULL, ALTER COLUMN triggered_by DROP DEFAULT; \
         ALTER TABLE housekeeper_config ALTER COLUMN enabled SET NOT NULL, ALTER COLUMN enabled DROP DEFAULT, \
                                        ALTER COLUMN last_modified_at DROP DEFAULT",
    ] {
        exec(&pool, "DROP SCHEMA public CASCADE; CREATE SCHEMA public").await;
        drop(open(&url, chrono_tz::Etc::UTC).await.unwrap());
        let migrated = dump_with(&url, &["--schema-only", "--exclude-table=image_*"]);

        reference(&pool).await;
        seed(&pool, 30).await;
        let old = old_runs(&pool).await;
        exec(&pool, change).await;
        let store = open(&url, chrono_tz::Etc::UTC)
            .await
            .unwrap_or_else(|e| panic!("{change}: {e:#}"));
        assert_carried_over(&old, &all_runs(&store).await, chrono_tz::Etc::UTC);
        assert_eq!(
            dump_with(&url, &["--schema-only", "--exclude-table=image_*"]),
            migrated,
            "{change}"
        );
        assert_eq!(
            store
                .begin_run(&manual("t"))
                .await
                .unwrap()
                .lease()
                .map(|lease| lease.run_id),
            Some(i64::from(old.last().unwrap().id) + 1)
        );
    }
}

#[sqlx::test(migrations = false)]
async fn old_timestamps_are_read_in_the_reference_time_zone(pool: PgPool) {
    reference(&pool).await;
    seed(&pool, 300).await;
    exec(
        &pool,
        // Twice on the clock when it went back, and never when it jumped.
        "INSERT INTO housekeeper_runs (task_name, started_at, completed_at, status, duration_ms) VALUES \
         ('cleanup-old-logs', '2024-10-27 02:30:00', '2024-10-27 02:59:59.999999', 'success', 5), \
         ('cleanup-old-logs', '2025-03-30 02:30:00', '2025-03-30 03:00:00', 'success', 5)",
    )
    .await;
    let old = old_runs(&pool).await;
    let stats_before = old_stats(&pool).await;
    let url = database_url(&pool);
    let berlin = chrono_tz::Europe::Berlin;
    let store = open(&url, berlin).await.unwrap();
    let runs = all_runs(&store).await;
    assert_carried_over(&old, &runs, berlin);
    assert_eq!(new_stats(&pool).await, in_zone(&stats_before, berlin));

    let n = old.len() as i64;
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    assert_eq!(runs[&(n - 1)].started_at, at("2024-10-27T01:30:00Z"));
    assert_eq!(runs[&n].started_at, at("2025-03-30T01:30:00Z"));
    assert_eq!(runs[&n].completed_at, Some(at("2025-03-30T01:00:00Z")));
    // A summer and a winter run of the seed.
    let first = &old[0];
    assert_eq!(first.started_at.to_string(), "2025-01-01 12:17:03.123457");
    assert_eq!(runs[&1].started_at, at("2025-01-01T11:17:03.123457Z"));
    let summer = old
        .iter()
        .find(|r| r.started_at > "2025-04-01T00:00:00".parse().unwrap())
        .unwrap();
    assert_eq!(
        runs[&i64::from(summer.id)].started_at,
        summer.started_at.and_utc() - Duration::hours(2)
    );
}

#[sqlx::test(migrations = false)]
async fn two_services_starting_at_once_take_over_once(pool: PgPool) {
    reference(&pool).await;
    seed(&pool, 100).await;
    let old = old_runs(&pool).await;
    let url = database_url(&pool);
    let (a, b) = tokio::join!(
        open(&url, chrono_tz::Etc::UTC),
        open(&url, chrono_tz::Etc::UTC)
    );
    let (a, _b) = (a.unwrap(), b.unwrap());
    assert_carried_over(&old, &all_runs(&a).await, chrono_tz::Etc::UTC);
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .persistent(false)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(recorded as usize, Store::postgres_migrator().iter().count());
}

// ---- the binary ----

fn housekeeper(url: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(binary());
    cmd.env_clear()
        .env("DATABASE_URL", url)
        .env("HOUSEKEEPER_DATA_DIR", dir.join("data"))
        .env("HOUSEKEEPER_TASKS_DIR", dir.join("tasks.d"))
        .env("HOUSEKEEPER_REPLICA", "binary")
        .env("LOG_LEVEL", "info");
    cmd
}

fn output(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// A tasks directory with a no-op component under each of `TASKS`, history
/// kept for ten years.
fn tasks_dir(dir: &Path) {
    let tasks = dir.join("tasks.d");
    std::fs::create_dir_all(&tasks).unwrap();
    for task in TASKS {
        std::fs::copy(fixture_path("noop"), tasks.join(format!("{task}.wasm"))).unwrap();
        std::fs::write(
            tasks.join(format!("{task}.toml")),
            "[history]\nkeep_days = 3650\nkeep_last = 100000\n",
        )
        .unwrap();
    }
}

/// A service process that is killed when the test ends, even by a panic.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Service {
    fn start(url: &str, dir: &Path, env: &[(&str, &str)]) -> (Service, u16) {
        let log_path = dir.join("serve.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let from = log.metadata().unwrap().len() as usize;
        let mut cmd = housekeeper(url, dir);
        cmd.arg("serve")
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("HOUSEKEEPER_ENABLED", "false")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log);
        let mut service = Service(cmd.spawn().unwrap());
        let port = housekeeper_tests::listening_port(&mut service.0, &log_path, from);
        let deadline = Instant::now() + std::time::Duration::from_secs(120);
        loop {
            if let Some(status) = service.0.try_wait().unwrap() {
                panic!(
                    "serve exited with {status}: {}",
                    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
                );
            }
            if http(port, "GET", "/ready").is_some_and(|(status, _)| status == 200) {
                return (service, port);
            }
            assert!(Instant::now() < deadline, "serve did not become ready");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn stop(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

fn http(port: u16, method: &str, path: &str) -> Option<(u16, Value)> {
    let (status, body) = housekeeper_tests::http(port, method, path, None)?;
    Some((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

fn get(port: u16, path: &str) -> Value {
    let (status, body) = http(port, "GET", path).unwrap();
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

fn time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .map(|s| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc))
}

#[sqlx::test(migrations = false)]
async fn serve_takes_over_the_reference_database(pool: PgPool) {
    let (old, stats_before, errors) = seeded_reference(&pool).await;
    let url = database_url(&pool);
    let tmp = tempfile::tempdir().unwrap();
    tasks_dir(tmp.path());
    // The reference service ran with TIMEZONE set; its values are read there.
    let berlin = chrono_tz::Europe::Berlin;
    let env = [("TIMEZONE", "Europe/Berlin")];

    let (service, port) = Service::start(&url, tmp.path(), &env);
    for task in TASKS {
        let page = get(
            port,
            &format!("/api/housekeeper/tasks/{task}/runs?limit=1000"),
        );
        let listed = page["runs"].as_array().unwrap();
        let expected: Vec<&OldRun> = old.iter().rev().filter(|r| r.task_name == task).collect();
        assert_eq!(page["total"], expected.len());
        assert_eq!(listed.len(), expected.len());
        for (run, o) in listed.iter().zip(&expected) {
            assert_eq!(run["id"], o.id, "{task}: newest first");
            assert_eq!(
                time(&run["started_at"]),
                Some(instant(berlin, o.started_at))
            );
            assert_eq!(
                time(&run["completed_at"]),
                o.completed_at.map(|t| instant(berlin, t))
            );
            assert_eq!(run["status"], o.status.as_str());
        }
    }
    let list = get(port, "/api/housekeeper/tasks");
    let by_name: BTreeMap<&str, &Value> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t))
        .collect();
    assert_eq!(by_name["database-vacuum"]["enabled"], false);
    assert_eq!(by_name["cleanup-old-logs"]["enabled"], true);
    assert_eq!(by_name["api-key-rotation"]["enabled"], true);
    for (task, total, success, error, avg, last_run_at, last_status) in
        in_zone(&stats_before, berlin)
    {
        let s = &by_name[task.as_str()]["stats"];
        assert_eq!(s["total_runs"], total);
        assert_eq!(s["success_count"], success);
        assert_eq!(s["error_count"], error);
        let avg: f64 = avg.unwrap().parse().unwrap();
        assert_eq!(s["avg_duration_ms"], avg.round() as i64);
        assert_eq!(time(&s["last_run_at"]), last_run_at);
        assert_eq!(s["last_status"], last_status.unwrap());
    }
    assert_eq!(new_stats(&pool).await, in_zone(&stats_before, berlin));

    let (status, triggered) =
        http(port, "POST", "/api/housekeeper/tasks/cleanup-old-logs/run").unwrap();
    assert_eq!(status, 202, "{triggered}");
    let id = triggered["runId"].as_i64().unwrap();
    assert_eq!(id, i64::from(old.iter().map(|r| r.id).max().unwrap()) + 1);
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while get(
        port,
        &format!("/api/housekeeper/tasks/cleanup-old-logs/runs/{id}"),
    )["status"]
        == "running"
    {
        assert!(Instant::now() < deadline, "run {id} did not finish");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    seed_queries_run(&pool, old.len() + 1, errors, TASKS.len()).await;
    service.stop();

    // Starting again changes nothing but the replica's own heartbeat.
    let dump = |url: &str| dump_with(url, &["--exclude-table-data=housekeeper_replicas"]);
    let before = dump(&url);
    let (service, _) = Service::start(&url, tmp.path(), &env);
    service.stop();
    assert_eq!(dump(&url), before);
}

#[sqlx::test(migrations = false)]
async fn serve_refuses_an_unknown_shape_and_changes_nothing(pool: PgPool) {
    reference(&pool).await;
    seed(&pool, 30).await;
    exec(&pool, "ALTER TABLE housekeeper_runs DROP COLUMN status").await;
    let url = database_url(&pool);
    let tmp = tempfile::tempdir().unwrap();
    tasks_dir(tmp.path());
    let before = dump(&url);
    let (out, _, stderr) = output(
        housekeeper(&url, tmp.path())
            .arg("serve")
            .env("HOST", "127.0.0.1")
            .env("PORT", "0"),
    );
    assert!(!out.status.success());
    assert!(
        stderr.contains("housekeeper_runs.status: is missing"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(dump(&url), before);
}

#[sqlx::test(migrations = false)]
async fn db_adopt_dry_run_prints_the_plan_and_changes_nothing(pool: PgPool) {
    reference(&pool).await;
    seed(&pool, 300).await;
    let newest = old_runs(&pool).await.last().unwrap().started_at;
    let newest_in = |tz: Tz| {
        format!(
            "the newest started_at, {newest}, becomes {}",
            instant(tz, newest).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        )
    };
    let url = database_url(&pool);
    let tmp = tempfile::tempdir().unwrap();
    let before = dump(&url);

    let (out, stdout, stderr) = output(
        housekeeper(&url, tmp.path())
            .args(["db", "adopt", "--dry-run"])
            .env("TIMEZONE", "Europe/Berlin"),
    );
    assert!(out.status.success(), "{stderr}");
    let zone_line = format!(
        "TIMESTAMP values are read in Europe/Berlin: {}",
        newest_in(chrono_tz::Europe::Berlin)
    );
    for text in [
        "would take over the reference service's tables",
        "housekeeper_runs: 300 runs of 4 tasks, ids 1 to 300; new runs start at id 301",
        "triggered_by 'scheduler' becomes 'schedule' in 240 runs",
        "housekeeper_config: 2 tasks, 1 disabled (database-vacuum)",
        "get_housekeeper_stats(): replaced by housekeeper's",
        &zone_line,
        "ALTER TABLE housekeeper_runs\n    ALTER COLUMN id TYPE BIGINT,",
        "ALTER COLUMN started_at TYPE TIMESTAMPTZ USING started_at AT TIME ZONE 'Europe/Berlin'",
        "ALTER SEQUENCE public.housekeeper_runs_id_seq AS BIGINT;",
        "CREATE TABLE housekeeper_task_stats",
        "DROP FUNCTION get_housekeeper_stats();",
        "INSERT INTO _sqlx_migrations",
        "dry run: nothing was changed",
    ] {
        assert!(
            stdout.contains(text),
            "{stdout}\n-- does not say --\n{text}"
        );
    }
    assert_eq!(dump(&url), before);

    // HOUSEKEEPER_ADOPT_TIMEZONE wins over TIMEZONE.
    let (_, stdout, _) = output(
        housekeeper(&url, tmp.path())
            .args(["db", "adopt", "--dry-run"])
            .env("TIMEZONE", "Europe/Berlin")
            .env("HOUSEKEEPER_ADOPT_TIMEZONE", "Etc/UTC"),
    );
    assert!(
        stdout.contains(&format!(
            "TIMESTAMP values are read in Etc/UTC: {}",
            newest_in(chrono_tz::Etc::UTC)
        )),
        "{stdout}"
    );

    let (out, stdout, stderr) = output(housekeeper(&url, tmp.path()).args(["db", "adopt"]));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("took over the reference service's tables"),
        "{stdout}"
    );
    assert!(stdout.contains("(committed)"), "{stdout}");
    let (out, stdout, _) = output(housekeeper(&url, tmp.path()).args(["db", "adopt", "--dry-run"]));
    assert!(out.status.success());
    assert!(
        stdout.contains("nothing to take over: housekeeper's migrations are already recorded"),
        "{stdout}"
    );
}

#[sqlx::test(migrations = false)]
async fn db_adopt_dry_run_reports_what_it_refuses(pool: PgPool) {
    reference(&pool).await;
    seed(&pool, 10).await;
    exec(
        &pool,
        "ALTER TABLE housekeeper_runs ALTER COLUMN started_at TYPE text",
    )
    .await;
    let url = database_url(&pool);
    let tmp = tempfile::tempdir().unwrap();
    let before = dump(&url);
    let (out, _, stderr) = output(housekeeper(&url, tmp.path()).args(["db", "adopt", "--dry-run"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("housekeeper_runs.started_at: is text, expected timestamp"),
        "{stderr}"
    );
    assert_eq!(dump(&url), before);

    let (out, _, stderr) = output(housekeeper("sqlite:/nonexistent/hk.db", tmp.path()).args([
        "db",
        "adopt",
        "--dry-run",
    ]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("is not PostgreSQL"), "{stderr}");
}
