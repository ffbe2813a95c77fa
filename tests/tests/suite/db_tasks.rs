//! The bundled database tasks against a real PostgreSQL 15 (a fresh
//! database per test, loaded with deploy/schema/example.sql), and row
//! retention against SQLite too.

use SqlVerb::*;
use chrono::{Duration as Days, NaiveDate, Utc};
use housekeeper::capabilities::sql::{Connection, Connections};
use housekeeper::manifest::{DatabaseGrant, Manifest, SqlVerb};
use housekeeper::model::{ConfigValue, RunResult, RunStatus, Trigger};
use housekeeper::runtime::RunRequest;
use housekeeper_tests::{EXAMPLE_SCHEMA, component, fixture_path, runtime, task_path};
use sqlx::{PgPool, SqlitePool};
use std::time::Duration;

async fn schema(pool: &PgPool) {
    sqlx::raw_sql(EXAMPLE_SCHEMA).execute(pool).await.unwrap();
}

struct Run<'a> {
    task: &'a str,
    /// A test-only component from `tasks/fixtures/` rather than a bundled task.
    fixture: bool,
    connection: Connection,
    config: Vec<(&'a str, ConfigValue)>,
    grants: Vec<(&'a str, Vec<SqlVerb>)>,
    dry_run: bool,
}

impl<'a> Run<'a> {
    fn new(task: &'a str, pool: &PgPool) -> Self {
        Run {
            task,
            fixture: false,
            connection: Connection::postgres(pool.clone()).allow_unsafe_superuser(),
            config: Vec::new(),
            grants: Vec::new(),
            dry_run: false,
        }
    }

    fn config(mut self, key: &'a str, value: impl Into<Value>) -> Self {
        self.config.push((key, value.into().0));
        self
    }

    fn grant(mut self, table: &'a str, verbs: &[SqlVerb]) -> Self {
        self.grants.push((table, verbs.to_vec()));
        self
    }

    fn dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }

    async fn go(self) -> RunResult {
        let mut request = RunRequest::from_manifest(
            &Manifest::implicit(self.task, &format!("{}.wasm", self.task)),
            housekeeper::cli::new_run_id(),
            Trigger::Manual,
        );
        request.timeout = Duration::from_secs(60);
        request.dry_run = self.dry_run;
        request.database = Some(DatabaseGrant {
            connection: "main".into(),
            tables: self
                .grants
                .into_iter()
                .map(|(t, v)| (t.to_owned(), v))
                .collect(),
        });
        request.connections = Some(Connections::from_connections([("main", self.connection)]));
        for (k, v) in self.config {
            request.config.insert(k.into(), v);
        }
        let path = if self.fixture {
            fixture_path(self.task)
        } else {
            task_path(self.task)
        };
        runtime().run(&component(&path), request).await
    }
}

struct Value(ConfigValue);

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value(ConfigValue::Text(v.into()))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value(ConfigValue::Integer(v))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value(ConfigValue::Boolean(v))
    }
}

fn metric(r: &RunResult, name: &str) -> f64 {
    r.metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no metric {name} in {r:#?}"))
        .value
}

fn ok(r: &RunResult) {
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn day_name(table: &str, d: NaiveDate) -> String {
    format!("{table}_{}", d.format("%Y_%m_%d"))
}

async fn partitions(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = $1::regclass ORDER BY 1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn create_day(pool: &PgPool, table: &str, d: NaiveDate) {
    sqlx::raw_sql(&format!(
        "CREATE TABLE {} PARTITION OF {table} FOR VALUES FROM ('{d} 00:00:00+00') TO ('{} 00:00:00+00')",
        day_name(table, d),
        d + Days::days(1)
    ))
    .execute(pool)
    .await
    .unwrap();
}

fn events(pool: &PgPool) -> Run<'static> {
    Run::new("partition-maintenance", pool)
        .config("table", "events")
        .config("interval", "daily")
        .config("premake", 30)
        .config("retention", "90 days")
        .grant("events", &[Select, CreatePartition, DropPartition])
        .grant("events_default", &[Select])
}

#[sqlx::test]
async fn partition_maintenance_keeps_events_ready_and_within_retention(pool: PgPool) {
    schema(&pool).await;
    let old = today() - Days::days(100);
    let recent = today() - Days::days(89);
    create_day(&pool, "events", old).await;
    create_day(&pool, "events", recent).await;

    let r = events(&pool).go().await;
    ok(&r);
    assert_eq!(metric(&r, "partitions_created"), 31.0);
    assert_eq!(metric(&r, "partitions_dropped"), 1.0);
    assert_eq!(metric(&r, "default_partition_rows"), 0.0);
    let names = partitions(&pool, "events").await;
    for d in 0..=30 {
        assert!(
            names.contains(&day_name("events", today() + Days::days(d))),
            "day +{d} missing: {names:?}"
        );
    }
    assert!(!names.contains(&day_name("events", today() + Days::days(31))));
    assert!(!names.contains(&day_name("events", old)), "{names:?}");
    assert!(names.contains(&day_name("events", recent)), "{names:?}");
    // Inserts for today now land in today's partition.
    sqlx::query("INSERT INTO events (event_type) VALUES ('x')")
        .execute(&pool)
        .await
        .unwrap();
    let landed: String = sqlx::query_scalar("SELECT tableoid::regclass::text FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(landed, day_name("events", today()));

    // A second run changes nothing.
    let before = catalog(&pool).await;
    let r = events(&pool).go().await;
    ok(&r);
    assert_eq!(metric(&r, "partitions_created"), 0.0);
    assert_eq!(metric(&r, "partitions_dropped"), 0.0);
    assert_eq!(catalog(&pool).await, before);

    // A missing partition in the middle is filled.
    let middle = day_name("events", today() + Days::days(10));
    sqlx::raw_sql(&format!("DROP TABLE {middle}"))
        .execute(&pool)
        .await
        .unwrap();
    let r = events(&pool).go().await;
    ok(&r);
    assert_eq!(metric(&r, "partitions_created"), 1.0);
    assert!(partitions(&pool, "events").await.contains(&middle));
}

#[sqlx::test]
async fn rows_in_the_default_partition_raise_the_warning(pool: PgPool) {
    schema(&pool).await;
    let far = today() + Days::days(60);
    sqlx::query("INSERT INTO events (event_type, \"timestamp\") VALUES ('early', $1)")
        .bind(far.and_hms_opt(12, 0, 0).unwrap().and_utc())
        .execute(&pool)
        .await
        .unwrap();
    let r = events(&pool).go().await;
    ok(&r);
    assert_eq!(metric(&r, "default_partition_rows"), 1.0);
    assert!(
        r.output
            .contains("[warn] the default partition events_default holds 1 rows"),
        "{}",
        r.output
    );

    // A row in the default partition for a day that should get its own
    // partition blocks that one (reported, not silent); the rest are made.
    let r = events(&pool).config("premake", 70).go().await;
    assert_eq!(r.status, RunStatus::Error, "{r:#?}");
    let error = r.error.unwrap();
    assert!(error.contains(&day_name("events", far)), "{error}");
    assert!(error.contains("default partition"), "{error}");
    let names = partitions(&pool, "events").await;
    assert!(names.contains(&day_name("events", today() + Days::days(70))));
    assert!(!names.contains(&day_name("events", far)));
}

#[sqlx::test]
async fn partition_maintenance_handles_hourly_and_monthly_and_detach(pool: PgPool) {
    schema(&pool).await;
    let r = Run::new("partition-maintenance", &pool)
        .config("table", "device_metrics")
        .config("interval", "monthly")
        .config("premake", 2)
        .grant("device_metrics", &[Select, CreatePartition, DropPartition])
        .go()
        .await;
    ok(&r);
    assert_eq!(metric(&r, "partitions_created"), 3.0);
    let month = today().format("device_metrics_%Y_%m").to_string();
    assert!(partitions(&pool, "device_metrics").await.contains(&month));

    let old = today() - Days::days(30);
    create_day(&pool, "device_logs", old).await;
    let r = Run::new("partition-maintenance", &pool)
        .config("table", "device_logs")
        .config("interval", "hourly")
        .config("premake", 5)
        .config("retention", "7 days")
        .config("retention_mode", "detach")
        .grant("device_logs", &[Select, CreatePartition, DropPartition])
        .go()
        .await;
    ok(&r);
    assert_eq!(metric(&r, "partitions_created"), 6.0);
    // Daily names do not match the hourly scheme, so that one is left alone.
    assert_eq!(metric(&r, "partitions_detached"), 0.0);
    let hour = Utc::now().format("device_logs_%Y_%m_%d_%H").to_string();
    assert!(partitions(&pool, "device_logs").await.contains(&hour));

    // Bad config is named.
    let r = Run::new("partition-maintenance", &pool)
        .config("table", "events; DROP TABLE devices")
        .grant("events", &[Select])
        .go()
        .await;
    assert!(r.error.unwrap().contains("`table`"));
    let r = events(&pool).config("interval", "weekly").go().await;
    assert!(r.error.unwrap().contains("`interval`"));
    let r = Run::new("partition-maintenance", &pool)
        .config("table", "devices")
        .grant("devices", &[Select])
        .go()
        .await;
    assert!(r.error.unwrap().contains("not a partitioned table"));
}

/// Everything in the public schema that a task could change: relations,
/// their kinds and partition bounds, and every table's rows.
async fn catalog(pool: &PgPool) -> String {
    sqlx::query_scalar(
        "SELECT string_agg(c.relname || ':' || c.relkind::text || ':' || coalesce(pg_get_expr(c.relpartbound, c.oid), ''), ',' ORDER BY c.relname)
         FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn fingerprint(pool: &PgPool) -> String {
    let mut all = catalog(pool).await;
    for table in [
        "events",
        "devices",
        "device_api_key_history",
        "audit_logs",
        "access_tokens",
        "oauth_sessions",
        "device_modules",
        "sensor_readings",
    ] {
        let rows: String = sqlx::query_scalar(&format!(
            "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        all.push_str(&format!("\n{table}={rows}"));
    }
    all
}

async fn seed(pool: &PgPool) {
    sqlx::raw_sql(
        "INSERT INTO devices (device_name, device_api_key_hash, api_key_expires_at, api_key_rotation_enabled, is_active) VALUES
             ('due',      'old-hash-1', now() + interval '3 days',  true,  true),
             ('later',    'old-hash-2', now() + interval '30 days', true,  true),
             ('disabled', 'old-hash-3', now() + interval '1 day',   false, true),
             ('inactive', 'old-hash-4', now() + interval '1 day',   true,  false);
         INSERT INTO device_api_key_history (device_uuid, key_hash, issued_at, expires_at, is_active)
             SELECT uuid, 'older-hash', now() - interval '100 days', now() - interval '1 day', true
             FROM devices WHERE device_name = 'later';
         INSERT INTO access_tokens (user_id, token_hash, expires_at, revoked_at) VALUES
             (1, 'a', now() - interval '3 days', NULL),
             (1, 'b', now() - interval '1 hour', NULL),
             (2, 'c', now() + interval '1 day', now() - interval '2 days'),
             (2, 'd', now() + interval '1 day', NULL);
         INSERT INTO oauth_sessions (state, completed_at, created_at) VALUES
             ('abandoned', NULL, now() - interval '2 days'),
             ('fresh', NULL, now() - interval '1 hour'),
             ('done', now() - interval '2 days', now() - interval '2 days');
         INSERT INTO device_modules (device_uuid, module_name, version, reported_at)
             SELECT d.uuid, m, v, now() - (v || ' hours')::interval
             FROM devices d, unnest(ARRAY['agent', 'sensor']) m, unnest(ARRAY['1', '2', '3']) v;
         INSERT INTO device_modules (device_uuid, module_name, version)
             VALUES (gen_random_uuid(), 'agent', 'orphan');
         INSERT INTO sensor_readings (device_uuid, value, created_at)
             SELECT gen_random_uuid(), g, now() - (g || ' days')::interval FROM generate_series(1, 200) g;",
    )
    .execute(pool)
    .await
    .unwrap();
}

fn tokens(pool: &PgPool) -> Run<'static> {
    Run::new("cleanup-expired-tokens", pool)
        .grant("access_tokens", &[Delete])
        .grant("oauth_sessions", &[Delete])
}

fn rotation(pool: &PgPool) -> Run<'static> {
    Run::new("api-key-rotation", pool)
        .config("bcrypt_cost", 4)
        .grant("devices", &[Select, Update])
        .grant("device_api_key_history", &[Select, Insert, Update])
        .grant("audit_logs", &[Insert])
}

fn dedupe(pool: &PgPool) -> Run<'static> {
    Run::new("dedupe-orphans", pool)
        .config("table", "device_modules")
        .config("key", "device_uuid, module_name")
        .config("newest_by", "reported_at")
        .config("parent_table", "devices")
        .config("parent_column", "uuid")
        .config("column", "device_uuid")
        .grant("device_modules", &[Delete])
        .grant("devices", &[Select])
}

fn retention(pool: &PgPool) -> Run<'static> {
    Run::new("row-retention", pool)
        .config("table", "sensor_readings")
        .config("older_than", "90 days")
        .config("batch_size", 25)
        .grant("sensor_readings", &[Delete])
}

#[sqlx::test]
async fn dry_runs_leave_the_database_unchanged(pool: PgPool) {
    schema(&pool).await;
    seed(&pool).await;
    create_day(&pool, "events", today() - Days::days(100)).await;
    let before = fingerprint(&pool).await;
    let runs = [
        events(&pool).dry_run(),
        retention(&pool).dry_run(),
        tokens(&pool).dry_run(),
        rotation(&pool).dry_run(),
        dedupe(&pool).dry_run(),
        Run::new("database-vacuum", &pool)
            .config("tables", "sensor_readings")
            .grant("sensor_readings", &[Vacuum, Analyze])
            .dry_run(),
    ];
    let mut reports = Vec::new();
    for run in runs {
        let r = run.go().await;
        ok(&r);
        assert!(r.output.contains("dry-run"), "{}", r.output);
        reports.push(r.summary.unwrap());
    }
    assert_eq!(fingerprint(&pool).await, before);
    assert_eq!(
        reports,
        [
            "events: would create 31, would drop 1",
            "\"sensor_readings\": would delete 111 rows older than 90 days",
            "would delete 2 expired tokens and 1 abandoned OAuth sessions",
            "would rotate 1 device keys, would revoke 1 old keys",
            "\"device_modules\": would delete 16 duplicates and 1 orphans",
            "would vacuum 1 of 1 tables",
        ]
    );
}

#[sqlx::test]
async fn row_retention_deletes_in_batches(pool: PgPool) {
    schema(&pool).await;
    seed(&pool).await;
    // By LIMIT batches: rows 150 to 200 days old, 25 at a time.
    let r = retention(&pool)
        .config("strategy", "limit")
        .config("older_than", "150 days")
        .go()
        .await;
    ok(&r);
    assert_eq!(metric(&r, "rows_deleted"), 51.0);
    assert_eq!(metric(&r, "batches"), 3.0);
    // The batches committed without waiting for the disk; the run ended
    // once they were on it.
    assert!(
        r.output.contains("asynchronous commits are on disk"),
        "{r:#?}"
    );
    // By block ranges: the rest from 90 days (the 90-day one aged past the
    // cutoff since it was written).
    let r = retention(&pool).go().await;
    ok(&r);
    assert_eq!(metric(&r, "rows_deleted"), 60.0);
    assert!(metric(&r, "batches") >= 2.0, "{r:#?}");
    assert!(
        r.output.contains("asynchronous commits are on disk"),
        "{r:#?}"
    );
    let (left, oldest): (i64, i64) = sqlx::query_as(
        "SELECT count(*), max(extract(day FROM now() - created_at))::bigint FROM sensor_readings",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((left, oldest), (89, 89));
    let r = Run::new("row-retention", &pool)
        .config("table", "sensor_readings")
        .grant("sensor_readings", &[Delete])
        .go()
        .await;
    assert!(r.error.unwrap().contains("`older_than` is required"));
}

#[sqlx::test(migrations = false)]
async fn row_retention_on_sqlite(pool: SqlitePool) {
    sqlx::raw_sql(
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, value REAL, created_at TEXT NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
         INSERT INTO readings (value, created_at)
             SELECT i, strftime('%Y-%m-%d %H:%M:%S', 'now', '-' || i || ' days') FROM n;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut run = Run::new(
        "row-retention",
        &PgPool::connect_lazy("postgres://unused/x").unwrap(),
    )
    .config("table", "readings")
    .config("older_than", "90 days")
    .config("batch_size", 30)
    .grant("readings", &[Delete]);
    run.connection = Connection::sqlite(pool.clone());
    let r = run.go().await;
    ok(&r);
    assert_eq!(metric(&r, "rows_deleted"), 111.0);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM readings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 89);
}

#[sqlx::test]
async fn expired_tokens_and_abandoned_sessions_go(pool: PgPool) {
    schema(&pool).await;
    seed(&pool).await;
    let r = tokens(&pool).go().await;
    ok(&r);
    assert_eq!(metric(&r, "tokens_deleted"), 2.0);
    assert_eq!(metric(&r, "sessions_deleted"), 1.0);
    let left: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM access_tokens ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    // `b` expired an hour ago: within the default grace of a day.
    assert_eq!(left, ["b", "d"]);
    let left: Vec<String> = sqlx::query_scalar("SELECT state FROM oauth_sessions ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, ["done", "fresh"]);
}

/// The task writes `$1` and `$2` as on PostgreSQL; on SQLite the SDK sends
/// them numbered as written, `$1` used twice, the batch size bound last.
#[sqlx::test(migrations = false)]
async fn expired_tokens_on_sqlite(pool: SqlitePool) {
    sqlx::raw_sql(
        "CREATE TABLE access_tokens (token_hash TEXT PRIMARY KEY, expires_at TEXT NOT NULL, revoked_at TEXT);
         CREATE TABLE oauth_sessions (state TEXT PRIMARY KEY, created_at TEXT NOT NULL, completed_at TEXT);
         INSERT INTO access_tokens VALUES
             ('old1', datetime('now', '-3 days'), NULL),
             ('old2', datetime('now', '-4 days'), NULL),
             ('old3', datetime('now', '-5 days'), NULL),
             ('revoked', datetime('now', '+3 days'), datetime('now', '-3 days')),
             ('live', datetime('now', '+3 days'), NULL);
         INSERT INTO oauth_sessions VALUES
             ('abandoned', datetime('now', '-3 days'), NULL),
             ('done', datetime('now', '-3 days'), datetime('now', '-3 days')),
             ('fresh', datetime('now', '+1 hours'), NULL);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut run =
        tokens(&PgPool::connect_lazy("postgres://unused/x").unwrap()).config("batch_size", 2);
    run.connection = Connection::sqlite(pool.clone());
    let r = run.go().await;
    ok(&r);
    assert_eq!(metric(&r, "tokens_deleted"), 4.0);
    assert_eq!(metric(&r, "sessions_deleted"), 1.0);
    let left: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM access_tokens ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, ["live"]);
    let left: Vec<String> = sqlx::query_scalar("SELECT state FROM oauth_sessions ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, ["done", "fresh"]);
}

#[sqlx::test]
async fn api_keys_rotate_archive_audit_and_revoke(pool: PgPool) {
    schema(&pool).await;
    seed(&pool).await;
    let r = rotation(&pool).go().await;
    ok(&r);
    assert_eq!(metric(&r, "keys_rotated"), 1.0);
    assert_eq!(metric(&r, "keys_revoked"), 1.0);

    let devices: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT device_name, device_api_key_hash, extract(day FROM api_key_expires_at - now())::bigint
         FROM devices ORDER BY device_name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let due = devices.iter().find(|d| d.0 == "due").unwrap();
    assert!(due.1.starts_with("$2b$04$") && due.1.len() == 60, "{due:?}");
    assert_eq!(due.2, 89);
    for (name, hash) in [
        ("later", "old-hash-2"),
        ("disabled", "old-hash-3"),
        ("inactive", "old-hash-4"),
    ] {
        assert_eq!(devices.iter().find(|d| d.0 == name).unwrap().1, hash);
    }

    let history: Vec<(String, bool, Option<String>, i64)> = sqlx::query_as(
        "SELECT key_hash, is_active, revoked_reason, coalesce(extract(day FROM expires_at - now())::bigint, 0)
         FROM device_api_key_history ORDER BY key_hash",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        history,
        [
            ("old-hash-1".to_owned(), true, None, 6),
            (
                "older-hash".to_owned(),
                false,
                Some("grace period expired".to_owned()),
                -1
            ),
        ]
    );
    let audit: Vec<String> = sqlx::query_scalar("SELECT event_type FROM audit_logs ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(audit, ["api_key_revoked", "api_key_rotated"]);

    // Nothing is due on the next run.
    let r = rotation(&pool).go().await;
    ok(&r);
    assert_eq!(metric(&r, "keys_rotated"), 0.0);
    assert_eq!(metric(&r, "keys_revoked"), 0.0);

    // Without the audit grant, nothing of a device's rotation is written.
    sqlx::query("UPDATE devices SET api_key_expires_at = now() + interval '1 day' WHERE device_name = 'later'")
        .execute(&pool)
        .await
        .unwrap();
    let r = Run::new("api-key-rotation", &pool)
        .config("bcrypt_cost", 4)
        .grant("devices", &[Select, Update])
        .grant("device_api_key_history", &[Select, Insert, Update])
        .go()
        .await;
    assert_eq!(r.status, RunStatus::Error, "{r:#?}");
    let hash: String =
        sqlx::query_scalar("SELECT device_api_key_hash FROM devices WHERE device_name = 'later'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(hash, "old-hash-2");
}

#[sqlx::test]
async fn duplicates_and_orphans_are_removed(pool: PgPool) {
    schema(&pool).await;
    seed(&pool).await;
    let r = dedupe(&pool).go().await;
    ok(&r);
    assert_eq!(metric(&r, "duplicates_deleted"), 16.0);
    assert_eq!(metric(&r, "orphans_deleted"), 1.0);
    let left: Vec<(String, String)> =
        sqlx::query_as("SELECT DISTINCT module_name, version FROM device_modules ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    // The newest report (1 hour old) survives per device and module.
    assert_eq!(
        left,
        [("agent".into(), "1".into()), ("sensor".into(), "1".into())]
    );
}

#[sqlx::test]
async fn vacuum_runs_on_granted_tables_only(pool: PgPool) {
    schema(&pool).await;
    seed(&pool).await;
    let r = Run::new("database-vacuum", &pool)
        .config("tables", "sensor_readings, devices")
        .grant("sensor_readings", &[Vacuum, Analyze])
        .go()
        .await;
    assert_eq!(r.status, RunStatus::Error, "{r:#?}");
    assert!(
        r.error
            .unwrap()
            .contains("`devices` is not granted `vacuum`")
    );
    let mut vacuumed = false;
    for _ in 0..50 {
        vacuumed = sqlx::query_scalar(
            "SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'sensor_readings'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if vacuumed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(vacuumed);
}

#[sqlx::test]
async fn bad_config_is_named_before_anything_runs(pool: PgPool) {
    schema(&pool).await;
    seed(&pool).await;
    let before = fingerprint(&pool).await;
    let cases = [
        (retention(&pool).config("strategy", "fast"), "`strategy`"),
        (
            retention(&pool).config("older_than", "soon"),
            "`older_than`",
        ),
        (rotation(&pool).config("bcrypt_cost", 99), "`bcrypt_cost`"),
        (rotation(&pool).config("grace", "a week"), "`grace`"),
        (tokens(&pool).config("grace", "soon"), "`grace`"),
        (
            tokens(&pool).config("tokens_table", "x y"),
            "`tokens_table`",
        ),
        (
            Run::new("dedupe-orphans", &pool).grant("device_modules", &[Delete]),
            "`table` is required",
        ),
        (
            Run::new("dedupe-orphans", &pool)
                .config("table", "device_modules")
                .config("parent_table", "devices")
                .grant("device_modules", &[Delete]),
            "`column`",
        ),
        (
            Run::new("database-vacuum", &pool).config("tables", "a;b"),
            "`tables`",
        ),
        (
            events(&pool).config("retention_mode", "shred"),
            "`retention_mode`",
        ),
        (
            events(&pool).config("retention", "90 fortnights"),
            "`retention`",
        ),
    ];
    for (run, needle) in cases {
        let r = run.go().await;
        assert_eq!(r.status, RunStatus::Error, "{r:#?}");
        let error = r.error.unwrap();
        assert!(error.starts_with("invalid config: "), "{error}");
        assert!(error.contains(needle), "{needle}: {error}");
    }
    assert_eq!(fingerprint(&pool).await, before);
}

/// The hostile fixture making one structured call (`mode` `sql-partition`
/// or `sql-maintenance`) with names and values from config.
fn structured(pool: &PgPool, mode: &'static str, op: &'static str) -> Run<'static> {
    let mut run = Run::new("hostile", pool)
        .config("mode", mode)
        .config("op", op);
    run.fixture = true;
    run
}

fn partition_call(pool: &PgPool, op: &'static str, parent: &'static str) -> Run<'static> {
    structured(pool, "sql-partition", op).config("parent", parent)
}

/// The run ended with `needle` in its error.
fn stopped(r: &RunResult, needle: &str) {
    assert_eq!(r.status, RunStatus::Error, "{r:#?}");
    let error = r.error.as_deref().unwrap_or_default();
    assert!(error.contains(needle), "expected {needle:?} in {error:?}");
}

/// The relation's kind and whether it is a partition, by exact name in
/// `public`; `None` when there is none.
async fn relation(pool: &PgPool, name: &str) -> Option<(String, bool)> {
    sqlx::query_as(
        "SELECT relkind::text, relispartition FROM pg_class
         WHERE relnamespace = 'public'::regnamespace AND relname = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .unwrap()
}

async fn bound(pool: &PgPool, name: &str) -> String {
    sqlx::query_scalar(
        "SELECT pg_get_expr(relpartbound, oid) FROM pg_class
         WHERE relnamespace = 'public'::regnamespace AND relname = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sql).execute(pool).await.unwrap();
}

#[sqlx::test]
async fn partitions_are_created_detached_and_dropped_with_the_grant_only(pool: PgPool) {
    schema(&pool).await;
    let create = |name: &'static str, from: &'static str, to: &'static str| {
        partition_call(&pool, "create", "events")
            .config("partition", name)
            .config("bounds", "range")
            .config("from", from)
            .config("to", to)
    };
    let r = create(
        "events_2020_01_01",
        "2020-01-01 00:00+00",
        "2020-01-02 00:00+00",
    )
    .grant("events", &[CreatePartition])
    .go()
    .await;
    ok(&r);
    assert_eq!(
        bound(&pool, "events_2020_01_01").await,
        "FOR VALUES FROM ('2020-01-01 00:00:00+00') TO ('2020-01-02 00:00:00+00')"
    );
    assert!(
        r.output.contains(
            "sql: CREATE TABLE public.events_2020_01_01 PARTITION OF public.events FOR VALUES FROM ('2020-01-01 00:00+00') TO ('2020-01-02 00:00+00')"
        ),
        "{}",
        r.output
    );

    // Without `create_partition` on the parent nothing is made.
    let r = create("events_2020_01_02", "2020-01-02", "2020-01-03")
        .grant("events", &[Select, DropPartition])
        .grant("events_2020_01_02", &[Ddl, CreatePartition])
        .go()
        .await;
    stopped(
        &r,
        "access denied: `events` is not granted `create_partition`",
    );
    assert!(r.output.contains("access denied"), "{}", r.output);
    assert_eq!(relation(&pool, "events_2020_01_02").await, None);

    // Detach and drop need `drop_partition` on the parent.
    exec(
        &pool,
        "CREATE TABLE events_2020_01_03 PARTITION OF events FOR VALUES FROM ('2020-01-03') TO ('2020-01-04')",
    )
    .await;
    for (op, partition) in [
        ("detach", "events_2020_01_01"),
        ("drop", "events_2020_01_03"),
    ] {
        let r = partition_call(&pool, op, "events")
            .config("partition", partition)
            .grant("events", &[Select, CreatePartition])
            .grant(partition, &[Ddl, DropPartition])
            .go()
            .await;
        stopped(
            &r,
            "access denied: `events` is not granted `drop_partition`",
        );
        assert_eq!(relation(&pool, partition).await, Some(("r".into(), true)));
    }
    let r = partition_call(&pool, "detach", "events")
        .config("partition", "events_2020_01_01")
        .grant("events", &[DropPartition])
        .go()
        .await;
    ok(&r);
    assert_eq!(
        relation(&pool, "events_2020_01_01").await,
        Some(("r".into(), false))
    );
    let r = partition_call(&pool, "drop", "public.events")
        .config("partition", "events_2020_01_03")
        .grant("events", &[DropPartition])
        .go()
        .await;
    // A dot is part of the name: `"public.events"` is no granted table.
    stopped(
        &r,
        "access denied: `public.events` is not granted `drop_partition`",
    );
    let r = partition_call(&pool, "drop", "events")
        .config("parent_schema", "public")
        .config("partition", "events_2020_01_03")
        .grant("events", &[DropPartition])
        .go()
        .await;
    ok(&r);
    assert_eq!(relation(&pool, "events_2020_01_03").await, None);
    assert!(
        r.output
            .contains("sql: DROP TABLE public.events_2020_01_03"),
        "{}",
        r.output
    );
}

#[sqlx::test]
async fn only_a_partition_of_exactly_the_granted_parent_is_dropped_or_detached(pool: PgPool) {
    schema(&pool).await;
    exec(
        &pool,
        "CREATE TABLE plain_parent (a int);
         CREATE TABLE plain_child () INHERITS (plain_parent);
         CREATE TABLE device_logs_2020_01_01 PARTITION OF device_logs
             FOR VALUES FROM ('2020-01-01') TO ('2020-01-02');
         CREATE TABLE events_sub PARTITION OF events
             FOR VALUES FROM ('2020-01-01') TO ('2020-02-01') PARTITION BY RANGE (\"timestamp\");
         CREATE TABLE events_sub_1 PARTITION OF events_sub
             FOR VALUES FROM ('2020-01-01') TO ('2020-01-02');
         CREATE SCHEMA other;
         CREATE TABLE other.events_default (a int);",
    )
    .await;
    let grants = |run: Run<'static>| {
        run.grant("events", &[DropPartition])
            .grant("plain_parent", &[DropPartition])
    };
    let cases: [(&str, &str, Option<&str>, &str); 9] = [
        // A plain inheritance child: its parent is no partitioned table.
        (
            "plain_parent",
            "plain_child",
            None,
            "`public.plain_parent` is not a partitioned table",
        ),
        (
            "events",
            "devices",
            None,
            "access denied: `public.devices` is not granted `drop_partition`",
        ),
        (
            "events",
            "events",
            None,
            "access denied: `public.events` is not granted `drop_partition`",
        ),
        // Another parent's partition, and a partition's own partition.
        (
            "events",
            "device_logs_2020_01_01",
            None,
            "access denied: `public.device_logs_2020_01_01`",
        ),
        (
            "events",
            "events_sub_1",
            None,
            "access denied: `public.events_sub_1`",
        ),
        (
            "device_logs",
            "device_logs_2020_01_01",
            None,
            "access denied: `device_logs` is not granted",
        ),
        (
            "events",
            "no_such_table",
            None,
            "`public.no_such_table` does not exist",
        ),
        // The name in another schema is another table.
        (
            "events",
            "events_default",
            Some("other"),
            "access denied: `other.events_default`",
        ),
        (
            "events",
            "pg_class",
            Some("pg_catalog"),
            "access denied: `pg_catalog.pg_class`",
        ),
    ];
    let before = catalog(&pool).await;
    for op in ["drop", "detach"] {
        for (parent, partition, schema, needle) in cases {
            let mut run = grants(partition_call(&pool, op, parent)).config("partition", partition);
            if let Some(schema) = schema {
                run = run.config("partition_schema", schema);
            }
            let r = run.go().await;
            stopped(&r, needle);
            assert!(r.output.contains("sql "), "{}", r.output);
        }
    }
    assert_eq!(catalog(&pool).await, before);
    assert!(
        sqlx::query_scalar::<_, bool>("SELECT to_regclass('other.events_default') IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap()
    );
    // The sub-partition goes with its own parent's grant.
    let r = partition_call(&pool, "drop", "events_sub")
        .config("partition", "events_sub_1")
        .grant("events_sub", &[DropPartition])
        .go()
        .await;
    ok(&r);
    assert_eq!(relation(&pool, "events_sub_1").await, None);
}

#[sqlx::test]
async fn hostile_names_are_created_as_they_are_or_refused(pool: PgPool) {
    schema(&pool).await;
    let long = "p".repeat(63);
    let names = [
        "a\"b",
        "a.b",
        "x;y",
        "\"; DROP TABLE devices; --",
        "'); DROP TABLE devices; --",
        "ünïcödé 分区",
        "Events_Mixed",
        "$1",
        long.as_str(),
    ];
    for (i, name) in names.iter().enumerate() {
        let name: &'static str = Box::leak(name.to_string().into_boxed_str());
        let from: &'static str = Box::leak(format!("2020-01-{:02}", i + 1).into_boxed_str());
        let to: &'static str = Box::leak(format!("2020-01-{:02}", i + 2).into_boxed_str());
        let r = partition_call(&pool, "create", "events")
            .config("partition", name)
            .config("bounds", "range")
            .config("from", from)
            .config("to", to)
            .grant("events", &[CreatePartition, DropPartition])
            .go()
            .await;
        ok(&r);
        assert_eq!(
            relation(&pool, name).await,
            Some(("r".into(), true)),
            "{name:?}"
        );
        let r = partition_call(&pool, "drop", "events")
            .config("partition", name)
            .grant("events", &[DropPartition])
            .go()
            .await;
        ok(&r);
        assert_eq!(relation(&pool, name).await, None, "{name:?}");
    }
    assert!(relation(&pool, "devices").await.is_some());

    let before = catalog(&pool).await;
    let too_long = "p".repeat(64);
    let two_byte = "é".repeat(32);
    for (partition, schema, needle) in [
        (
            too_long.as_str(),
            None,
            "is 64 bytes long; PostgreSQL keeps at most 63",
        ),
        (two_byte.as_str(), None, "is 64 bytes long"),
        ("a\0b", None, "contains NUL"),
        ("", None, "the partition's name is empty"),
        ("x", Some(""), "the partition's schema is empty"),
        ("x", Some("public\0"), "contains NUL"),
    ] {
        let partition: &'static str = Box::leak(partition.to_string().into_boxed_str());
        let mut run = partition_call(&pool, "create", "events")
            .config("partition", partition)
            .config("bounds", "default")
            .grant("events", &[CreatePartition]);
        if let Some(schema) = schema {
            run = run.config("partition_schema", schema);
        }
        stopped(&run.go().await, needle);
    }
    // A hostile parent or schema names nothing that exists.
    let r = partition_call(&pool, "create", "events\"; DROP TABLE devices; --")
        .config("partition", "x")
        .config("bounds", "default")
        .grant("*", &[CreatePartition])
        .go()
        .await;
    stopped(&r, "does not exist on the search path");
    let r = partition_call(&pool, "create", "events")
        .config("partition", "x")
        .config("partition_schema", "public\"; DROP TABLE devices; --")
        .config("bounds", "range")
        .config("from", "2021-01-01")
        .config("to", "2021-01-02")
        .grant("events", &[CreatePartition])
        .go()
        .await;
    // Another schema than the parent's is refused before anything is built.
    stopped(
        &r,
        "in its parent's schema `public`, not `public\"; DROP TABLE devices; --`",
    );
    assert_eq!(catalog(&pool).await, before);
}

#[sqlx::test]
async fn hostile_bound_values_are_literals(pool: PgPool) {
    schema(&pool).await;
    exec(
        &pool,
        "CREATE TABLE tags (t text) PARTITION BY LIST (t);
         CREATE TABLE nums (n int) PARTITION BY RANGE (n);
         CREATE TABLE buckets (id int) PARTITION BY HASH (id);",
    )
    .await;
    let hostile = "it's\n'); DROP TABLE devices; --\na\\b\\'c\nünï\n$1";
    let r = partition_call(&pool, "create", "tags")
        .config("partition", "tags_1")
        .config("bounds", "in")
        .config("values", hostile)
        .grant("tags", &[CreatePartition])
        .go()
        .await;
    ok(&r);
    for value in hostile.lines() {
        let landed: String =
            sqlx::query_scalar("INSERT INTO tags VALUES ($1) RETURNING tableoid::regclass::text")
                .bind(value)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(landed, "tags_1", "{value:?}");
    }
    let r = partition_call(&pool, "create", "tags")
        .config("partition", "tags_2")
        .config("bounds", "in")
        .config("values", "a\0b")
        .grant("tags", &[CreatePartition])
        .go()
        .await;
    stopped(&r, "contains NUL");

    // Integers, MINVALUE and MAXVALUE.
    let nums = |name: &'static str| {
        partition_call(&pool, "create", "nums")
            .config("partition", name)
            .config("bounds", "range")
            .grant("nums", &[CreatePartition])
    };
    ok(&nums("nums_low")
        .config("from_min", true)
        .config("to", -5)
        .go()
        .await);
    ok(&nums("nums_mid")
        .config("from", -5)
        .config("to", 10)
        .go()
        .await);
    ok(&nums("nums_high")
        .config("from", 10)
        .config("to_max", true)
        .go()
        .await);
    assert_eq!(
        bound(&pool, "nums_low").await,
        "FOR VALUES FROM (MINVALUE) TO ('-5')"
    );
    assert_eq!(
        bound(&pool, "nums_mid").await,
        "FOR VALUES FROM ('-5') TO (10)"
    );
    assert_eq!(
        bound(&pool, "nums_high").await,
        "FOR VALUES FROM (10) TO (MAXVALUE)"
    );
    // Text that is not a value of the key's type is the database's error.
    let r = nums("nums_bad")
        .config("from", "1) TO (2); DROP TABLE devices; --")
        .config("to", "3")
        .go()
        .await;
    stopped(&r, "22P02");
    let r = partition_call(&pool, "create", "events")
        .config("partition", "events_bad")
        .config("bounds", "range")
        .config("from", "2020-01-01'); DROP TABLE devices; --")
        .config("to", "2020-01-02")
        .grant("events", &[CreatePartition])
        .go()
        .await;
    stopped(&r, "22007");
    assert_eq!(relation(&pool, "nums_bad").await, None);
    assert!(relation(&pool, "devices").await.is_some());

    let r = partition_call(&pool, "create", "buckets")
        .config("partition", "buckets_0")
        .config("bounds", "hash")
        .config("modulus", 2)
        .config("remainder", 0)
        .grant("buckets", &[CreatePartition])
        .go()
        .await;
    ok(&r);
    assert_eq!(
        bound(&pool, "buckets_0").await,
        "FOR VALUES WITH (modulus 2, remainder 0)"
    );
}

#[sqlx::test]
async fn structured_dry_runs_change_nothing(pool: PgPool) {
    schema(&pool).await;
    exec(
        &pool,
        "CREATE TABLE nums (n int) PARTITION BY RANGE (n);
         CREATE TABLE nums_1 PARTITION OF nums FOR VALUES FROM (1) TO (2);
         CREATE TABLE nums_2 PARTITION OF nums FOR VALUES FROM (2) TO (3);",
    )
    .await;
    let before = fingerprint(&pool).await;
    let all = [Select, CreatePartition, DropPartition, Vacuum, Analyze];
    let calls = [
        (
            partition_call(&pool, "create", "nums")
                .config("partition", "nums_3")
                .config("bounds", "range")
                .config("from", 3)
                .config("to", 4),
            "sql (dry-run, rolled back): CREATE TABLE public.nums_3 PARTITION OF public.nums FOR VALUES FROM ('3') TO ('4')",
        ),
        (
            partition_call(&pool, "drop", "nums").config("partition", "nums_1"),
            "sql (dry-run, rolled back): DROP TABLE public.nums_1",
        ),
        (
            partition_call(&pool, "detach", "nums").config("partition", "nums_1"),
            "sql (dry-run, rolled back): ALTER TABLE public.nums DETACH PARTITION public.nums_1",
        ),
        (
            partition_call(&pool, "detach-concurrently", "nums").config("partition", "nums_2"),
            "sql (dry-run, not run): ALTER TABLE public.nums DETACH PARTITION public.nums_2 CONCURRENTLY",
        ),
        (
            structured(&pool, "sql-maintenance", "vacuum")
                .config("table", "nums")
                .config("full", true)
                .config("analyze", true),
            "sql (dry-run, not run): VACUUM (FULL, ANALYZE) public.nums",
        ),
        (
            structured(&pool, "sql-maintenance", "analyze").config("table", "nums"),
            "sql (dry-run, not run): ANALYZE public.nums",
        ),
    ];
    for (run, line) in calls {
        let r = run.grant("nums", &all).dry_run().go().await;
        ok(&r);
        assert!(r.output.contains(line), "{line}\n{}", r.output);
    }
    // The checks still run: a dry-run is denied what a run would be.
    let r = partition_call(&pool, "drop", "nums")
        .config("partition", "devices")
        .grant("nums", &all)
        .dry_run()
        .go()
        .await;
    stopped(&r, "access denied: `public.devices`");
    assert_eq!(fingerprint(&pool).await, before);
    let vacuumed: bool = sqlx::query_scalar(
        "SELECT last_vacuum IS NOT NULL OR last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'nums_1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!vacuumed);
}

/// Waits for the statistics collector to show `column` set for `table`.
async fn stat_set(pool: &PgPool, table: &str, column: &str) -> bool {
    for _ in 0..50 {
        let set: bool = sqlx::query_scalar(&format!(
            "SELECT {column} IS NOT NULL FROM pg_stat_user_tables WHERE relname = $1"
        ))
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap();
        if set {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[sqlx::test]
async fn vacuum_and_analyze_need_their_grant(pool: PgPool) {
    schema(&pool).await;
    seed(&pool).await;
    exec(
        &pool,
        "CREATE VIEW readings_view AS SELECT * FROM sensor_readings",
    )
    .await;
    let maintenance = |op: &'static str| {
        structured(&pool, "sql-maintenance", op).config("table", "sensor_readings")
    };
    stopped(
        &maintenance("vacuum")
            .grant("sensor_readings", &[Analyze])
            .go()
            .await,
        "access denied: `sensor_readings` is not granted `vacuum`",
    );
    stopped(
        &maintenance("vacuum")
            .config("analyze", true)
            .grant("sensor_readings", &[Vacuum])
            .go()
            .await,
        "access denied: `sensor_readings` is not granted `analyze`",
    );
    stopped(
        &maintenance("analyze")
            .grant("sensor_readings", &[Vacuum])
            .go()
            .await,
        "access denied: `sensor_readings` is not granted `analyze`",
    );
    // The whole database needs the grant on `*`.
    stopped(
        &structured(&pool, "sql-maintenance", "vacuum")
            .grant("sensor_readings", &[Vacuum])
            .go()
            .await,
        "access denied: `*` is not granted `vacuum`",
    );
    stopped(
        &structured(&pool, "sql-maintenance", "vacuum")
            .config("table", "readings_view")
            .grant("readings_view", &[Vacuum])
            .go()
            .await,
        "`public.readings_view` is not a table",
    );
    assert!(!stat_set(&pool, "sensor_readings", "last_vacuum").await);

    let r = maintenance("analyze")
        .grant("sensor_readings", &[Analyze])
        .go()
        .await;
    ok(&r);
    assert!(
        r.output.contains("sql: ANALYZE public.sensor_readings"),
        "{}",
        r.output
    );
    assert!(stat_set(&pool, "sensor_readings", "last_analyze").await);
    let r = maintenance("vacuum")
        .grant("sensor_readings", &[Vacuum])
        .go()
        .await;
    ok(&r);
    assert!(stat_set(&pool, "sensor_readings", "last_vacuum").await);
    let r = structured(&pool, "sql-maintenance", "vacuum")
        .grant("*", &[Vacuum])
        .go()
        .await;
    ok(&r);
    assert!(
        r.output.contains("sql: VACUUM\n") || r.output.ends_with("sql: VACUUM"),
        "{}",
        r.output
    );
    assert!(stat_set(&pool, "devices", "last_vacuum").await);
}

/// PostgreSQL lets only a table's owner change its partitions or vacuum
/// it: the host runs the statement as the owner when its login role may
/// act as it, and otherwise names the `GRANT` that would let it.
#[sqlx::test]
async fn structured_calls_run_as_the_owner(pool: PgPool) {
    let suffix = std::process::id() as u128 * 1_000_000_000
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u128;
    let owner = format!("hk_owner_{suffix}");
    let login = format!("hk_login_{suffix}");
    exec(
        &pool,
        &format!(
            "CREATE ROLE {owner} NOLOGIN;
             CREATE ROLE {login} LOGIN;
             GRANT CREATE ON SCHEMA public TO {owner};
             CREATE TABLE nums (n int) PARTITION BY RANGE (n);
             CREATE TABLE nums_1 PARTITION OF nums FOR VALUES FROM (1) TO (2);
             CREATE TABLE nums_2 PARTITION OF nums FOR VALUES FROM (2) TO (3);
             ALTER TABLE nums OWNER TO {owner};
             ALTER TABLE nums_1 OWNER TO {owner};
             ALTER TABLE nums_2 OWNER TO {owner};"
        ),
    )
    .await;
    let options = (*pool.connect_options()).clone().username(&login);
    let as_login = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let call = |run: Run<'static>| {
        let mut run = run.grant("nums", &[CreatePartition, DropPartition, Vacuum, Analyze]);
        run.connection = Connection::postgres(as_login.clone());
        run
    };
    let create = || {
        call(partition_call(&pool, "create", "nums"))
            .config("partition", "nums_3")
            .config("bounds", "range")
            .config("from", 3)
            .config("to", 4)
    };

    let r = create().go().await;
    stopped(
        &r,
        &format!(
            "`public.nums` is owned by role `{owner}`, and PostgreSQL lets only its owner run CREATE TABLE … PARTITION OF; let the host act as the owner with `GRANT {owner} TO {login}`"
        ),
    );
    let r = call(structured(&pool, "sql-maintenance", "vacuum").config("table", "nums"))
        .go()
        .await;
    stopped(&r, &format!("GRANT {owner} TO {login}"));
    assert_eq!(relation(&pool, "nums_3").await, None);

    exec(&pool, &format!("GRANT {owner} TO {login}")).await;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&as_login)
        .await
        .unwrap();
    let r = create().go().await;
    ok(&r);
    assert!(
        r.output.contains(&format!("as role `{owner}`")),
        "{}",
        r.output
    );
    let made_by: String = sqlx::query_scalar(
        "SELECT relowner::regrole::text FROM pg_class WHERE oid = 'nums_3'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(made_by, owner);
    ok(
        &call(partition_call(&pool, "detach-concurrently", "nums").config("partition", "nums_2"))
            .go()
            .await,
    );
    assert_eq!(relation(&pool, "nums_2").await, Some(("r".into(), false)));
    ok(
        &call(partition_call(&pool, "drop", "nums").config("partition", "nums_1"))
            .go()
            .await,
    );
    assert_eq!(relation(&pool, "nums_1").await, None);
    ok(
        &call(structured(&pool, "sql-maintenance", "vacuum").config("table", "nums"))
            .go()
            .await,
    );
    assert!(stat_set(&pool, "nums_3", "last_vacuum").await);
    ok(
        &call(structured(&pool, "sql-maintenance", "analyze").config("table", "nums"))
            .go()
            .await,
    );

    // The session is the login role's again, with no time limits left.
    let (pid_after, user, timeout): (i32, String, String) = sqlx::query_as(
        "SELECT pg_backend_pid(), current_user::text, current_setting('statement_timeout')",
    )
    .fetch_one(&as_login)
    .await
    .unwrap();
    assert_eq!(
        (pid_after, user.as_str(), timeout.as_str()),
        (pid, login.as_str(), "0")
    );

    as_login.close().await;
    exec(
        &pool,
        &format!("DROP OWNED BY {owner}, {login}; DROP ROLE {login}; DROP ROLE {owner}"),
    )
    .await;
}

/// A grant on the parent names no other schema: a partition is created
/// beside its parent or not at all.
#[sqlx::test]
async fn a_partition_is_created_in_its_parents_schema_only(pool: PgPool) {
    schema(&pool).await;
    sqlx::raw_sql("CREATE SCHEMA app")
        .execute(&pool)
        .await
        .unwrap();
    let create = |schema: &'static str| {
        partition_call(&pool, "create", "events")
            .config("partition", "events_2031_01_01")
            .config("partition_schema", schema)
            .config("bounds", "range")
            .config("from", "2031-01-01 00:00+00")
            .config("to", "2031-01-02 00:00+00")
            .grant("events", &[CreatePartition])
    };
    let r = create("app").go().await;
    stopped(&r, "in its parent's schema `public`, not `app`");
    let elsewhere: bool =
        sqlx::query_scalar("SELECT to_regclass('app.events_2031_01_01') IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!elsewhere);
    ok(&create("public").go().await);
    assert_eq!(
        relation(&pool, "events_2031_01_01").await,
        Some(("r".into(), true))
    );
}

/// Several partitions in one call: each with the checks of one call, one
/// that fails rolled back alone, a result per partition in order; without
/// the grant nothing at all, and a dry run changes nothing.
#[sqlx::test]
async fn partitions_in_one_call_fail_one_by_one(pool: PgPool) {
    schema(&pool).await;
    let batch = |op: &'static str, lines: &'static str| {
        structured(&pool, "sql-partitions", op)
            .config("parent", "events")
            .config("partitions", lines)
    };
    let creates = "events_2031_01_01 2031-01-01 2031-01-02\n\
                   events_overlap 2031-01-01 2031-01-03\n\
                   events_2031_01_02 2031-01-02 2031-01-03";
    let before = catalog(&pool).await;
    let r = batch("create", creates).go().await;
    ok(&r);
    let said: Vec<&str> = r.summary.as_deref().unwrap().split(" | ").collect();
    assert_eq!(said.len(), 3, "{said:?}");
    assert!(
        said.iter()
            .all(|s| s.contains("`events` is not granted `create_partition`")),
        "{said:?}"
    );
    assert_eq!(catalog(&pool).await, before);
    let r = batch("create", creates)
        .grant("events", &[CreatePartition])
        .dry_run()
        .go()
        .await;
    ok(&r);
    assert_eq!(catalog(&pool).await, before);

    let r = batch("create", creates)
        .grant("events", &[CreatePartition])
        .go()
        .await;
    ok(&r);
    let said: Vec<&str> = r.summary.as_deref().unwrap().split(" | ").collect();
    assert_eq!(said.len(), 3, "{said:?}");
    assert_eq!(said[0], "ok");
    assert!(said[1].contains("would overlap"), "{said:?}");
    assert_eq!(said[2], "ok");
    let made = partitions(&pool, "events").await;
    assert!(made.contains(&"events_2031_01_01".to_owned()), "{made:?}");
    assert!(made.contains(&"events_2031_01_02".to_owned()), "{made:?}");
    assert!(!made.contains(&"events_overlap".to_owned()), "{made:?}");

    // A table that is no partition of `events` is refused in place; the
    // partitions around it go.
    let r = batch("drop", "events_2031_01_01\ndevices\nevents_2031_01_02")
        .grant("events", &[DropPartition])
        .go()
        .await;
    ok(&r);
    let said: Vec<&str> = r.summary.as_deref().unwrap().split(" | ").collect();
    assert_eq!(said[0], "ok", "{said:?}");
    assert!(said[1].contains("devices"), "{said:?}");
    assert_eq!(said[2], "ok", "{said:?}");
    let left = partitions(&pool, "events").await;
    assert!(
        !left.iter().any(|p| p.starts_with("events_2031")),
        "{left:?}"
    );
    assert!(
        sqlx::query_scalar::<_, bool>("SELECT to_regclass('devices') IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap()
    );
}

/// Names and bounds the host quotes itself read back exactly. For every
/// string of a corpus of quoting hazards and their pairs (quotes,
/// backslashes, dollar quotes, comment markers, keywords, upper case,
/// non-ASCII), a list partition named after it and holding it as its one
/// value is created under that exact name, and a row with that value is
/// routed to it.
#[sqlx::test]
async fn partition_names_and_bounds_are_quoted_exactly(pool: PgPool) {
    sqlx::raw_sql("CREATE TABLE tags (t text) PARTITION BY LIST (t)")
        .execute(&pool)
        .await
        .unwrap();
    let pieces = [
        "'", "\\", "\"", "$$", "$q$", "E'", "--", "/*", ";", " ", "%I", "select", "User", "é",
        "😀", "\t", "\\x41", "null",
    ];
    let mut corpus = std::collections::BTreeSet::new();
    for a in pieces {
        corpus.insert(a.to_owned());
        for b in pieces {
            corpus.insert(format!("{a}{b}"));
        }
    }
    for (i, value) in corpus.iter().enumerate() {
        let name = format!("{value}{i}");
        let r = structured(&pool, "sql-partition", "create")
            .config("parent", "tags")
            .config("partition", name.as_str())
            .config("bounds", "in")
            .config("values", value.as_str())
            .grant("tags", &[CreatePartition])
            .go()
            .await;
        ok(&r);
        let routed: String = sqlx::query_scalar(
            "WITH r AS (INSERT INTO tags VALUES ($1) RETURNING tableoid)
             SELECT c.relname::text FROM r JOIN pg_class c ON c.oid = r.tableoid",
        )
        .bind(value)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(routed, name, "{value:?}");
    }
}

/// A list of drops looks its partitions up before its first statement. If
/// a name comes to denote another table meanwhile (here an event trigger,
/// at the first `DROP TABLE`, renames the next partition away and gives its
/// name to a new plain table), the call fails as a whole and nothing of it
/// is kept; without the swap the same list drops both.
#[sqlx::test]
async fn a_partition_replaced_during_a_list_of_drops_fails_the_whole_list(pool: PgPool) {
    schema(&pool).await;
    sqlx::raw_sql(
        "CREATE TABLE events_2020_01_01 PARTITION OF events
             FOR VALUES FROM ('2020-01-01') TO ('2020-01-02');
         CREATE TABLE events_2020_01_02 PARTITION OF events
             FOR VALUES FROM ('2020-01-02') TO ('2020-01-03');
         CREATE FUNCTION swap() RETURNS event_trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF coalesce(current_setting('swap.done', true), '') = '' THEN
                 PERFORM set_config('swap.done', 'yes', true);
                 ALTER TABLE events_2020_01_02 RENAME TO events_2020_01_02_moved;
                 CREATE TABLE events_2020_01_02 (id int);
             END IF;
         END $$;
         CREATE EVENT TRIGGER swap ON ddl_command_start
             WHEN TAG IN ('DROP TABLE') EXECUTE FUNCTION swap();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let drop_both = || {
        structured(&pool, "sql-partitions", "drop")
            .config("parent", "events")
            .config("partitions", "events_2020_01_01\nevents_2020_01_02")
            .grant("events", &[DropPartition])
    };
    let before = catalog(&pool).await;
    let r = drop_both().go().await;
    stopped(&r, "renamed or replaced while the call ran");
    assert_eq!(catalog(&pool).await, before);

    sqlx::raw_sql("DROP EVENT TRIGGER swap")
        .execute(&pool)
        .await
        .unwrap();
    let r = drop_both().go().await;
    ok(&r);
    assert_eq!(r.summary.as_deref(), Some("ok | ok"));
    assert_eq!(relation(&pool, "events_2020_01_01").await, None);
    assert_eq!(relation(&pool, "events_2020_01_02").await, None);
}

/// Another session renames a table into a partition's place while a drop
/// waits for its lock on the partition (a list of drops, then a single
/// drop): the call looks its partitions up again once it holds them locked,
/// finds that the name now denotes another table, and refuses to drop it.
#[sqlx::test]
async fn a_table_renamed_into_a_partitions_place_meanwhile_is_not_dropped(pool: PgPool) {
    schema(&pool).await;
    let calls = [
        structured(&pool, "sql-partitions", "drop")
            .config("parent", "events")
            .config("partitions", "events_2020_01_01\nevents_2020_01_02"),
        partition_call(&pool, "drop", "events").config("partition", "events_2020_01_02"),
    ];
    for (round, call) in calls.into_iter().enumerate() {
        sqlx::raw_sql(
            "DROP TABLE IF EXISTS events_2020_01_01, events_2020_01_02;
             CREATE TABLE events_2020_01_01 PARTITION OF events
                 FOR VALUES FROM ('2020-01-01') TO ('2020-01-02');
             CREATE TABLE events_2020_01_02 PARTITION OF events
                 FOR VALUES FROM ('2020-01-02') TO ('2020-01-03');
             CREATE TABLE victim (id int);
             INSERT INTO victim VALUES (1);",
        )
        .execute(&pool)
        .await
        .unwrap();
        let mut holder = pool.acquire().await.unwrap();
        sqlx::raw_sql("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *holder)
            .await
            .unwrap();
        let run = tokio::spawn(call.grant("events", &[DropPartition]).go());
        let waiting = || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_locks WHERE NOT granted")
                .fetch_one(&pool)
                .await
                .unwrap()
                > 0
        };
        let mut tries = 0;
        while !waiting().await {
            tries += 1;
            assert!(tries < 200, "the call never waited for the lock");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sqlx::raw_sql(
            "DROP TABLE events_2020_01_02;
             ALTER TABLE victim RENAME TO events_2020_01_02;
             COMMIT",
        )
        .execute(&mut *holder)
        .await
        .unwrap();
        let r = run.await.unwrap();
        if round == 0 {
            ok(&r);
            let said: Vec<&str> = r.summary.as_deref().unwrap().split(" | ").collect();
            assert_eq!(said[0], "ok", "{said:?}");
            assert!(said[1].contains("renamed or replaced"), "{said:?}");
        } else {
            stopped(&r, "renamed or replaced");
        }
        assert_eq!(
            relation(&pool, "events_2020_01_02").await,
            Some(("r".to_owned(), false))
        );
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events_2020_01_02")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 1);
    }
}
