//! Retries waiting out their backoff, as rows: planned while the failed
//! run still holds its lease (or by the replica that reaps it), claimed by
//! [`Store::begin_run`] in the transaction that records the retry's run.
//! A row outlives the process that planned it, so a replica that dies
//! during a backoff does not take the retry with it.

use super::{Backend, Store, query};
use crate::model::Trigger;
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::time::Duration;

/// A retry on record, waiting to be run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRetry {
    /// The run it retries; also the retry's key.
    pub after_run: i64,
    pub task_name: String,
    pub scheduled_for: Option<DateTime<Utc>>,
    /// The attempt the retry will be (1 for the first retry).
    pub attempt: u32,
    pub dry_run: bool,
    /// The replica that planned it, and runs it when it is due.
    pub replica: String,
    /// When it is due, by the database's clock.
    pub not_before: DateTime<Utc>,
}

impl Store {
    /// Plans a retry of run `run_id` after `backoff`, while the run is
    /// still `running`. Planning twice (the run's replica, then a reaper)
    /// keeps the first plan.
    pub async fn plan_retry(&self, run_id: i64, backoff: Duration) -> anyhow::Result<bool> {
        let now = self.db_now().await?;
        let not_before = now + chrono::Duration::from_std(backoff).unwrap_or(chrono::Duration::MAX);
        let sql = "INSERT INTO housekeeper_retries \
                   (after_run, task_name, scheduled_for, attempt, dry_run, replica, not_before) \
                   SELECT id, task_name, scheduled_for, attempt + 1, dry_run, $2, $3 \
                   FROM housekeeper_runs WHERE id = $1 AND status = 'running' \
                   ON CONFLICT (after_run) DO NOTHING";
        let planned = in_tx!(self, conn => query(sql)
            .bind(run_id)
            .bind(&self.replica)
            .bind(not_before)
            .execute(&mut *conn)
            .await
            .context("cannot record a retry")?
            .rows_affected());
        Ok(planned > 0)
    }

    /// Every retry on record, oldest due first.
    pub async fn pending_retries(&self) -> anyhow::Result<Vec<PendingRetry>> {
        let sql = "SELECT after_run, task_name, scheduled_for, attempt, dry_run, replica, not_before \
                   FROM housekeeper_retries ORDER BY not_before, after_run";
        in_tx!(self, conn => {
            let rows = query(sql)
                .fetch_all(&mut *conn)
                .await
                .context("cannot read the planned retries")?;
            rows.iter()
                .map(|row| {
                    let attempt: i32 = row.try_get("attempt")?;
                    Ok(PendingRetry {
                        after_run: row.try_get("after_run")?,
                        task_name: row.try_get("task_name")?,
                        scheduled_for: row.try_get("scheduled_for")?,
                        attempt: attempt.max(0) as u32,
                        dry_run: row.try_get("dry_run")?,
                        replica: row.try_get("replica")?,
                        not_before: row.try_get("not_before")?,
                    })
                })
                .collect()
        })
    }

    /// Gives up the retry of run `after_run`: cancelled during its
    /// backoff, or (with `skipped`) not run because of the task's overlap
    /// policy, which is recorded as a skipped run. `false` if another
    /// replica already claimed or dropped it.
    pub async fn drop_retry(&self, after_run: i64, skipped: Option<&str>) -> anyhow::Result<bool> {
        let now = self.db_now().await?;
        let delete = "DELETE FROM housekeeper_retries WHERE after_run = $1 \
                      RETURNING task_name, scheduled_for";
        let insert = "INSERT INTO housekeeper_runs \
                      (task_name, started_at, completed_at, status, duration_ms, error, triggered_by, scheduled_for, replica) \
                      VALUES ($1, $2, $2, 'skipped', 0, $3, $4, $5, $6)";
        let stats = "INSERT INTO housekeeper_task_stats (task_name, skipped_count) VALUES ($1, 1) \
                     ON CONFLICT (task_name) DO UPDATE SET skipped_count = housekeeper_task_stats.skipped_count + 1";
        let dropped = on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            let row = query(delete).bind(after_run).fetch_optional(&mut *tx).await
                .context("cannot drop a planned retry")?;
            let Some(row) = row else {
                tx.rollback().await?;
                return Ok(false);
            };
            if let Some(reason) = skipped {
                let task: String = row.try_get("task_name")?;
                let scheduled_for: Option<DateTime<Utc>> = row.try_get("scheduled_for")?;
                query(insert)
                    .bind(&task)
                    .bind(now)
                    .bind(reason)
                    .bind(Trigger::Retry.as_str())
                    .bind(scheduled_for)
                    .bind(&self.replica)
                    .execute(&mut *tx)
                    .await
                    .context("cannot record a skipped retry")?;
                query(stats).bind(&task).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            true
        });
        Ok(dropped)
    }
}
