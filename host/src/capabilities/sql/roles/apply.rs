//! Bringing a task's role in line with its grant: at load and before a
//! run's first statement (`ensure`, where the login role may manage
//! roles), and as the script `housekeeper db roles` prints or applies.

use super::{Inspection, Login, Step, Wanted, inspect, quote_ident, role_name};
use crate::manifest::SqlVerb;
use sqlx::PgConnection;
use std::collections::BTreeMap;
use std::fmt::Write as _;

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
    connections: &crate::capabilities::sql::Connections,
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
