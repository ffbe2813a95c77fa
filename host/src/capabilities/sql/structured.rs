//! The `sql` calls that take names instead of SQL text: partition create,
//! attach, drop and detach, `VACUUM` and `ANALYZE`. PostgreSQL lets only a table's
//! owner run these, so the host never runs a task's text for them: it
//! checks the grant and the names, asks the catalog what the names denote
//! (is the parent partitioned, is the partition a partition of exactly that
//! parent, who owns it), has the database quote every name and value into
//! the statement it builds, and runs that statement as the owner (`SET
//! ROLE`, when the login role is a member of the owning role).

use super::connections::Pool;
use super::guard::{Checked, Grants, Kind};
use super::{Budget, Failure, Prepared, SqlCapability, excerpt};
use crate::bindings::housekeeper::task::sql as wit;
use crate::capabilities::output::{Level, Output};
use crate::manifest::SqlVerb;
use sqlx::pool::PoolConnection;
use sqlx::{Connection as _, Executor, PgConnection, Postgres, Row, SqlitePool};
use std::time::Duration;

/// PostgreSQL's longest name (NAMEDATALEN - 1); a longer one would be cut.
const MAX_NAME: usize = 63;

/// One structured call, as the guest made it.
pub(super) enum Action {
    Create {
        parent: wit::Relation,
        partition: wit::Relation,
        bounds: wit::PartitionBounds,
    },
    Attach {
        parent: wit::Relation,
        partition: wit::Relation,
        bounds: wit::PartitionBounds,
    },
    Drop {
        parent: wit::Relation,
        partition: wit::Relation,
    },
    Detach {
        parent: wit::Relation,
        partition: wit::Relation,
        concurrently: bool,
    },
    Vacuum {
        table: Option<wit::Relation>,
        options: wit::VacuumOptions,
    },
    Analyze {
        table: Option<wit::Relation>,
    },
}

impl Action {
    /// The table whose grant decides (`None`: the whole database, granted
    /// through `*`) and the verbs it needs. An attached table needs
    /// `create_partition` as well, checked once the catalog has resolved it.
    fn grant(&self) -> (Option<&wit::Relation>, Vec<SqlVerb>) {
        match self {
            Action::Create { parent, .. } | Action::Attach { parent, .. } => {
                (Some(parent), vec![SqlVerb::CreatePartition])
            }
            Action::Drop { parent, .. } | Action::Detach { parent, .. } => {
                (Some(parent), vec![SqlVerb::DropPartition])
            }
            Action::Vacuum { table, options } => {
                let mut verbs = vec![SqlVerb::Vacuum];
                if options.analyze {
                    verbs.push(SqlVerb::Analyze);
                }
                (table.as_ref(), verbs)
            }
            Action::Analyze { table } => (table.as_ref(), vec![SqlVerb::Analyze]),
        }
    }

    /// PostgreSQL cannot run it inside a transaction.
    fn outside_transaction(&self) -> bool {
        matches!(
            self,
            Action::Vacuum { .. }
                | Action::Detach {
                    concurrently: true,
                    ..
                }
        )
    }

    /// A dry-run records it instead of running it and rolling it back.
    fn recorded_in_dry_run(&self) -> bool {
        matches!(self, Action::Analyze { .. }) || self.outside_transaction()
    }

    /// The call in words, for the output.
    fn describe(&self) -> String {
        let database = |t: &Option<wit::Relation>| match t {
            Some(t) => format!("`{}`", display(t)),
            None => "the database".to_owned(),
        };
        match self {
            Action::Create {
                parent, partition, ..
            } => format!(
                "create-partition `{}` of `{}`",
                display(partition),
                display(parent)
            ),
            Action::Attach {
                parent, partition, ..
            } => format!(
                "attach-partition `{}` to `{}`",
                display(partition),
                display(parent)
            ),
            Action::Drop { parent, partition } => format!(
                "drop-partition `{}` of `{}`",
                display(partition),
                display(parent)
            ),
            Action::Detach {
                parent,
                partition,
                concurrently,
            } => format!(
                "detach-partition `{}` of `{}`{}",
                display(partition),
                display(parent),
                if *concurrently { " concurrently" } else { "" }
            ),
            Action::Vacuum { table, .. } => format!("vacuum {}", database(table)),
            Action::Analyze { table } => format!("analyze {}", database(table)),
        }
    }

    /// Refuses names and values before anything reaches the database.
    fn validate(&self) -> Result<(), String> {
        let relations: Vec<(&str, &wit::Relation)> = match self {
            Action::Create {
                parent, partition, ..
            }
            | Action::Attach {
                parent, partition, ..
            }
            | Action::Drop { parent, partition }
            | Action::Detach {
                parent, partition, ..
            } => vec![("parent", parent), ("partition", partition)],
            Action::Vacuum { table, .. } | Action::Analyze { table } => {
                table.iter().map(|t| ("table", t)).collect()
            }
        };
        for (role, relation) in relations {
            if let Some(schema) = &relation.schema {
                check_name(&format!("the {role}'s schema"), schema)?;
            }
            check_name(&format!("the {role}'s name"), &relation.name)?;
        }
        if let Action::Create { bounds, .. } | Action::Attach { bounds, .. } = self {
            literals(bounds)?;
        }
        Ok(())
    }
}

/// A name as a grant and a denial spell it: `events`, `app.events`.
fn display(relation: &wit::Relation) -> String {
    match &relation.schema {
        Some(schema) => format!("{schema}.{}", relation.name),
        None => relation.name.clone(),
    }
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err(format!("{what} is empty"))
    } else if name.contains('\0') {
        Err(format!("{what} {name:?} contains NUL"))
    } else if name.len() > MAX_NAME {
        Err(format!(
            "{what} {name:?} is {} bytes long; PostgreSQL keeps at most {MAX_NAME}",
            name.len()
        ))
    } else {
        Ok(())
    }
}

/// Whether `grants` give `verb` on `table` (`None`: the whole database).
fn allowed(grants: &Grants, table: Option<&wit::Relation>, verb: SqlVerb) -> bool {
    let everything = || grants.tables_with(verb).iter().any(|t| t == "*");
    match table {
        None => everything(),
        // A grant's key splits on dots, so it cannot name a schema or a
        // table whose name holds one: only `*` covers those.
        Some(t) if t.name.contains('.') || t.schema.as_deref().is_some_and(|s| s.contains('.')) => {
            everything()
        }
        Some(t) => grants.allows(&display(t), verb),
    }
}

/// The first verb `grants` lack for `table`, as a denial.
fn denied(
    grants: &Grants,
    table: Option<&wit::Relation>,
    verbs: &[SqlVerb],
) -> Option<wit::SqlError> {
    let verb = verbs.iter().find(|v| !allowed(grants, table, **v))?;
    Some(wit::SqlError::AccessDenied(wit::Denial {
        table: table.map(display).unwrap_or_else(|| "*".to_owned()),
        verb: verb.as_str().to_owned(),
    }))
}

/// Every value of `bounds` in order, as text for the database to quote
/// (`None`: `NULL`).
fn literals(bounds: &wit::PartitionBounds) -> Result<Vec<Option<String>>, String> {
    let values: Vec<&wit::Value> = match bounds {
        wit::PartitionBounds::Range(range) => {
            if range.from.is_empty() || range.to.is_empty() {
                return Err(
                    "a range partition needs a bound for each key column in both `from` and `to`"
                        .into(),
                );
            }
            range
                .from
                .iter()
                .chain(&range.to)
                .filter_map(|b| match b {
                    wit::RangeBound::Value(v) => Some(v),
                    wit::RangeBound::Minvalue | wit::RangeBound::Maxvalue => None,
                })
                .collect()
        }
        wit::PartitionBounds::ValuesIn(values) => {
            if values.is_empty() {
                return Err("a list partition needs at least one value".into());
            }
            values.iter().collect()
        }
        wit::PartitionBounds::Hash(_) | wit::PartitionBounds::Default => Vec::new(),
    };
    values.into_iter().map(literal).collect()
}

/// A value as the text of a literal PostgreSQL converts to the key's type.
fn literal(value: &wit::Value) -> Result<Option<String>, String> {
    Ok(Some(match value {
        wit::Value::Null => return Ok(None),
        wit::Value::Boolean(b) => b.to_string(),
        wit::Value::Integer(i) => i.to_string(),
        wit::Value::Float(f) if f.is_nan() => "NaN".into(),
        wit::Value::Float(f) if f.is_infinite() => {
            if *f > 0.0 { "Infinity" } else { "-Infinity" }.into()
        }
        wit::Value::Float(f) => f.to_string(),
        wit::Value::Text(s) | wit::Value::Json(s) => {
            if s.contains('\0') {
                return Err(format!("the bound {s:?} contains NUL"));
            }
            s.clone()
        }
        wit::Value::Bytes(b) => format!("\\x{}", hex::encode(b)),
        wit::Value::Timestamp(ms) => chrono::DateTime::from_timestamp_millis(*ms)
            .ok_or_else(|| format!("the timestamp bound {ms} is out of range"))?
            .format("%Y-%m-%d %H:%M:%S%.3f+00")
            .to_string(),
    }))
}

/// `FOR VALUES …` of `bounds`, with `quoted` the literals of
/// [`literals`] as the database quoted them, in the same order.
fn for_values(bounds: &wit::PartitionBounds, quoted: &[String]) -> String {
    let mut quoted = quoted.iter();
    let mut next = || quoted.next().cloned().unwrap_or_default();
    match bounds {
        wit::PartitionBounds::Range(range) => {
            let mut side = |bounds: &[wit::RangeBound]| {
                bounds
                    .iter()
                    .map(|b| match b {
                        wit::RangeBound::Value(_) => next(),
                        wit::RangeBound::Minvalue => "MINVALUE".into(),
                        wit::RangeBound::Maxvalue => "MAXVALUE".into(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let from = side(&range.from);
            let to = side(&range.to);
            format!("FOR VALUES FROM ({from}) TO ({to})")
        }
        wit::PartitionBounds::ValuesIn(values) => format!(
            "FOR VALUES IN ({})",
            values.iter().map(|_| next()).collect::<Vec<_>>().join(", ")
        ),
        wit::PartitionBounds::Hash(h) => format!(
            "FOR VALUES WITH (MODULUS {}, REMAINDER {})",
            h.modulus, h.remainder
        ),
        wit::PartitionBounds::Default => "DEFAULT".into(),
    }
}

/// `VACUUM`'s option list, empty when none is set.
fn vacuum_options(options: &wit::VacuumOptions) -> String {
    let set: Vec<&str> = [
        (options.full, "FULL"),
        (options.freeze, "FREEZE"),
        (options.analyze, "ANALYZE"),
        (options.skip_locked, "SKIP_LOCKED"),
    ]
    .into_iter()
    .filter_map(|(on, word)| on.then_some(word))
    .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!(" ({})", set.join(", "))
    }
}

/// A statement the host built, ready to run.
struct Plan {
    statement: String,
    /// The role to run it as, when the login role is not the owner.
    role: Option<String>,
}

/// What a call did.
pub(super) struct Done {
    statement: String,
    role: Option<String>,
    /// `false`: recorded in a dry-run, not run.
    ran: bool,
}

impl SqlCapability {
    /// Runs one structured call: grant, names, then the database.
    pub(super) async fn structured(
        &mut self,
        action: Action,
    ) -> wasmtime::Result<Result<(), wit::SqlError>> {
        let access = match self.access() {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        let (table, verbs) = action.grant();
        if let Some(denial) = denied(&access.grants, table, &verbs) {
            let call = self.call(&action, None);
            return self.fail(Failure::Guest(denial), &[call]);
        }
        if let Err(reason) = action.validate() {
            let call = self.call(&action, None);
            return self.fail(Failure::Guest(wit::SqlError::Refused(reason)), &[call]);
        }
        let connection = access.connection.clone();
        let grants = access.grants.clone();
        let budget = match self.budget() {
            Ok(b) => b,
            Err(f) => {
                let call = self.call(&action, None);
                return self.fail(f, &[call]);
            }
        };
        let mut statement = None;
        let call = async {
            match &connection.pool {
                Pool::Postgres(pool) => {
                    let context = Context {
                        grants: &grants,
                        output: &self.output,
                        dry_run: self.dry_run,
                        budget,
                        parents: Default::default(),
                    };
                    postgres(pool, &action, &context, &mut statement).await
                }
                Pool::Sqlite(pool) => sqlite(pool, &action, self.dry_run).await,
            }
        };
        // As for statements: the database enforces the budget; this also
        // bounds waiting for a connection.
        let grace = Duration::from_millis(250);
        let result = match tokio::time::timeout(budget.limit + grace, call).await {
            Ok(result) => result,
            Err(_) => Err(budget.expired()),
        };
        match result {
            Ok(done) => {
                self.record_done(&done);
                Ok(Ok(()))
            }
            Err(failure) => {
                let call = self.call(&action, statement);
                self.fail(failure, &[call])
            }
        }
    }

    /// The call as a statement for [`SqlCapability::fail`]'s output line:
    /// the SQL when the host got as far as building it.
    fn call(&self, action: &Action, statement: Option<String>) -> Prepared {
        Prepared {
            sql: statement.unwrap_or_else(|| action.describe()),
            params: Vec::new(),
            checked: Checked {
                kind: if action.recorded_in_dry_run() {
                    Kind::Maintenance
                } else {
                    Kind::Change
                },
                verb: action.grant().1[0],
            },
        }
    }

    fn record_done(&self, done: &Done) {
        let how = match (done.ran, self.dry_run) {
            (false, _) => " (dry-run, not run)",
            (true, true) => " (dry-run, rolled back)",
            (true, false) => "",
        };
        let role = match &done.role {
            Some(role) => format!(" as role `{role}`"),
            None => String::new(),
        };
        self.output.log(
            Level::Info,
            &format!("sql{how}: {}{role}", excerpt(&done.statement)),
        );
    }
}

/// Most calls in one `create-partitions`, `drop-partitions` or
/// `detach-partitions`.
const MAX_BATCH: usize = 10_000;

/// Per call of a batch: what it did, or why it failed and the statement
/// when the host got as far as building it.
type Item = Result<Done, (Failure, Option<String>)>;

impl SqlCapability {
    /// Several structured calls on one parent: on PostgreSQL in one
    /// transaction, each under a savepoint, so that one that fails is
    /// rolled back alone; elsewhere one call each.
    pub(super) async fn structured_many(
        &mut self,
        actions: Vec<Action>,
    ) -> wasmtime::Result<Result<Vec<Result<(), wit::SqlError>>, wit::SqlError>> {
        if actions.len() > MAX_BATCH {
            return Ok(Err(wit::SqlError::Refused(format!(
                "{} partitions in one call; at most {MAX_BATCH}",
                actions.len()
            ))));
        }
        let access = match self.access() {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        let pool = match &access.connection.pool {
            Pool::Postgres(pool) if !actions.iter().any(Action::outside_transaction) => {
                pool.clone()
            }
            _ => {
                let mut out = Vec::with_capacity(actions.len());
                for action in actions {
                    out.push(self.structured(action).await?);
                }
                return Ok(Ok(out));
            }
        };
        let grants = access.grants.clone();
        let budget = match self.budget() {
            Ok(b) => b,
            Err(f) => return self.fail(f, &[]),
        };
        // What needs no database first, per call.
        let mut results: Vec<Option<Result<(), wit::SqlError>>> = Vec::new();
        let mut todo: Vec<(usize, &Action)> = Vec::new();
        for (index, action) in actions.iter().enumerate() {
            let (table, verbs) = action.grant();
            let early = match denied(&grants, table, &verbs) {
                Some(denial) => Some(denial),
                None => action.validate().err().map(wit::SqlError::Refused),
            };
            match early {
                Some(error) => {
                    let call = self.call(action, None);
                    results.push(Some(self.fail(Failure::Guest(error), &[call])?));
                }
                None => {
                    results.push(None);
                    todo.push((index, action));
                }
            }
        }
        if !todo.is_empty() {
            let cx = Context {
                grants: &grants,
                output: &self.output,
                dry_run: self.dry_run,
                budget,
                parents: Default::default(),
            };
            let run = todo.iter().map(|(_, a)| *a).collect::<Vec<_>>();
            let grace = Duration::from_millis(250);
            let items =
                match tokio::time::timeout(budget.limit + grace, postgres_many(&pool, &run, &cx))
                    .await
                {
                    Err(_) => return self.fail(budget.expired(), &[]),
                    Ok(Err(failure)) => return self.fail(failure, &[]),
                    Ok(Ok(items)) => items,
                };
            for ((index, action), item) in todo.iter().zip(items) {
                results[*index] = Some(match item {
                    Ok(done) => {
                        self.record_done(&done);
                        Ok(())
                    }
                    Err((failure, statement)) => {
                        let call = self.call(action, statement);
                        self.fail(failure, &[call])?
                    }
                });
            }
        }
        Ok(Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Ok(())))
            .collect()))
    }
}

/// Runs `actions` in one transaction, each under a savepoint: the checks
/// and the statement of each as for one call, and one that fails rolled
/// back alone. `Err` (nothing changed) when the transaction itself failed
/// or the run's deadline came.
async fn postgres_many(
    pool: &sqlx::PgPool,
    actions: &[&Action],
    cx: &Context<'_>,
) -> Result<Vec<Item>, Failure> {
    let mut conn = pool.acquire().await.map_err(cx.fail())?;
    // The value is a number of the host's own, not guest input.
    let millis = cx.budget.millis();
    let mut tx = (*conn)
        .begin_with(format!(
            "BEGIN; SET LOCAL statement_timeout = {millis}; SET LOCAL lock_timeout = {millis}"
        ))
        .await
        .map_err(cx.fail())?;
    let mut out = Vec::with_capacity(actions.len());
    for action in actions {
        let plan = match cx.plan(&mut tx, action).await {
            Ok(plan) => plan,
            // A database error while checking leaves the transaction
            // aborted: the call as a whole fails.
            Err(f @ (Failure::Deadline | Failure::Guest(wit::SqlError::Database(_)))) => {
                return Err(f);
            }
            Err(f) => {
                out.push(Err((f, None)));
                continue;
            }
        };
        // One round trip: the savepoint, the owner's role, the statement
        // (built by the host), back to the login role.
        let role = plan
            .role
            .as_deref()
            .map(|r| format!("SET LOCAL ROLE {}; ", super::roles::quote_ident(r)))
            .unwrap_or_default();
        let batch = format!(
            "SAVEPOINT housekeeper_call; {role}{}; RESET ROLE; RELEASE SAVEPOINT housekeeper_call",
            plan.statement
        );
        match tx.execute(sqlx::raw_sql(&batch)).await {
            Ok(_) => out.push(Ok(Done {
                statement: plan.statement,
                role: plan.role,
                ran: true,
            })),
            Err(e) => {
                let failure = super::postgres::error(e, cx.budget);
                if matches!(failure, Failure::Deadline) {
                    return Err(failure);
                }
                tx.execute(sqlx::raw_sql(
                    "ROLLBACK TO SAVEPOINT housekeeper_call; RELEASE SAVEPOINT housekeeper_call",
                ))
                .await
                .map_err(cx.fail())?;
                out.push(Err((failure, Some(plan.statement))));
            }
        }
    }
    if cx.dry_run {
        tx.rollback().await.map_err(cx.fail())?;
    } else {
        tx.commit().await.map_err(cx.fail())?;
    }
    Ok(out)
}

/// What a PostgreSQL call needs besides the action.
struct Context<'a> {
    grants: &'a Grants,
    output: &'a Output,
    dry_run: bool,
    budget: Budget,
    /// Parents already resolved in this transaction (a list call names one
    /// parent for every partition), by name as given and verb.
    parents: std::sync::Mutex<Vec<(ParentKey, Found)>>,
}

type ParentKey = (Option<String>, String, SqlVerb);

/// What the catalog says about a relation.
#[derive(Clone)]
struct Found {
    oid: i64,
    schema: String,
    name: String,
    kind: String,
    is_partition: bool,
    parent: Option<i64>,
    owner: String,
    /// `"schema"."name"`, quoted by the database.
    quoted: String,
    /// The login role owns it.
    owns: bool,
    /// The login role may act as the owner (a member, or a superuser).
    may_become: bool,
    owner_quoted: String,
    login_quoted: String,
}

impl Found {
    fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    fn relation(&self) -> wit::Relation {
        wit::Relation {
            schema: Some(self.schema.clone()),
            name: self.name.clone(),
        }
    }
}

/// Looks a relation up by its exact names (`schema` given, or else
/// `default_schema`, or else the search path).
const FIND: &str = "
SELECT c.oid::bigint, n.nspname::text, c.relname::text, c.relkind::text, c.relispartition,
       (SELECT i.inhparent::bigint FROM pg_inherits i WHERE i.inhrelid = c.oid
        ORDER BY i.inhseqno LIMIT 1),
       r.rolname::text, format('%I.%I', n.nspname, c.relname),
       r.rolname = session_user, pg_has_role(session_user, c.relowner, 'MEMBER'),
       quote_ident(r.rolname), quote_ident(session_user)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_roles r ON r.oid = c.relowner
WHERE c.oid = to_regclass(CASE WHEN $1::text IS NULL THEN quote_ident($2)
                               ELSE quote_ident($1) || '.' || quote_ident($2) END)";

async fn find(
    conn: &mut PgConnection,
    relation: &wit::Relation,
    default_schema: Option<&str>,
) -> Result<Option<Found>, sqlx::Error> {
    let schema = relation.schema.as_deref().or(default_schema);
    let Some(row) = sqlx::query(FIND)
        .bind(schema)
        .bind(&relation.name)
        .fetch_optional(conn)
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(Found {
        oid: row.try_get(0)?,
        schema: row.try_get(1)?,
        name: row.try_get(2)?,
        kind: row.try_get(3)?,
        is_partition: row.try_get(4)?,
        parent: row.try_get(5)?,
        owner: row.try_get(6)?,
        quoted: row.try_get(7)?,
        owns: row.try_get(8)?,
        may_become: row.try_get(9)?,
        owner_quoted: row.try_get(10)?,
        login_quoted: row.try_get(11)?,
    }))
}

fn refused(reason: String) -> Failure {
    Failure::Guest(wit::SqlError::Refused(reason))
}

impl Context<'_> {
    fn fail(&self) -> impl Fn(sqlx::Error) -> Failure + '_ {
        |e| super::postgres::error(e, self.budget)
    }

    /// The relation named, which must exist.
    async fn existing(
        &self,
        conn: &mut PgConnection,
        relation: &wit::Relation,
        default_schema: Option<&str>,
    ) -> Result<Found, Failure> {
        let schema = relation.schema.as_deref().or(default_schema);
        find(conn, relation, default_schema)
            .await
            .map_err(self.fail())?
            .ok_or_else(|| {
                refused(match schema {
                    Some(schema) => format!("`{schema}.{}` does not exist", relation.name),
                    None => format!("`{}` does not exist on the search path", relation.name),
                })
            })
    }

    /// The grant again, on the name the catalog resolved: a name looked
    /// up on the search path must still be the table the grant means.
    fn regrant(&self, found: &Found, verbs: &[SqlVerb]) -> Result<(), Failure> {
        match denied(self.grants, Some(&found.relation()), verbs) {
            Some(denial) => Err(Failure::Guest(denial)),
            None => Ok(()),
        }
    }

    /// A partitioned table the grant covers.
    async fn parent(
        &self,
        conn: &mut PgConnection,
        parent: &wit::Relation,
        verb: SqlVerb,
    ) -> Result<Found, Failure> {
        let key = (parent.schema.clone(), parent.name.clone(), verb);
        let known = self
            .parents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, found)| found.clone());
        if let Some(found) = known {
            return Ok(found);
        }
        let found = self.existing(conn, parent, None).await?;
        if found.kind != "p" {
            return Err(refused(format!(
                "`{}` is not a partitioned table",
                found.display()
            )));
        }
        self.regrant(&found, &[verb])?;
        self.parents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key, found.clone()));
        Ok(found)
    }

    /// `partition`, which the catalog must say is a partition of exactly
    /// `parent`.
    async fn partition_of(
        &self,
        conn: &mut PgConnection,
        parent: &Found,
        partition: &wit::Relation,
    ) -> Result<Found, Failure> {
        let found = self.existing(conn, partition, Some(&parent.schema)).await?;
        let why = if found.oid == parent.oid {
            Some("it is the parent itself".to_owned())
        } else if !found.is_partition {
            Some("it is not a partition".to_owned())
        } else if found.parent != Some(parent.oid) {
            Some(format!(
                "it is a partition of another table, not of `{}`",
                parent.display()
            ))
        } else {
            None
        };
        if let Some(why) = why {
            self.output.log(
                Level::Warn,
                &format!(
                    "sql access denied: `{}` is not a partition of `{}`: {why}",
                    found.display(),
                    parent.display()
                ),
            );
            return Err(Failure::Guest(wit::SqlError::AccessDenied(wit::Denial {
                table: found.display(),
                verb: SqlVerb::DropPartition.as_str().to_owned(),
            })));
        }
        Ok(found)
    }

    /// The role a statement on `found` runs as: none when the login role
    /// owns it, the owner when the login role may act as it.
    fn owner(&self, found: &Found, what: &str) -> Result<Option<String>, Failure> {
        if found.owns {
            Ok(None)
        } else if found.may_become {
            Ok(Some(found.owner.clone()))
        } else {
            Err(refused(format!(
                "`{}` is owned by role `{}`, and PostgreSQL lets only its owner run {what}; \
                 let the host act as the owner with `GRANT {} TO {}`",
                found.display(),
                found.owner,
                found.owner_quoted,
                found.login_quoted
            )))
        }
    }

    /// Checks the catalog and builds the statement.
    async fn plan(&self, conn: &mut PgConnection, action: &Action) -> Result<Plan, Failure> {
        match action {
            Action::Create {
                parent,
                partition,
                bounds,
            } => {
                let parent = self.parent(conn, parent, SqlVerb::CreatePartition).await?;
                // A partition lives beside its parent: a grant on the parent
                // is no grant to name tables in other schemas.
                if let Some(schema) = &partition.schema
                    && schema != &parent.schema
                {
                    return Err(Failure::Guest(wit::SqlError::Refused(format!(
                        "a partition is created in its parent's schema `{}`, not `{schema}`",
                        parent.schema
                    ))));
                }
                let role = self.owner(&parent, "CREATE TABLE … PARTITION OF")?;
                let literals = literals(bounds).map_err(refused)?;
                let (name, quoted): (String, Vec<String>) = sqlx::query_as(
                    "SELECT format('%I.%I', $1::text, $2::text),
                            ARRAY(SELECT quote_nullable(v)
                                  FROM unnest($3::text[]) WITH ORDINALITY AS u(v, i) ORDER BY i)",
                )
                .bind(partition.schema.as_deref().unwrap_or(&parent.schema))
                .bind(&partition.name)
                .bind(literals)
                .fetch_one(&mut *conn)
                .await
                .map_err(self.fail())?;
                Ok(Plan {
                    statement: format!(
                        "CREATE TABLE {name} PARTITION OF {} {}",
                        parent.quoted,
                        for_values(bounds, &quoted)
                    ),
                    role,
                })
            }
            Action::Attach {
                parent,
                partition,
                bounds,
            } => {
                let parent = self.parent(conn, parent, SqlVerb::CreatePartition).await?;
                if let Some(schema) = &partition.schema
                    && schema != &parent.schema
                {
                    return Err(refused(format!(
                        "a partition is attached in its parent's schema `{}`, not `{schema}`",
                        parent.schema
                    )));
                }
                let table = self.existing(conn, partition, Some(&parent.schema)).await?;
                // Its rows become the parent's: the grant must name it too.
                self.regrant(&table, &[SqlVerb::CreatePartition])?;
                self.attachable(conn, &parent, &table).await?;
                let role = self.owner(&parent, "ALTER TABLE … ATTACH PARTITION")?;
                let literals = literals(bounds).map_err(refused)?;
                let quoted: Vec<String> = sqlx::query_scalar(
                    "SELECT ARRAY(SELECT quote_nullable(v)
                                  FROM unnest($1::text[]) WITH ORDINALITY AS u(v, i) ORDER BY i)",
                )
                .bind(literals)
                .fetch_one(&mut *conn)
                .await
                .map_err(self.fail())?;
                Ok(Plan {
                    statement: format!(
                        "ALTER TABLE {} ATTACH PARTITION {} {}",
                        parent.quoted,
                        table.quoted,
                        for_values(bounds, &quoted)
                    ),
                    role,
                })
            }
            Action::Drop { parent, partition } => {
                let parent = self.parent(conn, parent, SqlVerb::DropPartition).await?;
                let partition = self.partition_of(conn, &parent, partition).await?;
                Ok(Plan {
                    statement: format!("DROP TABLE {}", partition.quoted),
                    role: self.owner(&partition, "DROP TABLE")?,
                })
            }
            Action::Detach {
                parent,
                partition,
                concurrently,
            } => {
                let parent = self.parent(conn, parent, SqlVerb::DropPartition).await?;
                let partition = self.partition_of(conn, &parent, partition).await?;
                Ok(Plan {
                    statement: format!(
                        "ALTER TABLE {} DETACH PARTITION {}{}",
                        parent.quoted,
                        partition.quoted,
                        if *concurrently { " CONCURRENTLY" } else { "" }
                    ),
                    role: self.owner(&parent, "ALTER TABLE … DETACH PARTITION")?,
                })
            }
            Action::Vacuum { table, options } => {
                let options = vacuum_options(options);
                self.maintained(conn, table.as_ref(), &format!("VACUUM{options}"), action)
                    .await
            }
            Action::Analyze { table } => {
                self.maintained(conn, table.as_ref(), "ANALYZE", action)
                    .await
            }
        }
    }

    /// Refuses to attach `table` to `parent` unless it is a plain table
    /// (or a partitioned one) of its own, which the role attaching it as
    /// the parent's owner also owns.
    async fn attachable(
        &self,
        conn: &mut PgConnection,
        parent: &Found,
        table: &Found,
    ) -> Result<(), Failure> {
        let (inherits_from, has_children, owner_may): (Option<String>, bool, bool) =
            sqlx::query_as(
                "SELECT (SELECT format('%s.%s', n.nspname, c.relname)
                         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhparent
                         JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE i.inhrelid = $1::oid ORDER BY i.inhseqno LIMIT 1),
                        EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = $1::oid),
                        pg_has_role($2::text::name, $3::text::name, 'USAGE')",
            )
            .bind(table.oid)
            .bind(&parent.owner)
            .bind(&table.owner)
            .fetch_one(&mut *conn)
            .await
            .map_err(self.fail())?;
        let why = if table.oid == parent.oid {
            Some("it is the parent itself".to_owned())
        } else if !matches!(table.kind.as_str(), "r" | "p") {
            Some("it is not a table".to_owned())
        } else if table.is_partition {
            Some(format!(
                "it is already a partition of `{}`",
                inherits_from.unwrap_or_default()
            ))
        } else if let Some(other) = inherits_from {
            Some(format!("it inherits from `{other}`"))
        } else if has_children && table.kind == "r" {
            Some("other tables inherit from it".to_owned())
        } else if !owner_may {
            Some(format!(
                "it is owned by role `{}`, and PostgreSQL lets only a role owning both tables attach one to the other; `{}` is owned by `{}`: ALTER TABLE {} OWNER TO {}",
                table.owner,
                parent.display(),
                parent.owner,
                table.quoted,
                parent.owner_quoted
            ))
        } else {
            None
        };
        match why {
            Some(why) => Err(refused(format!(
                "`{}` cannot be attached to `{}`: {why}",
                table.display(),
                parent.display()
            ))),
            None => Ok(()),
        }
    }

    /// `command` on `table`, run as its owner, or on the whole database, run
    /// as the login role (which covers the tables it may maintain).
    async fn maintained(
        &self,
        conn: &mut PgConnection,
        table: Option<&wit::Relation>,
        command: &str,
        action: &Action,
    ) -> Result<Plan, Failure> {
        let Some(table) = table else {
            return Ok(Plan {
                statement: command.to_owned(),
                role: None,
            });
        };
        let found = self.existing(conn, table, None).await?;
        if !matches!(found.kind.as_str(), "r" | "p" | "m") {
            return Err(refused(format!("`{}` is not a table", found.display())));
        }
        self.regrant(&found, &action.grant().1)?;
        let word = command.split(' ').next().unwrap_or(command);
        Ok(Plan {
            statement: format!("{command} {}", found.quoted),
            role: self.owner(&found, word)?,
        })
    }
}

/// Runs `action` on PostgreSQL. `statement` gets the statement once built,
/// for the output if it then fails.
async fn postgres(
    pool: &sqlx::PgPool,
    action: &Action,
    cx: &Context<'_>,
    statement: &mut Option<String>,
) -> Result<Done, Failure> {
    let mut conn = pool.acquire().await.map_err(cx.fail())?;
    if action.outside_transaction() {
        return session(conn, action, cx, statement).await;
    }
    // The value is a number of the host's own, not guest input.
    let millis = cx.budget.millis();
    let mut tx = (*conn)
        .begin_with(format!(
            "BEGIN; SET LOCAL statement_timeout = {millis}; SET LOCAL lock_timeout = {millis}"
        ))
        .await
        .map_err(cx.fail())?;
    let plan = cx.plan(&mut tx, action).await?;
    *statement = Some(plan.statement.clone());
    if cx.dry_run && action.recorded_in_dry_run() {
        tx.rollback().await.map_err(cx.fail())?;
        return Ok(Done {
            statement: plan.statement,
            role: plan.role,
            ran: false,
        });
    }
    if let Some(role) = &plan.role {
        sqlx::query("SELECT set_config('role', $1, true)")
            .bind(role)
            .execute(&mut *tx)
            .await
            .map_err(cx.fail())?;
    }
    tx.execute(sqlx::raw_sql(&plan.statement))
        .await
        .map_err(cx.fail())?;
    if cx.dry_run {
        tx.rollback().await.map_err(cx.fail())?;
    } else {
        tx.commit().await.map_err(cx.fail())?;
    }
    Ok(Done {
        statement: plan.statement,
        role: plan.role,
        ran: true,
    })
}

/// A pooled connection whose session settings (role, time limits) the host
/// changed: closed instead of going back to the pool unless they were
/// reset, so no later call runs as another role. Dropping the call half way
/// (its time-out) closes it too.
struct Session {
    conn: PoolConnection<Postgres>,
    reset: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.reset {
            self.conn.close_on_drop();
        }
    }
}

/// `VACUUM` and `DETACH … CONCURRENTLY`, which cannot run in a
/// transaction: the limits and the role go on the session and come off
/// again afterwards.
async fn session(
    conn: PoolConnection<Postgres>,
    action: &Action,
    cx: &Context<'_>,
    statement: &mut Option<String>,
) -> Result<Done, Failure> {
    let mut session = Session { conn, reset: false };
    let result = async {
        sqlx::query(
            "SELECT set_config('statement_timeout', $1, false), set_config('lock_timeout', $1, false)",
        )
        .bind(cx.budget.millis())
        .execute(&mut *session.conn)
        .await
        .map_err(cx.fail())?;
        let plan = cx.plan(&mut session.conn, action).await?;
        *statement = Some(plan.statement.clone());
        if cx.dry_run {
            return Ok(Done {
                statement: plan.statement,
                role: plan.role,
                ran: false,
            });
        }
        if let Some(role) = &plan.role {
            sqlx::query("SELECT set_config('role', $1, false)")
                .bind(role)
                .execute(&mut *session.conn)
                .await
                .map_err(cx.fail())?;
        }
        session
            .conn
            .execute(sqlx::raw_sql(&plan.statement))
            .await
            .map_err(cx.fail())?;
        Ok(Done {
            statement: plan.statement,
            role: plan.role,
            ran: true,
        })
    }
    .await;
    session.reset = session
        .conn
        .execute(sqlx::raw_sql(
            "RESET ROLE; RESET statement_timeout; RESET lock_timeout",
        ))
        .await
        .is_ok();
    result
}

/// `"name"`: SQLite quotes identifiers as PostgreSQL does.
fn quote_sqlite(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Runs `action` on SQLite, which has no partitions, vacuums whole
/// databases and has no owners.
async fn sqlite(pool: &SqlitePool, action: &Action, dry_run: bool) -> Result<Done, Failure> {
    let mut conn = pool.acquire().await.map_err(super::sqlite::error)?;
    let statements: Vec<String> = match action {
        Action::Create { .. }
        | Action::Attach { .. }
        | Action::Drop { .. }
        | Action::Detach { .. } => {
            return Err(refused("SQLite has no partitions".into()));
        }
        Action::Vacuum { table: Some(_), .. } => {
            return Err(refused(
                "SQLite vacuums whole databases: call vacuum without a table".into(),
            ));
        }
        Action::Vacuum {
            table: None,
            options,
        } => {
            let mut all = vec!["VACUUM".to_owned()];
            if options.analyze {
                all.push("ANALYZE".to_owned());
            }
            all
        }
        Action::Analyze { table: None } => vec!["ANALYZE".to_owned()],
        Action::Analyze { table: Some(table) } => {
            let exists: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_list
                                WHERE name = ?2 AND (?1 IS NULL OR schema = ?1) AND type = 'table')",
            )
            .bind(table.schema.as_deref())
            .bind(&table.name)
            .fetch_one(&mut *conn)
            .await
            .map_err(super::sqlite::error)?;
            if !exists {
                return Err(refused(format!("`{}` is not a table", display(table))));
            }
            let name = match &table.schema {
                Some(schema) => format!("{}.{}", quote_sqlite(schema), quote_sqlite(&table.name)),
                None => quote_sqlite(&table.name),
            };
            vec![format!("ANALYZE {name}")]
        }
    };
    let statement = statements.join("; ");
    if !dry_run {
        for s in &statements {
            conn.execute(sqlx::raw_sql(s))
                .await
                .map_err(super::sqlite::error)?;
        }
    }
    Ok(Done {
        statement,
        role: None,
        ran: !dry_run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::housekeeper::task::sql::Host;
    use crate::capabilities::sql::{Connection, Connections, SqlLimits};
    use crate::manifest::DatabaseGrant;
    use std::collections::BTreeMap;
    use std::time::Instant;

    fn rel(schema: Option<&str>, name: &str) -> wit::Relation {
        wit::Relation {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    fn grants(tables: &[(&str, &[SqlVerb])]) -> Grants {
        Grants::new(
            &tables
                .iter()
                .map(|(t, v)| (t.to_string(), v.to_vec()))
                .collect(),
        )
    }

    #[test]
    fn names_are_refused_when_empty_with_nul_or_too_long() {
        assert!(check_name("n", "events").is_ok());
        assert!(check_name("n", &"é".repeat(31)).is_ok());
        assert!(check_name("n", "\"; DROP TABLE x; --").is_ok());
        assert!(check_name("n", &"a".repeat(63)).is_ok());
        let long = check_name("the partition's name", &"a".repeat(64)).unwrap_err();
        assert!(
            long.contains("64 bytes") && long.contains("at most 63"),
            "{long}"
        );
        // 32 two-byte characters: 64 bytes, though 32 characters.
        assert!(check_name("n", &"é".repeat(32)).is_err());
        assert!(check_name("n", "").unwrap_err().contains("is empty"));
        assert!(check_name("n", "a\0b").unwrap_err().contains("NUL"));
    }

    #[test]
    fn grants_are_checked_on_the_name_as_given_and_dots_need_star() {
        let g = grants(&[("events", &[SqlVerb::DropPartition])]);
        let drop = SqlVerb::DropPartition;
        assert!(allowed(&g, Some(&rel(None, "events")), drop));
        assert!(allowed(&g, Some(&rel(Some("public"), "events")), drop));
        assert!(!allowed(&g, Some(&rel(Some("app"), "events")), drop));
        assert!(!allowed(&g, Some(&rel(None, "Events")), drop));
        assert!(!allowed(&g, Some(&rel(None, "public.events")), drop));
        assert!(!allowed(&g, None, drop));
        assert!(!allowed(
            &g,
            Some(&rel(None, "events")),
            SqlVerb::CreatePartition
        ));
        let g = grants(&[("public.events", &[drop])]);
        // `"public.events"` on the search path is not `public.events`.
        assert!(!allowed(&g, Some(&rel(None, "public.events")), drop));
        assert!(allowed(&g, Some(&rel(None, "events")), drop));
        let star = grants(&[("*", &[SqlVerb::Vacuum])]);
        assert!(allowed(&star, None, SqlVerb::Vacuum));
        assert!(allowed(
            &star,
            Some(&rel(Some("a.b"), "c.d")),
            SqlVerb::Vacuum
        ));
        assert!(!allowed(&star, None, SqlVerb::Analyze));
        let d = denied(&star, None, &[SqlVerb::Vacuum, SqlVerb::Analyze]);
        assert!(
            matches!(d, Some(wit::SqlError::AccessDenied(d)) if d.table == "*" && d.verb == "analyze")
        );
    }

    #[test]
    fn bounds_render_in_order_with_keywords_of_the_hosts_own() {
        use wit::{PartitionBounds as B, RangeBound as R, Value as V};
        let range = B::Range(wit::RangeBounds {
            from: vec![R::Value(V::Timestamp(1_767_225_600_000)), R::Minvalue],
            to: vec![
                R::Value(V::Text("x'); DROP TABLE t; --".into())),
                R::Maxvalue,
            ],
        });
        assert_eq!(
            literals(&range).unwrap(),
            [
                Some("2026-01-01 00:00:00.000+00".to_owned()),
                Some("x'); DROP TABLE t; --".to_owned())
            ]
        );
        assert_eq!(
            for_values(&range, &["'a'".into(), "'b'".into()]),
            "FOR VALUES FROM ('a', MINVALUE) TO ('b', MAXVALUE)"
        );
        let list = B::ValuesIn(vec![
            V::Null,
            V::Integer(-3),
            V::Boolean(true),
            V::Float(f64::NEG_INFINITY),
            V::Bytes(vec![0, 255]),
        ]);
        assert_eq!(
            literals(&list).unwrap(),
            [
                None,
                Some("-3".into()),
                Some("true".into()),
                Some("-Infinity".into()),
                Some("\\x00ff".into())
            ]
        );
        assert_eq!(
            for_values(
                &list,
                &[
                    "NULL".into(),
                    "'-3'".into(),
                    "'t'".into(),
                    "'i'".into(),
                    "'b'".into()
                ]
            ),
            "FOR VALUES IN (NULL, '-3', 't', 'i', 'b')"
        );
        let hash = B::Hash(wit::HashBounds {
            modulus: 4,
            remainder: 1,
        });
        assert_eq!(
            for_values(&hash, &[]),
            "FOR VALUES WITH (MODULUS 4, REMAINDER 1)"
        );
        assert_eq!(for_values(&B::Default, &[]), "DEFAULT");
        assert!(literals(&B::ValuesIn(vec![V::Text("a\0".into())])).is_err());
        assert!(literals(&B::ValuesIn(vec![V::Timestamp(i64::MAX)])).is_err());
        assert!(literals(&B::ValuesIn(Vec::new())).is_err());
        let empty = B::Range(wit::RangeBounds {
            from: Vec::new(),
            to: vec![R::Maxvalue],
        });
        assert!(literals(&empty).is_err());
    }

    #[test]
    fn vacuum_options_are_words_of_the_hosts_own() {
        let none = wit::VacuumOptions {
            full: false,
            analyze: false,
            freeze: false,
            skip_locked: false,
        };
        assert_eq!(vacuum_options(&none), "");
        let all = wit::VacuumOptions {
            full: true,
            analyze: true,
            freeze: true,
            skip_locked: true,
        };
        assert_eq!(
            vacuum_options(&all),
            " (FULL, FREEZE, ANALYZE, SKIP_LOCKED)"
        );
    }

    #[test]
    fn sqlite_names_are_quoted() {
        assert_eq!(quote_sqlite("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_sqlite("x; DROP"), "\"x; DROP\"");
    }

    async fn sqlite_capability(
        tables: &[(&str, &[SqlVerb])],
        dry_run: bool,
    ) -> (SqlCapability, SqlitePool, Output) {
        let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
        sqlx::raw_sql("CREATE TABLE readings (id INTEGER PRIMARY KEY, v REAL); CREATE INDEX readings_v ON readings (v); INSERT INTO readings (v) VALUES (1), (2)")
            .execute(&pool)
            .await
            .unwrap();
        let connections =
            Connections::from_connections([("main", Connection::sqlite(pool.clone()))]);
        let grant = DatabaseGrant {
            connection: "main".into(),
            tables: tables
                .iter()
                .map(|(t, v)| (t.to_string(), v.to_vec()))
                .collect::<BTreeMap<_, _>>(),
        };
        let output = Output::new("t", "r", 1 << 20);
        let cap = SqlCapability::new(
            "t",
            Some(&grant),
            &connections,
            dry_run,
            Instant::now() + Duration::from_secs(30),
            output.clone(),
            SqlLimits::default(),
        );
        (cap, pool, output)
    }

    fn no_options() -> wit::VacuumOptions {
        wit::VacuumOptions {
            full: false,
            analyze: false,
            freeze: false,
            skip_locked: false,
        }
    }

    async fn has_stats(pool: &SqlitePool) -> bool {
        sqlx::query_scalar("SELECT count(*) > 0 FROM sqlite_master WHERE name = 'sqlite_stat1'")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn sqlite_vacuums_the_database_and_analyzes_tables() {
        use SqlVerb::*;
        let (mut cap, pool, output) =
            sqlite_capability(&[("*", &[Vacuum]), ("readings", &[Analyze])], false).await;
        cap.vacuum(None, no_options()).await.unwrap().unwrap();
        let e = cap
            .vacuum(Some(rel(None, "readings")), no_options())
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&e, wit::SqlError::Refused(r) if r.contains("whole databases")),
            "{e:?}"
        );
        let e = cap
            .create_partition(
                rel(None, "readings"),
                rel(None, "readings_1"),
                wit::PartitionBounds::Default,
            )
            .await
            .unwrap()
            .unwrap_err();
        // Not granted comes first; granted, SQLite says it has none.
        assert!(matches!(&e, wit::SqlError::AccessDenied(d) if d.verb == "create_partition"));
        let e = cap.analyze(None).await.unwrap().unwrap_err();
        assert!(
            matches!(&e, wit::SqlError::AccessDenied(d) if d.table == "*" && d.verb == "analyze"),
            "{e:?}"
        );
        let e = cap
            .analyze(Some(rel(None, "readings_v")))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(&e, wit::SqlError::AccessDenied(_)), "{e:?}");
        assert!(!has_stats(&pool).await);
        cap.analyze(Some(rel(None, "readings")))
            .await
            .unwrap()
            .unwrap();
        assert!(has_stats(&pool).await);
        let out = output.finish();
        assert!(out.contains("sql: VACUUM"), "{out}");
        assert!(out.contains("sql: ANALYZE \"readings\""), "{out}");
        assert!(out.contains("access denied"), "{out}");

        let (mut cap, _pool, _) =
            sqlite_capability(&[("*", &[CreatePartition, Analyze])], false).await;
        let e = cap
            .create_partition(
                rel(None, "readings"),
                rel(None, "readings_1"),
                wit::PartitionBounds::Default,
            )
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&e, wit::SqlError::Refused(r) if r == "SQLite has no partitions"),
            "{e:?}"
        );
        // An index is not a table, though ANALYZE would take its name.
        for name in ["nope", "readings_v"] {
            let e = cap
                .analyze(Some(rel(None, name)))
                .await
                .unwrap()
                .unwrap_err();
            assert!(
                matches!(&e, wit::SqlError::Refused(r) if r.contains("not a table")),
                "{e:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_sqlite_dry_run_records_and_runs_nothing() {
        let (mut cap, pool, output) =
            sqlite_capability(&[("*", &[SqlVerb::Vacuum, SqlVerb::Analyze])], true).await;
        cap.analyze(None).await.unwrap().unwrap();
        cap.vacuum(
            None,
            wit::VacuumOptions {
                analyze: true,
                ..no_options()
            },
        )
        .await
        .unwrap()
        .unwrap();
        assert!(!has_stats(&pool).await);
        let out = output.finish();
        assert!(out.contains("sql (dry-run, not run): ANALYZE"), "{out}");
        assert!(
            out.contains("sql (dry-run, not run): VACUUM; ANALYZE"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn bad_names_are_refused_before_the_database() {
        let (mut cap, _pool, output) =
            sqlite_capability(&[("*", &[SqlVerb::Analyze])], false).await;
        for (name, needle) in [
            ("", "is empty"),
            ("a\0b", "NUL"),
            (&"x".repeat(64) as &str, "64 bytes"),
        ] {
            let e = cap
                .analyze(Some(rel(None, name)))
                .await
                .unwrap()
                .unwrap_err();
            assert!(
                matches!(&e, wit::SqlError::Refused(r) if r.contains(needle)),
                "{name:?}: {e:?}"
            );
        }
        let e = cap
            .analyze(Some(rel(Some(""), "readings")))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&e, wit::SqlError::Refused(r) if r.contains("schema is empty")),
            "{e:?}"
        );
        assert!(
            output
                .finish()
                .contains("sql refused: the table's name is empty")
        );
    }
}
