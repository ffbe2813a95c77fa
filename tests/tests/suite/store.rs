//! The store on both backends: SQLite and a real PostgreSQL, a fresh
//! database per test (`#[sqlx::test]`).

use chrono::{Duration, TimeZone, Utc};
use housekeeper::model::{Metric, RunResult, RunStatus, Trigger};
use housekeeper::store::{Claim, NewRun, Renewal, Store, StoreOptions};
use housekeeper_tests::{new_run, won};
use sqlx::{PgPool, SqlitePool};

fn result(task: &str, status: RunStatus, duration_ms: u64) -> RunResult {
    let now = Utc::now();
    RunResult {
        run_id: "1".into(),
        task_name: task.into(),
        status,
        started_at: now,
        completed_at: now,
        duration_ms,
        summary: (status == RunStatus::Success).then(|| "did it".to_owned()),
        error: (status != RunStatus::Success).then(|| "broke".to_owned()),
        output: "[info] hello\n".into(),
        metrics: vec![Metric {
            name: "files_deleted".into(),
            value: 3.0,
        }],
        fuel_used: 1234,
        component_hash: "abc".into(),
        dry_run: false,
    }
}

fn manual(task: &str) -> NewRun<'_> {
    NewRun {
        component_hash: Some("abc"),
        ..new_run(task, Trigger::Manual)
    }
}

async fn run_to_end(store: &Store, task: &str, status: RunStatus, ms: u64) -> i64 {
    let lease = won(store, &manual(task)).await;
    assert!(
        store
            .finish_run(lease, &result(task, status, ms))
            .await
            .unwrap()
    );
    lease.run_id
}

async fn history_and_stats(store: Store) {
    let lease = won(&store, &manual("t")).await;
    let id = lease.run_id;
    let running = store.run(id).await.unwrap().unwrap();
    assert_eq!(running.status, RunStatus::Running);
    assert!(running.heartbeat_at.is_some());
    assert_eq!(store.heartbeat(lease).await.unwrap(), Renewal::Held);
    store
        .finish_run(lease, &result("t", RunStatus::Success, 100))
        .await
        .unwrap();
    assert_eq!(store.heartbeat(lease).await.unwrap(), Renewal::Lost);
    run_to_end(&store, "t", RunStatus::Error, 300).await;
    run_to_end(&store, "t", RunStatus::OutOfFuel, 200).await;
    run_to_end(&store, "other", RunStatus::Success, 5).await;

    let done = store.run(id).await.unwrap().unwrap();
    assert_eq!(done.status, RunStatus::Success);
    assert_eq!(done.triggered_by, Trigger::Manual);
    assert_eq!(done.duration_ms, Some(100));
    assert_eq!(done.fuel_used, Some(1234));
    assert_eq!(done.component_hash.as_deref(), Some("abc"));
    assert_eq!(done.metrics.unwrap()["files_deleted"], 3.0);
    assert!(done.output.unwrap().starts_with("did it\n[info] hello"));
    assert!(done.completed_at.is_some());

    let runs = store.runs("t", 10).await.unwrap();
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[0].status, RunStatus::OutOfFuel, "newest first");
    assert_eq!(store.runs("t", 1).await.unwrap().len(), 1);
    assert!(store.run(99_999).await.unwrap().is_none());

    let stats = store.stats().await.unwrap();
    let t = &stats["t"];
    assert_eq!((t.total_runs, t.success_count, t.error_count), (3, 1, 2));
    assert_eq!(t.avg_duration_ms, Some(200.0));
    assert_eq!(t.last_status, Some(RunStatus::OutOfFuel));
    assert!(t.last_success_at.is_some());
    assert_eq!(stats["other"].total_runs, 1);
}

async fn occurrences_are_recorded_once(store: Store) {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 2, 30, 0).unwrap();
    let scheduled = NewRun {
        scheduled_for: Some(at),
        ..new_run("t", Trigger::Schedule)
    };
    won(&store, &scheduled).await;
    assert_eq!(store.begin_run(&scheduled).await.unwrap(), Claim::Recorded);
    assert!(
        store
            .record_skipped("t", Trigger::Schedule, Some(at), "dup")
            .await
            .unwrap()
            .is_none()
    );
    // A retry of the same occurrence is its own row.
    let retry = NewRun {
        triggered_by: Trigger::Retry,
        ..scheduled.clone()
    };
    won(&store, &retry).await;
    assert_eq!(store.last_scheduled_for("t").await.unwrap(), Some(at));

    let later = at + Duration::hours(24);
    let skipped = store
        .record_skipped(
            "t",
            Trigger::Schedule,
            Some(later),
            "previous run still running",
        )
        .await
        .unwrap()
        .unwrap();
    let row = store.run(skipped).await.unwrap().unwrap();
    assert_eq!(row.status, RunStatus::Skipped);
    assert_eq!(row.error.as_deref(), Some("previous run still running"));
    assert_eq!(store.last_scheduled_for("t").await.unwrap(), Some(later));
    let stats = store.stats().await.unwrap();
    assert_eq!(stats["t"].skipped_count, 1);
    assert_eq!(stats["t"].total_runs, 0);
    assert!(store.last_scheduled_for("never").await.unwrap().is_none());
}

async fn crash_recovery_touches_only_this_replica(a: Store, b: Store) {
    let lease = won(&a, &manual("t")).await;
    let mine = lease.run_id;
    let theirs = won(&b, &manual("t")).await.run_id;
    let now = a.db_now().await.unwrap();
    let orphans = a.interrupt_orphans(now, &|_| None).await.unwrap();
    assert_eq!(orphans.iter().map(|r| r.id).collect::<Vec<_>>(), vec![mine]);
    // A run started since the moment given is this process's own.
    let since = won(&a, &manual("u")).await.run_id;
    assert!(
        a.interrupt_orphans(now, &|_| None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        a.run(since).await.unwrap().unwrap().status,
        RunStatus::Running
    );
    assert_eq!(
        a.run(mine).await.unwrap().unwrap().status,
        RunStatus::Interrupted
    );
    assert_eq!(
        a.run(theirs).await.unwrap().unwrap().status,
        RunStatus::Running
    );
    // A late finish does not overwrite the recorded interruption.
    assert!(
        !a.finish_run(lease, &result("t", RunStatus::Success, 1))
            .await
            .unwrap()
    );
    assert_eq!(
        a.run(mine).await.unwrap().unwrap().status,
        RunStatus::Interrupted
    );
    assert_eq!(
        a.stats().await.unwrap()["t"].last_status,
        Some(RunStatus::Interrupted)
    );
}

async fn toggles_persist(store: Store) {
    assert!(store.settings().await.unwrap().is_empty());
    store.set_enabled("t", false).await.unwrap();
    assert!(!store.settings().await.unwrap()["t"].enabled);
    store.set_enabled("t", true).await.unwrap();
    assert!(store.settings().await.unwrap()["t"].enabled);
}

async fn pruning_keeps_recent_and_running(store: Store, backdate: impl AsyncFn(i64, i64)) {
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(run_to_end(&store, "t", RunStatus::Success, 1).await);
    }
    let running = won(&store, &manual("t")).await.run_id;
    run_to_end(&store, "other", RunStatus::Success, 1).await;
    // The two oldest are 40 days old.
    backdate(ids[0], 40).await;
    backdate(ids[1], 40).await;
    backdate(running, 40).await;

    assert_eq!(store.prune("t", 30, 1000).await.unwrap(), 2);
    // keep_last counts rows newest first; the running row is never deleted.
    assert_eq!(store.prune("t", 30, 2).await.unwrap(), 2);
    let left: Vec<i64> = store
        .runs("t", 100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, vec![ids[5], ids[4], running]);
    assert_eq!(store.runs("other", 10).await.unwrap().len(), 1);
    // Lifetime stats are not affected by pruning.
    assert_eq!(store.stats().await.unwrap()["t"].total_runs, 6);
}

/// Names are read back as their types: a name this version does not know
/// is an error naming it, its column and the row, never a guess; `unknown`
/// (a taken-over run that named no trigger) reads back.
async fn stored_names_are_decoded(store: Store, exec: impl AsyncFn(&str)) {
    let id = run_to_end(&store, "t", RunStatus::Success, 1).await;
    let error_of = async |store: &Store| format!("{:#}", store.run(id).await.unwrap_err());

    exec(&format!(
        "UPDATE housekeeper_runs SET status = 'exploded' WHERE id = {id}"
    ))
    .await;
    let e = error_of(&store).await;
    assert!(e.contains("housekeeper_runs.status"), "{e}");
    assert!(e.contains("\"exploded\""), "{e}");
    assert!(e.contains(&format!("run {id}")), "{e}");
    assert!(store.runs("t", 10).await.is_err());
    assert!(store.runs_page("t", 10, 0).await.is_err());

    exec(&format!(
        "UPDATE housekeeper_runs SET status = 'out_of_memory', triggered_by = 'scheduler' WHERE id = {id}"
    ))
    .await;
    let e = error_of(&store).await;
    assert!(e.contains("housekeeper_runs.triggered_by"), "{e}");
    assert!(e.contains("\"scheduler\""), "{e}");

    exec(&format!(
        "UPDATE housekeeper_runs SET triggered_by = 'unknown' WHERE id = {id}"
    ))
    .await;
    let run = store.run(id).await.unwrap().unwrap();
    assert_eq!(
        (run.status, run.triggered_by),
        (RunStatus::OutOfMemory, Trigger::Unknown)
    );

    assert_eq!(
        store.stats().await.unwrap()["t"].last_status,
        Some(RunStatus::Success)
    );
    exec("UPDATE housekeeper_task_stats SET last_status = 'Success' WHERE task_name = 't'").await;
    let e = format!("{:#}", store.stats().await.unwrap_err());
    assert!(e.contains("housekeeper_task_stats.last_status"), "{e}");
    assert!(e.contains("\"Success\""), "{e}");
    assert!(e.contains("\"t\""), "{e}");
}

#[sqlx::test(migrations = "../migrations/sqlite")]
async fn sqlite_stored_names_are_decoded(pool: SqlitePool) {
    let store = Store::from_sqlite(pool.clone(), "r1");
    stored_names_are_decoded(store, async |sql| {
        sqlx::query(sql).execute(&pool).await.unwrap();
    })
    .await;
}

#[sqlx::test(migrations = "../migrations/postgres")]
async fn postgres_stored_names_are_decoded(pool: PgPool) {
    let store = Store::from_postgres(pool.clone(), "r1");
    stored_names_are_decoded(store, async |sql| {
        sqlx::query(sql).execute(&pool).await.unwrap();
    })
    .await;
}

#[sqlx::test(migrations = "../migrations/sqlite")]
async fn sqlite_history_and_stats(pool: SqlitePool) {
    history_and_stats(Store::from_sqlite(pool, "r1")).await;
}

#[sqlx::test(migrations = "../migrations/postgres")]
async fn postgres_history_and_stats(pool: PgPool) {
    history_and_stats(Store::from_postgres(pool, "r1")).await;
}

#[sqlx::test(migrations = "../migrations/sqlite")]
async fn sqlite_occurrences_are_recorded_once(pool: SqlitePool) {
    occurrences_are_recorded_once(Store::from_sqlite(pool, "r1")).await;
}

#[sqlx::test(migrations = "../migrations/postgres")]
async fn postgres_occurrences_are_recorded_once(pool: PgPool) {
    occurrences_are_recorded_once(Store::from_postgres(pool, "r1")).await;
}

#[sqlx::test(migrations = "../migrations/sqlite")]
async fn sqlite_crash_recovery(pool: SqlitePool) {
    crash_recovery_touches_only_this_replica(
        Store::from_sqlite(pool.clone(), "a"),
        Store::from_sqlite(pool, "b"),
    )
    .await;
}

#[sqlx::test(migrations = "../migrations/postgres")]
async fn postgres_crash_recovery(pool: PgPool) {
    crash_recovery_touches_only_this_replica(
        Store::from_postgres(pool.clone(), "a"),
        Store::from_postgres(pool, "b"),
    )
    .await;
}

#[sqlx::test(migrations = "../migrations/sqlite")]
async fn sqlite_toggles_persist(pool: SqlitePool) {
    toggles_persist(Store::from_sqlite(pool, "r1")).await;
}

#[sqlx::test(migrations = "../migrations/postgres")]
async fn postgres_toggles_persist(pool: PgPool) {
    toggles_persist(Store::from_postgres(pool, "r1")).await;
}

#[sqlx::test(migrations = "../migrations/sqlite")]
async fn sqlite_pruning(pool: SqlitePool) {
    let store = Store::from_sqlite(pool.clone(), "r1");
    pruning_keeps_recent_and_running(store, async |id, days| {
        sqlx::query("UPDATE housekeeper_runs SET started_at = $1 WHERE id = $2")
            .bind(Utc::now() - Duration::days(days))
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
    })
    .await;
}

#[sqlx::test(migrations = "../migrations/postgres")]
async fn postgres_pruning(pool: PgPool) {
    let store = Store::from_postgres(pool.clone(), "r1");
    pruning_keeps_recent_and_running(store, async |id, days| {
        sqlx::query("UPDATE housekeeper_runs SET started_at = $1 WHERE id = $2")
            .bind(Utc::now() - Duration::days(days))
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
    })
    .await;
}

#[sqlx::test(migrations = "../migrations/postgres")]
async fn postgres_get_housekeeper_stats(pool: PgPool) {
    let store = Store::from_postgres(pool.clone(), "r1");
    run_to_end(&store, "api-key-rotation", RunStatus::Success, 100).await;
    run_to_end(&store, "api-key-rotation", RunStatus::Error, 201).await;
    let row: (String, i64, i64, i64, f64, Option<chrono::DateTime<Utc>>, Option<String>) = sqlx::query_as(
        "SELECT task_name, total_runs, success_count, error_count, avg_duration_ms::float8, last_run_at, last_status \
         FROM get_housekeeper_stats() WHERE task_name = 'api-key-rotation'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row.0, "api-key-rotation");
    assert_eq!((row.1, row.2, row.3), (2, 1, 1));
    assert_eq!(row.4, 150.5);
    assert!(row.5.is_some());
    assert_eq!(row.6.as_deref(), Some("error"));
    // Timestamps are timestamptz.
    let kind: String = sqlx::query_scalar(
        "SELECT data_type FROM information_schema.columns WHERE table_name = 'housekeeper_runs' AND column_name = 'started_at'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(kind, "timestamp with time zone");
}

#[tokio::test]
async fn open_creates_a_sqlite_file_and_rejects_other_urls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested.db");
    let url = format!("sqlite:{}", path.display());
    let store = Store::open(&url, "r1", &StoreOptions::default())
        .await
        .unwrap();
    store.ping().await.unwrap();
    run_to_end(&store, "t", RunStatus::Success, 1).await;
    drop(store);
    // Reopening applies no migration twice and keeps the data.
    let store = Store::open(&url, "r1", &StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(store.runs("t", 10).await.unwrap().len(), 1);
    let err = Store::open("mysql://x", "r1", &StoreOptions::default())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("unsupported database URL"));
}

/// A replica whose clock is off does not date what it records by it: a
/// result stamped an hour behind ends its run at the database's time,
/// after the run's start (which the database's clock set too).
#[sqlx::test(migrations = "../migrations/postgres")]
async fn postgres_a_run_ends_by_the_databases_clock(pool: PgPool) {
    let store = Store::from_postgres(pool, "late");
    let lease = won(&store, &manual("t")).await;
    let mut late = result("t", RunStatus::Success, 5);
    late.started_at -= Duration::hours(1);
    late.completed_at -= Duration::hours(1);
    assert!(store.finish_run(lease, &late).await.unwrap());
    let now = store.db_now().await.unwrap();
    let row = store.run(lease.run_id).await.unwrap().unwrap();
    let ended = row.completed_at.unwrap();
    assert!(row.started_at <= ended && ended <= now, "{row:#?}");
    assert_eq!(store.stats().await.unwrap()["t"].last_run_at, Some(ended));
}

/// Two processes of one name: the name is claimed by one, in one
/// statement, also when both claim at once; the holder may claim again, and
/// once it leaves the other gets it.
#[sqlx::test(migrations = "../migrations/postgres")]
async fn postgres_a_replica_name_is_claimed_by_one_process(pool: PgPool) {
    let lease = std::time::Duration::from_secs(15);
    let (a, b) = (
        Store::from_postgres(pool.clone(), "r1"),
        Store::from_postgres(pool.clone(), "r1"),
    );
    let micros = |t: chrono::DateTime<Utc>| {
        chrono::DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap()
    };
    let first = micros(a.db_now().await.unwrap());
    let second = first + chrono::Duration::milliseconds(1);
    assert!(a.claim_name(first, "1", lease).await.unwrap());
    assert!(
        !b.claim_name(second, "1", lease).await.unwrap(),
        "held by a"
    );
    assert!(a.claim_name(first, "1", lease).await.unwrap(), "a's own");
    a.replica_leave().await.unwrap();
    assert!(b.claim_name(second, "1", lease).await.unwrap(), "left by a");
    for round in 0..5 {
        let name = format!("together-{round}");
        let (c, d) = (
            Store::from_postgres(pool.clone(), &name),
            Store::from_postgres(pool.clone(), &name),
        );
        let (x, y) = tokio::join!(
            c.claim_name(first, "1", lease),
            d.claim_name(second, "1", lease)
        );
        assert!(x.unwrap() ^ y.unwrap(), "exactly one of two claims at once");
    }
}

/// On SQLite the lock on the database keeps a second `serve` out, so a
/// name is never waited for.
#[sqlx::test(migrations = "../migrations/sqlite")]
async fn sqlite_replica_name_is_never_waited_for(pool: SqlitePool) {
    let (a, b) = (
        Store::from_sqlite(pool.clone(), "r1"),
        Store::from_sqlite(pool, "r1"),
    );
    let lease = std::time::Duration::from_secs(15);
    assert!(a.claim_name(Utc::now(), "1", lease).await.unwrap());
    assert!(b.claim_name(Utc::now(), "1", lease).await.unwrap());
    a.replica_leave().await.unwrap();
}

/// The lock that keeps a second `serve` off a SQLite database is on the
/// file, so every path to it meets it: the same name, a symbolic link, a
/// hard link.
#[test]
fn a_sqlite_database_is_served_once_by_any_path_to_it() {
    use housekeeper::store::lock_single_replica;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hk.db");
    let url = |p: &std::path::Path| format!("sqlite:{}", p.display());
    let held = lock_single_replica(&url(&db)).unwrap().expect("a lock");
    let symlink = dir.path().join("link.db");
    std::os::unix::fs::symlink(&db, &symlink).unwrap();
    let hard = dir.path().join("hard.db");
    std::fs::hard_link(&db, &hard).unwrap();
    let nested = dir.path().join("sub");
    std::fs::create_dir(&nested).unwrap();
    let dotted = nested.join("../hk.db");
    for other in [&db, &symlink, &hard, &dotted] {
        let e = format!("{:#}", lock_single_replica(&url(other)).unwrap_err());
        assert!(
            e.contains("another housekeeper serve"),
            "{}: {e}",
            other.display()
        );
        assert!(e.contains("PostgreSQL"), "{e}");
    }
    drop(held);
    assert!(lock_single_replica(&url(&hard)).unwrap().is_some());
}
