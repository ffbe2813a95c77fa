//! Comparing a task's role with its grant in the catalog: the role's
//! attributes and memberships, its privileges on the granted tables and
//! their sequences, and anything it holds beyond them, each difference
//! with the statement that fixes it.

use super::{Inspection, Login, Step, Wanted, WantedTable, quote_ident};
use sqlx::PgConnection;
use std::collections::{BTreeMap, BTreeSet};

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
