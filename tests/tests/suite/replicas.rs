//! Several replicas on one database: claims, leases, fencing, reaping and
//! cancels through the store, on both backends where both apply. The cases
//! take their stores, so that `pooler` runs them through PgBouncer too.

use chrono::{DateTime, Duration, Timelike, Utc};
use housekeeper::model::{RunResult, RunStatus, Trigger};
use housekeeper::store::{Claim, NewRun, Renewal, Store};
use housekeeper_tests::{new_run, won};
use sqlx::{PgPool, SqlitePool};

fn run(task: &str, trigger: Trigger, exclusive: bool) -> NewRun<'_> {
    NewRun {
        exclusive,
        ..new_run(task, trigger)
    }
}

fn success(task: &str) -> RunResult {
    let now = Utc::now();
    RunResult {
        run_id: "1".into(),
        task_name: task.into(),
        status: RunStatus::Success,
        started_at: now,
        completed_at: now,
        duration_ms: 1,
        summary: Some("done".into()),
        error: None,
        output: String::new(),
        metrics: vec![],
        fuel_used: 1,
        component_hash: "abc".into(),
        dry_run: false,
    }
}

async fn exclusive_runs_do_not_overlap(a: Store, b: Store) {
    let first = won(&a, &run("t", Trigger::Manual, true)).await;
    match b.begin_run(&run("t", Trigger::Manual, true)).await.unwrap() {
        Claim::Busy(holder) => {
            assert_eq!(holder.run_id, first.run_id);
            assert_eq!(holder.replica, "a");
        }
        other => panic!("{other:?}"),
    }
    // A busy claim leaves nothing behind.
    assert_eq!(b.runs("t", 10).await.unwrap().len(), 1);
    // `allow` takes no exclusive lease, and other tasks are not held up.
    won(&b, &run("t", Trigger::Manual, false)).await;
    won(&b, &run("u", Trigger::Manual, true)).await;
    assert!(a.finish_run(first, &success("t")).await.unwrap());
    won(&b, &run("t", Trigger::Manual, true)).await;
}

/// `expire(run_id)` moves a lease's expiry into the past, as if its replica
/// had stopped renewing it.
async fn a_dead_replicas_run_is_reaped_once_and_fenced(
    a: Store,
    b: Store,
    expire: impl AsyncFn(i64),
) {
    let mut scheduled = run("t", Trigger::Schedule, true);
    // Whole seconds: the database keeps microseconds.
    scheduled.scheduled_for = Some(Utc::now().with_nanosecond(0).unwrap() - Duration::seconds(1));
    scheduled.attempt = 1;
    let lease = won(&a, &scheduled).await;
    assert!(
        b.reap(&|_| None).await.unwrap().is_empty(),
        "a live lease is kept"
    );
    expire(lease.run_id).await;

    let (from_b, from_a) = (
        b.reap(&|_| None).await.unwrap(),
        a.reap(&|_| None).await.unwrap(),
    );
    assert_eq!(from_b.len() + from_a.len(), 1, "{from_b:?} {from_a:?}");
    let reaped = from_b.into_iter().chain(from_a).next().unwrap();
    assert_eq!(reaped.id, lease.run_id);
    assert_eq!(reaped.replica, "a");
    assert_eq!(reaped.triggered_by, Trigger::Schedule);
    assert_eq!(reaped.scheduled_for, scheduled.scheduled_for);
    assert_eq!(reaped.attempt, 1);
    let row = b.run(lease.run_id).await.unwrap().unwrap();
    assert_eq!(row.status, RunStatus::Interrupted);
    assert!(row.error.unwrap().contains("replica a stopped renewing"));

    // The replica that comes back can change nothing about the run.
    assert_eq!(a.heartbeat(lease).await.unwrap(), Renewal::Lost);
    assert!(!a.finish_run(lease, &success("t")).await.unwrap());
    assert!(
        !a.end_run(lease, RunStatus::Cancelled, "late")
            .await
            .unwrap()
    );
    let row = b.run(lease.run_id).await.unwrap().unwrap();
    assert_eq!(row.status, RunStatus::Interrupted);
    assert_eq!(
        b.stats().await.unwrap()["t"].last_status,
        Some(RunStatus::Interrupted)
    );
    // The task is free again, and its occurrence stays recorded once.
    assert_eq!(b.begin_run(&scheduled).await.unwrap(), Claim::Recorded);
    won(&b, &run("t", Trigger::Manual, true)).await;
}

async fn a_cancel_reaches_the_replica_running_the_run(a: Store, b: Store) {
    let lease = won(&a, &run("t", Trigger::Manual, true)).await;
    assert_eq!(
        b.request_cancel(lease.run_id, "cancelled on request")
            .await
            .unwrap()
            .as_deref(),
        Some("a")
    );
    assert_eq!(
        a.heartbeat(lease).await.unwrap(),
        Renewal::Cancel("cancelled on request".into())
    );
    assert_eq!(b.request_cancel(999_999, "x").await.unwrap(), None);
    // `replace` on another replica asks the holder of the task's lease.
    b.request_cancel_task("t", "replaced by a newer run (overlap = replace)")
        .await
        .unwrap();
    assert_eq!(
        a.heartbeat(lease).await.unwrap(),
        Renewal::Cancel("cancelled on request".into()),
        "the first reason stays"
    );
}

async fn replicas_starting_together_make_one_startup_run(a: Store, b: Store) {
    won(&a, &run("t", Trigger::Startup, false)).await;
    assert_eq!(
        b.begin_run(&run("t", Trigger::Startup, false))
            .await
            .unwrap(),
        Claim::Recorded
    );
    // A replica restarting on its own still makes its startup run.
    won(&a, &run("t", Trigger::Startup, false)).await;
    won(&b, &run("other", Trigger::Startup, false)).await;
}

async fn a_fast_clock_does_not_claim_early(a: Store) {
    let mut early = run("t", Trigger::Schedule, true);
    early.scheduled_for = Some(Utc::now() + Duration::hours(1));
    match a.begin_run(&early).await.unwrap() {
        Claim::Early(db_now) => {
            assert!((db_now - Utc::now()).num_seconds().abs() < 60, "{db_now}")
        }
        other => panic!("{other:?}"),
    }
    assert!(a.runs("t", 10).await.unwrap().is_empty());
}

async fn live_replicas_are_listed(a: Store, b: Store, age: impl AsyncFn(&str)) {
    // Microseconds, as the database keeps them.
    let started = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap();
    assert_eq!(a.replica_heartbeat(started, "1.0", 12).await.unwrap(), None);
    b.replica_heartbeat(started, "1.0", -3).await.unwrap();
    // Each beat tells the start time the row held: another process
    // reporting under `a`'s name shows as another start time.
    assert_eq!(
        a.replica_heartbeat(started, "1.0", 12).await.unwrap(),
        Some(started)
    );
    let other = started + Duration::seconds(1);
    a.replica_heartbeat(other, "1.0", 12).await.unwrap();
    assert_eq!(
        a.replica_heartbeat(started, "1.0", 12).await.unwrap(),
        Some(other)
    );
    let live = a
        .replicas(std::time::Duration::from_secs(15))
        .await
        .unwrap();
    let names: Vec<_> = live
        .iter()
        .map(|r| (r.replica.as_str(), r.clock_offset_ms))
        .collect();
    assert_eq!(names, [("a", 12), ("b", -3)]);
    age("b").await;
    let live = a
        .replicas(std::time::Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].replica, "a");
}

/// A case on each backend: `mod $name` with a test `sqlite` and a test
/// `postgres`, each giving the case two replicas' stores on one database.
macro_rules! on_both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            on_both!(@one sqlite, SqlitePool, from_sqlite, "../migrations/sqlite", $body);
            on_both!(@one postgres, PgPool, from_postgres, "../migrations/postgres", $body);
        }
    };
    (@one $test:ident, $pool:ty, $store:ident, $migrations:tt, $body:expr) => {
        #[sqlx::test(migrations = $migrations)]
        async fn $test(pool: $pool) {
            let a = Store::$store(pool.clone(), "a");
            let b = Store::$store(pool.clone(), "b");
            let exec =
                |sql: String, at: DateTime<Utc>| -> futures_util::future::BoxFuture<'_, ()> {
                    let pool = pool.clone();
                    Box::pin(async move {
                        sqlx::query(&sql).bind(at).execute(&pool).await.unwrap();
                    })
                };
            $body(a, b, &exec).await;
        }
    };
}

pub(crate) type Exec<'a> =
    &'a dyn Fn(String, DateTime<Utc>) -> futures_util::future::BoxFuture<'a, ()>;

/// Moves a run's lease expiry into the past, as if its replica had stopped
/// renewing it.
fn expire(exec: Exec<'_>) -> impl AsyncFn(i64) {
    let past = Utc::now() - Duration::minutes(5);
    async move |id| {
        let sql = format!("UPDATE housekeeper_leases SET expires_at = $1 WHERE run_id = {id}");
        exec(sql, past).await
    }
}

pub(crate) async fn reaped_case(a: Store, b: Store, exec: Exec<'_>) {
    a_dead_replicas_run_is_reaped_once_and_fenced(a, b, expire(exec)).await
}

pub(crate) async fn listed_case(a: Store, b: Store, exec: Exec<'_>) {
    let past = Utc::now() - Duration::minutes(1);
    live_replicas_are_listed(a, b, async |name| {
        let sql =
            format!("UPDATE housekeeper_replicas SET heartbeat_at = $1 WHERE replica = '{name}'");
        exec(sql, past).await
    })
    .await
}

/// A run asked to stop whose replica then went quiet is recorded
/// `cancelled` by its reaper, with the reason, and never retried.
async fn a_cancelled_run_is_not_retried_by_its_reaper(
    a: Store,
    b: Store,
    expire: impl AsyncFn(i64),
) {
    let lease = won(&a, &run("t", Trigger::Manual, true)).await;
    b.request_cancel(lease.run_id, "cancelled on request")
        .await
        .unwrap();
    expire(lease.run_id).await;
    let asked = std::sync::atomic::AtomicBool::new(false);
    let reaped = b
        .reap(&|_| {
            asked.store(true, std::sync::atomic::Ordering::SeqCst);
            Some(std::time::Duration::from_secs(1))
        })
        .await
        .unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].cancelled.as_deref(), Some("cancelled on request"));
    assert!(!reaped[0].retry);
    assert!(
        !asked.load(std::sync::atomic::Ordering::SeqCst),
        "no retry policy is consulted"
    );
    assert!(b.pending_retries().await.unwrap().is_empty());
    let row = b.run(lease.run_id).await.unwrap().unwrap();
    assert_eq!(row.status, RunStatus::Cancelled);
    assert!(
        row.error
            .unwrap()
            .starts_with("cancelled on request; replica a stopped renewing")
    );
}

/// A reaped run's retry is planned once, and is taken by exactly one of the
/// replicas that claim it; one planned by the run's own replica before it
/// died is kept by the reaper.
async fn a_planned_retry_runs_once(a: Store, b: Store, expire: impl AsyncFn(i64)) {
    let mut first = run("t", Trigger::Schedule, true);
    first.scheduled_for = Some(Utc::now().with_nanosecond(0).unwrap() - Duration::seconds(1));
    let lease = won(&a, &first).await;
    // `a` plans the retry and dies before recording the run's end.
    assert!(
        a.plan_retry(lease.run_id, std::time::Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        !a.plan_retry(lease.run_id, std::time::Duration::from_secs(1))
            .await
            .unwrap(),
        "planned once"
    );
    expire(lease.run_id).await;
    let reaped = b
        .reap(&|_| Some(std::time::Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(
        b.run(lease.run_id).await.unwrap().unwrap().status,
        RunStatus::Interrupted
    );
    let pending = b.pending_retries().await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let retry = &pending[0];
    assert_eq!(
        (retry.after_run, retry.attempt, retry.replica.as_str()),
        (lease.run_id, 1, "a")
    );
    assert_eq!(retry.scheduled_for, first.scheduled_for);
    // The plan made by `a` stands: due 30 s after it was made.
    assert!(
        retry.not_before > Utc::now() + Duration::seconds(20),
        "{retry:?}"
    );

    let mut again = run("t", Trigger::Retry, true);
    again.attempt = 1;
    again.scheduled_for = first.scheduled_for;
    let (from_a, from_b) = tokio::join!(
        a.begin_retry(&again, lease.run_id),
        b.begin_retry(&again, lease.run_id)
    );
    let claims = [from_a.unwrap(), from_b.unwrap()];
    assert_eq!(
        claims.iter().filter(|c| matches!(c, Claim::Won(_))).count(),
        1,
        "{claims:?}"
    );
    assert_eq!(
        claims.iter().filter(|c| **c == Claim::Recorded).count(),
        1,
        "{claims:?}"
    );
    assert!(b.pending_retries().await.unwrap().is_empty());
    let runs = b.runs("t", 10).await.unwrap();
    assert_eq!(runs.len(), 2, "the interrupted run and its one retry");
    assert_eq!(
        runs.iter()
            .filter(|r| r.triggered_by == Trigger::Retry)
            .count(),
        1
    );
}

/// A retry that is not run (cancelled in its backoff, or skipped by the
/// overlap policy) is given up once; a skip is recorded as a run.
async fn a_dropped_retry_is_given_up_once(a: Store, b: Store) {
    let lease = won(&a, &run("t", Trigger::Manual, true)).await;
    assert!(
        a.plan_retry(lease.run_id, std::time::Duration::ZERO)
            .await
            .unwrap()
    );
    assert!(a.finish_run(lease, &success("t")).await.unwrap());
    assert!(
        !a.plan_retry(lease.run_id, std::time::Duration::ZERO)
            .await
            .unwrap(),
        "only a running run is retried"
    );
    let why = "the previous run is still running on replica b (overlap = skip)";
    assert!(b.drop_retry(lease.run_id, Some(why)).await.unwrap());
    assert!(!a.drop_retry(lease.run_id, Some(why)).await.unwrap());
    let runs = b.runs("t", 10).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].status, RunStatus::Skipped);
    assert_eq!(runs[0].triggered_by, Trigger::Retry);
    assert_eq!(runs[0].error.as_deref(), Some(why));
    // Cancelled in its backoff: nothing is recorded.
    let second = won(&a, &run("t", Trigger::Manual, true)).await;
    assert!(
        a.plan_retry(second.run_id, std::time::Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(a.finish_run(second, &success("t")).await.unwrap());
    assert!(a.drop_retry(second.run_id, None).await.unwrap());
    assert_eq!(b.runs("t", 10).await.unwrap().len(), 3);
    let mut late = run("t", Trigger::Retry, true);
    late.attempt = 1;
    assert_eq!(
        b.begin_retry(&late, second.run_id).await.unwrap(),
        Claim::Recorded
    );
}

pub(crate) async fn cancelled_reap_case(a: Store, b: Store, exec: Exec<'_>) {
    a_cancelled_run_is_not_retried_by_its_reaper(a, b, expire(exec)).await
}

pub(crate) async fn retry_case(a: Store, b: Store, exec: Exec<'_>) {
    a_planned_retry_runs_once(a, b, expire(exec)).await
}

pub(crate) async fn dropped_retry_case(a: Store, b: Store, _: Exec<'_>) {
    a_dropped_retry_is_given_up_once(a, b).await
}

pub(crate) async fn exclusive_case(a: Store, b: Store, _: Exec<'_>) {
    exclusive_runs_do_not_overlap(a, b).await
}

pub(crate) async fn cancel_case(a: Store, b: Store, _: Exec<'_>) {
    a_cancel_reaches_the_replica_running_the_run(a, b).await
}

pub(crate) async fn startup_case(a: Store, b: Store, _: Exec<'_>) {
    replicas_starting_together_make_one_startup_run(a, b).await
}

pub(crate) async fn early_case(a: Store, _: Store, _: Exec<'_>) {
    a_fast_clock_does_not_claim_early(a).await
}

on_both!(exclusive, exclusive_case);
on_both!(reaped, reaped_case);
on_both!(cancel, cancel_case);
on_both!(startup, startup_case);
on_both!(early, early_case);
on_both!(listed, listed_case);
on_both!(cancelled_reap, cancelled_reap_case);
on_both!(retry, retry_case);
on_both!(dropped_retry, dropped_retry_case);

/// Five replicas claim the same 40 occurrences of an exclusive task and of
/// an `allow` task at once, recording a skip when the task is busy, as the
/// scheduler does: each occurrence ends up as exactly one row, and no two
/// exclusive runs ever hold the task at the same time.
#[sqlx::test(migrations = "../migrations/postgres")]
async fn postgres_concurrent_claims_record_each_occurrence_once(pool: PgPool) {
    let store = async |replica: &str| Store::from_postgres(pool.clone(), replica);
    concurrent_claims_record_each_occurrence_once(store, &pool).await
}

/// The case above on the stores `store` opens by replica name; `pool` is
/// the same database, for counting what is left.
pub(crate) async fn concurrent_claims_record_each_occurrence_once(
    store: impl AsyncFn(&str) -> Store,
    pool: &PgPool,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    // Whole seconds: the database keeps microseconds.
    let base = Utc::now().with_nanosecond(0).unwrap() - Duration::hours(1);
    let held = Arc::new(AtomicBool::new(false));
    let mut claims = Vec::new();
    for i in 0..5 {
        let store = store(&format!("r{i}")).await;
        let held = held.clone();
        claims.push(tokio::spawn(async move {
            let mut won = 0;
            for minute in 0..40 {
                for (task, exclusive) in [("solo", true), ("many", false)] {
                    let mut new = run(task, Trigger::Schedule, exclusive);
                    new.scheduled_for = Some(base + Duration::minutes(minute));
                    match store.begin_run(&new).await.unwrap() {
                        Claim::Won(lease) => {
                            won += 1;
                            if exclusive {
                                assert!(
                                    !held.swap(true, Ordering::SeqCst),
                                    "two exclusive runs at once"
                                );
                                tokio::task::yield_now().await;
                                held.store(false, Ordering::SeqCst);
                            }
                            assert!(store.finish_run(lease, &success(task)).await.unwrap());
                        }
                        Claim::Busy(_) => {
                            assert!(exclusive);
                            store
                                .record_skipped(task, Trigger::Schedule, new.scheduled_for, "busy")
                                .await
                                .unwrap();
                        }
                        Claim::Recorded => {}
                        Claim::Early(at) => panic!("early at {at}"),
                    }
                }
            }
            won
        }));
    }
    let mut won = 0;
    for claim in claims {
        won += claim.await.unwrap();
    }
    let store = store("reader").await;
    let mut ran = 0;
    for task in ["solo", "many"] {
        let rows = store.runs(task, 1000).await.unwrap();
        let mut minutes: Vec<i64> = rows
            .iter()
            .map(|r| (r.scheduled_for.unwrap() - base).num_minutes())
            .collect();
        minutes.sort();
        assert_eq!(
            minutes,
            (0..40).collect::<Vec<_>>(),
            "{task}: one row per occurrence"
        );
        ran += rows
            .iter()
            .filter(|r| r.status == RunStatus::Success)
            .count();
    }
    assert_eq!(ran, won);
    let leases: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM housekeeper_leases")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(leases, 0);
}

#[test]
fn a_second_serve_on_one_sqlite_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("hk.db").display());
    let first = housekeeper::store::lock_single_replica(&url)
        .unwrap()
        .expect("a lock for a SQLite file");
    let e = housekeeper::store::lock_single_replica(&url).unwrap_err();
    let message = format!("{e:#}");
    assert!(message.contains("another housekeeper serve"), "{message}");
    assert!(message.contains("PostgreSQL"), "{message}");
    drop(first);
    assert!(
        housekeeper::store::lock_single_replica(&url)
            .unwrap()
            .is_some()
    );
    let pg = "postgres://postgres@127.0.0.1:5432/postgres";
    assert!(
        housekeeper::store::lock_single_replica(pg)
            .unwrap()
            .is_none()
    );
    assert!(
        housekeeper::store::lock_single_replica("sqlite::memory:")
            .unwrap()
            .is_none()
    );
}
