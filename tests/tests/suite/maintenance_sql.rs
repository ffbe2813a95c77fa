//! What real maintenance needs, end to end on a real PostgreSQL: each
//! statement runs from a task, through the host, as the task's role, on the
//! login role README recommends (`NOINHERIT`, `CREATEROLE`, a member of the
//! role that owns the application's tables). Each works with the grant it
//! needs and is refused without it, naming what was missing; where the
//! parse layer refuses, a runtime with that layer off shows PostgreSQL
//! refusing on its own.

use SqlVerb::*;
use housekeeper::capabilities::sql::Connection;
use housekeeper::capabilities::sql::roles::role_name;
use housekeeper::manifest::SqlVerb;
use housekeeper::model::{ConfigValue, RunResult, RunStatus};
use housekeeper_tests::{component, fixture_path, runtime, sql_request, unparsed};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

type Grants<'a> = &'a [(&'a str, &'a [SqlVerb])];

/// One test's database: the application's tables owned by role `owner`,
/// and tasks logging in as `login`.
struct Db {
    /// The administrator (a superuser).
    admin: PgPool,
    login: PgPool,
    login_name: String,
    owner: String,
    /// Distinguishes this test's roles from every other test's (roles are
    /// cluster-wide).
    suffix: String,
}

impl Db {
    /// Sets the roles up and runs `schema` as the owner.
    async fn new(admin: PgPool, schema: &str) -> Db {
        let database: String = sqlx::query_scalar("SELECT current_database()::text")
            .fetch_one(&admin)
            .await
            .unwrap();
        let suffix = database[database.len().saturating_sub(16)..].to_owned();
        let owner = format!("o-{suffix}");
        let login_name = format!("l-{suffix}");
        // Left over from an earlier run whose database is gone.
        for role in [&owner, &login_name] {
            exec(&admin, &format!("DROP ROLE IF EXISTS \"{role}\"")).await;
        }
        exec(
            &admin,
            &format!(
                "CREATE ROLE \"{owner}\" NOLOGIN;
                 GRANT CREATE ON SCHEMA public TO \"{owner}\";
                 CREATE ROLE \"{login_name}\" LOGIN NOINHERIT CREATEROLE;
                 GRANT \"{owner}\" TO \"{login_name}\";"
            ),
        )
        .await;
        if !schema.is_empty() {
            exec(
                &admin,
                &format!("SET ROLE \"{owner}\"; {schema}; RESET ROLE"),
            )
            .await;
        }
        let login = PgPoolOptions::new()
            .max_connections(2)
            .connect(&format!(
                "postgres://{login_name}@127.0.0.1:5432/{database}"
            ))
            .await
            .unwrap();
        Db {
            admin,
            login,
            login_name,
            owner,
            suffix,
        }
    }

    /// Task `name` of this test (a role of its own).
    fn task(&self, name: &str) -> String {
        format!("{name}-{}", self.suffix)
    }

    /// What an administrator applies for a task with `ddl` in `public`
    /// (as `housekeeper db roles` prints it): the login role may not grant
    /// `CREATE` on a schema it does not own.
    async fn ddl_role(&self, task: &str) {
        let role = role_name(&self.task(task));
        exec(
            &self.admin,
            &format!(
                "DROP ROLE IF EXISTS \"{role}\";
                 CREATE ROLE \"{role}\" NOLOGIN NOINHERIT;
                 GRANT \"{role}\" TO \"{}\";
                 GRANT USAGE, CREATE ON SCHEMA public TO \"{role}\";",
                self.login_name
            ),
        )
        .await;
    }

    /// The hostile fixture as `task`, in `mode` with `sql` and `config`.
    fn request(
        &self,
        task: &str,
        grants: Grants<'_>,
        mode: &str,
        sql: &str,
        config: &[(&str, &str)],
    ) -> housekeeper::runtime::RunRequest {
        let mut request = sql_request(
            &self.task(task),
            Connection::postgres(self.login.clone()),
            mode,
            sql,
            grants,
        );
        for (key, value) in config {
            request
                .config
                .insert((*key).into(), ConfigValue::Text((*value).into()));
        }
        request
    }

    /// A free-text statement (`sql-execute`, `sql-query`, `sql-values`).
    async fn sql(&self, task: &str, grants: Grants<'_>, mode: &str, sql: &str) -> RunResult {
        let request = self.request(task, grants, mode, sql, &[]);
        runtime()
            .run(&component(&fixture_path("hostile")), request)
            .await
    }

    /// The same, with the parse layer off.
    async fn sql_unparsed(
        &self,
        task: &str,
        grants: Grants<'_>,
        mode: &str,
        sql: &str,
    ) -> RunResult {
        let (runtime, hostile) = unparsed();
        runtime
            .run(hostile, self.request(task, grants, mode, sql, &[]))
            .await
    }

    /// A structured partition call (`op`: create, attach, drop, detach,
    /// detach-concurrently) on `parent`, with `config` for the rest.
    async fn call(
        &self,
        task: &str,
        grants: Grants<'_>,
        op: &str,
        parent: &str,
        config: &[(&str, &str)],
    ) -> RunResult {
        self.call_dry(false, task, grants, op, parent, config).await
    }

    /// [`Db::call`], as a dry run when `dry_run`.
    async fn call_dry(
        &self,
        dry_run: bool,
        task: &str,
        grants: Grants<'_>,
        op: &str,
        parent: &str,
        config: &[(&str, &str)],
    ) -> RunResult {
        let mut all = vec![("op", op), ("parent", parent)];
        all.extend_from_slice(config);
        let mut request = self.request(task, grants, "sql-partition", "", &all);
        request.dry_run = dry_run;
        runtime()
            .run(&component(&fixture_path("hostile")), request)
            .await
    }

    async fn scalar<T>(&self, sql: &str) -> T
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        sqlx::query_scalar(sql)
            .fetch_one(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The owner of `table`, or `None` when there is no such table.
    async fn owner_of(&self, table: &str) -> Option<String> {
        sqlx::query_scalar(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = to_regclass($1)",
        )
        .bind(table)
        .fetch_optional(&self.admin)
        .await
        .unwrap()
    }

    /// `table`'s partition bound, when it is a partition.
    async fn bound(&self, table: &str) -> Option<String> {
        sqlx::query_scalar(
            "SELECT pg_get_expr(relpartbound, oid) FROM pg_class
             WHERE oid = to_regclass($1) AND relispartition",
        )
        .bind(table)
        .fetch_optional(&self.admin)
        .await
        .unwrap()
    }

    /// Drops this test's roles and what they own.
    async fn finish(self, tasks: &[&str]) {
        self.login.close().await;
        let mut roles: Vec<String> = tasks.iter().map(|t| role_name(&self.task(t))).collect();
        roles.extend([self.login_name.clone(), self.owner.clone()]);
        for role in &roles {
            exec(
                &self.admin,
                &format!(
                    "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                         EXECUTE 'DROP OWNED BY \"{role}\"'; END IF; END $$"
                ),
            )
            .await;
        }
        for role in &roles {
            exec(&self.admin, &format!("DROP ROLE IF EXISTS \"{role}\"")).await;
        }
    }
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn ok(r: &RunResult) {
    assert_eq!(r.status, RunStatus::Success, "{r:#?}");
}

/// The run ended with `needle` in its error.
fn stopped(r: &RunResult, needle: &str) {
    assert_eq!(r.status, RunStatus::Error, "{r:#?}");
    let error = r.error.as_deref().unwrap_or_default();
    assert!(error.contains(needle), "expected {needle:?} in {error:?}");
}

fn denied(r: &RunResult, table: &str, verb: &str) {
    stopped(
        r,
        &format!("access denied: `{table}` is not granted `{verb}`"),
    );
}

const METRICS: &str = "CREATE TABLE metrics (id bigserial NOT NULL, device int NOT NULL, at timestamptz NOT NULL) PARTITION BY RANGE (at)";

/// `CREATE TABLE … PARTITION BY` and a partition that is itself
/// partitioned need `ddl` on every table they name; the task's role then
/// owns what it made.
#[sqlx::test]
async fn partitioned_tables_and_sub_partitions_need_ddl(pool: PgPool) {
    let db = Db::new(pool, "").await;
    db.ddl_role("maker").await;
    let maker: Grants = &[("metrics", &[Ddl]), ("metrics_2026", &[Ddl])];
    ok(&db.sql("maker", maker, "sql-execute", METRICS).await);
    let role = role_name(&db.task("maker"));
    assert_eq!(db.owner_of("metrics").await.as_deref(), Some(role.as_str()));
    let sub = "CREATE TABLE metrics_2026 PARTITION OF metrics FOR VALUES FROM ('2026-01-01') TO ('2027-01-01') PARTITION BY LIST (device)";
    ok(&db.sql("maker", maker, "sql-execute", sub).await);
    assert_eq!(
        db.scalar::<String>("SELECT pg_get_partkeydef('metrics_2026'::regclass)")
            .await,
        "LIST (device)"
    );
    assert_eq!(
        db.bound("metrics_2026").await.as_deref(),
        Some("FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2027-01-01 00:00:00+00')")
    );

    // Without `ddl` on the new table, or on its parent.
    let other = "CREATE TABLE gauges (at timestamptz NOT NULL) PARTITION BY RANGE (at)";
    let r = db
        .sql("reader", &[("gauges", &[Select])], "sql-execute", other)
        .await;
    denied(&r, "gauges", "ddl");
    let sub_2027 = "CREATE TABLE metrics_2027 PARTITION OF metrics FOR VALUES FROM ('2027-01-01') TO ('2028-01-01') PARTITION BY LIST (device)";
    let r = db
        .sql("maker", &[("metrics", &[Ddl])], "sql-execute", sub_2027)
        .await;
    denied(&r, "metrics_2027", "ddl");
    db.ddl_role("child").await;
    let r = db
        .sql(
            "child",
            &[("metrics_2027", &[Ddl])],
            "sql-execute",
            sub_2027,
        )
        .await;
    denied(&r, "metrics", "ddl");
    // PostgreSQL refuses the same on its own.
    let r = db
        .sql_unparsed("reader", &[("gauges", &[Select])], "sql-execute", other)
        .await;
    stopped(&r, "permission denied for schema public");
    let r = db
        .sql_unparsed(
            "child",
            &[("metrics_2027", &[Ddl])],
            "sql-execute",
            sub_2027,
        )
        .await;
    stopped(&r, "must be owner of table metrics");
    assert_eq!(db.owner_of("gauges").await, None);
    assert_eq!(db.owner_of("metrics_2027").await, None);
    db.finish(&["maker", "reader", "child"]).await;
}

const EVENTS: &str = "
    CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(),
                         kind text NOT NULL CHECK (kind <> ''));
    CREATE INDEX events_at ON events (at);
    INSERT INTO events (id, kind) SELECT i, 'k' || i FROM generate_series(1, 5) i;
    CREATE TABLE audit (event_id bigint NOT NULL, noted timestamptz NOT NULL DEFAULT now())";

/// `CREATE TABLE … (LIKE … INCLUDING ALL)` needs `ddl` on the new table and
/// `select` on the one it copies.
#[sqlx::test]
async fn create_table_like_needs_ddl_and_select_on_the_source(pool: PgPool) {
    let db = Db::new(pool, EVENTS).await;
    let like = "CREATE TABLE events_next (LIKE events INCLUDING ALL)";
    db.ddl_role("copier").await;
    let r = db
        .sql(
            "copier",
            &[("events_next", &[Ddl]), ("events", &[Select])],
            "sql-execute",
            like,
        )
        .await;
    ok(&r);
    let (indexes, checks): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_index WHERE indrelid = 'events_next'::regclass),
                (SELECT count(*) FROM pg_constraint WHERE conrelid = 'events_next'::regclass AND contype = 'c')",
    )
    .fetch_one(&db.admin)
    .await
    .unwrap();
    assert_eq!((indexes, checks), (2, 1));
    assert_eq!(
        db.owner_of("events_next").await,
        Some(role_name(&db.task("copier")))
    );

    let like_other = "CREATE TABLE events_later (LIKE events INCLUDING ALL)";
    db.ddl_role("blind").await;
    let blind: Grants = &[("events_later", &[Ddl])];
    let r = db.sql("blind", blind, "sql-execute", like_other).await;
    denied(&r, "events", "select");
    let r = db
        .sql_unparsed("blind", blind, "sql-execute", like_other)
        .await;
    stopped(&r, "permission denied for table events");
    let r = db
        .sql(
            "reader",
            &[("events", &[Select])],
            "sql-execute",
            like_other,
        )
        .await;
    denied(&r, "events_later", "ddl");
    assert_eq!(db.owner_of("events_later").await, None);
    db.finish(&["copier", "blind", "reader"]).await;
}

/// `INSERT INTO t WITH x AS (…) SELECT …` needs `insert` on `t` and
/// `select` on what the `WITH` reads.
#[sqlx::test]
async fn insert_from_a_with_query_needs_insert_and_select(pool: PgPool) {
    let db = Db::new(pool, EVENTS).await;
    let insert = "INSERT INTO audit (event_id) WITH old AS (SELECT id FROM events WHERE id <= 3) SELECT id FROM old";
    let r = db
        .sql(
            "auditor",
            &[("audit", &[Insert]), ("events", &[Select])],
            "sql-execute",
            insert,
        )
        .await;
    ok(&r);
    assert_eq!(r.summary.as_deref(), Some("execute changed 3 rows"));

    for (grants, table, verb) in [
        (
            &[("audit", &[Insert] as &[SqlVerb])] as Grants,
            "events",
            "select",
        ),
        (
            &[("audit", &[Select]), ("events", &[Select])],
            "audit",
            "insert",
        ),
    ] {
        let task = format!("without-{verb}");
        let r = db.sql(&task, grants, "sql-execute", insert).await;
        denied(&r, table, verb);
        let r = db.sql_unparsed(&task, grants, "sql-execute", insert).await;
        stopped(&r, &format!("permission denied for table {table}"));
    }
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM audit").await, 3);
    db.finish(&["auditor", "without-select", "without-insert"])
        .await;
}

/// `REINDEX TABLE` and `REINDEX INDEX` need `ddl` (PostgreSQL 15 lets only
/// the owner reindex); a partitioned table is reindexed a partition at a
/// time, since PostgreSQL cannot reindex one inside a transaction.
#[sqlx::test]
async fn reindex_needs_ddl(pool: PgPool) {
    let db = Db::new(pool, EVENTS).await;
    db.ddl_role("indexer").await;
    let grants: Grants = &[
        ("readings", &[Ddl]),
        ("readings_at", &[Ddl]),
        ("metrics", &[Ddl]),
    ];
    let r = db
        .sql(
            "indexer",
            grants,
            "sql-execute",
            "CREATE TABLE readings (id bigint PRIMARY KEY, at timestamptz NOT NULL)",
        )
        .await;
    ok(&r);
    for sql in [
        "CREATE INDEX readings_at ON readings (at)",
        "REINDEX TABLE readings",
        "REINDEX INDEX readings_at",
        METRICS,
    ] {
        ok(&db.sql("indexer", grants, "sql-execute", sql).await);
    }
    let r = db
        .sql("indexer", grants, "sql-execute", "REINDEX TABLE metrics")
        .await;
    stopped(&r, "cannot run inside a transaction block");

    // Without `ddl`: not by name, and not on a table of another owner.
    let r = db
        .sql(
            "reader",
            &[("readings", &[Select])],
            "sql-execute",
            "REINDEX TABLE readings",
        )
        .await;
    denied(&r, "readings", "ddl");
    let r = db
        .sql(
            "reader",
            &[("events_at", &[Select])],
            "sql-execute",
            "REINDEX INDEX events_at",
        )
        .await;
    denied(&r, "events_at", "ddl");
    let r = db
        .sql_unparsed(
            "reader",
            &[("events", &[Select])],
            "sql-execute",
            "REINDEX TABLE events",
        )
        .await;
    stopped(&r, "must be owner of table events");
    db.finish(&["indexer", "reader"]).await;
}

const PARTITIONED: &str = "
    CREATE TABLE events (id bigint NOT NULL, at timestamptz NOT NULL) PARTITION BY RANGE (at);
    CREATE TABLE events_2030 PARTITION OF events FOR VALUES FROM ('2030-01-01') TO ('2031-01-01');
    CREATE TABLE events_2031 PARTITION OF events FOR VALUES FROM ('2031-01-01') TO ('2032-01-01');
    CREATE INDEX events_at ON events (at)";

/// An index on a partition needs `ddl` on it, so the task's role must own
/// it. A partition made by `create-partition` belongs to the parent's
/// owner: with `ddl` on the parent that is the task's role, which may then
/// index it (and keeps owning it without the grant naming it). A partition
/// of a table the application's role owns cannot be indexed alone: the run
/// is refused, saying the role does not own it.
#[sqlx::test]
async fn an_index_on_a_partition_the_task_created(pool: PgPool) {
    let db = Db::new(pool, PARTITIONED).await;
    db.ddl_role("indexer").await;
    let owns_parent: Grants = &[
        ("metrics", &[Ddl, CreatePartition]),
        ("metrics_2026", &[Ddl]),
    ];
    ok(&db.sql("indexer", owns_parent, "sql-execute", METRICS).await);
    let range = [
        ("partition", "metrics_2026"),
        ("bounds", "range"),
        ("from", "2026-01-01 00:00+00"),
        ("to", "2027-01-01 00:00+00"),
    ];
    ok(&db
        .call("indexer", owns_parent, "create", "metrics", &range)
        .await);
    let role = role_name(&db.task("indexer"));
    assert_eq!(
        db.owner_of("metrics_2026").await.as_deref(),
        Some(role.as_str())
    );
    let index = "CREATE INDEX metrics_2026_device ON metrics_2026 (device)";
    ok(&db.sql("indexer", owns_parent, "sql-execute", index).await);
    assert_eq!(
        db.owner_of("metrics_2026_device").await.as_deref(),
        Some(role.as_str())
    );
    // A grant that no longer names the partition: the role still owns a
    // partition of its own table, which is no difference from the grant,
    // but the index needs `ddl` on the partition by name.
    let parent_only: Grants = &[("metrics", &[Ddl, CreatePartition])];
    let again = "CREATE INDEX metrics_2026_id ON metrics_2026 (id)";
    let r = db.sql("indexer", parent_only, "sql-execute", again).await;
    denied(&r, "metrics_2026", "ddl");
    let r = db
        .sql(
            "indexer",
            parent_only,
            "sql-query",
            "SELECT relname FROM pg_class WHERE relname LIKE 'metrics%'",
        )
        .await;
    ok(&r);

    // The application's table: the partition is its owner's.
    let app: Grants = &[("events", &[CreatePartition]), ("events_2032", &[Ddl])];
    db.ddl_role("app").await;
    let range = [
        ("partition", "events_2032"),
        ("bounds", "range"),
        ("from", "2032-01-01 00:00+00"),
        ("to", "2033-01-01 00:00+00"),
    ];
    ok(&db.call("app", app, "create", "events", &range).await);
    assert_eq!(db.owner_of("events_2032").await, Some(db.owner.clone()));
    let index = "CREATE INDEX events_2032_id ON events_2032 (id)";
    let r = db.sql("app", app, "sql-execute", index).await;
    stopped(
        &r,
        &format!(
            "does not own `events_2032` (owned by `{}`), which its `ddl` grant needs",
            db.owner
        ),
    );
    let r = db
        .sql_unparsed(
            "plain",
            &[("events", &[CreatePartition])],
            "sql-execute",
            index,
        )
        .await;
    stopped(&r, "must be owner of table events_2032");
    assert_eq!(db.owner_of("events_2032_id").await, None);
    db.finish(&["indexer", "app", "plain"]).await;
}

/// `DETACH PARTITION … CONCURRENTLY` cannot run in a transaction: it is the
/// `detach-partition` call with `concurrently`, on the session, as the
/// parent's owner, and needs `drop_partition` on the parent.
#[sqlx::test]
async fn detach_concurrently_is_the_typed_call_with_drop_partition(pool: PgPool) {
    let db = Db::new(pool, PARTITIONED).await;
    let partition = [("partition", "events_2030")];
    let r = db
        .call(
            "creator",
            &[("events", &[CreatePartition]), ("events_2030", &[Select])],
            "detach-concurrently",
            "events",
            &partition,
        )
        .await;
    denied(&r, "events", "drop_partition");
    let text = "ALTER TABLE events DETACH PARTITION events_2030 CONCURRENTLY";
    let r = db
        .sql(
            "dropper",
            &[("events", &[DropPartition])],
            "sql-execute",
            text,
        )
        .await;
    stopped(&r, "`detach-partition` call");
    let r = db
        .sql(
            "owner",
            &[("events", &[Ddl]), ("events_2030", &[Ddl])],
            "sql-execute",
            text,
        )
        .await;
    stopped(&r, "sql::detach_partition(parent, partition, true)");
    assert!(db.bound("events_2030").await.is_some());

    let r = db
        .call(
            "dropper",
            &[("events", &[DropPartition])],
            "detach-concurrently",
            "events",
            &partition,
        )
        .await;
    ok(&r);
    assert!(
        r.output.contains(&format!(
            "sql: ALTER TABLE public.events DETACH PARTITION public.events_2030 CONCURRENTLY as role `{}`",
            db.owner
        )),
        "{}",
        r.output
    );
    assert_eq!(db.bound("events_2030").await, None);
    assert_eq!(db.owner_of("events_2030").await, Some(db.owner.clone()));
    db.finish(&["creator", "dropper", "owner"]).await;
}

/// `attach-partition` makes a table that exists a partition: with
/// `create_partition` on the parent and on the table, in the parent's
/// schema, for a table that is nobody's partition or inheritance child and
/// that the parent's owner owns; the bounds are quoted by the database.
#[sqlx::test]
async fn attach_partition_needs_create_partition_on_both_tables(pool: PgPool) {
    let schema = format!(
        "{PARTITIONED};
         CREATE TABLE events_2040 (id bigint NOT NULL, at timestamptz NOT NULL);
         INSERT INTO events_2040 VALUES (1, '2040-06-01');
         CREATE TABLE plain_parent (id bigint NOT NULL, at timestamptz NOT NULL);
         CREATE TABLE plain_child () INHERITS (plain_parent)"
    );
    let db = Db::new(pool, &schema).await;
    exec(
        &db.admin,
        &format!(
            "CREATE SCHEMA other AUTHORIZATION \"{0}\";
             CREATE TABLE other.events_2041 (id bigint NOT NULL, at timestamptz NOT NULL);
             ALTER TABLE other.events_2041 OWNER TO \"{0}\";
             CREATE TABLE foreign_2042 (id bigint NOT NULL, at timestamptz NOT NULL)",
            db.owner
        ),
    )
    .await;
    let attach = |table: &'static str| {
        [
            ("partition", table),
            ("bounds", "range"),
            ("from", "2040-01-01 00:00+00"),
            ("to", "2041-01-01 00:00+00"),
        ]
    };
    let both: Grants = &[
        ("events", &[CreatePartition]),
        ("events_2040", &[CreatePartition]),
    ];

    // Without the grant on the parent, or on the table.
    let r = db
        .call(
            "half",
            &[("events", &[Select]), ("events_2040", &[CreatePartition])],
            "attach",
            "events",
            &attach("events_2040"),
        )
        .await;
    denied(&r, "events", "create_partition");
    let r = db
        .call(
            "parent-only",
            &[("events", &[CreatePartition])],
            "attach",
            "events",
            &attach("events_2040"),
        )
        .await;
    denied(&r, "public.events_2040", "create_partition");
    // Free text under `create_partition` names the call.
    let r = db
        .sql(
            "attacher",
            both,
            "sql-execute",
            "ALTER TABLE events ATTACH PARTITION events_2040 FOR VALUES FROM ('2040-01-01') TO ('2041-01-01')",
        )
        .await;
    stopped(&r, "`attach-partition` call");
    assert_eq!(db.bound("events_2040").await, None);

    // Tables that may not become a partition, each granted.
    let all: Grants = &[("*", &[CreatePartition])];
    let mut other_schema = attach("events_2041").to_vec();
    other_schema.push(("partition_schema", "other"));
    let r = db.call("all", all, "attach", "events", &other_schema).await;
    stopped(&r, "attached in its parent's schema `public`, not `other`");
    for (table, why) in [
        (
            "plain_child",
            "it inherits from `public.plain_parent`".to_owned(),
        ),
        ("plain_parent", "other tables inherit from it".to_owned()),
        (
            "events_2031",
            "it is already a partition of `public.events`".to_owned(),
        ),
        ("events", "it is the parent itself".to_owned()),
        (
            "foreign_2042",
            format!(
                "it is owned by role `postgres`, and PostgreSQL lets only a role owning both tables attach one to the other; `public.events` is owned by `{0}`: ALTER TABLE public.foreign_2042 OWNER TO \"{0}\"",
                db.owner
            ),
        ),
    ] {
        let r = db
            .call("all", all, "attach", "events", &attach(table))
            .await;
        stopped(
            &r,
            &format!("refused: `public.{table}` cannot be attached to `public.events`: {why}"),
        );
    }
    // A bound is a value, never SQL.
    let mut hostile = attach("events_2040").to_vec();
    hostile[2] = (
        "from",
        "2040-01-01') TO ('2041-01-01'); DROP TABLE events; --",
    );
    let r = db
        .call("attacher", both, "attach", "events", &hostile)
        .await;
    stopped(&r, "invalid input syntax for type timestamp with time zone");
    assert!(db.owner_of("events").await.is_some());
    assert_eq!(db.bound("events_2040").await, None);

    // A dry run attaches and rolls back.
    let r = db
        .call_dry(
            true,
            "attacher",
            both,
            "attach",
            "events",
            &attach("events_2040"),
        )
        .await;
    ok(&r);
    assert!(
        r.output
            .contains("sql (dry-run, rolled back): ALTER TABLE public.events ATTACH PARTITION"),
        "{}",
        r.output
    );
    assert_eq!(db.bound("events_2040").await, None);

    let r = db
        .call("attacher", both, "attach", "events", &attach("events_2040"))
        .await;
    ok(&r);
    assert_eq!(
        db.bound("events_2040").await.as_deref(),
        Some("FOR VALUES FROM ('2040-01-01 00:00:00+00') TO ('2041-01-01 00:00:00+00')")
    );
    assert!(
        r.output.contains(&format!(
            "sql: ALTER TABLE public.events ATTACH PARTITION public.events_2040 FOR VALUES FROM ('2040-01-01 00:00+00') TO ('2041-01-01 00:00+00') as role `{}`",
            db.owner
        )),
        "{}",
        r.output
    );
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM events WHERE at >= '2040-01-01'")
            .await,
        1
    );
    db.finish(&["half", "parent-only", "attacher", "all"]).await;
}

/// The create-then-attach flow of a task that owns the parent: it makes
/// the table under `ddl`, fills and indexes it, and attaches it with the
/// typed call, which runs as the parent's owner, its own role.
#[sqlx::test]
async fn a_task_owning_the_parent_creates_then_attaches(pool: PgPool) {
    let db = Db::new(pool, "").await;
    db.ddl_role("flow").await;
    let grants: Grants = &[
        ("metrics", &[Ddl, Select, CreatePartition]),
        ("metrics_next", &[Ddl, Insert, CreatePartition]),
    ];
    for sql in [
        METRICS,
        "CREATE TABLE metrics_next (LIKE metrics INCLUDING ALL)",
        "INSERT INTO metrics_next VALUES (1, 7, '2027-03-01')",
        "CREATE INDEX metrics_next_device ON metrics_next (device)",
    ] {
        ok(&db.sql("flow", grants, "sql-execute", sql).await);
    }
    let r = db
        .call(
            "flow",
            grants,
            "attach",
            "metrics",
            &[
                ("partition", "metrics_next"),
                ("bounds", "range"),
                ("from", "2027-01-01 00:00+00"),
                ("to", "2028-01-01 00:00+00"),
            ],
        )
        .await;
    ok(&r);
    assert!(db.bound("metrics_next").await.is_some());
    let r = db
        .sql(
            "flow",
            grants,
            "sql-query",
            "SELECT id FROM metrics WHERE device = 7",
        )
        .await;
    ok(&r);
    assert_eq!(r.summary.as_deref(), Some("query returned 1 rows"));
    db.finish(&["flow"]).await;
}

/// The partition helpers, server facts and catalog views read what every
/// role may read: any database grant lets a task call them, none refuses
/// them. What PostgreSQL shows depends on the role: no superuser-only
/// settings, and `information_schema.table_constraints` lists a table's
/// constraints only to a role holding a privilege on it beyond SELECT.
#[sqlx::test]
async fn catalog_functions_and_views_read_with_a_database_grant(pool: PgPool) {
    let db = Db::new(pool, PARTITIONED).await;
    exec(
        &db.admin,
        "ALTER TABLE events ADD CONSTRAINT events_id_positive CHECK (id > 0)",
    )
    .await;
    let grants: Grants = &[("events", &[Select])];
    let reads: &[(&str, &str)] = &[
        ("SELECT count(*) FROM pg_partition_tree('events')", "int:3"),
        (
            "SELECT string_agg(relid::text, ',') FROM pg_partition_ancestors('events_2030')",
            "text:events_2030,events",
        ),
        (
            "SELECT pg_partition_root('events_2031')::text",
            "text:events",
        ),
        (
            "SELECT pg_get_partkeydef('events'::regclass)",
            "text:RANGE (at)",
        ),
        (
            "SELECT pg_get_partition_constraintdef('events_2030'::regclass) LIKE '%2030-01-01%'",
            "bool:true",
        ),
        (
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indexrelid = 'events_at'::regclass",
            "text:CREATE INDEX events_at ON ONLY public.events USING btree (at)",
        ),
        (
            "SELECT current_setting('server_version_num')::int / 10000",
            "int:15",
        ),
        ("SELECT current_schema()::text", "text:public"),
        (
            "SELECT pg_database_size(current_database()) > 0",
            "bool:true",
        ),
        (
            "SELECT count(*) FROM pg_settings WHERE name IN ('server_version_num', 'data_directory')",
            "int:1",
        ),
        (
            "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'virtualxid'",
            "bool:true",
        ),
        (
            "SELECT count(*) FROM pg_stat_progress_vacuum WHERE relid = 'events'::regclass",
            "int:0",
        ),
        (
            "SELECT count(*) FROM information_schema.table_constraints",
            "int:0",
        ),
    ];
    for (sql, expected) in reads {
        let r = db.sql("reader", grants, "sql-values", sql).await;
        ok(&r);
        assert_eq!(r.summary.as_deref(), Some(*expected), "{sql}");
        // No database granted: refused before anything runs.
        let mut request = db.request("nothing", grants, "sql-values", sql, &[]);
        request.database = None;
        let r = runtime()
            .run(&component(&fixture_path("hostile")), request)
            .await;
        stopped(&r, "refused: the manifest grants no database");
    }
    // `table_constraints` lists a table's constraints only to a role
    // holding a privilege on it other than SELECT.
    let constraints = "SELECT string_agg(constraint_name::text, ',') FROM information_schema.table_constraints WHERE table_name = 'events' AND constraint_type = 'CHECK' AND constraint_name::text NOT LIKE '%not_null'";
    let r = db
        .sql(
            "cleaner",
            &[("events", &[Delete])],
            "sql-values",
            constraints,
        )
        .await;
    ok(&r);
    assert_eq!(r.summary.as_deref(), Some("text:events_id_positive"));
    db.finish(&["reader", "cleaner"]).await;
}
