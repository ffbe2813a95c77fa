//! Run history: recording the end of a run and a fire that was not run,
//! reading runs back, and pruning old ones.

use super::{Backend, Store, decode, query, query_scalar};
use crate::model::{RunStatus, Trigger};
use anyhow::Context as _;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Serialize;
use sqlx::Row;

/// A run about to start.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub task_name: &'a str,
    pub triggered_by: Trigger,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub dry_run: bool,
    pub component_hash: Option<&'a str>,
    /// Whether the task's overlap policy keeps other runs of it from
    /// running at the same time (anything but `allow`).
    pub exclusive: bool,
    /// Which attempt of the fire this is: 0, then 1 for the first retry.
    pub attempt: u32,
}

/// A row of `housekeeper_runs`.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub task_name: String,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub status: RunStatus,
    pub duration_ms: Option<i64>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub triggered_by: Trigger,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub component_hash: Option<String>,
    pub dry_run: bool,
    pub metrics: Option<serde_json::Value>,
    pub fuel_used: Option<i64>,
    pub replica: String,
    pub heartbeat_at: Option<DateTime<Utc>>,
}

const RUN_COLUMNS: &str = "id, task_name, started_at, completed_at, status, duration_ms, output, error, \
     triggered_by, scheduled_for, component_hash, dry_run, CAST(metrics AS TEXT) AS metrics, fuel_used, \
     replica, heartbeat_at";

impl Store {
    /// run's lease has that epoch, and the lease goes with it: a replica
    /// whose lease was reaped cannot overwrite what the reaper recorded.
    /// Returns whether the run was ended by this call.
    pub(super) async fn complete(
        &self,
        id: i64,
        epoch: Option<i64>,
        c: Completion,
    ) -> anyhow::Result<bool> {
        let metrics_param = match self.backend {
            Backend::Postgres(_) => "CAST($6 AS JSONB)",
            Backend::Sqlite(_) => "$6",
        };
        let update = format!(
            "UPDATE housekeeper_runs SET status = $1, completed_at = $2, duration_ms = $3, output = $4, \
             error = $5, metrics = {metrics_param}, fuel_used = $7, \
             component_hash = COALESCE($8, component_hash), heartbeat_at = $2 \
             WHERE id = $9 AND status = 'running' RETURNING task_name"
        );
        let success = c.status == RunStatus::Success;
        let failed = !success;
        let stats = "INSERT INTO housekeeper_task_stats \
             (task_name, total_runs, success_count, error_count, total_duration_ms, last_run_at, last_status, last_success_at) \
             VALUES ($1, 1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (task_name) DO UPDATE SET \
               total_runs = housekeeper_task_stats.total_runs + 1, \
               success_count = housekeeper_task_stats.success_count + excluded.success_count, \
               error_count = housekeeper_task_stats.error_count + excluded.error_count, \
               total_duration_ms = housekeeper_task_stats.total_duration_ms + excluded.total_duration_ms, \
               last_run_at = excluded.last_run_at, \
               last_status = excluded.last_status, \
               last_success_at = COALESCE(excluded.last_success_at, housekeeper_task_stats.last_success_at)";
        let ended = on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            if let Some(epoch) = epoch {
                let released = query("DELETE FROM housekeeper_leases WHERE run_id = $1 AND epoch = $2")
                    .bind(id)
                    .bind(epoch)
                    .execute(&mut *tx)
                    .await
                    .context("cannot release the run's lease")?
                    .rows_affected();
                if released == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
            }
            let task: Option<String> = query_scalar(&update)
                .bind(c.status.as_str())
                .bind(c.completed_at)
                .bind(c.duration_ms)
                .bind(&c.output)
                .bind(&c.error)
                .bind(&c.metrics)
                .bind(c.fuel_used)
                .bind(&c.component_hash)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .context("cannot record the end of a run")?;
            // A row that is no longer running was already ended (e.g. marked
            // interrupted by recovery): keep what it says.
            let ended = task.is_some();
            if let Some(task) = task {
                query(stats)
                    .bind(&task)
                    .bind(i64::from(success))
                    .bind(i64::from(failed))
                    .bind(c.duration_ms)
                    .bind(c.completed_at)
                    .bind(c.status.as_str())
                    .bind(success.then_some(c.completed_at))
                    .execute(&mut *tx)
                    .await
                    .context("cannot update the task summary")?;
            }
            tx.commit().await?;
            ended
        });
        Ok(ended)
    }

    /// Records a fire that was not run, with the reason. A scheduled
    /// occurrence is recorded once; returns `None` if it already was.
    pub async fn record_skipped(
        &self,
        task_name: &str,
        triggered_by: Trigger,
        scheduled_for: Option<DateTime<Utc>>,
        reason: &str,
    ) -> anyhow::Result<Option<i64>> {
        let now = self.db_now().await?;
        let sql = "INSERT INTO housekeeper_runs \
                   (task_name, started_at, completed_at, status, duration_ms, error, triggered_by, scheduled_for, replica) \
                   VALUES ($1, $2, $2, 'skipped', 0, $3, $4, $5, $6) \
                   ON CONFLICT (task_name, scheduled_for) WHERE triggered_by = 'schedule' DO NOTHING \
                   RETURNING id";
        let stats = "INSERT INTO housekeeper_task_stats (task_name, skipped_count) VALUES ($1, 1) \
                     ON CONFLICT (task_name) DO UPDATE SET skipped_count = housekeeper_task_stats.skipped_count + 1";
        let id = on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            let id: Option<i64> = query_scalar(sql)
                .bind(task_name)
                .bind(now)
                .bind(reason)
                .bind(triggered_by.as_str())
                .bind(scheduled_for)
                .bind(&self.replica)
                .fetch_optional(&mut *tx)
                .await
                .context("cannot record a skipped run")?;
            if id.is_some() {
                query(stats).bind(task_name).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            id
        });
        Ok(id)
    }

    /// The most recent runs of `task`, newest first.
    pub async fn runs(&self, task: &str, limit: i64) -> anyhow::Result<Vec<RunRecord>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM housekeeper_runs WHERE task_name = $1 \
             ORDER BY started_at DESC, id DESC LIMIT $2"
        );
        in_tx!(self, conn => {
            let rows = query(&sql).bind(task).bind(limit).fetch_all(&mut *conn).await?;
            rows.iter().map(run_record).collect()
        })
    }

    pub async fn runs_page(
        &self,
        task: &str,
        limit: i64,
        offset: i64,
    ) -> anyhow::Result<(Vec<RunRecord>, i64)> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM housekeeper_runs WHERE task_name = $1 \
             ORDER BY started_at DESC, id DESC LIMIT $2 OFFSET $3"
        );
        let count = "SELECT COUNT(*) FROM housekeeper_runs WHERE task_name = $1";
        in_tx!(self, conn => {
            let rows = query(&sql).bind(task).bind(limit).bind(offset).fetch_all(&mut *conn).await?;
            let total: i64 = query_scalar(count).bind(task).fetch_one(&mut *conn).await?;
            Ok((rows.iter().map(run_record).collect::<anyhow::Result<Vec<_>>>()?, total))
        })
    }

    pub async fn run(&self, id: i64) -> anyhow::Result<Option<RunRecord>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM housekeeper_runs WHERE id = $1");
        in_tx!(self, conn => {
            let row = query(&sql).bind(id).fetch_optional(&mut *conn).await?;
            row.as_ref().map(run_record).transpose()
        })
    }

    /// The latest occurrence of `task`'s schedule that was recorded (run or
    /// skipped): where a restarted scheduler picks up.
    pub async fn last_scheduled_for(&self, task: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        let sql = "SELECT MAX(scheduled_for) FROM housekeeper_runs WHERE task_name = $1 AND triggered_by = 'schedule'";
        let last: Option<DateTime<Utc>> =
            in_tx!(self, conn => query_scalar(sql).bind(task).fetch_one(&mut *conn).await?);
        Ok(last)
    }

    /// Deletes `task`'s finished runs older than `keep_days`, and beyond the
    /// newest `keep_last`. Returns how many rows went.
    pub async fn prune(&self, task: &str, keep_days: u32, keep_last: u32) -> anyhow::Result<u64> {
        let cutoff = self.db_now().await? - ChronoDuration::days(i64::from(keep_days));
        let sql = "DELETE FROM housekeeper_runs WHERE task_name = $1 AND status <> 'running' AND ( \
                     started_at < $2 OR id NOT IN ( \
                       SELECT id FROM housekeeper_runs WHERE task_name = $1 \
                       ORDER BY started_at DESC, id DESC LIMIT $3))";
        let done = in_tx!(self, conn => query(sql)
            .bind(task)
            .bind(cutoff)
            .bind(i64::from(keep_last))
            .execute(&mut *conn)
            .await?
            .rows_affected());
        Ok(done)
    }
}

pub(super) struct Completion {
    pub(super) status: RunStatus,
    pub(super) completed_at: DateTime<Utc>,
    pub(super) duration_ms: i64,
    pub(super) output: Option<String>,
    pub(super) error: Option<String>,
    pub(super) metrics: Option<String>,
    pub(super) fuel_used: Option<i64>,
    pub(super) component_hash: Option<String>,
}

fn run_record<R>(row: &R) -> anyhow::Result<RunRecord>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> DateTime<Utc>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let id: i64 = row.try_get("id")?;
    let text = |column: &str| -> anyhow::Result<String> { Ok(row.try_get(column)?) };
    let status = decode(&text("status")?, "housekeeper_runs", "status")
        .with_context(|| format!("run {id}"))?;
    let triggered_by = decode(&text("triggered_by")?, "housekeeper_runs", "triggered_by")
        .with_context(|| format!("run {id}"))?;
    let metrics: Option<String> = row.try_get("metrics")?;
    Ok(RunRecord {
        id,
        task_name: row.try_get("task_name")?,
        started_at: row.try_get("started_at")?,
        completed_at: row.try_get("completed_at")?,
        status,
        duration_ms: row.try_get("duration_ms")?,
        output: row.try_get("output")?,
        error: row.try_get("error")?,
        triggered_by,
        scheduled_for: row.try_get("scheduled_for")?,
        component_hash: row.try_get("component_hash")?,
        dry_run: row.try_get("dry_run")?,
        metrics: metrics.and_then(|m| serde_json::from_str(&m).ok()),
        fuel_used: row.try_get("fuel_used")?,
        replica: row.try_get("replica")?,
        heartbeat_at: row.try_get("heartbeat_at")?,
    })
}
