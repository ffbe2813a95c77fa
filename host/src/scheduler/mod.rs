//! The scheduler: fires each task on its cron schedule in its time zone,
//! applies the overlap, misfire and retry policies and the global
//! concurrency limit, records every decision in the store, and stops cleanly.
//!
//! It never touches wasmtime: it holds `TaskComponent`s and calls
//! `Runtime::run`.

mod claim;
pub mod clock;
mod cluster;
mod ledger;
mod manual;
mod run;
mod types;

pub use ledger::Ledger;
pub use run::Executor;
pub use types::{
    FireOutcome, SchedulerConfig, SchedulerError, StuckRun, TaskDef, TaskView, jitter_delay,
};

use crate::manifest::Misfire;
use crate::model::{RunStatus, Trigger};
use crate::schedule::{Schedule, latest_fire_between, next_fire};
use crate::store::Store;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use clock::Clock;
use run::{Active, Fire, InFlight};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    executor: Arc<dyn Executor>,
    ledger: Arc<dyn Ledger>,
    clock: Arc<dyn Clock>,
    config: SchedulerConfig,
    permits: Arc<Semaphore>,
    tasks: Mutex<BTreeMap<String, Slot>>,
    /// Stops the schedule loops.
    stop: CancellationToken,
    /// Set once `start` has run: later registrations start their loops.
    started: std::sync::atomic::AtomicBool,
    /// Set once this replica's name is its own, to the database's time
    /// then: runs of this replica that started earlier are a previous
    /// process's.
    prepared: tokio::sync::OnceCell<DateTime<Utc>>,
    /// Planned retries this process has taken on (see `run`).
    held_retries: Mutex<std::collections::HashSet<i64>>,
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

impl Scheduler {
    pub fn new(
        executor: Arc<dyn Executor>,
        store: Store,
        clock: Arc<dyn Clock>,
        config: SchedulerConfig,
    ) -> Self {
        Self::with_ledger(executor, Arc::new(store), clock, config)
    }

    /// A scheduler that records in `ledger` instead of a [`Store`].
    pub fn with_ledger(
        executor: Arc<dyn Executor>,
        ledger: Arc<dyn Ledger>,
        clock: Arc<dyn Clock>,
        config: SchedulerConfig,
    ) -> Self {
        Scheduler {
            inner: Arc::new(Inner {
                executor,
                ledger,
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
                prepared: tokio::sync::OnceCell::new(),
                held_retries: Mutex::default(),
            }),
        }
    }

    /// Registers `defs`; persisted toggles override manifests' `enabled`.
    pub async fn register(&self, defs: Vec<TaskDef>) -> anyhow::Result<()> {
        let settings = self.inner.ledger.settings().await?;
        let mut tasks = self.inner.lock();
        let now = self.inner.clock.now();
        for def in defs {
            let name = def.manifest.name.clone();
            tasks.insert(name, self.inner.new_slot(def, &settings, now));
        }
        Ok(())
    }

    /// Makes the replica's name its own: waits while another process
    /// reports under it, and notes the database's time, before which runs
    /// of this replica are a previous process's (`start` records them
    /// interrupted, with their retries). Call it before anything can
    /// trigger a run (the API); [`Scheduler::start`] calls it if it has not
    /// run.
    pub async fn prepare(&self) -> anyhow::Result<()> {
        let inner = &self.inner;
        inner
            .prepared
            .get_or_try_init(|| async {
                // From here on every run of this replica is this process's:
                // `start` closes the older ones.
                inner.claim_own_name().await
            })
            .await?;
        Ok(())
    }

    /// Recovers from a crash, handles fires missed while down, starts the
    /// startup runs and the schedule loops.
    pub async fn start(&self) -> anyhow::Result<()> {
        self.prepare().await?;
        self.inner.interrupt_orphans().await?;
        self.inner.start_cluster_loop().await;
        if !self.inner.ledger.shared() {
            self.inner.resume_retries().await;
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
                            inner.fire(&task, Fire::new(Trigger::Startup, None));
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
        let settings = self.inner.ledger.settings().await?;
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
        if let Err(e) = self.inner.ledger.replica_leave().await {
            tracing::warn!(error = %format!("{e:#}"), "cannot take this replica off the live list");
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
        let next_fire = schedule.as_ref().and_then(|s| next_fire(s, timezone, now));
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
            let Some(next) = next_fire(&schedule, tz, after) else {
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
                self.fire(&name, Fire::new(Trigger::Schedule, Some(next)));
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
        let Some(last) = self.ledger.last_scheduled_for(name).await? else {
            return Ok(());
        };
        let Some(missed) = latest_fire_between(schedule, tz, last, now, 10_000) else {
            return Ok(());
        };
        // An occurrence of the last few seconds may be one a live replica
        // is claiming right now: it is claimed like any fire (whoever
        // claims first runs it), never recorded as missed.
        let recent =
            now - chrono::Duration::from_std(self.config.heartbeat_interval).unwrap_or_default();
        let policy = if missed >= recent {
            Misfire::RunOnce
        } else {
            def.manifest.misfire
        };
        match policy {
            Misfire::RunOnce => {
                tracing::info!(task = name, %missed, "running a fire missed while the service was down");
                self.fire(name, Fire::new(Trigger::Schedule, Some(missed)));
            }
            Misfire::Skip => {
                self.ledger
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
}
