//! Executing fires: the overlap policy, the global concurrency limit,
//! retries with backoff, heartbeats, and recording every attempt in the
//! ledger. Timing (when a fire happens) stays in the parent module.

use super::{FireOutcome, Inner, Slot, TaskDef};
use crate::manifest::Overlap;
use crate::model::{RunResult, RunStatus, Trigger};
use crate::runtime::{RunRequest, Runtime, TaskComponent};
use crate::store::{NewRun, Renewal};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use tokio_util::sync::CancellationToken;

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

/// Runs handed to the executor and not yet returned, by key.
pub(super) type InFlight = Arc<Mutex<BTreeMap<u64, (String, i64, tokio::time::Instant)>>>;

/// Holds a run's place in [`InFlight`] for as long as its future exists. The
/// future is dropped when the run returns, or when it is aborted and its
/// worker gets to drop it: a worker blocked inside the run keeps it listed.
pub(super) struct InFlightEntry {
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

#[derive(Clone)]
pub(super) struct Active {
    pub(super) token: u64,
    /// The store's id of the current attempt, once recorded.
    pub(super) run_id: Arc<Mutex<Option<i64>>>,
    /// Told the first run id, or why the fire was not run (manual
    /// triggers wait for it).
    pub(super) notify: Arc<Mutex<Option<Notify>>>,
    pub(super) cancel: CancellationToken,
    /// Set by whoever cancels: the status and reason to record.
    pub(super) why: Arc<OnceLock<(RunStatus, String)>>,
    /// Set while the fire waits out a retry's backoff.
    pub(super) backoff: Arc<std::sync::atomic::AtomicBool>,
}

/// Where a manual trigger learns what became of its fire: the run's id,
/// or why it was not run (another replica's run held the task).
pub(super) type Notify = tokio::sync::oneshot::Sender<Result<i64, String>>;

#[derive(Debug, Clone, Copy)]
pub(super) struct Fire {
    pub(super) trigger: Trigger,
    /// 0 for a first run; a retry of a reaped run starts further on.
    pub(super) attempt: u32,
    pub(super) scheduled_for: Option<DateTime<Utc>>,
    pub(super) dry_run: bool,
    /// For a planned retry on record, the run it retries.
    pub(super) retry_of: Option<i64>,
}

impl Fire {
    pub(super) fn new(trigger: Trigger, scheduled_for: Option<DateTime<Utc>>) -> Self {
        Fire {
            trigger,
            attempt: 0,
            scheduled_for,
            dry_run: false,
            retry_of: None,
        }
    }
}

/// What became of one attempt that ran.
struct Attempted {
    run_id: i64,
    /// The backoff before the next attempt, if the policy retries it.
    retry: Option<std::time::Duration>,
    /// Whether that retry is on record (and so survives this process).
    planned: bool,
}

static NEXT_TOKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Inner {
    pub(super) fn fire(self: &Arc<Self>, name: &str, fire: Fire) -> FireOutcome {
        self.fire_with(name, fire, None)
    }

    /// Applies the overlap policy and starts, queues or skips.
    pub(super) fn fire_with(
        self: &Arc<Self>,
        name: &str,
        fire: Fire,
        notify: Option<Notify>,
    ) -> FireOutcome {
        let mut tasks = self.lock();
        let Some(slot) = tasks.get_mut(name) else {
            return FireOutcome::Skipped(format!("no task named {name:?}"));
        };
        if !slot.active.is_empty() {
            let waiting = slot
                .active
                .iter()
                .all(|a| a.run_id.lock().unwrap_or_else(|p| p.into_inner()).is_none());
            // An occurrence this replica skips only because its own previous
            // fire has not started (no free run slot here) is one another
            // replica may run: its skip is recorded a heartbeat later, and
            // only if nobody claimed the occurrence meanwhile.
            let defer = (waiting && fire.trigger == Trigger::Schedule && self.ledger.shared())
                .then_some(self.config.heartbeat_interval);
            let skip = |reason: &str| {
                let (task, why) = (name.to_owned(), reason.to_owned());
                let inner = self.clone();
                self.jobs.spawn(async move {
                    if let Some(delay) = defer {
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = inner.stop.cancelled() => {}
                        }
                    }
                    let give_up = || inner.stop.is_cancelled();
                    let write = || inner.record_not_run(&task, &fire, &why);
                    if let Err(e) = inner.persist("a skipped fire", give_up, write).await {
                        tracing::error!(task, error = %format!("{e:#}"), "cannot record a skipped fire");
                    }
                    inner.changed();
                });
                tracing::info!(task = name, reason, "fire skipped");
                if let Some(m) = &self.config.metrics {
                    m.run_finished(name, RunStatus::Skipped, 0, 0, 0.0);
                }
                FireOutcome::Skipped(reason.to_owned())
            };
            let retry = fire.retry_of.is_some();
            match slot.def.manifest.overlap {
                Overlap::Skip if waiting => {
                    return skip(
                        "the previous fire is still starting: waiting for a free run slot or for the database (overlap = skip)",
                    );
                }
                Overlap::Skip
                    if slot
                        .active
                        .iter()
                        .all(|a| a.backoff.load(std::sync::atomic::Ordering::SeqCst)) =>
                {
                    return skip(
                        "the previous run failed and its retry is waiting out its backoff (overlap = skip)",
                    );
                }
                Overlap::Skip => return skip("the previous run is still running (overlap = skip)"),
                // A retry is of an older fire: it never stops a newer run.
                Overlap::Replace if retry => {
                    return skip("a newer run is in progress (overlap = replace keeps it)");
                }
                Overlap::Queue if slot.queued.is_some() => {
                    return skip(
                        "a run is already queued behind the running one (overlap = queue)",
                    );
                }
                Overlap::Queue => {
                    if let Some(after_run) = fire.retry_of {
                        self.held_retries().insert(after_run);
                    }
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
        if let Some(after_run) = fire.retry_of {
            self.held_retries().insert(after_run);
        }
        self.start_job(name, slot, fire, notify);
        FireOutcome::Started
    }

    /// The planned retries this process has taken on: the heartbeat does
    /// not fire them again.
    pub(super) fn held_retries(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<i64>> {
        self.held_retries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start_job(
        self: &Arc<Self>,
        name: &str,
        slot: &mut Slot,
        fire: Fire,
        notify: Option<Notify>,
    ) {
        let active = Active {
            token: NEXT_TOKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            run_id: Arc::new(Mutex::new(None)),
            notify: Arc::new(Mutex::new(notify)),
            cancel: CancellationToken::new(),
            why: Arc::new(OnceLock::new()),
            backoff: Arc::default(),
        };
        slot.active.push(active.clone());
        let inner = self.clone();
        let def = slot.def.clone();
        let name = name.to_owned();
        self.jobs.spawn(async move {
            inner.job(&name, &def, fire, &active).await;
            inner.job_done(&name, active.token);
            inner.prune(&name, &def).await;
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
                let reason = format!("cancelled before it started: {reason}");
                let _ = self.record_not_run(name, &fire, &reason).await;
                self.forget_retry(fire.retry_of);
                return;
            }
        };
        let mut next = fire;
        loop {
            let done = self.attempt(name, def, next, active).await;
            self.forget_retry(next.retry_of);
            let Some(Attempted {
                run_id,
                retry: Some(backoff),
                planned,
                ..
            }) = done
            else {
                break;
            };
            tracing::info!(
                task = name,
                attempt = next.attempt + 1,
                ?backoff,
                planned,
                "retrying after failure"
            );
            // A planned retry is on record: at shutdown it is left to
            // another replica, or to this one's next start.
            let shutdown = async {
                if planned {
                    self.stop.cancelled().await
                } else {
                    std::future::pending().await
                }
            };
            active
                .backoff
                .store(true, std::sync::atomic::Ordering::SeqCst);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = active.cancel.cancelled() => {
                    // Cancelled or replaced during the backoff: the retry is
                    // recorded as not run, with why.
                    if planned {
                        let why = active.why.get().map(|(_, r)| r.as_str()).unwrap_or("cancelled");
                        let why = format!("{why}, during the backoff before this retry");
                        if let Err(e) = self.ledger.drop_retry(run_id, Some(&why)).await {
                            tracing::warn!(task = name, run = run_id, error = %e, "cannot drop a planned retry");
                        }
                    }
                    self.forget_retry(planned.then_some(run_id));
                    break;
                }
                _ = shutdown => {
                    self.forget_retry(Some(run_id));
                    break;
                }
            }
            active
                .backoff
                .store(false, std::sync::atomic::Ordering::SeqCst);
            // A task removed from the tasks directory meanwhile is not run
            // again on the version this fire started with.
            if !self.lock().contains_key(name) {
                if planned {
                    let why = "the task was removed during the backoff before this retry";
                    if let Err(e) = self.ledger.drop_retry(run_id, Some(why)).await {
                        tracing::warn!(task = name, run = run_id, error = %e, "cannot drop a planned retry");
                    }
                }
                self.forget_retry(planned.then_some(run_id));
                break;
            }
            next = Fire {
                trigger: Trigger::Retry,
                attempt: next.attempt + 1,
                retry_of: planned.then_some(run_id),
                ..next
            };
        }
        drop(permit);
    }

    /// Records that `fire` of `name` was not run, for `why`: a skipped
    /// row, or for a retry on record the retry given up (once, by
    /// whichever replica gets to it, with the skipped row).
    pub(super) async fn record_not_run(
        &self,
        name: &str,
        fire: &Fire,
        why: &str,
    ) -> anyhow::Result<()> {
        match fire.retry_of {
            Some(after_run) => self.ledger.drop_retry(after_run, Some(why)).await.map(drop),
            None => self
                .ledger
                .record_skipped(name, fire.trigger, fire.scheduled_for, why)
                .await
                .map(drop),
        }
    }

    fn forget_retry(&self, after_run: Option<i64>) {
        if let Some(after_run) = after_run {
            self.held_retries().remove(&after_run);
        }
    }

    /// Prunes `def`'s history to its policy, after a fire is done (and no
    /// longer holds the task against the next one).
    async fn prune(&self, name: &str, def: &TaskDef) {
        let history = &def.manifest.history;
        if let Err(e) = self
            .ledger
            .prune(name, history.keep_days, history.keep_last)
            .await
        {
            tracing::warn!(task = name, error = %e, "cannot prune run history");
        }
    }

    /// One run, recorded. `None` if nothing ran here, or the run's lease
    /// was lost (the replica that reaped it owns what happens next).
    async fn attempt(
        self: &Arc<Self>,
        name: &str,
        def: &TaskDef,
        fire: Fire,
        active: &Active,
    ) -> Option<Attempted> {
        let (trigger, attempt) = (fire.trigger, fire.attempt);
        let new = NewRun {
            task_name: name,
            triggered_by: trigger,
            scheduled_for: fire.scheduled_for,
            dry_run: fire.dry_run,
            component_hash: Some(def.component.hash()),
            exclusive: def.manifest.overlap != Overlap::Allow,
            attempt,
        };
        let lease = self.claim(name, def, &new, fire, active).await?;
        let id = lease.run_id;
        *active.run_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
        if let Some(tx) = active
            .notify
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(Ok(id));
        }
        let last_success = self.ledger.last_success(name).await.ok().flatten();
        let mut request = RunRequest::from_manifest(&def.manifest, id.to_string(), trigger);
        request.dry_run = fire.dry_run;
        request.scheduled_for = fire.scheduled_for;
        request.last_success = last_success;
        request.clock_ahead = self.clock.ahead();

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
                _ = heartbeat.tick() => match self.ledger.heartbeat(lease).await {
                    Ok(Renewal::Held) => {}
                    Ok(Renewal::Cancel(reason)) => {
                        let _ = active.why.set((RunStatus::Cancelled, reason));
                        active.cancel.cancel();
                    }
                    Ok(Renewal::Lost) => {
                        tracing::warn!(task = name, run = id, "the run's lease expired and another replica recorded it interrupted; stopping it");
                        let _ = active.why.set((RunStatus::Interrupted, "the run's lease was lost".into()));
                        active.cancel.cancel();
                    }
                    // The database is away: the run goes on, and the lease
                    // may expire; then the result is refused, not doubled.
                    Err(e) => tracing::warn!(task = name, run = id, error = %e, "cannot renew the run's lease"),
                },
                _ = active.cancel.cancelled() => {
                    handle.abort();
                    break None;
                }
            }
        };
        let mut retry = None;
        let mut planned = false;
        let (status, recorded) = match outcome {
            Some(result) => {
                let status = result.status;
                if retryable(status) && attempt < def.manifest.retries.max {
                    let backoff = retry_backoff(def, attempt);
                    retry = Some(backoff);
                    // On record before the run is: a replica that dies
                    // in between leaves a run that is reaped with the plan.
                    match self.ledger.plan_retry(id, backoff).await {
                        Ok(done) => planned = done,
                        Err(e) => {
                            tracing::warn!(task = name, run = id, error = %format!("{e:#}"), "cannot record the retry; it is kept in this process only")
                        }
                    }
                    if planned {
                        self.held_retries().insert(id);
                    }
                }
                let give_up = || self.stop.is_cancelled() && active.cancel.is_cancelled();
                let recorded = self
                    .persist("the end of a run", give_up, || {
                        self.ledger.finish_run(lease, &result)
                    })
                    .await;
                tracing::info!(task = name, run = id, %status, duration_ms = result.duration_ms, "run finished");
                if let Some(m) = &self.config.metrics {
                    let at = result.completed_at.timestamp_millis() as f64 / 1000.0;
                    m.run_finished(name, status, result.duration_ms, result.fuel_used, at);
                }
                (status, recorded)
            }
            None => {
                let (status, reason) = active
                    .why
                    .get()
                    .cloned()
                    .unwrap_or((RunStatus::Interrupted, "the run was stopped".into()));
                let give_up = || self.stop.is_cancelled() && active.cancel.is_cancelled();
                let recorded = self
                    .persist("the end of a run", give_up, || {
                        self.ledger.end_run(lease, status, &reason)
                    })
                    .await;
                tracing::info!(task = name, run = id, %status, reason, "run stopped");
                if let Some(m) = &self.config.metrics {
                    m.run_finished(name, status, 0, 0, 0.0);
                }
                (status, recorded)
            }
        };
        let ran = Attempted {
            run_id: id,
            retry,
            planned,
        };
        match recorded {
            Ok(true) => Some(ran),
            Ok(false) => {
                self.forget_retry(planned.then_some(id));
                // Another replica reaped the run and owns what happens next
                // (including a retry).
                tracing::warn!(task = name, run = id, %status, "the run's lease was lost: another replica recorded it interrupted, this result is not stored");
                None
            }
            Err(e) => {
                tracing::error!(task = name, run = id, error = %e, "cannot record the end of a run");
                Some(ran)
            }
        }
    }
}

/// Whether a run that ended so is tried again under the retry policy.
pub(super) fn retryable(status: RunStatus) -> bool {
    matches!(
        status,
        RunStatus::Error
            | RunStatus::Trapped
            | RunStatus::Timeout
            | RunStatus::OutOfFuel
            | RunStatus::OutOfMemory
    )
}

/// The wait before retry `attempt + 1`: the backoff, doubled per attempt.
pub(super) fn retry_backoff(def: &TaskDef, attempt: u32) -> std::time::Duration {
    def.manifest
        .retries
        .backoff
        .saturating_mul(1u32 << attempt.min(16))
}
