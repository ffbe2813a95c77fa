//! What the scheduler writes down and reads back: the one seam between
//! scheduling and the store. [`Store`] is the real ledger; the
//! paused-clock tests give the scheduler an in-memory one, so that no
//! query waits on real time while tokio's clock is stopped.

use crate::model::{RunResult, RunStatus, Trigger};
use crate::store::{Claim, Lease, NewRun, PendingRetry, Reaped, Renewal, Store, TaskSettings};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::Duration;

#[async_trait::async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Whether other replicas may share it (PostgreSQL). A ledger only
    /// this process writes (SQLite) needs no heartbeat loop: nobody else
    /// reaps, toggles or keeps another clock.
    fn shared(&self) -> bool {
        true
    }

    /// The name this replica records its runs under.
    fn replica(&self) -> &str;

    /// Persisted settings of every task that has any.
    async fn settings(&self) -> anyhow::Result<HashMap<String, TaskSettings>>;

    /// Persists `task`'s enabled flag.
    async fn set_enabled(&self, task: &str, enabled: bool) -> anyhow::Result<()>;

    /// Marks this replica's `running` rows started before `before` (left
    /// by a crash) `interrupted`, planning retries as `retry_in` says.
    async fn interrupt_orphans(
        &self,
        before: DateTime<Utc>,
        retry_in: &(dyn for<'r> Fn(&'r Reaped) -> Option<Duration> + Send + Sync),
    ) -> anyhow::Result<Vec<Reaped>>;

    /// The latest recorded occurrence of `task`'s schedule (run or
    /// skipped).
    async fn last_scheduled_for(&self, task: &str) -> anyhow::Result<Option<DateTime<Utc>>>;

    /// When `task` last succeeded.
    async fn last_success(&self, task: &str) -> anyhow::Result<Option<DateTime<Utc>>>;

    /// Claims a run: recorded `running` under a lease, unless its
    /// occurrence is already recorded or the task's exclusive lease is held.
    /// A retry on record (`retry_of`) is taken with the claim; `Recorded`
    /// if another replica took it.
    async fn begin_run(&self, run: &NewRun<'_>, retry_of: Option<i64>) -> anyhow::Result<Claim>;

    /// Renews a run's lease; says whether it is still held and whether a
    /// cancel was asked for.
    async fn heartbeat(&self, lease: Lease) -> anyhow::Result<Renewal>;

    /// Records how a run ended, with the runtime's result; `false` when
    /// its lease was lost and nothing was written.
    async fn finish_run(&self, lease: Lease, result: &RunResult) -> anyhow::Result<bool>;

    /// Ends a run without a result from the runtime; `false` when its lease
    /// was lost.
    async fn end_run(&self, lease: Lease, status: RunStatus, reason: &str) -> anyhow::Result<bool>;

    /// Records the runs whose leases expired as `interrupted` (or
    /// `cancelled`, if asked to stop), planning a retry after the backoff
    /// `retry_in` gives; returns the ones this call reaped.
    async fn reap(
        &self,
        retry_in: &(dyn for<'r> Fn(&'r Reaped) -> Option<Duration> + Send + Sync),
    ) -> anyhow::Result<Vec<Reaped>>;

    /// Plans a retry of run `run_id` (still running) after `backoff`;
    /// whether this call planned it.
    async fn plan_retry(&self, run_id: i64, backoff: Duration) -> anyhow::Result<bool>;

    /// The retries on record.
    async fn pending_retries(&self) -> anyhow::Result<Vec<PendingRetry>>;

    /// Gives up the planned retry of `after_run`, recording it skipped for
    /// `skipped` if given; `false` if it was claimed or dropped already.
    async fn drop_retry(&self, after_run: i64, skipped: Option<&str>) -> anyhow::Result<bool>;

    /// Asks the run holding `task`'s exclusive lease, on any replica, to
    /// stop.
    async fn request_cancel_task(&self, task: &str, reason: &str) -> anyhow::Result<()>;

    /// Asks for run `run_id` to stop wherever it runs; the replica running
    /// it, or `None` if it holds no lease.
    async fn request_cancel(&self, run_id: i64, reason: &str) -> anyhow::Result<Option<String>>;

    /// The database's clock.
    async fn db_now(&self) -> anyhow::Result<DateTime<Utc>>;

    /// Takes this replica off the list of live ones.
    async fn replica_leave(&self) -> anyhow::Result<()>;

    /// Makes the replica's name this process's unless another process
    /// reported under it within `stale`.
    async fn claim_name(&self, started_at: DateTime<Utc>, stale: Duration) -> anyhow::Result<bool>;

    /// Records that this replica is alive, with its clock's offset; the
    /// start time its row held before.
    async fn replica_heartbeat(
        &self,
        started_at: DateTime<Utc>,
        clock_offset_ms: i64,
    ) -> anyhow::Result<Option<DateTime<Utc>>>;

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

    fn replica(&self) -> &str {
        Store::replica(self)
    }

    async fn settings(&self) -> anyhow::Result<HashMap<String, TaskSettings>> {
        Store::settings(self).await
    }

    async fn set_enabled(&self, task: &str, enabled: bool) -> anyhow::Result<()> {
        Store::set_enabled(self, task, enabled).await
    }

    async fn interrupt_orphans(
        &self,
        before: DateTime<Utc>,
        retry_in: &(dyn for<'r> Fn(&'r Reaped) -> Option<Duration> + Send + Sync),
    ) -> anyhow::Result<Vec<Reaped>> {
        Store::interrupt_orphans(self, before, retry_in).await
    }

    async fn last_scheduled_for(&self, task: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        Store::last_scheduled_for(self, task).await
    }

    async fn last_success(&self, task: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        Store::last_success(self, task).await
    }

    async fn begin_run(&self, run: &NewRun<'_>, retry_of: Option<i64>) -> anyhow::Result<Claim> {
        match retry_of {
            Some(after_run) => Store::begin_retry(self, run, after_run).await,
            None => Store::begin_run(self, run).await,
        }
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

    async fn reap(
        &self,
        retry_in: &(dyn for<'r> Fn(&'r Reaped) -> Option<Duration> + Send + Sync),
    ) -> anyhow::Result<Vec<Reaped>> {
        Store::reap(self, retry_in).await
    }

    async fn plan_retry(&self, run_id: i64, backoff: Duration) -> anyhow::Result<bool> {
        Store::plan_retry(self, run_id, backoff).await
    }

    async fn pending_retries(&self) -> anyhow::Result<Vec<PendingRetry>> {
        Store::pending_retries(self).await
    }

    async fn drop_retry(&self, after_run: i64, skipped: Option<&str>) -> anyhow::Result<bool> {
        Store::drop_retry(self, after_run, skipped).await
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

    async fn replica_leave(&self) -> anyhow::Result<()> {
        Store::replica_leave(self).await
    }

    async fn claim_name(&self, started_at: DateTime<Utc>, stale: Duration) -> anyhow::Result<bool> {
        Store::claim_name(self, started_at, env!("CARGO_PKG_VERSION"), stale).await
    }

    async fn replica_heartbeat(
        &self,
        started_at: DateTime<Utc>,
        clock_offset_ms: i64,
    ) -> anyhow::Result<Option<DateTime<Utc>>> {
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
