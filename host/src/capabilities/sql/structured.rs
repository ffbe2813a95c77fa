//! The `sql` calls that take names instead of SQL text: partition create,
//! attach, drop and detach, `VACUUM` and `ANALYZE`. PostgreSQL lets only a table's
//! owner run these, so the host never runs a task's text for them: it
//! checks the grant and the names, asks the catalog what the names denote
//! (is the parent partitioned, is the partition a partition of exactly that
//! parent, who owns it), has the database quote every name and value into
//! the statement it builds, and runs that statement as the owner (`SET
//! ROLE`, when the login role is a member of the owning role).
//!
//! Here: the call as the guest made it, the checks on its grant and names,
//! and the entry points for one call and for a list. The catalog lookups,
//! the partition and maintenance families, running on PostgreSQL and the
//! SQLite calls are the submodules.

mod catalog;
mod maintenance;
mod partitions;
mod run;
mod sqlite;

use super::connections::Pool;
use super::guard::{Checked, Grants, Kind};
use super::{Failure, Prepared, SqlCapability, excerpt};
use crate::bindings::housekeeper::task::sql as wit;
use crate::capabilities::output::Level;
use crate::manifest::SqlVerb;
use catalog::Context;
use partitions::literals;
use run::{postgres, postgres_many};
use sqlite::sqlite;

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

/// A statement the host built, ready to run.
struct Plan {
    statement: String,
    /// The role to run it as, when the login role is not the owner.
    role: Option<String>,
    /// The partition a drop or detach takes away from its parent, as the
    /// catalog said when the statement was built.
    removes: Option<Removed>,
}

/// A partition a drop (`dropped`) or detach takes away from `parent`.
#[derive(Clone, Copy)]
struct Removed {
    oid: i64,
    parent: i64,
    dropped: bool,
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
                        known: Default::default(),
                    };
                    postgres(pool, &action, &context, &mut statement).await
                }
                Pool::Sqlite(pool) => {
                    sqlite(pool, &action, self.dry_run, self.writes.as_ref()).await
                }
            }
        };
        let enforces = matches!(connection.pool, Pool::Postgres(_));
        match budget.bound(call, enforces).await {
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
                known: Default::default(),
            };
            let run = todo.iter().map(|(_, a)| *a).collect::<Vec<_>>();
            let items = match budget.bound(postgres_many(&pool, &run, &cx), true).await {
                Err(failure) => return self.fail(failure, &[]),
                Ok(items) => items,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::housekeeper::task::sql::Host;
    use crate::capabilities::output::Output;
    use crate::capabilities::sql::{Connection, Connections, SqlLimits};
    use crate::manifest::DatabaseGrant;
    use sqlx::SqlitePool;
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

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
