//! Running a built statement on PostgreSQL: one call in a transaction of
//! its own (or on the session, for what cannot run in one), or a list of
//! calls in one transaction with a savepoint each.

use super::catalog::Context;
use super::{Action, Done, Item};
use crate::bindings::housekeeper::task::sql as wit;
use crate::capabilities::sql::{self, Failure};
use sqlx::pool::PoolConnection;
use sqlx::{Connection as _, Executor, Postgres};

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
            .map(|r| format!("SET LOCAL ROLE {}; ", sql::roles::quote_ident(r)))
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
    if cx.dry_run {
        tx.rollback().await.map_err(cx.fail())?;
    } else {
        tx.commit().await.map_err(cx.fail())?;
    }
    Ok(out)
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
