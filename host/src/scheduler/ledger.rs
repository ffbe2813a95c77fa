//! What the scheduler writes down and reads back: the one seam between
//! scheduling and the store. [`Store`] is the real ledger; the
//! paused-clock tests give the scheduler an in-memory one, so that no
//! query waits on real time while tokio's clock is stopped.

use crate::model::{RunResult, RunStatus, Trigger};
use crate::store::{Claim, Lease, NewRun, Reaped, Renewal, Store, TaskSettings};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

#[async_trait::async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Whether other replicas may share it (PostgreSQL). A ledger only
    /// this process writes (SQLite) needs no heartbeat loop: nobody else
    /// reaps, toggles or keeps another clock.
    fn shared(&self) -> bool {
        true
    }

    /// Persisted settings of every task that has any.
    async fn settings(&self) -> anyhow::Result<HashMap<String, TaskSettings>>;

    /// Persists `task`'s enabled flag.
    async fn set_enabled(&self, task: &str, enabled: bool) -> anyhow::Result<()>;

    /// Marks this replica's `running` rows (left by a crash) `interrupted`.
    async fn interrupt_orphans(&self) -> anyhow::Result<Vec<i64>>;

    /// The latest recorded occurrence of `task`'s schedule (run or
    /// skipped).
    async fn last_scheduled_for(&self, task: &str) -> anyhow::Result<Option<DateTime<Utc>>>;

    /// When `task` last succeeded.
    async fn last_success(&self, task: &str) -> anyhow::Result<Option<DateTime<Utc>>>;

    /// Claims a run: recorded `running` under a lease, unless its
    /// occurrence is already recorded or the task's exclusive lease is held.
    async fn begin_run(&self, run: &NewRun<'_>) -> anyhow::Result<Claim>;

    /// Renews a run's lease; says whether it is still held and whether a
    /// cancel was asked for.
    async fn heartbeat(&self, lease: Lease) -> anyhow::Result<Renewal>;

    /// Records how a run ended, with the runtime's result; `false` when
    /// its lease was lost and nothing was written.
    async fn finish_run(&self, lease: Lease, result: &RunResult) -> anyhow::Result<bool>;

    /// Ends a run without a result from the runtime; `false` when its lease
    /// was lost.
    async fn end_run(&self, lease: Lease, status: RunStatus, reason: &str) -> anyhow::Result<bool>;

    /// Records the runs whose leases expired as `interrupted`; returns the
    /// ones this call reaped.
    async fn reap(&self) -> anyhow::Result<Vec<Reaped>>;

    /// Asks the run holding `task`'s exclusive lease, on any replica, to
    /// stop.
    async fn request_cancel_task(&self, task: &str, reason: &str) -> anyhow::Result<()>;

    /// Asks for run `run_id` to stop wherever it runs; the replica running
    /// it, or `None` if it holds no lease.
    async fn request_cancel(&self, run_id: i64, reason: &str) -> anyhow::Result<Option<String>>;

    /// The database's clock.
    async fn db_now(&self) -> anyhow::Result<DateTime<Utc>>;

    /// How long ago a process last reported under this replica's name.
    async fn replica_last_seen(&self) -> anyhow::Result<Option<std::time::Duration>>;

    /// Takes this replica off the list of live ones.
    async fn replica_leave(&self) -> anyhow::Result<()>;

    /// Records that this replica is alive, with its clock's offset.
    async fn replica_heartbeat(
        &self,
        started_at: DateTime<Utc>,
        clock_offset_ms: i64,
    ) -> anyhow::Result<()>;

    /// Records a fire that was not run; `None` when its scheduled
    /// occurrence is already recorded.
    async fn record_skipped(
        &self,
        task: &str,
        triggered_by: Trigger,
        scheduled_for: Option<DateTime<Utc>>,
        reason: &str,
    ) -> anyhow::Result<Option<i64>>;

    /// Deletes `task`'s finished runs beyond its history policy.
    async fn prune(&self, task: &str, keep_days: u32, keep_last: u32) -> anyhow::Result<u64>;
}

#[async_trait::async_trait]
impl Ledger for Store {
    fn shared(&self) -> bool {
        Store::shared(self)
    }

    async fn settings(&self) -> anyhow::Result<HashMap<String, TaskSettings>> {
        Store::settings(self).await
    }

    async fn set_enabled(&self, task: &str, enabled: bool) -> anyhow::Result<()> {
        Store::set_enabled(self, task, enabled).await
    }

    async fn interrupt_orphans(&self) -> anyhow::Result<Vec<i64>> {
        Store::interrupt_orphans(self).await
    }

    async fn last_scheduled_for(&self, task: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        Store::last_scheduled_for(self, task).await
    }

    async fn last_success(&self, task: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        Ok(Store::stats(self)
            .await?
            .get(task)
            .and_then(|s| s.last_success_at))
    }

    async fn begin_run(&self, run: &NewRun<'_>) -> anyhow::Result<Claim> {
        Store::begin_run(self, run).await
    }

    async fn heartbeat(&self, lease: Lease) -> anyhow::Result<Renewal> {
        Store::heartbeat(self, lease).await
    }

    async fn finish_run(&self, lease: Lease, result: &RunResult) -> anyhow::Result<bool> {
        Store::finish_run(self, lease, result).await
    }

    async fn end_run(&self, lease: Lease, status: RunStatus, reason: &str) -> anyhow::Result<bool> {
        Store::end_run(self, lease, status, reason).await
    }

    async fn reap(&self) -> anyhow::Result<Vec<Reaped>> {
        Store::reap(self).await
    }

    async fn request_cancel_task(&self, task: &str, reason: &str) -> anyhow::Result<()> {
        Store::request_cancel_task(self, task, reason).await
    }

    async fn request_cancel(&self, run_id: i64, reason: &str) -> anyhow::Result<Option<String>> {
        Store::request_cancel(self, run_id, reason).await
    }

    async fn db_now(&self) -> anyhow::Result<DateTime<Utc>> {
        Store::db_now(self).await
    }

    async fn replica_last_seen(&self) -> anyhow::Result<Option<std::time::Duration>> {
        Store::replica_last_seen(self).await
    }

    async fn replica_leave(&self) -> anyhow::Result<()> {
        Store::replica_leave(self).await
    }

    async fn replica_heartbeat(
        &self,
        started_at: DateTime<Utc>,
        clock_offset_ms: i64,
    ) -> anyhow::Result<()> {
        Store::replica_heartbeat(self, started_at, env!("CARGO_PKG_VERSION"), clock_offset_ms).await
    }

    async fn record_skipped(
        &self,
        task: &str,
        triggered_by: Trigger,
        scheduled_for: Option<DateTime<Utc>>,
        reason: &str,
    ) -> anyhow::Result<Option<i64>> {
        Store::record_skipped(self, task, triggered_by, scheduled_for, reason).await
    }

    async fn prune(&self, task: &str, keep_days: u32, keep_last: u32) -> anyhow::Result<u64> {
        Store::prune(self, task, keep_days, keep_last).await
    }
}
