//! Taking over the reference service's PostgreSQL tables in place.
//!
//! The reference service created `housekeeper_runs`, `housekeeper_config`
//! and `get_housekeeper_stats()` itself (seed 000, "Database Schema"). A
//! team moving from it has months of history and hand-made toggles in them,
//! so they cannot simply be dropped for our first migration to create its
//! own. When they exist and that migration is not recorded, [`adopt`]
//! upgrades them to exactly what the migration creates, in one transaction,
//! and records the migration as applied, as sqlx would; the migrator then
//! continues from there.
//!
//! Everything is checked before the first change: a shape it does not know
//! (a missing column, a type it cannot convert, a constraint or view that
//! would break) is refused, naming the table and column and what to do, and
//! nothing is changed. The transaction makes a failure later on just as
//! harmless.

use super::{query, query_scalar};
use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;
use sqlx::Row as _;
use sqlx::postgres::{PgConnection, PgPool};
use std::fmt;
use std::time::{Duration, Instant};

/// The migration whose result adoption produces; later ones are applied by
/// the migrator as usual.
pub const ADOPTED_VERSION: i64 = 20261123000001;

/// `replica` of the rows the reference service wrote.
pub const REFERENCE_REPLICA: &str = "reference";

/// `triggered_by` of old rows that recorded none.
pub const UNKNOWN_TRIGGER: &str = crate::model::Trigger::Unknown.as_str();

/// `error` of runs the reference service left `running`, now `interrupted`.
pub const LEFT_RUNNING: &str = "the reference service stopped while the run was in progress";

/// How the reference service's tables are taken over.
#[derive(Debug, Clone)]
pub struct AdoptOptions {
    /// Zone in which the reference service wrote its `TIMESTAMP` (without
    /// time zone) values; each becomes the instant it named there.
    pub timezone: Tz,
    /// How long to wait for another session's locks on the reference
    /// tables (a reference service still running) before giving up.
    pub lock_timeout: Duration,
}

impl Default for AdoptOptions {
    fn default() -> Self {
        AdoptOptions {
            timezone: chrono_tz::Etc::UTC,
            lock_timeout: Duration::from_secs(10),
        }
    }
}

/// What the database holds, as far as adoption is concerned.
#[derive(Debug, Clone)]
pub enum Finding {
    /// None of the reference service's objects: the migrations create
    /// everything.
    Fresh,
    /// housekeeper's first migration is recorded: nothing to adopt.
    Migrated,
    /// The reference service's tables, and how they are taken over.
    Reference(Box<Plan>),
}

/// The reference tables as found, and the statements that take them over.
#[derive(Debug, Clone)]
pub struct Plan {
    pub timezone: Tz,
    pub runs: i64,
    pub run_tasks: i64,
    pub ids: Option<(i64, i64)>,
    /// The id the next run gets.
    pub next_id: i64,
    /// Runs still `running`: the reference service stopped during them.
    pub left_running: i64,
    /// Runs with `triggered_by = 'scheduler'` (become `schedule`).
    pub by_scheduler: i64,
    /// Runs with no `triggered_by` (become `unknown`).
    pub untriggered: i64,
    pub config_tasks: i64,
    pub disabled: Vec<String>,
    /// The newest `started_at` as stored, and the instant it becomes (only
    /// when it is a `TIMESTAMP` without time zone).
    pub newest_start: Option<(NaiveDateTime, DateTime<Utc>)>,
    pub replaces_function: bool,
    /// Columns neither schema has, kept as they are.
    pub kept_columns: Vec<String>,
    pub statements: Vec<String>,
}

/// Something about the reference tables that adoption cannot take over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `table`, `table.column` or `function()`.
    pub object: String,
    pub problem: String,
    /// What the operator can do about it.
    pub fix: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.object, self.problem, self.fix)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(
        "cannot take over the reference service's tables, nothing was changed:{}",
        list(.0)
    )]
    Refused(Vec<Refusal>),
    #[error(
        "cannot take over the reference service's tables: another session holds a lock on them \
         (is the reference service still running? stop it, then start again); nothing was changed"
    )]
    Busy,
    #[error("cannot take over the reference service's tables ({step}); nothing was changed")]
    Database {
        step: String,
        #[source]
        source: sqlx::Error,
    },
}

fn list(refusals: &[Refusal]) -> String {
    refusals.iter().map(|r| format!("\n  - {r}")).collect()
}

fn db(step: impl Into<String>) -> impl FnOnce(sqlx::Error) -> AdoptError {
    let step = step.into();
    move |source| {
        let busy = source
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == "55P03");
        if busy {
            AdoptError::Busy
        } else {
            AdoptError::Database { step, source }
        }
    }
}

/// Takes over the reference service's tables if they are there and our
/// migrations are not, and says what it found: one transaction under the
/// migration lock, so that of two processes starting at once one adopts and
/// the other finds the migration recorded.
pub async fn adopt(pool: &PgPool, options: &AdoptOptions) -> Result<Finding, AdoptError> {
    let mut tx = pool.begin().await.map_err(db("connecting to PostgreSQL"))?;
    let done = async {
        super::migrate::lock(&mut tx)
            .await
            .map_err(db("taking the migration lock"))?;
        adopt_in(&mut tx, options).await
    }
    .await;
    match done {
        Ok(finding) => {
            tx.commit().await.map_err(db("committing"))?;
            Ok(finding)
        }
        Err(e) => {
            // Released now, not when the connection is next used.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// [`adopt`] in the transaction `tx`, which holds the migration lock and
/// which the caller commits (with the migrations that follow, at start).
pub(super) async fn adopt_in(
    tx: &mut PgConnection,
    options: &AdoptOptions,
) -> Result<Finding, AdoptError> {
    let started = Instant::now();
    let finding = inspect(tx, options, true).await?;
    let Finding::Reference(plan) = &finding else {
        return Ok(finding);
    };
    for statement in &plan.statements {
        sqlx::raw_sql(statement)
            .execute(&mut *tx)
            .await
            .map_err(db(first_line(statement)))?;
    }
    // As sqlx does, the time it took replaces the -1 it starts as.
    query("UPDATE _sqlx_migrations SET execution_time = $1 WHERE version = $2")
        .bind(started.elapsed().as_nanos() as i64)
        .bind(ADOPTED_VERSION)
        .execute(&mut *tx)
        .await
        .map_err(db("recording the time taken"))?;
    // The lock timeout was for taking the reference tables; what follows in
    // the transaction waits as long as it needs.
    sqlx::raw_sql("SET LOCAL lock_timeout = DEFAULT")
        .execute(&mut *tx)
        .await
        .map_err(db("resetting lock_timeout"))?;
    Ok(finding)
}

/// What [`adopt`] would do, changing nothing (a read-only transaction).
pub async fn inspect_only(pool: &PgPool, options: &AdoptOptions) -> Result<Finding, AdoptError> {
    let mut tx = pool.begin().await.map_err(db("connecting to PostgreSQL"))?;
    sqlx::raw_sql("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(db("starting a read-only transaction"))?;
    let finding = inspect(&mut tx, options, false).await;
    tx.rollback().await.map_err(db("ending the inspection"))?;
    finding
}

fn first_line(statement: &str) -> String {
    statement
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

const RUNS: &str = "housekeeper_runs";
const CONFIG: &str = "housekeeper_config";
const FUNCTION: &str = "get_housekeeper_stats()";
const INDEXES: [&str; 3] = [
    "housekeeper_runs_occurrence",
    "housekeeper_runs_task_started",
    "housekeeper_runs_running",
];

/// Column types adoption accepts, by what the reference column holds.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Integer,
    Text,
    Time,
    Bool,
}

impl Kind {
    fn accepts(self, pg_type: &str) -> bool {
        let accepted: &[&str] = match self {
            Kind::Integer => &["smallint", "integer", "bigint"],
            Kind::Text => &["character varying", "text"],
            Kind::Time => &["timestamp without time zone", "timestamp with time zone"],
            Kind::Bool => &["boolean"],
        };
        accepted.contains(&pg_type)
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Integer => "smallint, integer or bigint",
            Kind::Text => "varchar or text",
            Kind::Time => "timestamp, with or without time zone",
            Kind::Bool => "boolean",
        }
    }

    /// The type housekeeper's schema gives the column.
    fn target(self) -> &'static str {
        match self {
            Kind::Integer => "bigint",
            Kind::Text => "text",
            Kind::Time => "timestamp with time zone",
            Kind::Bool => "boolean",
        }
    }

    fn target_sql(self) -> &'static str {
        match self {
            Kind::Integer => "BIGINT",
            Kind::Text => "TEXT",
            Kind::Time => "TIMESTAMPTZ",
            Kind::Bool => "BOOLEAN",
        }
    }
}

/// A column of the reference schema: name, kind, its type in the seed's
/// DDL, and whether housekeeper's schema makes it `NOT NULL`.
struct RefColumn {
    name: &'static str,
    kind: Kind,
    reference_type: &'static str,
    not_null: bool,
}

const fn col(
    name: &'static str,
    kind: Kind,
    reference_type: &'static str,
    not_null: bool,
) -> RefColumn {
    RefColumn {
        name,
        kind,
        reference_type,
        not_null,
    }
}

const RUN_COLUMNS: [RefColumn; 9] = [
    col("id", Kind::Integer, "SERIAL", true),
    col("task_name", Kind::Text, "VARCHAR(255) NOT NULL", true),
    col("started_at", Kind::Time, "TIMESTAMP NOT NULL", true),
    col("completed_at", Kind::Time, "TIMESTAMP", false),
    col("status", Kind::Text, "VARCHAR(50) NOT NULL", true),
    col("duration_ms", Kind::Integer, "INTEGER", false),
    col("output", Kind::Text, "TEXT", false),
    col("error", Kind::Text, "TEXT", false),
    col(
        "triggered_by",
        Kind::Text,
        "VARCHAR(50) DEFAULT 'scheduler'",
        true,
    ),
];

const CONFIG_COLUMNS: [RefColumn; 4] = [
    col("task_name", Kind::Text, "VARCHAR(255)", true),
    col("enabled", Kind::Bool, "BOOLEAN DEFAULT true", true),
    col("schedule", Kind::Text, "VARCHAR(255)", false),
    col(
        "last_modified_at",
        Kind::Time,
        "TIMESTAMP DEFAULT NOW()",
        true,
    ),
];

/// The columns housekeeper adds to `housekeeper_runs`, in the order of its
/// migration.
const ADDED_RUN_COLUMNS: [(&str, &str); 7] = [
    ("scheduled_for", "TIMESTAMPTZ"),
    ("component_hash", "TEXT"),
    ("dry_run", "BOOLEAN NOT NULL DEFAULT FALSE"),
    ("metrics", "JSONB"),
    ("fuel_used", "BIGINT"),
    // Old rows get `REFERENCE_REPLICA`; the default is dropped after.
    ("replica", "TEXT NOT NULL DEFAULT 'reference'"),
    ("heartbeat_at", "TIMESTAMPTZ"),
];

/// A column as found in the catalog.
struct Found {
    name: String,
    pg_type: String,
    not_null: bool,
    default: Option<String>,
    identity: bool,
}

async fn columns(conn: &mut PgConnection, table: &str) -> Result<Vec<Found>, AdoptError> {
    let rows = query(
        "SELECT a.attname::text AS name, format_type(a.atttypid, NULL) AS pg_type, a.attnotnull AS not_null, \
                pg_get_expr(d.adbin, d.adrelid) AS default_expr, a.attidentity <> '' AS identity \
         FROM pg_attribute a \
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(db(format!("reading the columns of {table}")))?;
    rows.iter()
        .map(|r| {
            Ok(Found {
                name: r.try_get("name")?,
                pg_type: r.try_get("pg_type")?,
                not_null: r.try_get("not_null")?,
                default: r.try_get("default_expr")?,
                identity: r.try_get("identity")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db(format!("reading the columns of {table}")))
}

/// Runs one inspection query returning a single value.
async fn scalar<T>(conn: &mut PgConnection, sql: &str, step: &str) -> Result<T, AdoptError>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    query_scalar(sql)
        .fetch_one(&mut *conn)
        .await
        .map_err(db(step))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Looks at the database and, if the reference tables are there and our
/// migrations are not, plans their adoption. With `lock`, first locks the
/// two tables so that nothing changes between looking and adopting.
async fn inspect(
    conn: &mut PgConnection,
    options: &AdoptOptions,
    lock: bool,
) -> Result<Finding, AdoptError> {
    let has_migrations: bool = scalar(
        conn,
        "SELECT to_regclass('_sqlx_migrations') IS NOT NULL",
        "looking for _sqlx_migrations",
    )
    .await?;
    if has_migrations {
        let recorded: bool =
            query_scalar("SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1)")
                .bind(ADOPTED_VERSION)
                .fetch_one(&mut *conn)
                .await
                .map_err(db("reading _sqlx_migrations"))?;
        if recorded {
            return Ok(Finding::Migrated);
        }
    }
    let row = query(
        "SELECT (SELECT relkind::text FROM pg_class WHERE oid = to_regclass('housekeeper_runs')) AS runs, \
                (SELECT relkind::text FROM pg_class WHERE oid = to_regclass('housekeeper_config')) AS config, \
                to_regprocedure('get_housekeeper_stats()') IS NOT NULL AS function, \
                to_regclass('housekeeper_task_stats') IS NOT NULL AS task_stats",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db("looking for the reference tables"))?;
    let runs_kind: Option<String> = row.try_get("runs").map_err(db("reading pg_class"))?;
    let config_kind: Option<String> = row.try_get("config").map_err(db("reading pg_class"))?;
    let has_function: bool = row.try_get("function").map_err(db("reading pg_proc"))?;
    let has_task_stats: bool = row.try_get("task_stats").map_err(db("reading pg_class"))?;
    if runs_kind.is_none() && config_kind.is_none() && !has_function {
        return Ok(Finding::Fresh);
    }

    let mut refusals = Refusals::default();
    let present: Vec<&str> = [
        (RUNS, runs_kind.is_some()),
        (CONFIG, config_kind.is_some()),
        (FUNCTION, has_function),
    ]
    .into_iter()
    .filter(|(_, here)| *here)
    .map(|(name, _)| name)
    .collect();
    let present = match present.len() {
        1 => format!("{} exists", present[0]),
        _ => format!("{} exist", present.join(" and ")),
    };
    for (table, kind) in [(RUNS, &runs_kind), (CONFIG, &config_kind)] {
        match kind.as_deref() {
            None => refusals.add(
                table,
                format!("does not exist, but {present}"),
                "restore it from a backup of the reference service's database, or drop what is \
                 left of the reference schema if nothing in it is needed"
                    .into(),
            ),
            Some("r") => {}
            Some(other) => refusals.add(
                table,
                format!(
                    "is a {}, not a table",
                    match other {
                        "v" => "view",
                        "m" => "materialized view",
                        "p" => "partitioned table",
                        "f" => "foreign table",
                        _ => "relation of another kind",
                    }
                ),
                format!("housekeeper needs the plain table the reference service created; rename {table} and create that table"),
            ),
        }
    }
    if has_migrations {
        // Another application's migrations: sqlx would refuse to run ours
        // after the takeover, leaving the tables converted and the service
        // down.
        let ours: Vec<i64> = super::Store::postgres_migrator()
            .iter()
            .map(|m| m.version)
            .collect();
        let foreign: Vec<String> = query_scalar(
            "SELECT version::text FROM _sqlx_migrations WHERE version <> ALL($1) ORDER BY version LIMIT 6",
        )
        .bind(&ours)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("reading _sqlx_migrations"))?;
        if !foreign.is_empty() {
            refusals.add(
                "_sqlx_migrations",
                format!(
                    "records migrations housekeeper does not have ({}), so another application keeps its migrations here",
                    sample_list(&foreign)
                ),
                "give housekeeper a schema of its own (search_path in DATABASE_URL) or move that application's".into(),
            );
        }
    }
    if has_task_stats {
        refusals.add(
            "housekeeper_task_stats",
            format!("exists, but _sqlx_migrations does not record housekeeper's migration {ADOPTED_VERSION}"),
            "if housekeeper made these tables, restore _sqlx_migrations from a backup; otherwise rename housekeeper_task_stats".into(),
        );
    }
    if runs_kind.as_deref() != Some("r") || config_kind.as_deref() != Some("r") {
        return Err(AdoptError::Refused(refusals.0));
    }

    if lock {
        sqlx::raw_sql(&format!(
            "SET LOCAL lock_timeout = {}",
            options.lock_timeout.as_millis().max(1)
        ))
        .execute(&mut *conn)
        .await
        .map_err(db("setting lock_timeout"))?;
        sqlx::raw_sql("LOCK TABLE housekeeper_runs, housekeeper_config IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *conn)
            .await
            .map_err(db("locking the reference tables"))?;
    }

    let taken: Vec<String> = query_scalar(
        "SELECT c.relname::text FROM pg_class c \
         WHERE c.relname::text = ANY($1) \
           AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'housekeeper_runs'::regclass) \
         ORDER BY 1",
    )
    .bind(&INDEXES[..])
    .fetch_all(&mut *conn)
    .await
    .map_err(db("looking for index names"))?;
    for name in taken {
        refusals.add(
            &name,
            "exists, and housekeeper creates an index of that name on housekeeper_runs".into(),
            format!("drop or rename {name}"),
        );
    }

    // Columns, table by table.
    let run_columns = columns(conn, RUNS).await?;
    let config_columns = columns(conn, CONFIG).await?;
    let mut kept_columns = Vec::new();
    for (table, spec, found) in [
        (RUNS, &RUN_COLUMNS[..], &run_columns),
        (CONFIG, &CONFIG_COLUMNS[..], &config_columns),
    ] {
        for c in spec {
            let object = format!("{table}.{}", c.name);
            match found.iter().find(|f| f.name == c.name) {
                None => refusals.add(
                    &object,
                    "is missing".into(),
                    format!(
                        "the reference schema has it as {}: add it (ALTER TABLE {table} ADD COLUMN {} {}) and start again",
                        c.reference_type,
                        c.name,
                        c.reference_type.replace(" NOT NULL", "")
                    ),
                ),
                Some(f) if !c.kind.accepts(&f.pg_type) => refusals.add(
                    &object,
                    format!("is {}, expected {}", f.pg_type, c.kind.expected()),
                    format!(
                        "housekeeper does not convert it: change the column back (ALTER TABLE {table} ALTER COLUMN {} TYPE … USING …) and start again",
                        c.name
                    ),
                ),
                Some(_) => {}
            }
        }
        let ours: &[(&str, &str)] = if table == RUNS {
            &ADDED_RUN_COLUMNS
        } else {
            &[]
        };
        for f in found {
            if spec.iter().any(|c| c.name == f.name) {
                continue;
            }
            let object = format!("{table}.{}", f.name);
            if ours.iter().any(|(name, _)| *name == f.name) {
                refusals.add(
                    &object,
                    "exists, but the reference schema has no such column and housekeeper adds it"
                        .into(),
                    format!("rename or drop {object}"),
                );
            } else if f.not_null && f.default.is_none() && !f.identity {
                refusals.add(
                    &object,
                    "is NOT NULL without a default, so housekeeper's inserts would fail".into(),
                    format!("give it a default (ALTER TABLE {table} ALTER COLUMN {} SET DEFAULT …) or drop NOT NULL", f.name),
                );
            } else {
                kept_columns.push(object);
            }
        }
    }

    // The id: a SERIAL column whose sequence continues.
    let id = run_columns.iter().find(|f| f.name == "id");
    // (Asked only when there is an `id`: an error would end the transaction.)
    let sequence: Option<String> = match id {
        Some(_) => {
            scalar(
                conn,
                "SELECT pg_get_serial_sequence('housekeeper_runs', 'id')",
                "looking for the id sequence",
            )
            .await?
        }
        None => None,
    };
    if let Some(id) = id.filter(|f| Kind::Integer.accepts(&f.pg_type)) {
        if id.identity {
            refusals.add(
                "housekeeper_runs.id",
                "is an identity column, not SERIAL as in the reference schema".into(),
                "housekeeper takes over SERIAL ids only: turn it into a SERIAL column (a sequence default) and start again".into(),
            );
        } else if sequence.is_none()
            || !id
                .default
                .as_deref()
                .is_some_and(|d| d.starts_with("nextval("))
        {
            refusals.add(
                "housekeeper_runs.id",
                "takes no default from a sequence of its own, unlike the reference schema's SERIAL".into(),
                "give it one (CREATE SEQUENCE … OWNED BY housekeeper_runs.id; ALTER TABLE housekeeper_runs ALTER COLUMN id SET DEFAULT nextval(…)) and start again".into(),
            );
        }
    }

    // Keys and constraints: exactly the reference primary keys.
    for (table, key) in [(RUNS, "id"), (CONFIG, "task_name")] {
        let primary: Vec<String> = query_scalar(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY a.attnum",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await
        .map_err(db(format!("reading the primary key of {table}")))?;
        if primary != [key] {
            let found = if primary.is_empty() {
                "has no primary key".to_owned()
            } else {
                format!("has its primary key on ({})", primary.join(", "))
            };
            refusals.add(
                table,
                format!("{found}, expected one on ({key})"),
                format!("make ({key}) its primary key (ALTER TABLE {table} ADD PRIMARY KEY ({key})) and start again"),
            );
        }
        let others = query(
            "SELECT conname::text AS name, pg_get_constraintdef(oid) AS def FROM pg_constraint \
             WHERE conrelid = $1::text::regclass AND contype NOT IN ('p', 'n') ORDER BY conname",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await
        .map_err(db(format!("reading the constraints of {table}")))?;
        for row in others {
            let name: String = row.try_get("name").map_err(db("reading pg_constraint"))?;
            let def: String = row.try_get("def").map_err(db("reading pg_constraint"))?;
            refusals.add(
                table,
                format!("has constraint {name} ({def}), which the reference schema does not, and it may reject what housekeeper writes"),
                format!("drop it (ALTER TABLE {table} DROP CONSTRAINT {name}) and start again"),
            );
        }
    }

    // Views, rules, triggers, policies and functions that use a column
    // whose type changes would stop the change.
    for (table, spec, found) in [
        (RUNS, &RUN_COLUMNS[..], &run_columns),
        (CONFIG, &CONFIG_COLUMNS[..], &config_columns),
    ] {
        let changing: Vec<&str> = spec
            .iter()
            .filter(|c| {
                found
                    .iter()
                    .any(|f| f.name == c.name && f.pg_type != c.kind.target())
            })
            .map(|c| c.name)
            .collect();
        let users = query(
            "SELECT DISTINCT a.attname::text AS column_name, \
                    CASE WHEN d.classid = 'pg_rewrite'::regclass THEN \
                        (SELECT CASE c.relkind WHEN 'v' THEN 'view ' WHEN 'm' THEN 'materialized view ' ELSE 'rule on ' END \
                                || c.oid::regclass::text \
                         FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class WHERE r.oid = d.objid) \
                    ELSE pg_describe_object(d.classid, d.objid, d.objsubid) END AS user_name \
             FROM pg_depend d \
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
             WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = $1::text::regclass AND d.refobjsubid > 0 \
               AND d.classid IN ('pg_rewrite'::regclass, 'pg_trigger'::regclass, 'pg_policy'::regclass, 'pg_proc'::regclass) \
               AND a.attname::text = ANY($2) \
             ORDER BY 1, 2",
        )
        .bind(table)
        .bind(&changing)
        .fetch_all(&mut *conn)
        .await
        .map_err(db(format!("looking for objects that use {table}")))?;
        for row in users {
            let column: String = row
                .try_get("column_name")
                .map_err(db("reading pg_depend"))?;
            let user: String = row.try_get("user_name").map_err(db("reading pg_depend"))?;
            refusals.add(
                &format!("{table}.{column}"),
                format!("{user} uses it, and its type changes"),
                format!("drop the {user} first and create it again after the takeover"),
            );
        }
    }
    if has_function {
        let users: Vec<String> = query_scalar(
            "SELECT DISTINCT CASE WHEN d.classid = 'pg_rewrite'::regclass THEN \
                        (SELECT CASE c.relkind WHEN 'v' THEN 'view ' WHEN 'm' THEN 'materialized view ' ELSE 'rule on ' END \
                                || c.oid::regclass::text \
                         FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class WHERE r.oid = d.objid) \
                    ELSE pg_describe_object(d.classid, d.objid, d.objsubid) END \
             FROM pg_depend d \
             WHERE d.refclassid = 'pg_proc'::regclass AND d.refobjid = 'get_housekeeper_stats()'::regprocedure \
               AND d.deptype = 'n' ORDER BY 1",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(db("looking for objects that use get_housekeeper_stats()"))?;
        for user in users {
            refusals.add(
                FUNCTION,
                format!("{user} uses it, and it is replaced"),
                format!("drop the {user} first and create it again after the takeover"),
            );
        }
    }

    // The zone old TIMESTAMP values are read in must be one PostgreSQL knows.
    let zone = options.timezone.name();
    let converts_time = [
        (&run_columns, &RUN_COLUMNS[..]),
        (&config_columns, &CONFIG_COLUMNS[..]),
    ]
    .iter()
    .any(|(found, spec)| {
        found.iter().any(|f| {
            f.pg_type == "timestamp without time zone" && spec.iter().any(|c| c.name == f.name)
        })
    });
    if converts_time {
        let known: bool =
            query_scalar("SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1)")
                .bind(zone)
                .fetch_one(&mut *conn)
                .await
                .map_err(db("looking up the time zone"))?;
        if !known {
            refusals.add(
                &format!("time zone {zone}"),
                "PostgreSQL does not know it, so old TIMESTAMP values cannot be read in it".into(),
                "set HOUSEKEEPER_ADOPT_TIMEZONE to a zone in pg_timezone_names".into(),
            );
        }
    }

    // Data the new schema cannot hold as it is. Only columns that passed
    // the checks above are looked at.
    let usable = |found: &[Found], spec: &[RefColumn], name: &str| {
        let kind = spec.iter().find(|c| c.name == name).map(|c| c.kind);
        found
            .iter()
            .find(|f| f.name == name)
            .filter(|f| kind.is_some_and(|k| k.accepts(&f.pg_type)))
            .map(|f| (f.not_null, f.pg_type.clone()))
    };
    for (table, spec, found) in [
        (RUNS, &RUN_COLUMNS[..], &run_columns),
        (CONFIG, &CONFIG_COLUMNS[..], &config_columns),
    ] {
        // Rows are named by their key; without a usable one the table is
        // refused already.
        let key = if table == RUNS { "id" } else { "task_name" };
        if usable(found, spec, key).is_none() {
            continue;
        }
        for c in spec {
            let Some((not_null, _)) = usable(found, spec, c.name) else {
                continue;
            };
            let object = format!("{table}.{}", c.name);
            // NULLs that housekeeper's NOT NULL cannot take and that have
            // no obvious replacement.
            let filled = matches!(
                (table, c.name),
                (RUNS, "triggered_by") | (CONFIG, "last_modified_at")
            );
            if c.not_null && !not_null && !filled {
                let sample: Vec<String> = query_scalar(&format!(
                    "SELECT {key}::text FROM {table} WHERE {} IS NULL ORDER BY {key} LIMIT 6",
                    c.name
                ))
                .fetch_all(&mut *conn)
                .await
                .map_err(db(format!("checking {object} for NULLs")))?;
                if !sample.is_empty() {
                    let (problem, fix) = if (table, c.name) == (CONFIG, "enabled") {
                        (
                            format!("is NULL for task {}", sample_list(&sample)),
                            format!(
                                "set it to true or false for each (UPDATE {table} SET enabled = … WHERE task_name = …) and start again"
                            ),
                        )
                    } else {
                        (
                            format!("is NULL in the row with {key} {}", sample_list(&sample)),
                            "fill it in or delete those rows, then start again".into(),
                        )
                    };
                    refusals.add(&object, problem, fix);
                }
            }
            if c.kind == Kind::Time {
                let sample: Vec<String> = query_scalar(&format!(
                    "SELECT {key}::text FROM {table} WHERE NOT isfinite({}) ORDER BY {key} LIMIT 6",
                    c.name
                ))
                .fetch_all(&mut *conn)
                .await
                .map_err(db(format!("checking {object} for infinite values")))?;
                if !sample.is_empty() {
                    refusals.add(
                        &object,
                        format!(
                            "is infinity in the row with {key} {}, which housekeeper cannot read as a time",
                            sample_list(&sample)
                        ),
                        format!("set a real time{} in those rows and start again", if c.not_null { "" } else { " (or NULL)" }),
                    );
                }
            }
        }
    }

    if !refusals.0.is_empty() {
        return Err(AdoptError::Refused(refusals.0));
    }
    let sequence = sequence.expect("checked above: id has a sequence");
    plan(
        conn,
        options,
        &run_columns,
        &config_columns,
        sequence,
        has_function,
        kept_columns,
    )
    .await
    .map(|p| Finding::Reference(Box::new(p)))
}

#[derive(Default)]
struct Refusals(Vec<Refusal>);

impl Refusals {
    fn add(&mut self, object: &str, problem: String, fix: String) {
        self.0.push(Refusal {
            object: object.to_owned(),
            problem,
            fix,
        });
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

/// "5", "5, 6" or "5, 6, 7, 8, 9 and more".
fn sample_list(sample: &[String]) -> String {
    if sample.len() > 5 {
        format!("{} and more", sample[..5].join(", "))
    } else {
        sample.join(", ")
    }
}

/// The statements for a shape that passed every check, and what the
/// tables hold.
async fn plan(
    conn: &mut PgConnection,
    options: &AdoptOptions,
    run_columns: &[Found],
    config_columns: &[Found],
    sequence: String,
    has_function: bool,
    kept_columns: Vec<String>,
) -> Result<Plan, AdoptError> {
    let zone = quote_literal(options.timezone.name());
    let found = |columns: &[Found], name: &str| -> (String, bool) {
        let f = columns
            .iter()
            .find(|f| f.name == name)
            .expect("checked: every reference column is there");
        (f.pg_type.clone(), f.not_null)
    };
    // Types that change, and NOT NULLs to add, in one ALTER TABLE each.
    let alterations = |columns: &[Found], spec: &[RefColumn]| -> Vec<String> {
        spec.iter()
            .filter_map(|c| {
                let (pg_type, _) = found(columns, c.name);
                (pg_type != c.kind.target()).then(|| {
                    if pg_type == "timestamp without time zone" {
                        format!(
                            "ALTER COLUMN {0} TYPE {1} USING {0} AT TIME ZONE {zone}",
                            c.name,
                            c.kind.target_sql()
                        )
                    } else {
                        format!("ALTER COLUMN {} TYPE {}", c.name, c.kind.target_sql())
                    }
                })
            })
            .collect()
    };

    let counts = query(
        "SELECT count(*) AS runs, count(DISTINCT task_name) AS tasks, min(id)::int8 AS first, max(id)::int8 AS last, \
                count(*) FILTER (WHERE status = 'running') AS running, \
                count(*) FILTER (WHERE triggered_by = 'scheduler') AS by_scheduler, \
                count(*) FILTER (WHERE triggered_by IS NULL) AS untriggered \
         FROM housekeeper_runs",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db("counting runs"))?;
    let get = |name: &str| -> Result<i64, AdoptError> {
        counts.try_get(name).map_err(db("counting runs"))
    };
    let (runs, run_tasks, left_running, by_scheduler, untriggered) = (
        get("runs")?,
        get("tasks")?,
        get("running")?,
        get("by_scheduler")?,
        get("untriggered")?,
    );
    let first: Option<i64> = counts.try_get("first").map_err(db("counting runs"))?;
    let last: Option<i64> = counts.try_get("last").map_err(db("counting runs"))?;

    let seq = query(&format!(
        "SELECT s.last_value::int8 AS last_value, s.is_called, format_type(p.seqtypid, NULL) AS seq_type, p.seqincrement \
         FROM {sequence} s, pg_sequence p WHERE p.seqrelid = {}::regclass",
        quote_literal(&sequence)
    ))
    .fetch_one(&mut *conn)
    .await
    .map_err(db(format!("reading sequence {sequence}")))?;
    let last_value: i64 = seq
        .try_get("last_value")
        .map_err(db("reading the sequence"))?;
    let is_called: bool = seq
        .try_get("is_called")
        .map_err(db("reading the sequence"))?;
    let seq_type: String = seq
        .try_get("seq_type")
        .map_err(db("reading the sequence"))?;
    let increment: i64 = seq
        .try_get("seqincrement")
        .map_err(db("reading the sequence"))?;
    let sequence_next = if is_called {
        last_value + increment
    } else {
        last_value
    };
    // Rows inserted with explicit ids can be ahead of the sequence; new
    // runs must come after every old one.
    let next_id = match last {
        Some(last) if last >= sequence_next => last + 1,
        _ => sequence_next,
    };

    let (config_tasks, disabled) = {
        let names: Vec<(String, bool)> = sqlx::query_as(
            "SELECT task_name::text, enabled FROM housekeeper_config ORDER BY task_name",
        )
        .persistent(false)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("reading housekeeper_config"))?;
        let disabled = names
            .iter()
            .filter(|(_, enabled)| !enabled)
            .map(|(name, _)| name.clone())
            .collect::<Vec<_>>();
        (names.len() as i64, disabled)
    };
    let null_modified: bool = scalar(
        conn,
        "SELECT EXISTS (SELECT 1 FROM housekeeper_config WHERE last_modified_at IS NULL)",
        "reading housekeeper_config",
    )
    .await?;

    let newest_start = if found(run_columns, "started_at").0 == "timestamp without time zone" {
        sqlx::query_as::<_, (NaiveDateTime, DateTime<Utc>)>(&format!(
            "SELECT started_at, started_at AT TIME ZONE {zone} FROM housekeeper_runs ORDER BY started_at DESC LIMIT 1"
        ))
        .persistent(false)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("reading the newest run"))?
    } else {
        None
    };

    let mut statements = Vec::new();
    // housekeeper_runs: types, NOT NULLs, the columns housekeeper adds.
    let mut run_changes = alterations(run_columns, &RUN_COLUMNS);
    for c in &RUN_COLUMNS {
        if c.not_null && !found(run_columns, c.name).1 && c.name != "triggered_by" {
            run_changes.push(format!("ALTER COLUMN {} SET NOT NULL", c.name));
        }
    }
    if run_columns
        .iter()
        .any(|f| f.name == "triggered_by" && f.default.is_some())
    {
        run_changes.push("ALTER COLUMN triggered_by DROP DEFAULT".into());
    }
    run_changes.extend(
        ADDED_RUN_COLUMNS
            .iter()
            .map(|(name, ty)| format!("ADD COLUMN {name} {ty}")),
    );
    statements.push(format!(
        "ALTER TABLE housekeeper_runs\n    {}",
        run_changes.join(",\n    ")
    ));
    statements.push("ALTER TABLE housekeeper_runs ALTER COLUMN replica DROP DEFAULT".into());
    if seq_type != "bigint" {
        statements.push(format!("ALTER SEQUENCE {sequence} AS BIGINT"));
    }
    if next_id != sequence_next {
        statements.push(format!("ALTER SEQUENCE {sequence} RESTART WITH {next_id}"));
    }
    if by_scheduler > 0 {
        statements.push(
            "UPDATE housekeeper_runs SET triggered_by = 'schedule' WHERE triggered_by = 'scheduler'"
                .into(),
        );
    }
    if untriggered > 0 {
        statements.push(format!(
            "UPDATE housekeeper_runs SET triggered_by = {} WHERE triggered_by IS NULL",
            quote_literal(UNKNOWN_TRIGGER)
        ));
    }
    if !found(run_columns, "triggered_by").1 {
        statements
            .push("ALTER TABLE housekeeper_runs ALTER COLUMN triggered_by SET NOT NULL".into());
    }
    if left_running > 0 {
        statements.push(format!(
            "UPDATE housekeeper_runs SET status = 'interrupted', error = COALESCE(error, {}) WHERE status = 'running'",
            quote_literal(LEFT_RUNNING)
        ));
    }
    statements.extend(RUN_INDEXES.map(|head| init_statement(head).to_owned()));

    // housekeeper_config: types; a missing modification time becomes now.
    let config = alterations(config_columns, &CONFIG_COLUMNS);
    if !config.is_empty() {
        statements.push(format!(
            "ALTER TABLE housekeeper_config\n    {}",
            config.join(",\n    ")
        ));
    }
    if null_modified {
        statements.push(
            "UPDATE housekeeper_config SET last_modified_at = now() WHERE last_modified_at IS NULL"
                .into(),
        );
    }
    statements.push(
        "ALTER TABLE housekeeper_config\n    \
         ALTER COLUMN enabled SET DEFAULT TRUE,\n    \
         ALTER COLUMN enabled SET NOT NULL,\n    \
         ALTER COLUMN last_modified_at SET DEFAULT now(),\n    \
         ALTER COLUMN last_modified_at SET NOT NULL"
            .into(),
    );

    // The summary, filled from the history the way the reference
    // function computed it, and the function over it.
    statements.push(init_statement("CREATE TABLE housekeeper_task_stats ").into());
    statements.push(TASK_STATS_FILL.into());
    if has_function {
        statements.push("DROP FUNCTION get_housekeeper_stats()".into());
    }
    statements.push(init_statement("CREATE FUNCTION get_housekeeper_stats()").into());

    // Our first migration, recorded as sqlx records it.
    let migration = super::Store::postgres_migrator()
        .iter()
        .find(|m| m.version == ADOPTED_VERSION)
        .expect("the first PostgreSQL migration is the one adoption produces");
    statements.push(SQLX_MIGRATIONS_TABLE.trim().into());
    statements.push(format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ({}, {}, TRUE, '\\x{}'::bytea, -1)",
        migration.version,
        quote_literal(&migration.description),
        hex::encode(&*migration.checksum)
    ));

    Ok(Plan {
        timezone: options.timezone,
        runs,
        run_tasks,
        ids: first.zip(last),
        next_id,
        left_running,
        by_scheduler,
        untriggered,
        config_tasks,
        disabled,
        newest_start,
        replaces_function: has_function,
        kept_columns,
        statements,
    })
}

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

/// Our first migration. The objects the reference schema lacks are made
/// by its own statements, so an adopted database and a migrated one cannot
/// drift apart (migrations are never edited once shipped).
const INIT_MIGRATION: &str = include_str!("../../../migrations/postgres/20261123000001_init.sql");

/// The indexes on `housekeeper_runs`, by the start of their statements.
const RUN_INDEXES: [&str; 3] = [
    "CREATE UNIQUE INDEX housekeeper_runs_occurrence",
    "CREATE INDEX housekeeper_runs_task_started",
    "CREATE INDEX housekeeper_runs_running",
];

/// The statement of [`INIT_MIGRATION`] that starts with `head`, without
/// its `;` (a function's ends with its closing `$$`).
fn init_statement(head: &str) -> &'static str {
    let start = INIT_MIGRATION
        .find(head)
        .unwrap_or_else(|| panic!("the init migration has no statement {head:?}"));
    let rest = &INIT_MIGRATION[start..];
    let end = if rest.starts_with("CREATE FUNCTION") {
        rest.find("$$;").map(|i| i + 2)
    } else {
        rest.find(';')
    };
    &rest[..end.unwrap_or_else(|| panic!("the init migration's {head:?} never ends"))]
}

// The reference function's numbers: every run counts, `error_count` is
// `status = 'error'`, the last run is the latest start. Its average skips
// runs without a duration; the summary keeps a total, so such runs count
// at the task's average (when all durations are known, the plain sum).
const TASK_STATS_FILL: &str = "INSERT INTO housekeeper_task_stats
    (task_name, total_runs, success_count, error_count, skipped_count, total_duration_ms,
     last_run_at, last_status, last_success_at)
SELECT r.task_name,
       count(*),
       count(*) FILTER (WHERE r.status = 'success'),
       count(*) FILTER (WHERE r.status = 'error'),
       0,
       CASE WHEN count(r.duration_ms) = count(*) THEN sum(r.duration_ms)
            ELSE round(COALESCE(avg(r.duration_ms), 0) * count(*)) END::bigint,
       max(r.started_at),
       (SELECT l.status FROM housekeeper_runs l WHERE l.task_name = r.task_name
        ORDER BY l.started_at DESC, l.id DESC LIMIT 1),
       max(COALESCE(r.completed_at, r.started_at)) FILTER (WHERE r.status = 'success')
FROM housekeeper_runs r
GROUP BY r.task_name";

// sqlx 0.8's own definition (sqlx-postgres, `ensure_migrations_table`).
const SQLX_MIGRATIONS_TABLE: &str = "
CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL,
    execution_time BIGINT NOT NULL
)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_object_and_what_to_do() {
        let e = AdoptError::Refused(vec![
            Refusal {
                object: "housekeeper_runs.started_at".into(),
                problem: "is text, expected timestamp".into(),
                fix: "change it back".into(),
            },
            Refusal {
                object: "housekeeper_config".into(),
                problem: "has no primary key".into(),
                fix: "add one".into(),
            },
        ]);
        assert_eq!(
            e.to_string(),
            "cannot take over the reference service's tables, nothing was changed:\n  \
             - housekeeper_runs.started_at: is text, expected timestamp; change it back\n  \
             - housekeeper_config: has no primary key; add one"
        );
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal("Etc/UTC"), "'Etc/UTC'");
        assert_eq!(quote_literal("o'clock"), "'o''clock'");
    }

    #[test]
    fn kinds_accept_only_what_converts_without_loss() {
        assert!(Kind::Integer.accepts("integer"));
        assert!(!Kind::Integer.accepts("numeric"));
        assert!(Kind::Text.accepts("character varying"));
        assert!(!Kind::Text.accepts("character"));
        assert!(Kind::Time.accepts("timestamp without time zone"));
        assert!(!Kind::Time.accepts("date"));
        assert!(!Kind::Bool.accepts("integer"));
    }

    #[test]
    fn sample_lists_stop_at_five() {
        let s: Vec<String> = (1..=6).map(|i| i.to_string()).collect();
        assert_eq!(sample_list(&s[..2]), "1, 2");
        assert_eq!(sample_list(&s), "1, 2, 3, 4, 5 and more");
    }

    #[test]
    fn the_init_migration_provides_every_statement_adoption_takes_from_it() {
        for head in RUN_INDEXES {
            let statement = init_statement(head);
            assert!(
                statement.starts_with(head) && !statement.contains(';'),
                "{statement}"
            );
        }
        let table = init_statement("CREATE TABLE housekeeper_task_stats ");
        assert!(
            table.ends_with(')') && table.contains("last_success_at"),
            "{table}"
        );
        let function = init_statement("CREATE FUNCTION get_housekeeper_stats()");
        assert!(
            function.ends_with("$$") && function.contains("ORDER BY s.task_name"),
            "{function}"
        );
    }
}
