//! The per-task summary (`housekeeper_task_stats`) and the persisted
//! per-task settings (`housekeeper_config`).

use super::{Backend, Store, decode, query, query_scalar};
use crate::model::RunStatus;
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use std::collections::HashMap;

/// Lifetime totals of one task, from the maintained summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskStats {
    pub task_name: String,
    pub total_runs: i64,
    pub success_count: i64,
    pub error_count: i64,
    pub skipped_count: i64,
    pub avg_duration_ms: Option<f64>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_status: Option<RunStatus>,
    pub last_success_at: Option<DateTime<Utc>>,
}

/// Persisted per-task settings (`housekeeper_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSettings {
    pub enabled: bool,
    pub schedule: Option<String>,
    pub last_modified_at: DateTime<Utc>,
}

impl Store {
    /// The summary of every task that has run.
    pub async fn stats(&self) -> anyhow::Result<HashMap<String, TaskStats>> {
        let sql = "SELECT task_name, total_runs, success_count, error_count, skipped_count, total_duration_ms, \
                   last_run_at, last_status, last_success_at FROM housekeeper_task_stats";
        in_tx!(self, conn => {
            let rows = query(sql).fetch_all(&mut *conn).await?;
            rows.iter()
                .map(|row| {
                    let total: i64 = row.try_get("total_runs")?;
                    let duration: i64 = row.try_get("total_duration_ms")?;
                    let task_name: String = row.try_get("task_name")?;
                    let last_status: Option<String> = row.try_get("last_status")?;
                    let last_status = last_status
                        .map(|text| {
                            decode(&text, "housekeeper_task_stats", "last_status")
                                .with_context(|| format!("task {task_name:?}"))
                        })
                        .transpose()?;
                    let stats = TaskStats {
                        task_name,
                        total_runs: total,
                        success_count: row.try_get("success_count")?,
                        error_count: row.try_get("error_count")?,
                        skipped_count: row.try_get("skipped_count")?,
                        avg_duration_ms: (total > 0).then(|| duration as f64 / total as f64),
                        last_run_at: row.try_get("last_run_at")?,
                        last_status,
                        last_success_at: row.try_get("last_success_at")?,
                    };
                    Ok((stats.task_name.clone(), stats))
                })
                .collect::<anyhow::Result<_>>()
        })
    }

    /// When `task` last succeeded.
    pub async fn last_success(&self, task: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        let sql = "SELECT last_success_at FROM housekeeper_task_stats WHERE task_name = $1";
        let last: Option<Option<DateTime<Utc>>> =
            in_tx!(self, conn => query_scalar(sql).bind(task).fetch_optional(&mut *conn).await?);
        Ok(last.flatten())
    }

    /// Persisted settings of every task that has any.
    pub async fn settings(&self) -> anyhow::Result<HashMap<String, TaskSettings>> {
        let sql = "SELECT task_name, enabled, schedule, last_modified_at FROM housekeeper_config";
        in_tx!(self, conn => {
            let rows = query(sql).fetch_all(&mut *conn).await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        row.try_get::<String, _>("task_name")?,
                        TaskSettings {
                            enabled: row.try_get("enabled")?,
                            schedule: row.try_get("schedule")?,
                            last_modified_at: row.try_get("last_modified_at")?,
                        },
                    ))
                })
                .collect::<anyhow::Result<_>>()
        })
    }

    /// Persists `task`'s enabled flag.
    pub async fn set_enabled(&self, task: &str, enabled: bool) -> anyhow::Result<()> {
        let sql = "INSERT INTO housekeeper_config (task_name, enabled, last_modified_at) VALUES ($1, $2, $3) \
                   ON CONFLICT (task_name) DO UPDATE SET enabled = excluded.enabled, last_modified_at = excluded.last_modified_at";
        let now = self.db_now().await?;
        in_tx!(self, conn => {
            query(sql).bind(task).bind(enabled).bind(now).execute(&mut *conn).await?;
        });
        Ok(())
    }
}
