//! `VACUUM` and `ANALYZE`: the options as the host's own words, and the
//! table, which must be one the grant names, run as its owner (or the
//! whole database, as the login role).

use super::catalog::{Context, refused};
use super::{Action, Plan};
use crate::bindings::housekeeper::task::sql as wit;
use crate::capabilities::sql::Failure;
use sqlx::PgConnection;

/// `VACUUM`'s option list, empty when none is set.
pub(super) fn vacuum_options(options: &wit::VacuumOptions) -> String {
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

impl Context<'_> {
    /// `command` on `table`, run as its owner, or on the whole database, run
    /// as the login role (which covers the tables it may maintain).
    pub(super) async fn maintained(
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
                removes: None,
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
            removes: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
