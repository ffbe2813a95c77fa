//! Named database connections that tasks reach through `grants.database`.
//!
//! `main` is the database `DATABASE_URL` (or `DB_HOST`…) names when one is
//! set; the TOML file `HOUSEKEEPER_DB_CONFIG` names and every
//! `HOUSEKEEPER_DB_<NAME>_URL` add connection `<name>` (lower case). Each connection has its own pool, opened lazily: a database that
//! is down fails the runs that use it, not the service's start.

use super::guard::Dialect;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{ConnectOptions, PgPool, SqlitePool};
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Prefix and suffix of the environment variables that name connections.
const ENV_PREFIX: &str = "HOUSEKEEPER_DB_";
const ENV_SUFFIX: &str = "_URL";
/// Default of the largest string or blob SQLite reads or makes on a task
/// connection (`HOUSEKEEPER_SQLITE_MAX_VALUE`). The memory for a value lives
/// in the host, outside the run's memory limit, so one
/// `printf('%.*c', 999999999, 'x')` must fail instead of allocating a
/// gigabyte; and one step of a statement (a function call, a comparison, a
/// copy) costs time in proportion to its values, with no chance for the
/// deadline to interrupt it until the statement loops.
pub const SQLITE_MAX_VALUE: usize = 1 << 20;

/// Most instructions SQLite's compiled program for one task statement may
/// hold (`SQLITE_LIMIT_VDBE_OP`): a statement without a loop runs from its
/// first instruction to its last without looking at the progress handler,
/// so this, times the cost of a step over the largest value, bounds how
/// long it runs on once its call is over. Maintenance statements compile to
/// tens or hundreds of instructions; an `IN` list of n literals to about
/// 3n. SQLite grows a program by doubling (42, 84, … 5,376), so the cap is
/// one of those sizes.
pub const SQLITE_MAX_PROGRAM: usize = 5_376;

/// Suffix of the variables that let a connection log in as a superuser.
const ENV_UNSAFE_SUFFIX: &str = "_UNSAFE_SUPERUSER";

#[derive(Clone)]
pub(crate) enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// One named connection's pool.
#[derive(Clone)]
pub struct Connection {
    pub(crate) pool: Pool,
    /// Task SQL may run on a session whose login role is a superuser or
    /// has `BYPASSRLS` (still under the task's role).
    pub(crate) unsafe_superuser: bool,
    /// Held while the host inspects or changes task roles, so that two runs
    /// do not grant the same privilege at once.
    pub(crate) roles: Arc<tokio::sync::Mutex<()>>,
}

impl Connection {
    /// Opens a lazy pool for `url`; only the URL is checked here.
    pub fn open(url: &str, options: &ConnectionOptions) -> anyhow::Result<Self> {
        let pool = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            // Task statements are recorded in the run's output, not the
            // host's log.
            let connect = PgConnectOptions::from_str(url)?
                .application_name("housekeeper-task")
                .disable_statement_logging();
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(options.pool_max)
                    .acquire_timeout(options.acquire_timeout)
                    .connect_lazy_with(connect),
            )
        } else if url.starts_with("sqlite:") {
            // SQLite's temporary files go through the task VFS, which
            // charges them to the run's write budget.
            super::heap::install();
            super::temp_files::register().map_err(anyhow::Error::msg)?;
            let max_value = i32::try_from(options.sqlite_max_value).unwrap_or(i32::MAX);
            let busy_timeout = options.acquire_timeout;
            // Rows the driver has copied and not yet handed over count
            // against the call's SQLite heap (`heap.rs`): a few at a time.
            let connect = SqliteConnectOptions::from_str(url)?
                .busy_timeout(options.acquire_timeout)
                .row_buffer_size(16)
                .vfs(super::temp_files::NAME);
            Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(options.pool_max)
                    .acquire_timeout(options.acquire_timeout)
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            let mut handle = conn.lock_handle().await?;
                            let db = handle.as_raw_handle().as_ptr();
                            // SAFETY: the handle is this connection's open
                            // database, locked for the call.
                            unsafe {
                                libsqlite3_sys::sqlite3_limit(
                                    db,
                                    libsqlite3_sys::SQLITE_LIMIT_LENGTH,
                                    max_value,
                                );
                                libsqlite3_sys::sqlite3_limit(
                                    db,
                                    libsqlite3_sys::SQLITE_LIMIT_VDBE_OP,
                                    SQLITE_MAX_PROGRAM as i32,
                                );
                                super::functions::register(db, busy_timeout)
                            }
                            .map_err(|e| sqlx::Error::Configuration(e.into()))
                        })
                    })
                    .connect_lazy_with(connect),
            )
        } else {
            anyhow::bail!("expected a postgres:// or sqlite: URL");
        };
        Ok(Connection::new(pool))
    }

    fn new(pool: Pool) -> Self {
        Connection {
            pool,
            unsafe_superuser: false,
            roles: Arc::default(),
        }
    }

    /// A connection over an existing pool.
    pub fn postgres(pool: PgPool) -> Self {
        Connection::new(Pool::Postgres(pool))
    }

    pub fn sqlite(pool: SqlitePool) -> Self {
        Connection::new(Pool::Sqlite(pool))
    }

    /// Lets task SQL run on a session that logs in as a superuser or with
    /// `BYPASSRLS`. Unsafe: such a session can leave the task's role.
    pub fn allow_unsafe_superuser(mut self) -> Self {
        self.unsafe_superuser = true;
        self
    }

    /// The pool, when the connection is PostgreSQL.
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.pool {
            Pool::Postgres(pool) => Some(pool),
            Pool::Sqlite(_) => None,
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self.pool {
            Pool::Postgres(_) => Dialect::Postgres,
            Pool::Sqlite(_) => Dialect::Sqlite,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    pub pool_max: u32,
    pub acquire_timeout: Duration,
    /// Largest string or blob a task statement reads or makes on SQLite.
    pub sqlite_max_value: usize,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            pool_max: 4,
            acquire_timeout: Duration::from_secs(10),
            sqlite_max_value: SQLITE_MAX_VALUE,
        }
    }
}

/// `HOUSEKEEPER_DB_CONFIG`: named connections in TOML.
///
/// ```toml
/// [connections.reporting]
/// url = "postgres://housekeeper_reporting@db/reporting"
/// pool_max = 2
/// ```
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    connections: BTreeMap<String, ConfigEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigEntry {
    url: String,
    pool_max: Option<u32>,
    /// Unsafe: task SQL may run on a superuser or `BYPASSRLS` login.
    #[serde(default)]
    unsafe_superuser: bool,
}

/// The connections tasks may be granted, by name. Cheap to clone.
#[derive(Clone, Default)]
pub struct Connections {
    by_name: Arc<BTreeMap<String, Connection>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Connections {
    /// `main` from `main_url` (when given), the connections of the file
    /// `HOUSEKEEPER_DB_CONFIG` names (when given), and every
    /// `HOUSEKEEPER_DB_<NAME>_URL` in `env`. A bad URL or file, or a name
    /// defined twice, fails, naming where.
    pub fn from_env(
        main_url: Option<&str>,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        options: &ConnectionOptions,
    ) -> anyhow::Result<Self> {
        // name -> (connection, where it was defined)
        let mut by_name: BTreeMap<String, (Connection, String)> = BTreeMap::new();
        let mut add = |name: String,
                       url: &str,
                       options: &ConnectionOptions,
                       unsafe_superuser: bool,
                       source: String| {
            let mut connection =
                Connection::open(url, options).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
            connection.unsafe_superuser = unsafe_superuser;
            if let Some((_, first)) = by_name.get(&name) {
                anyhow::bail!("connection `{name}` is defined twice: in {first} and in {source}");
            }
            by_name.insert(name, (connection, source));
            Ok(())
        };
        if let Some(url) = main_url {
            add(
                "main".to_owned(),
                url,
                options,
                false,
                "DATABASE_URL".to_owned(),
            )?;
        }
        if let Some(path) = file {
            let what = format!("HOUSEKEEPER_DB_CONFIG={}", path.display());
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{what}: cannot read it: {e}"))?;
            let parsed: ConfigFile =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{what}: {}", e.message()))?;
            for (name, entry) in parsed.connections {
                let options = ConnectionOptions {
                    pool_max: entry.pool_max.unwrap_or(options.pool_max).max(1),
                    ..options.clone()
                };
                add(
                    name.to_lowercase(),
                    &entry.url,
                    &options,
                    entry.unsafe_superuser,
                    format!("{what} (connections.{name})"),
                )?;
            }
        }
        let mut unsafe_names = Vec::new();
        for (key, url) in env {
            if let Some(name) = key
                .strip_prefix(ENV_PREFIX)
                .and_then(|k| k.strip_suffix(ENV_UNSAFE_SUFFIX))
            {
                match url.as_str() {
                    "1" | "true" => unsafe_names.push((name.to_lowercase(), key.clone())),
                    "0" | "false" | "" => {}
                    other => anyhow::bail!("{key}: expected true or false, got {other:?}"),
                }
                continue;
            }
            let Some(name) = key
                .strip_prefix(ENV_PREFIX)
                .and_then(|k| k.strip_suffix(ENV_SUFFIX))
            else {
                continue;
            };
            if name.is_empty() {
                anyhow::bail!(
                    "{key}: the connection needs a name, e.g. HOUSEKEEPER_DB_REPORTING_URL"
                );
            }
            add(name.to_lowercase(), &url, options, false, key.clone())?;
        }
        for (name, key) in unsafe_names {
            match by_name.get_mut(&name) {
                Some((connection, _)) => connection.unsafe_superuser = true,
                None => anyhow::bail!(
                    "{key}: there is no connection `{name}` (set HOUSEKEEPER_DB_{}_URL, or DATABASE_URL for `main`)",
                    name.to_uppercase()
                ),
            }
        }
        Ok(Connections {
            by_name: Arc::new(by_name.into_iter().map(|(k, (c, _))| (k, c)).collect()),
        })
    }

    /// Connections from `(name, connection)` pairs.
    pub fn from_connections<'a>(
        connections: impl IntoIterator<Item = (&'a str, Connection)>,
    ) -> Self {
        Connections {
            by_name: Arc::new(
                connections
                    .into_iter()
                    .map(|(name, c)| (name.to_lowercase(), c))
                    .collect(),
            ),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Connection> {
        self.by_name.get(&name.to_lowercase())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_come_from_database_url_and_prefixed_variables() {
        let env = [
            ("HOUSEKEEPER_DB_REPORTING_URL", "postgres://u@db/reporting"),
            ("HOUSEKEEPER_DB_LOCAL_URL", "sqlite::memory:"),
            ("HOUSEKEEPER_DATA_DIR", "/x"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = Connections::from_env(Some("postgres://u@db/app"), None, env, &Default::default())
            .unwrap();
        assert_eq!(
            c.names().collect::<Vec<_>>(),
            ["local", "main", "reporting"]
        );
        assert_eq!(c.get("MAIN").unwrap().dialect(), Dialect::Postgres);
        assert_eq!(c.get("local").unwrap().dialect(), Dialect::Sqlite);
    }

    #[tokio::test]
    async fn a_connection_opts_in_to_a_superuser_login_only_by_name() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let c = Connections::from_env(
            Some("postgres://u@db/app"),
            None,
            env(&[
                ("HOUSEKEEPER_DB_MAIN_UNSAFE_SUPERUSER", "1"),
                ("HOUSEKEEPER_DB_R_URL", "postgres://u@db/r"),
            ]),
            &Default::default(),
        )
        .unwrap();
        assert!(c.get("main").unwrap().unsafe_superuser);
        assert!(!c.get("r").unwrap().unsafe_superuser);
        for (pairs, needle) in [
            (
                vec![("HOUSEKEEPER_DB_OTHER_UNSAFE_SUPERUSER", "1")],
                "no connection `other`",
            ),
            (
                vec![("HOUSEKEEPER_DB_MAIN_UNSAFE_SUPERUSER", "yes please")],
                "expected true or false",
            ),
        ] {
            let err = Connections::from_env(
                Some("postgres://u@db/app"),
                None,
                env(&pairs),
                &Default::default(),
            )
            .err()
            .unwrap()
            .to_string();
            assert!(err.contains(needle), "{needle}: {err}");
            assert!(err.contains(pairs[0].0), "{err}");
        }
    }

    #[tokio::test]
    async fn a_sqlite_value_past_the_cap_is_an_error_not_host_memory() {
        let c = Connection::open("sqlite::memory:", &ConnectionOptions::default()).unwrap();
        let Pool::Sqlite(pool) = &c.pool else {
            panic!("not SQLite")
        };
        let fits: i64 = sqlx::query_scalar("SELECT length(zeroblob(?1))")
            .bind(SQLITE_MAX_VALUE as i64)
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(fits as usize, SQLITE_MAX_VALUE);
        for statement in [
            "SELECT length(printf('%.*c', 999999999, 'x'))",
            "SELECT length(zeroblob(999999999))",
            "SELECT length(replace(printf('%.*c', 1000000, 'x'), 'x', printf('%.*c', 1000, 'y')))",
        ] {
            let outcome = sqlx::query_scalar::<_, Option<i64>>(statement)
                .fetch_one(pool)
                .await;
            // SQLite stops building the value at the cap: an error, or
            // (for `printf`) NULL.
            let text = format!("{outcome:?}");
            assert!(
                text.contains("too big") || matches!(outcome, Ok(None)),
                "{statement}: {text}"
            );
        }
    }

    #[tokio::test]
    async fn a_bad_url_names_its_variable() {
        let env = [("HOUSEKEEPER_DB_X_URL".to_owned(), "mysql://db".to_owned())];
        let err = Connections::from_env(None, None, env, &Default::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("HOUSEKEEPER_DB_X_URL"), "{err}");
        let env = [(
            "HOUSEKEEPER_DB__URL".to_owned(),
            "sqlite::memory:".to_owned(),
        )];
        assert!(Connections::from_env(None, None, env, &Default::default()).is_err());
    }

    #[tokio::test]
    async fn a_config_file_adds_connections_and_names_its_mistakes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db.toml");
        let open = |text: &str, env: Vec<(&str, &str)>| {
            std::fs::write(&file, text).unwrap();
            let env = env.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned()));
            Connections::from_env(
                Some("postgres://u@db/app"),
                Some(&file),
                env,
                &Default::default(),
            )
        };
        let c = open(
            "[connections.Reporting]\nurl = \"postgres://u@db/r\"\npool_max = 2\n[connections.local]\nurl = \"sqlite::memory:\"\n",
            vec![],
        )
        .unwrap();
        assert_eq!(
            c.names().collect::<Vec<_>>(),
            ["local", "main", "reporting"]
        );
        for (text, env, needle) in [
            (
                "[connections.x]\nurl = \"postgres://u@db/x\"\nuser = \"a\"\n",
                vec![],
                "unknown field `user`",
            ),
            (
                "[connections.x]\nurl = \"ftp://x\"\n",
                vec![],
                "connections.x",
            ),
            (
                "[connections.main]\nurl = \"postgres://u@db/other\"\n",
                vec![],
                "`main` is defined twice",
            ),
            (
                "[connections.x]\nurl = \"postgres://u@db/x\"\n",
                vec![("HOUSEKEEPER_DB_X_URL", "postgres://u@db/y")],
                "HOUSEKEEPER_DB_X_URL",
            ),
        ] {
            let err = format!("{:#}", open(text, env).err().unwrap());
            assert!(err.contains(needle), "{needle}: {err}");
            assert!(
                err.contains("HOUSEKEEPER_DB_CONFIG") || err.contains("DATABASE_URL"),
                "{err}"
            );
        }
        let missing = Connections::from_env(
            None,
            Some(&dir.path().join("nope.toml")),
            Vec::new(),
            &Default::default(),
        );
        assert!(format!("{:#}", missing.err().unwrap()).contains("cannot read it"));
    }
}
