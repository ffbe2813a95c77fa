//! Task manifests (`NAME.toml` beside `NAME.wasm`): parsing and validation.
//!
//! Everything is checked here, at load time: unknown keys, durations, sizes,
//! cron expressions, time zones, grant paths and verbs. A manifest that loads
//! is one the rest of the host can trust.
//!
//! Here: what a loaded manifest is, and reading one; the TOML as written
//! and its validation are in `raw`.

mod raw;

use crate::model::ConfigMap;
use crate::schedule::Schedule;
use chrono_tz::Tz;
use raw::RawManifest;
pub use raw::validate_task_name;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest memory cap a manifest may ask for.
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid manifest {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

// The manifest enums serialize (API, `check`) as they are written in a
// manifest.

/// What to do when a fire comes while the previous run still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Overlap {
    #[default]
    Skip,
    Queue,
    Replace,
    Allow,
}

/// What to do about fires missed while the service was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Misfire {
    #[default]
    Skip,
    RunOnce,
}

/// How a granted directory is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DirMode {
    Ro,
    Rw,
}

impl DirMode {
    /// The mode as written in a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            DirMode::Ro => "ro",
            DirMode::Rw => "rw",
        }
    }
}

impl fmt::Display for DirMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A host directory made visible to the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
    pub mode: DirMode,
}

/// What a database grant allows on a table.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Deserialize,
    Serialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SqlVerb {
    Select,
    Insert,
    Update,
    Delete,
    CreatePartition,
    DropPartition,
    Vacuum,
    Analyze,
    Ddl,
}

impl SqlVerb {
    /// The verb as written in a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            SqlVerb::Select => "select",
            SqlVerb::Insert => "insert",
            SqlVerb::Update => "update",
            SqlVerb::Delete => "delete",
            SqlVerb::CreatePartition => "create_partition",
            SqlVerb::DropPartition => "drop_partition",
            SqlVerb::Vacuum => "vacuum",
            SqlVerb::Analyze => "analyze",
            SqlVerb::Ddl => "ddl",
        }
    }
}

impl fmt::Display for SqlVerb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseGrant {
    pub connection: String,
    pub tables: BTreeMap<String, Vec<SqlVerb>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Retries {
    pub max: u32,
    pub backoff: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub keep_days: u32,
    pub keep_last: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub fuel: u64,
    pub memory_bytes: u64,
    pub resources: ResourceLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 5_000_000_000,
            memory_bytes: 128 << 20,
            resources: ResourceLimits::default(),
        }
    }
}

/// What one run may hold on the host and write through its grants. Past a
/// cap the guest gets an error (`quota`) and the run's output names the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimits {
    /// `limits.descriptors`: files and directories open at once, besides the
    /// preopened grants.
    pub descriptors: u32,
    /// `limits.write_bytes`: bytes written to files plus bytes files grew by
    /// without being written (`set-size`, writing past the end), plus 4 KiB
    /// and the name (and a symlink's target) for every new directory entry.
    pub write_bytes: u64,
    /// `limits.dir_streams`: directory listings open at once; each holds its
    /// whole listing in host memory, which counts against `limits.memory`.
    pub dir_streams: u32,
    /// `limits.handles`: host resources of any kind held at once
    /// (descriptors, streams, listings, pollables, errors).
    pub handles: u32,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits {
            descriptors: 256,
            write_bytes: 1 << 30,
            dir_streams: 32,
            handles: 1024,
        }
    }
}

/// The largest `limits.descriptors`, `limits.dir_streams` and
/// `limits.handles` a manifest may ask for.
pub const MAX_HANDLES: u32 = 1 << 20;

/// A validated manifest. Optional fields that the task's `describe()` or the
/// host configuration can fill in stay `None` here.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: String,
    /// File name of the component, relative to the tasks directory.
    pub component: String,
    pub schedule: Option<Schedule>,
    pub timezone: Option<Tz>,
    pub enabled: bool,
    pub run_on_startup: Option<bool>,
    pub startup_delay: Duration,
    pub jitter: Duration,
    pub overlap: Overlap,
    pub misfire: Misfire,
    pub timeout: Duration,
    pub retries: Retries,
    pub history: History,
    pub limits: Limits,
    pub dirs: Vec<DirGrant>,
    pub database: Option<DatabaseGrant>,
    pub config: ConfigMap,
}

impl Manifest {
    /// The manifest of a component that has none: its own name, no grants.
    pub fn implicit(name: &str, component: &str) -> Self {
        Manifest {
            name: name.to_owned(),
            component: component.to_owned(),
            schedule: None,
            timezone: None,
            enabled: true,
            run_on_startup: None,
            startup_delay: Duration::ZERO,
            jitter: Duration::ZERO,
            overlap: Overlap::default(),
            misfire: Misfire::default(),
            timeout: DEFAULT_TIMEOUT,
            retries: Retries {
                max: 0,
                backoff: Duration::from_secs(30),
            },
            history: History {
                keep_days: 30,
                keep_last: 1000,
            },
            limits: Limits::default(),
            dirs: Vec::new(),
            database: None,
            config: ConfigMap::new(),
        }
    }

    /// Reads and validates `path`. Relative `grants.dirs` host paths are
    /// resolved against the manifest's directory.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ManifestError> {
        let invalid = |message: String| ManifestError::Invalid {
            path: path.to_owned(),
            message,
        };
        let raw: RawManifest = toml::from_str(text).map_err(|e| invalid(toml_message(&e)))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let base = path.parent().unwrap_or(Path::new("."));
        raw.validate(&stem, base).map_err(invalid)
    }
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

fn toml_message(e: &toml::de::Error) -> String {
    // toml's own rendering names the key and shows the offending line.
    e.to_string().trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ConfigValue;

    fn parse(text: &str) -> Result<Manifest, String> {
        Manifest::parse(Path::new("/tasks/sample.toml"), text).map_err(|e| e.to_string())
    }

    const FULL: &str = r#"
        name = "events-partition-maintenance"
        component = "partition-maintenance.wasm"
        schedule = "0 1 * * *"
        timezone = "Europe/Berlin"
        enabled = false
        run_on_startup = true
        startup_delay = "5s"
        jitter = "30s"
        overlap = "queue"
        misfire = "run-once"
        timeout = "10m"
        retries = { max = 3, backoff = "1m" }
        history = { keep_days = 7, keep_last = 50 }

        [limits]
        fuel = 5_000_000_000
        memory = "64MiB"
        descriptors = 64
        write_bytes = "10MiB"
        dir_streams = 4
        handles = 512

        [grants.database]
        connection = "main"
        tables = { events = ["select", "create_partition", "drop_partition"] }

        [[grants.dirs]]
        host = "/var/log/app"
        guest = "/logs/"
        mode = "rw"

        [[grants.dirs]]
        host = "archive"
        guest = "/archive"
        mode = "ro"

        [config]
        table = "events"
        premake_days = 30
        ratio = 0.5
        tables = ["a", "b"]
    "#;

    #[test]
    fn parses_every_key() {
        let m = parse(FULL).unwrap();
        assert_eq!(m.name, "events-partition-maintenance");
        assert_eq!(m.component, "partition-maintenance.wasm");
        assert_eq!(m.schedule.as_ref().unwrap().as_str(), "0 1 * * *");
        assert_eq!(m.timezone, Some(chrono_tz::Europe::Berlin));
        assert!(!m.enabled);
        assert_eq!(m.run_on_startup, Some(true));
        assert_eq!(m.startup_delay, Duration::from_secs(5));
        assert_eq!(m.jitter, Duration::from_secs(30));
        assert_eq!(m.overlap, Overlap::Queue);
        assert_eq!(m.misfire, Misfire::RunOnce);
        assert_eq!(m.timeout, Duration::from_secs(600));
        assert_eq!(
            m.retries,
            Retries {
                max: 3,
                backoff: Duration::from_secs(60)
            }
        );
        assert_eq!(
            m.history,
            History {
                keep_days: 7,
                keep_last: 50
            }
        );
        assert_eq!(
            m.limits,
            Limits {
                fuel: 5_000_000_000,
                memory_bytes: 64 << 20,
                resources: ResourceLimits {
                    descriptors: 64,
                    write_bytes: 10 << 20,
                    dir_streams: 4,
                    handles: 512,
                },
            }
        );
        assert_eq!(
            m.dirs,
            vec![
                DirGrant {
                    host: "/var/log/app".into(),
                    guest: "/logs".into(),
                    mode: DirMode::Rw
                },
                DirGrant {
                    host: "/tasks/archive".into(),
                    guest: "/archive".into(),
                    mode: DirMode::Ro
                },
            ]
        );
        let db = m.database.unwrap();
        assert_eq!(db.connection, "main");
        assert_eq!(
            db.tables["events"],
            vec![
                SqlVerb::Select,
                SqlVerb::CreatePartition,
                SqlVerb::DropPartition
            ]
        );
        assert_eq!(m.config["table"], ConfigValue::Text("events".into()));
        assert_eq!(m.config["premake_days"], ConfigValue::Integer(30));
        assert_eq!(m.config["ratio"], ConfigValue::Float(0.5));
        assert_eq!(m.config["tables"], ConfigValue::Json(r#"["a","b"]"#.into()));
    }

    /// What a manifest says is what the API and `check` show.
    #[test]
    fn enums_show_as_they_are_written() {
        fn round_trip<T>(written: &str) -> T
        where
            T: serde::de::DeserializeOwned + Serialize,
        {
            let value: T = toml::Value::String(written.into()).try_into().unwrap();
            assert_eq!(serde_json::to_value(&value).unwrap(), written);
            value
        }
        for written in [
            "select",
            "insert",
            "update",
            "delete",
            "create_partition",
            "drop_partition",
            "vacuum",
            "analyze",
            "ddl",
        ] {
            let verb: SqlVerb = round_trip(written);
            assert_eq!(verb.to_string(), written);
            assert_eq!(verb.as_str(), written);
        }
        for written in ["ro", "rw"] {
            let mode: DirMode = round_trip(written);
            assert_eq!(mode.to_string(), written);
        }
        for written in ["skip", "queue", "replace", "allow"] {
            round_trip::<Overlap>(written);
        }
        for written in ["skip", "run-once"] {
            round_trip::<Misfire>(written);
        }
    }

    #[test]
    fn an_empty_manifest_takes_its_name_from_the_file_and_grants_nothing() {
        let m = parse("").unwrap();
        assert_eq!(m.name, "sample");
        assert_eq!(m.component, "sample.wasm");
        assert!(m.enabled);
        assert!(m.dirs.is_empty());
        assert!(m.database.is_none());
        assert_eq!(m, Manifest::implicit("sample", "sample.wasm"));
    }

    #[test]
    fn unknown_keys_are_named_with_the_file() {
        for (text, key) in [
            ("schedul = \"@daily\"", "schedul"),
            ("[limits]\ncpu = 5", "cpu"),
            (
                "[[grants.dirs]]\nhost = \"/a\"\nguest = \"/a\"\nmode = \"rw\"\nfollow = true",
                "follow",
            ),
            ("[grants]\nnetwork = true", "network"),
            ("retries = { max = 1, jitter = \"1s\" }", "jitter"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains("/tasks/sample.toml"), "{err}");
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, needle) in [
            ("schedule = \"61 * * * *\"", "`schedule`"),
            ("schedule = \"* * * *\"", "`schedule`"),
            ("timezone = \"Berlin\"", "`timezone`"),
            ("timeout = \"soon\"", "timeout"),
            ("timeout = \"0s\"", "`timeout`"),
            ("overlap = \"sometimes\"", "overlap"),
            ("misfire = \"later\"", "misfire"),
            ("[limits]\nmemory = \"lots\"", "`limits.memory`"),
            ("[limits]\nmemory = \"16GiB\"", "`limits.memory`"),
            ("[limits]\nfuel = 0", "`limits.fuel`"),
            ("[limits]\ndescriptors = 0", "`limits.descriptors`"),
            ("[limits]\ndescriptors = 2000000", "`limits.descriptors`"),
            ("[limits]\ndescriptors = -1", "descriptors"),
            ("[limits]\nwrite_bytes = \"a lot\"", "`limits.write_bytes`"),
            ("[limits]\ndir_streams = 0", "`limits.dir_streams`"),
            ("[limits]\nhandles = 8", "`limits.handles`"),
            ("[limits]\nhandles = 4294967295", "`limits.handles`"),
            ("[limits]\nfuel = -1", "fuel"),
            ("name = \"../evil\"", "`name`"),
            ("component = \"../other.wasm\"", "`component`"),
            ("component = \"/abs/other.wasm\"", "`component`"),
            ("component = \"other.so\"", "`component`"),
            (
                "[[grants.dirs]]\nhost = \"/a\"\nguest = \"logs\"\nmode = \"rw\"",
                "`grants.dirs[0]`.guest",
            ),
            (
                "[[grants.dirs]]\nhost = \"/a\"\nguest = \"/\"\nmode = \"rw\"",
                "`grants.dirs[0]`.guest",
            ),
            (
                "[[grants.dirs]]\nhost = \"/a\"\nguest = \"/a/../b\"\nmode = \"rw\"",
                "`grants.dirs[0]`.guest",
            ),
            (
                "[[grants.dirs]]\nhost = \"/a\"\nguest = \"/a\"\nmode = \"write\"",
                "mode",
            ),
            (
                "[[grants.dirs]]\nhost = \"/a\"\nguest = \"/a\"\nmode = \"ro\"\n[[grants.dirs]]\nhost = \"/b\"\nguest = \"/a\"\nmode = \"ro\"",
                "`grants.dirs[1]`.guest",
            ),
            (
                "[grants.database]\ntables = { events = [\"truncate\"] }",
                "truncate",
            ),
            (
                "[grants.database]\ntables = { events = [] }",
                "`grants.database.tables.events`",
            ),
            ("retries = { max = 1000 }", "`retries.max`"),
            ("history = { keep_days = 0 }", "`history`"),
            ("enabled = \"yes\"", "enabled"),
            ("this is not toml", "sample.toml"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(err.contains("/tasks/sample.toml"), "{err}");
        }
    }

    #[test]
    fn resource_limits_default_to_safe_caps() {
        let limits = parse("").unwrap().limits.resources;
        assert_eq!(limits.descriptors, 256);
        assert_eq!(limits.write_bytes, 1 << 30);
        assert_eq!(limits.dir_streams, 32);
        assert_eq!(limits.handles, 1024);
        // A manifest may lower the write budget to nothing: a task that must
        // not write at all.
        let limits = parse("[limits]\nwrite_bytes = 0").unwrap().limits.resources;
        assert_eq!(limits.write_bytes, 0);
        assert_eq!(
            parse("[limits]\nwrite_bytes = \"2GiB\"")
                .unwrap()
                .limits
                .resources
                .write_bytes,
            2 << 30
        );
    }

    #[test]
    fn memory_accepts_units_and_bytes() {
        assert_eq!(
            parse("[limits]\nmemory = \"1GiB\"")
                .unwrap()
                .limits
                .memory_bytes,
            1 << 30
        );
        assert_eq!(
            parse("[limits]\nmemory = 2097152")
                .unwrap()
                .limits
                .memory_bytes,
            2 << 20
        );
    }
}
