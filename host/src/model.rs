//! Plain types shared by the runtime, the CLI and (later) the scheduler, the
//! store and the API. Nothing here knows about wasmtime.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// How a run ended. The names are what the store and the API show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Still going.
    Running,
    /// `run` returned a report.
    Success,
    /// `run` returned an error of its own.
    Error,
    /// The guest trapped (panic, `unreachable`, stack overflow, bad host call).
    Trapped,
    /// The wall-clock deadline passed.
    Timeout,
    /// The fuel budget ran out.
    OutOfFuel,
    /// The guest tried to grow its memory beyond the cap and failed for it.
    OutOfMemory,
    /// The fire was not run (overlap policy, misfire); the error says why.
    Skipped,
    /// Stopped on request.
    Cancelled,
    /// The service stopped or crashed while it ran.
    Interrupted,
}

impl RunStatus {
    pub const ALL: [RunStatus; 10] = [
        RunStatus::Running,
        RunStatus::Success,
        RunStatus::Error,
        RunStatus::Trapped,
        RunStatus::Timeout,
        RunStatus::OutOfFuel,
        RunStatus::OutOfMemory,
        RunStatus::Skipped,
        RunStatus::Cancelled,
        RunStatus::Interrupted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Success => "success",
            RunStatus::Error => "error",
            RunStatus::Trapped => "trapped",
            RunStatus::Timeout => "timeout",
            RunStatus::OutOfFuel => "out_of_fuel",
            RunStatus::OutOfMemory => "out_of_memory",
            RunStatus::Skipped => "skipped",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so a column width (`{:<14}`) applies.
        f.pad(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown run status {s:?}"))
    }
}

/// Why a run was started. The names are what the store and the API show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Schedule,
    Startup,
    Manual,
    Retry,
    Cli,
    /// Started through the reference service's API: only runs taken over
    /// from it say this. No run is started with it.
    Api,
    /// Not recorded: only runs taken over from the reference service that
    /// named no trigger say this. No run is started with it.
    Unknown,
}

impl Trigger {
    pub const ALL: [Trigger; 7] = [
        Trigger::Schedule,
        Trigger::Startup,
        Trigger::Manual,
        Trigger::Retry,
        Trigger::Cli,
        Trigger::Api,
        Trigger::Unknown,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Startup => "startup",
            Trigger::Manual => "manual",
            Trigger::Retry => "retry",
            Trigger::Cli => "cli",
            Trigger::Api => "api",
            Trigger::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Trigger {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Trigger::ALL
            .into_iter()
            .find(|trigger| trigger.as_str() == s)
            .ok_or_else(|| format!("unknown trigger {s:?}"))
    }
}

/// What a component says about itself through `describe()`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub default_schedule: Option<String>,
    pub run_on_startup: bool,
    pub capabilities: Vec<String>,
}

/// A `[config]` value as the guest sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// Arrays, tables and dates, as JSON text.
    Json(String),
}

impl ConfigValue {
    /// Converts a TOML value from a manifest.
    pub fn from_toml(value: &toml::Value) -> Self {
        match value {
            toml::Value::String(s) => ConfigValue::Text(s.clone()),
            toml::Value::Integer(i) => ConfigValue::Integer(*i),
            toml::Value::Float(f) => ConfigValue::Float(*f),
            toml::Value::Boolean(b) => ConfigValue::Boolean(*b),
            toml::Value::Datetime(d) => {
                ConfigValue::Json(serde_json::Value::String(d.to_string()).to_string())
            }
            other => ConfigValue::Json(
                serde_json::to_string(other).unwrap_or_else(|_| other.to_string()),
            ),
        }
    }

    /// Interprets a `--config key=value` value: a TOML scalar if it is one
    /// (`30`, `1.5`, `true`, `"quoted"`), otherwise the text as given.
    pub fn from_cli(text: &str) -> Self {
        let parsed: Result<toml::Table, _> = toml::from_str(&format!("v = {text}"));
        match parsed.ok().and_then(|mut t| t.remove("v")) {
            Some(value) => ConfigValue::from_toml(&value),
            None => ConfigValue::Text(text.to_owned()),
        }
    }
}

pub type ConfigMap = BTreeMap<String, ConfigValue>;

/// A named number a task reported, e.g. `files_deleted`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
}

/// Everything known about a finished run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub run_id: String,
    pub task_name: String,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub completed_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// The report's one-line summary on success.
    pub summary: Option<String>,
    /// Why the run did not succeed.
    pub error: Option<String>,
    /// Captured log, stdout and stderr, capped.
    pub output: String,
    pub metrics: Vec<Metric>,
    pub fuel_used: u64,
    pub component_hash: String,
    pub dry_run: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in RunStatus::ALL {
            assert_eq!(status.as_str().parse::<RunStatus>(), Ok(status));
        }
        assert!("exploded".parse::<RunStatus>().is_err());
        for trigger in Trigger::ALL {
            assert_eq!(trigger.as_str().parse::<Trigger>(), Ok(trigger));
            assert_eq!(
                serde_json::to_value(trigger).unwrap(),
                serde_json::json!(trigger.as_str())
            );
        }
        assert!("scheduler".parse::<Trigger>().is_err());
    }

    #[test]
    fn serialized_names_are_the_stored_ones() {
        for status in RunStatus::ALL {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
        }
        // Displayed in columns by the CLI.
        assert_eq!(format!("[{:<9}]", RunStatus::Error), "[error    ]");
        assert_eq!(format!("[{:<7}]", Trigger::Cli), "[cli    ]");
    }

    #[test]
    fn cli_values_are_toml_scalars_or_text() {
        assert_eq!(ConfigValue::from_cli("30"), ConfigValue::Integer(30));
        assert_eq!(ConfigValue::from_cli("1.5"), ConfigValue::Float(1.5));
        assert_eq!(ConfigValue::from_cli("true"), ConfigValue::Boolean(true));
        assert_eq!(
            ConfigValue::from_cli("\"30\""),
            ConfigValue::Text("30".into())
        );
        assert_eq!(
            ConfigValue::from_cli("/var/log"),
            ConfigValue::Text("/var/log".into())
        );
        assert_eq!(ConfigValue::from_cli(""), ConfigValue::Text(String::new()));
        assert_eq!(
            ConfigValue::from_cli("[1, 2]"),
            ConfigValue::Json("[1,2]".into())
        );
    }
}
