//! The reference schema as adoption knows it: the tables, columns and
//! index names the reference service made, the types each column may have
//! and becomes, the columns housekeeper adds, and the columns as found in
//! the catalog.

use super::{AdoptError, db};
use crate::store::query;
use sqlx::Row as _;
use sqlx::postgres::PgConnection;

pub(super) const RUNS: &str = "housekeeper_runs";
pub(super) const CONFIG: &str = "housekeeper_config";
pub(super) const FUNCTION: &str = "get_housekeeper_stats()";
pub(super) const INDEXES: [&str; 3] = [
    "housekeeper_runs_occurrence",
    "housekeeper_runs_task_started",
    "housekeeper_runs_running",
];

/// Column types adoption accepts, by what the reference column holds.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Integer,
    Text,
    Time,
    Bool,
}

impl Kind {
    pub(super) fn accepts(self, pg_type: &str) -> bool {
        let accepted: &[&str] = match self {
            Kind::Integer => &["smallint", "integer", "bigint"],
            Kind::Text => &["character varying", "text"],
            Kind::Time => &["timestamp without time zone", "timestamp with time zone"],
            Kind::Bool => &["boolean"],
        };
        accepted.contains(&pg_type)
    }

    pub(super) fn expected(self) -> &'static str {
        match self {
            Kind::Integer => "smallint, integer or bigint",
            Kind::Text => "varchar or text",
            Kind::Time => "timestamp, with or without time zone",
            Kind::Bool => "boolean",
        }
    }

    /// The type housekeeper's schema gives the column.
    pub(super) fn target(self) -> &'static str {
        match self {
            Kind::Integer => "bigint",
            Kind::Text => "text",
            Kind::Time => "timestamp with time zone",
            Kind::Bool => "boolean",
        }
    }

    pub(super) fn target_sql(self) -> &'static str {
        match self {
            Kind::Integer => "BIGINT",
            Kind::Text => "TEXT",
            Kind::Time => "TIMESTAMPTZ",
            Kind::Bool => "BOOLEAN",
        }
    }
}

/// A column of the reference schema: name, kind, its type in the seed's
/// DDL, and whether housekeeper's schema makes it `NOT NULL`.
pub(super) struct RefColumn {
    pub(super) name: &'static str,
    pub(super) kind: Kind,
    pub(super) reference_type: &'static str,
    pub(super) not_null: bool,
}

const fn col(
    name: &'static str,
    kind: Kind,
    reference_type: &'static str,
    not_null: bool,
) -> RefColumn {
    RefColumn {
        name,
        kind,
        reference_type,
        not_null,
    }
}

pub(super) const RUN_COLUMNS: [RefColumn; 9] = [
    col("id", Kind::Integer, "SERIAL", true),
    col("task_name", Kind::Text, "VARCHAR(255) NOT NULL", true),
    col("started_at", Kind::Time, "TIMESTAMP NOT NULL", true),
    col("completed_at", Kind::Time, "TIMESTAMP", false),
    col("status", Kind::Text, "VARCHAR(50) NOT NULL", true),
    col("duration_ms", Kind::Integer, "INTEGER", false),
    col("output", Kind::Text, "TEXT", false),
    col("error", Kind::Text, "TEXT", false),
    col(
        "triggered_by",
        Kind::Text,
        "VARCHAR(50) DEFAULT 'scheduler'",
        true,
    ),
];

pub(super) const CONFIG_COLUMNS: [RefColumn; 4] = [
    col("task_name", Kind::Text, "VARCHAR(255)", true),
    col("enabled", Kind::Bool, "BOOLEAN DEFAULT true", true),
    col("schedule", Kind::Text, "VARCHAR(255)", false),
    col(
        "last_modified_at",
        Kind::Time,
        "TIMESTAMP DEFAULT NOW()",
        true,
    ),
];

/// The columns housekeeper adds to `housekeeper_runs`, in the order of its
/// migration.
pub(super) const ADDED_RUN_COLUMNS: [(&str, &str); 7] = [
    ("scheduled_for", "TIMESTAMPTZ"),
    ("component_hash", "TEXT"),
    ("dry_run", "BOOLEAN NOT NULL DEFAULT FALSE"),
    ("metrics", "JSONB"),
    ("fuel_used", "BIGINT"),
    // Old rows get `REFERENCE_REPLICA`; the default is dropped after.
    ("replica", "TEXT NOT NULL DEFAULT 'reference'"),
    ("heartbeat_at", "TIMESTAMPTZ"),
];

/// A column as found in the catalog.
pub(super) struct Found {
    pub(super) name: String,
    pub(super) pg_type: String,
    pub(super) not_null: bool,
    pub(super) default: Option<String>,
    pub(super) identity: bool,
}

pub(super) async fn columns(
    conn: &mut PgConnection,
    table: &str,
) -> Result<Vec<Found>, AdoptError> {
    let rows = query(
        "SELECT a.attname::text AS name, format_type(a.atttypid, NULL) AS pg_type, a.attnotnull AS not_null, \
                pg_get_expr(d.adbin, d.adrelid) AS default_expr, a.attidentity <> '' AS identity \
         FROM pg_attribute a \
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(db(format!("reading the columns of {table}")))?;
    rows.iter()
        .map(|r| {
            Ok(Found {
                name: r.try_get("name")?,
                pg_type: r.try_get("pg_type")?,
                not_null: r.try_get("not_null")?,
                default: r.try_get("default_expr")?,
                identity: r.try_get("identity")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db(format!("reading the columns of {table}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_accept_only_what_converts_without_loss() {
        assert!(Kind::Integer.accepts("integer"));
        assert!(!Kind::Integer.accepts("numeric"));
        assert!(Kind::Text.accepts("character varying"));
        assert!(!Kind::Text.accepts("character"));
        assert!(Kind::Time.accepts("timestamp without time zone"));
        assert!(!Kind::Time.accepts("date"));
        assert!(!Kind::Bool.accepts("integer"));
    }
}
