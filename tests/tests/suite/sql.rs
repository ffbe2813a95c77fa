//! The `sql` capability against a real PostgreSQL (a fresh database per
//! test) and SQLite: hostile statements are refused or denied before they
//! reach the database, deadlines cancel slow statements, results are
//! capped, and dry-runs change nothing.

use SqlVerb::*;
use housekeeper::capabilities::sql::Connection;
use housekeeper::manifest::SqlVerb;
use housekeeper::model::{ConfigValue, RunResult, RunStatus};
use housekeeper::runtime::RunRequest;
use housekeeper_tests::{
    EXAMPLE_SCHEMA, assert_each_refused, component, fixture_path, runtime, sql_request, unparsed,
};
use sqlx::{PgPool, SqlitePool};
use std::time::Duration;

async fn schema(pool: &PgPool) {
    sqlx::raw_sql(EXAMPLE_SCHEMA).execute(pool).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE secrets (id int PRIMARY KEY, value text NOT NULL);
         INSERT INTO secrets VALUES (1, 'the-secret-row');
         INSERT INTO sensor_readings (device_uuid, value)
             SELECT gen_random_uuid(), g FROM generate_series(1, 100) g;
         CREATE TABLE events_2020_01_01 PARTITION OF events
             FOR VALUES FROM ('2020-01-01') TO ('2020-01-02');
         CREATE TABLE device_logs_2020_01_01 PARTITION OF device_logs
             FOR VALUES FROM ('2020-01-01') TO ('2020-01-02');",
    )
    .execute(pool)
    .await
    .unwrap();
}

fn pg_request(pool: &PgPool, mode: &str, sql: &str, grants: &[(&str, &[SqlVerb])]) -> RunRequest {
    sql_request(
        "hostile",
        Connection::postgres(pool.clone()).allow_unsafe_superuser(),
        mode,
        sql,
        grants,
    )
}

async fn run(request: RunRequest) -> RunResult {
    runtime()
        .run(&component(&fixture_path("hostile")), request)
        .await
}

async fn pg(pool: &PgPool, mode: &str, sql: &str, grants: &[(&str, &[SqlVerb])]) -> RunResult {
    run(pg_request(pool, mode, sql, grants)).await
}

/// The run failed with `needle` in its error, and nothing secret leaked.
fn assert_stopped(result: &RunResult, needle: &str) {
    assert_eq!(result.status, RunStatus::Error, "{result:#?}");
    let error = result.error.as_deref().unwrap_or_default();
    assert!(error.contains(needle), "expected {needle:?} in {error:?}");
    let everything = format!("{:?} {:?} {}", result.summary, result.error, result.output);
    assert!(!everything.contains("the-secret-row"), "{result:#?}");
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn exists(pool: &PgPool, table: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_query_of_an_ungranted_table_is_denied_by_name(pool: PgPool) {
    schema(&pool).await;
    let r = pg(
        &pool,
        "sql-query",
        "SELECT * FROM secrets",
        &[("events", &[Select])],
    )
    .await;
    assert_stopped(&r, "access denied: `secrets` is not granted `select`");
    assert!(r.output.contains("access denied"), "{}", r.output);
    // Hidden in a subquery, a join or a CTE, it is still found.
    for sql in [
        "SELECT * FROM events WHERE event_type IN (SELECT value FROM secrets)",
        "SELECT e.* FROM events e JOIN public.secrets s ON true",
        "WITH s AS (SELECT * FROM secrets) SELECT * FROM s",
    ] {
        let r = pg(&pool, "sql-query", sql, &[("events", &[Select])]).await;
        assert_stopped(&r, "secrets` is not granted `select`");
    }
}

#[sqlx::test]
async fn a_denial_is_an_error_value_and_the_task_carries_on(pool: PgPool) {
    schema(&pool).await;
    let r = pg(
        &pool,
        "sql-denied-then-ok",
        "SELECT * FROM secrets",
        &[("events", &[Select])],
    )
    .await;
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
    let summary = r.summary.unwrap();
    assert!(summary.contains("not granted `select`"), "{summary}");
    assert!(summary.ends_with("then: Some(1)"), "{summary}");
}

#[sqlx::test]
async fn delete_on_a_table_granted_only_select_is_denied(pool: PgPool) {
    schema(&pool).await;
    let r = pg(
        &pool,
        "sql-execute",
        "DELETE FROM sensor_readings",
        &[("sensor_readings", &[Select])],
    )
    .await;
    assert_stopped(&r, "`sensor_readings` is not granted `delete`");
    assert_eq!(count(&pool, "sensor_readings").await, 100);
}

#[sqlx::test]
async fn session_and_role_changes_are_refused(pool: PgPool) {
    schema(&pool).await;
    for sql in [
        "RESET ROLE",
        "SET ROLE postgres",
        "SET statement_timeout = 0",
        "SET SESSION AUTHORIZATION postgres",
        "BEGIN",
        "SELECT set_config('statement_timeout', '0', false)",
    ] {
        let r = pg(&pool, "sql-execute", sql, &[("events", &[Select])]).await;
        assert_stopped(&r, "refused");
    }
}

#[sqlx::test]
async fn two_statements_in_one_call_are_refused(pool: PgPool) {
    schema(&pool).await;
    let r = pg(
        &pool,
        "sql-execute",
        "SELECT 1; DELETE FROM sensor_readings",
        &[("sensor_readings", &[Select, Delete])],
    )
    .await;
    assert_stopped(&r, "exactly one statement");
    assert_eq!(count(&pool, "sensor_readings").await, 100);
}

#[sqlx::test]
async fn copy_to_program_and_file_reads_are_refused(pool: PgPool) {
    schema(&pool).await;
    let marker = tempfile::tempdir().unwrap().path().join("pwned");
    let copy = format!("COPY events TO PROGRAM 'touch {}'", marker.display());
    let r = pg(&pool, "sql-execute", &copy, &[("events", &[Select])]).await;
    assert_stopped(&r, "COPY is not allowed");
    assert!(!marker.exists());
    let r = pg(
        &pool,
        "sql-query",
        "SELECT pg_read_file('/etc/passwd')",
        &[("events", &[Select])],
    )
    .await;
    assert_stopped(&r, "function `pg_read_file` is not allowed");
    assert!(!r.output.contains("root:"), "{}", r.output);
}

#[sqlx::test]
async fn pg_sleep_is_refused_and_a_slow_query_ends_at_the_deadline(pool: PgPool) {
    schema(&pool).await;
    let mut req = pg_request(
        &pool,
        "sql-query",
        "SELECT pg_sleep(600)",
        &[("events", &[Select])],
    );
    req.timeout = Duration::from_secs(2);
    let r = run(req).await;
    assert_stopped(&r, "function `pg_sleep` is not allowed");

    // An allowed statement that would run for hours.
    let slow = "SELECT count(*) FROM generate_series(1, 100000000000) AS g";
    let mut req = pg_request(&pool, "sql-query", slow, &[("events", &[Select])]);
    req.timeout = Duration::from_secs(2);
    let r = run(req).await;
    assert_eq!(r.status, RunStatus::Timeout, "{r:#?}");
    assert!(
        r.output.contains("cancelled at the run's deadline"),
        "{}",
        r.output
    );
    // The backend stopped too (its state in pg_stat_activity may lag a
    // moment behind).
    let mut active: i64 = 1;
    for _ in 0..50 {
        active = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND query LIKE '%generate_series(1, 100000000000)%' AND pid <> pg_backend_pid()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(active, 0, "the statement still runs on the server");
}

#[sqlx::test]
async fn a_lock_wait_ends_at_the_deadline(pool: PgPool) {
    schema(&pool).await;
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE sensor_readings IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let mut req = pg_request(
        &pool,
        "sql-execute",
        "DELETE FROM sensor_readings",
        &[("sensor_readings", &[Delete])],
    );
    req.timeout = Duration::from_secs(2);
    let r = run(req).await;
    assert_eq!(r.status, RunStatus::Timeout, "{r:#?}");
    holder.rollback().await.unwrap();
    assert_eq!(count(&pool, "sensor_readings").await, 100);
}

#[sqlx::test]
async fn free_text_partition_changes_are_refused_naming_the_call(pool: PgPool) {
    schema(&pool).await;
    let grants: &[(&str, &[SqlVerb])] = &[("events", &[Select, CreatePartition, DropPartition])];
    for (sql, call) in [
        ("DROP TABLE events_2020_01_01", "`drop-partition` call"),
        ("DROP TABLE device_logs_2020_01_01", "`drop-partition` call"),
        ("DROP TABLE events", "`drop-partition` call"),
        (
            "ALTER TABLE events DETACH PARTITION events_2020_01_01",
            "`detach-partition` call",
        ),
        (
            "CREATE TABLE events_2020_01_02 PARTITION OF events FOR VALUES FROM ('2020-01-02') TO ('2020-01-03')",
            "`create-partition` call",
        ),
        ("VACUUM ANALYZE events", "`vacuum` call"),
        ("ANALYZE events", "`analyze` call"),
    ] {
        let r = pg(&pool, "sql-execute", sql, grants).await;
        assert_stopped(&r, call);
    }
    // Another table's partition is not reached through the granted parent.
    let r = pg(
        &pool,
        "sql-execute",
        "ALTER TABLE device_logs DETACH PARTITION device_logs_2020_01_01",
        grants,
    )
    .await;
    assert_stopped(&r, "`device_logs` is not granted `ddl`");
    for table in ["events", "events_2020_01_01", "device_logs_2020_01_01"] {
        assert!(exists(&pool, table).await, "{table}");
    }
    assert!(!exists(&pool, "events_2020_01_02").await);
    let attached: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = 'events_2020_01_01'::regclass)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(attached);
}

#[sqlx::test]
async fn a_huge_result_is_refused_at_the_row_cap(pool: PgPool) {
    schema(&pool).await;
    let r = pg(
        &pool,
        "sql-query",
        "SELECT g, md5(g::text) FROM generate_series(1, 10000000) AS g",
        &[("events", &[Select])],
    )
    .await;
    assert_stopped(&r, "larger than 100000 rows");
    // The pool still works afterwards.
    assert_eq!(count(&pool, "secrets").await, 1);
}

#[sqlx::test]
async fn without_a_grant_or_a_connection_sql_is_refused(pool: PgPool) {
    schema(&pool).await;
    let mut req = pg_request(&pool, "sql-query", "SELECT 1", &[]);
    req.database = None;
    assert_stopped(&run(req).await, "grants no database");
    let mut req = pg_request(&pool, "sql-query", "SELECT 1", &[("events", &[Select])]);
    req.database.as_mut().unwrap().connection = "reporting".into();
    assert_stopped(&run(req).await, "HOUSEKEEPER_DB_REPORTING_URL");
}

#[sqlx::test]
async fn a_dry_run_delete_reports_and_rolls_back(pool: PgPool) {
    schema(&pool).await;
    let mut req = pg_request(
        &pool,
        "sql-execute",
        "DELETE FROM sensor_readings WHERE value > 40",
        &[("sensor_readings", &[Delete])],
    );
    req.dry_run = true;
    let r = run(req).await;
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
    assert_eq!(r.summary.as_deref(), Some("execute changed 60 rows"));
    assert!(r.output.contains("dry-run, rolled back"), "{}", r.output);
    assert!(r.output.contains("would change 60 rows"), "{}", r.output);
    assert_eq!(count(&pool, "sensor_readings").await, 100);

    let mut req = pg_request(
        &pool,
        "sql-execute",
        "VACUUM ANALYZE sensor_readings",
        &[("sensor_readings", &[Vacuum, Analyze])],
    );
    req.dry_run = true;
    assert_stopped(&run(req).await, "`vacuum` call");
    let vacuumed: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = 'sensor_readings'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(vacuumed.is_none());
}

#[sqlx::test]
async fn a_real_delete_runs_and_vacuum_is_only_a_call(pool: PgPool) {
    schema(&pool).await;
    let grants: &[(&str, &[SqlVerb])] = &[("sensor_readings", &[Delete, Vacuum, Analyze])];
    let r = pg(
        &pool,
        "sql-execute",
        "DELETE FROM sensor_readings WHERE value > 40",
        grants,
    )
    .await;
    assert_eq!(
        r.summary.as_deref(),
        Some("execute changed 60 rows"),
        "{r:#?}"
    );
    assert_eq!(count(&pool, "sensor_readings").await, 40);
    let r = pg(
        &pool,
        "sql-execute",
        "VACUUM ANALYZE sensor_readings",
        grants,
    )
    .await;
    assert_stopped(&r, "`vacuum` call");
    // The session limits came off the pooled connection again.
    let timeouts: Vec<String> = sqlx::query_scalar(
        "SELECT setting FROM pg_settings WHERE name IN ('statement_timeout', 'lock_timeout')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(timeouts, ["0", "0"]);
}

async fn sqlite_schema(pool: &SqlitePool) {
    sqlx::raw_sql(
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, value REAL NOT NULL, created_at TEXT NOT NULL);
         INSERT INTO readings (value, created_at)
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
             SELECT i, datetime('now', '-' || i || ' days', '+1 hour') FROM n;
         CREATE TABLE secrets (value TEXT);
         INSERT INTO secrets VALUES ('the-secret-row');",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// How many rows `readings` holds.
async fn readings(pool: &SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM readings")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn lite(
    pool: &SqlitePool,
    mode: &str,
    sql: &str,
    grants: &[(&str, &[SqlVerb])],
) -> RunResult {
    run(sql_request(
        "hostile",
        Connection::sqlite(pool.clone()),
        mode,
        sql,
        grants,
    ))
    .await
}

/// What SQLite's authorizer stops with nothing parsed: a runtime whose
/// parse layer is off sends every statement as written, on a task granted
/// `select` on `readings`. Each class of statement a parser could misread
/// is refused by the engine, and nothing else is read or changed.
#[sqlx::test(migrations = false)]
async fn with_the_parse_layer_off_sqlites_authorizer_refuses_every_class_itself(pool: SqlitePool) {
    sqlite_schema(&pool).await;
    // An index for `REINDEX` to rebuild.
    sqlx::raw_sql("CREATE INDEX secrets_value ON secrets (value)")
        .execute(&pool)
        .await
        .unwrap();
    let copy = tempfile::tempdir().unwrap();
    let attached = copy.path().join("attached.db");
    let vacuumed = copy.path().join("vacuumed.db");
    let grants: &[(&str, &[SqlVerb])] = &[("readings", &[Select])];
    let cases: Vec<(&str, String)> = vec![
        ("sql-query", "SELECT value FROM secrets".into()),
        (
            "sql-query",
            "SELECT r.id, s.value FROM readings r, secrets s".into(),
        ),
        (
            "sql-query",
            "SELECT (SELECT value FROM secrets) FROM readings".into(),
        ),
        (
            "sql-query",
            "SELECT id FROM readings WHERE id IN (SELECT rowid FROM secrets)".into(),
        ),
        (
            "sql-query",
            "WITH s AS (SELECT value FROM secrets) SELECT * FROM s".into(),
        ),
        (
            "sql-query",
            "SELECT * FROM pragma_table_info('secrets')".into(),
        ),
        ("sql-query", "SELECT load_extension('/tmp/evil')".into()),
        (
            "sql-execute",
            format!("ATTACH DATABASE '{}' AS x", attached.display()),
        ),
        (
            "sql-execute",
            format!("VACUUM INTO '{}'", vacuumed.display()),
        ),
        ("sql-execute", "VACUUM".into()),
        ("sql-execute", "PRAGMA writable_schema = 1".into()),
        ("sql-execute", "PRAGMA journal_mode = OFF".into()),
        ("sql-execute", "SELECT 1; DELETE FROM secrets".into()),
        ("sql-execute", "DELETE FROM secrets".into()),
        ("sql-execute", "DELETE FROM readings".into()),
        (
            "sql-execute",
            "INSERT INTO readings (value, created_at) VALUES (1, 'x')".into(),
        ),
        ("sql-execute", "UPDATE readings SET value = 0".into()),
        (
            "sql-execute",
            "REPLACE INTO readings (id, value, created_at) VALUES (1, 0, 'x')".into(),
        ),
        (
            "sql-execute",
            "INSERT INTO readings (value, created_at) SELECT 1, value FROM secrets".into(),
        ),
        ("sql-execute", "DROP TABLE secrets".into()),
        ("sql-execute", "ALTER TABLE secrets ADD COLUMN x".into()),
        (
            "sql-execute",
            "CREATE TABLE stolen AS SELECT * FROM secrets".into(),
        ),
        (
            "sql-execute",
            "CREATE TEMP TABLE stolen AS SELECT * FROM readings".into(),
        ),
        (
            "sql-execute",
            "CREATE VIEW v AS SELECT value FROM secrets".into(),
        ),
        (
            "sql-execute",
            "CREATE TRIGGER t AFTER INSERT ON readings BEGIN DELETE FROM secrets; END".into(),
        ),
        ("sql-execute", "CREATE INDEX i ON readings (value)".into()),
        ("sql-execute", "REINDEX".into()),
        ("sql-execute", "REINDEX secrets_value".into()),
        ("sql-execute", "ANALYZE".into()),
        ("sql-execute", "DETACH DATABASE main".into()),
        ("sql-execute", "COMMIT".into()),
        ("sql-execute", "SAVEPOINT s".into()),
    ];
    assert_each_refused(&cases, |mode, statement| {
        sql_request(
            "hostile",
            Connection::sqlite(pool.clone()),
            mode,
            statement,
            grants,
        )
    })
    .await;
    assert!(!attached.exists(), "ATTACH made a database file");
    assert!(!vacuumed.exists(), "VACUUM INTO copied the database");
    let secrets: Vec<String> = sqlx::query_scalar("SELECT value FROM secrets")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(secrets, ["the-secret-row"]);
    let readings: i64 = sqlx::query_scalar("SELECT count(*) FROM readings WHERE value > 0")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(readings, 100);
    let objects: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master ORDER BY name")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(objects, ["readings", "secrets", "secrets_value"]);
    // What the grant allows still works with nothing parsed.
    let (unparsed, hostile) = unparsed();
    let ok = unparsed
        .run(
            hostile,
            sql_request(
                "hostile",
                Connection::sqlite(pool.clone()),
                "sql-query",
                "SELECT id, value FROM readings WHERE value > 50",
                grants,
            ),
        )
        .await;
    assert_eq!(
        ok.summary.as_deref(),
        Some("query returned 50 rows"),
        "{ok:#?}"
    );
}

/// A SQLite statement does not outlive its run: at the deadline it is
/// interrupted, and the connection (the pool's only one here) serves the
/// next run at once instead of staying busy with it.
#[sqlx::test(migrations = false)]
async fn a_sqlite_statement_ends_with_its_run(pool: SqlitePool) {
    sqlite_schema(&pool).await;
    let one = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let grants: &[(&str, &[SqlVerb])] = &[("readings", &[Select])];
    // 10^10 rows to count: far longer than the run's two seconds.
    let mut endless = sql_request(
        "hostile",
        Connection::sqlite(one.clone()),
        "sql-query",
        "SELECT count(*) FROM readings a, readings b, readings c, readings d, readings e",
        grants,
    );
    endless.timeout = Duration::from_secs(2);
    let r = run(endless).await;
    assert_eq!(r.status, RunStatus::Timeout, "{r:#?}");
    let mut next = sql_request(
        "hostile",
        Connection::sqlite(one.clone()),
        "sql-query",
        "SELECT id FROM readings WHERE value > 90",
        grants,
    );
    next.timeout = Duration::from_secs(5);
    let r = run(next).await;
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
    assert_eq!(r.summary.as_deref(), Some("query returned 10 rows"));
}

#[sqlx::test(migrations = false)]
async fn sqlite_connections_are_guarded_the_same_way(pool: SqlitePool) {
    sqlite_schema(&pool).await;
    let grants: &[(&str, &[SqlVerb])] = &[("readings", &[Select, Delete])];
    let r = lite(&pool, "sql-query", "SELECT * FROM secrets", grants).await;
    assert_stopped(&r, "`secrets` is not granted `select`");
    let r = lite(
        &pool,
        "sql-execute",
        "SELECT 1; DELETE FROM readings",
        grants,
    )
    .await;
    assert_stopped(&r, "exactly one statement");
    let r = lite(
        &pool,
        "sql-execute",
        "ATTACH DATABASE '/tmp/x.db' AS x",
        grants,
    )
    .await;
    assert_stopped(&r, "not allowed");
    let r = lite(&pool, "sql-query", "SELECT load_extension('x')", grants).await;
    assert_stopped(&r, "load_extension");
    let r = lite(&pool, "sql-execute", "VACUUM", &[("*", &[Vacuum])]).await;
    assert_stopped(&r, "`vacuum` call");

    let r = lite(
        &pool,
        "sql-query",
        "SELECT id, value, created_at FROM readings WHERE created_at < datetime('now', '-90 days')",
        grants,
    )
    .await;
    assert_eq!(
        r.summary.as_deref(),
        Some("query returned 10 rows"),
        "{r:#?}"
    );

    let mut req = sql_request(
        "hostile",
        Connection::sqlite(pool.clone()),
        "sql-execute",
        "DELETE FROM readings WHERE created_at < datetime('now', '-90 days')",
        grants,
    );
    req.dry_run = true;
    let r = run(req).await;
    assert_eq!(
        r.summary.as_deref(),
        Some("execute changed 10 rows"),
        "{r:#?}"
    );
    assert_eq!(readings(&pool).await, 100);
    let r = lite(
        &pool,
        "sql-execute",
        "DELETE FROM readings WHERE created_at < datetime('now', '-90 days')",
        grants,
    )
    .await;
    assert_eq!(
        r.summary.as_deref(),
        Some("execute changed 10 rows"),
        "{r:#?}"
    );
    assert_eq!(readings(&pool).await, 90);
}

#[sqlx::test]
async fn values_and_parameters_keep_their_types(pool: PgPool) {
    schema(&pool).await;
    let grants: &[(&str, &[SqlVerb])] = &[("events", &[Select])];
    let r = pg(
        &pool,
        "sql-values",
        "SELECT $1::bool, $2::int8, $3::float8, $4::text, $5::bytea, $6::timestamptz, $7::jsonb, $8::int4, \
         7::int2, 8::int4, 1.5::float4, 12.345::numeric, -0.0005::numeric, 'v'::varchar, \
         '00000000-0000-0000-0000-000000000001'::uuid, '2026-01-02 03:04:05'::timestamp, \
         '2026-01-02'::date, '{\"b\": true}'::json",
        grants,
    )
    .await;
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
    assert_eq!(
        r.summary.as_deref(),
        Some(
            "bool:true int:-42 float:2.5 text:tëxt bytes:[0, 1, 255] ts:1767323045123 json:{\"a\":[1,2]} null \
             int:7 int:8 float:1.5 text:12.345 text:-0.0005 text:v \
             text:00000000-0000-0000-0000-000000000001 ts:1767323045000 ts:1767312000000 json:{\"b\":true}"
        )
    );
    // A type the interface does not carry is named, with the way out.
    let r = pg(
        &pool,
        "sql-values",
        "SELECT interval '1 day' AS span",
        grants,
    )
    .await;
    assert_stopped(&r, "column `span` has type INTERVAL");
    assert_stopped(&r, "cast it");
}

#[sqlx::test(migrations = false)]
async fn sqlite_values_and_parameters(pool: SqlitePool) {
    sqlite_schema(&pool).await;
    let r = lite(
        &pool,
        "sql-values",
        "SELECT $1, $2, $3, $4, $5, $7, $8, 1.25, x'0a'",
        &[("readings", &[Select])],
    )
    .await;
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
    assert_eq!(
        r.summary.as_deref(),
        Some(
            "int:1 int:-42 float:2.5 text:tëxt bytes:[0, 1, 255] text:{\"a\": [1, 2]} null float:1.25 bytes:[10]"
        )
    );
}

#[sqlx::test]
async fn a_transaction_is_all_or_nothing(pool: PgPool) {
    schema(&pool).await;
    let grants: &[(&str, &[SqlVerb])] = &[("sensor_readings", &[Delete, Insert, Vacuum])];
    // A statement the guard stops stops them all before any runs.
    let r = pg(
        &pool,
        "sql-transaction",
        "DELETE FROM sensor_readings WHERE value > 50\nINSERT INTO secrets VALUES (2, 'x')",
        grants,
    )
    .await;
    assert_stopped(&r, "`secrets` is not granted `insert`");
    let r = pg(
        &pool,
        "sql-transaction",
        "DELETE FROM sensor_readings WHERE value > 50\nVACUUM sensor_readings",
        grants,
    )
    .await;
    assert_stopped(&r, "`vacuum` call");
    // A statement the database rejects undoes the ones before it.
    let r = pg(
        &pool,
        "sql-transaction",
        "DELETE FROM sensor_readings WHERE value > 50\nINSERT INTO sensor_readings (device_uuid, value) VALUES (NULL, 1)",
        grants,
    )
    .await;
    assert_stopped(&r, "SQLSTATE 23502");
    assert_eq!(count(&pool, "sensor_readings").await, 100);
    // The output names the statement that failed, not the call's last.
    let r = pg(
        &pool,
        "sql-transaction",
        "INSERT INTO sensor_readings (device_uuid, value) VALUES (NULL, 1)\nDELETE FROM sensor_readings WHERE value > 50",
        grants,
    )
    .await;
    assert_stopped(&r, "SQLSTATE 23502");
    assert_failed_statement(&r.output, "INSERT INTO sensor_readings");
    assert_eq!(count(&pool, "sensor_readings").await, 100);

    let r = pg(
        &pool,
        "sql-transaction",
        "DELETE FROM sensor_readings WHERE value > 90\nDELETE FROM sensor_readings WHERE value > 80",
        grants,
    )
    .await;
    assert_eq!(
        r.summary.as_deref(),
        Some("transaction changed [10, 10] rows"),
        "{r:#?}"
    );
    assert_eq!(count(&pool, "sensor_readings").await, 80);
}

/// The run's output says the call failed and names `statement`, the one
/// that failed.
fn assert_failed_statement(output: &str, statement: &str) {
    let line = output
        .lines()
        .find(|l| l.contains("sql failed"))
        .unwrap_or_else(|| panic!("no failure in the output: {output}"));
    let named = line.rsplit(": ").next().unwrap_or_default();
    assert!(named.starts_with(statement), "{line}");
}

#[sqlx::test(migrations = false)]
async fn a_sqlite_transaction_is_all_or_nothing_and_names_what_failed(pool: SqlitePool) {
    sqlite_schema(&pool).await;
    let r = lite(
        &pool,
        "sql-transaction",
        "INSERT INTO readings (value, created_at) VALUES (NULL, 'x')\nDELETE FROM readings WHERE value > 50",
        &[("readings", &[Insert, Delete])],
    )
    .await;
    assert_stopped(&r, "NOT NULL");
    assert_failed_statement(&r.output, "INSERT INTO readings");
    assert_eq!(readings(&pool).await, 100);
}

/// `execute-async-commit` commits without waiting for the disk, only in its
/// own call, and the host waits for the disk once, after the task returns:
/// its own record in the WAL comes after every commit of the task, and the
/// WAL is flushed past it.
#[sqlx::test]
async fn asynchronous_commits_are_on_disk_when_the_run_ends(pool: PgPool) {
    sqlx::raw_sql("CREATE TABLE commits (setting text NOT NULL, lsn pg_lsn)")
        .execute(&pool)
        .await
        .unwrap();
    let insert = "INSERT INTO commits SELECT current_setting('synchronous_commit')";
    let grants: &[(&str, &[SqlVerb])] = &[("commits", &[Insert])];
    let settings = |pool: &PgPool| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT setting FROM commits ORDER BY 1")
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    let waited = "asynchronous commits are on disk";

    let r = pg(
        &pool,
        "sql-async-commit",
        &format!("{insert}\n{insert}"),
        grants,
    )
    .await;
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
    assert_eq!(settings(&pool).await, ["off", "off"]);
    assert!(r.output.contains(waited), "{}", r.output);

    // Where the task's statements wrote in the WAL (read with the parse
    // layer off: the guard does not allow the function).
    let (runtime, hostile) = unparsed();
    let req = pg_request(
        &pool,
        "sql-async-commit",
        "INSERT INTO commits SELECT 'lsn', pg_current_wal_insert_lsn()\nINSERT INTO commits SELECT 'lsn', pg_current_wal_insert_lsn()",
        grants,
    );
    let r = runtime.run(hostile, req).await;
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
    let record = r
        .output
        .split("past the host's record at ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no wait in the output: {}", r.output))
        .to_owned();
    let (after, flushed): (bool, bool) = sqlx::query_as(
        "SELECT $1::pg_lsn > (SELECT max(lsn) FROM commits), pg_current_wal_flush_lsn() >= $1::pg_lsn",
    )
    .bind(&record)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(after && flushed, "{}", r.output);
    sqlx::raw_sql("DELETE FROM commits WHERE setting = 'lsn'")
        .execute(&pool)
        .await
        .unwrap();

    // `execute` waits for its own commit; nothing is left to wait for.
    let r = pg(&pool, "sql-execute", insert, grants).await;
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
    assert_eq!(settings(&pool).await, ["off", "off", "on"]);
    assert!(!r.output.contains(waited), "{}", r.output);

    // A dry-run commits nothing, so it waits for nothing.
    let mut req = pg_request(&pool, "sql-async-commit", insert, grants);
    req.dry_run = true;
    let r = run(req).await;
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
    assert_eq!(settings(&pool).await.len(), 3);
    assert!(!r.output.contains(waited), "{}", r.output);

    // The guard is the same as `execute`'s.
    let r = pg(&pool, "sql-async-commit", "DELETE FROM commits", grants).await;
    assert_stopped(&r, "`commits` is not granted `delete`");
    assert_eq!(settings(&pool).await.len(), 3);

    // A run that ends at its deadline after an asynchronous commit is
    // waited for too.
    let mut req = pg_request(
        &pool,
        "sql-async-commit",
        &format!(
            "{insert}\nINSERT INTO commits SELECT count(*)::text FROM generate_series(1, 100000) a, generate_series(1, 100000) b"
        ),
        grants,
    );
    req.timeout = Duration::from_secs(2);
    let r = run(req).await;
    assert_eq!(r.status, RunStatus::Timeout, "{r:#?}");
    assert_eq!(settings(&pool).await.len(), 4);
    assert!(r.output.contains(waited), "{}", r.output);
}

/// A call cut off at the run's deadline while its `COMMIT` still runs on
/// the server (a deferred foreign key waiting for a row lock) is cancelled
/// and waited for before the run ends: the statement the output says was
/// cancelled does not commit later, after the host's wait for the disk.
#[sqlx::test]
async fn an_asynchronous_call_cut_off_at_its_commit_does_not_commit_after_the_run(pool: PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE parent (id int PRIMARY KEY);
         INSERT INTO parent VALUES (1);
         CREATE TABLE child (id int, parent_id int REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);",
    )
    .execute(&pool)
    .await
    .unwrap();
    // The insert waits 2 s for a table lock, so its `COMMIT` starts late
    // with the call's lock time-out still ahead of it; the foreign key
    // checked there waits for the parent row until the test lets go, after
    // the run has ended.
    let mut table = pool.begin().await.unwrap();
    sqlx::raw_sql("LOCK TABLE child IN EXCLUSIVE MODE")
        .execute(&mut *table)
        .await
        .unwrap();
    let mut row = pool.begin().await.unwrap();
    sqlx::raw_sql("SELECT * FROM parent WHERE id = 1 FOR UPDATE")
        .execute(&mut *row)
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        table.rollback().await.unwrap();
    });
    let mut req = pg_request(
        &pool,
        "sql-async-commit",
        "INSERT INTO child VALUES (1, 1)",
        &[("child", &[Insert])],
    );
    req.timeout = Duration::from_secs(4);
    let r = run(req).await;
    release.await.unwrap();
    row.rollback().await.unwrap();
    assert_eq!(r.status, RunStatus::Timeout, "{r:#?}");
    for said in [
        "sql cancelled at the run's deadline",
        "was still running on the server",
        "asynchronous commits are on disk",
    ] {
        assert!(r.output.contains(said), "{said:?} not in {}", r.output);
    }
    // Whatever still ran of the call has ended by now; give a late commit
    // every chance to show.
    for _ in 0..100 {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if others == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&pool, "child").await, 0, "{}", r.output);
}

#[sqlx::test(migrations = false)]
async fn an_asynchronous_commit_on_sqlite_is_a_commit(pool: SqlitePool) {
    sqlite_schema(&pool).await;
    let r = lite(
        &pool,
        "sql-async-commit",
        "DELETE FROM readings WHERE value > 90\nDELETE FROM readings WHERE value > 80",
        &[("readings", &[Delete])],
    )
    .await;
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
    assert_eq!(
        r.summary.as_deref(),
        Some("async commits changed [10, 10] rows")
    );
    assert_eq!(readings(&pool).await, 80);
    assert!(!r.output.contains("asynchronous commits"), "{}", r.output);
}

/// The PostgreSQL injection payloads of `tests/data/payloads` (see its
/// README): one per line of the lists, and the SQL code blocks and
/// backquoted table cells of the PostgreSQL page.
fn payloads() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/payloads");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        match path.extension().and_then(|e| e.to_str()) {
            Some("txt") => out.extend(text.lines().map(str::to_owned)),
            Some("md") if path.file_name().is_some_and(|n| n != "README.md") => {
                let mut in_sql = false;
                for line in text.lines() {
                    if line.starts_with("```") {
                        in_sql = line.starts_with("```sql");
                    } else if in_sql {
                        out.push(line.to_owned());
                    } else if line.starts_with('|') {
                        let cells = line.replace("\\|", "\u{1}");
                        for cell in cells.split('|') {
                            let cell = cell.trim();
                            if let Some(code) =
                                cell.strip_prefix('`').and_then(|c| c.strip_suffix('`'))
                            {
                                out.push(code.replace('\u{1}', "|"));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out.retain(|p| !p.trim().is_empty());
    out
}

/// Every payload, as a statement and inside a `WHERE` clause (as a string
/// and as a number), run by a task granted `select` on `events` alone: the
/// canary tables are never changed and never appear in anything the task
/// gets back (rows counted, errors, output: where error-based payloads
/// would put them), and every statement that reached the database calls
/// only allowed functions.
#[sqlx::test]
async fn injection_payloads_reach_nothing_but_the_granted_table(pool: PgPool) {
    schema(&pool).await;
    sqlx::raw_sql(
        "CREATE TABLE canary (id int PRIMARY KEY, secret text NOT NULL);
         INSERT INTO canary VALUES (1, 'canary-9d41');
         CREATE TABLE data_table (data_column text);
         INSERT INTO data_table VALUES ('canary-data-column');",
    )
    .execute(&pool)
    .await
    .unwrap();

    let payloads = payloads();
    assert!(payloads.len() > 700, "{}", payloads.len());
    let grants: &[(&str, &[SqlVerb])] = &[("events", &[Select])];
    let (mut ran, mut stopped) = (0, 0);
    for payload in &payloads {
        for sql in [
            payload.clone(),
            format!("SELECT id, event_type FROM events WHERE event_type = '{payload}'"),
            format!("SELECT id, event_type FROM events WHERE id = {payload}"),
        ] {
            let r = pg(&pool, "sql-query", &sql, grants).await;
            let everything = format!("{:?} {:?} {}", r.summary, r.error, r.output);
            for canary in [
                "the-secret-row",
                "canary-9d41",
                "canary-data-column",
                "root:x:0",
                "PostgreSQL 1",
            ] {
                assert!(!everything.contains(canary), "{sql:?}: {r:#?}");
            }
            // Stopped before the database: denied or refused by the host
            // (a result over the cap is refused after it ran).
            let error = r.error.as_deref().unwrap_or_default();
            let before = error.starts_with("sql: access denied")
                || (error.starts_with("sql: refused") && !error.contains("larger than"));
            if before {
                stopped += 1;
                continue;
            }
            ran += 1;
            let (_, functions) = housekeeper::capabilities::sql::guard::postgres_references(&sql)
                .expect("the database parsed it");
            for f in functions {
                assert!(
                    housekeeper::capabilities::sql::guard::function_allowed(&f),
                    "{sql:?} ran and calls {f}"
                );
            }
        }
    }
    assert!(ran > 50 && stopped > 1000, "{ran} ran, {stopped} stopped");
    let canary: Vec<(i32, String)> = sqlx::query_as("SELECT id, secret FROM canary")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(canary, [(1, "canary-9d41".to_owned())]);
    assert_eq!(count(&pool, "secrets").await, 1);
    assert_eq!(count(&pool, "data_table").await, 1);
}

/// SQLite's temporary files are charged to the run's write budget. Every
/// kind of statement that makes SQLite spill to one (a sort for a window or
/// `GROUP BY`, `DISTINCT`, an index build) is refused, naming
/// `limits.write_bytes`, under a small budget and runs under the default;
/// the database's own files are not charged (a budget of 0 still reads and
/// updates), and a refused statement changes nothing.
#[tokio::test]
async fn sqlite_temporary_files_are_charged_to_the_write_budget() {
    use housekeeper::capabilities::sql::ConnectionOptions;
    let dir = tempfile::tempdir().unwrap();
    let (url, setup) = big_sqlite(dir.path()).await;
    let connection = Connection::open(&url, &ConnectionOptions::default()).unwrap();
    let request = |mode: &str, sql: &str, verbs: &[SqlVerb], write_bytes: u64| {
        let mut r = sql_request("hostile", connection.clone(), mode, sql, &[("big", verbs)]);
        r.resources.write_bytes = write_bytes;
        r.timeout = Duration::from_secs(60);
        r
    };
    let spills: &[(&str, &str, &[SqlVerb])] = &[
        (
            "sql-query",
            "SELECT max(r) FROM (SELECT row_number() OVER (ORDER BY v DESC) AS r FROM big)",
            &[Select],
        ),
        ("sql-query", "SELECT count(DISTINCT v) FROM big", &[Select]),
        (
            "sql-query",
            "SELECT count(*) FROM (SELECT v, count(*) FROM big GROUP BY v)",
            &[Select],
        ),
        (
            "sql-execute",
            "CREATE INDEX big_v ON big (v)",
            &[Select, Ddl],
        ),
    ];
    for (mode, sql, verbs) in spills {
        let r = run(request(mode, sql, verbs, 256 << 10)).await;
        assert_eq!(r.status, RunStatus::Error, "{sql}: {r:#?}");
        let error = r.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("limits.write_bytes") && error.contains("temporary files"),
            "{sql}: {error}"
        );
    }
    let indexes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'index'")
            .fetch_one(&setup)
            .await
            .unwrap();
    assert_eq!(indexes, 0, "the refused CREATE INDEX left an index");
    for (mode, sql, verbs) in spills {
        let r = run(request(mode, sql, verbs, 1 << 30)).await;
        assert_eq!(r.status, RunStatus::Success, "{sql}: {r:#?}");
    }
    for (mode, sql, verbs) in [
        ("sql-query", "SELECT count(*) FROM big", &[Select][..]),
        (
            "sql-execute",
            "UPDATE big SET v = v || '!' WHERE id <= 1000",
            &[Select, Update][..],
        ),
    ] {
        let r = run(request(mode, sql, verbs, 0)).await;
        assert_eq!(r.status, RunStatus::Success, "{sql}: {r:#?}");
    }
}

/// Where SQLite ends a call's transaction by itself (a write interrupted at
/// its run's deadline, a temporary file refused by the write budget), the
/// connection still holds no transaction afterwards: a dry run on it rolls
/// back everything, a run on it commits, and another connection can write
/// at once. Each statement runs on the pool's only connection.
#[tokio::test]
async fn a_transaction_sqlite_ends_by_itself_leaves_the_connection_clean() {
    use housekeeper::capabilities::sql::ConnectionOptions;
    let dir = tempfile::tempdir().unwrap();
    let (url, other) = big_sqlite(dir.path()).await;
    let options = ConnectionOptions {
        pool_max: 1,
        ..ConnectionOptions::default()
    };
    let connection = Connection::open(&url, &options).unwrap();
    let request = |mode: &str, sql: &str, write_bytes: u64| {
        let grants: &[(&str, &[SqlVerb])] = &[("big", &[Select, Update])];
        let mut r = sql_request("hostile", connection.clone(), mode, sql, grants);
        r.resources.write_bytes = write_bytes;
        r.timeout = Duration::from_secs(2);
        r
    };
    let ended_by_sqlite = [
        // 10^10 rows to count for each row updated: cut off at the deadline.
        (
            "UPDATE big SET v = (SELECT count(*) FROM big a, big b) WHERE id = 1",
            1 << 30,
            RunStatus::Timeout,
        ),
        // Sorts 20 MB under a budget of 64 KiB.
        (
            "UPDATE big SET v = 'y' WHERE id IN (SELECT id FROM big ORDER BY v DESC LIMIT 99999)",
            64 << 10,
            RunStatus::Error,
        ),
    ];
    for (round, (sql, write_bytes, status)) in ended_by_sqlite.into_iter().enumerate() {
        let r = run(request("sql-execute", sql, write_bytes)).await;
        assert_eq!(r.status, status, "{sql}: {r:#?}");
        if status == RunStatus::Error {
            let error = r.error.as_deref().unwrap_or_default();
            assert!(error.contains("limits.write_bytes"), "{error}");
        }
        let mut dry = request("sql-execute", "UPDATE big SET v = 'dry' WHERE id = 2", 0);
        dry.dry_run = true;
        let r = run(dry).await;
        assert_eq!(r.status, RunStatus::Success, "{r:#?}");
        let r = run(request(
            "sql-execute",
            &format!("UPDATE big SET v = 'kept {round}' WHERE id = 3"),
            0,
        ))
        .await;
        assert_eq!(r.status, RunStatus::Success, "{r:#?}");
        sqlx::query("UPDATE big SET v = 'other' WHERE id = 4")
            .execute(&other)
            .await
            .unwrap_or_else(|e| panic!("after {sql}: {e}"));
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, v FROM big WHERE id <= 4 ORDER BY id")
                .fetch_all(&other)
                .await
                .unwrap();
        let values: Vec<&str> = rows.iter().map(|(_, v)| &v[..v.len().min(9)]).collect();
        assert_eq!(
            values[1..],
            ["2xxxxxxxx", &format!("kept {round}"), "other"]
        );
        assert!(values[0].starts_with('1'), "{values:?}");
    }
}

/// A file-backed SQLite database of about 20 MB (table `big`, 100,000
/// distinct 200-byte values; table `small`), its URL, and a pool on it for
/// the test's own statements, whose writes wait at most a second.
async fn big_sqlite(dir: &std::path::Path) -> (String, SqlitePool) {
    let url = format!("sqlite://{}?mode=rwc", dir.join("tasks.db").display());
    let own = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            url.parse::<sqlx::sqlite::SqliteConnectOptions>()
                .unwrap()
                .busy_timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT NOT NULL);
         INSERT INTO big (v)
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
             SELECT i || printf('%.200c', 'x') FROM n;
         CREATE TABLE small (v TEXT);",
    )
    .execute(&own)
    .await
    .unwrap();
    (url, own)
}

/// One call of `trim` or `LIKE` is one step for SQLite, however long it
/// takes (SQLite's own take hours over values of a megabyte, comparing every
/// character with every character of the set or pattern): the host's
/// versions stop when their run ends, so the lock the run's transaction
/// took is free as soon as the run is over. `instr` and `replace`, which
/// took as long, are linear.
#[tokio::test]
async fn a_long_function_call_stops_with_its_run() {
    use housekeeper::capabilities::sql::ConnectionOptions;
    let dir = tempfile::tempdir().unwrap();
    let (url, own) = big_sqlite(dir.path()).await;
    let connection = Connection::open(&url, &ConnectionOptions::default()).unwrap();
    let values = "FROM (SELECT printf('%.*c', 1000000, 'a') AS s, printf('%.*c', 500000, 'b') || 'a' AS set_, '%' || printf('%.*c', 20000, 'a') || 'b' AS pattern)";
    let grants: &[(&str, &[SqlVerb])] = &[("small", &[Select, Insert])];
    for (select, ends) in [
        (
            format!("SELECT length(trim(s, set_)) {values}"),
            RunStatus::Timeout,
        ),
        (
            format!("SELECT s LIKE pattern {values}"),
            RunStatus::Timeout,
        ),
        (
            format!(
                "SELECT instr(s, substr(s, 500000) || 'b'), length(replace(s, substr(s, 500000) || 'b', 'c')) {values}"
            ),
            RunStatus::Success,
        ),
    ] {
        let mut r = sql_request(
            "hostile",
            connection.clone(),
            "sql-transaction",
            &format!("INSERT INTO small VALUES ('lock-holder')\n{select}"),
            grants,
        );
        r.timeout = Duration::from_secs(2);
        let r = run(r).await;
        assert_eq!(r.status, ends, "{select}: {r:#?}");
        sqlx::query("INSERT INTO small VALUES ('outside')")
            .execute(&own)
            .await
            .unwrap_or_else(|e| panic!("{select}: the run's statement still holds its lock: {e}"));
    }
}

/// One step that counts a whole table does not look at the progress
/// handler; the host interrupts it (`sqlite3_interrupt`) when its call is
/// dropped, so the lock its run took is free right after the run.
#[tokio::test]
async fn a_count_of_a_whole_table_ends_with_its_run() {
    use housekeeper::capabilities::sql::ConnectionOptions;
    let dir = tempfile::tempdir().unwrap();
    let (url, own) = big_sqlite(dir.path()).await;
    let connection = Connection::open(&url, &ConnectionOptions::default()).unwrap();
    // A row a page: counting the table reads each of its 20,000 pages.
    sqlx::raw_sql(
        "CREATE TABLE wide (b BLOB);
         INSERT INTO wide
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             SELECT zeroblob(3900) FROM n;",
    )
    .execute(&own)
    .await
    .unwrap();
    let grants: &[(&str, &[SqlVerb])] = &[("small", &[Select, Insert]), ("wide", &[Select])];
    let counts = vec!["(SELECT count(*) FROM wide)"; 200].join(", ");
    let mut r = sql_request(
        "hostile",
        connection.clone(),
        "sql-transaction",
        &format!("INSERT INTO small VALUES ('lock-holder')\nSELECT {counts}"),
        grants,
    );
    r.timeout = Duration::from_secs(1);
    let r = run(r).await;
    assert_eq!(r.status, RunStatus::Timeout, "{r:#?}");
    sqlx::query("INSERT INTO small VALUES ('outside')")
        .execute(&own)
        .await
        .expect("the counting statement still holds its lock");
}

/// A statement waiting for another connection's lock when its run ends
/// does not write once the other connection lets go: the host's busy
/// handler stops waiting, and were it to get the lock, the statement is
/// interrupted.
#[tokio::test]
async fn a_statement_waiting_for_a_lock_does_not_write_after_its_run() {
    use housekeeper::capabilities::sql::ConnectionOptions;
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let (url, own) = big_sqlite(dir.path()).await;
    let connection = Connection::open(&url, &ConnectionOptions::default()).unwrap();
    let grants: &[(&str, &[SqlVerb])] = &[("small", &[Select, Insert])];
    let mut holder = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE; INSERT INTO small VALUES ('holder')")
        .execute(&mut holder)
        .await
        .unwrap();
    let mut r = sql_request(
        "hostile",
        connection.clone(),
        "sql-execute",
        "INSERT INTO small VALUES ('late')",
        grants,
    );
    r.timeout = Duration::from_secs(1);
    let r = run(r).await;
    assert_eq!(r.status, RunStatus::Timeout, "{r:#?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    sqlx::raw_sql("COMMIT").execute(&mut holder).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows: Vec<String> = sqlx::query_scalar("SELECT v FROM small ORDER BY v")
        .fetch_all(&own)
        .await
        .unwrap();
    assert_eq!(rows, ["holder"], "a statement of an ended run wrote");
}

/// SQLite's own small helpers run on a task connection: through the guard
/// and SQLite's authorizer both.
#[tokio::test]
async fn sqlite_helpers_a_user_expects_run() {
    use housekeeper::capabilities::sql::ConnectionOptions;
    let dir = tempfile::tempdir().unwrap();
    let (url, _own) = big_sqlite(dir.path()).await;
    let connection = Connection::open(&url, &ConnectionOptions::default()).unwrap();
    let sql = "SELECT typeof(v), total(id), json_valid('{}'), json_type('[1]'), \
               json_array_length('[1,2]'), likely(1), unlikely(0) FROM big \
               WHERE v LIKE '1%' AND v GLOB '1*' GROUP BY typeof(v)";
    let r = run(sql_request(
        "hostile",
        connection,
        "sql-query",
        sql,
        &[("big", &[Select])],
    ))
    .await;
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
    assert_eq!(r.output.matches("refused").count(), 0, "{}", r.output);
}

/// On SQLite a task statement reads and makes values of at most
/// `HOUSEKEEPER_SQLITE_MAX_VALUE` and compiles to at most 5,376
/// instructions, and the errors say which cap it met; `VACUUM`, which the
/// host builds, still copies rows of any size.
#[tokio::test]
async fn sqlite_caps_on_values_and_programs_are_named() {
    use housekeeper::capabilities::sql::ConnectionOptions;
    let dir = tempfile::tempdir().unwrap();
    let (url, own) = big_sqlite(dir.path()).await;
    sqlx::raw_sql("CREATE TABLE blobs (b BLOB); INSERT INTO blobs VALUES (zeroblob(2000000))")
        .execute(&own)
        .await
        .unwrap();
    let options = ConnectionOptions {
        sqlite_max_value: 1 << 20,
        ..ConnectionOptions::default()
    };
    let connection = Connection::open(&url, &options).unwrap();
    let grants: &[(&str, &[SqlVerb])] = &[("blobs", &[Select]), ("small", &[Select])];
    // Three instructions per element of the list, to build its index.
    let in_list = |n: usize| {
        let names: Vec<String> = (0..n).map(|i| format!("'v{i}'")).collect();
        format!(
            "SELECT count(*) FROM small WHERE v IN ({})",
            names.join(", ")
        )
    };
    for (mode, sql, cap) in [
        (
            "sql-query",
            "SELECT b FROM blobs".to_owned(),
            "HOUSEKEEPER_SQLITE_MAX_VALUE",
        ),
        (
            "sql-query",
            "SELECT length(replace(printf('%.*c', 1000000, 'x'), 'x', 'yy'))".to_owned(),
            "HOUSEKEEPER_SQLITE_MAX_VALUE",
        ),
        ("sql-query", in_list(4_000), "SQLite instructions"),
    ] {
        let r = run(sql_request(
            "hostile",
            connection.clone(),
            mode,
            &sql,
            grants,
        ))
        .await;
        assert_eq!(r.status, RunStatus::Error, "{r:#?}");
        let error = r.error.as_deref().unwrap_or_default();
        assert!(
            error.contains(cap),
            "{}: {error}",
            &sql[..40.min(sql.len())]
        );
    }
    // Within the caps, the same shapes run.
    let r = run(sql_request(
        "hostile",
        connection.clone(),
        "sql-query",
        &in_list(1_000),
        grants,
    ))
    .await;
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
    let r = run(vacuum_request(&connection)).await;
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
    let size: i64 = sqlx::query_scalar("SELECT length(b) FROM blobs")
        .fetch_one(&own)
        .await
        .unwrap();
    assert_eq!(size, 2_000_000);
}

/// What one run's statements make SQLite hold is bounded
/// (`HOUSEKEEPER_SQLITE_MEMORY`, 64 MiB by default) by the host's allocator
/// for SQLite: a row too wide for it, and a statement whose preparing would
/// copy gigabytes (with the parse layer off, so SQLite itself is what meets
/// it), are refused naming the variable, and the connection serves the
/// next call.
#[tokio::test]
async fn sqlite_memory_is_bounded_per_run() {
    use housekeeper::capabilities::sql::ConnectionOptions;
    assert!(
        housekeeper::capabilities::sql::heap::installed(),
        "SQLite started before the host's allocator"
    );
    let dir = tempfile::tempdir().unwrap();
    let (url, _own) = big_sqlite(dir.path()).await;
    let connection = Connection::open(&url, &ConnectionOptions::default()).unwrap();
    let grants: &[(&str, &[SqlVerb])] = &[("big", &[Select, Delete])];
    // 100 values of 900 KB in one row: 90 MB in SQLite's registers, none
    // of it returned (`execute` drops the rows).
    let wide = (0..100)
        .map(|i| format!("printf('%.*c', 900000, 'x') AS c{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    // Twelve levels of four uses each: SQLite's flattening copies the
    // innermost expression 4^12 times while it prepares (gigabytes).
    let mut nested = "SELECT id AS x FROM big".to_owned();
    for _ in 0..12 {
        nested = format!("SELECT x+x+x+x AS x FROM ({nested})");
    }
    let (unparsed, hostile) = unparsed();
    for (mode, sql, parsed) in [
        ("sql-execute", format!("SELECT {wide}"), true),
        ("sql-query", format!("SELECT {wide}"), true),
        ("sql-query", nested.clone(), false),
        (
            "sql-execute",
            format!("DELETE FROM big WHERE id IN ({nested})"),
            false,
        ),
    ] {
        let request = sql_request("hostile", connection.clone(), mode, &sql, grants);
        let r = if parsed {
            run(request).await
        } else {
            unparsed.run(hostile, request).await
        };
        assert_eq!(r.status, RunStatus::Error, "{mode} {}: {r:#?}", &sql[..60]);
        let error = r.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("HOUSEKEEPER_SQLITE_MEMORY"),
            "{mode} {}: {error}",
            &sql[..60]
        );
    }
    // Within the bound the same shapes run, on the same connection.
    let narrow = (0..20)
        .map(|i| format!("length(printf('%.*c', 900000, 'x')) AS c{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let r = run(sql_request(
        "hostile",
        connection.clone(),
        "sql-query",
        &format!("SELECT {narrow}"),
        grants,
    ))
    .await;
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
    let mut nested = "SELECT id AS x FROM big".to_owned();
    for _ in 0..3 {
        nested = format!("SELECT x+x+x+x AS x FROM ({nested})");
    }
    let r = unparsed
        .run(
            hostile,
            sql_request("hostile", connection.clone(), "sql-query", &nested, grants),
        )
        .await;
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
}

/// A run of `sql::vacuum()` on the whole database of `connection`.
fn vacuum_request(connection: &Connection) -> housekeeper::runtime::RunRequest {
    let mut r = sql_request(
        "hostile",
        connection.clone(),
        "sql-maintenance",
        "",
        &[("*", &[Vacuum])],
    );
    r.config
        .insert("op".into(), ConfigValue::Text("vacuum".into()));
    r
}

/// `VACUUM` on SQLite copies the whole database into a temporary file:
/// charged to the run's write budget like a task's own statements.
#[tokio::test]
async fn a_sqlite_vacuum_is_charged_to_the_write_budget() {
    use housekeeper::capabilities::sql::ConnectionOptions;
    let dir = tempfile::tempdir().unwrap();
    let (url, _own) = big_sqlite(dir.path()).await;
    let connection = Connection::open(&url, &ConnectionOptions::default()).unwrap();
    for (write_bytes, status) in [(1 << 20, RunStatus::Error), (1 << 30, RunStatus::Success)] {
        let mut r = vacuum_request(&connection);
        r.resources.write_bytes = write_bytes;
        let r = run(r).await;
        assert_eq!(r.status, status, "{r:#?}");
        if status == RunStatus::Error {
            let error = r.error.as_deref().unwrap_or_default();
            assert!(error.contains("limits.write_bytes"), "{error}");
        }
    }
}

/// A call cut off at its run's deadline while it holds a write lock (an
/// `INSERT`, then a read that never ends) leaves no transaction behind:
/// its connection is closed, so another connection writes at once.
#[tokio::test]
async fn a_sqlite_call_cut_off_at_the_deadline_leaves_no_lock() {
    use housekeeper::capabilities::sql::ConnectionOptions;
    let dir = tempfile::tempdir().unwrap();
    let (url, own) = big_sqlite(dir.path()).await;
    let connection = Connection::open(&url, &ConnectionOptions::default()).unwrap();
    let mut r = sql_request(
        "hostile",
        connection.clone(),
        "sql-transaction",
        "INSERT INTO small VALUES ('lock-holder')\nSELECT count(*) FROM big a, big b",
        &[("small", &[Select, Insert]), ("big", &[Select])],
    );
    r.timeout = Duration::from_secs(2);
    let r = run(r).await;
    assert_eq!(r.status, RunStatus::Timeout, "{r:#?}");
    sqlx::query("INSERT INTO small VALUES ('outside')")
        .execute(&own)
        .await
        .expect("the cut-off call left its lock behind");
    let rows: Vec<String> = sqlx::query_scalar("SELECT v FROM small")
        .fetch_all(&own)
        .await
        .unwrap();
    assert_eq!(rows, ["outside"]);
}
