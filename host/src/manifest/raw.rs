//! The manifest as written: the TOML's shape (`deny_unknown_fields`
//! everywhere) and its validation into a [`Manifest`], each error naming
//! the key and what it expected.

use super::{
    DEFAULT_TIMEOUT, DatabaseGrant, DirGrant, DirMode, History, Limits, MAX_HANDLES,
    MAX_MEMORY_BYTES, Manifest, Misfire, Overlap, ResourceLimits, Retries, SqlVerb,
};
use crate::model::ConfigValue;
use crate::schedule::{self, Schedule};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::{Component as PathComponent, Path, PathBuf};
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawManifest {
    name: Option<String>,
    component: Option<String>,
    schedule: Option<String>,
    timezone: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    run_on_startup: Option<bool>,
    #[serde(default, deserialize_with = "duration")]
    startup_delay: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    jitter: Option<Duration>,
    #[serde(default)]
    overlap: Overlap,
    #[serde(default)]
    misfire: Misfire,
    #[serde(default, deserialize_with = "duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    retries: RawRetries,
    #[serde(default)]
    history: RawHistory,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    grants: RawGrants,
    #[serde(default)]
    config: toml::Table,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetries {
    #[serde(default)]
    max: u32,
    #[serde(default, deserialize_with = "duration")]
    backoff: Option<Duration>,
}

impl Default for RawRetries {
    fn default() -> Self {
        RawRetries {
            max: 0,
            backoff: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHistory {
    #[serde(default = "default_keep_days")]
    keep_days: u32,
    #[serde(default = "default_keep_last")]
    keep_last: u32,
}

fn default_keep_days() -> u32 {
    30
}

fn default_keep_last() -> u32 {
    1000
}

impl Default for RawHistory {
    fn default() -> Self {
        RawHistory {
            keep_days: default_keep_days(),
            keep_last: default_keep_last(),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    fuel: Option<u64>,
    memory: Option<MemorySize>,
    descriptors: Option<u32>,
    write_bytes: Option<MemorySize>,
    dir_streams: Option<u32>,
    handles: Option<u32>,
}

/// `memory = "128MiB"` (also `write_bytes`) or a plain number of bytes.
#[derive(Deserialize)]
#[serde(untagged)]
enum MemorySize {
    Bytes(u64),
    Text(String),
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrants {
    #[serde(default)]
    dirs: Vec<RawDir>,
    database: Option<RawDatabase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDir {
    host: PathBuf,
    guest: String,
    mode: DirMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    #[serde(default = "main_connection")]
    connection: String,
    #[serde(default)]
    tables: BTreeMap<String, Vec<SqlVerb>>,
}

impl MemorySize {
    fn bytes(self, key: &str, example: &str) -> Result<u64, String> {
        match self {
            MemorySize::Bytes(b) => Ok(b),
            MemorySize::Text(t) => parse_size::parse_size(&t)
                .map_err(|e| format!("`{key}`: invalid size {t:?} ({e}); use e.g. \"{example}\"")),
        }
    }
}

fn main_connection() -> String {
    "main".into()
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}); use e.g. \"30s\", \"10m\", \"1h 30m\""
        ))
    })
}

/// Task names end up in file names, URLs and metric labels.
pub fn validate_task_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid task name {name:?}: use 1-128 letters, digits, '-', '_' or '.', not starting with '.'"
        ))
    }
}

impl RawManifest {
    pub(super) fn validate(self, stem: &str, base: &Path) -> Result<Manifest, String> {
        let name = self.name.unwrap_or_else(|| stem.to_owned());
        validate_task_name(&name).map_err(|e| format!("`name`: {e}"))?;

        let component = self.component.unwrap_or_else(|| format!("{stem}.wasm"));
        let plain_file = Path::new(&component)
            .components()
            .all(|c| matches!(c, PathComponent::Normal(_)));
        if !component.ends_with(".wasm") || !plain_file {
            return Err(format!(
                "`component`: {component:?} must name a .wasm file inside the tasks directory"
            ));
        }

        let schedule = self
            .schedule
            .map(|s| Schedule::parse(&s))
            .transpose()
            .map_err(|e| format!("`schedule`: {e}"))?;
        let timezone = self
            .timezone
            .map(|tz| schedule::parse_timezone(&tz))
            .transpose()
            .map_err(|e| format!("`timezone`: {e}"))?;

        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err("`timeout`: must be more than zero".into());
        }

        if self.retries.max > 100 {
            return Err(format!(
                "`retries.max`: {} is more than 100",
                self.retries.max
            ));
        }
        if self.history.keep_days == 0 || self.history.keep_last == 0 {
            return Err("`history`: keep_days and keep_last must be at least 1".into());
        }

        let mut limits = Limits::default();
        if let Some(fuel) = self.limits.fuel {
            if fuel == 0 {
                return Err("`limits.fuel`: must be more than zero".into());
            }
            limits.fuel = fuel;
        }
        if let Some(memory) = self.limits.memory {
            let bytes = memory.bytes("limits.memory", "128MiB")?;
            if bytes < (1 << 20) || bytes > MAX_MEMORY_BYTES {
                return Err(format!(
                    "`limits.memory`: {bytes} bytes is outside 1MiB..=4GiB"
                ));
            }
            limits.memory_bytes = bytes;
        }
        if let Some(written) = self.limits.write_bytes {
            limits.resources.write_bytes = written.bytes("limits.write_bytes", "1GiB")?;
        }
        let count = |key: &str, value: Option<u32>, min: u32, default: u32| match value {
            None => Ok(default),
            Some(n) if (min..=MAX_HANDLES).contains(&n) => Ok(n),
            Some(n) => Err(format!("`{key}`: {n} is outside {min}..={MAX_HANDLES}")),
        };
        let defaults = ResourceLimits::default();
        limits.resources.descriptors = count(
            "limits.descriptors",
            self.limits.descriptors,
            1,
            defaults.descriptors,
        )?;
        limits.resources.dir_streams = count(
            "limits.dir_streams",
            self.limits.dir_streams,
            1,
            defaults.dir_streams,
        )?;
        // Every run holds a few handles before it opens anything (its
        // preopens, stdout, stderr).
        limits.resources.handles =
            count("limits.handles", self.limits.handles, 16, defaults.handles)?;

        let mut dirs: Vec<DirGrant> = Vec::new();
        for (i, dir) in self.grants.dirs.into_iter().enumerate() {
            let key = format!("`grants.dirs[{i}]`");
            let guest =
                normalize_guest_path(&dir.guest).map_err(|e| format!("{key}.guest: {e}"))?;
            if dirs.iter().any(|d| d.guest == guest) {
                return Err(format!("{key}.guest: {guest:?} is granted twice"));
            }
            if dir.host.as_os_str().is_empty() {
                return Err(format!("{key}.host: must not be empty"));
            }
            let host = if dir.host.is_absolute() {
                dir.host
            } else {
                base.join(dir.host)
            };
            dirs.push(DirGrant {
                host,
                guest,
                mode: dir.mode,
            });
        }

        let database = match self.grants.database {
            None => None,
            Some(db) => {
                if db.connection.is_empty() {
                    return Err("`grants.database.connection`: must not be empty".into());
                }
                for (table, verbs) in &db.tables {
                    if table.is_empty() {
                        return Err("`grants.database.tables`: a table name is empty".into());
                    }
                    if verbs.is_empty() {
                        return Err(format!("`grants.database.tables.{table}`: grants no verb"));
                    }
                }
                Some(DatabaseGrant {
                    connection: db.connection,
                    tables: db.tables,
                })
            }
        };

        let config = self
            .config
            .iter()
            .map(|(k, v)| (k.clone(), ConfigValue::from_toml(v)))
            .collect();

        Ok(Manifest {
            name,
            component,
            schedule,
            timezone,
            enabled: self.enabled,
            run_on_startup: self.run_on_startup,
            startup_delay: self.startup_delay.unwrap_or_default(),
            jitter: self.jitter.unwrap_or_default(),
            overlap: self.overlap,
            misfire: self.misfire,
            timeout,
            retries: Retries {
                max: self.retries.max,
                backoff: self.retries.backoff.unwrap_or(Duration::from_secs(30)),
            },
            history: History {
                keep_days: self.history.keep_days,
                keep_last: self.history.keep_last,
            },
            limits,
            dirs,
            database,
            config,
        })
    }
}

/// Guest paths are absolute, without `.`/`..`, and not `/` itself.
fn normalize_guest_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "{path:?} must be an absolute path such as \"/logs\""
        ));
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err("\"/\" cannot be granted; name a directory such as \"/logs\"".into());
    }
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(format!("{path:?} must not contain '.' or '..'"));
    }
    Ok(format!("/{}", parts.join("/")))
}
