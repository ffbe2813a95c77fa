//! What each replica does for the others, once per heartbeat: report
//! itself with its clock's offset from the database's (and set its
//! scheduling clock to the database's), reap the runs of replicas that
//! stopped renewing their leases (planning their retries as the task's
//! policy says), run the planned retries that are due, and pick up toggles
//! made on other replicas.

use super::clock::offset_from;
use super::run::{Fire, retry_backoff};
use super::{Inner, TaskDef};
use crate::model::Trigger;
use crate::store::{PendingRetry, Reaped};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;

/// Above this offset from the database's clock a replica warns.
const CLOCK_WARN: Duration = Duration::from_secs(2);

impl Inner {
    /// Makes this replica's name this process's, waiting while another
    /// process reports under it: two replicas of one name would take each
    /// other's runs for their own (crash recovery marks a replica's running
    /// rows interrupted). The claim is one statement, so of processes of
    /// one name starting together one gets it. A previous process of this
    /// replica that died is waited out for at most a lease; one that
    /// stopped cleanly left no row. Returns the start time written, by the
    /// database's clock (microseconds, as it keeps them).
    pub(super) async fn claim_own_name(&self) -> anyhow::Result<DateTime<Utc>> {
        let lease = self.config.heartbeat_interval * 3;
        let mut warned = false;
        loop {
            let give_up = || self.stop.is_cancelled();
            let now = self
                .persist("the start of this process", give_up, || {
                    self.ledger.db_now()
                })
                .await?;
            let started_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
            match self.ledger.claim_name(started_at, lease).await {
                Ok(true) => return Ok(started_at),
                Ok(false) if !warned => {
                    tracing::warn!(
                        "another process reports under this replica's name; waiting until it is gone (give each replica its own HOUSEKEEPER_REPLICA)"
                    );
                    warned = true;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot claim this replica's name; trying again");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.stop.cancelled() => anyhow::bail!("stopped while waiting for this replica's name"),
            }
        }
    }

    /// Starts the heartbeat loop; the first beat has happened when this
    /// returns, so the clock is already the database's.
    pub(super) async fn start_cluster_loop(self: &Arc<Self>) {
        if !self.ledger.shared() {
            return;
        }
        // The start this process claimed its name with: later beats compare
        // the row's with it.
        let Some(&started_at) = self.prepared.get() else {
            return;
        };
        self.beat(started_at, true).await;
        let inner = self.clone();
        self.loops.spawn(async move {
            let mut every = tokio::time::interval(inner.config.heartbeat_interval);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => inner.beat(started_at, false).await,
                    _ = inner.stop.cancelled() => return,
                }
            }
        });
    }

    async fn beat(self: &Arc<Self>, started_at: DateTime<Utc>, first: bool) {
        let ahead = self.sync_clock().await;
        match self
            .ledger
            .replica_heartbeat(started_at, ahead.num_milliseconds())
            .await
        {
            // Since this replica's first beat, only it writes its row:
            // another start time there is another live process of its
            // name (the wait at start only catches one that was first).
            Ok(Some(before)) if !first && before != started_at => tracing::error!(
                replica = self.ledger.replica(),
                "another process is reporting under this replica's name: two replicas of one name take each other's runs for their own; give each its own HOUSEKEEPER_REPLICA"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot record this replica's heartbeat"),
        }
        match self.ledger.reap(&|run| self.retry_in(run)).await {
            Ok(reaped) => {
                for run in reaped {
                    self.reaped(run);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot reap expired leases"),
        }
        self.fire_due_retries().await;
        match self.ledger.settings().await {
            Ok(settings) => {
                let mut tasks = self.lock();
                for (name, slot) in tasks.iter_mut() {
                    if let Some(s) = settings.get(name) {
                        slot.enabled = s.enabled;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read task settings"),
        }
        self.changed();
    }

    /// Measures how far this process's clock is ahead of the database's,
    /// and sets the scheduling clock to the database's.
    async fn sync_clock(&self) -> chrono::Duration {
        let before = chrono::Utc::now();
        let db = match self.ledger.db_now().await {
            Ok(db) => db,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the database's clock");
                return chrono::Duration::zero();
            }
        };
        let after = chrono::Utc::now();
        let ahead = offset_from(self.clock.ahead(), before, db, after);
        self.clock.correct(ahead);
        if let Some(m) = &self.config.metrics {
            m.set_clock_offset(ahead.num_milliseconds() as f64 / 1000.0);
        }
        if ahead.abs().to_std().unwrap_or_default() > CLOCK_WARN {
            tracing::warn!(
                offset_ms = ahead.num_milliseconds(),
                "this replica's clock is off from the database's; the database's clock is used"
            );
        }
        ahead
    }

    /// Records the runs a previous process of this replica left running as
    /// interrupted, with their retries as their tasks' policies say.
    pub(super) async fn interrupt_orphans(self: &Arc<Self>) -> anyhow::Result<()> {
        let Some(&before) = self.prepared.get() else {
            return Ok(());
        };
        let give_up = || self.stop.is_cancelled();
        let retry_in = |run: &Reaped| self.retry_in(run);
        let orphans = self
            .persist("the runs a previous process left", give_up, || {
                self.ledger.interrupt_orphans(before, &retry_in)
            })
            .await?;
        self.changed();
        for run in &orphans {
            tracing::warn!(
                task = run.task_name,
                run = run.id,
                retry = run.retry,
                "recorded a run left by a previous process as interrupted"
            );
        }
        Ok(())
    }

    /// After what backoff a reaped run is retried under its task's policy;
    /// `None` if it is not.
    fn retry_in(&self, run: &Reaped) -> Option<Duration> {
        // A `housekeeper run` from a shell is the operator's to repeat.
        if run.triggered_by == Trigger::Cli || self.stop.is_cancelled() {
            return None;
        }
        let def: Arc<TaskDef> = self.lock().get(&run.task_name)?.def.clone();
        (run.attempt < def.manifest.retries.max).then(|| retry_backoff(&def, run.attempt))
    }

    /// A run another replica left, now recorded here.
    fn reaped(&self, run: Reaped) {
        let status = match &run.cancelled {
            Some(reason) => {
                tracing::warn!(
                    task = run.task_name,
                    run = run.id,
                    replica = run.replica,
                    reason,
                    "recorded a run cancelled: it was asked to stop, and its replica stopped renewing the lease"
                );
                crate::model::RunStatus::Cancelled
            }
            None => {
                tracing::warn!(
                    task = run.task_name,
                    run = run.id,
                    replica = run.replica,
                    retry = run.retry,
                    "recorded a run interrupted: its replica stopped renewing the lease"
                );
                crate::model::RunStatus::Interrupted
            }
        };
        if let Some(m) = &self.config.metrics {
            m.run_finished(&run.task_name, status, 0, 0, 0.0);
        }
    }

    /// Runs the planned retries that are due: its own when their backoff
    /// is over, another replica's a lease later (that replica runs it
    /// itself unless it is gone). Of replicas that fire one together, the
    /// claim lets one run it.
    pub(super) async fn fire_due_retries(self: &Arc<Self>) {
        let Some(pending) = self.pending_retries().await else {
            return;
        };
        let now = self.clock.now();
        let lease =
            chrono::Duration::from_std(self.config.heartbeat_interval * 3).unwrap_or_default();
        for retry in pending {
            if self.held_retries().contains(&retry.after_run) {
                continue;
            }
            let due = if retry.replica == self.ledger.replica() {
                retry.not_before
            } else {
                retry.not_before + lease
            };
            if due <= now {
                self.fire_retry(&retry).await;
            }
        }
    }

    /// At the start of a replica that shares its store with no other:
    /// the retries a previous process planned run when they are due.
    pub(super) async fn resume_retries(self: &Arc<Self>) {
        let Some(pending) = self.pending_retries().await else {
            return;
        };
        for retry in pending {
            let inner = self.clone();
            let wait = (retry.not_before - self.clock.now())
                .to_std()
                .unwrap_or_default();
            self.loops.spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => inner.fire_retry(&retry).await,
                    _ = inner.stop.cancelled() => {}
                }
            });
        }
    }

    async fn pending_retries(&self) -> Option<Vec<PendingRetry>> {
        self.ledger
            .pending_retries()
            .await
            .inspect_err(
                |e| tracing::warn!(error = %format!("{e:#}"), "cannot read the planned retries"),
            )
            .ok()
    }

    async fn fire_retry(self: &Arc<Self>, retry: &PendingRetry) {
        if !self.lock().contains_key(&retry.task_name) {
            // A task no replica loads any more: its retry is given up a
            // day after it was due.
            let stale = self.clock.now() - retry.not_before > chrono::Duration::days(1);
            if stale {
                let why = "no replica had the task loaded within a day of the retry";
                if let Err(e) = self.ledger.drop_retry(retry.after_run, Some(why)).await {
                    tracing::warn!(error = %e, "cannot drop a planned retry");
                }
            }
            return;
        }
        self.fire(
            &retry.task_name,
            Fire {
                trigger: Trigger::Retry,
                attempt: retry.attempt,
                scheduled_for: retry.scheduled_for,
                dry_run: retry.dry_run,
                retry_of: Some(retry.after_run),
            },
        );
    }
}
