//! What the SQL boundary costs, against what a user would run instead, in
//! one run: checking one typical statement (the parse layer) against one
//! `SELECT 1` round trip; a task run making one free-text call (the role
//! check, `SET LOCAL ROLE`, the session reset) against the same statement
//! sent straight through sqlx; and a structured partition create and drop
//! against the same two statements sent straight.
//!
//! Needs PostgreSQL at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); makes and drops its own
//! database.

use housekeeper::capabilities::sql::guard::{self, Dialect, Grants};
use housekeeper::capabilities::sql::{Connection, Connections};
use housekeeper::manifest::{DatabaseGrant, Manifest, SqlVerb};
use housekeeper::model::{ConfigValue, RunStatus, Trigger};
use housekeeper::runtime::{RunRequest, Runtime, RuntimeOptions};
use housekeeper_tests::{fixture_path, report};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const DATABASE: &str = "housekeeper_bench_sql";

fn time<F: FnMut()>(warmup: usize, samples: usize, mut f: F) -> Vec<Duration> {
    let mut out = Vec::with_capacity(samples);
    for i in 0..warmup + samples {
        let start = Instant::now();
        f();
        if i >= warmup {
            out.push(start.elapsed());
        }
    }
    out
}

fn request(pool: &PgPool, config: &[(&str, &str)], grants: &[(&str, &[SqlVerb])]) -> RunRequest {
    let mut request = RunRequest::from_manifest(
        &Manifest::implicit("bench-sql", "hostile.wasm"),
        housekeeper::cli::new_run_id(),
        Trigger::Manual,
    );
    request.database = Some(DatabaseGrant {
        connection: "main".into(),
        tables: grants
            .iter()
            .map(|(t, v)| (t.to_string(), v.to_vec()))
            .collect::<BTreeMap<_, _>>(),
    });
    request.connections = Some(Connections::from_connections([(
        "main",
        Connection::postgres(pool.clone()).allow_unsafe_superuser(),
    )]));
    for (k, v) in config {
        request
            .config
            .insert(k.to_string(), ConfigValue::Text(v.to_string()));
    }
    request
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let pool = rt.block_on(async {
        let admin = PgPool::connect(&server).await.unwrap();
        for statement in [
            format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"),
            format!("CREATE DATABASE {DATABASE}"),
        ] {
            sqlx::raw_sql(&statement).execute(&admin).await.unwrap();
        }
        let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&format!("{base}/{DATABASE}"))
            .await
            .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE sensor_readings (id bigserial PRIMARY KEY, recorded_at timestamptz NOT NULL, value float8);
             CREATE TABLE events (id bigint, at timestamptz NOT NULL) PARTITION BY RANGE (at);",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool
    });

    println!("parse layer");
    let typical = "DELETE FROM sensor_readings WHERE id IN \
                   (SELECT id FROM sensor_readings WHERE recorded_at < $1 ORDER BY id LIMIT 1000)";
    let grants = Grants::new(&BTreeMap::from([(
        "sensor_readings".to_owned(),
        vec![SqlVerb::Select, SqlVerb::Delete],
    )]));
    let check = report(
        "check one typical DELETE",
        time(1_000, 20_000, || {
            guard::check(Dialect::Postgres, typical, &grants).unwrap();
        }),
    );
    let round_trip = report(
        "anchor: SELECT 1 round trip (sqlx)",
        time(200, 5_000, || {
            rt.block_on(sqlx::query("SELECT 1").execute(&pool)).unwrap();
        }),
    );
    println!(
        "  check / round trip: {:.2}×",
        check.as_secs_f64() / round_trip.as_secs_f64()
    );

    let runtime = Runtime::new(RuntimeOptions::default()).unwrap();
    let hostile = runtime.load_file(&fixture_path("hostile")).unwrap();
    let run = |config: &[(&str, &str)], grants: &[(&str, &[SqlVerb])]| {
        let result = rt.block_on(runtime.run(&hostile, request(&pool, config, grants)));
        assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    };
    println!("one free-text call");
    let select: &[(&str, &[SqlVerb])] = &[("sensor_readings", &[SqlVerb::Select])];
    let hosted = report(
        "task run: one query (role check, role, reset)",
        time(20, 500, || {
            run(
                &[
                    ("mode", "sql-query"),
                    ("sql", "SELECT id FROM sensor_readings LIMIT 1"),
                ],
                select,
            )
        }),
    );
    let direct = report(
        "anchor: the same query through sqlx",
        time(20, 500, || {
            rt.block_on(sqlx::query("SELECT id FROM sensor_readings LIMIT 1").execute(&pool))
                .unwrap();
        }),
    );
    println!(
        "  hosted / direct: {:.1}×",
        hosted.as_secs_f64() / direct.as_secs_f64()
    );

    println!("one structured partition create and drop");
    let partition: &[(&str, &[SqlVerb])] = &[(
        "events",
        &[SqlVerb::CreatePartition, SqlVerb::DropPartition],
    )];
    let structured = report(
        "task runs: create-partition, then drop-partition",
        time(10, 200, || {
            let base = [
                ("mode", "sql-partition"),
                ("parent", "events"),
                ("partition", "events_p"),
                ("bounds", "range"),
                ("from", "2020-01-01"),
                ("to", "2020-01-02"),
            ];
            let mut create = base.to_vec();
            create.push(("op", "create"));
            run(&create, partition);
            let mut drop = base.to_vec();
            drop.push(("op", "drop"));
            run(&drop, partition);
        }),
    );
    let plain = report(
        "anchor: CREATE TABLE … PARTITION OF, DROP TABLE",
        time(10, 200, || {
            rt.block_on(async {
                sqlx::raw_sql(
                    "CREATE TABLE events_p PARTITION OF events FOR VALUES FROM ('2020-01-01') TO ('2020-01-02')",
                )
                .execute(&pool)
                .await
                .unwrap();
                sqlx::raw_sql("DROP TABLE events_p")
                    .execute(&pool)
                    .await
                    .unwrap();
            })
        }),
    );
    println!(
        "  structured (two task runs) / plain: {:.1}×",
        structured.as_secs_f64() / plain.as_secs_f64()
    );
    rt.block_on(pool.close());
}
