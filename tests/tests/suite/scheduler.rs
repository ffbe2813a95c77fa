//! Scheduler policies on tokio's paused clock, with a fake executor whose
//! runs take virtual time and an in-memory ledger that keeps the store's
//! rules (one row per scheduled occurrence, a run ended once).

use chrono::{DateTime, TimeZone, Utc};
use housekeeper::manifest::{Manifest, Misfire, Overlap, Retries};
use housekeeper::model::{RunResult, RunStatus, TaskInfo, Trigger};
use housekeeper::runtime::{RunRequest, TaskComponent};
use housekeeper::schedule::Schedule;
use housekeeper::scheduler::clock::{Clock, TokioClock};
use housekeeper::scheduler::{Executor, FireOutcome, Ledger, Scheduler, SchedulerConfig, TaskDef};
use housekeeper::store::{
    Claim, Holder, Lease, NewRun, PendingRetry, Reaped, Renewal, RunRecord, TaskSettings,
};
use housekeeper_tests::{component, fixture_path, new_run};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Runs take `duration` of (virtual) time and end with the planned statuses
/// in turn (the last repeats). Tracks concurrency per task and overall.
#[derive(Default)]
struct Fake {
    plans: Mutex<HashMap<String, (Duration, Vec<RunStatus>)>>,
    calls: Mutex<Vec<Call>>,
    running: Mutex<(HashMap<String, usize>, usize)>,
    peaks: Mutex<(HashMap<String, usize>, usize)>,
}

#[derive(Debug, Clone)]
struct Call {
    task: String,
    trigger: Trigger,
    scheduled_for: Option<DateTime<Utc>>,
    /// The manifest's timeout: tells versions of a task apart.
    timeout: Duration,
    at: tokio::time::Instant,
}

struct Running(Arc<Fake>, String);

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self.0.running.lock().unwrap();
        *running.0.get_mut(&self.1).unwrap() -= 1;
        running.1 -= 1;
    }
}

impl Fake {
    fn plan(&self, task: &str, duration: Duration, statuses: &[RunStatus]) {
        self.plans
            .lock()
            .unwrap()
            .insert(task.into(), (duration, statuses.to_vec()));
    }

    fn calls(&self, task: &str) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.task == task)
            .cloned()
            .collect()
    }

    fn peak(&self, task: &str) -> usize {
        self.peaks.lock().unwrap().0.get(task).copied().unwrap_or(0)
    }

    fn global_peak(&self) -> usize {
        self.peaks.lock().unwrap().1
    }
}

struct FakeExecutor(Arc<Fake>);

impl Executor for FakeExecutor {
    fn execute(
        &self,
        component: TaskComponent,
        request: RunRequest,
    ) -> Pin<Box<dyn Future<Output = RunResult> + Send>> {
        let fake = self.0.clone();
        Box::pin(async move {
            let task = request.task_name.clone();
            let attempt = {
                let mut calls = fake.calls.lock().unwrap();
                calls.push(Call {
                    task: task.clone(),
                    trigger: request.trigger,
                    scheduled_for: request.scheduled_for,
                    timeout: request.timeout,
                    at: tokio::time::Instant::now(),
                });
                calls.iter().filter(|c| c.task == task).count() - 1
            };
            let (duration, statuses) = fake
                .plans
                .lock()
                .unwrap()
                .get(&task)
                .cloned()
                .unwrap_or((Duration::from_millis(100), vec![RunStatus::Success]));
            let _guard = {
                let mut running = fake.running.lock().unwrap();
                let mine = running.0.entry(task.clone()).or_default();
                *mine += 1;
                let mine = *mine;
                running.1 += 1;
                let mut peaks = fake.peaks.lock().unwrap();
                let peak = peaks.0.entry(task.clone()).or_default();
                *peak = (*peak).max(mine);
                peaks.1 = peaks.1.max(running.1);
                Running(fake.clone(), task.clone())
            };
            tokio::time::sleep(duration).await;
            let status = statuses[attempt.min(statuses.len() - 1)];
            let now = Utc::now();
            RunResult {
                run_id: request.run_id,
                task_name: task,
                status,
                started_at: now,
                completed_at: now,
                duration_ms: duration.as_millis() as u64,
                summary: Some("fake".into()),
                error: (status != RunStatus::Success).then(|| "fake failure".into()),
                output: String::new(),
                metrics: vec![],
                fuel_used: 1,
                component_hash: component.hash().to_owned(),
                dry_run: request.dry_run,
            }
        })
    }
}

const T0: (i32, u32, u32) = (2026, 6, 1);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(T0.0, T0.1, T0.2, 12, 0, 0).unwrap()
}

/// The scheduler's ledger in memory, on the test's clock. It keeps the
/// store's rules that the policies rely on; `suite::store` tests the
/// store's own SQL for them.
struct Memory {
    clock: TokioClock,
    rows: Mutex<Vec<RunRecord>>,
    /// Running runs' leases: run id → (task, exclusive).
    leases: Mutex<HashMap<i64, (String, bool)>>,
    /// While set, every write fails as it would with the database away.
    down: std::sync::atomic::AtomicBool,
    settings: Mutex<HashMap<String, TaskSettings>>,
    retries: Mutex<Vec<PendingRetry>>,
    /// Each run's attempt number, by id.
    attempts: Mutex<HashMap<i64, u32>>,
}

impl Memory {
    fn new(start: DateTime<Utc>) -> Self {
        Memory {
            clock: TokioClock::starting_at(start),
            rows: Mutex::default(),
            leases: Mutex::default(),
            down: Default::default(),
            settings: Mutex::default(),
            retries: Mutex::default(),
            attempts: Mutex::default(),
        }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    fn reachable(&self) -> anyhow::Result<()> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            anyhow::bail!("the database is unreachable");
        }
        Ok(())
    }

    /// Inserts a row unless it is a scheduled occurrence already recorded.
    fn insert(&self, mut row: RunRecord) -> Option<i64> {
        let mut rows = self.rows.lock().unwrap();
        let taken = row.triggered_by == Trigger::Schedule
            && rows.iter().any(|r| {
                r.task_name == row.task_name
                    && r.triggered_by == Trigger::Schedule
                    && r.scheduled_for == row.scheduled_for
            });
        if taken {
            return None;
        }
        row.id = rows.len() as i64 + 1;
        rows.push(row);
        Some(rows.len() as i64)
    }

    /// Ends a running row; one that already ended keeps what it says.
    fn end(&self, id: i64, edit: impl FnOnce(&mut RunRecord)) {
        self.leases.lock().unwrap().remove(&id);
        let now = self.clock.now();
        let mut rows = self.rows.lock().unwrap();
        let row = &mut rows[id as usize - 1];
        if row.status == RunStatus::Running {
            row.completed_at = Some(now);
            row.duration_ms = Some((now - row.started_at).num_milliseconds());
            edit(row);
        }
    }

    fn runs(&self, task: &str) -> Vec<RunRecord> {
        let rows = self.rows.lock().unwrap();
        rows.iter()
            .filter(|r| r.task_name == task)
            .cloned()
            .collect()
    }

    fn row(&self, task: &str, status: RunStatus, trigger: Trigger) -> RunRecord {
        let now = self.clock.now();
        RunRecord {
            id: 0,
            task_name: task.into(),
            started_at: now,
            completed_at: None,
            status,
            duration_ms: None,
            output: None,
            error: None,
            triggered_by: trigger,
            scheduled_for: None,
            component_hash: None,
            dry_run: false,
            metrics: None,
            fuel_used: None,
            replica: "test".into(),
            heartbeat_at: Some(now),
        }
    }
}

#[async_trait::async_trait]
impl Ledger for Memory {
    fn replica(&self) -> &str {
        "test"
    }

    async fn settings(&self) -> anyhow::Result<HashMap<String, TaskSettings>> {
        Ok(self.settings.lock().unwrap().clone())
    }

    async fn set_enabled(&self, task: &str, enabled: bool) -> anyhow::Result<()> {
        let settings = TaskSettings {
            enabled,
            schedule: None,
            last_modified_at: self.clock.now(),
        };
        self.settings.lock().unwrap().insert(task.into(), settings);
        Ok(())
    }

    async fn interrupt_orphans(
        &self,
        before: DateTime<Utc>,
        retry_in: &(dyn for<'r> Fn(&'r Reaped) -> Option<Duration> + Send + Sync),
    ) -> anyhow::Result<Vec<Reaped>> {
        let running: Vec<RunRecord> = {
            let rows = self.rows.lock().unwrap();
            rows.iter()
                .filter(|r| r.status == RunStatus::Running && r.started_at < before)
                .cloned()
                .collect()
        };
        let mut ended = Vec::new();
        for row in running {
            let mut run = Reaped {
                id: row.id,
                task_name: row.task_name.clone(),
                replica: row.replica.clone(),
                triggered_by: row.triggered_by,
                scheduled_for: row.scheduled_for,
                attempt: self
                    .attempts
                    .lock()
                    .unwrap()
                    .get(&row.id)
                    .copied()
                    .unwrap_or(0),
                dry_run: row.dry_run,
                cancelled: None,
                retry: false,
            };
            if let Some(backoff) = retry_in(&run) {
                run.retry = self.plan_retry(row.id, backoff).await?;
            }
            self.end(row.id, |row| row.status = RunStatus::Interrupted);
            ended.push(run);
        }
        Ok(ended)
    }

    async fn last_scheduled_for(&self, task: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        let rows = self.rows.lock().unwrap();
        Ok(rows
            .iter()
            .filter(|r| r.task_name == task && r.triggered_by == Trigger::Schedule)
            .filter_map(|r| r.scheduled_for)
            .max())
    }

    async fn last_success(&self, task: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        let rows = self.rows.lock().unwrap();
        Ok(rows
            .iter()
            .filter(|r| r.task_name == task && r.status == RunStatus::Success)
            .filter_map(|r| r.completed_at)
            .max())
    }

    async fn begin_run(&self, run: &NewRun<'_>, retry_of: Option<i64>) -> anyhow::Result<Claim> {
        self.reachable()?;
        if let Some(after_run) = retry_of {
            let mut retries = self.retries.lock().unwrap();
            let Some(at) = retries.iter().position(|r| r.after_run == after_run) else {
                return Ok(Claim::Recorded);
            };
            retries.remove(at);
        }
        let busy = run.exclusive
            && self
                .leases
                .lock()
                .unwrap()
                .values()
                .any(|(task, exclusive)| task == run.task_name && *exclusive);
        if busy {
            return Ok(Claim::Busy(Holder {
                run_id: 0,
                replica: "test".into(),
            }));
        }
        let mut row = self.row(run.task_name, RunStatus::Running, run.triggered_by);
        row.scheduled_for = run.scheduled_for;
        row.dry_run = run.dry_run;
        row.component_hash = run.component_hash.map(str::to_owned);
        let Some(id) = self.insert(row) else {
            return Ok(Claim::Recorded);
        };
        self.leases
            .lock()
            .unwrap()
            .insert(id, (run.task_name.to_owned(), run.exclusive));
        self.attempts.lock().unwrap().insert(id, run.attempt);
        Ok(Claim::Won(Lease {
            run_id: id,
            epoch: id,
        }))
    }

    async fn heartbeat(&self, lease: Lease) -> anyhow::Result<Renewal> {
        self.reachable()?;
        let now = self.clock.now();
        let mut rows = self.rows.lock().unwrap();
        let row = &mut rows[lease.run_id as usize - 1];
        if row.status == RunStatus::Running {
            row.heartbeat_at = Some(now);
        }
        Ok(Renewal::Held)
    }

    async fn finish_run(&self, lease: Lease, result: &RunResult) -> anyhow::Result<bool> {
        self.reachable()?;
        self.end(lease.run_id, |row| {
            row.status = result.status;
            row.error = result.error.clone();
            row.output = result.summary.clone();
            row.fuel_used = Some(result.fuel_used as i64);
        });
        Ok(true)
    }

    async fn end_run(&self, lease: Lease, status: RunStatus, reason: &str) -> anyhow::Result<bool> {
        self.reachable()?;
        self.end(lease.run_id, |row| {
            row.status = status;
            row.error = Some(reason.to_owned());
        });
        Ok(true)
    }

    async fn reap(
        &self,
        _retry_in: &(dyn for<'r> Fn(&'r Reaped) -> Option<Duration> + Send + Sync),
    ) -> anyhow::Result<Vec<Reaped>> {
        // One process: no lease here ever expires.
        Ok(vec![])
    }

    async fn plan_retry(&self, run_id: i64, backoff: Duration) -> anyhow::Result<bool> {
        self.reachable()?;
        let row = self.rows.lock().unwrap()[run_id as usize - 1].clone();
        let mut retries = self.retries.lock().unwrap();
        if row.status != RunStatus::Running || retries.iter().any(|r| r.after_run == run_id) {
            return Ok(false);
        }
        retries.push(PendingRetry {
            after_run: run_id,
            task_name: row.task_name,
            scheduled_for: row.scheduled_for,
            attempt: self.attempts.lock().unwrap()[&run_id] + 1,
            dry_run: row.dry_run,
            replica: "test".into(),
            not_before: self.clock.now() + chrono::Duration::from_std(backoff)?,
        });
        Ok(true)
    }

    async fn pending_retries(&self) -> anyhow::Result<Vec<PendingRetry>> {
        self.reachable()?;
        Ok(self.retries.lock().unwrap().clone())
    }

    async fn drop_retry(&self, after_run: i64, skipped: Option<&str>) -> anyhow::Result<bool> {
        self.reachable()?;
        let dropped = {
            let mut retries = self.retries.lock().unwrap();
            let at = retries.iter().position(|r| r.after_run == after_run);
            at.map(|at| retries.remove(at))
        };
        let Some(retry) = dropped else {
            return Ok(false);
        };
        if let Some(reason) = skipped {
            let mut row = self.row(&retry.task_name, RunStatus::Skipped, Trigger::Retry);
            row.error = Some(reason.to_owned());
            self.insert(row);
        }
        Ok(true)
    }

    async fn request_cancel_task(&self, _task: &str, _reason: &str) -> anyhow::Result<()> {
        Ok(())
    }

    async fn request_cancel(&self, _run_id: i64, _reason: &str) -> anyhow::Result<Option<String>> {
        Ok(None)
    }

    async fn db_now(&self) -> anyhow::Result<DateTime<Utc>> {
        Ok(self.clock.now())
    }

    async fn claim_name(
        &self,
        _started_at: DateTime<Utc>,
        _stale: Duration,
    ) -> anyhow::Result<bool> {
        Ok(true)
    }

    async fn replica_leave(&self) -> anyhow::Result<()> {
        Ok(())
    }

    async fn replica_heartbeat(
        &self,
        _started: DateTime<Utc>,
        _offset_ms: i64,
    ) -> anyhow::Result<Option<DateTime<Utc>>> {
        Ok(None)
    }

    async fn record_skipped(
        &self,
        task: &str,
        triggered_by: Trigger,
        scheduled_for: Option<DateTime<Utc>>,
        reason: &str,
    ) -> anyhow::Result<Option<i64>> {
        self.reachable()?;
        let mut row = self.row(task, RunStatus::Skipped, triggered_by);
        row.scheduled_for = scheduled_for;
        row.completed_at = Some(row.started_at);
        row.error = Some(reason.to_owned());
        Ok(self.insert(row))
    }

    async fn prune(&self, _task: &str, _keep_days: u32, _keep_last: u32) -> anyhow::Result<u64> {
        // The tests read every row back; the store's pruning is tested in
        // `suite::store`.
        Ok(0)
    }
}

struct Harness {
    fake: Arc<Fake>,
    ledger: Arc<Memory>,
    scheduler: Scheduler,
}

fn def(name: &str, schedule: Option<&str>, edit: impl FnOnce(&mut Manifest)) -> TaskDef {
    let mut manifest = Manifest::implicit(name, "noop.wasm");
    manifest.schedule = schedule.map(|s| Schedule::parse(s).unwrap());
    edit(&mut manifest);
    TaskDef {
        manifest,
        component: component(&fixture_path("noop")),
        info: TaskInfo {
            name: name.into(),
            version: "0".into(),
            description: String::new(),
            default_schedule: None,
            run_on_startup: false,
            capabilities: vec![],
        },
    }
}

async fn harness_with(config: SchedulerConfig, start: DateTime<Utc>) -> Harness {
    tokio::time::pause();
    let fake = Arc::new(Fake::default());
    let ledger = Arc::new(Memory::new(start));
    let scheduler = Scheduler::with_ledger(
        Arc::new(FakeExecutor(fake.clone())),
        ledger.clone(),
        Arc::new(TokioClock::starting_at(start)),
        config,
    );
    Harness {
        fake,
        ledger,
        scheduler,
    }
}

async fn harness() -> Harness {
    harness_with(SchedulerConfig::default(), t0()).await
}

async fn start(h: &Harness, defs: Vec<TaskDef>) {
    h.scheduler.register(defs).await.unwrap();
    h.scheduler.start().await.unwrap();
}

async fn wait(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}

/// Claims `run` in the harness's ledger, as another process would; the
/// claim must be won.
async fn claimed(h: &Harness, run: NewRun<'_>) -> Lease {
    h.ledger
        .begin_run(&run, None)
        .await
        .unwrap()
        .lease()
        .expect("the claim is won")
}

/// The claim of `task`'s scheduled occurrence at `at`, won.
async fn claimed_fire(h: &Harness, task: &str, at: DateTime<Utc>) -> Lease {
    claimed(
        h,
        NewRun {
            scheduled_for: Some(at),
            exclusive: true,
            ..new_run(task, Trigger::Schedule)
        },
    )
    .await
}

async fn rows(h: &Harness, task: &str) -> Vec<RunRecord> {
    let mut rows = h.ledger.runs(task);
    rows.sort_by_key(|r| r.id);
    rows
}

fn with_status(rows: &[RunRecord], status: RunStatus) -> Vec<&RunRecord> {
    rows.iter().filter(|r| r.status == status).collect()
}

#[tokio::test]
async fn a_seconds_schedule_fires_every_second() {
    let h = harness().await;
    start(&h, vec![def("tick", Some("* * * * * *"), |_| {})]).await;
    wait(10.5).await;
    h.scheduler.shutdown(Duration::from_secs(5)).await;

    let calls = h.fake.calls("tick");
    assert!(calls.len() >= 8, "{} runs in 10 s", calls.len());
    let fires: Vec<_> = calls.iter().map(|c| c.scheduled_for.unwrap()).collect();
    for pair in fires.windows(2) {
        assert_eq!(pair[1] - pair[0], chrono::Duration::seconds(1), "{fires:?}");
    }
    assert_eq!(fires[0], t0() + chrono::Duration::seconds(1));
    let rows = rows(&h, "tick").await;
    assert_eq!(with_status(&rows, RunStatus::Success).len(), calls.len());
    assert!(rows.iter().all(|r| r.triggered_by == Trigger::Schedule));
}

#[tokio::test]
async fn overlap_skip_records_the_skipped_fires() {
    let h = harness().await;
    h.fake
        .plan("slow", Duration::from_millis(2500), &[RunStatus::Success]);
    start(
        &h,
        vec![def("slow", Some("* * * * * *"), |m| {
            m.overlap = Overlap::Skip
        })],
    )
    .await;
    wait(10.5).await;
    h.scheduler.shutdown(Duration::from_secs(5)).await;

    assert_eq!(h.fake.peak("slow"), 1);
    let rows = rows(&h, "slow").await;
    let skipped = with_status(&rows, RunStatus::Skipped);
    assert!(skipped.len() >= 4, "{rows:#?}");
    assert!(
        skipped[0]
            .error
            .as_deref()
            .unwrap()
            .contains("overlap = skip")
    );
    assert!(with_status(&rows, RunStatus::Success).len() >= 2);
}

#[tokio::test]
async fn overlap_allow_runs_side_by_side() {
    let h = harness().await;
    h.fake
        .plan("wide", Duration::from_millis(2500), &[RunStatus::Success]);
    start(
        &h,
        vec![def("wide", Some("* * * * * *"), |m| {
            m.overlap = Overlap::Allow
        })],
    )
    .await;
    wait(6.5).await;
    h.scheduler.shutdown(Duration::from_secs(5)).await;
    assert!(h.fake.peak("wide") >= 2);
    assert!(with_status(&rows(&h, "wide").await, RunStatus::Skipped).is_empty());
}

#[tokio::test]
async fn overlap_queue_holds_at_most_one_waiting_run() {
    let h = harness().await;
    h.fake
        .plan("q", Duration::from_millis(2500), &[RunStatus::Success]);
    start(
        &h,
        vec![def("q", Some("* * * * * *"), |m| {
            m.overlap = Overlap::Queue
        })],
    )
    .await;
    wait(10.5).await;
    h.scheduler.shutdown(Duration::from_secs(10)).await;

    assert_eq!(h.fake.peak("q"), 1);
    let rows = rows(&h, "q").await;
    let skipped = with_status(&rows, RunStatus::Skipped);
    assert!(!skipped.is_empty());
    assert!(
        skipped
            .iter()
            .all(|r| r.error.as_deref().unwrap().contains("already queued"))
    );
    // Queued runs start as soon as the previous one ends: back to back.
    let calls = h.fake.calls("q");
    assert!(calls.len() >= 3);
    for pair in calls.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(2500), "{gap:?}");
    }
}

#[tokio::test]
async fn overlap_replace_cancels_the_running_one() {
    let h = harness().await;
    h.fake
        .plan("r", Duration::from_secs(30), &[RunStatus::Success]);
    start(
        &h,
        vec![def("r", Some("*/5 * * * * *"), |m| {
            m.overlap = Overlap::Replace
        })],
    )
    .await;
    wait(16.0).await;
    h.scheduler.shutdown(Duration::from_secs(1)).await;

    assert_eq!(h.fake.peak("r"), 1);
    let rows = rows(&h, "r").await;
    let cancelled = with_status(&rows, RunStatus::Cancelled);
    assert!(cancelled.len() >= 2, "{rows:#?}");
    assert!(cancelled[0].error.as_deref().unwrap().contains("replaced"));
    assert_eq!(
        with_status(&rows, RunStatus::Interrupted).len(),
        1,
        "the last one is cut by shutdown"
    );
}

#[tokio::test]
async fn retries_back_off_exponentially_then_stop() {
    let h = harness().await;
    h.fake.plan(
        "flaky",
        Duration::from_millis(10),
        &[RunStatus::Error, RunStatus::Trapped, RunStatus::Success],
    );
    start(
        &h,
        vec![def("flaky", Some("0 0 * * * *"), |m| {
            m.retries = Retries {
                max: 3,
                backoff: Duration::from_secs(30),
            }
        })],
    )
    .await;
    wait(3600.0 + 200.0).await;
    h.scheduler.shutdown(Duration::from_secs(5)).await;

    let calls = h.fake.calls("flaky");
    assert_eq!(calls.len(), 3, "stops after the first success");
    assert_eq!(calls[0].trigger, Trigger::Schedule);
    assert_eq!(calls[1].trigger, Trigger::Retry);
    assert_eq!(calls[2].trigger, Trigger::Retry);
    assert!(
        calls
            .iter()
            .all(|c| c.scheduled_for == calls[0].scheduled_for)
    );
    assert!(calls[1].at - calls[0].at >= Duration::from_secs(30));
    assert!(calls[2].at - calls[1].at >= Duration::from_secs(60));
    let statuses: Vec<_> = rows(&h, "flaky").await.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [RunStatus::Error, RunStatus::Trapped, RunStatus::Success]
    );
}

/// A run a previous process of this replica left `running` is recorded
/// interrupted at start, and retried as its task's policy says; a run this
/// process starts is not taken for one.
#[tokio::test]
async fn a_run_left_by_a_previous_process_is_retried() {
    let h = harness().await;
    h.fake
        .plan("flaky", Duration::from_millis(10), &[RunStatus::Success]);
    let at = t0() - chrono::Duration::minutes(1);
    let left = claimed_fire(&h, "flaky", at).await;
    wait(1.0).await;
    start(
        &h,
        vec![def("flaky", None, |m| {
            m.retries = Retries {
                max: 1,
                backoff: Duration::from_secs(5),
            }
        })],
    )
    .await;
    wait(30.0).await;
    h.scheduler.shutdown(Duration::from_secs(5)).await;
    let rows = rows(&h, "flaky").await;
    assert_eq!(rows[0].id, left.run_id);
    assert_eq!(rows[0].status, RunStatus::Interrupted, "{rows:#?}");
    let retries: Vec<_> = rows
        .iter()
        .filter(|r| r.triggered_by == Trigger::Retry)
        .collect();
    assert_eq!(retries.len(), 1, "{rows:#?}");
    assert_eq!(retries[0].status, RunStatus::Success);
    assert_eq!(retries[0].scheduled_for, Some(at));
}

/// A task removed while its retry waits out its backoff is not run again:
/// the retry is recorded as not run, with why.
#[tokio::test]
async fn a_retry_of_a_removed_task_is_not_run() {
    let h = harness().await;
    h.fake.plan(
        "flaky",
        Duration::from_millis(10),
        &[RunStatus::Error, RunStatus::Success],
    );
    let flaky = || {
        def("flaky", None, |m| {
            m.retries = Retries {
                max: 1,
                backoff: Duration::from_secs(30),
            }
        })
    };
    start(&h, vec![flaky()]).await;
    assert_eq!(
        h.scheduler.trigger("flaky", false),
        Ok(FireOutcome::Started)
    );
    wait(5.0).await;
    h.scheduler
        .apply(vec![], &Default::default())
        .await
        .unwrap();
    wait(60.0).await;
    h.scheduler.shutdown(Duration::from_secs(5)).await;
    assert_eq!(h.fake.calls("flaky").len(), 1);
    let rows = rows(&h, "flaky").await;
    let retry: Vec<_> = rows
        .iter()
        .filter(|r| r.triggered_by == Trigger::Retry)
        .collect();
    assert_eq!(retry.len(), 1, "{rows:#?}");
    assert_eq!(retry[0].status, RunStatus::Skipped);
    assert!(
        retry[0].error.as_deref().unwrap().contains("removed"),
        "{rows:#?}"
    );
    assert!(h.ledger.pending_retries().await.unwrap().is_empty());
}

/// A fire that meets a failed run's retry waiting out its backoff: under
/// `skip` it is skipped, saying so; under `replace` it replaces the retry,
/// which is recorded as not run, with why.
#[tokio::test]
async fn a_fire_during_a_retry_s_backoff_is_skipped_and_says_so() {
    fire_during_a_retry_s_backoff(Overlap::Skip).await
}

#[tokio::test]
async fn a_fire_during_a_retry_s_backoff_replaces_it_and_records_it_not_run() {
    fire_during_a_retry_s_backoff(Overlap::Replace).await
}

async fn fire_during_a_retry_s_backoff(overlap: Overlap) {
    let h = harness().await;
    h.fake.plan(
        "flaky",
        Duration::from_millis(10),
        &[RunStatus::Error, RunStatus::Success],
    );
    start(
        &h,
        vec![def("flaky", None, |m| {
            m.overlap = overlap;
            m.retries = Retries {
                max: 1,
                backoff: Duration::from_secs(30),
            }
        })],
    )
    .await;
    assert_eq!(
        h.scheduler.trigger("flaky", false),
        Ok(FireOutcome::Started)
    );
    wait(5.0).await;
    assert_eq!(h.ledger.pending_retries().await.unwrap().len(), 1);
    let outcome = h.scheduler.trigger("flaky", false).unwrap();
    wait(60.0).await;
    h.scheduler.shutdown(Duration::from_secs(5)).await;
    let rows = rows(&h, "flaky").await;
    match overlap {
        Overlap::Skip => {
            let FireOutcome::Skipped(reason) = outcome else {
                panic!("{outcome:?}")
            };
            assert!(reason.contains("waiting out its backoff"), "{reason}");
            assert!(
                rows.iter()
                    .any(|r| r.triggered_by == Trigger::Retry && r.status == RunStatus::Success),
                "{rows:#?}"
            );
        }
        _ => {
            assert_eq!(outcome, FireOutcome::Started);
            let retry: Vec<_> = rows
                .iter()
                .filter(|r| r.triggered_by == Trigger::Retry)
                .collect();
            assert_eq!(retry.len(), 1, "{rows:#?}");
            assert_eq!(retry[0].status, RunStatus::Skipped);
            let why = retry[0].error.as_deref().unwrap();
            assert!(
                why.contains("replaced by a newer run") && why.contains("backoff"),
                "{why}"
            );
        }
    }
    assert!(h.ledger.pending_retries().await.unwrap().is_empty());
}

#[tokio::test]
async fn retries_stop_when_exhausted() {
    let h = harness().await;
    h.fake
        .plan("broken", Duration::from_millis(10), &[RunStatus::Error]);
    start(
        &h,
        vec![def("broken", Some("0 0 * * * *"), |m| {
            m.retries = Retries {
                max: 2,
                backoff: Duration::from_secs(1),
            }
        })],
    )
    .await;
    wait(3600.0 + 30.0).await;
    h.scheduler.shutdown(Duration::from_secs(5)).await;
    assert_eq!(h.fake.calls("broken").len(), 3);
}

#[tokio::test]
async fn max_concurrent_runs_is_global() {
    let config = SchedulerConfig {
        max_concurrent_runs: 2,
        ..SchedulerConfig::default()
    };
    let h = harness_with(config, t0()).await;
    let mut defs = Vec::new();
    for i in 0..6 {
        let name = format!("t{i}");
        h.fake
            .plan(&name, Duration::from_secs(3), &[RunStatus::Success]);
        defs.push(def(&name, Some("*/10 * * * * *"), |_| {}));
    }
    start(&h, defs).await;
    wait(25.0).await;
    h.scheduler.shutdown(Duration::from_secs(30)).await;
    // Everyone ran eventually.
    for i in 0..6 {
        assert!(!h.fake.calls(&format!("t{i}")).is_empty());
    }
    assert_eq!(h.fake.global_peak(), 2);
}

/// An occurrence skipped here only because this replica has no free run
/// slot for the task's previous fire is left to other replicas for a
/// heartbeat: one that claims it runs it, and no skip is recorded over it.
/// Nobody claims the next one: it is recorded skipped, late.
#[tokio::test]
async fn a_fire_skipped_for_want_of_a_local_slot_is_left_to_other_replicas() {
    let config = SchedulerConfig {
        max_concurrent_runs: 1,
        ..SchedulerConfig::default()
    };
    let h = harness_with(config, t0()).await;
    h.fake
        .plan("hog", Duration::from_secs(60), &[RunStatus::Success]);
    h.fake
        .plan("tick", Duration::from_millis(100), &[RunStatus::Success]);
    start(
        &h,
        vec![
            def("hog", None, |_| {}),
            def("tick", Some("* * * * * *"), |m| m.overlap = Overlap::Skip),
        ],
    )
    .await;
    assert_eq!(h.scheduler.trigger("hog", false), Ok(FireOutcome::Started));
    // tick's 12:00:01 fire waits for the one slot; at 12:00:02 another
    // replica claims the occurrence.
    wait(1.5).await;
    let elsewhere = t0() + chrono::Duration::seconds(2);
    let lease = claimed(
        &h,
        NewRun {
            scheduled_for: Some(elsewhere),

            ..new_run("tick", Trigger::Schedule)
        },
    )
    .await;
    wait(1.0).await;
    assert!(
        rows(&h, "tick")
            .await
            .iter()
            .all(|r| r.status != RunStatus::Skipped),
        "no skip is recorded before a heartbeat has passed"
    );
    wait(10.0).await;
    let rows = rows(&h, "tick").await;
    let at = |s: i64| {
        rows.iter()
            .filter(|r| r.scheduled_for == Some(t0() + chrono::Duration::seconds(s)))
            .collect::<Vec<_>>()
    };
    let claimed = at(2);
    assert_eq!(claimed.len(), 1, "{rows:#?}");
    assert_eq!(claimed[0].id, lease.run_id);
    assert_eq!(claimed[0].status, RunStatus::Running);
    let skipped = at(3);
    assert_eq!(skipped.len(), 1, "{rows:#?}");
    assert_eq!(skipped[0].status, RunStatus::Skipped);
    assert!(
        skipped[0]
            .error
            .as_deref()
            .unwrap()
            .contains("still starting")
    );
    h.scheduler.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn misfire_run_once_runs_the_latest_missed_fire() {
    let h = harness().await;
    // The last recorded occurrence was five hours ago.
    let last = t0() - chrono::Duration::hours(5);
    let lease = claimed_fire(&h, "hourly", last).await;
    h.ledger
        .end_run(lease, RunStatus::Success, "")
        .await
        .unwrap();
    start(
        &h,
        vec![def("hourly", Some("0 * * * *"), |m| {
            m.misfire = Misfire::RunOnce
        })],
    )
    .await;
    wait(60.0).await;
    let calls = h.fake.calls("hourly");
    assert_eq!(calls.len(), 1, "missed fires coalesce into one");
    assert_eq!(calls[0].scheduled_for, Some(t0()));
    h.scheduler.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn misfire_skip_records_the_missed_fire_and_waits() {
    let h = harness().await;
    let last = t0() - chrono::Duration::minutes(150);
    h.ledger
        .record_skipped("hourly", Trigger::Schedule, Some(last), "earlier")
        .await
        .unwrap();
    start(
        &h,
        vec![def("hourly", Some("30 * * * *"), |m| {
            m.misfire = Misfire::Skip
        })],
    )
    .await;
    wait(60.0).await;
    assert!(h.fake.calls("hourly").is_empty());
    let rows = rows(&h, "hourly").await;
    let skipped = rows.last().unwrap();
    assert_eq!(
        skipped.scheduled_for,
        Some(t0() - chrono::Duration::minutes(30))
    );
    assert!(skipped.error.as_deref().unwrap().contains("misfire = skip"));
    h.scheduler.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_new_task_has_no_misfire() {
    let h = harness().await;
    start(
        &h,
        vec![def("fresh", Some("0 * * * *"), |m| {
            m.misfire = Misfire::RunOnce
        })],
    )
    .await;
    wait(60.0).await;
    assert!(h.fake.calls("fresh").is_empty());
    h.scheduler.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn startup_runs_wait_for_their_delay() {
    let h = harness().await;
    start(
        &h,
        vec![def("boot", None, |m| {
            m.run_on_startup = Some(true);
            m.startup_delay = Duration::from_secs(5);
        })],
    )
    .await;
    wait(4.0).await;
    assert!(h.fake.calls("boot").is_empty());
    wait(30.0).await;
    let calls = h.fake.calls("boot");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].trigger, Trigger::Startup);
    h.scheduler.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn globally_disabled_fires_nothing_but_manual_runs_work() {
    let config = SchedulerConfig {
        enabled: false,
        ..SchedulerConfig::default()
    };
    let h = harness_with(config, t0()).await;
    start(
        &h,
        vec![def("t", Some("* * * * * *"), |m| {
            m.run_on_startup = Some(true)
        })],
    )
    .await;
    wait(10.0).await;
    assert!(h.fake.calls("t").is_empty());
    assert_eq!(h.scheduler.trigger("t", false), Ok(FireOutcome::Started));
    wait(30.0).await;
    assert_eq!(h.fake.calls("t").len(), 1);
    assert_eq!(h.fake.calls("t")[0].trigger, Trigger::Manual);
    h.scheduler.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_disabled_task_does_not_fire_until_enabled_and_the_toggle_persists() {
    let h = harness().await;
    h.scheduler
        .register(vec![def("t", Some("0 * * * *"), |_| {})])
        .await
        .unwrap();
    h.scheduler.set_enabled("t", false).await.unwrap();
    h.scheduler.start().await.unwrap();
    wait(3700.0).await;
    assert!(
        h.fake.calls("t").is_empty(),
        "a disabled task does not fire"
    );
    // A manual run still works and does not move the next fire.
    let next = h.scheduler.tasks()[0].next_fire;
    assert!(next.is_some());
    assert_eq!(h.scheduler.trigger("t", true), Ok(FireOutcome::Started));
    while h.fake.calls("t").is_empty() {
        wait(0.5).await;
    }
    assert_eq!(h.fake.calls("t").len(), 1);
    assert_eq!(h.scheduler.tasks()[0].next_fire, next);
    assert!(h.scheduler.set_enabled("nope", false).await.is_err());
    h.scheduler.shutdown(Duration::from_secs(1)).await;

    // A new scheduler on the same database sees the task disabled.
    let again = Scheduler::with_ledger(
        Arc::new(FakeExecutor(h.fake.clone())),
        h.ledger.clone(),
        Arc::new(TokioClock::starting_at(t0())),
        SchedulerConfig::default(),
    );
    again
        .register(vec![def("t", Some("* * * * * *"), |_| {})])
        .await
        .unwrap();
    assert!(!again.tasks()[0].enabled);
    again.set_enabled("t", true).await.unwrap();
    again.start().await.unwrap();
    wait(10.0).await;
    assert!(h.fake.calls("t").len() >= 3);
    again.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn manual_trigger_obeys_overlap_and_names_unknown_tasks() {
    let h = harness().await;
    h.fake
        .plan("t", Duration::from_secs(10), &[RunStatus::Success]);
    start(&h, vec![def("t", None, |m| m.overlap = Overlap::Skip)]).await;
    assert_eq!(h.scheduler.trigger("t", false), Ok(FireOutcome::Started));
    match h.scheduler.trigger("t", false) {
        Ok(FireOutcome::Skipped(reason)) => {
            assert!(reason.contains("still starting"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    wait(1.0).await;
    match h.scheduler.trigger("t", false) {
        Ok(FireOutcome::Skipped(reason)) => assert!(reason.contains("still running"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(h.scheduler.trigger("missing", false).is_err());
    h.scheduler.shutdown(Duration::from_secs(30)).await;
}

#[tokio::test]
async fn shutdown_waits_for_the_grace_period_then_interrupts() {
    let h = harness().await;
    h.fake
        .plan("short", Duration::from_secs(2), &[RunStatus::Success]);
    h.fake
        .plan("long", Duration::from_secs(600), &[RunStatus::Success]);
    start(
        &h,
        vec![def("short", None, |_| {}), def("long", None, |_| {})],
    )
    .await;
    h.scheduler.trigger("short", false).unwrap();
    h.scheduler.trigger("long", false).unwrap();
    wait(0.5).await;
    let begun = tokio::time::Instant::now();
    h.scheduler.shutdown(Duration::from_secs(30)).await;
    let took = begun.elapsed();
    assert!(
        took >= Duration::from_secs(30) && took < Duration::from_secs(60),
        "{took:?}"
    );
    assert_eq!(rows(&h, "short").await[0].status, RunStatus::Success);
    let long = &rows(&h, "long").await[0];
    assert_eq!(long.status, RunStatus::Interrupted);
    assert!(long.error.as_deref().unwrap().contains("shut down"));
}

#[tokio::test]
async fn a_running_row_gets_heartbeats() {
    let config = SchedulerConfig {
        heartbeat_interval: Duration::from_secs(1),
        ..SchedulerConfig::default()
    };
    let h = harness_with(config, t0()).await;
    h.fake
        .plan("slow", Duration::from_secs(10), &[RunStatus::Success]);
    start(&h, vec![def("slow", None, |_| {})]).await;
    h.scheduler.trigger("slow", false).unwrap();
    wait(5.0).await;
    let row = &rows(&h, "slow").await[0];
    assert_eq!(row.status, RunStatus::Running);
    assert!(row.heartbeat_at.unwrap() > row.started_at, "{row:#?}");
    h.scheduler.shutdown(Duration::from_secs(30)).await;
    assert_eq!(rows(&h, "slow").await[0].status, RunStatus::Success);
}

#[tokio::test]
async fn a_restart_or_reload_in_the_repeated_hour_fires_no_occurrence_twice() {
    // 2026-10-25 in Berlin: at 03:00 CEST (01:00 UTC) the clocks go back to
    // 02:00 CET, so 02:00 to 03:00 comes twice. The service runs from 02:20
    // CEST, restarts at 02:05 CET and reloads at 02:20 CET.
    let at = |h, m| Utc.with_ymd_and_hms(2026, 10, 25, h, m, 0).unwrap();
    let tasks = |startup_delay| {
        let berlin = |m: &mut Manifest, misfire| {
            m.timezone = Some(chrono_tz::Europe::Berlin);
            m.misfire = misfire;
            m.startup_delay = startup_delay;
        };
        vec![
            def("quarterly", Some("*/15 * * * *"), |m| {
                berlin(m, Misfire::RunOnce)
            }),
            def("daily", Some("30 2 * * *"), |m| berlin(m, Misfire::Skip)),
        ]
    };
    let next_fires = |scheduler: &Scheduler| -> Vec<_> {
        scheduler
            .tasks()
            .into_iter()
            .map(|t| (t.name, t.next_fire))
            .collect()
    };
    let ahead = vec![
        (
            "daily".to_owned(),
            Some(Utc.with_ymd_and_hms(2026, 10, 26, 1, 30, 0).unwrap()),
        ),
        ("quarterly".to_owned(), Some(at(2, 0))),
    ];

    let h = harness_with(SchedulerConfig::default(), at(0, 20)).await;
    start(&h, tasks(Duration::ZERO)).await;
    wait(45.0 * 60.0).await;
    h.scheduler.shutdown(Duration::from_secs(5)).await;

    let again = Scheduler::with_ledger(
        Arc::new(FakeExecutor(h.fake.clone())),
        h.ledger.clone(),
        Arc::new(TokioClock::starting_at(at(1, 5))),
        SchedulerConfig::default(),
    );
    again.register(tasks(Duration::ZERO)).await.unwrap();
    again.start().await.unwrap();
    assert_eq!(next_fires(&again), ahead, "after the restart");
    wait(15.0 * 60.0).await;
    let (_, replaced, _) = again
        .apply(tasks(Duration::from_secs(1)), &Default::default())
        .await
        .unwrap();
    assert_eq!(replaced, ["quarterly", "daily"]);
    assert_eq!(next_fires(&again), ahead, "after the reload");
    wait(50.0 * 60.0).await;
    again.shutdown(Duration::from_secs(5)).await;

    let scheduled = |task| -> Vec<_> {
        h.fake
            .calls(task)
            .iter()
            .map(|c| c.scheduled_for.unwrap())
            .collect()
    };
    // 02:30 and 02:45 CEST, then 03:00 CET: none of 02:00 to 02:45 CET.
    assert_eq!(scheduled("quarterly"), [at(0, 30), at(0, 45), at(2, 0)]);
    assert_eq!(scheduled("daily"), [at(0, 30)]);
    for task in ["quarterly", "daily"] {
        let rows = rows(&h, task).await;
        assert!(
            rows.iter().all(|r| r.status == RunStatus::Success),
            "{rows:#?}"
        );
    }
}

// Hot reload: `Scheduler::apply` brings the registered tasks in line with
// what the tasks directory holds now.

/// The scheduled fires `task` ran, as offsets from `t0()` in seconds.
fn fired_at(h: &Harness, task: &str) -> Vec<i64> {
    h.fake
        .calls(task)
        .iter()
        .filter_map(|c| c.scheduled_for)
        .map(|t| (t - t0()).num_seconds())
        .collect()
}

fn applied(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[tokio::test]
async fn apply_adds_a_task_that_then_fires_on_its_schedule() {
    let h = harness().await;
    start(&h, vec![def("old", None, |_| {})]).await;
    wait(5.5).await;
    let changes = h
        .scheduler
        .apply(
            vec![
                def("old", None, |_| {}),
                def("new", Some("*/2 * * * * *"), |_| {}),
            ],
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(changes, (applied(&["new"]), vec![], vec![]));
    wait(5.0).await;
    h.scheduler.shutdown(Duration::from_secs(5)).await;
    // From the moment it was added, not from the start: no catch-up of the
    // fires before it existed.
    assert_eq!(fired_at(&h, "new"), [6, 8, 10]);
    assert!(h.fake.calls("old").is_empty());
}

#[tokio::test]
async fn apply_with_nothing_changed_replaces_nothing_and_fires_nothing_twice() {
    let h = harness().await;
    let tasks = || vec![def("tick", Some("* * * * * *"), |_| {})];
    start(&h, tasks()).await;
    for _ in 0..5 {
        wait(1.0).await;
        let changes = h
            .scheduler
            .apply(tasks(), &Default::default())
            .await
            .unwrap();
        assert_eq!(changes, (vec![], vec![], vec![]));
    }
    wait(0.5).await;
    h.scheduler.shutdown(Duration::from_secs(5)).await;
    assert_eq!(fired_at(&h, "tick"), [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn apply_removes_a_task_but_lets_its_running_run_finish() {
    let h = harness().await;
    h.fake
        .plan("gone", Duration::from_secs(3), &[RunStatus::Success]);
    start(
        &h,
        vec![
            def("gone", Some("*/10 * * * * *"), |_| {}),
            def("stays", None, |_| {}),
        ],
    )
    .await;
    wait(11.0).await;
    let changes = h
        .scheduler
        .apply(vec![def("stays", None, |_| {})], &Default::default())
        .await
        .unwrap();
    assert_eq!(changes, (vec![], vec![], applied(&["gone"])));
    assert_eq!(
        h.scheduler
            .tasks()
            .iter()
            .map(|t| t.name.clone())
            .collect::<Vec<_>>(),
        ["stays"]
    );
    assert!(h.scheduler.trigger("gone", false).is_err());
    wait(60.0).await;
    h.scheduler.shutdown(Duration::from_secs(5)).await;
    assert_eq!(fired_at(&h, "gone"), [10], "no fire after the removal");
    let rows = rows(&h, "gone").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, RunStatus::Success, "{rows:#?}");
}

#[tokio::test]
async fn apply_keeps_a_task_whose_file_failed_to_load() {
    let h = harness().await;
    start(&h, vec![def("broken", Some("*/10 * * * * *"), |_| {})]).await;
    let keep = ["broken".to_owned()].into_iter().collect();
    let changes = h.scheduler.apply(vec![], &keep).await.unwrap();
    assert_eq!(changes, (vec![], vec![], vec![]));
    wait(25.0).await;
    h.scheduler.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        fired_at(&h, "broken"),
        [10, 20],
        "the working version runs on"
    );
}

#[tokio::test]
async fn apply_replaces_a_changed_task_and_the_run_in_progress_finishes_on_its_version() {
    let h = harness().await;
    h.fake
        .plan("t", Duration::from_secs(8), &[RunStatus::Success]);
    let version = |schedule: &str, timeout: u64| {
        let schedule = schedule.to_owned();
        vec![def("t", Some(&schedule), move |m| {
            m.timeout = Duration::from_secs(timeout);
            m.overlap = Overlap::Skip;
        })]
    };
    start(&h, version("*/10 * * * * *", 100)).await;
    wait(12.0).await;
    // Mid-run, the schedule and the timeout change.
    let changes = h
        .scheduler
        .apply(version("*/15 * * * * *", 200), &Default::default())
        .await
        .unwrap();
    assert_eq!(changes, (vec![], applied(&["t"]), vec![]));
    let view = &h.scheduler.tasks()[0];
    assert_eq!(view.schedule.as_deref(), Some("*/15 * * * * *"));
    assert_eq!(view.running, 1, "the run in progress is still counted");
    assert_eq!(view.next_fire, Some(t0() + chrono::Duration::seconds(15)));
    // The new version's first fire comes while the old run is still going:
    // overlap holds across the replacement.
    wait(4.0).await;
    assert_eq!(h.fake.calls("t").len(), 1);
    wait(30.0).await;
    h.scheduler.shutdown(Duration::from_secs(30)).await;

    let calls = h.fake.calls("t");
    let seen: Vec<(i64, u64)> = calls
        .iter()
        .map(|c| {
            let at = (c.scheduled_for.unwrap() - t0()).num_seconds();
            (at, c.timeout.as_secs())
        })
        .collect();
    assert_eq!(seen, [(10, 100), (30, 200), (45, 200)]);
    let rows = rows(&h, "t").await;
    let skipped: Vec<_> = with_status(&rows, RunStatus::Skipped)
        .iter()
        .map(|r| (r.scheduled_for.unwrap() - t0()).num_seconds())
        .collect();
    assert_eq!(skipped, [15], "{rows:#?}");
    assert_eq!(with_status(&rows, RunStatus::Success).len(), 3);
}

#[tokio::test]
async fn apply_keeps_a_persisted_toggle_and_a_queued_run() {
    let h = harness().await;
    h.fake
        .plan("t", Duration::from_secs(10), &[RunStatus::Success]);
    let version = |timeout: u64| {
        vec![def("t", Some("0 * * * *"), move |m| {
            m.timeout = Duration::from_secs(timeout);
            m.overlap = Overlap::Queue;
        })]
    };
    start(&h, version(100)).await;
    h.scheduler.set_enabled("t", false).await.unwrap();
    assert_eq!(h.scheduler.trigger("t", false), Ok(FireOutcome::Started));
    assert_eq!(h.scheduler.trigger("t", false), Ok(FireOutcome::Queued));
    wait(1.0).await;
    let changes = h
        .scheduler
        .apply(version(200), &Default::default())
        .await
        .unwrap();
    assert_eq!(changes.1, ["t"]);
    assert!(
        !h.scheduler.tasks()[0].enabled,
        "the toggle survives a reload"
    );
    wait(3700.0).await;
    h.scheduler.shutdown(Duration::from_secs(5)).await;
    let calls = h.fake.calls("t");
    assert_eq!(
        calls.len(),
        2,
        "the queued run ran, the schedule did not fire"
    );
    assert!(calls.iter().all(|c| c.trigger == Trigger::Manual));
    // The queued run starts after the reload, on the new version.
    assert_eq!(calls[1].timeout, Duration::from_secs(200));
}

#[tokio::test]
async fn apply_before_start_registers_without_firing() {
    let h = harness().await;
    let changes = h
        .scheduler
        .apply(
            vec![def("early", Some("* * * * * *"), |_| {})],
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(changes.0, ["early"]);
    wait(5.0).await;
    assert!(
        h.fake.calls("early").is_empty(),
        "nothing fires before start"
    );
    h.scheduler.start().await.unwrap();
    wait(2.5).await;
    h.scheduler.shutdown(Duration::from_secs(5)).await;
    assert_eq!(fired_at(&h, "early"), [6, 7]);
}

#[tokio::test]
async fn a_database_that_goes_away_delays_what_is_recorded_but_loses_nothing() {
    let h = harness().await;
    h.fake
        .plan("t", Duration::from_secs(5), &[RunStatus::Success]);
    start(
        &h,
        vec![def("t", Some("*/10 * * * * *"), |m| {
            m.overlap = Overlap::Skip
        })],
    )
    .await;
    // The run of :10 is under way when the database goes, for half a minute.
    wait(12.0).await;
    h.ledger.set_down(true);
    wait(30.0).await;
    assert!(rows(&h, "t").await[0].status == RunStatus::Running);
    h.ledger.set_down(false);
    wait(47.5).await;
    h.scheduler.shutdown(Duration::from_secs(30)).await;

    let rows = rows(&h, "t").await;
    let mut seen: Vec<(i64, RunStatus)> = rows
        .iter()
        .map(|r| ((r.scheduled_for.unwrap() - t0()).num_seconds(), r.status))
        .collect();
    seen.sort_by_key(|(at, _)| *at);
    use RunStatus::{Skipped, Success};
    // :10 ran and is recorded once the database is back; the fires that
    // came meanwhile are recorded skipped (the run still held the task);
    // then the schedule runs on. No occurrence is without its row.
    assert_eq!(
        seen,
        [
            (10, Success),
            (20, Skipped),
            (30, Skipped),
            (40, Skipped),
            (50, Success),
            (60, Success),
            (70, Success),
            (80, Success),
        ],
        "{rows:#?}"
    );
}

/// A replica starting just after an occurrence, while a live replica may
/// be claiming it, claims it like any fire rather than recording it missed.
#[tokio::test]
async fn an_occurrence_of_the_last_seconds_is_claimed_not_recorded_missed() {
    recent_occurrence_at_start(false).await;
}

#[tokio::test]
async fn an_occurrence_of_the_last_seconds_claimed_elsewhere_is_left_to_its_replica() {
    recent_occurrence_at_start(true).await;
}

async fn recent_occurrence_at_start(claimed_elsewhere: bool) {
    {
        let start = t0() + chrono::Duration::seconds(2);
        let h = harness_with(SchedulerConfig::default(), start).await;
        let earlier = |at: DateTime<Utc>| NewRun {
            scheduled_for: Some(at),
            ..new_run("minutely", Trigger::Schedule)
        };
        let recorded = [t0() - chrono::Duration::minutes(10)]
            .into_iter()
            .chain(claimed_elsewhere.then_some(t0()));
        for at in recorded {
            let lease = claimed(&h, earlier(at)).await;
            h.ledger
                .end_run(lease, RunStatus::Success, "")
                .await
                .unwrap();
        }
        start_with(&h, "* * * * *").await;
        wait(5.0).await;
        h.scheduler.shutdown(Duration::from_secs(5)).await;
        let at_t0: Vec<_> = rows(&h, "minutely")
            .await
            .into_iter()
            .filter(|r| r.scheduled_for == Some(t0()))
            .collect();
        assert_eq!(at_t0.len(), 1, "{at_t0:#?}");
        assert_eq!(at_t0[0].status, RunStatus::Success);
        let ran_here = h.fake.calls("minutely").len();
        assert_eq!(ran_here, usize::from(!claimed_elsewhere));
    }
}

async fn start_with(h: &Harness, schedule: &str) {
    start(
        h,
        vec![def("minutely", Some(schedule), |m| {
            m.misfire = Misfire::Skip
        })],
    )
    .await;
}
