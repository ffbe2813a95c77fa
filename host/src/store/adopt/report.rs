//! The dry-run report: what was found and what a takeover changes, in
//! lines for people (`housekeeper db adopt`).

use super::{Plan, UNKNOWN_TRIGGER};

impl Plan {
    /// What was found and what changes, for people.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "housekeeper_runs: {} of {}{}; new runs start at id {}",
            count(self.runs, "run"),
            count(self.run_tasks, "task"),
            self.ids
                .map(|(a, b)| format!(", ids {a} to {b}"))
                .unwrap_or_default(),
            self.next_id
        )];
        if self.by_scheduler > 0 {
            lines.push(format!(
                "triggered_by 'scheduler' becomes 'schedule' in {}",
                count(self.by_scheduler, "run")
            ));
        }
        if self.untriggered > 0 {
            lines.push(format!(
                "{} without triggered_by get '{UNKNOWN_TRIGGER}'",
                count(self.untriggered, "run")
            ));
        }
        if self.left_running > 0 {
            lines.push(format!(
                "{} the reference service left running become 'interrupted'",
                count(self.left_running, "run")
            ));
        }
        lines.push(format!(
            "housekeeper_config: {}, {} disabled{}; these toggles win over manifests",
            count(self.config_tasks, "task"),
            self.disabled.len(),
            if self.disabled.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.disabled.join(", "))
            }
        ));
        lines.push(if self.replaces_function {
            "get_housekeeper_stats(): replaced by housekeeper's (same columns, over housekeeper_task_stats filled from the history)".into()
        } else {
            "get_housekeeper_stats(): created (over housekeeper_task_stats filled from the history)".into()
        });
        if !self.kept_columns.is_empty() {
            lines.push(format!(
                "kept as they are, unused: {}",
                self.kept_columns.join(", ")
            ));
        }
        match &self.newest_start {
            Some((local, instant)) => lines.push(format!(
                "TIMESTAMP values are read in {}: the newest started_at, {local}, becomes {}",
                self.timezone.name(),
                instant.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            )),
            None => lines.push(format!(
                "TIMESTAMP values are read in {}",
                self.timezone.name()
            )),
        }
        lines
    }
}

/// "1 run", "2 runs".
fn count(n: i64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
