//! What the catalog says about the names of a call, and the statement
//! built from it: the relation a name denotes (looked up by its exact
//! names), the grant again on what it resolved to, the role the
//! statement runs as (its owner) and the statement itself.

use super::maintenance::vacuum_options;
use super::partitions::{for_values, literals, quote_ident, quote_literals};
use super::{Action, Plan, Removed, denied};
use crate::bindings::housekeeper::task::sql as wit;
use crate::capabilities::output::Output;
use crate::capabilities::sql::guard::Grants;
use crate::capabilities::sql::{self, Budget, Failure};
use crate::manifest::SqlVerb;
use sqlx::{Executor, PgConnection, Row};

/// What a PostgreSQL call needs besides the action.
pub(super) struct Context<'a> {
    pub(super) grants: &'a Grants,
    pub(super) output: &'a Output,
    pub(super) dry_run: bool,
    pub(super) budget: Budget,
    /// Parents already resolved in this transaction (a list call names one
    /// parent for every partition), by name as given and verb.
    pub(super) parents: std::sync::Mutex<Vec<(ParentKey, Found)>>,
    /// Relations looked up before the first statement.
    pub(super) known: std::sync::Mutex<Vec<(Lookup, Known)>>,
}

/// What an earlier lookup found under a name.
#[derive(Clone)]
pub(super) enum Known {
    /// The relation (`None`: nothing).
    Found(Option<Found>),
    /// The name denoted another relation by the time it was locked.
    Changed,
}

type ParentKey = (Option<String>, String, SqlVerb);

/// What the catalog says about a relation.
#[derive(Clone)]
pub(super) struct Found {
    pub(super) oid: i64,
    pub(super) schema: String,
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) is_partition: bool,
    pub(super) parent: Option<i64>,
    pub(super) owner: String,
    /// `"schema"."name"`, quoted by the database.
    pub(super) quoted: String,
    /// The login role owns it.
    pub(super) owns: bool,
    /// The login role may act as the owner (a member, or a superuser).
    pub(super) may_become: bool,
    pub(super) owner_quoted: String,
    pub(super) login_quoted: String,
}

impl Found {
    pub(super) fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    fn relation(&self) -> wit::Relation {
        wit::Relation {
            schema: Some(self.schema.clone()),
            name: self.name.clone(),
        }
    }
}

/// Looks relations up by their exact names (`schema` given, or else the
/// search path), one row per name found, numbered by its place in the
/// lists ($1 schemas, NULL for none; $2 names).
const FIND: &str = "
SELECT u.i::bigint, c.oid::bigint, n.nspname::text, c.relname::text, c.relkind::text,
       c.relispartition,
       (SELECT i.inhparent::bigint FROM pg_inherits i WHERE i.inhrelid = c.oid
        ORDER BY i.inhseqno LIMIT 1),
       r.rolname::text, format('%I.%I', n.nspname, c.relname),
       r.rolname = session_user, pg_has_role(session_user, c.relowner, 'MEMBER'),
       quote_ident(r.rolname), quote_ident(session_user)
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(schema, name, i)
JOIN pg_class c
  ON c.oid = to_regclass(CASE WHEN u.schema IS NULL THEN quote_ident(u.name)
                              ELSE quote_ident(u.schema) || '.' || quote_ident(u.name) END)
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_roles r ON r.oid = c.relowner";

/// A relation as looked up: the schema it was looked up in (none: the
/// search path) and its name.
pub(super) type Lookup = (Option<String>, String);

/// What the catalog says about each of `names`, in their order.
async fn find_all(
    conn: &mut PgConnection,
    names: &[Lookup],
) -> Result<Vec<Option<Found>>, sqlx::Error> {
    let (schemas, relnames): (Vec<Option<&str>>, Vec<&str>) = names
        .iter()
        .map(|(schema, name)| (schema.as_deref(), name.as_str()))
        .unzip();
    let rows = sqlx::query(FIND)
        .bind(schemas)
        .bind(relnames)
        .fetch_all(conn)
        .await?;
    let mut found = vec![None; names.len()];
    for row in rows {
        let place: i64 = row.try_get(0)?;
        let Some(slot) = usize::try_from(place - 1)
            .ok()
            .and_then(|i| found.get_mut(i))
        else {
            continue;
        };
        *slot = Some(Found {
            oid: row.try_get(1)?,
            schema: row.try_get(2)?,
            name: row.try_get(3)?,
            kind: row.try_get(4)?,
            is_partition: row.try_get(5)?,
            parent: row.try_get(6)?,
            owner: row.try_get(7)?,
            quoted: row.try_get(8)?,
            owns: row.try_get(9)?,
            may_become: row.try_get(10)?,
            owner_quoted: row.try_get(11)?,
            login_quoted: row.try_get(12)?,
        });
    }
    Ok(found)
}

/// What `cache` holds under `key`, from an earlier lookup of this call.
pub(super) fn cached<K: PartialEq, V: Clone>(
    cache: &std::sync::Mutex<Vec<(K, V)>>,
    key: &K,
) -> Option<V> {
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, value)| value.clone())
}

pub(super) fn refused(reason: String) -> Failure {
    Failure::Guest(wit::SqlError::Refused(reason))
}

/// A partition lives beside its parent: a grant on the parent is no grant
/// to name tables in other schemas. `done` is what happens to it there
/// (`created`, `attached`).
fn beside_parent(partition: &wit::Relation, parent: &Found, done: &str) -> Result<(), Failure> {
    match &partition.schema {
        Some(schema) if schema != &parent.schema => Err(refused(format!(
            "a partition is {done} in its parent's schema `{}`, not `{schema}`",
            parent.schema
        ))),
        _ => Ok(()),
    }
}

impl Context<'_> {
    pub(super) fn fail(&self) -> impl Fn(sqlx::Error) -> Failure + '_ {
        |e| sql::postgres::error(e, self.budget)
    }

    /// The relation named, which must exist.
    pub(super) async fn existing(
        &self,
        conn: &mut PgConnection,
        relation: &wit::Relation,
        default_schema: Option<&str>,
    ) -> Result<Found, Failure> {
        let schema = relation.schema.as_deref().or(default_schema);
        let lookup = (schema.map(str::to_owned), relation.name.clone());
        let found = match cached(&self.known, &lookup) {
            Some(Known::Found(found)) => found,
            Some(Known::Changed) => {
                return Err(refused(format!(
                    "`{}` was renamed or replaced while the call ran",
                    relation.name
                )));
            }
            None => find_all(conn, std::slice::from_ref(&lookup))
                .await
                .map_err(self.fail())?
                .pop()
                .flatten(),
        };
        found.ok_or_else(|| {
            refused(match schema {
                Some(schema) => format!("`{schema}.{}` does not exist", relation.name),
                None => format!("`{}` does not exist on the search path", relation.name),
            })
        })
    }

    /// Looks `names` up, locks what they denote (`ACCESS EXCLUSIVE`, which
    /// dropping or detaching a partition takes anyway), and looks them up
    /// again: from then until the transaction ends no other session can
    /// rename, drop or detach them, so a statement naming one reaches the
    /// table that was checked. A name that came to denote another table
    /// between the two lookups is refused.
    pub(super) async fn look_up_locked(
        &self,
        conn: &mut PgConnection,
        names: Vec<Lookup>,
    ) -> Result<(), Failure> {
        if names.is_empty() {
            return Ok(());
        }
        let first = find_all(conn, &names).await.map_err(self.fail())?;
        // One statement per owner, as that owner (only an owner, or a role
        // with write privileges, may take the lock).
        let mut by_owner: Vec<(Option<String>, Vec<&str>)> = Vec::new();
        for found in first.iter().flatten() {
            let Ok(owner) = self.owner(found, "LOCK TABLE") else {
                continue;
            };
            match by_owner.iter_mut().find(|(o, _)| *o == owner) {
                Some((_, tables)) => tables.push(&found.quoted),
                None => by_owner.push((owner, vec![&found.quoted])),
            }
        }
        for (owner, tables) in &by_owner {
            let lock = format!(
                "LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE",
                tables.join(", ONLY ")
            );
            let batch = match owner {
                None => lock,
                Some(owner) => format!(
                    "SET LOCAL ROLE {}; {lock}; RESET ROLE",
                    sql::roles::quote_ident(owner)
                ),
            };
            conn.execute(sqlx::raw_sql(&batch))
                .await
                .map_err(self.fail())?;
        }
        let again = find_all(conn, &names).await.map_err(self.fail())?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        for ((lookup, before), after) in names.into_iter().zip(first).zip(again) {
            let same = before.as_ref().map(|f| f.oid) == after.as_ref().map(|f| f.oid);
            known.push((
                lookup,
                if same {
                    Known::Found(after)
                } else {
                    Known::Changed
                },
            ));
        }
        Ok(())
    }

    /// The grant again, on the name the catalog resolved: a name looked
    /// up on the search path must still be the table the grant means.
    pub(super) fn regrant(&self, found: &Found, verbs: &[SqlVerb]) -> Result<(), Failure> {
        match denied(self.grants, Some(&found.relation()), verbs) {
            Some(denial) => Err(Failure::Guest(denial)),
            None => Ok(()),
        }
    }

    /// The role a statement on `found` runs as: none when the login role
    /// owns it, the owner when the login role may act as it.
    pub(super) fn owner(&self, found: &Found, what: &str) -> Result<Option<String>, Failure> {
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
    pub(super) async fn plan(
        &self,
        conn: &mut PgConnection,
        action: &Action,
    ) -> Result<Plan, Failure> {
        match action {
            Action::Create {
                parent,
                partition,
                bounds,
            } => {
                let parent = self.parent(conn, parent, SqlVerb::CreatePartition).await?;
                beside_parent(partition, &parent, "created")?;
                let role = self.owner(&parent, "CREATE TABLE … PARTITION OF")?;
                let quoted = quote_literals(&literals(bounds).map_err(refused)?);
                let name = format!(
                    "{}.{}",
                    quote_ident(partition.schema.as_deref().unwrap_or(&parent.schema)),
                    quote_ident(&partition.name)
                );
                Ok(Plan {
                    statement: format!(
                        "CREATE TABLE {name} PARTITION OF {} {}",
                        parent.quoted,
                        for_values(bounds, &quoted)
                    ),
                    role,
                    removes: None,
                })
            }
            Action::Attach {
                parent,
                partition,
                bounds,
            } => {
                let parent = self.parent(conn, parent, SqlVerb::CreatePartition).await?;
                beside_parent(partition, &parent, "attached")?;
                let table = self.existing(conn, partition, Some(&parent.schema)).await?;
                // Its rows become the parent's: the grant must name it too.
                self.regrant(&table, &[SqlVerb::CreatePartition])?;
                self.attachable(conn, &parent, &table).await?;
                let role = self.owner(&parent, "ALTER TABLE … ATTACH PARTITION")?;
                let quoted = quote_literals(&literals(bounds).map_err(refused)?);
                Ok(Plan {
                    statement: format!(
                        "ALTER TABLE {} ATTACH PARTITION {} {}",
                        parent.quoted,
                        table.quoted,
                        for_values(bounds, &quoted)
                    ),
                    role,
                    removes: None,
                })
            }
            Action::Drop { parent, partition } => {
                let parent = self.parent(conn, parent, SqlVerb::DropPartition).await?;
                let partition = self.partition_of(conn, &parent, partition).await?;
                Ok(Plan {
                    statement: format!("DROP TABLE {}", partition.quoted),
                    role: self.owner(&partition, "DROP TABLE")?,
                    removes: Some(Removed {
                        oid: partition.oid,
                        parent: parent.oid,
                        dropped: true,
                    }),
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
                    removes: Some(Removed {
                        oid: partition.oid,
                        parent: parent.oid,
                        dropped: false,
                    }),
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
}
