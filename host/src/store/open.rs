//! Opening the store: connecting to SQLite or PostgreSQL, applying the
//! migrations (on PostgreSQL after taking over the reference service's
//! tables), a store over a pool the tests made, and locking a SQLite
//! database to one process.

use super::adopt::{self, AdoptOptions, Finding};
use super::{Backend, Store, migrate};
use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::str::FromStr;
use std::time::Duration;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// How the store's connection pool behaves.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub pool_max: u32,
    /// How long a query waits for a free connection.
    pub acquire_timeout: Duration,
    /// How long a running run's lease lasts unless its replica renews it.
    pub lease: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            pool_max: 10,
            acquire_timeout: Duration::from_secs(30),
            lease: Duration::from_secs(15),
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store at `url` and applies migrations.
    /// `sqlite:PATH` or `postgres://…`. `replica` names this process in the
    /// rows it writes. The reference service's tables, if any, are taken
    /// over with old `TIMESTAMP` values read in UTC.
    pub async fn open(url: &str, replica: &str, options: &StoreOptions) -> anyhow::Result<Self> {
        Self::open_with(url, replica, options, &AdoptOptions::default()).await
    }

    /// [`Store::open`], taking over the reference service's tables (on
    /// PostgreSQL) as `adoption` says.
    pub async fn open_with(
        url: &str,
        replica: &str,
        options: &StoreOptions,
        adoption: &AdoptOptions,
    ) -> anyhow::Result<Self> {
        let pool_max = options.pool_max.max(1);
        let backend = if is_postgres(url) {
            let pool = connect_postgres(url, options).await?;
            if let Finding::Reference(plan) =
                migrate::run(&pool, &POSTGRES_MIGRATIONS, adoption).await?
            {
                tracing::info!(
                    runs = plan.runs,
                    tasks = plan.run_tasks,
                    disabled = plan.disabled.len(),
                    timezone = plan.timezone.name(),
                    "took over the reference service's tables"
                );
            }
            Backend::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)
                .context("invalid SQLite URL")?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            // Switching to WAL needs the database to itself: do it on one
            // connection before the pool opens several at once.
            use sqlx::Connection as _;
            sqlx::sqlite::SqliteConnection::connect_with(&connect)
                .await
                .context("cannot open the SQLite database")?
                .close()
                .await?;
            // Connections are opened up front and kept: an embedded
            // database has no reason to recycle them.
            let pool = SqlitePoolOptions::new()
                .max_connections(pool_max)
                .min_connections(pool_max)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await
                .context("cannot open the SQLite database")?;
            SQLITE_MIGRATIONS
                .run(&pool)
                .await
                .context("cannot apply SQLite migrations")?;
            Backend::Sqlite(pool)
        } else {
            anyhow::bail!("unsupported database URL: expected sqlite:PATH or postgres://…");
        };
        Ok(Store {
            backend,
            replica: replica.to_owned(),
            lease: options.lease,
        })
    }

    /// What taking over the reference service's tables at `url` would do,
    /// changing nothing.
    pub async fn inspect_reference(
        url: &str,
        options: &StoreOptions,
        adoption: &AdoptOptions,
    ) -> anyhow::Result<Finding> {
        let pool = connect_postgres(url, options).await?;
        let finding = adopt::inspect_only(&pool, adoption).await;
        pool.close().await;
        Ok(finding?)
    }

    /// Takes over the reference service's tables at `url` now, if they are
    /// there and housekeeper's migrations are not, and says what it found.
    pub async fn adopt_reference(
        url: &str,
        options: &StoreOptions,
        adoption: &AdoptOptions,
    ) -> anyhow::Result<Finding> {
        let pool = connect_postgres(url, options).await?;
        let finding = adopt::adopt(&pool, adoption).await;
        pool.close().await;
        Ok(finding?)
    }

    /// A store over an existing SQLite pool with migrations applied
    /// (`#[sqlx::test]`).
    pub fn from_sqlite(pool: SqlitePool, replica: &str) -> Self {
        Store {
            backend: Backend::Sqlite(pool),
            replica: replica.to_owned(),
            lease: StoreOptions::default().lease,
        }
    }

    /// A store over an existing PostgreSQL pool with migrations applied.
    pub fn from_postgres(pool: PgPool, replica: &str) -> Self {
        Store {
            backend: Backend::Postgres(pool),
            replica: replica.to_owned(),
            lease: StoreOptions::default().lease,
        }
    }

    pub fn sqlite_migrator() -> &'static sqlx::migrate::Migrator {
        &SQLITE_MIGRATIONS
    }

    pub fn postgres_migrator() -> &'static sqlx::migrate::Migrator {
        &POSTGRES_MIGRATIONS
    }
}

/// Makes this process the only `serve` on the SQLite database at `url`: an
/// exclusive lock (the kernel's `flock`, released when the process ends,
/// however it ends) on the database file itself, held for as long as the
/// returned file is. The lock is on the file, not its name, so another path
/// to it (a symbolic or hard link) meets it too; SQLite's own locks are
/// `fcntl` locks, which `flock` leaves alone. SQLite serves one replica;
/// several need PostgreSQL. `None` for a PostgreSQL URL or an in-memory
/// database.
pub fn lock_single_replica(url: &str) -> anyhow::Result<Option<std::fs::File>> {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Ok(None);
    };
    let path = rest.strip_prefix("//").unwrap_or(rest);
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(None);
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the SQLite database {path}"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another housekeeper serve is using the SQLite database {path}: SQLite serves one replica; \
             to run several replicas, give them one PostgreSQL database (DATABASE_URL=postgres://…)"
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("cannot lock {path}")))
        }
    }
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres:") || url.starts_with("postgresql:")
}

async fn connect_postgres(url: &str, options: &StoreOptions) -> anyhow::Result<PgPool> {
    // No `extra_float_digits` at startup: PgBouncer refuses a startup
    // parameter it does not know unless told to ignore it, and the store
    // reads no float as text (PostgreSQL 12 and later print the shortest
    // exact form whatever it is).
    let connect = PgConnectOptions::from_str(url)
        .context("invalid PostgreSQL URL")?
        .extra_float_digits(None);
    PgPoolOptions::new()
        .max_connections(options.pool_max.max(1))
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await
        .context("cannot connect to PostgreSQL")
}
