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

use crate::manifest::SqlVerb;
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

/// Relation kinds that hold data or can be read: tables, partitioned
/// tables, views, materialized views, foreign tables, sequences.
const RELKINDS: &str = "('r','p','v','m','f','S')";

/// Schemas whose objects every role may read by PostgreSQL's defaults.
const SYSTEM_SCHEMAS: &str =
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'";

/// Compares `role` in the catalog with `wanted`, for a session logged in as
/// `login`.
pub async fn inspect(
    conn: &mut PgConnection,
    role: &str,
    login: &Login,
    wanted: &Wanted,
) -> Result<Inspection, sqlx::Error> {
    let mut out = Inspection::default();
    let q_role = quote_ident(role);
    let attributes: Option<(bool, bool, bool, bool, bool, bool)> = sqlx::query_as(
        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication, rolcanlogin
         FROM pg_roles WHERE rolname = $1",
    )
    .bind(role)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(attributes) = attributes else {
        out.differences
            .push(format!("role `{role}` does not exist"));
        out.steps.push(Step {
            sql: format!("CREATE ROLE {q_role} NOLOGIN NOINHERIT;"),
            as_owner: None,
            automatic: true,
        });
        out.steps.push(Step {
            sql: format!("GRANT {q_role} TO {};", quote_ident(&login.name)),
            as_owner: None,
            automatic: true,
        });
        for schema in wanted.schemas() {
            out.steps.push(Step {
                sql: format!("GRANT USAGE ON SCHEMA {} TO {q_role};", quote_ident(schema)),
                as_owner: None,
                automatic: true,
            });
        }
        let resolved = resolve(conn, wanted, role).await?;
        for (table, found) in wanted.tables.iter().zip(&resolved) {
            match found {
                Some(rel) => grant_steps(&mut out, table, rel, &BTreeSet::new(), false, &q_role),
                None => out.notes.push(missing_table(table)),
            }
        }
        return Ok(out);
    };

    let (superuser, bypassrls, createrole, createdb, replication, canlogin) = attributes;
    for (has, attribute) in [
        (superuser, "SUPERUSER"),
        (bypassrls, "BYPASSRLS"),
        (createrole, "CREATEROLE"),
        (createdb, "CREATEDB"),
        (replication, "REPLICATION"),
        (canlogin, "LOGIN"),
    ] {
        if has {
            out.differences
                .push(format!("role `{role}` has the attribute {attribute}"));
            out.steps.push(Step {
                sql: format!("ALTER ROLE {q_role} NO{attribute};"),
                as_owner: None,
                automatic: true,
            });
        }
    }

    let member: bool = sqlx::query_scalar("SELECT pg_has_role(session_user, $1, 'MEMBER')")
        .bind(role)
        .fetch_one(&mut *conn)
        .await?;
    if !member {
        out.differences.push(format!(
            "login role `{}` is not a member of `{role}`, so it cannot switch to it",
            login.name
        ));
        out.steps.push(Step {
            sql: format!("GRANT {q_role} TO {};", quote_ident(&login.name)),
            as_owner: None,
            automatic: true,
        });
    }

    // Memberships would add other roles' privileges (or, for the predefined
    // roles, powers such as reading server files).
    let memberships: Vec<String> = sqlx::query_scalar(
        "SELECT r.rolname::text FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
         WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = $1) ORDER BY 1",
    )
    .bind(role)
    .fetch_all(&mut *conn)
    .await?;
    for other in memberships {
        out.differences
            .push(format!("role `{role}` is a member of `{other}`"));
        out.steps.push(Step {
            sql: format!("REVOKE {} FROM {q_role};", quote_ident(&other)),
            as_owner: None,
            automatic: true,
        });
    }

    let resolved = resolve(conn, wanted, role).await?;

    // Every privilege the role holds on a relation outside the system
    // schemas, directly, through PUBLIC, or as its owner.
    let held: Vec<(i64, String, String, String, String, bool)> = sqlx::query_as(&format!(
        "SELECT c.oid::int8, n.nspname::text, c.relname::text, pg_get_userbyid(c.relowner)::text,
                a.privilege_type, a.grantee = 0
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         CROSS JOIN LATERAL aclexplode(c.relacl) a
         WHERE c.relacl IS NOT NULL AND c.relkind IN {RELKINDS} AND {SYSTEM_SCHEMAS}
           AND (a.grantee = 0 OR a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1))
         UNION ALL
         SELECT c.oid::int8, n.nspname::text, c.relname::text, pg_get_userbyid(c.relowner)::text,
                a.privilege_type || ' (' || att.attname || ')', a.grantee = 0
         FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         CROSS JOIN LATERAL aclexplode(att.attacl) a
         WHERE att.attacl IS NOT NULL AND NOT att.attisdropped AND c.relkind IN {RELKINDS}
           AND {SYSTEM_SCHEMAS}
           AND (a.grantee = 0 OR a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1))
         UNION ALL
         SELECT c.oid::int8, n.nspname::text, c.relname::text, pg_get_userbyid(c.relowner)::text,
                'OWNER', false
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN {RELKINDS} AND {SYSTEM_SCHEMAS}
           AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = $1)
         ORDER BY 2, 3, 5"
    ))
    .bind(role)
    .fetch_all(&mut *conn)
    .await?;

    // Sequences the role may use: those that fill columns of tables it may
    // insert into.
    let mut sequences: BTreeSet<i64> = BTreeSet::new();
    for (table, found) in wanted.tables.iter().zip(&resolved) {
        if let Some(rel) = found
            && table.privileges.contains("INSERT")
        {
            sequences.extend(rel.sequences.iter().map(|s| s.oid));
        }
    }
    let by_oid: BTreeMap<i64, (&WantedTable, &Relation)> = wanted
        .tables
        .iter()
        .zip(&resolved)
        .filter_map(|(t, r)| r.as_ref().map(|r| (r.oid, (t, r))))
        .collect();
    // What comes with a `ddl` table the role owns: its partitions, at any
    // depth (a partition the task makes with `create-partition` belongs to
    // the parent's owner, which is then the task's role), and the
    // sequences of its columns (`serial`, identity), which PostgreSQL gives
    // the table's owner. Owning them adds nothing to owning the table.
    let mut comes_with: BTreeSet<i64> = BTreeSet::new();
    for (table, found) in wanted.tables.iter().zip(&resolved) {
        if let Some(rel) = found
            && table.owner
            && rel.owner == role
        {
            comes_with.extend(rel.sequences.iter().map(|s| s.oid));
            let below: Vec<i64> = sqlx::query_scalar(
                "SELECT relid::oid::int8 FROM pg_partition_tree($1::int8::oid::regclass)
                 WHERE relid::oid <> $1::int8::oid",
            )
            .bind(rel.oid)
            .fetch_all(&mut *conn)
            .await?;
            comes_with.extend(below);
        }
    }

    let mut direct: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    let mut extra: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    for (oid, schema, name, owner, privilege, public) in &held {
        let table_level = privilege.split(' ').next().unwrap_or_default();
        let allowed = match by_oid.get(oid) {
            Some((table, _)) => {
                table.owner || table.privileges.contains(table_level) || comes_with.contains(oid)
            }
            None => {
                (sequences.contains(oid) && table_level == "USAGE")
                    || (comes_with.contains(oid) && !*public)
            }
        };
        if !*public && !privilege.contains(' ') {
            direct.entry(*oid).or_default().insert(privilege.clone());
        }
        if allowed {
            continue;
        }
        if *public {
            let relation = format!("{}.{}", quote_ident(schema), quote_ident(name));
            out.differences.push(format!(
                "`{schema}.{name}` grants {privilege} to PUBLIC, so every role holds it"
            ));
            out.notes.push(format!(
                "`{schema}.{name}` grants {privilege} to PUBLIC; revoke it as its owner `{owner}` if no one needs it: REVOKE {table_level} ON {relation} FROM PUBLIC;"
            ));
        } else {
            out.differences.push(format!(
                "role `{role}` holds {} on `{schema}.{name}`, which the grant does not give",
                if privilege == "OWNER" {
                    "ownership".to_owned()
                } else {
                    privilege.clone()
                }
            ));
            extra
                .entry((schema.clone(), name.clone(), owner.clone()))
                .or_default()
                .insert(privilege.clone());
        }
    }
    for ((schema, name, owner), privileges) in extra {
        let relation = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        if privileges.contains("OWNER") {
            out.notes.push(format!(
                "role `{role}` owns `{schema}.{name}`: give it to another role, e.g. ALTER TABLE {relation} OWNER TO <owner>;"
            ));
            continue;
        }
        let mut table_level = BTreeSet::new();
        let mut columns = BTreeMap::<String, Vec<String>>::new();
        for p in &privileges {
            match p.split_once(' ') {
                None => {
                    table_level.insert(p.clone());
                }
                Some((verb, column)) => columns
                    .entry(verb.to_owned())
                    .or_default()
                    .push(quote_ident(column.trim_matches(|c| c == '(' || c == ')'))),
            }
        }
        if !table_level.is_empty() {
            out.steps.push(Step {
                sql: format!(
                    "REVOKE {} ON {relation} FROM {q_role};",
                    table_level.into_iter().collect::<Vec<_>>().join(", ")
                ),
                as_owner: Some(owner.clone()),
                automatic: true,
            });
        }
        for (verb, cols) in columns {
            out.steps.push(Step {
                sql: format!(
                    "REVOKE {verb} ({}) ON {relation} FROM {q_role};",
                    cols.join(", ")
                ),
                as_owner: Some(owner.clone()),
                automatic: true,
            });
        }
    }

    // What the grant gives that the role lacks.
    for (table, found) in wanted.tables.iter().zip(&resolved) {
        match found {
            Some(rel) => {
                let has = direct.get(&rel.oid).cloned().unwrap_or_default();
                let owns = has.contains("OWNER");
                let before = out.steps.len();
                grant_steps(&mut out, table, rel, &has, owns, &q_role);
                if out.steps.len() > before {
                    out.differences.push(if table.owner && !owns {
                        format!(
                            "role `{role}` does not own `{}` (owned by `{}`), which its `ddl` grant needs: PostgreSQL lets only a table's owner change it, and the host never moves ownership on its own",
                            table.key, rel.owner
                        )
                    } else {
                        format!(
                            "role `{role}` lacks privileges the grant gives on `{}`",
                            table.key
                        )
                    });
                }
            }
            None => out.notes.push(missing_table(table)),
        }
    }

    // The database: no new schemas.
    let create_schemas: bool =
        sqlx::query_scalar("SELECT has_database_privilege($1, current_database(), 'CREATE')")
            .bind(role)
            .fetch_one(&mut *conn)
            .await?;
    if create_schemas {
        out.differences
            .push(format!("role `{role}` may create schemas in this database"));
        out.steps.push(Step {
            sql: format!(
                "REVOKE CREATE ON DATABASE {} FROM {q_role};",
                quote_ident(&current_database(conn).await?)
            ),
            as_owner: None,
            automatic: true,
        });
    }

    // Functions that run with their owner's privileges reach whatever the
    // owner may: the role may not be able to call any outside the system
    // schemas (calling needs EXECUTE and USAGE on the function's schema).
    let definers: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, p.oid::regprocedure::text, pg_get_userbyid(p.proowner)::text
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND has_function_privilege($1, p.oid, 'EXECUTE')
           AND has_schema_privilege($1, n.oid, 'USAGE')
         ORDER BY 2",
    )
    .bind(role)
    .fetch_all(&mut *conn)
    .await?;
    for (_, signature, owner) in definers {
        out.differences.push(format!(
            "role `{role}` may call `{signature}`, which runs as `{owner}` (SECURITY DEFINER)"
        ));
        out.notes.push(format!(
            "`{signature}` runs as its owner `{owner}`; if every role may call it, revoke that as its owner: REVOKE EXECUTE ON FUNCTION {signature} FROM PUBLIC;"
        ));
    }

    // Schemas: USAGE where granted tables live; CREATE only where a `ddl`
    // table lives.
    let ddl_schemas: BTreeSet<&str> = wanted
        .tables
        .iter()
        .filter(|t| t.owner)
        .map(|t| t.schema.as_str())
        .collect();
    let schemas: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT n.nspname::text, has_schema_privilege($1, n.oid, 'USAGE'),
                has_schema_privilege($1, n.oid, 'CREATE')
         FROM pg_namespace n
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1",
    )
    .bind(role)
    .fetch_all(&mut *conn)
    .await?;
    for (schema, usage, create) in schemas {
        if create && !ddl_schemas.contains(schema.as_str()) {
            out.differences.push(format!(
                "role `{role}` may create objects in schema `{schema}`"
            ));
            out.steps.push(Step {
                sql: format!(
                    "REVOKE CREATE ON SCHEMA {} FROM {q_role};",
                    quote_ident(&schema)
                ),
                as_owner: None,
                automatic: true,
            });
            out.notes.push(format!(
                "if schema `{schema}` grants CREATE to PUBLIC, revoke it: REVOKE CREATE ON SCHEMA {} FROM PUBLIC;",
                quote_ident(&schema)
            ));
        }
        if !create && ddl_schemas.contains(schema.as_str()) {
            out.differences.push(format!(
                "role `{role}` may not create objects in schema `{schema}`, which its `ddl` grant needs"
            ));
            out.steps.push(Step {
                sql: format!(
                    "GRANT CREATE ON SCHEMA {} TO {q_role};",
                    quote_ident(&schema)
                ),
                as_owner: None,
                automatic: true,
            });
        }
        if !usage && wanted.schemas().contains(schema.as_str()) {
            out.differences
                .push(format!("role `{role}` may not use schema `{schema}`"));
            out.steps.push(Step {
                sql: format!(
                    "GRANT USAGE ON SCHEMA {} TO {q_role};",
                    quote_ident(&schema)
                ),
                as_owner: None,
                automatic: true,
            });
        }
    }
    Ok(out)
}

/// The role a task's SQL may run as, after the host brought it in line
/// with the grant where it may; `applied` lists what it changed.
#[derive(Debug, Clone)]
pub struct Ready {
    pub role: String,
    pub applied: Vec<String>,
}

/// Makes sure `task`'s role exists and holds exactly what `wanted` gives:
/// inspects it, applies the difference when the login role may manage
/// roles, and inspects again. `Err` says why the task's SQL may not run.
pub async fn ensure(
    conn: &mut PgConnection,
    task: &str,
    wanted: &Wanted,
    allow_unsafe_login: bool,
) -> Result<Result<Ready, String>, sqlx::Error> {
    let login = Login::of(conn).await?;
    if let Some(reason) = login.unsafe_reason()
        && !allow_unsafe_login
    {
        return Ok(Err(reason));
    }
    let role = role_name(task);
    let first = inspect(conn, &role, &login, wanted).await?;
    if first.is_clean() {
        return Ok(Ok(Ready {
            role,
            applied: Vec::new(),
        }));
    }
    if !login.may_manage_roles() {
        return Ok(Err(explain(
            &role,
            &first,
            &format!(
                "login role `{}` may not manage roles (no CREATEROLE)",
                login.name
            ),
        )));
    }
    let mut applied = Vec::new();
    let mut failed = Vec::new();
    for step in first.steps.iter().filter(|s| s.automatic) {
        match apply(conn, &login, step).await {
            Ok(()) => applied.push(step.sql.clone()),
            Err(e) => failed.push(format!("{}: {}", step.sql, database_message(&e))),
        }
    }
    let second = inspect(conn, &role, &login, wanted).await?;
    if second.is_clean() {
        return Ok(Ok(Ready { role, applied }));
    }
    let why = if failed.is_empty() {
        "the host could not remove them".to_owned()
    } else {
        format!("the host could not apply: {}", failed.join("; "))
    };
    Ok(Err(explain(&role, &second, &why)))
}

fn explain(role: &str, inspection: &Inspection, why: &str) -> String {
    format!(
        "task role `{role}` does not match the manifest's grant: {}; {why}. Apply the SQL `housekeeper db roles` prints as an administrator",
        inspection.differences.join("; ")
    )
}

fn database_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}

/// Runs one step, as the table's owner when the login role is a member of
/// it (a `NOINHERIT` member holds none of its privileges until it switches).
async fn apply(conn: &mut PgConnection, login: &Login, step: &Step) -> Result<(), sqlx::Error> {
    use sqlx::{Connection as _, Executor as _};
    let switch = match &step.as_owner {
        Some(owner) if !login.superuser && owner != &login.name => {
            let member: bool = sqlx::query_scalar("SELECT pg_has_role(session_user, $1, 'MEMBER')")
                .bind(owner)
                .fetch_one(&mut *conn)
                .await?;
            member.then(|| owner.clone())
        }
        _ => None,
    };
    let mut tx = conn.begin().await?;
    if let Some(owner) = switch {
        tx.execute(sqlx::raw_sql(&format!(
            "SET LOCAL ROLE {}",
            quote_ident(&owner)
        )))
        .await?;
    }
    tx.execute(sqlx::raw_sql(&step.sql)).await?;
    tx.commit().await
}

/// `housekeeper db roles` for one task: the SQL that brings its role in
/// line with `tables`, as a commented script; with `apply`, also runs it.
pub async fn print(
    pool: &sqlx::PgPool,
    task: &str,
    tables: &BTreeMap<String, Vec<SqlVerb>>,
    apply_steps: bool,
) -> anyhow::Result<String> {
    let role = role_name(task);
    let mut out = format!("-- task `{task}`: role `{role}`\n");
    let wanted = match Wanted::new(tables) {
        Ok(w) => w,
        Err(reason) => {
            let _ = writeln!(out, "-- cannot be given a role: {reason}");
            return Ok(out);
        }
    };
    let mut conn = pool.acquire().await?;
    let login = Login::of(&mut conn).await?;
    if let Some(reason) = login.unsafe_reason() {
        let _ = writeln!(out, "-- warning: {reason}");
    } else if login.inherit {
        let _ = writeln!(
            out,
            "-- warning: login role `{0}` has INHERIT, so it holds every task role's privileges itself; ALTER ROLE {1} NOINHERIT;",
            login.name,
            quote_ident(&login.name)
        );
    }
    let inspection = inspect(&mut conn, &role, &login, &wanted).await?;
    if inspection.is_clean() {
        let _ = writeln!(out, "-- in line with the grant; nothing to do");
        return Ok(out);
    }
    for difference in &inspection.differences {
        let _ = writeln!(out, "-- {difference}");
    }
    out.push_str(&inspection.script());
    if apply_steps {
        for step in &inspection.steps {
            apply(&mut conn, &login, step)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {}", step.sql, database_message(&e)))?;
        }
        let after = inspect(&mut conn, &role, &login, &wanted).await?;
        if after.is_clean() {
            let _ = writeln!(out, "-- applied; the role is in line with the grant");
        } else {
            let _ = writeln!(
                out,
                "-- applied; still different: {}",
                after.differences.join("; ")
            );
        }
    }
    Ok(out)
}

/// At load: brings the role of every task with a PostgreSQL grant in line
/// where the login role may, and logs, per task, what was changed or what
/// still differs (the run would be refused). Runs check again anyway.
pub async fn prepare(
    connections: &super::Connections,
    tasks: &[(String, crate::manifest::DatabaseGrant)],
) {
    for (task, grant) in tasks {
        let Some(connection) = connections.get(&grant.connection) else {
            continue;
        };
        let Some(pool) = connection.postgres_pool() else {
            continue;
        };
        let wanted = match Wanted::new(&grant.tables) {
            Ok(w) => w,
            Err(reason) => {
                tracing::warn!(task = %task, "{reason}");
                continue;
            }
        };
        let outcome = async {
            let _one_at_a_time = connection.roles.lock().await;
            let mut conn = pool.acquire().await?;
            ensure(&mut conn, task, &wanted, connection.unsafe_superuser).await
        }
        .await;
        match outcome {
            Ok(Ok(ready)) if ready.applied.is_empty() => {
                tracing::debug!(task = %task, role = %ready.role, "task role in line with the grant");
            }
            Ok(Ok(ready)) => {
                tracing::info!(task = %task, role = %ready.role, applied = ?ready.applied, "task role brought in line with the grant");
            }
            Ok(Err(reason)) => tracing::warn!(task = %task, "{reason}"),
            Err(e) => {
                tracing::warn!(task = %task, connection = %grant.connection, error = %e, "cannot check the task's role yet; each run checks it again");
            }
        }
    }
}

async fn current_database(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(conn)
        .await
}

/// A granted table as the catalog has it.
#[derive(Debug, Clone)]
struct Relation {
    oid: i64,
    owner: String,
    sequences: Vec<Sequence>,
}

#[derive(Debug, Clone)]
struct Sequence {
    oid: i64,
    qualified: String,
    owner: String,
    usage: bool,
}

async fn resolve(
    conn: &mut PgConnection,
    wanted: &Wanted,
    role: &str,
) -> Result<Vec<Option<Relation>>, sqlx::Error> {
    let mut out = Vec::with_capacity(wanted.tables.len());
    for table in &wanted.tables {
        let found: Option<(i64, String)> = sqlx::query_as(&format!(
            "SELECT c.oid::int8, pg_get_userbyid(c.relowner)::text
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN {RELKINDS}"
        ))
        .bind(&table.schema)
        .bind(&table.name)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((oid, owner)) = found else {
            out.push(None);
            continue;
        };
        let sequences: Vec<(i64, String, String, String, bool)> = sqlx::query_as(
            "SELECT s.oid::int8, n.nspname::text, s.relname::text,
                    pg_get_userbyid(s.relowner)::text,
                    COALESCE((SELECT bool_or(a.privilege_type = 'USAGE') FROM aclexplode(s.relacl) a
                              WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $2)), false)
             FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
             JOIN pg_namespace n ON n.oid = s.relnamespace
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
               AND d.refobjid = $1::oid AND d.deptype IN ('a', 'i')",
        )
        .bind(oid)
        .bind(role)
        .fetch_all(&mut *conn)
        .await?;
        out.push(Some(Relation {
            oid,
            owner,
            sequences: sequences
                .into_iter()
                .map(|(oid, schema, name, owner, usage)| Sequence {
                    oid,
                    qualified: format!("{}.{}", quote_ident(&schema), quote_ident(&name)),
                    owner,
                    usage,
                })
                .collect(),
        }));
    }
    Ok(out)
}

fn missing_table(table: &WantedTable) -> String {
    format!(
        "`{}` ({}.{}) does not exist yet; run this again once it does",
        table.key, table.schema, table.name
    )
}

/// Statements that give the role what `table`'s grant gives and it lacks
/// (`has`: what it holds directly).
fn grant_steps(
    out: &mut Inspection,
    table: &WantedTable,
    rel: &Relation,
    has: &BTreeSet<String>,
    owns: bool,
    q_role: &str,
) {
    if table.owner {
        if !owns {
            out.steps.push(Step {
                sql: format!("ALTER TABLE {} OWNER TO {q_role};", table.qualified()),
                as_owner: Some(rel.owner.clone()),
                automatic: false,
            });
        }
        return;
    }
    let missing: Vec<&str> = table
        .privileges
        .iter()
        .copied()
        .filter(|p| !has.contains(*p))
        .collect();
    if !missing.is_empty() {
        out.steps.push(Step {
            sql: format!(
                "GRANT {} ON {} TO {q_role};",
                missing.join(", "),
                table.qualified()
            ),
            as_owner: Some(rel.owner.clone()),
            automatic: true,
        });
    }
    if table.privileges.contains("INSERT") {
        for sequence in &rel.sequences {
            if !sequence.usage {
                out.steps.push(Step {
                    sql: format!(
                        "GRANT USAGE ON SEQUENCE {} TO {q_role};",
                        sequence.qualified
                    ),
                    as_owner: Some(sequence.owner.clone()),
                    automatic: true,
                });
            }
        }
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
