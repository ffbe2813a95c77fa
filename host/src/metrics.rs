//! Prometheus metrics: runs by task and status, run durations, fuel, last
//! success, running runs, load errors, rescans of the tasks directory and
//! the replica's clock offset from the database.

use crate::model::RunStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    task: String,
    status: String,
}

type HistogramFamily = Family<TaskLabel, Histogram, fn() -> Histogram>;

/// Cheap to clone; every clone updates the same registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    runs: Family<RunLabels, Counter>,
    duration: HistogramFamily,
    fuel: Family<TaskLabel, Counter>,
    last_success: Family<TaskLabel, Gauge<f64, AtomicU64>>,
    running: Family<TaskLabel, Gauge>,
    load_errors: Gauge,
    rescans: Family<CauseLabel, Counter>,
    clock_offset: Gauge<f64, AtomicU64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

fn duration_histogram() -> Histogram {
    // 1 ms to ~4.4 h.
    Histogram::new(exponential_buckets(0.001, 4.0, 13))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("housekeeper");
        let runs = Family::<RunLabels, Counter>::default();
        registry.register(
            "runs",
            "Finished (or skipped) runs by task and status",
            runs.clone(),
        );
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        registry.register("run_duration_seconds", "Run duration", duration.clone());
        let fuel = Family::<TaskLabel, Counter>::default();
        registry.register("fuel_consumed", "Fuel consumed by runs", fuel.clone());
        let last_success = Family::<TaskLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "last_success_timestamp_seconds",
            "When the task last succeeded (Unix time)",
            last_success.clone(),
        );
        let running = Family::<TaskLabel, Gauge>::default();
        registry.register("running_runs", "Runs in progress", running.clone());
        let load_errors = Gauge::default();
        registry.register(
            "load_errors",
            "Task files that failed to load",
            load_errors.clone(),
        );
        let rescans = Family::<CauseLabel, Counter>::default();
        registry.register(
            "task_rescans",
            "Rescans of the tasks directory by cause (startup, file, overflow, signal, api, cluster, compiled)",
            rescans.clone(),
        );
        let clock_offset = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "clock_offset_seconds",
            "How far this replica's clock is ahead of the database's (negative: behind)",
            clock_offset.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            runs,
            duration,
            fuel,
            last_success,
            running,
            load_errors,
            rescans,
            clock_offset,
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// This replica's clock minus the database's.
    pub fn set_clock_offset(&self, seconds: f64) {
        self.clock_offset.set(seconds);
    }

    pub fn run_finished(
        &self,
        task: &str,
        status: RunStatus,
        duration_ms: u64,
        fuel: u64,
        completed_unix: f64,
    ) {
        let label = TaskLabel {
            task: task.to_owned(),
        };
        self.runs
            .get_or_create(&RunLabels {
                task: task.to_owned(),
                status: status.as_str().to_owned(),
            })
            .inc();
        if status != RunStatus::Skipped {
            self.duration
                .get_or_create(&label)
                .observe(duration_ms as f64 / 1000.0);
            self.fuel.get_or_create(&label).inc_by(fuel);
        }
        if status == RunStatus::Success {
            self.last_success.get_or_create(&label).set(completed_unix);
        }
    }

    /// Sets the running gauge of every task (tasks not named read 0).
    pub fn set_running<'a>(&self, running: impl IntoIterator<Item = (&'a str, usize)>) {
        for (task, n) in running {
            self.running
                .get_or_create(&TaskLabel {
                    task: task.to_owned(),
                })
                .set(n as i64);
        }
    }

    pub fn set_load_errors(&self, n: usize) {
        self.load_errors.set(n as i64);
    }

    pub fn rescanned(&self, cause: &'static str) {
        self.rescans.get_or_create(&CauseLabel { cause }).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_counted_by_task_and_status() {
        let m = Metrics::default();
        m.run_finished("a", RunStatus::Success, 1500, 42, 1_700_000_000.0);
        m.run_finished("a", RunStatus::Timeout, 10, 7, 1_700_000_001.0);
        m.run_finished("a", RunStatus::Skipped, 0, 0, 0.0);
        m.set_running([("a", 1)]);
        m.set_load_errors(2);
        m.rescanned("file");
        m.rescanned("file");
        let text = m.render();
        for line in [
            r#"housekeeper_runs_total{task="a",status="success"} 1"#,
            r#"housekeeper_runs_total{task="a",status="timeout"} 1"#,
            r#"housekeeper_runs_total{task="a",status="skipped"} 1"#,
            r#"housekeeper_run_duration_seconds_count{task="a"} 2"#,
            r#"housekeeper_fuel_consumed_total{task="a"} 49"#,
            r#"housekeeper_last_success_timestamp_seconds{task="a"} 1700000000.0"#,
            r#"housekeeper_running_runs{task="a"} 1"#,
            "housekeeper_load_errors 2",
            r#"housekeeper_task_rescans_total{cause="file"} 2"#,
        ] {
            assert!(text.contains(line), "missing {line}:\n{text}");
        }
    }
}
