//! One PostgreSQL role per task: the database's own authorization is the
//! boundary for a task's SQL.
//!
//! Every call's transaction starts with a host-issued `SET LOCAL ROLE` to the
//! task's role, which holds exactly the privileges its manifest grants on
//! exactly those tables (`select` → `SELECT`; `insert` → `INSERT`, and
//! `USAGE` on the sequences that fill its columns; `update`/`delete` → that
//! privilege and `SELECT`, since PostgreSQL needs it to read the `WHERE`
//! clause; `ddl` → ownership). The partition, vacuum and analyze verbs give
//! the role nothing: those run through structured calls the host builds.
//!
//! Before a run's first statement the host inspects the role in the
//! catalog. When it is missing or differs from the grant and the login role
//! may fix it (`CREATEROLE`, or a superuser that was allowed), the host
//! applies the difference; otherwise the call is refused, naming each
//! difference, and `housekeeper db roles` prints the SQL for an
//! administrator. A task never runs SQL on a session whose login role is a
//! superuser or has `BYPASSRLS` unless the connection opts in: such a session
//! could leave the task role with `RESET ROLE` if the parse layer ever
//! missed one.

mod apply;
mod inspect;

use crate::manifest::SqlVerb;
pub use apply::{Ready, ensure, prepare, print};
pub use inspect::inspect;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Every task role's name starts with this.
pub const ROLE_PREFIX: &str = "housekeeper_task_";

/// PostgreSQL keeps 63 bytes of a name.
const MAX_NAME: usize = 63;

/// The role a task's SQL runs as: `housekeeper_task_<name>`, or, for a name
/// too long for PostgreSQL, its start and a hash of the whole.
pub fn role_name(task: &str) -> String {
    let full = format!("{ROLE_PREFIX}{task}");
    if full.len() <= MAX_NAME {
        return full;
    }
    let hash = hex::encode(&Sha256::digest(task.as_bytes())[..4]);
    let mut cut = MAX_NAME - hash.len() - 1;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{hash}", &full[..cut])
}

/// `name` as a PostgreSQL identifier, always quoted.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A granted table: its manifest key, where it lives, and the privileges
/// the role must hold on it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WantedTable {
    key: String,
    schema: String,
    name: String,
    privileges: BTreeSet<&'static str>,
    /// `ddl`: the role owns the table.
    owner: bool,
}

impl WantedTable {
    fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// What a manifest's table grants mean as PostgreSQL privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    tables: Vec<WantedTable>,
}

/// Splits a manifest key as the guard reads it: ASCII letters fold to lower
/// case, `schema.table` or `table` (in `public`).
fn split_key(key: &str) -> (String, String) {
    let folded = key.to_ascii_lowercase();
    match folded.split_once('.') {
        Some((schema, name)) => (schema.to_owned(), name.to_owned()),
        None => ("public".to_owned(), folded),
    }
}

impl Wanted {
    /// The privileges `tables` grant. A grant on `*` of a verb that gives
    /// the role privileges is refused: no role can hold a privilege on
    /// every table, including those created later.
    pub fn new(tables: &BTreeMap<String, Vec<SqlVerb>>) -> Result<Self, String> {
        let mut wanted = Vec::new();
        for (key, verbs) in tables {
            let mut privileges = BTreeSet::new();
            let mut owner = false;
            for verb in verbs {
                match verb {
                    SqlVerb::Select => {
                        privileges.insert("SELECT");
                    }
                    SqlVerb::Insert => {
                        privileges.insert("INSERT");
                    }
                    SqlVerb::Update => {
                        privileges.extend(["UPDATE", "SELECT"]);
                    }
                    SqlVerb::Delete => {
                        privileges.extend(["DELETE", "SELECT"]);
                    }
                    SqlVerb::Ddl => owner = true,
                    SqlVerb::CreatePartition
                    | SqlVerb::DropPartition
                    | SqlVerb::Vacuum
                    | SqlVerb::Analyze => {}
                }
            }
            if privileges.is_empty() && !owner {
                continue;
            }
            if key == "*" {
                let verbs: Vec<&str> = verbs
                    .iter()
                    .filter(|v| {
                        !matches!(
                            v,
                            SqlVerb::CreatePartition
                                | SqlVerb::DropPartition
                                | SqlVerb::Vacuum
                                | SqlVerb::Analyze
                        )
                    })
                    .map(|v| v.as_str())
                    .collect();
                return Err(format!(
                    "`grants.database.tables.\"*\"` grants `{}`: on PostgreSQL these verbs are privileges of the task's role, which cannot hold them on every table; name the tables",
                    verbs.join("`, `")
                ));
            }
            let (schema, name) = split_key(key);
            wanted.push(WantedTable {
                key: key.clone(),
                schema,
                name,
                privileges,
                owner,
            });
        }
        Ok(Wanted { tables: wanted })
    }

    fn schemas(&self) -> BTreeSet<&str> {
        self.tables.iter().map(|t| t.schema.as_str()).collect()
    }
}

/// The login role of a session.
#[derive(Debug, Clone)]
pub struct Login {
    pub name: String,
    pub superuser: bool,
    pub bypassrls: bool,
    pub createrole: bool,
    /// Holds the privileges of the roles it is a member of without
    /// switching: with it, the login role holds every task's privileges.
    pub inherit: bool,
}

impl Login {
    pub async fn of(conn: &mut PgConnection) -> Result<Login, sqlx::Error> {
        let (name, superuser, bypassrls, createrole, inherit): (String, bool, bool, bool, bool) =
            sqlx::query_as(
                "SELECT rolname::text, rolsuper, rolbypassrls, rolcreaterole, rolinherit
                 FROM pg_roles WHERE rolname = session_user",
            )
            .fetch_one(conn)
            .await?;
        Ok(Login {
            name,
            superuser,
            bypassrls,
            createrole,
            inherit,
        })
    }

    /// Why task SQL may not run on this session, unless the connection
    /// opted in.
    pub fn unsafe_reason(&self) -> Option<String> {
        let what = match (self.superuser, self.bypassrls) {
            (true, _) => "a superuser",
            (false, true) => "a role with BYPASSRLS",
            _ => return None,
        };
        Some(format!(
            "the connection logs in as `{}`, {what}: task SQL never runs on such a session. Log in as a role without those attributes (see `housekeeper db roles`), or opt in with unsafe_superuser for this connection",
            self.name
        ))
    }

    /// Whether the host may create and grant task roles itself.
    pub fn may_manage_roles(&self) -> bool {
        self.superuser || self.createrole
    }
}

/// One statement that brings a role in line with its grant. `owner` is the
/// table owner to act as, when the login role is a member of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub sql: String,
    pub as_owner: Option<String>,
    /// Whether the host applies it on its own. Giving a table to the task's
    /// role (`ddl`) is left to an administrator (`db roles --apply`).
    pub automatic: bool,
}

/// How a task's role compares with its grant.
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    /// Each way the role differs from the grant, in words.
    pub differences: Vec<String>,
    /// Statements that remove the differences the host can remove.
    pub steps: Vec<Step>,
    /// Differences no statement on the role can remove (a privilege granted
    /// to PUBLIC); comments in the printed SQL.
    pub notes: Vec<String>,
}

impl Inspection {
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }

    /// The steps and notes as a SQL script.
    pub fn script(&self) -> String {
        let mut out = String::new();
        for step in &self.steps {
            if !step.automatic {
                out.push_str("-- the host leaves this to an administrator:\n");
            }
            match &step.as_owner {
                Some(owner) => {
                    let _ = writeln!(
                        out,
                        "SET ROLE {}; {} RESET ROLE;",
                        quote_ident(owner),
                        step.sql
                    );
                }
                None => {
                    let _ = writeln!(out, "{}", step.sql);
                }
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "-- {note}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_fit_postgresql_and_stay_distinct() {
        assert_eq!(role_name("cleanup"), "housekeeper_task_cleanup");
        let long = "a".repeat(128);
        let other = format!("{}b", "a".repeat(127));
        assert!(role_name(&long).len() <= MAX_NAME);
        assert_ne!(role_name(&long), role_name(&other));
        let wide = "é".repeat(40);
        assert!(role_name(&wide).len() <= MAX_NAME);
    }

    #[test]
    fn verbs_map_to_privileges() {
        let tables = BTreeMap::from([
            (
                "events".to_owned(),
                vec![SqlVerb::Select, SqlVerb::CreatePartition],
            ),
            ("Audit.Log".to_owned(), vec![SqlVerb::Insert]),
            ("tokens".to_owned(), vec![SqlVerb::Delete]),
            ("x".to_owned(), vec![SqlVerb::Vacuum]),
            ("*".to_owned(), vec![SqlVerb::Vacuum, SqlVerb::Analyze]),
        ]);
        let wanted = Wanted::new(&tables).unwrap();
        let by_key: BTreeMap<_, _> = wanted.tables.iter().map(|t| (t.key.as_str(), t)).collect();
        assert_eq!(by_key.len(), 3, "{by_key:?}");
        assert_eq!(by_key["Audit.Log"].schema, "audit");
        assert_eq!(by_key["Audit.Log"].privileges, BTreeSet::from(["INSERT"]));
        assert_eq!(
            by_key["tokens"].privileges,
            BTreeSet::from(["DELETE", "SELECT"])
        );
        assert_eq!(by_key["events"].schema, "public");
        let star = BTreeMap::from([("*".to_owned(), vec![SqlVerb::Select])]);
        assert!(Wanted::new(&star).unwrap_err().contains("name the tables"));
    }

    #[test]
    fn identifiers_are_always_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("Events"), "\"Events\"");
    }
}
