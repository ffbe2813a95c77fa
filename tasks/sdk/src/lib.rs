//! `housekeeper-sdk`: everything a task author needs to write a housekeeper
//! maintenance task, without touching the generated WIT bindings.
//!
//! ```ignore
//! use housekeeper_sdk::{Context, Error, Info, Report, Task, config, log};
//!
//! struct Hello;
//!
//! impl Task for Hello {
//!     fn describe() -> Info {
//!         Info::new("hello", "Says hello").schedule("@hourly")
//!     }
//!
//!     fn run(ctx: &Context) -> Result<Report, Error> {
//!         let who = config::string_or("who", "world")?;
//!         log::info(format!("hello, {who}"));
//!         Ok(Report::new(format!("greeted {who}")).metric("greetings", 1))
//!     }
//! }
//!
//! housekeeper_sdk::export_task!(Hello);
//! ```

pub mod config;
pub mod log;
pub mod partition;
pub mod retention;
pub mod sql;
pub mod time;

#[doc(hidden)]
// Generated: a call taking several records flattens into many arguments.
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "task",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "housekeeper_sdk::bindings",
        generate_all,
    });
}

use bindings::housekeeper::task::types;

/// `n` bytes from the host's cryptographically secure random source.
pub fn random_bytes(n: u64) -> Vec<u8> {
    bindings::wasi::random::random::get_random_bytes(n)
}

/// Why this run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Startup,
    Manual,
    Retry,
    Cli,
}

/// What the host tells the task about this run.
#[derive(Debug, Clone)]
pub struct Context {
    pub run_id: String,
    /// The host enforces dry-run itself (read-only directories, rolled-back
    /// SQL). Tasks use the flag to report what they would have done.
    pub dry_run: bool,
    pub triggered_by: Trigger,
    /// Milliseconds since the Unix epoch.
    pub scheduled_for: Option<i64>,
    /// Milliseconds since the Unix epoch.
    pub last_success: Option<i64>,
}

impl Context {
    /// `done` in a real run, `would` in a dry run: for summaries such as
    /// "deleted 3 files" / "would delete 3 files".
    pub fn verb<'a>(&self, done: &'a str, would: &'a str) -> &'a str {
        if self.dry_run { would } else { done }
    }
}

/// What a task says about itself (informational; the operator's manifest
/// decides the schedule and the grants).
#[derive(Debug, Clone, Default)]
pub struct Info {
    name: String,
    version: String,
    description: String,
    schedule: Option<String>,
    run_on_startup: bool,
    capabilities: Vec<String>,
}

impl Info {
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        Info {
            name: name.into(),
            description: description.into(),
            version: "0.1.0".into(),
            ..Info::default()
        }
    }

    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The cron schedule used when no manifest sets one.
    pub fn schedule(mut self, cron: impl Into<String>) -> Self {
        self.schedule = Some(cron.into());
        self
    }

    pub fn run_on_startup(mut self, yes: bool) -> Self {
        self.run_on_startup = yes;
        self
    }

    /// A capability the task would like, e.g. `dir:/logs:rw`.
    pub fn wants(mut self, capability: impl Into<String>) -> Self {
        self.capabilities.push(capability.into());
        self
    }
}

/// The outcome of a successful run: one line plus named metrics.
#[derive(Debug, Clone, Default)]
pub struct Report {
    summary: String,
    metrics: Vec<(String, f64)>,
}

impl Report {
    pub fn new(summary: impl Into<String>) -> Self {
        Report {
            summary: summary.into(),
            metrics: Vec::new(),
        }
    }

    /// A named number: any integer or float (`u64`, `usize`, `i64`, `f64`, …).
    pub fn metric(mut self, name: impl Into<String>, value: impl MetricValue) -> Self {
        self.metrics.push((name.into(), value.to_f64()));
        self
    }
}

/// A number a metric can hold. Metrics are `f64` on the wire; counts past
/// 2^53 lose their last digits.
pub trait MetricValue {
    fn to_f64(self) -> f64;
}

macro_rules! metric_value {
    ($($t:ty),*) => {
        $(impl MetricValue for $t {
            fn to_f64(self) -> f64 {
                self as f64
            }
        })*
    };
}

metric_value!(f64, f32, i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

/// Why a run failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A `[config]` key is missing or holds a bad value.
    InvalidConfig(String),
    /// The task ran and failed.
    Failed(String),
}

impl Error {
    pub fn failed(message: impl std::fmt::Display) -> Self {
        Error::Failed(message.to_string())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            Error::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Failed(e.to_string())
    }
}

/// `Err("…".into())` or `Err(format!(…).into())`: the task failed.
impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::Failed(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error::Failed(message.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_take_integers_and_floats() {
        let report = Report::new("x")
            .metric("a", 3u64)
            .metric("b", 2usize)
            .metric("c", -1i64)
            .metric("d", 1.5)
            .metric("e", 7);
        let values: Vec<f64> = report.metrics.iter().map(|(_, v)| *v).collect();
        assert_eq!(values, [3.0, 2.0, -1.0, 1.5, 7.0]);
    }

    #[test]
    fn text_becomes_a_failure() {
        assert_eq!(Error::from("gone"), Error::Failed("gone".into()));
        assert_eq!(
            Error::from(format!("{} left", 2)),
            Error::Failed("2 left".into())
        );
    }

    #[test]
    fn summaries_say_what_a_dry_run_would_do() {
        let mut ctx = Context {
            run_id: "1".into(),
            dry_run: false,
            triggered_by: Trigger::Manual,
            scheduled_for: None,
            last_success: None,
        };
        assert_eq!(ctx.verb("deleted", "would delete"), "deleted");
        ctx.dry_run = true;
        assert_eq!(ctx.verb("deleted", "would delete"), "would delete");
    }
}

/// A maintenance task. Implement it on a unit struct and export it with
/// [`export_task!`].
pub trait Task {
    fn describe() -> Info;
    fn run(ctx: &Context) -> Result<Report, Error>;
}

#[doc(hidden)]
pub fn __describe<T: Task>() -> types::TaskInfo {
    let info = T::describe();
    types::TaskInfo {
        name: info.name,
        version: info.version,
        description: info.description,
        default_schedule: info.schedule,
        run_on_startup: info.run_on_startup,
        capabilities: info.capabilities,
    }
}

#[doc(hidden)]
pub fn __run<T: Task>(ctx: types::RunContext) -> Result<types::RunReport, types::TaskError> {
    let ctx = Context {
        run_id: ctx.run_id,
        dry_run: ctx.dry_run,
        triggered_by: match ctx.triggered_by {
            types::Trigger::Schedule => Trigger::Schedule,
            types::Trigger::Startup => Trigger::Startup,
            types::Trigger::Manual => Trigger::Manual,
            types::Trigger::Retry => Trigger::Retry,
            types::Trigger::Cli => Trigger::Cli,
        },
        scheduled_for: ctx.scheduled_for,
        last_success: ctx.last_success,
    };
    match T::run(&ctx) {
        Ok(report) => Ok(types::RunReport {
            summary: report.summary,
            metrics: report
                .metrics
                .into_iter()
                .map(|(name, value)| types::Metric { name, value })
                .collect(),
        }),
        Err(Error::InvalidConfig(m)) => Err(types::TaskError::InvalidConfig(m)),
        Err(Error::Failed(m)) => Err(types::TaskError::Failed(m)),
    }
}

/// Exports a [`Task`] implementation as the component's `describe` and `run`.
#[macro_export]
macro_rules! export_task {
    ($task:ty) => {
        struct __HousekeeperTaskExport;

        impl $crate::bindings::Guest for __HousekeeperTaskExport {
            fn describe() -> $crate::bindings::TaskInfo {
                $crate::__describe::<$task>()
            }

            fn run(
                ctx: $crate::bindings::RunContext,
            ) -> ::core::result::Result<$crate::bindings::RunReport, $crate::bindings::TaskError>
            {
                $crate::__run::<$task>(ctx)
            }
        }

        $crate::bindings::export!(__HousekeeperTaskExport with_types_in $crate::bindings);
    };
}
