//! Running a built statement on PostgreSQL: one call in a transaction of
//! its own (or on the session, for what cannot run in one), or a list of
//! calls in one transaction with a savepoint each.

use super::catalog::{Context, refused};
use super::{Action, Done, Item, Removed};
use crate::bindings::housekeeper::task::sql as wit;
use crate::capabilities::sql::{self, Failure};
use crate::manifest::SqlVerb;
use sqlx::pool::PoolConnection;
use sqlx::{Connection as _, Executor, PgConnection, Postgres};

/// Runs `actions` in one transaction, each under a savepoint: the checks
/// and the statement of each as for one call, and one that fails rolled
/// back alone. `Err` (nothing changed) when the transaction itself failed
/// or the run's deadline came.
pub(super) async fn postgres_many(
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
    look_up_partitions(&mut tx, actions, cx).await?;
    let mut out = Vec::with_capacity(actions.len());
    let mut removed = Vec::new();
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
            .map(|r| format!("SET LOCAL ROLE {}; ", sql::roles::quote_ident(r)))
            .unwrap_or_default();
        let batch = format!(
            "SAVEPOINT housekeeper_call; {role}{}; RESET ROLE; RELEASE SAVEPOINT housekeeper_call",
            plan.statement
        );
        match tx.execute(sqlx::raw_sql(&batch)).await {
            Ok(_) => {
                removed.extend(plan.removes);
                out.push(Ok(Done {
                    statement: plan.statement,
                    role: plan.role,
                    ran: true,
                }))
            }
            Err(e) => {
                let failure = sql::postgres::error(e, cx.budget);
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
    still_in_place(&mut tx, &removed, cx).await?;
    if cx.dry_run {
        tx.rollback().await.map_err(cx.fail())?;
    } else {
        tx.commit().await.map_err(cx.fail())?;
    }
    Ok(out)
}

/// Looks up together and locks, before the first statement, every
/// partition the calls drop or detach (not `DETACH … CONCURRENTLY`, which
/// runs outside a transaction and exists not to take that lock), under
/// each parent the grant covers.
async fn look_up_partitions(
    conn: &mut PgConnection,
    actions: &[&Action],
    cx: &Context<'_>,
) -> Result<(), Failure> {
    let mut names = Vec::new();
    for action in actions {
        let (parent, partition, verb) = match action {
            Action::Drop { parent, partition } => (parent, partition, SqlVerb::DropPartition),
            Action::Detach {
                parent,
                partition,
                concurrently: false,
            } => (parent, partition, SqlVerb::DropPartition),
            _ => continue,
        };
        // A parent that is not there or not granted fails each of its
        // calls by itself.
        match cx.parent(conn, parent, verb).await {
            Ok(found) => {
                names.push((
                    Some(partition.schema.clone().unwrap_or(found.schema)),
                    partition.name.clone(),
                ));
            }
            Err(f @ (Failure::Deadline | Failure::Guest(wit::SqlError::Database(_)))) => {
                return Err(f);
            }
            Err(_) => {}
        }
    }
    cx.look_up_locked(conn, names).await
}

/// The statements name their partitions, which were looked up before the
/// first of them ran, under a lock no other session can pass
/// ([`Context::look_up_locked`]). Should a name still have come to denote
/// another table (renamed in this very transaction, by a trigger), a
/// partition dropped is still there, or one detached still belongs to its
/// parent: the whole call then fails, and nothing of it is kept.
async fn still_in_place(
    conn: &mut PgConnection,
    removed: &[Removed],
    cx: &Context<'_>,
) -> Result<(), Failure> {
    if removed.is_empty() {
        return Ok(());
    }
    let (oids, parents, dropped): (Vec<i64>, Vec<i64>, Vec<bool>) = removed
        .iter()
        .map(|r| (r.oid, r.parent, r.dropped))
        .collect();
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT c.oid::regclass::text
         FROM unnest($1::bigint[], $2::bigint[], $3::bool[]) AS u(oid, parent, dropped)
         JOIN pg_class c ON c.oid = u.oid::oid
         WHERE u.dropped
            OR EXISTS (SELECT 1 FROM pg_inherits i
                       WHERE i.inhrelid = c.oid AND i.inhparent = u.parent::oid)",
    )
    .bind(oids)
    .bind(parents)
    .bind(dropped)
    .fetch_all(&mut *conn)
    .await
    .map_err(cx.fail())?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(refused(format!(
            "partitions were renamed or replaced while the call ran ({}); nothing was dropped or detached",
            left.join(", ")
        )))
    }
}

/// Runs `action` on PostgreSQL. `statement` gets the statement once built,
/// for the output if it then fails.
pub(super) async fn postgres(
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
    look_up_partitions(&mut tx, &[action], cx).await?;
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
    still_in_place(&mut tx, plan.removes.as_slice(), cx).await?;
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
/// again afterwards. The steps are those of [`postgres`] in a transaction,
/// with settings that outlive it (`set_config(…, false)`).
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
