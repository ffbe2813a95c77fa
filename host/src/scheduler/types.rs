//! What the scheduler is given and what it tells: its configuration, a
//! loaded task, what became of a fire, the view of a task and of a stuck
//! run.

use crate::manifest::Manifest;
use crate::model::TaskInfo;
use crate::runtime::TaskComponent;
use crate::schedule::Schedule;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Runs beyond this many wait for a free slot.
    pub max_concurrent_runs: usize,
    /// `false` registers tasks but fires nothing on schedule or at startup.
    pub enabled: bool,
    /// Zone for tasks whose manifest names none.
    pub default_timezone: Tz,
    /// How often a running row's `heartbeat_at` is refreshed.
    pub heartbeat_interval: Duration,
    /// Where guest runs execute; `None` runs them on the caller's runtime.
    pub run_handle: Option<tokio::runtime::Handle>,
    /// Updated as runs finish.
    pub metrics: Option<crate::metrics::Metrics>,
    /// How long past its timeout a run may take to return before the worker
    /// running it counts as stuck (see [`Scheduler::stuck_runs`]).
    pub stuck_after: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_concurrent_runs: 4,
            enabled: true,
            default_timezone: chrono_tz::UTC,
            heartbeat_interval: Duration::from_secs(5),
            run_handle: None,
            metrics: None,
            stuck_after: Duration::from_secs(10),
        }
    }
}

/// The random delay added to a fire: uniform in `[0, max]`.
pub fn jitter_delay(max: Duration, rng: &mut impl Rng) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_millis(rng.random_range(0..=max.as_millis() as u64))
}

/// A loaded task: its manifest, compiled component and what it says of
/// itself.
#[derive(Clone)]
pub struct TaskDef {
    pub manifest: Manifest,
    pub component: TaskComponent,
    pub info: TaskInfo,
}

impl TaskDef {
    /// The manifest's schedule, else the component's suggestion.
    pub fn schedule(&self) -> Option<Schedule> {
        if let Some(s) = &self.manifest.schedule {
            return Some(s.clone());
        }
        let suggested = self.info.default_schedule.as_deref()?;
        match Schedule::parse(suggested) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(task = %self.manifest.name, error = %e, "ignoring the component's default schedule");
                None
            }
        }
    }

    pub fn run_on_startup(&self) -> bool {
        self.manifest
            .run_on_startup
            .unwrap_or(self.info.run_on_startup)
    }
}

/// What became of a fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireOutcome {
    Started,
    Queued,
    Skipped(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchedulerError {
    #[error("no task named {0:?}")]
    UnknownTask(String),
}

/// A run whose guest has not returned although its timeout, and then
/// `stuck_after`, have passed: the worker running it is held by something
/// the deadline cannot stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckRun {
    pub task: String,
    pub run_id: i64,
    /// How long past its timeout it is.
    pub overdue: Duration,
}

/// A task as the scheduler sees it right now.
#[derive(Clone)]
pub struct TaskView {
    pub name: String,
    pub schedule: Option<String>,
    pub timezone: Tz,
    pub enabled: bool,
    pub running: usize,
    pub next_fire: Option<DateTime<Utc>>,
    /// The task as loaded: manifest, component hash, `describe()`.
    pub def: Arc<TaskDef>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_bound_and_varies() {
        let mut rng = rand::rng();
        let max = Duration::from_secs(30);
        let samples: Vec<Duration> = (0..2000).map(|_| jitter_delay(max, &mut rng)).collect();
        assert!(samples.iter().all(|d| *d <= max));
        assert!(samples.iter().any(|d| *d < max / 4));
        assert!(samples.iter().any(|d| *d > max * 3 / 4));
        assert_eq!(jitter_delay(Duration::ZERO, &mut rng), Duration::ZERO);
    }
}
