//! Looking at the database before anything changes: whether the
//! reference tables are there, and every check of their shape and data,
//! each refusal naming the object and what to do. A shape that passes is
//! handed to [`super::plan`] for its statements.

use super::plan::plan;
use super::schema::{
    ADDED_RUN_COLUMNS, CONFIG, CONFIG_COLUMNS, FUNCTION, Found, INDEXES, Kind, RUN_COLUMNS, RUNS,
    RefColumn, columns,
};
use super::{ADOPTED_VERSION, AdoptError, AdoptOptions, Finding, Refusal, db, scalar};
use crate::store::{query, query_scalar};
use sqlx::Row as _;
use sqlx::postgres::PgConnection;

/// Looks at the database and, if the reference tables are there and our
/// migrations are not, plans their adoption. With `lock`, first locks the
/// two tables so that nothing changes between looking and adopting.
pub(super) async fn inspect(
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
        let ours: Vec<i64> = crate::store::Store::postgres_migrator()
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
                let sample = sample_keys(conn, table, key, c.name, Unfit::Null).await?;
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
                let sample = sample_keys(conn, table, key, c.name, Unfit::Infinite).await?;
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

/// A value of a column the new schema cannot take as it is.
#[derive(Clone, Copy)]
enum Unfit {
    Null,
    /// `infinity` or `-infinity` in a time column.
    Infinite,
}

/// The keys of the first rows of `table` whose `column` is `unfit`, one
/// more than [`sample_list`] shows so that it can say there are more.
async fn sample_keys(
    conn: &mut PgConnection,
    table: &str,
    key: &str,
    column: &str,
    unfit: Unfit,
) -> Result<Vec<String>, AdoptError> {
    let (condition, what) = match unfit {
        Unfit::Null => (format!("{column} IS NULL"), "NULLs"),
        Unfit::Infinite => (format!("NOT isfinite({column})"), "infinite values"),
    };
    query_scalar(&format!(
        "SELECT {key}::text FROM {table} WHERE {condition} ORDER BY {key} LIMIT 6"
    ))
    .fetch_all(&mut *conn)
    .await
    .map_err(db(format!("checking {table}.{column} for {what}")))
}

/// "5", "5, 6" or "5, 6, 7, 8, 9 and more".
fn sample_list(sample: &[String]) -> String {
    if sample.len() > 5 {
        format!("{} and more", sample[..5].join(", "))
    } else {
        sample.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_lists_stop_at_five() {
        let s: Vec<String> = (1..=6).map(|i| i.to_string()).collect();
        assert_eq!(sample_list(&s[..2]), "1, 2");
        assert_eq!(sample_list(&s), "1, 2, 3, 4, 5 and more");
    }
}
