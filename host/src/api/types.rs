//! Request and response bodies. Field names follow the reference service
//! (`isRunning`, `nextRunAt`, `stats.total_runs`, …) so existing scripts keep
//! working; the OpenAPI document is generated from these types.

use crate::manifest::{DirMode, Misfire, Overlap, SqlVerb};
use crate::model::{RunStatus, Trigger};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `healthy` when the process answers; `degraded` while a guest worker
    /// is stuck (`stuckRuns`).
    pub status: String,
    pub service: String,
    /// Seconds since start.
    pub uptime: u64,
    pub timestamp: String,
    /// Runs whose guest has not returned long after their timeout: each
    /// holds a guest worker that the deadline could not free.
    #[serde(rename = "stuckRuns")]
    pub stuck_runs: Vec<StuckRunView>,
}

#[derive(Serialize, ToSchema)]
pub struct StuckRunView {
    pub task: String,
    #[serde(rename = "runId")]
    pub run_id: i64,
    /// Seconds past the run's timeout.
    #[serde(rename = "overdueSeconds")]
    pub overdue_seconds: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub status: String,
    pub database: Option<String>,
    pub error: Option<String>,
}

/// Lifetime totals of a task.
#[derive(Serialize, ToSchema, Default)]
pub struct Stats {
    pub total_runs: i64,
    pub success_count: i64,
    pub error_count: i64,
    pub skipped_count: i64,
    pub avg_duration_ms: Option<i64>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_status: Option<RunStatus>,
}

#[derive(Serialize, ToSchema)]
pub struct TaskSummary {
    pub name: String,
    pub description: Option<String>,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub enabled: bool,
    #[serde(rename = "isRunning")]
    pub is_running: bool,
    #[serde(rename = "runningCount")]
    pub running_count: u64,
    #[serde(rename = "nextRunAt")]
    pub next_run_at: Option<DateTime<Utc>>,
    /// Why the task's files failed to load; the task is not scheduled.
    #[serde(rename = "loadError")]
    pub load_error: Option<String>,
    pub stats: Stats,
}

/// `GET /tasks/{name}/status`, as the reference service answers it.
#[derive(Serialize, ToSchema)]
pub struct TaskStatus {
    /// The task is loaded (one whose files fail to load is not).
    pub registered: bool,
    /// A run of it is in progress in this process.
    pub running: bool,
    /// It fires on a schedule: enabled, with a next fire, and scheduling
    /// is on (`HOUSEKEEPER_ENABLED`).
    pub scheduled: bool,
}

#[derive(Serialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskSummary>,
    #[serde(rename = "totalTasks")]
    pub total_tasks: u64,
    #[serde(rename = "runningTasks")]
    pub running_tasks: u64,
}

#[derive(Serialize, ToSchema)]
pub struct DirGrantView {
    pub host: String,
    pub guest: String,
    pub mode: DirMode,
}

#[derive(Serialize, ToSchema)]
pub struct DatabaseGrantView {
    pub connection: String,
    /// What each table may be used for, as the manifest says it.
    pub tables: BTreeMap<String, Vec<SqlVerb>>,
}

#[derive(Serialize, ToSchema)]
pub struct Grants {
    pub dirs: Vec<DirGrantView>,
    pub database: Option<DatabaseGrantView>,
}

#[derive(Serialize, ToSchema)]
pub struct LimitsView {
    pub fuel: u64,
    #[serde(rename = "memoryBytes")]
    pub memory_bytes: u64,
    /// Files and directories open at once.
    pub descriptors: u32,
    /// Bytes written, and grown without writing, across `rw` grants.
    #[serde(rename = "writeBytes")]
    pub write_bytes: u64,
    /// Directory listings open at once.
    #[serde(rename = "dirStreams")]
    pub dir_streams: u32,
    /// Host resources of any kind held at once.
    pub handles: u32,
}

#[derive(Serialize, ToSchema)]
pub struct RetriesView {
    pub max: u32,
    #[serde(rename = "backoffMs")]
    pub backoff_ms: u64,
}

#[derive(Serialize, ToSchema)]
pub struct HistoryView {
    #[serde(rename = "keepDays")]
    pub keep_days: u32,
    #[serde(rename = "keepLast")]
    pub keep_last: u32,
}

/// What the manifest and the component say; absent for a task that failed
/// to load.
#[derive(Serialize, ToSchema)]
pub struct TaskSetup {
    pub version: String,
    #[serde(rename = "componentHash")]
    pub component_hash: String,
    pub component: String,
    pub capabilities: Vec<String>,
    #[serde(rename = "runOnStartup")]
    pub run_on_startup: bool,
    #[serde(rename = "startupDelayMs")]
    pub startup_delay_ms: u64,
    #[serde(rename = "jitterMs")]
    pub jitter_ms: u64,
    pub overlap: Overlap,
    pub misfire: Misfire,
    #[serde(rename = "timeoutMs")]
    pub timeout_ms: u64,
    pub retries: RetriesView,
    pub history: HistoryView,
    pub limits: LimitsView,
    pub grants: Grants,
}

#[derive(Serialize, ToSchema)]
pub struct TaskDetail {
    #[serde(flatten)]
    pub summary: TaskSummary,
    pub setup: Option<TaskSetup>,
    #[serde(rename = "recentRuns")]
    pub recent_runs: Vec<RunSummary>,
}

#[derive(Serialize, ToSchema)]
pub struct RunSummary {
    pub id: i64,
    pub task_name: String,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub triggered_by: Trigger,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub dry_run: bool,
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub summary: RunSummary,
    pub output: Option<String>,
    /// Named numbers the task reported, e.g. `{"files_deleted": 3}`.
    pub metrics: Option<BTreeMap<String, f64>>,
    pub fuel_used: Option<i64>,
    pub component_hash: Option<String>,
    pub replica: String,
    pub heartbeat_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Serialize, ToSchema)]
pub struct Triggered {
    pub message: String,
    /// `running` (with `runId`), `waiting` for a free slot, or `queued`
    /// behind the running one.
    pub status: String,
    #[serde(rename = "runId")]
    pub run_id: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Toggle {
    pub enabled: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Toggled {
    pub message: String,
    pub name: String,
    pub enabled: bool,
    #[serde(rename = "nextRunAt")]
    pub next_run_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct Cancelled {
    pub message: String,
    #[serde(rename = "runId")]
    pub run_id: i64,
}

#[derive(Serialize, ToSchema)]
pub struct LastError {
    pub task: String,
    pub status: RunStatus,
    pub at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct LoadErrorView {
    pub task: String,
    pub error: String,
}

#[derive(Serialize, ToSchema)]
pub struct Status {
    /// `healthy`, or `degraded` when a task failed to load, its last run
    /// did not succeed, or a guest worker is stuck (see `/health`).
    pub status: String,
    pub uptime: u64,
    pub database: String,
    pub tasks: u64,
    #[serde(rename = "enabledTasks")]
    pub enabled_tasks: u64,
    #[serde(rename = "runningTasks")]
    pub running_tasks: u64,
    #[serde(rename = "failingTasks")]
    pub failing_tasks: u64,
    #[serde(rename = "lastErrors")]
    pub last_errors: Vec<LastError>,
    #[serde(rename = "loadErrors")]
    pub load_errors: Vec<LoadErrorView>,
    /// The replicas sharing this database that reported within three
    /// heartbeats, this one included; empty on SQLite, which serves one
    /// process and keeps no heartbeats.
    pub replicas: Vec<ReplicaView>,
}

/// A live replica.
#[derive(Serialize, ToSchema)]
pub struct ReplicaView {
    pub replica: String,
    #[serde(rename = "startedAt")]
    pub started_at: DateTime<Utc>,
    #[serde(rename = "heartbeatAt")]
    pub heartbeat_at: DateTime<Utc>,
    /// Its clock minus the database's, in milliseconds.
    #[serde(rename = "clockOffsetMs")]
    pub clock_offset_ms: i64,
    pub version: String,
}
