//! Configuration from flags and the environment (names as in the reference
//! service). Each flag's value name is its environment variable, so a bad
//! value is reported under the name the operator set.

use crate::capabilities::sql::{ConnectionOptions, Connections, SqlLimits};
use crate::runtime::compile::{CompileLimits, Isolated};
use crate::store::adopt::AdoptOptions;
use crate::store::{Store, StoreOptions};
use chrono_tz::Tz;
use std::path::PathBuf;
use std::time::Duration;

/// Where the run history lives.
#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    /// PostgreSQL (`postgres://…`) or SQLite (`sqlite:PATH`) URL; wins over DB_*.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// PostgreSQL host; with it set (and no DATABASE_URL) the store is PostgreSQL.
    #[arg(long, env = "DB_HOST", value_name = "DB_HOST")]
    pub db_host: Option<String>,
    #[arg(long, env = "DB_PORT", value_name = "DB_PORT", default_value_t = 5432)]
    pub db_port: u16,
    #[arg(
        long,
        env = "DB_NAME",
        value_name = "DB_NAME",
        default_value = "postgres"
    )]
    pub db_name: String,
    #[arg(
        long,
        env = "DB_USER",
        value_name = "DB_USER",
        default_value = "postgres"
    )]
    pub db_user: String,
    #[arg(
        long,
        env = "DB_PASSWORD",
        value_name = "DB_PASSWORD",
        hide_env_values = true
    )]
    pub db_password: Option<String>,
    /// Most connections in the store's pool.
    #[arg(long, env = "DB_POOL_MAX", value_name = "DB_POOL_MAX", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_pool_max: u32,
    /// How long to wait for a database connection, in milliseconds.
    #[arg(long, env = "DB_CONNECT_TIMEOUT", value_name = "DB_CONNECT_TIMEOUT", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub db_connect_timeout: u64,
    /// Directory for the embedded SQLite database (and, later, caches).
    #[arg(
        long,
        env = "HOUSEKEEPER_DATA_DIR",
        value_name = "HOUSEKEEPER_DATA_DIR",
        default_value = "./data"
    )]
    pub data_dir: PathBuf,
    /// TOML file of further named connections for tasks (`[connections.NAME]`
    /// with `url` and optional `pool_max`).
    #[arg(
        long,
        env = "HOUSEKEEPER_DB_CONFIG",
        value_name = "HOUSEKEEPER_DB_CONFIG"
    )]
    pub db_config: Option<PathBuf>,
    /// Most rows one SQL query of a task may return.
    #[arg(long, env = "HOUSEKEEPER_SQL_MAX_ROWS", value_name = "HOUSEKEEPER_SQL_MAX_ROWS",
          default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub sql_max_rows: u64,
    /// Longest one SQL call of a task may run, even when its run has more time.
    #[arg(long, env = "HOUSEKEEPER_SQL_CALL_TIMEOUT", value_name = "HOUSEKEEPER_SQL_CALL_TIMEOUT",
          default_value = "15m", value_parser = parse_duration)]
    pub sql_call_timeout: Duration,
    /// Longest SQL statement of a task the host parses; a longer one is
    /// refused unparsed.
    #[arg(long, env = "HOUSEKEEPER_SQL_MAX_STATEMENT", value_name = "HOUSEKEEPER_SQL_MAX_STATEMENT",
          default_value = "256KiB", value_parser = parse_statement_size)]
    pub sql_max_statement: u64,
    /// Largest string or blob a task's statement reads or makes on a SQLite
    /// connection. A statement runs on past its run's end for as long as a
    /// straight line of steps over values this large takes.
    #[arg(long, env = "HOUSEKEEPER_SQLITE_MAX_VALUE", value_name = "HOUSEKEEPER_SQLITE_MAX_VALUE",
          default_value = "1MiB", value_parser = parse_sqlite_value_size)]
    pub sqlite_max_value: u64,
    /// Most of SQLite's heap one SQL call of a task may hold at once on a
    /// SQLite connection (what preparing its statements copies, the values
    /// in its registers, caches and sorts); a statement that needs more
    /// fails, naming this variable.
    #[arg(long, env = "HOUSEKEEPER_SQLITE_MEMORY", value_name = "HOUSEKEEPER_SQLITE_MEMORY",
          default_value = "64MiB", value_parser = parse_sqlite_memory)]
    pub sqlite_memory: u64,
    /// Name of this process in the run history (default: the host name).
    /// Each replica sharing a database needs its own.
    #[arg(long, env = "HOUSEKEEPER_REPLICA", value_name = "HOUSEKEEPER_REPLICA")]
    pub replica: Option<String>,
    /// How long a running run's lease lasts unless its replica renews it
    /// (every third of it): how soon another replica notices a dead one.
    #[arg(long, env = "HOUSEKEEPER_LEASE", value_name = "HOUSEKEEPER_LEASE",
          default_value = "15s", value_parser = parse_lease)]
    pub lease: Duration,
    /// Time zone the reference service wrote its `TIMESTAMP` values in, read
    /// once when its tables are taken over (IANA); default: the `TIMEZONE`
    /// variable, else Etc/UTC.
    #[arg(long, env = "HOUSEKEEPER_ADOPT_TIMEZONE", value_name = "HOUSEKEEPER_ADOPT_TIMEZONE",
          value_parser = parse_tz)]
    pub adopt_timezone: Option<Tz>,
}

impl DbArgs {
    /// `DATABASE_URL`, else PostgreSQL from `DB_HOST`…, else SQLite at
    /// `$HOUSEKEEPER_DATA_DIR/housekeeper.db`.
    pub fn url(&self) -> String {
        if let Some(url) = &self.database_url {
            return url.clone();
        }
        if let Some(host) = &self.db_host {
            let password = self
                .db_password
                .as_deref()
                .map(|p| format!(":{}", encode(p)))
                .unwrap_or_default();
            return format!(
                "postgres://{}{password}@{host}:{}/{}",
                encode(&self.db_user),
                self.db_port,
                encode(&self.db_name)
            );
        }
        format!("sqlite:{}", self.data_dir.join("housekeeper.db").display())
    }

    /// Connections tasks may be granted: `main` when `DATABASE_URL` or
    /// `DB_HOST` is set, those of the `HOUSEKEEPER_DB_CONFIG` file, and every
    /// `HOUSEKEEPER_DB_<NAME>_URL`.
    pub fn connections(&self) -> anyhow::Result<Connections> {
        let main = (self.database_url.is_some() || self.db_host.is_some()).then(|| self.url());
        let options = self.connection_options();
        // Variables that are not Unicode cannot name a connection.
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        Connections::from_env(main.as_deref(), self.db_config.as_deref(), env, &options)
    }

    /// How each task connection's pool is opened.
    pub fn connection_options(&self) -> ConnectionOptions {
        ConnectionOptions {
            pool_max: self.db_pool_max,
            acquire_timeout: Duration::from_millis(self.db_connect_timeout),
            sqlite_max_value: self.sqlite_max_value as usize,
        }
    }

    /// Caps on each SQL call of a task.
    pub fn sql_limits(&self) -> SqlLimits {
        SqlLimits {
            max_rows: self.sql_max_rows as usize,
            call_timeout: self.sql_call_timeout,
            max_statement_bytes: self.sql_max_statement as usize,
            sqlite_memory: self.sqlite_memory as usize,
            ..SqlLimits::default()
        }
    }

    pub fn replica(&self) -> String {
        self.replica.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "housekeeper".into())
        })
    }

    /// How the reference service's tables are taken over: old values in
    /// `HOUSEKEEPER_ADOPT_TIMEZONE`, else in the `TIMEZONE` the reference
    /// service was configured with. Read from the environment rather than
    /// `--timezone`, so every command that opens the store reads them alike.
    pub fn adopt_options(&self) -> anyhow::Result<AdoptOptions> {
        let timezone = match std::env::var("TIMEZONE") {
            Ok(name) => self.adopt_timezone_or(Some(&name))?,
            Err(std::env::VarError::NotPresent) => self.adopt_timezone_or(None)?,
            Err(std::env::VarError::NotUnicode(_)) => match self.adopt_timezone {
                Some(tz) => tz,
                None => anyhow::bail!("TIMEZONE is not valid Unicode"),
            },
        };
        Ok(AdoptOptions {
            timezone,
            ..AdoptOptions::default()
        })
    }

    fn adopt_timezone_or(&self, timezone_var: Option<&str>) -> anyhow::Result<Tz> {
        if let Some(tz) = self.adopt_timezone {
            return Ok(tz);
        }
        match timezone_var.map(str::trim).filter(|name| !name.is_empty()) {
            Some(name) => parse_tz(name).map_err(|e| anyhow::anyhow!("TIMEZONE={name}: {e}")),
            None => Ok(AdoptOptions::default().timezone),
        }
    }

    /// The store's pool settings.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            pool_max: self.db_pool_max,
            acquire_timeout: Duration::from_millis(self.db_connect_timeout),
            lease: self.lease,
        }
    }

    pub async fn open(&self) -> anyhow::Result<Store> {
        let url = self.url();
        if url.starts_with("sqlite:") {
            std::fs::create_dir_all(&self.data_dir).map_err(|e| {
                anyhow::anyhow!(
                    "HOUSEKEEPER_DATA_DIR={}: cannot create it: {e}",
                    self.data_dir.display()
                )
            })?;
        }
        let adoption = self.adopt_options()?;
        Store::open_with(&url, &self.replica(), &self.store_options(), &adoption).await
    }
}

/// Percent-encodes a URL user-info or path component.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_tz(text: &str) -> Result<Tz, String> {
    crate::schedule::parse_timezone(text)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e}; use e.g. \"30s\" or \"2m\""))
}

/// A lease: 3 s to 10 min (renewed every third of it).
fn parse_lease(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d < Duration::from_secs(3) => Err("must be at least 3s".into()),
        d if d > Duration::from_secs(600) => Err("must be at most 10m".into()),
        d => Ok(d),
    }
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("must be longer than 0s".into()),
        d => Ok(d),
    }
}

/// A statement size: at least 1 KiB, at most 16 MiB (parsing is bounded by
/// the call's time, but its memory is the host's).
fn parse_statement_size(text: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text)?;
    if !(1 << 10..=16 << 20).contains(&bytes) {
        return Err(format!("{text:?}: expected a size from 1KiB to 16MiB"));
    }
    Ok(bytes)
}

fn parse_sqlite_value_size(text: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text)?;
    // SQLite's own ceiling on a value is 1,000,000,000 bytes.
    if !(1 << 10..=1_000_000_000).contains(&bytes) {
        return Err(format!("{text:?}: expected a size from 1KiB to 1GB"));
    }
    Ok(bytes)
}

fn parse_sqlite_memory(text: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text)?;
    if !(1 << 20..=1 << 40).contains(&bytes) {
        return Err(format!("{text:?}: expected a size from 1MiB to 1TiB"));
    }
    Ok(bytes)
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    match parse_size::parse_size(text) {
        Ok(0) => Err("must be more than 0 bytes".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}; use e.g. \"128MiB\" or \"4GiB\"")),
    }
}

/// Bounds on compiling a component (`serve`, `run`, `check`, `tasks`).
#[derive(Debug, Clone, clap::Args)]
pub struct CompileArgs {
    /// Largest component file loaded; larger ones are a load error.
    #[arg(long, env = "HOUSEKEEPER_MAX_COMPONENT_SIZE", value_name = "HOUSEKEEPER_MAX_COMPONENT_SIZE",
          default_value = "128MiB", value_parser = parse_bytes)]
    pub max_component_size: u64,
    /// Longest one component may take to compile.
    #[arg(long, env = "HOUSEKEEPER_COMPILE_TIMEOUT", value_name = "HOUSEKEEPER_COMPILE_TIMEOUT",
          default_value = "2m", value_parser = parse_positive_duration)]
    pub compile_timeout: Duration,
    /// Most memory compiling one component may use.
    #[arg(long, env = "HOUSEKEEPER_COMPILE_MEMORY", value_name = "HOUSEKEEPER_COMPILE_MEMORY",
          default_value = "4GiB", value_parser = parse_bytes)]
    pub compile_memory: u64,
    /// The housekeeper binary whose `__compile` worker compiles; unset,
    /// this program. Not a flag: set by a program that runs the service
    /// in its own process without being housekeeper (the tests).
    #[arg(skip)]
    pub worker: Option<PathBuf>,
}

impl CompileArgs {
    /// Compiling in a child process of the housekeeper binary, within these
    /// bounds.
    pub fn limits(&self) -> anyhow::Result<CompileLimits> {
        let isolated = match &self.worker {
            Some(program) => Isolated {
                program: program.clone(),
                timeout: self.compile_timeout,
                memory: self.compile_memory,
            },
            None => Isolated::current_exe(self.compile_timeout, self.compile_memory)
                .map_err(|e| anyhow::anyhow!("cannot find this program to compile in: {e}"))?,
        };
        Ok(CompileLimits {
            max_size: self.max_component_size,
            isolated: Some(isolated),
        })
    }
}

/// `housekeeper serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[arg(long, env = "HOST", value_name = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    #[arg(long, env = "PORT", value_name = "PORT", default_value_t = 3200)]
    pub port: u16,
    /// Directory of task components and manifests.
    #[arg(
        long,
        env = "HOUSEKEEPER_TASKS_DIR",
        value_name = "HOUSEKEEPER_TASKS_DIR",
        default_value = "./tasks.d"
    )]
    pub tasks_dir: PathBuf,
    /// `false` registers tasks but fires nothing (manual runs still work).
    #[arg(long, env = "HOUSEKEEPER_ENABLED", value_name = "HOUSEKEEPER_ENABLED", default_value = "true",
          action = clap::ArgAction::Set, value_parser = parse_bool)]
    pub enabled: bool,
    /// Time zone for schedules whose manifest names none (IANA).
    #[arg(long, env = "TIMEZONE", value_name = "TIMEZONE", default_value = "Etc/UTC", value_parser = parse_tz)]
    pub timezone: Tz,
    /// Runs beyond this many wait for a free slot.
    #[arg(long, env = "HOUSEKEEPER_MAX_CONCURRENT_RUNS", value_name = "HOUSEKEEPER_MAX_CONCURRENT_RUNS",
          default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_concurrent_runs: u32,
    /// How long shutdown waits for running tasks before interrupting them.
    #[arg(long, env = "HOUSEKEEPER_SHUTDOWN_GRACE", value_name = "HOUSEKEEPER_SHUTDOWN_GRACE",
          default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// When set, every `/api/*` request needs `Authorization: Bearer <token>`.
    #[arg(
        long,
        env = "HOUSEKEEPER_API_TOKEN",
        value_name = "HOUSEKEEPER_API_TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub compile: CompileArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        serve: ServeArgs,
    }

    // Built directly: clap would also read the test process's environment.
    fn db() -> DbArgs {
        DbArgs {
            database_url: None,
            db_host: None,
            db_port: 5432,
            db_name: "postgres".into(),
            db_user: "postgres".into(),
            db_password: None,
            db_pool_max: 10,
            db_connect_timeout: 10_000,
            data_dir: "./data".into(),
            db_config: None,
            sql_max_rows: 100_000,
            sql_call_timeout: Duration::from_secs(900),
            sql_max_statement: 256 << 10,
            sqlite_max_value: 1 << 20,
            sqlite_memory: 64 << 20,
            replica: None,
            lease: Duration::from_secs(15),
            adopt_timezone: None,
        }
    }

    #[test]
    fn the_statement_cap_reaches_the_sql_limits_and_refuses_odd_sizes() {
        let mut d = db();
        assert_eq!(d.sql_limits().max_statement_bytes, 256 << 10);
        d.sql_max_statement = parse_statement_size("1MiB").unwrap();
        assert_eq!(d.sql_limits().max_statement_bytes, 1 << 20);
        for bad in ["0", "10", "1GiB", "lots"] {
            assert!(parse_statement_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_sqlite_memory_cap_reaches_the_sql_limits_and_refuses_odd_sizes() {
        let mut d = db();
        assert_eq!(d.sql_limits().sqlite_memory, 64 << 20);
        d.sqlite_memory = parse_sqlite_memory("2GiB").unwrap();
        assert_eq!(d.sql_limits().sqlite_memory, 2 << 30);
        for bad in ["0", "100KiB", "2TiB", "lots"] {
            assert!(parse_sqlite_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_sqlite_value_cap_reaches_the_connections_and_refuses_odd_sizes() {
        let mut d = db();
        assert_eq!(d.connection_options().sqlite_max_value, 1 << 20);
        d.sqlite_max_value = parse_sqlite_value_size("64MiB").unwrap();
        assert_eq!(d.connection_options().sqlite_max_value, 64 << 20);
        for bad in ["0", "100", "2GB", "lots", "-1MiB"] {
            let err = parse_sqlite_value_size(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
    }

    #[test]
    fn old_timestamps_are_read_in_adopt_timezone_then_timezone_then_utc() {
        let mut d = db();
        assert_eq!(d.adopt_timezone_or(None).unwrap(), chrono_tz::Etc::UTC);
        assert_eq!(d.adopt_timezone_or(Some("")).unwrap(), chrono_tz::Etc::UTC);
        assert_eq!(
            d.adopt_timezone_or(Some("Europe/Berlin")).unwrap(),
            chrono_tz::Europe::Berlin
        );
        let err = d.adopt_timezone_or(Some("Moon/Base")).unwrap_err();
        assert!(err.to_string().starts_with("TIMEZONE=Moon/Base: "), "{err}");
        d.adopt_timezone = Some(chrono_tz::America::New_York);
        assert_eq!(
            d.adopt_timezone_or(Some("Europe/Berlin")).unwrap(),
            chrono_tz::America::New_York
        );
        assert_eq!(
            d.adopt_timezone_or(Some("Moon/Base")).unwrap(),
            chrono_tz::America::New_York
        );
    }

    #[test]
    fn database_url_wins_then_db_host_then_sqlite() {
        let mut d = db();
        d.database_url = Some("postgres://a/b".into());
        d.db_host = Some("h".into());
        assert_eq!(d.url(), "postgres://a/b");
        let mut d = db();
        d.db_host = Some("pg".into());
        d.db_user = "u@x".into();
        d.db_password = Some("p:ss/w".into());
        d.db_name = "iot".into();
        assert_eq!(d.url(), "postgres://u%40x:p%3Ass%2Fw@pg:5432/iot");
        let mut d = db();
        d.data_dir = "/var/lib/hk".into();
        assert_eq!(d.url(), "sqlite:/var/lib/hk/housekeeper.db");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (args, name) in [
            (vec!["x", "--port", "eighty"], "PORT"),
            (vec!["x", "--enabled", "maybe"], "HOUSEKEEPER_ENABLED"),
            (vec!["x", "--timezone", "Moon/Base"], "TIMEZONE"),
            (
                vec!["x", "--max-concurrent-runs", "0"],
                "HOUSEKEEPER_MAX_CONCURRENT_RUNS",
            ),
            (
                vec!["x", "--shutdown-grace", "soon"],
                "HOUSEKEEPER_SHUTDOWN_GRACE",
            ),
            (vec!["x", "--db-pool-max", "0"], "DB_POOL_MAX"),
            (
                vec!["x", "--adopt-timezone", "Moon/Base"],
                "HOUSEKEEPER_ADOPT_TIMEZONE",
            ),
            (vec!["x", "--sql-max-rows", "0"], "HOUSEKEEPER_SQL_MAX_ROWS"),
            (
                vec!["x", "--sql-call-timeout", "soon"],
                "HOUSEKEEPER_SQL_CALL_TIMEOUT",
            ),
            (
                vec!["x", "--max-component-size", "big"],
                "HOUSEKEEPER_MAX_COMPONENT_SIZE",
            ),
            (
                vec!["x", "--max-component-size", "0"],
                "HOUSEKEEPER_MAX_COMPONENT_SIZE",
            ),
            (
                vec!["x", "--compile-timeout", "soon"],
                "HOUSEKEEPER_COMPILE_TIMEOUT",
            ),
            (
                vec!["x", "--compile-timeout", "0s"],
                "HOUSEKEEPER_COMPILE_TIMEOUT",
            ),
            (
                vec!["x", "--compile-memory=-1GiB"],
                "HOUSEKEEPER_COMPILE_MEMORY",
            ),
            (
                vec!["x", "--compile-memory", "0"],
                "HOUSEKEEPER_COMPILE_MEMORY",
            ),
        ] {
            let err = Wrap::try_parse_from(args).err().unwrap().to_string();
            assert!(err.contains(name), "{err}");
        }
    }
}
