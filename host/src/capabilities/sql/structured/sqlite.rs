//! The structured calls on SQLite, which has no partitions, vacuums whole
//! databases and has no owners.

use super::catalog::refused;
use super::{Action, Done, display};
use crate::capabilities::filesystem::WriteBudget;
use crate::capabilities::sql::sqlite::{Call, host_statements};
use crate::capabilities::sql::{self, Failure};
use sqlx::SqlitePool;
use std::sync::Arc;

/// `"name"`: SQLite quotes identifiers as PostgreSQL does.
fn quote_sqlite(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Runs `action` on SQLite, which has no partitions, vacuums whole
/// databases and has no owners.
pub(super) async fn sqlite(
    pool: &SqlitePool,
    action: &Action,
    dry_run: bool,
    writes: Option<&Arc<WriteBudget>>,
) -> Result<Done, Failure> {
    let mut call = Call::acquire(pool).await?;
    let conn = &mut call.conn;
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
            .fetch_one(&mut **conn)
            .await
            .map_err(sql::sqlite::error)?;
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
    if dry_run {
        call.finished = true;
    } else {
        // SQLite's temporary files for them (VACUUM copies the whole
        // database into one) are the run's writes.
        host_statements(&mut call, &statements, writes).await?;
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

    #[test]
    fn sqlite_names_are_quoted() {
        assert_eq!(quote_sqlite("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_sqlite("x; DROP"), "\"x; DROP\"");
    }
}
