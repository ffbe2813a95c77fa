//! Caps on what a task hands back to the host (its report, its error, what
//! `describe()` says), applied before anything is stored, logged or served.
//! A task's output is capped as it is written (`capabilities::output`); these
//! are the rest. Truncation is always marked in the text itself.

use crate::capabilities::output::{Level, Output};
use crate::model::{Metric, TaskInfo};

/// A report's summary: one line.
pub const MAX_SUMMARY: usize = 1024;
/// A run's error message.
pub const MAX_ERROR: usize = 16 * 1024;
/// Metrics per run; more are dropped (and the run's output says so).
pub const MAX_METRICS: usize = 100;
/// A metric's name; a longer one is dropped.
pub const MAX_METRIC_NAME: usize = 128;
/// `describe()`'s fields.
pub const MAX_NAME: usize = 128;
pub const MAX_VERSION: usize = 64;
pub const MAX_DESCRIPTION: usize = 4 * 1024;
pub const MAX_SCHEDULE: usize = 256;
pub const MAX_CAPABILITIES: usize = 64;
pub const MAX_CAPABILITY: usize = 256;

/// `text` cut to at most `max` bytes (on a character boundary) plus a marker
/// saying how much was cut.
pub fn truncate(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… [truncated: {} more bytes]",
        &text[..end],
        text.len() - end
    )
}

/// The summary as stored: line breaks become spaces, then the cap.
pub fn summary(text: String) -> String {
    let one_line = if text.contains(['\n', '\r']) {
        text.replace("\r\n", " ").replace(['\n', '\r'], " ")
    } else {
        text
    };
    truncate(one_line, MAX_SUMMARY)
}

pub fn error(text: String) -> String {
    truncate(text, MAX_ERROR)
}

/// The first [`MAX_METRICS`] metrics with names of at most
/// [`MAX_METRIC_NAME`] bytes; what is dropped is said in `output`.
pub fn metrics(all: Vec<Metric>, output: &Output) -> Vec<Metric> {
    let total = all.len();
    let mut long_names = 0;
    let kept: Vec<Metric> = all
        .into_iter()
        .filter(|m| {
            let ok = !m.name.is_empty() && m.name.len() <= MAX_METRIC_NAME;
            long_names += usize::from(!ok);
            ok
        })
        .take(MAX_METRICS)
        .collect();
    if long_names > 0 {
        output.log(
            Level::Warn,
            &format!(
                "housekeeper: {long_names} metrics dropped: a name must be 1 to {MAX_METRIC_NAME} bytes"
            ),
        );
    }
    let over = total - long_names - kept.len();
    if over > 0 {
        output.log(
            Level::Warn,
            &format!("housekeeper: {over} metrics dropped: at most {MAX_METRICS} per run"),
        );
    }
    kept
}

/// `describe()`'s answer, capped. A suggested schedule too long to be a cron
/// expression is refused rather than cut (a cut one would mean another
/// schedule).
pub fn task_info(info: TaskInfo) -> Result<TaskInfo, String> {
    if let Some(s) = &info.default_schedule
        && s.len() > MAX_SCHEDULE
    {
        return Err(format!(
            "describe() suggests a schedule of {} bytes; at most {MAX_SCHEDULE}",
            s.len()
        ));
    }
    let total = info.capabilities.len();
    let mut capabilities: Vec<String> = info
        .capabilities
        .into_iter()
        .take(MAX_CAPABILITIES)
        .map(|c| truncate(c, MAX_CAPABILITY))
        .collect();
    if total > MAX_CAPABILITIES {
        capabilities.push(format!(
            "… [truncated: {} more capabilities]",
            total - MAX_CAPABILITIES
        ));
    }
    Ok(TaskInfo {
        name: truncate(info.name, MAX_NAME),
        version: truncate(info.version, MAX_VERSION),
        description: truncate(info.description, MAX_DESCRIPTION),
        default_schedule: info.default_schedule,
        run_on_startup: info.run_on_startup,
        capabilities,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_is_marked_and_keeps_characters_whole() {
        assert_eq!(truncate("short".into(), 10), "short");
        let cut = truncate("é".repeat(10), 5);
        assert_eq!(cut, "éé… [truncated: 16 more bytes]");
        let big = truncate("x".repeat(50 << 20), MAX_ERROR);
        assert!(big.len() < MAX_ERROR + 64);
        assert!(big.ends_with(&format!(
            "[truncated: {} more bytes]",
            (50 << 20) - MAX_ERROR
        )));
    }

    #[test]
    fn a_summary_is_one_capped_line() {
        assert_eq!(summary("a\nb\r\nc\rd".into()), "a b c d");
        assert!(summary("y".repeat(1 << 20)).len() < MAX_SUMMARY + 64);
    }

    #[test]
    fn metrics_past_the_caps_are_dropped_and_said() {
        let output = Output::new("t", "r", 64 * 1024);
        let mut all: Vec<Metric> = (0..MAX_METRICS + 5)
            .map(|i| Metric {
                name: format!("m{i}"),
                value: i as f64,
            })
            .collect();
        all.insert(
            3,
            Metric {
                name: "n".repeat(MAX_METRIC_NAME + 1),
                value: 0.0,
            },
        );
        all.insert(
            4,
            Metric {
                name: String::new(),
                value: 0.0,
            },
        );
        let kept = metrics(all, &output);
        assert_eq!(kept.len(), MAX_METRICS);
        assert_eq!(kept[0].name, "m0");
        assert_eq!(kept.last().unwrap().name, format!("m{}", MAX_METRICS - 1));
        let text = output.finish();
        assert!(text.contains("2 metrics dropped: a name must be"), "{text}");
        assert!(text.contains("5 metrics dropped: at most 100"), "{text}");
    }

    #[test]
    fn describe_is_capped_and_an_overlong_schedule_refused() {
        let info = TaskInfo {
            name: "n".repeat(1000),
            version: "v".repeat(1000),
            description: "d".repeat(48 << 20),
            default_schedule: Some("@daily".into()),
            run_on_startup: false,
            capabilities: vec!["c".repeat(1000); 10_000],
        };
        let capped = task_info(info.clone()).unwrap();
        assert!(capped.description.len() < MAX_DESCRIPTION + 64);
        assert!(capped.name.len() < MAX_NAME + 64);
        assert!(capped.version.len() < MAX_VERSION + 64);
        assert_eq!(capped.capabilities.len(), MAX_CAPABILITIES + 1);
        assert!(
            capped
                .capabilities
                .iter()
                .all(|c| c.len() < MAX_CAPABILITY + 64)
        );
        assert_eq!(
            capped.capabilities.last().unwrap(),
            &format!(
                "… [truncated: {} more capabilities]",
                10_000 - MAX_CAPABILITIES
            )
        );
        let err = task_info(TaskInfo {
            default_schedule: Some("* ".repeat(200)),
            ..info
        })
        .unwrap_err();
        assert!(err.contains("400 bytes"), "{err}");
    }
}
