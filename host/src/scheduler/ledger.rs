//! What the scheduler writes down and reads back: the one seam between
//! scheduling and the store. [`Store`] is the real ledger; the
//! paused-clock tests give the scheduler an in-memory one, so that no
//! query waits on real time while tokio's clock is stopped.

use crate::model::{RunResult, RunStatus, Trigger};
use crate::store::{NewRun, Store, TaskSettings};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

#[async_trait::async_trait]
pub trait Ledger: Send + Sync + 'static {
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

    /// Records a run as `running`; `None` when its scheduled occurrence is
    /// already recorded.
    async fn begin_run(&self, run: &NewRun<'_>) -> anyhow::Result<Option<i64>>;

    /// Marks a running row alive.
    async fn heartbeat(&self, id: i64) -> anyhow::Result<()>;

    /// Records how run `id` ended, with the runtime's result.
    async fn finish_run(&self, id: i64, result: &RunResult) -> anyhow::Result<()>;

    /// Ends run `id` without a result from the runtime.
    async fn end_run(&self, id: i64, status: RunStatus, reason: &str) -> anyhow::Result<()>;

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

    async fn begin_run(&self, run: &NewRun<'_>) -> anyhow::Result<Option<i64>> {
        Store::begin_run(self, run).await
    }

    async fn heartbeat(&self, id: i64) -> anyhow::Result<()> {
        Store::heartbeat(self, id).await
    }

    async fn finish_run(&self, id: i64, result: &RunResult) -> anyhow::Result<()> {
        Store::finish_run(self, id, result).await
    }

    async fn end_run(&self, id: i64, status: RunStatus, reason: &str) -> anyhow::Result<()> {
        Store::end_run(self, id, status, reason).await
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
