//! The SQL guard: decides, before anything reaches the database, whether one
//! statement is allowed under a task's `grants.database`.
//!
//! A statement over [`DEFAULT_MAX_STATEMENT_BYTES`] (or the caller's cap) or
//! holding a NUL byte is refused before it is parsed. PostgreSQL statements
//! are parsed by PostgreSQL's own grammar (libpg_query, see [`pg`]), once
//! with `standard_conforming_strings` on and once off, and both readings
//! must pass: whatever the server's setting, the statement it runs is one
//! the guard checked. SQLite statements are parsed with `sqlparser`; on
//! SQLite the engine's authorizer checks every statement again as it is
//! prepared (`sqlite.rs`).
//!
//! The statement must be exactly one statement of an allowed kind. Every
//! relation it names must be granted for the verb it is used with: the
//! target of an `INSERT`, `UPDATE` or `DELETE` needs that verb (and may also
//! be read by the same statement), every other relation needs `select`.
//! Session and transaction control, `COPY`, `DO`, `CALL`, `LISTEN`/`NOTIFY`,
//! functions and extensions are always refused, and so is any function
//! outside a fixed allowlist. Partitions under `create_partition`/
//! `drop_partition`, `VACUUM` and `ANALYZE` are never SQL: the refusal names
//! the typed call that does them (`structured.rs`).
//!
//! The guard is one layer. Operators should still give each connection a
//! role with only the privileges its tasks need.

mod allowlist;
mod pg;
mod sqlite;

use crate::manifest::SqlVerb;
pub use allowlist::{function_allowed, readable_catalog};
use std::collections::{BTreeMap, BTreeSet};

/// The SQL flavour of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// Why a statement may not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// The statement is allowed in kind but `table` is not granted `verb`.
    #[error("access denied: `{table}` is not granted `{}`", verb.as_str())]
    AccessDenied { table: String, verb: SqlVerb },
    /// The statement is never allowed, or could not be understood.
    #[error("refused: {0}")]
    Refused(String),
}

fn refused(reason: impl Into<String>) -> Denial {
    Denial::Refused(reason.into())
}

/// The one statement of a call, as either parser read it.
fn only_statement<T>(statements: &[T]) -> Result<&T, Denial> {
    match statements {
        [one] => Ok(one),
        [] => Err(refused("the statement is empty")),
        many => Err(refused(format!(
            "exactly one statement per call is allowed, got {}",
            many.len()
        ))),
    }
}

/// How the host must run an allowed statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reads only.
    Read,
    /// Changes rows or schema; runs in a transaction, rolled back in a dry-run.
    Change,
    /// `VACUUM`/`ANALYZE`: cannot run in a transaction; recorded, not run, in a
    /// dry-run. The guard refuses them as SQL; the typed calls use this.
    Maintenance,
}

/// An allowed statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub kind: Kind,
    /// The verb the statement is recorded under.
    pub verb: SqlVerb,
}

/// A task's table grants, with names normalized as the database folds them.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    tables: BTreeMap<String, BTreeSet<SqlVerb>>,
}

impl Grants {
    pub fn new(tables: &BTreeMap<String, Vec<SqlVerb>>) -> Self {
        Grants {
            tables: tables
                .iter()
                .map(|(name, verbs)| (name.to_ascii_lowercase(), verbs.iter().copied().collect()))
                .collect(),
        }
    }

    /// `table` is a normalized name (`events`, `public.events`). A grant on
    /// `events` covers `events` and `public.events`; `*` covers every table.
    pub fn allows(&self, table: &str, verb: SqlVerb) -> bool {
        let has = |key: &str| self.tables.get(key).is_some_and(|v| v.contains(&verb));
        if has(table) || has("*") {
            return true;
        }
        match table.strip_prefix("public.") {
            Some(bare) => has(bare),
            None => !table.contains('.') && has(&format!("public.{table}")),
        }
    }

    /// Granted tables that allow `verb`, as written in the manifest.
    pub fn tables_with(&self, verb: SqlVerb) -> Vec<String> {
        self.tables
            .iter()
            .filter(|(_, v)| v.contains(&verb))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn require(&self, table: &str, verb: SqlVerb) -> Result<(), Denial> {
        if self.allows(table, verb) {
            Ok(())
        } else {
            Err(Denial::AccessDenied {
                table: table.to_owned(),
                verb,
            })
        }
    }
}

/// Whether two normalized names denote the same table under the default
/// search path.
pub fn same_table(a: &str, b: &str) -> bool {
    let bare = |n: &str| n.strip_prefix("public.").unwrap_or(n).to_owned();
    bare(a) == bare(b)
}

/// The longest statement the guard parses unless the caller sets its own
/// cap: parsing is linear, but a deeply nested statement costs far more
/// than its size suggests.
pub const DEFAULT_MAX_STATEMENT_BYTES: usize = 256 << 10;

/// Checks one statement against `grants`, with the default size cap.
pub fn check(dialect: Dialect, sql: &str, grants: &Grants) -> Result<Checked, Denial> {
    check_bounded(dialect, sql, grants, DEFAULT_MAX_STATEMENT_BYTES)
}

/// Checks one statement against `grants`; a statement longer than
/// `max_bytes` is refused unparsed.
pub fn check_bounded(
    dialect: Dialect,
    sql: &str,
    grants: &Grants,
    max_bytes: usize,
) -> Result<Checked, Denial> {
    if sql.len() > max_bytes {
        return Err(refused(format!(
            "the statement is {} bytes, over the cap of {max_bytes} bytes",
            sql.len()
        )));
    }
    if sql.contains('\0') {
        return Err(refused("the statement contains a NUL byte"));
    }
    match dialect {
        Dialect::Postgres => postgres(sql, grants),
        Dialect::Sqlite => sqlite::check(sql, grants),
    }
}

/// Both readings of string literals must pass and mean the same: the
/// server may run with `standard_conforming_strings` either way.
fn postgres(sql: &str, grants: &Grants) -> Result<Checked, Denial> {
    if sql.trim().is_empty() {
        return Err(refused("the statement is empty"));
    }
    let standard = pg::check(sql, grants, pg_query::ParserOptions::DEFAULT)?;
    // Without a backslash both readings are the same.
    if !sql.contains('\\') {
        return Ok(standard);
    }
    let escaped = pg::check(
        sql,
        grants,
        pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS,
    )?;
    if standard != escaped {
        return Err(refused(
            "the statement means different things depending on standard_conforming_strings",
        ));
    }
    Ok(standard)
}

/// The relations and functions libpg_query's own summary lists for a
/// PostgreSQL statement (under both readings of backslashes), independent of
/// the guard's walk: for cross-checking what the guard passed.
pub fn postgres_references(sql: &str) -> Option<(Vec<String>, Vec<String>)> {
    let mut tables = Vec::new();
    let mut functions = Vec::new();
    for options in [
        pg_query::ParserOptions::DEFAULT,
        pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS,
    ] {
        let parsed = pg_query::parse(sql, options).ok()?;
        tables.extend(parsed.tables.into_iter().map(|(t, _)| t));
        functions.extend(parsed.functions.into_iter().map(|(f, _)| f));
    }
    Some((tables, functions))
}

#[cfg(test)]
mod tests {
    use super::*;
    use SqlVerb::*;

    fn grants() -> Grants {
        let mut t = BTreeMap::new();
        t.insert(
            "events".to_owned(),
            vec![Select, CreatePartition, DropPartition],
        );
        t.insert(
            "device_logs".to_owned(),
            vec![Select, Delete, Vacuum, Analyze],
        );
        t.insert("devices".to_owned(), vec![Select, Update]);
        t.insert("audit_logs".to_owned(), vec![Insert]);
        t.insert("tokens".to_owned(), vec![Delete]);
        t.insert("scratch".to_owned(), vec![Ddl]);
        t.insert("public.readings".to_owned(), vec![Select]);
        Grants::new(&t)
    }

    enum Want {
        Ok(Kind, SqlVerb),
        Denied(&'static str, SqlVerb),
        Refused(&'static str),
    }
    use Want::*;

    fn run(dialect: Dialect, cases: &[(&str, Want)]) {
        let g = grants();
        let mut failures = Vec::new();
        for (sql, want) in cases {
            let got = check(dialect, sql, &g);
            let ok = match (want, &got) {
                (Ok(kind, verb), std::result::Result::Ok(c)) => c.kind == *kind && c.verb == *verb,
                (Denied(table, verb), Err(Denial::AccessDenied { table: t, verb: v })) => {
                    t == table && v == verb
                }
                (Refused(part), Err(Denial::Refused(reason))) => reason.contains(part),
                _ => false,
            };
            if !ok {
                failures.push(format!("{sql}\n    got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn postgres_statements() {
        run(
            Dialect::Postgres,
            &[
                // reads
                ("SELECT count(*) FROM events", Ok(Kind::Read, Select)),
                (
                    "select * from EVENTS where created_at < now() - interval '90 days'",
                    Ok(Kind::Read, Select),
                ),
                ("SELECT * FROM public.events", Ok(Kind::Read, Select)),
                ("SELECT * FROM readings", Ok(Kind::Read, Select)),
                ("SELECT * FROM other.events", Denied("other.events", Select)),
                ("SELECT * FROM \"Events\"", Denied("Events", Select)),
                ("SELECT * FROM secrets", Denied("secrets", Select)),
                (
                    "SELECT e.id FROM events e JOIN secrets s ON s.id = e.id",
                    Denied("secrets", Select),
                ),
                (
                    "SELECT * FROM events WHERE id IN (SELECT id FROM secrets)",
                    Denied("secrets", Select),
                ),
                (
                    "SELECT (SELECT max(id) FROM secrets)",
                    Denied("secrets", Select),
                ),
                (
                    "SELECT * FROM events UNION SELECT * FROM secrets",
                    Denied("secrets", Select),
                ),
                (
                    "WITH old AS (SELECT id FROM events) SELECT * FROM old",
                    Ok(Kind::Read, Select),
                ),
                (
                    "WITH old AS (SELECT id FROM secrets) SELECT * FROM old",
                    Denied("secrets", Select),
                ),
                (
                    "SELECT * FROM (WITH secrets AS (SELECT 1) SELECT * FROM secrets) x",
                    Ok(Kind::Read, Select),
                ),
                (
                    "SELECT * FROM (WITH s AS (SELECT 1) SELECT * FROM s) x, secrets",
                    Denied("secrets", Select),
                ),
                (
                    "SELECT date_trunc('day', now()), coalesce(max(id), 0) FROM events",
                    Ok(Kind::Read, Select),
                ),
                (
                    "SELECT * FROM generate_series(1, 10)",
                    Ok(Kind::Read, Select),
                ),
                (
                    "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass",
                    Ok(Kind::Read, Select),
                ),
                ("SELECT * FROM pg_catalog.pg_class", Ok(Kind::Read, Select)),
                ("SELECT * FROM pg_authid", Denied("pg_authid", Select)),
                (
                    "SELECT query FROM pg_stat_activity",
                    Denied("pg_stat_activity", Select),
                ),
                ("SELECT * FROM pg_settings", Ok(Kind::Read, Select)),
                ("TABLE secrets", Denied("secrets", Select)),
                ("SELECT * INTO copy FROM events", Refused("INTO")),
                ("SELECT * FROM events FOR UPDATE", Denied("events", Update)),
                ("SELECT * FROM devices FOR UPDATE", Ok(Kind::Read, Select)),
                // functions
                (
                    "SELECT pg_read_file('/etc/passwd')",
                    Refused("pg_read_file"),
                ),
                (
                    "SELECT pg_catalog.pg_read_file('/etc/passwd')",
                    Refused("pg_read_file"),
                ),
                (
                    "SELECT * FROM pg_read_file('/etc/passwd')",
                    Refused("pg_read_file"),
                ),
                (
                    "SELECT pg_terminate_backend(1)",
                    Refused("pg_terminate_backend"),
                ),
                ("SELECT lo_import('/etc/passwd')", Refused("lo_import")),
                (
                    "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)",
                    Refused("dblink"),
                ),
                (
                    "SELECT set_config('role', 'postgres', false)",
                    Refused("set_config"),
                ),
                (
                    "SELECT current_setting('data_directory')",
                    Refused("current_setting"),
                ),
                ("SELECT pg_sleep(600)", Refused("pg_sleep")),
                ("SELECT pg_advisory_lock(1)", Refused("pg_advisory_lock")),
                ("SELECT nextval('events_id_seq')", Refused("nextval")),
                ("SELECT my_schema.evil()", Refused("my_schema.evil")),
                (
                    "SELECT count(*) FILTER (WHERE pg_sleep(1) IS NULL) FROM events",
                    Refused("pg_sleep"),
                ),
                (
                    "SELECT id FROM events ORDER BY pg_sleep(1)",
                    Refused("pg_sleep"),
                ),
                // writes
                (
                    "DELETE FROM device_logs WHERE created_at < $1",
                    Ok(Kind::Change, Delete),
                ),
                (
                    "DELETE FROM device_logs WHERE ctid = ANY(ARRAY(SELECT ctid FROM device_logs WHERE created_at < $1 LIMIT 1000))",
                    Ok(Kind::Change, Delete),
                ),
                (
                    "DELETE FROM tokens WHERE id IN (SELECT id FROM tokens LIMIT 10)",
                    Ok(Kind::Change, Delete),
                ),
                ("DELETE FROM events", Denied("events", Delete)),
                (
                    "DELETE FROM device_logs USING secrets WHERE secrets.id = device_logs.id",
                    Denied("secrets", Select),
                ),
                (
                    "DELETE FROM device_logs USING devices WHERE devices.id = device_logs.id RETURNING device_logs.id",
                    Ok(Kind::Change, Delete),
                ),
                (
                    "UPDATE devices SET key_hash = $1 WHERE id = $2",
                    Ok(Kind::Change, Update),
                ),
                ("UPDATE events SET x = 1", Denied("events", Update)),
                (
                    "UPDATE devices SET x = s.x FROM secrets s",
                    Denied("secrets", Select),
                ),
                (
                    "INSERT INTO audit_logs (action) VALUES ($1)",
                    Ok(Kind::Change, Insert),
                ),
                (
                    "INSERT INTO audit_logs SELECT * FROM devices",
                    Ok(Kind::Change, Insert),
                ),
                (
                    "INSERT INTO audit_logs SELECT * FROM secrets",
                    Denied("secrets", Select),
                ),
                (
                    "INSERT INTO devices (id) VALUES (1)",
                    Denied("devices", Insert),
                ),
                (
                    "INSERT INTO audit_logs (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = 2",
                    Denied("audit_logs", Update),
                ),
                (
                    "INSERT INTO audit_logs (id) VALUES (1) ON CONFLICT DO NOTHING",
                    Ok(Kind::Change, Insert),
                ),
                (
                    "WITH d AS (DELETE FROM secrets RETURNING *) SELECT * FROM d",
                    Refused("data-modifying"),
                ),
                (
                    "WITH d AS (DELETE FROM tokens RETURNING *) SELECT * FROM d",
                    Refused("data-modifying"),
                ),
                (
                    "WITH old AS (SELECT id FROM devices) UPDATE devices SET x = 1 WHERE id IN (SELECT id FROM old)",
                    Ok(Kind::Change, Update),
                ),
                (
                    "INSERT INTO audit_logs (action) VALUES (pg_read_file('/etc/passwd'))",
                    Refused("pg_read_file"),
                ),
                // partitions: the typed calls, or plain DDL with `ddl`
                (
                    "CREATE TABLE events_2026_11_25 PARTITION OF events FOR VALUES FROM ('2026-11-25') TO ('2026-11-26')",
                    Refused("`create-partition` call"),
                ),
                (
                    "CREATE TABLE IF NOT EXISTS public.events_2026_11_25 PARTITION OF public.events FOR VALUES FROM ('2026-11-25') TO ('2026-11-26')",
                    Refused("`create-partition` call"),
                ),
                (
                    "CREATE TABLE x PARTITION OF secrets FOR VALUES FROM (1) TO (2)",
                    Denied("secrets", Ddl),
                ),
                (
                    "CREATE TABLE x PARTITION OF device_logs FOR VALUES FROM (1) TO (2)",
                    Denied("device_logs", Ddl),
                ),
                ("CREATE TEMP TABLE x (id int)", Refused("temporary")),
                ("CREATE TABLE x (id int)", Denied("x", Ddl)),
                ("CREATE TABLE scratch (id int)", Ok(Kind::Change, Ddl)),
                (
                    "CREATE TABLE scratch AS SELECT * FROM secrets",
                    Denied("secrets", Select),
                ),
                (
                    "DROP TABLE events_2020_01_01",
                    Refused("`drop-partition` call"),
                ),
                (
                    "DROP TABLE IF EXISTS events_2020_01_01, events_2020_01_02",
                    Refused("`drop-partition` call"),
                ),
                ("DROP TABLE events_2020_01_01 CASCADE", Refused("CASCADE")),
                ("DROP TABLE scratch", Ok(Kind::Change, Ddl)),
                ("DROP VIEW v", Refused("only DROP TABLE")),
                ("DROP SCHEMA public CASCADE", Refused("only DROP TABLE")),
                (
                    "ALTER TABLE events DETACH PARTITION events_2020_01_01",
                    Refused("`detach-partition` call"),
                ),
                (
                    "ALTER TABLE events DETACH PARTITION events_2020_01_01 CONCURRENTLY",
                    Refused("`detach-partition` call"),
                ),
                (
                    "ALTER TABLE device_logs DETACH PARTITION x",
                    Denied("device_logs", Ddl),
                ),
                ("ALTER TABLE events ADD COLUMN x int", Denied("events", Ddl)),
                (
                    "ALTER TABLE scratch ADD COLUMN x int",
                    Ok(Kind::Change, Ddl),
                ),
                ("ALTER TABLE scratch OWNER TO postgres", Refused("OWNER TO")),
                ("CREATE INDEX ON scratch (id)", Ok(Kind::Change, Ddl)),
                ("CREATE INDEX ON events (id)", Denied("events", Ddl)),
                ("TRUNCATE events", Denied("events", Ddl)),
                // maintenance: the typed calls only
                ("VACUUM ANALYZE device_logs", Refused("`vacuum` call")),
                ("VACUUM", Refused("`vacuum` call")),
                ("VACUUM (bogus) device_logs", Refused("`vacuum` call")),
                ("VACUUM device_logs; DROP TABLE x", Refused("one statement")),
                ("ANALYZE device_logs", Refused("`analyze` call")),
                // always refused
                ("RESET ROLE", Refused("SET and RESET")),
                ("SET ROLE postgres", Refused("SET and RESET")),
                ("set statement_timeout = 0", Refused("SET and RESET")),
                ("SET LOCAL lock_timeout = 0", Refused("SET and RESET")),
                (
                    "SET SESSION AUTHORIZATION postgres",
                    Refused("SET and RESET"),
                ),
                ("/* hi */ SET search_path = evil", Refused("SET and RESET")),
                ("BEGIN", Refused("transaction control")),
                ("COMMIT", Refused("transaction control")),
                ("ROLLBACK", Refused("transaction control")),
                ("SAVEPOINT a", Refused("transaction control")),
                ("COPY events TO PROGRAM 'id'", Refused("COPY")),
                ("COPY events FROM '/etc/passwd'", Refused("COPY")),
                ("DO $$ BEGIN PERFORM 1; END $$", Refused("DO blocks")),
                ("CALL cleanup()", Refused("CALL")),
                ("LISTEN x", Refused("LISTEN")),
                ("NOTIFY x", Refused("LISTEN")),
                ("ALTER SYSTEM SET work_mem = '1GB'", Refused("ALTER SYSTEM")),
                (
                    "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
                    Refused("CREATE FUNCTION"),
                ),
                ("CREATE EXTENSION dblink", Refused("CREATE EXTENSION")),
                ("GRANT ALL ON events TO public", Refused("not allowed")),
                ("CREATE ROLE evil SUPERUSER", Refused("not allowed")),
                ("EXPLAIN ANALYZE DELETE FROM events", Refused("not allowed")),
                ("LOCK TABLE events", Refused("not allowed")),
                ("PREPARE p AS SELECT 1", Refused("not allowed")),
                ("SELECT 1; SELECT 2", Refused("exactly one statement")),
                (
                    "SELECT 1; DELETE FROM events",
                    Refused("exactly one statement"),
                ),
                ("", Refused("empty")),
                ("   ", Refused("empty")),
                ("SELEC 1", Refused("cannot parse")),
            ],
        );
    }

    #[test]
    fn sqlite_statements() {
        run(
            Dialect::Sqlite,
            &[
                ("SELECT count(*) FROM events", Ok(Kind::Read, Select)),
                (
                    "SELECT name FROM sqlite_master WHERE type = 'table'",
                    Ok(Kind::Read, Select),
                ),
                ("SELECT * FROM secrets", Denied("secrets", Select)),
                (
                    "DELETE FROM device_logs WHERE created_at < datetime('now', '-90 days')",
                    Ok(Kind::Change, Delete),
                ),
                (
                    "DELETE FROM device_logs WHERE rowid IN (SELECT rowid FROM device_logs LIMIT 100)",
                    Ok(Kind::Change, Delete),
                ),
                ("DELETE FROM events", Denied("events", Delete)),
                (
                    "INSERT OR REPLACE INTO audit_logs (id) VALUES (1)",
                    Denied("audit_logs", Update),
                ),
                (
                    "SELECT load_extension('evil.so')",
                    Refused("load_extension"),
                ),
                ("ATTACH DATABASE '/etc/passwd' AS x", Refused("not allowed")),
                ("PRAGMA writable_schema = 1", Refused("not allowed")),
                ("VACUUM INTO '/tmp/x'", Refused("`vacuum` call")),
                ("VACUUM", Refused("`vacuum` call")),
                ("ANALYZE device_logs", Refused("`analyze` call")),
                (
                    "CREATE TABLE x PARTITION OF events FOR VALUES FROM (1) TO (2)",
                    Refused(""),
                ),
                (
                    "DROP TABLE events_2020_01_01",
                    Denied("events_2020_01_01", Ddl),
                ),
                ("BEGIN", Refused("transaction control")),
                ("SELECT 1; SELECT 2", Refused("exactly one statement")),
            ],
        );
    }

    #[test]
    fn a_wildcard_grant_covers_every_table_but_the_catalogs() {
        let mut t = BTreeMap::new();
        t.insert("*".to_owned(), vec![Select, Ddl]);
        let g = Grants::new(&t);
        assert!(check(Dialect::Postgres, "SELECT * FROM anything, other.thing", &g).is_ok());
        assert!(check(Dialect::Postgres, "DROP TABLE anything", &g).is_ok());
        assert!(matches!(
            check(Dialect::Postgres, "DELETE FROM anything", &g),
            Err(Denial::AccessDenied { .. })
        ));
        for sql in [
            "SELECT * FROM pg_authid",
            "SELECT * FROM pg_catalog.pg_statistic",
            "DROP TABLE pg_catalog.pg_class",
            "CREATE TABLE pg_catalog.x (id int)",
        ] {
            assert!(check(Dialect::Postgres, sql, &g).is_err(), "{sql}");
        }
    }

    fn with(grants: &[(&str, &[SqlVerb])]) -> Grants {
        Grants::new(
            &grants
                .iter()
                .map(|(t, v)| (t.to_string(), v.to_vec()))
                .collect(),
        )
    }

    fn pg(sql: &str, g: &Grants) -> Result<Checked, Denial> {
        check(Dialect::Postgres, sql, g)
    }

    /// What maintenance needs passes with the grant it needs and is denied
    /// without it.
    #[test]
    fn maintenance_statements_pass_with_their_grant_only() {
        let cases: &[(&str, &[(&str, &[SqlVerb])], Kind)] = &[
            (
                "CREATE TABLE metrics (id bigint, at timestamptz NOT NULL) PARTITION BY RANGE (at)",
                &[("metrics", &[Ddl])],
                Kind::Change,
            ),
            (
                "CREATE TABLE metrics_2026 PARTITION OF metrics FOR VALUES FROM ('2026-01-01') TO ('2027-01-01') PARTITION BY RANGE (at)",
                &[("metrics", &[Ddl]), ("metrics_2026", &[Ddl])],
                Kind::Change,
            ),
            (
                "CREATE TABLE metrics_new (LIKE metrics INCLUDING ALL)",
                &[("metrics_new", &[Ddl]), ("metrics", &[Select])],
                Kind::Change,
            ),
            (
                "CREATE INDEX IF NOT EXISTS metrics_at ON metrics USING brin (at) WHERE at > '2020-01-01'",
                &[("metrics", &[Ddl])],
                Kind::Change,
            ),
            (
                "CREATE INDEX ON metrics (lower(name), date_trunc('day', at))",
                &[("metrics", &[Ddl])],
                Kind::Change,
            ),
            (
                "REINDEX TABLE metrics",
                &[("metrics", &[Ddl])],
                Kind::Change,
            ),
            (
                "REINDEX (VERBOSE) INDEX metrics_at",
                &[("metrics_at", &[Ddl])],
                Kind::Change,
            ),
            (
                "SELECT relid, parentrelid, isleaf, level FROM pg_partition_tree('metrics') t JOIN metrics m ON true",
                &[("metrics", &[Select])],
                Kind::Read,
            ),
            (
                "SELECT * FROM pg_partition_ancestors('metrics_2026'), metrics",
                &[("metrics", &[Select])],
                Kind::Read,
            ),
            (
                "SELECT pg_partition_root('metrics_2026'), pg_get_partkeydef('metrics'::regclass), count(*) FROM metrics",
                &[("metrics", &[Select])],
                Kind::Read,
            ),
            (
                "SELECT c.relname, pg_get_partition_constraintdef(c.oid), pg_get_indexdef(i.indexrelid) FROM pg_class c JOIN pg_index i ON i.indrelid = c.oid JOIN metrics m ON true",
                &[("metrics", &[Select])],
                Kind::Read,
            ),
            (
                "SELECT current_setting('server_version_num')::int, current_schema(), pg_database_size(current_database()), max(id) FROM metrics",
                &[("metrics", &[Select])],
                Kind::Read,
            ),
            (
                "SELECT s.name, s.setting, l.mode, p.phase, tc.constraint_name, m.id FROM pg_settings s, pg_locks l, pg_stat_progress_vacuum p, information_schema.table_constraints tc, metrics m",
                &[("metrics", &[Select])],
                Kind::Read,
            ),
            (
                "INSERT INTO audit WITH x AS (SELECT id FROM metrics WHERE at < now()) SELECT id FROM x",
                &[("audit", &[Insert]), ("metrics", &[Select])],
                Kind::Change,
            ),
            (
                "WITH RECURSIVE parts AS (SELECT 'metrics'::regclass AS oid UNION ALL SELECT i.inhrelid FROM pg_inherits i JOIN parts p ON i.inhparent = p.oid) SELECT * FROM parts, metrics",
                &[("metrics", &[Select])],
                Kind::Read,
            ),
            (
                "ALTER TABLE metrics ATTACH PARTITION metrics_old FOR VALUES FROM ('2020-01-01') TO ('2021-01-01')",
                &[("metrics", &[Ddl]), ("metrics_old", &[Ddl])],
                Kind::Change,
            ),
            (
                "ALTER TABLE metrics ADD CONSTRAINT fk FOREIGN KEY (device) REFERENCES devices (id)",
                &[("metrics", &[Ddl]), ("devices", &[Ddl])],
                Kind::Change,
            ),
            (
                "SELECT id FROM metrics ORDER BY id LIMIT 10 FOR UPDATE SKIP LOCKED",
                &[("metrics", &[Select, Update])],
                Kind::Read,
            ),
        ];
        for (sql, granted, kind) in cases {
            let g = with(granted);
            match pg(sql, &g) {
                Result::Ok(c) => assert_eq!(c.kind, *kind, "{sql}"),
                Err(e) => panic!("{sql}\n    refused with its grant: {e}"),
            }
            // Each grant is needed: without any one of them (or one of its
            // verbs) the statement is denied by name.
            for (i, (table, verbs)) in granted.iter().enumerate() {
                for v in 0..verbs.len() {
                    let mut fewer: Vec<(&str, Vec<SqlVerb>)> =
                        granted.iter().map(|(t, v)| (*t, v.to_vec())).collect();
                    fewer[i].1.remove(v);
                    let fewer: Vec<(&str, &[SqlVerb])> =
                        fewer.iter().map(|(t, v)| (*t, v.as_slice())).collect();
                    match pg(sql, &with(&fewer)) {
                        Err(Denial::AccessDenied { table: t, .. }) => {
                            assert_eq!(&t, table, "{sql}")
                        }
                        other => panic!(
                            "{sql}\n    without `{}` on {table}: {other:?}",
                            verbs[v].as_str()
                        ),
                    }
                }
            }
        }
    }

    /// Spellings of one table: case, quoting, schema, comments.
    fn table_spellings(t: &str) -> Vec<String> {
        vec![
            t.to_owned(),
            t.to_ascii_uppercase(),
            format!("\"{t}\""),
            format!("public.{t}"),
            format!("PUBLIC.\"{t}\""),
            format!("\"public\" . /* x */ {t}"),
        ]
    }

    fn function_spellings(f: &str) -> Vec<String> {
        vec![
            f.to_owned(),
            f.to_ascii_uppercase(),
            format!("\"{f}\""),
            format!("pg_catalog.{f}"),
            format!("\"pg_catalog\".\"{f}\""),
            format!("PG_CATALOG . {}", f.to_ascii_uppercase()),
        ]
    }

    fn string_spellings(s: &str) -> Vec<String> {
        vec![
            format!("'{s}'"),
            format!("$${s}$$"),
            format!("$q$ {s}$q$"),
            format!("E'{s}'"),
            format!("U&'{s}'"),
        ]
    }

    const SPACES: &[&str] = &[
        " ",
        "\n\t",
        "/**/",
        " /* a /* nested */ comment */ ",
        " --comment\n",
        "\u{c}",
    ];

    /// Every combination of `{t}` (table), `{f}` (function), `{s}`
    /// (string) and `{_}` (space) spellings in `template`.
    fn spell(
        template: &str,
        tables: &[String],
        functions: &[String],
        strings: &[String],
    ) -> Vec<String> {
        let mut out = vec![template.to_owned()];
        for (slot, options) in [("{t}", tables), ("{f}", functions), ("{s}", strings)] {
            if !template.contains(slot) {
                continue;
            }
            out = out
                .iter()
                .flat_map(|sql| options.iter().map(move |o| sql.replace(slot, o)))
                .collect();
        }
        out.iter()
            .flat_map(|sql| SPACES.iter().map(move |sp| sql.replace("{_}", sp)))
            .collect()
    }

    /// For each class of bypass: every spelling of the hostile statement is
    /// stopped, and every spelling of its harmless twin (another table or
    /// function in the same place) passes, so the spellings parse.
    #[test]
    fn every_spelling_of_a_bypass_class_is_stopped() {
        let g = with(&[
            ("events", &[Select]),
            ("devices", &[Select, Update]),
            ("scratch", &[Ddl]),
            ("scratch2", &[Ddl, Select]),
        ]);
        let templates: &[(&str, &str)] = &[
            // relations in every reading position
            ("select", "SELECT{_}*{_}FROM{_}{t}"),
            (
                "join",
                "SELECT{_}e.id{_}FROM{_}events{_}e{_}JOIN{_}{t}{_}s{_}ON{_}true",
            ),
            (
                "nested parentheses",
                "SELECT{_}*{_}FROM{_}events{_}WHERE{_}id{_}IN{_}((((SELECT{_}id{_}FROM{_}{t}))))",
            ),
            (
                "lateral",
                "SELECT{_}*{_}FROM{_}events,{_}LATERAL{_}(SELECT{_}*{_}FROM{_}{t})",
            ),
            (
                "cte",
                "WITH{_}x{_}AS{_}(SELECT{_}*{_}FROM{_}{t}){_}SELECT{_}*{_}FROM{_}x",
            ),
            (
                "cte shadowing",
                "WITH{_}y{_}AS{_}(SELECT{_}1),{_}z{_}AS{_}(SELECT{_}*{_}FROM{_}{t}){_}SELECT{_}*{_}FROM{_}y,{_}z",
            ),
            (
                "union",
                "SELECT{_}id{_}FROM{_}events{_}UNION{_}ALL{_}(SELECT{_}id{_}FROM{_}{t})",
            ),
            (
                "update from",
                "UPDATE{_}devices{_}SET{_}x{_}={_}1{_}FROM{_}{t}",
            ),
            // operator runs into comments
            ("operator run --", "SELECT{_}id{_}<--c\n1{_}FROM{_}{t}"),
            ("operator run /*", "SELECT{_}id{_}*/*c*/1{_}FROM{_}{t}"),
            ("operator run @-", "SELECT{_}id{_}@-1{_}FROM{_}{t}"),
            ("operator run |/", "SELECT{_}|/id{_}FROM{_}{t}--x"),
            // strings of every quoting next to the relation
            ("strings", "SELECT{_}{s}{_}||{_}id::text{_}FROM{_}{t}"),
            // DDL references
            (
                "references",
                "CREATE{_}TABLE{_}scratch{_}(id{_}int{_}REFERENCES{_}{t}{_}(id))",
            ),
            (
                "foreign key",
                "ALTER{_}TABLE{_}scratch{_}ADD{_}FOREIGN{_}KEY{_}(id){_}REFERENCES{_}{t}",
            ),
            (
                "inherits",
                "CREATE{_}TABLE{_}scratch{_}(){_}INHERITS{_}({t})",
            ),
            ("inherit", "ALTER{_}TABLE{_}scratch{_}INHERIT{_}{t}"),
            (
                "like",
                "CREATE{_}TABLE{_}scratch{_}(LIKE{_}{t}{_}INCLUDING{_}ALL)",
            ),
            (
                "attach",
                "ALTER{_}TABLE{_}scratch{_}ATTACH{_}PARTITION{_}{t}{_}DEFAULT",
            ),
            (
                "create as",
                "CREATE{_}TABLE{_}scratch{_}AS{_}SELECT{_}*{_}FROM{_}{t}",
            ),
        ];
        let mut failures = Vec::new();
        let mut checked = 0;
        for (class, template) in templates {
            let twin = if template.starts_with("CREATE") || template.starts_with("ALTER") {
                "scratch2"
            } else {
                "events"
            };
            for sql in spell(
                template,
                &table_spellings("secrets"),
                &[],
                &string_spellings("x"),
            ) {
                checked += 1;
                if let Result::Ok(c) = pg(&sql, &g) {
                    failures.push(format!("{class}: {sql:?} passed as {c:?}"));
                }
            }
            for sql in spell(
                template,
                &table_spellings(twin),
                &[],
                &string_spellings("x"),
            ) {
                if let Err(e) = pg(&sql, &g) {
                    failures.push(format!("{class} (harmless twin): {sql:?} stopped: {e}"));
                }
            }
        }
        // functions in every position, and as attributes
        let functions: &[(&str, &str)] = &[
            ("call", "SELECT{_}{f}({s})"),
            (
                "in where",
                "SELECT{_}id{_}FROM{_}events{_}WHERE{_}{f}({s}){_}IS{_}NOT{_}NULL",
            ),
            ("in from", "SELECT{_}*{_}FROM{_}{f}({s})"),
            ("rows from", "SELECT{_}*{_}FROM{_}ROWS{_}FROM{_}({f}({s}))"),
            (
                "in order by",
                "SELECT{_}id{_}FROM{_}events{_}ORDER{_}BY{_}{f}({s})",
            ),
            (
                "in a filter",
                "SELECT{_}count(*){_}FILTER{_}(WHERE{_}{f}({s}){_}>{_}''){_}FROM{_}events",
            ),
            (
                "in an index",
                "CREATE{_}INDEX{_}ON{_}scratch{_}(({f}({s})))",
            ),
            (
                "in a default",
                "CREATE{_}TABLE{_}scratch{_}(x{_}text{_}DEFAULT{_}{f}({s}))",
            ),
            (
                "in a check",
                "ALTER{_}TABLE{_}scratch{_}ADD{_}CHECK{_}({f}({s}){_}<>{_}'')",
            ),
            ("in values", "INSERT{_}INTO{_}devices{_}SELECT{_}{f}({s})"),
        ];
        let g2 = with(&[
            ("events", &[Select]),
            ("scratch", &[Ddl]),
            ("devices", &[Insert]),
        ]);
        for (class, template) in functions {
            for sql in spell(
                template,
                &[],
                &function_spellings("pg_read_file"),
                &string_spellings("/etc/passwd"),
            ) {
                checked += 1;
                if let Result::Ok(c) = pg(&sql, &g2) {
                    failures.push(format!("function {class}: {sql:?} passed as {c:?}"));
                }
            }
            for sql in spell(
                template,
                &[],
                &function_spellings("lower"),
                &string_spellings("x"),
            ) {
                if let Err(e) = pg(&sql, &g2) {
                    failures.push(format!(
                        "function {class} (harmless twin): {sql:?} stopped: {e}"
                    ));
                }
            }
        }
        let attributes: &[&str] = &[
            "SELECT{_}e.{f}{_}FROM{_}events{_}e",
            "SELECT{_}events.{f}{_}FROM{_}events",
            "SELECT{_}({s}::text).{f}",
            "SELECT{_}(e).{f}{_}FROM{_}events{_}e",
            "SELECT{_}x.{f}{_}FROM{_}(SELECT{_}{s}::text{_}AS{_}x){_}s",
        ];
        for template in attributes {
            for f in [
                "pg_read_file",
                "pg_ls_dir",
                "current_setting",
                "row_to_json",
                "nextval",
                "set_config",
                "lo_import",
            ] {
                let spellings = [f.to_owned(), f.to_ascii_uppercase(), format!("\"{f}\"")];
                for sql in spell(template, &[], &spellings, &string_spellings("/etc/passwd")) {
                    checked += 1;
                    if let Result::Ok(c) = pg(&sql, &g2) {
                        failures.push(format!("attribute: {sql:?} passed as {c:?}"));
                    }
                }
            }
            let twin = ["id".to_owned(), "ID".to_owned(), "\"id\"".to_owned()];
            for sql in spell(template, &[], &twin, &string_spellings("x")) {
                if let Err(e) = pg(&sql, &g2) {
                    failures.push(format!("attribute (harmless twin): {sql:?} stopped: {e}"));
                }
            }
        }
        assert!(checked > 4_000, "{checked}");
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures[..failures.len().min(40)].join("\n")
        );
    }

    #[test]
    fn row_locks_need_update_and_never_touch_a_catalog() {
        let g = with(&[
            ("devices", &[Select, Update]),
            ("events", &[Select]),
            ("*", &[Select, Update]),
        ]);
        for strength in [
            "UPDATE",
            "SHARE",
            "NO KEY UPDATE",
            "key share",
            "update /**/",
        ] {
            for wait in ["", " NOWAIT", " skip locked"] {
                let ok = format!("SELECT id FROM devices FOR {strength}{wait}");
                assert!(pg(&ok, &g).is_ok(), "{ok}");
            }
            for catalog in [
                "pg_class",
                "pg_catalog.pg_class",
                "PG_CATALOG.\"pg_locks\"",
                "pg_settings",
                "information_schema.tables",
                "pg_authid",
            ] {
                for sql in [
                    format!("SELECT 1 FROM {catalog} FOR {strength}"),
                    format!("SELECT 1 FROM {catalog} c FOR {strength} OF c"),
                    format!("SELECT 1 FROM (SELECT * FROM {catalog}) s FOR {strength}"),
                    format!(
                        "SELECT 1 FROM devices d JOIN {catalog} c ON true FOR {strength} OF d, c"
                    ),
                ] {
                    match pg(&sql, &g) {
                        Err(Denial::Refused(r)) if r.contains("system relation") => {}
                        Err(Denial::AccessDenied { .. }) => {}
                        other => panic!("{sql}: {other:?}"),
                    }
                }
            }
        }
        let only_select = with(&[("events", &[Select])]);
        assert!(matches!(
            pg("SELECT * FROM events FOR KEY SHARE", &only_select),
            Err(Denial::AccessDenied { verb: Update, .. })
        ));
        // A lock in a subquery of WHERE does not lock the outer FROM.
        assert!(
            pg(
                "SELECT * FROM devices WHERE id IN (SELECT id FROM events) FOR UPDATE OF devices",
                &with(&[("devices", &[Select, Update]), ("events", &[Select])])
            )
            .is_ok()
        );
    }

    #[test]
    fn strings_are_checked_under_both_readings_of_backslashes() {
        let g = with(&[("events", &[Select])]);
        // With standard_conforming_strings off this reads secrets; on, it
        // does not.
        let sql = r"SELECT 'a\' || ' , (SELECT value FROM secrets) -- ' FROM events";
        assert!(pg(sql, &g).is_err(), "{sql}");
        let sql = r"SELECT 'a\' || ' , (SELECT pg_read_file(''x'')) -- ' FROM events";
        assert!(pg(sql, &g).is_err(), "{sql}");
        // E'' strings read the same either way.
        assert!(pg(r"SELECT E'a\'b', id FROM events", &g).is_ok());
        assert!(pg(r"SELECT E'a\' FROM secrets --', id FROM events", &g).is_ok());
        assert!(pg(r"SELECT E'a\'' FROM secrets --', id FROM events", &g).is_err());
    }

    #[test]
    fn names_fold_as_the_database_folds_them() {
        // PostgreSQL folds ASCII only: ÉVENTS is "Évents", and the Kelvin
        // sign is not a K.
        let g = with(&[
            ("évents", &[Select]),
            ("keys", &[Select]),
            ("events", &[Select]),
        ]);
        for sql in [
            "SELECT * FROM ÉVENTS",
            "SELECT * FROM \u{212A}EYS",
            "SELECT * FROM \"Évents\"",
        ] {
            assert!(
                matches!(pg(sql, &g), Err(Denial::AccessDenied { .. })),
                "{sql}"
            );
        }
        assert!(pg("SELECT * FROM évents, KEYS, \"events\", EvEnTs", &g).is_ok());
        // A quoted name with a dot is one name, never schema and table.
        for sql in [
            "SELECT * FROM \"public.events\"",
            "SELECT * FROM public.\"events.x\"",
            "DROP TABLE \"public.events\"",
            "TRUNCATE \"public.events\"",
        ] {
            assert!(
                matches!(pg(sql, &g), Err(Denial::Refused(r)) if r.contains("`.`")),
                "{sql}"
            );
        }
        // SQLite compares names ignoring ASCII case only, quoted or not.
        let lite = |sql: &str| check(Dialect::Sqlite, sql, &g);
        assert!(lite("SELECT * FROM \"EVENTS\"").is_ok());
        assert!(matches!(
            lite("SELECT * FROM ÉVENTS"),
            Err(Denial::AccessDenied { .. })
        ));
        assert!(matches!(
            lite("SELECT * FROM \"main.events\""),
            Err(Denial::Refused(_))
        ));
    }

    /// On SQLite the names an `INSERT`'s `WITH` defines are its CTEs within
    /// its query, and tables anywhere else in the statement.
    #[test]
    fn sqlite_insert_with_names_its_ctes() {
        let g = with(&[("audit", &[Insert, Select, Update]), ("events", &[Select])]);
        let lite = |sql: &str| check(Dialect::Sqlite, sql, &g);
        for ok in [
            "INSERT INTO audit (id) WITH x AS (SELECT id FROM events) SELECT id FROM x",
            "INSERT INTO audit (id) WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 9) SELECT n FROM c",
        ] {
            assert!(lite(ok).is_ok(), "{ok}: {:?}", lite(ok));
        }
        for denied in [
            "INSERT INTO audit (id) WITH x AS (SELECT id FROM secrets) SELECT id FROM x",
            "INSERT INTO audit (id) WITH secrets AS (SELECT 1) SELECT 1 FROM secrets RETURNING (SELECT max(id) FROM secrets)",
            "INSERT INTO audit (id) WITH secrets AS (SELECT 1) SELECT 1 FROM secrets ON CONFLICT (id) DO UPDATE SET id = (SELECT max(id) FROM secrets)",
        ] {
            assert!(
                matches!(lite(denied), Err(Denial::AccessDenied { ref table, .. }) if table == "secrets"),
                "{denied}: {:?}",
                lite(denied)
            );
        }
    }

    /// Every spelling of VACUUM, ANALYZE and free-text partition changes
    /// under the partition verbs is refused, naming the call to use.
    #[test]
    fn maintenance_and_partitions_name_their_call() {
        let g = with(&[
            ("device_logs", &[Vacuum, Analyze]),
            ("events", &[CreatePartition, DropPartition]),
        ]);
        let cases: &[(&str, &str)] = &[
            ("VACUUM{_}device_logs", "`vacuum` call"),
            (
                "vacuum{_}(ANALYZE,{_}VERBOSE){_}device_logs",
                "`vacuum` call",
            ),
            (
                "VACUUM{_}FULL{_}FREEZE{_}VERBOSE{_}ANALYZE{_}device_logs{_}(id)",
                "`vacuum` call",
            ),
            (
                "VACUUM{_}(PARALLEL{_}2,{_}INDEX_CLEANUP{_}off)",
                "`vacuum` call",
            ),
            ("ANALYZE{_}device_logs", "`analyze` call"),
            ("analyse{_}VERBOSE{_}device_logs", "`analyze` call"),
            ("ANALYZE", "`analyze` call"),
            (
                "CREATE{_}TABLE{_}events_2030{_}PARTITION{_}OF{_}events{_}FOR{_}VALUES{_}FROM{_}('2030-01-01'){_}TO{_}('2031-01-01')",
                "`create-partition` call",
            ),
            (
                "CREATE{_}TABLE{_}events_d{_}PARTITION{_}OF{_}PUBLIC.\"events\"{_}DEFAULT",
                "`create-partition` call",
            ),
            ("DROP{_}TABLE{_}events_2020", "`drop-partition` call"),
            (
                "drop{_}table{_}if{_}exists{_}public.events_2020",
                "`drop-partition` call",
            ),
            (
                "ALTER{_}TABLE{_}events{_}DETACH{_}PARTITION{_}events_2020",
                "`detach-partition` call",
            ),
            (
                "ALTER{_}TABLE{_}ONLY{_}\"events\"{_}DETACH{_}PARTITION{_}events_2020{_}FINALIZE",
                "`detach-partition` call",
            ),
            (
                "ALTER{_}TABLE{_}events{_}ATTACH{_}PARTITION{_}events_2020{_}FOR{_}VALUES{_}FROM{_}('2020-01-01'){_}TO{_}('2020-01-02')",
                "`attach-partition` call",
            ),
            (
                "alter{_}table{_}public.events{_}attach{_}partition{_}events_d{_}default",
                "`attach-partition` call",
            ),
        ];
        for (template, call) in cases {
            for sql in spell(template, &[], &[], &[]) {
                match pg(&sql, &g) {
                    Err(Denial::Refused(r)) if r.contains(call) => {}
                    other => panic!("{sql:?}: {other:?}"),
                }
            }
        }
        for sql in ["VACUUM", "vacuum;", "ANALYZE device_logs"] {
            assert!(
                matches!(
                    check(Dialect::Sqlite, sql, &g),
                    Err(Denial::Refused(r)) if r.contains("call")
                ),
                "{sql}"
            );
        }
        // With `ddl` on every table it names, partition DDL is plain DDL.
        let ddl = with(&[("events", &[Ddl]), ("events_2030", &[Ddl])]);
        for sql in [
            "CREATE TABLE events_2030 PARTITION OF events FOR VALUES FROM ('2030-01-01') TO ('2031-01-01')",
            "ALTER TABLE events DETACH PARTITION events_2030",
            "ALTER TABLE events ATTACH PARTITION events_2030 FOR VALUES FROM ('2030-01-01') TO ('2031-01-01')",
            "DROP TABLE events_2030",
        ] {
            assert!(
                matches!(
                    pg(sql, &ddl),
                    Result::Ok(Checked {
                        kind: Kind::Change,
                        verb: Ddl,
                        ..
                    })
                ),
                "{sql}"
            );
        }
        assert!(matches!(
            pg("ALTER TABLE events DETACH PARTITION other", &ddl),
            Err(Denial::AccessDenied { table, verb: Ddl }) if table == "other"
        ));
        // CONCURRENTLY cannot run in the call's transaction: the refusal
        // names the call that runs it outside one.
        assert!(matches!(
            pg("ALTER TABLE events DETACH PARTITION events_2030 CONCURRENTLY", &ddl),
            Err(Denial::Refused(r)) if r.contains("sql::detach_partition(parent, partition, true)")
        ));
    }

    #[test]
    fn oversized_and_nul_statements_are_refused_unparsed() {
        let g = with(&[("events", &[Select])]);
        let big = format!(
            "SELECT 1 FROM events WHERE id IN ({})",
            vec!["1"; 200_000].join(",")
        );
        assert!(big.len() > DEFAULT_MAX_STATEMENT_BYTES);
        for dialect in [Dialect::Postgres, Dialect::Sqlite] {
            match check(dialect, &big, &g) {
                Err(Denial::Refused(r)) => assert!(r.contains("262144"), "{r}"),
                other => panic!("{other:?}"),
            }
            assert!(
                matches!(check_bounded(dialect, "SELECT 1 FROM events", &g, 10), Err(Denial::Refused(r)) if r.contains("cap of 10 bytes"))
            );
            assert!(
                matches!(check(dialect, "SELECT 1 FROM events\0; DROP TABLE x", &g), Err(Denial::Refused(r)) if r.contains("NUL"))
            );
        }
    }

    /// The worst statements under the cap parse in well under a second (a
    /// benchmark, not a timing assertion: it prints what it measured).
    #[test]
    fn pathological_statements_under_the_cap_end() {
        let g = with(&[("events", &[Select])]);
        let cap = DEFAULT_MAX_STATEMENT_BYTES;
        let statements = [
            format!(
                "SELECT {}1{}",
                "(".repeat(cap / 2 - 10),
                ")".repeat(cap / 2 - 10)
            ),
            format!("SELECT {}", vec!["1+"; cap / 2 - 8].concat() + "1"),
            format!(
                "SELECT 1 FROM events WHERE id IN ({})",
                vec!["1"; cap / 2 - 30].join(",")
            ),
            format!("SELECT {}", vec!["ARRAY["; cap / 7].concat()),
            format!("SELECT '{}'", "x".repeat(cap - 20)),
        ];
        for sql in &statements {
            assert!(sql.len() <= cap);
            let start = std::time::Instant::now();
            let result = pg(sql, &g);
            eprintln!(
                "{} bytes starting {:?}: {:?} in {:?}",
                sql.len(),
                &sql[..12],
                result.as_ref().map(|c| c.kind).map_err(|e| e
                    .to_string()
                    .chars()
                    .take(60)
                    .collect::<String>()),
                start.elapsed()
            );
        }
    }

    /// Every way to nest a SQLite statement deep within the size cap is
    /// refused (or parsed) without overflowing the stack of a thread the
    /// size of tokio's blocking pool's (2 MiB), where the check runs: an
    /// operator chain of any kind, prefix operators, calls, parentheses,
    /// `CASE`, and a long `IN` list.
    #[test]
    fn deeply_nested_sqlite_statements_do_not_overflow_the_stack() {
        let cap = DEFAULT_MAX_STATEMENT_BYTES;
        let chain = |op: &str| {
            let n = (cap - 64) / (op.len() + 1);
            format!("SELECT 1 FROM events WHERE {}1", format!("1{op}").repeat(n))
        };
        let mut statements: Vec<String> = [
            "+", "-", "*", "/", "%", "||", "=", "==", "<>", "!=", "<", ">", "<=", ">=", "&", "|",
            "<<", ">>", " AND ", " OR ", " IS ", " LIKE ", " GLOB ", "->", "->>",
        ]
        .iter()
        .map(|op| chain(op))
        .collect();
        let prefix = |p: &str| format!("SELECT {}1", p.repeat((cap - 20) / p.len()));
        statements.extend(["NOT ", "- ", "+ ", "~"].map(prefix));
        let wrap = |open: &str, close: &str| {
            let n = (cap - 20) / (open.len() + close.len());
            format!("SELECT {}1{}", open.repeat(n), close.repeat(n))
        };
        statements.push(wrap("(", ")"));
        statements.push(wrap("abs(", ")"));
        statements.push(wrap("CASE WHEN 1 THEN ", " END"));
        statements.push(wrap("(SELECT ", ")"));
        statements.push(format!(
            "SELECT 1 FROM events WHERE id IN ({})",
            vec!["1"; cap / 2 - 40].join(",")
        ));
        let g = with(&[("events", &[Select])]);
        let checked = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                for sql in &statements {
                    assert!(sql.len() <= cap, "{}", sql.len());
                    let result = check(Dialect::Sqlite, sql, &g);
                    // Whatever the verdict, only the `IN` list may pass.
                    if !sql.contains(" IN (") {
                        assert!(result.is_err(), "{}", &sql[..40]);
                    }
                }
            })
            .unwrap()
            .join();
        assert!(checked.is_ok());
    }

    /// SQLite copies a CTE's query for every reference while it prepares
    /// a statement, where no deadline reaches: a long chain overflows its
    /// stack, references that double per step take gigabytes, and both
    /// hide inside nested scopes. All refused before SQLite sees them;
    /// ordinary CTEs pass.
    /// SQLite merges a subquery in `FROM` (or a CTE named there) into the
    /// query around it by copying the subquery's column into every
    /// reference to it, while it prepares the statement: nested subqueries
    /// that each use their column several times grow four-fold per level
    /// (twelve levels of `x+x+x+x` took gigabytes). Every shape of that
    /// nesting is refused before SQLite sees it; real queries pass.
    #[test]
    fn sqlite_subquery_flattening_is_bounded() {
        let g = with(&[("events", &[Select, Delete])]);
        let lite = |sql: &str| check(Dialect::Sqlite, sql, &g);
        let uses = |n: usize| vec!["x"; n].join("+");
        let derived = |levels: usize, n: usize| {
            let mut sql = "SELECT id AS x FROM events".to_owned();
            for _ in 0..levels {
                sql = format!("SELECT {} AS x FROM ({sql})", uses(n));
            }
            sql
        };
        let ctes = |levels: usize, n: usize| {
            let mut sql = "WITH c0 AS (SELECT id AS x FROM events)".to_owned();
            for i in 1..=levels {
                sql.push_str(&format!(
                    ", c{i} AS (SELECT {} AS x FROM c{})",
                    uses(n),
                    i - 1
                ));
            }
            sql + &format!(" SELECT x FROM c{levels}")
        };
        let joined = |levels: usize| {
            let mut sql = "SELECT id AS x FROM events".to_owned();
            for _ in 0..levels {
                sql = format!(
                    "SELECT a.x * b.x + a.x AS x FROM ({sql}) a JOIN (SELECT 1 AS y) b ON 1"
                );
            }
            sql
        };
        let star = |levels: usize| {
            let mut sql = format!("SELECT {} AS x FROM events", uses(4));
            for _ in 0..levels {
                sql = format!("SELECT *, (SELECT 1) AS y FROM (SELECT x+x+x+x AS x FROM ({sql}))");
            }
            sql
        };
        for (what, sql) in [
            ("12 levels of four uses", derived(12, 4)),
            ("10 levels of four uses", derived(10, 4)),
            ("7 levels of eight uses", derived(7, 8)),
            ("12 levels of CTEs", ctes(12, 4)),
            ("a join at every level", joined(14)),
            ("stars between the levels", star(11)),
            (
                "a subquery in WHERE",
                format!("SELECT 1 FROM events WHERE id IN ({})", derived(11, 4)),
            ),
            (
                "an alias named 600 times in WHERE",
                format!(
                    "SELECT substr('{}', id) AS a FROM events WHERE {}",
                    "x".repeat(200_000),
                    vec!["a"; 600].join(" = ")
                ),
            ),
            (
                "an alias named 600 times in GROUP BY",
                format!(
                    "SELECT substr('{}', id) AS a FROM events GROUP BY {}",
                    "x".repeat(200_000),
                    vec!["a"; 600].join(", ")
                ),
            ),
            (
                "a derived column named 600 times in ON",
                format!(
                    "SELECT 1 FROM events JOIN (SELECT substr('{}', id) AS a FROM events) s ON s.a IN ({})",
                    "x".repeat(200_000),
                    vec!["a"; 600].join(", ")
                ),
            ),
            (
                "a derived column named 600 times by UPDATE … FROM",
                format!(
                    "UPDATE events SET id = s.a FROM (SELECT substr('{}', id) AS a FROM events) AS s WHERE s.a IN ({})",
                    "x".repeat(200_000),
                    vec!["a"; 600].join(", ")
                ),
            ),
            (
                "a window named 600 times",
                format!(
                    "SELECT {} FROM events WINDOW w AS (PARTITION BY substr('{}', id))",
                    vec!["count(*) OVER w"; 600].join(", "),
                    "x".repeat(200_000)
                ),
            ),
            (
                "arms under the cap one by one, over it together",
                vec![
                    format!(
                        "SELECT x IN ({0}) AS a FROM events WHERE a IN ({0})",
                        vec!["x"; 400].join(",")
                    );
                    20
                ]
                .join(" UNION ALL "),
            ),
            (
                "a window named 1,000 times in ORDER BY",
                format!(
                    "SELECT 1 FROM events WINDOW w AS (PARTITION BY {}) ORDER BY {}",
                    vec!["id"; 10_000].join(","),
                    vec!["count(*) OVER w"; 1_000].join(", ")
                ),
            ),
            (
                "a CTE of alias copies named 200 times",
                format!(
                    "WITH c AS (SELECT x IN ({0}) AS a FROM events WHERE a IN ({0})) SELECT 1 FROM {1}",
                    vec!["x"; 300].join(","),
                    vec!["c"; 200].join(", ")
                ),
            ),
            (
                "a query merged into each of 200 UNION ALL arms",
                format!(
                    "SELECT x IN ({}) AS a FROM ({})",
                    vec!["x"; 20_000].join(","),
                    vec!["SELECT id AS x FROM events"; 200].join(" UNION ALL ")
                ),
            ),
            (
                "a WHERE pushed into each of 100 UNION ALL arms",
                format!(
                    "SELECT DISTINCT x FROM ({}) WHERE x IN ({})",
                    vec!["SELECT id AS x FROM events"; 100].join(" UNION ALL "),
                    vec!["x"; 20_000].join(",")
                ),
            ),
            (
                "a constant propagated to 30,000 references",
                format!(
                    "SELECT id FROM events WHERE id = '{}' AND id IN ({})",
                    "a".repeat(50_000),
                    vec!["id"; 30_000].join(",")
                ),
            ),
            (
                "an alias named 600 times in ORDER BY",
                format!(
                    "SELECT substr('{}', id) AS a FROM events ORDER BY {}",
                    "x".repeat(200_000),
                    vec!["a"; 600].join(", ")
                ),
            ),
        ] {
            let e = lite(&sql).expect_err(what).to_string();
            assert!(e.contains("subqueries expand"), "{what}: {e}");
        }
        // A reporting pipeline: a 250-branch CASE in its first stage, and
        // the later stages naming only the small columns beside it.
        let regions: Vec<String> = (0..250)
            .map(|i| format!("WHEN v = {i} THEN 'region_{}'", i % 17))
            .collect();
        let pipeline = format!(
            "WITH base AS (SELECT id, t, v, CASE {} ELSE 'other' END AS region, t / 86400 AS day, v * 1.0 AS fv FROM events), \
             enriched AS (SELECT id, day, region, fv, fv * fv AS sq, fv - (fv / 10) * 10 AS rem, day % 7 AS dow, \
               CASE WHEN fv > 100 AND day > 3 THEN 1 ELSE 0 END AS flag FROM base), \
             summary AS (SELECT day, dow, region, count(*) AS n, sum(fv) AS s, sum(sq) AS ss, avg(rem) AS ar, \
               sum(flag) AS nf, min(fv) AS mn, max(fv) AS mx, sum(CASE WHEN flag = 1 THEN fv ELSE 0 END) AS sf \
               FROM enriched GROUP BY day, dow, region) \
             SELECT day, dow, region, n, s, ss, ar, nf, mn, mx, sf, s / n AS mean, ss / n - (s / n) * (s / n) AS var \
             FROM summary WHERE n > 0 ORDER BY day, region",
            regions.join(" ")
        );
        for sql in [
            pipeline,
            derived(3, 4),
            derived(8, 2),
            ctes(3, 3),
            "SELECT x, count(*) FROM (SELECT id AS x FROM events WHERE id > 10) GROUP BY x".to_owned(),
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) SELECT i FROM n".to_owned(),
            "DELETE FROM events WHERE id IN (SELECT id FROM (SELECT id, row_number() OVER (ORDER BY id DESC) AS r FROM events) WHERE r > 1000)".to_owned(),
        ] {
            lite(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn sqlite_cte_expansions_are_bounded() {
        let g = with(&[("events", &[Select, Delete])]);
        let lite = |sql: &str| check(Dialect::Sqlite, sql, &g);
        let chain = |n: usize| {
            let mut sql = "WITH a0 AS (SELECT 1 x)".to_owned();
            for i in 1..n {
                sql.push_str(&format!(", a{i} AS (SELECT x FROM a{})", i - 1));
            }
            sql + &format!(" SELECT x FROM a{}", n - 1)
        };
        let doubling = |n: usize, tail: &str| {
            let mut sql = "WITH a0 AS (SELECT 1 x)".to_owned();
            for i in 1..n {
                sql.push_str(&format!(
                    ", a{i} AS (SELECT p.x FROM a{0} p, a{0} q LIMIT 1)",
                    i - 1
                ));
            }
            sql + &format!(" SELECT x FROM a{}{tail}", n - 1)
        };
        let hidden = format!(
            "WITH c AS ({}) SELECT 1 FROM {}",
            doubling(16, ""),
            vec!["c"; 200].join(", ")
        );
        for (what, sql) in [
            ("a chain of 6,000", chain(6_000)),
            ("a chain of 1,000", chain(1_000)),
            ("a doubling chain of 22", doubling(22, "")),
            ("a doubling chain of 16", doubling(16, "")),
            ("a chain inside a CTE referenced 200 times", hidden),
        ] {
            assert!(sql.len() <= DEFAULT_MAX_STATEMENT_BYTES, "{what}");
            let e = lite(&sql).expect_err(what).to_string();
            assert!(e.contains("common table expressions expand"), "{what}: {e}");
        }
        for sql in [
            chain(10),
            doubling(6, ""),
            "WITH old AS (SELECT id FROM events WHERE id < 10) \
             DELETE FROM events WHERE id IN (SELECT id FROM old)"
                .to_owned(),
            "WITH a AS (SELECT id FROM events), b AS (SELECT id FROM a) \
             SELECT a.id FROM a JOIN b ON a.id = b.id"
                .to_owned(),
        ] {
            lite(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    /// The PostgreSQL injection payloads of `tests/data/payloads`: one per
    /// line of the lists, and the SQL code blocks and backquoted table
    /// cells of the PostgreSQL page.
    pub(crate) fn payloads() -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/payloads");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("tests/data/payloads") {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            match path.extension().and_then(|e| e.to_str()) {
                Some("txt") => out.extend(text.lines().map(str::to_owned)),
                Some("md") if path.file_name().is_some_and(|n| n != "README.md") => {
                    let mut in_sql = false;
                    for line in text.lines() {
                        if line.starts_with("```") {
                            in_sql = line.starts_with("```sql");
                        } else if in_sql {
                            out.push(line.to_owned());
                        } else if line.starts_with('|') {
                            let cells = line.replace("\\|", "\u{1}");
                            for cell in cells.split('|') {
                                let cell = cell.trim();
                                if let Some(code) =
                                    cell.strip_prefix('`').and_then(|c| c.strip_suffix('`'))
                                {
                                    out.push(code.replace('\u{1}', "|"));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        out.retain(|p| !p.trim().is_empty());
        out
    }

    /// A payload as a statement, and inside a `WHERE` clause as a string
    /// and as a number.
    pub(crate) fn forms(payload: &str) -> [String; 3] {
        [
            payload.to_owned(),
            format!("SELECT id, event_type FROM events WHERE event_type = '{payload}'"),
            format!("SELECT id, event_type FROM events WHERE id = {payload}"),
        ]
    }

    /// Whatever the guard lets through reads only the granted table (or a
    /// readable catalog) and calls only allowed functions, by libpg_query's
    /// own summary of the statement.
    #[test]
    fn injection_payloads_pass_only_as_harmless_statements() {
        let g = with(&[("events", &[Select])]);
        let payloads = payloads();
        assert!(payloads.len() > 700, "{}", payloads.len());
        let (mut passed, mut stopped) = (0, 0);
        let mut failures = Vec::new();
        for payload in &payloads {
            for sql in forms(payload) {
                if pg(&sql, &g).is_err() {
                    stopped += 1;
                    continue;
                }
                passed += 1;
                let (tables, functions) = postgres_references(&sql).expect("it parsed");
                for t in tables {
                    if !same_table(&t, "events") && !readable_catalog(Dialect::Postgres, &t) {
                        failures.push(format!("{sql:?} reads {t}"));
                    }
                }
                for f in functions {
                    if !function_allowed(&f) {
                        failures.push(format!("{sql:?} calls {f}"));
                    }
                }
            }
        }
        assert!(
            passed > 50 && stopped > 1000,
            "{passed} passed, {stopped} stopped"
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
