//! The scheduler: fires each task on its cron schedule in its time zone,
//! applies the overlap, misfire and retry policies and the global
//! concurrency limit, records every decision in the store, and stops cleanly.
//!
//! It never touches wasmtime: it holds `TaskComponent`s and calls
//! `Runtime::run`.

pub mod clock;
pub mod next;

use crate::manifest::{Manifest, Misfire, Overlap};
use crate::model::{RunResult, RunStatus, TaskInfo, Trigger};
use crate::runtime::{RunRequest, Runtime, TaskComponent};

use crate::schedule::Schedule;
use crate::store::{NewRun, Store};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use clock::Clock;
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Runs beyond this many wait for a free slot.
    pub max_concurrent_runs: usize,
    /// `false` registers tasks but fires nothing on schedule or at startup.
    pub enabled: bool,
    /// Zone for tasks whose manifest names none.
    pub default_timezone: Tz,
    /// How often a running row's `heartbeat_at` is refreshed.
    pub heartbeat_interval: Duration,
    /// Where guest runs execute; `None` runs them on the caller's runtime.
    pub run_handle: Option<tokio::runtime::Handle>,
    /// Updated as runs finish.
    pub metrics: Option<crate::metrics::Metrics>,
    /// How long past its timeout a run may take to return before the worker
    /// running it counts as stuck (see [`Scheduler::stuck_runs`]).
    pub stuck_after: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_concurrent_runs: 4,
            enabled: true,
            default_timezone: chrono_tz::UTC,
            heartbeat_interval: Duration::from_secs(15),
            run_handle: None,
            metrics: None,
            stuck_after: Duration::from_secs(10),
        }
    }
}

/// Runs a component; the real one is [`Runtime`]. Tests substitute their
/// own to exercise the policies on tokio's paused clock.
pub trait Executor: Send + Sync + 'static {
    fn execute(
        &self,
        component: TaskComponent,
        request: RunRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = RunResult> + Send>>;
}

impl Executor for Runtime {
    fn execute(
        &self,
        component: TaskComponent,
        request: RunRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = RunResult> + Send>> {
        let runtime = self.clone();
        Box::pin(async move { runtime.run(&component, request).await })
    }
}

/// The random delay added to a fire: uniform in `[0, max]`.
pub fn jitter_delay(max: Duration, rng: &mut impl Rng) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_millis(rng.random_range(0..=max.as_millis() as u64))
}

/// A loaded task: its manifest, compiled component and what it says of
/// itself.
#[derive(Clone)]
pub struct TaskDef {
    pub manifest: Manifest,
    pub component: TaskComponent,
    pub info: TaskInfo,
}

impl TaskDef {
    /// The manifest's schedule, else the component's suggestion.
    pub fn schedule(&self) -> Option<Schedule> {
        if let Some(s) = &self.manifest.schedule {
            return Some(s.clone());
        }
        let suggested = self.info.default_schedule.as_deref()?;
        match Schedule::parse(suggested) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(task = %self.manifest.name, error = %e, "ignoring the component's default schedule");
                None
            }
        }
    }

    pub fn run_on_startup(&self) -> bool {
        self.manifest
            .run_on_startup
            .unwrap_or(self.info.run_on_startup)
    }
}

/// What became of a fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireOutcome {
    Started,
    Queued,
    Skipped(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchedulerError {
    #[error("no task named {0:?}")]
    UnknownTask(String),
}

/// A run whose guest has not returned although its timeout, and then
/// `stuck_after`, have passed: the worker running it is held by something
/// the deadline cannot stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckRun {
    pub task: String,
    pub run_id: i64,
    /// How long past its timeout it is.
    pub overdue: Duration,
}

/// Runs handed to the executor and not yet returned, by key.
type InFlight = Arc<Mutex<BTreeMap<u64, (String, i64, tokio::time::Instant)>>>;

/// Holds a run's place in [`InFlight`] for as long as its future exists. The
/// future is dropped when the run returns, or when it is aborted and its
/// worker gets to drop it: a worker blocked inside the run keeps it listed.
struct InFlightEntry {
    in_flight: InFlight,
    key: u64,
}

impl Drop for InFlightEntry {
    fn drop(&mut self) {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// A task as the scheduler sees it right now.
#[derive(Clone)]
pub struct TaskView {
    pub name: String,
    pub schedule: Option<String>,
    pub timezone: Tz,
    pub enabled: bool,
    pub running: usize,
    pub next_fire: Option<DateTime<Utc>>,
    /// The task as loaded: manifest, component hash, `describe()`.
    pub def: Arc<TaskDef>,
}

#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    executor: Arc<dyn Executor>,
    store: Store,
    clock: Arc<dyn Clock>,
    config: SchedulerConfig,
    permits: Arc<Semaphore>,
    tasks: Mutex<BTreeMap<String, Slot>>,
    /// Stops the schedule loops.
    stop: CancellationToken,
    /// Set once `start` has run: later registrations start their loops.
    started: std::sync::atomic::AtomicBool,
    loops: TaskTracker,
    jobs: TaskTracker,
    /// Bumped after every change this process writes to run history or
    /// settings, so readers can cache what they derive from the store.
    changes: std::sync::atomic::AtomicU64,
    in_flight: InFlight,
}

struct Slot {
    /// Stops this task's schedule loop (a child of the scheduler's `stop`).
    loop_stop: CancellationToken,
    def: Arc<TaskDef>,
    schedule: Option<Schedule>,
    timezone: Tz,
    enabled: bool,
    active: Vec<Active>,
    queued: Option<Fire>,
    next_fire: Option<DateTime<Utc>>,
}

#[derive(Clone)]
struct Active {
    token: u64,
    /// The store's id of the current attempt, once recorded.
    run_id: Arc<Mutex<Option<i64>>>,
    /// Told the first run id (manual triggers wait for it).
    notify: Arc<Mutex<Option<tokio::sync::oneshot::Sender<i64>>>>,
    cancel: CancellationToken,
    /// Set by whoever cancels: the status and reason to record.
    why: Arc<OnceLock<(RunStatus, String)>>,
}

#[derive(Debug, Clone, Copy)]
struct Fire {
    trigger: Trigger,
    scheduled_for: Option<DateTime<Utc>>,
    dry_run: bool,
}

static NEXT_TOKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Scheduler {
    pub fn new(
        executor: Arc<dyn Executor>,
        store: Store,
        clock: Arc<dyn Clock>,
        config: SchedulerConfig,
    ) -> Self {
        Scheduler {
            inner: Arc::new(Inner {
                executor,
                store,
                clock,
                permits: Arc::new(Semaphore::new(config.max_concurrent_runs.max(1))),
                config,
                tasks: Mutex::new(BTreeMap::new()),
                stop: CancellationToken::new(),
                loops: TaskTracker::new(),
                jobs: TaskTracker::new(),
                changes: std::sync::atomic::AtomicU64::new(0),
                in_flight: Default::default(),
                started: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Registers `defs`; persisted toggles override manifests' `enabled`.
    pub async fn register(&self, defs: Vec<TaskDef>) -> anyhow::Result<()> {
        let settings = self.inner.store.settings().await?;
        let mut tasks = self.inner.lock();
        let now = self.inner.clock.now();
        for def in defs {
            let name = def.manifest.name.clone();
            tasks.insert(name, self.inner.new_slot(def, &settings, now));
        }
        Ok(())
    }

    /// Recovers from a crash, handles fires missed while down, starts the
    /// startup runs and the schedule loops.
    pub async fn start(&self) -> anyhow::Result<()> {
        let orphans = self.inner.store.interrupt_orphans().await?;
        self.inner.changed();
        if !orphans.is_empty() {
            tracing::warn!(runs = ?orphans, "marked runs left by a previous process as interrupted");
        }
        if !self.inner.config.enabled {
            tracing::warn!(
                "scheduling is disabled (HOUSEKEEPER_ENABLED=false): tasks run only when triggered"
            );
            return Ok(());
        }
        let now = self.inner.clock.now();
        let names: Vec<String> = self.inner.lock().keys().cloned().collect();
        for name in names {
            let (def, schedule, tz, enabled) = {
                let tasks = self.inner.lock();
                let slot = &tasks[&name];
                (
                    slot.def.clone(),
                    slot.schedule.clone(),
                    slot.timezone,
                    slot.enabled,
                )
            };
            if let (Some(schedule), true) = (&schedule, enabled) {
                self.inner.misfire(&name, &def, schedule, tz, now).await?;
            }
            if def.run_on_startup() && enabled {
                let inner = self.inner.clone();
                let delay = def.manifest.startup_delay;
                let task = name.clone();
                self.inner.loops.spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {
                            inner.fire(&task, Fire { trigger: Trigger::Startup, scheduled_for: None, dry_run: false });
                        }
                        _ = inner.stop.cancelled() => {}
                    }
                });
            }
            if schedule.is_some() {
                self.inner.spawn_loop(&name, now);
            }
        }
        self.inner
            .started
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Brings the registered tasks in line with `defs`: new ones are added,
    /// changed ones replaced (a run in progress finishes on the version it
    /// started with), and ones neither in `defs` nor in `keep` removed.
    /// `keep` names tasks whose files failed to load this time: their
    /// working version stays. Returns the names added, replaced, removed.
    pub async fn apply(
        &self,
        defs: Vec<TaskDef>,
        keep: &std::collections::BTreeSet<String>,
    ) -> anyhow::Result<(Vec<String>, Vec<String>, Vec<String>)> {
        let settings = self.inner.store.settings().await?;
        let now = self.inner.clock.now();
        let started = self
            .inner
            .started
            .load(std::sync::atomic::Ordering::Acquire);
        let (mut added, mut replaced, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        let wanted: std::collections::BTreeSet<String> =
            defs.iter().map(|d| d.manifest.name.clone()).collect();
        let mut respawn = Vec::new();
        {
            let mut tasks = self.inner.lock();
            let gone: Vec<String> = tasks
                .keys()
                .filter(|n| !wanted.contains(*n) && !keep.contains(*n))
                .cloned()
                .collect();
            for name in gone {
                if let Some(slot) = tasks.remove(&name) {
                    slot.loop_stop.cancel();
                    removed.push(name);
                }
            }
            for def in defs {
                let name = def.manifest.name.clone();
                if let Some(old) = tasks.get(&name) {
                    let same = old.def.manifest == def.manifest
                        && old.def.component.hash() == def.component.hash()
                        && old.def.info == def.info;
                    if same {
                        continue;
                    }
                }
                let fresh = self.inner.new_slot(def, &settings, now);
                let has_schedule = fresh.schedule.is_some();
                match tasks.get_mut(&name) {
                    Some(slot) => {
                        slot.loop_stop.cancel();
                        let active = std::mem::take(&mut slot.active);
                        let queued = slot.queued.take();
                        *slot = Slot {
                            active,
                            queued,
                            ..fresh
                        };
                        replaced.push(name.clone());
                    }
                    None => {
                        tasks.insert(name.clone(), fresh);
                        added.push(name.clone());
                    }
                }
                if has_schedule {
                    respawn.push(name);
                }
            }
        }
        if started && self.inner.config.enabled {
            for name in respawn {
                self.inner.spawn_loop(&name, now);
            }
        }
        self.inner.changed();
        Ok((added, replaced, removed))
    }

    /// Runs `name` now, outside its schedule (which it does not move). The
    /// overlap policy applies.
    pub fn trigger(&self, name: &str, dry_run: bool) -> Result<FireOutcome, SchedulerError> {
        if !self.inner.lock().contains_key(name) {
            return Err(SchedulerError::UnknownTask(name.to_owned()));
        }
        Ok(self.inner.fire(
            name,
            Fire {
                trigger: Trigger::Manual,
                scheduled_for: None,
                dry_run,
            },
        ))
    }

    /// Like [`Scheduler::trigger`], and when the run starts within `wait`
    /// also gives its id in the store (a run waiting for a free slot longer
    /// than that has none yet).
    pub async fn trigger_and_wait(
        &self,
        name: &str,
        dry_run: bool,
        wait: Duration,
    ) -> Result<(FireOutcome, Option<i64>), SchedulerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let outcome = {
            if !self.inner.lock().contains_key(name) {
                return Err(SchedulerError::UnknownTask(name.to_owned()));
            }
            self.inner.fire_with(
                name,
                Fire {
                    trigger: Trigger::Manual,
                    scheduled_for: None,
                    dry_run,
                },
                Some(tx),
            )
        };
        if outcome != FireOutcome::Started {
            return Ok((outcome, None));
        }
        let id = tokio::time::timeout(wait, rx)
            .await
            .ok()
            .and_then(Result::ok);
        Ok((outcome, id))
    }

    /// Stops run `run_id` if this process is running it; it is recorded
    /// `cancelled`. Returns whether it was running here.
    pub fn cancel(&self, run_id: i64) -> bool {
        let tasks = self.inner.lock();
        for slot in tasks.values() {
            for a in &slot.active {
                if *a.run_id.lock().unwrap_or_else(|p| p.into_inner()) == Some(run_id) {
                    let _ = a
                        .why
                        .set((RunStatus::Cancelled, "cancelled on request".into()));
                    a.cancel.cancel();
                    return true;
                }
            }
        }
        false
    }

    /// Enables or disables `name`'s schedule, persistently, at once.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> anyhow::Result<()> {
        if !self.inner.lock().contains_key(name) {
            return Err(SchedulerError::UnknownTask(name.to_owned()).into());
        }
        self.inner.store.set_enabled(name, enabled).await?;
        self.inner.changed();
        if let Some(slot) = self.inner.lock().get_mut(name) {
            slot.enabled = enabled;
        }
        Ok(())
    }

    /// Whether tasks fire on their schedules (`HOUSEKEEPER_ENABLED`).
    pub fn scheduling(&self) -> bool {
        self.inner.config.enabled
    }

    pub fn tasks(&self) -> Vec<TaskView> {
        self.inner
            .lock()
            .iter()
            .map(|(name, slot)| TaskView {
                name: name.clone(),
                schedule: slot.schedule.as_ref().map(|s| s.as_str().to_owned()),
                timezone: slot.timezone,
                enabled: slot.enabled,
                running: slot.active.len(),
                next_fire: slot.next_fire,
                def: slot.def.clone(),
            })
            .collect()
    }

    /// A hash of everything [`Scheduler::tasks`] would return, computed
    /// without copying it: equal fingerprints mean equal views (the same
    /// task versions, schedules, toggles, running counts and next fires).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (name, slot) in self.inner.lock().iter() {
            name.hash(&mut h);
            (Arc::as_ptr(&slot.def) as usize).hash(&mut h);
            slot.schedule.as_ref().map(|s| s.as_str()).hash(&mut h);
            slot.timezone.name().hash(&mut h);
            slot.enabled.hash(&mut h);
            slot.active.len().hash(&mut h);
            slot.next_fire.hash(&mut h);
        }
        h.finish()
    }

    /// Runs whose guest has not returned long after their timeout, oldest
    /// first. A run stays here until its worker lets go of it, even after
    /// it was cancelled or recorded `interrupted`.
    pub fn stuck_runs(&self) -> Vec<StuckRun> {
        let now = tokio::time::Instant::now();
        let mut stuck: Vec<StuckRun> = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|(_, _, stuck_at)| now >= *stuck_at)
            .map(|(task, run_id, stuck_at)| StuckRun {
                task: task.clone(),
                run_id: *run_id,
                overdue: now - *stuck_at + self.inner.config.stuck_after,
            })
            .collect();
        stuck.sort_by_key(|r| std::cmp::Reverse(r.overdue));
        stuck
    }

    /// Grows whenever this process records a run or a setting.
    pub fn changes(&self) -> u64 {
        self.inner
            .changes
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Stops firing, waits up to `grace` for running tasks, then cancels
    /// the rest and records them `interrupted`.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stop.cancel();
        self.inner.loops.close();
        self.inner.loops.wait().await;
        self.inner.jobs.close();
        if tokio::time::timeout(grace, self.inner.jobs.wait())
            .await
            .is_err()
        {
            let active: Vec<Active> = self
                .inner
                .lock()
                .values_mut()
                .flat_map(|slot| {
                    slot.queued = None;
                    slot.active.clone()
                })
                .collect();
            tracing::warn!(
                runs = active.len(),
                "grace period over; interrupting running tasks"
            );
            for a in active {
                let _ = a.why.set((
                    RunStatus::Interrupted,
                    "the service shut down before the run finished".into(),
                ));
                a.cancel.cancel();
            }
            self.inner.jobs.wait().await;
        }
    }
}

impl Inner {
    /// A task's slot; persisted toggles override the manifest's `enabled`,
    /// and the next fire is known before its schedule loop runs.
    fn new_slot(
        &self,
        def: TaskDef,
        settings: &std::collections::HashMap<String, crate::store::TaskSettings>,
        now: DateTime<Utc>,
    ) -> Slot {
        let schedule = def.schedule();
        let timezone = def
            .manifest
            .timezone
            .unwrap_or(self.config.default_timezone);
        let next_fire = schedule
            .as_ref()
            .and_then(|s| next::next_fire(s, timezone, now));
        let enabled = settings
            .get(&def.manifest.name)
            .map(|s| s.enabled)
            .unwrap_or(def.manifest.enabled);
        Slot {
            loop_stop: self.stop.child_token(),
            def: Arc::new(def),
            schedule,
            timezone,
            enabled,
            active: Vec::new(),
            queued: None,
            next_fire,
        }
    }

    fn changed(&self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn_loop(self: &Arc<Self>, name: &str, start: DateTime<Utc>) {
        let Some(stop) = self.lock().get(name).map(|s| s.loop_stop.clone()) else {
            return;
        };
        let inner = self.clone();
        let name = name.to_owned();
        self.loops
            .spawn(async move { inner.schedule_loop(name, start, stop).await });
    }

    async fn schedule_loop(
        self: Arc<Self>,
        name: String,
        start: DateTime<Utc>,
        stop: CancellationToken,
    ) {
        let mut after = start;
        loop {
            let (schedule, tz, jitter) = {
                let tasks = self.lock();
                let Some(slot) = tasks.get(&name) else { return };
                let Some(schedule) = slot.schedule.clone() else {
                    return;
                };
                (schedule, slot.timezone, slot.def.manifest.jitter)
            };
            let Some(next) = next::next_fire(&schedule, tz, after) else {
                return;
            };
            if let Some(slot) = self.lock().get_mut(&name) {
                slot.next_fire = Some(next);
            }
            let delay = chrono::Duration::from_std(jitter_delay(jitter, &mut rand::rng()))
                .unwrap_or_default();
            tokio::select! {
                _ = clock::sleep_until(&*self.clock, next + delay) => {}
                _ = stop.cancelled() => return,
            }
            after = next;
            let enabled = self.lock().get(&name).is_some_and(|s| s.enabled);
            if enabled {
                self.fire(
                    &name,
                    Fire {
                        trigger: Trigger::Schedule,
                        scheduled_for: Some(next),
                        dry_run: false,
                    },
                );
            }
        }
    }

    async fn misfire(
        self: &Arc<Self>,
        name: &str,
        def: &TaskDef,
        schedule: &Schedule,
        tz: Tz,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let Some(last) = self.store.last_scheduled_for(name).await? else {
            return Ok(());
        };
        let Some(missed) = next::latest_fire_between(schedule, tz, last, now, 10_000) else {
            return Ok(());
        };
        match def.manifest.misfire {
            Misfire::RunOnce => {
                tracing::info!(task = name, %missed, "running a fire missed while the service was down");
                self.fire(
                    name,
                    Fire {
                        trigger: Trigger::Schedule,
                        scheduled_for: Some(missed),
                        dry_run: false,
                    },
                );
            }
            Misfire::Skip => {
                self.store
                    .record_skipped(
                        name,
                        Trigger::Schedule,
                        Some(missed),
                        "missed while the service was down (misfire = skip)",
                    )
                    .await?;
                self.changed();
            }
        }
        Ok(())
    }

    fn fire(self: &Arc<Self>, name: &str, fire: Fire) -> FireOutcome {
        self.fire_with(name, fire, None)
    }

    /// Applies the overlap policy and starts, queues or skips.
    fn fire_with(
        self: &Arc<Self>,
        name: &str,
        fire: Fire,
        notify: Option<tokio::sync::oneshot::Sender<i64>>,
    ) -> FireOutcome {
        let mut tasks = self.lock();
        let Some(slot) = tasks.get_mut(name) else {
            return FireOutcome::Skipped(format!("no task named {name:?}"));
        };
        if !slot.active.is_empty() {
            let skip = |reason: &str| {
                let store = self.store.clone();
                let (task, why) = (name.to_owned(), reason.to_owned());
                let inner = self.clone();
                self.jobs.spawn(async move {
                    if let Err(e) = store
                        .record_skipped(&task, fire.trigger, fire.scheduled_for, &why)
                        .await
                    {
                        tracing::error!(task, error = %e, "cannot record a skipped fire");
                    }
                    inner.changed();
                });
                tracing::info!(task = name, reason, "fire skipped");
                if let Some(m) = &self.config.metrics {
                    m.run_finished(name, RunStatus::Skipped, 0, 0, 0.0);
                }
                FireOutcome::Skipped(reason.to_owned())
            };
            match slot.def.manifest.overlap {
                Overlap::Skip => return skip("the previous run is still running (overlap = skip)"),
                Overlap::Queue if slot.queued.is_some() => {
                    return skip(
                        "a run is already queued behind the running one (overlap = queue)",
                    );
                }
                Overlap::Queue => {
                    slot.queued = Some(fire);
                    return FireOutcome::Queued;
                }
                Overlap::Replace => {
                    for a in &slot.active {
                        let _ = a.why.set((
                            RunStatus::Cancelled,
                            "replaced by a newer run (overlap = replace)".into(),
                        ));
                        a.cancel.cancel();
                    }
                }
                Overlap::Allow => {}
            }
        }
        self.start_job(name, slot, fire, notify);
        FireOutcome::Started
    }

    fn start_job(
        self: &Arc<Self>,
        name: &str,
        slot: &mut Slot,
        fire: Fire,
        notify: Option<tokio::sync::oneshot::Sender<i64>>,
    ) {
        let active = Active {
            token: NEXT_TOKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            run_id: Arc::new(Mutex::new(None)),
            notify: Arc::new(Mutex::new(notify)),
            cancel: CancellationToken::new(),
            why: Arc::new(OnceLock::new()),
        };
        slot.active.push(active.clone());
        let inner = self.clone();
        let def = slot.def.clone();
        let name = name.to_owned();
        self.jobs.spawn(async move {
            inner.job(&name, &def, fire, &active).await;
            inner.job_done(&name, active.token);
        });
    }

    fn job_done(self: &Arc<Self>, name: &str, token: u64) {
        self.changed();
        let mut tasks = self.lock();
        let Some(slot) = tasks.get_mut(name) else {
            return;
        };
        slot.active.retain(|a| a.token != token);
        if slot.active.is_empty() {
            if let Some(queued) = slot.queued.take() {
                if !self.stop.is_cancelled() {
                    self.start_job(name, slot, queued, None);
                }
            }
        }
    }

    /// One fire: wait for a slot, run, retry on failure, record everything.
    async fn job(self: &Arc<Self>, name: &str, def: &TaskDef, fire: Fire, active: &Active) {
        let permit = tokio::select! {
            permit = self.permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = active.cancel.cancelled() => {
                let reason = active.why.get().map(|(_, r)| r.clone()).unwrap_or_default();
                let _ = self.store.record_skipped(name, fire.trigger, fire.scheduled_for, &format!("cancelled before it started: {reason}")).await;
                return;
            }
        };
        let mut trigger = fire.trigger;
        let mut attempt = 0u32;
        loop {
            let status = self.attempt(name, def, fire, trigger, active).await;
            let retryable = matches!(
                status,
                Some(
                    RunStatus::Error
                        | RunStatus::Trapped
                        | RunStatus::Timeout
                        | RunStatus::OutOfFuel
                        | RunStatus::OutOfMemory
                )
            );
            if !retryable || attempt >= def.manifest.retries.max {
                break;
            }
            let backoff = def
                .manifest
                .retries
                .backoff
                .saturating_mul(1u32 << attempt.min(16));
            tracing::info!(
                task = name,
                attempt = attempt + 1,
                ?backoff,
                "retrying after failure"
            );
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = active.cancel.cancelled() => break,
            }
            attempt += 1;
            trigger = Trigger::Retry;
        }
        drop(permit);
        let history = &def.manifest.history;
        if let Err(e) = self
            .store
            .prune(name, history.keep_days, history.keep_last)
            .await
        {
            tracing::warn!(task = name, error = %e, "cannot prune run history");
        }
    }

    /// One run, recorded. `None` if nothing ran.
    async fn attempt(
        self: &Arc<Self>,
        name: &str,
        def: &TaskDef,
        fire: Fire,
        trigger: Trigger,
        active: &Active,
    ) -> Option<RunStatus> {
        let new = NewRun {
            task_name: name,
            triggered_by: trigger,
            scheduled_for: fire.scheduled_for,
            dry_run: fire.dry_run,
            component_hash: Some(def.component.hash()),
        };
        let id = match self.store.begin_run(&new).await {
            Ok(Some(id)) => {
                *active.run_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
                if let Some(tx) = active
                    .notify
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                {
                    let _ = tx.send(id);
                }
                id
            }
            Ok(None) => {
                tracing::debug!(
                    task = name,
                    "occurrence already recorded; not running it again"
                );
                return None;
            }
            Err(e) => {
                tracing::error!(task = name, error = %e, "cannot record the start of a run; not running it");
                return None;
            }
        };
        let last_success = self
            .store
            .stats()
            .await
            .ok()
            .and_then(|s| s.get(name).and_then(|s| s.last_success_at));
        let mut request = RunRequest::from_manifest(&def.manifest, id.to_string(), trigger);
        request.dry_run = fire.dry_run;
        request.scheduled_for = fire.scheduled_for;
        request.last_success = last_success;

        let key = NEXT_TOKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stuck_at = tokio::time::Instant::now() + request.timeout + self.config.stuck_after;
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (name.to_owned(), id, stuck_at));
        let entry = InFlightEntry {
            in_flight: self.in_flight.clone(),
            key,
        };
        let run = self.executor.execute(def.component.clone(), request);
        let run = async move {
            let _entry = entry;
            run.await
        };
        let mut handle = match &self.config.run_handle {
            Some(h) => h.spawn(run),
            None => tokio::spawn(run),
        };
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.tick().await;
        let outcome: Option<RunResult> = loop {
            tokio::select! {
                joined = &mut handle => break joined.ok(),
                _ = heartbeat.tick() => {
                    if let Err(e) = self.store.heartbeat(id).await {
                        tracing::warn!(task = name, run = id, error = %e, "cannot record a heartbeat");
                    }
                }
                _ = active.cancel.cancelled() => {
                    handle.abort();
                    break None;
                }
            }
        };
        match outcome {
            Some(result) => {
                let status = result.status;
                if let Err(e) = self.store.finish_run(id, &result).await {
                    tracing::error!(task = name, run = id, error = %e, "cannot record the end of a run");
                }
                tracing::info!(task = name, run = id, %status, duration_ms = result.duration_ms, "run finished");
                if let Some(m) = &self.config.metrics {
                    let at = result.completed_at.timestamp_millis() as f64 / 1000.0;
                    m.run_finished(name, status, result.duration_ms, result.fuel_used, at);
                }
                Some(status)
            }
            None => {
                let (status, reason) = active
                    .why
                    .get()
                    .cloned()
                    .unwrap_or((RunStatus::Interrupted, "the run was stopped".into()));
                if let Err(e) = self.store.end_run(id, status, &reason).await {
                    tracing::error!(task = name, run = id, error = %e, "cannot record the end of a run");
                }
                tracing::info!(task = name, run = id, %status, reason, "run stopped");
                if let Some(m) = &self.config.metrics {
                    m.run_finished(name, status, 0, 0, 0.0);
                }
                Some(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_bound_and_varies() {
        let mut rng = rand::rng();
        let max = Duration::from_secs(30);
        let samples: Vec<Duration> = (0..2000).map(|_| jitter_delay(max, &mut rng)).collect();
        assert!(samples.iter().all(|d| *d <= max));
        assert!(samples.iter().any(|d| *d < max / 4));
        assert!(samples.iter().any(|d| *d > max * 3 / 4));
        assert_eq!(jitter_delay(Duration::ZERO, &mut rng), Duration::ZERO);
    }
}
