//! Partitions: the bounds of a new or attached partition as literals the
//! database quotes, and the catalog checks on the parent and the
//! partition (a partitioned table the grant covers, a partition of
//! exactly that parent, a table that may be attached to it).

use super::catalog::{Context, Found, cached, refused};
use crate::bindings::housekeeper::task::sql as wit;
use crate::capabilities::output::Level;
use crate::capabilities::sql::Failure;
use crate::manifest::SqlVerb;
use sqlx::PgConnection;

/// Every value of `bounds` in order, as text for the database to quote
/// (`None`: `NULL`).
pub(super) fn literals(bounds: &wit::PartitionBounds) -> Result<Vec<Option<String>>, String> {
    let values: Vec<&wit::Value> = match bounds {
        wit::PartitionBounds::Range(range) => {
            if range.from.is_empty() || range.to.is_empty() {
                return Err(
                    "a range partition needs a bound for each key column in both `from` and `to`"
                        .into(),
                );
            }
            range
                .from
                .iter()
                .chain(&range.to)
                .filter_map(|b| match b {
                    wit::RangeBound::Value(v) => Some(v),
                    wit::RangeBound::Minvalue | wit::RangeBound::Maxvalue => None,
                })
                .collect()
        }
        wit::PartitionBounds::ValuesIn(values) => {
            if values.is_empty() {
                return Err("a list partition needs at least one value".into());
            }
            values.iter().collect()
        }
        wit::PartitionBounds::Hash(_) | wit::PartitionBounds::Default => Vec::new(),
    };
    values.into_iter().map(literal).collect()
}

/// A name as PostgreSQL's `quote_ident` writes it: as it is when it reads
/// back the same unquoted (lower-case ASCII letters, digits and `_`, not
/// starting with a digit, not a keyword PostgreSQL reserves in any way),
/// else in double quotes with each `"` doubled. A keyword of a later
/// PostgreSQL than the server's is quoted too, which reads the same.
pub(super) fn quote_ident(name: &str) -> String {
    let plain = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let keyword = || {
        pg_query::scan(name).map_or(true, |scanned| {
            scanned
                .tokens
                .iter()
                .any(|t| t.keyword_kind > pg_query::protobuf::KeywordKind::UnreservedKeyword as i32)
        })
    };
    if plain && !keyword() {
        name.to_owned()
    } else {
        crate::capabilities::sql::roles::quote_ident(name)
    }
}

/// The literals of [`literals`] as PostgreSQL's `quote_nullable` writes
/// them: `NULL`, or the text in single quotes with each `'` doubled, and
/// where it holds a backslash, each `\` doubled and an `E` in front, so
/// that it reads the same whatever `standard_conforming_strings` is.
pub(super) fn quote_literals(literals: &[Option<String>]) -> Vec<String> {
    literals
        .iter()
        .map(|literal| match literal {
            None => "NULL".to_owned(),
            Some(text) => {
                let mut quoted = String::with_capacity(text.len() + 3);
                if text.contains('\\') {
                    quoted.push('E');
                }
                quoted.push('\'');
                for c in text.chars() {
                    if c == '\'' || c == '\\' {
                        quoted.push(c);
                    }
                    quoted.push(c);
                }
                quoted.push('\'');
                quoted
            }
        })
        .collect()
}

/// A value as the text of a literal PostgreSQL converts to the key's type.
fn literal(value: &wit::Value) -> Result<Option<String>, String> {
    Ok(Some(match value {
        wit::Value::Null => return Ok(None),
        wit::Value::Boolean(b) => b.to_string(),
        wit::Value::Integer(i) => i.to_string(),
        wit::Value::Float(f) if f.is_nan() => "NaN".into(),
        wit::Value::Float(f) if f.is_infinite() => {
            if *f > 0.0 { "Infinity" } else { "-Infinity" }.into()
        }
        wit::Value::Float(f) => f.to_string(),
        wit::Value::Text(s) | wit::Value::Json(s) => {
            if s.contains('\0') {
                return Err(format!("the bound {s:?} contains NUL"));
            }
            s.clone()
        }
        wit::Value::Bytes(b) => format!("\\x{}", hex::encode(b)),
        wit::Value::Timestamp(ms) => chrono::DateTime::from_timestamp_millis(*ms)
            .ok_or_else(|| format!("the timestamp bound {ms} is out of range"))?
            .format("%Y-%m-%d %H:%M:%S%.3f+00")
            .to_string(),
    }))
}

/// `FOR VALUES …` of `bounds`, with `quoted` the literals of
/// [`literals`] quoted ([`quote_literals`]), in the same order.
pub(super) fn for_values(bounds: &wit::PartitionBounds, quoted: &[String]) -> String {
    let mut quoted = quoted.iter();
    let mut next = || quoted.next().cloned().unwrap_or_default();
    match bounds {
        wit::PartitionBounds::Range(range) => {
            let mut side = |bounds: &[wit::RangeBound]| {
                bounds
                    .iter()
                    .map(|b| match b {
                        wit::RangeBound::Value(_) => next(),
                        wit::RangeBound::Minvalue => "MINVALUE".into(),
                        wit::RangeBound::Maxvalue => "MAXVALUE".into(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let from = side(&range.from);
            let to = side(&range.to);
            format!("FOR VALUES FROM ({from}) TO ({to})")
        }
        wit::PartitionBounds::ValuesIn(values) => format!(
            "FOR VALUES IN ({})",
            values.iter().map(|_| next()).collect::<Vec<_>>().join(", ")
        ),
        wit::PartitionBounds::Hash(h) => format!(
            "FOR VALUES WITH (MODULUS {}, REMAINDER {})",
            h.modulus, h.remainder
        ),
        wit::PartitionBounds::Default => "DEFAULT".into(),
    }
}

impl Context<'_> {
    /// A partitioned table the grant covers.
    pub(super) async fn parent(
        &self,
        conn: &mut PgConnection,
        parent: &wit::Relation,
        verb: SqlVerb,
    ) -> Result<Found, Failure> {
        let key = (parent.schema.clone(), parent.name.clone(), verb);
        if let Some(found) = cached(&self.parents, &key) {
            return Ok(found);
        }
        let found = self.existing(conn, parent, None).await?;
        if found.kind != "p" {
            return Err(refused(format!(
                "`{}` is not a partitioned table",
                found.display()
            )));
        }
        self.regrant(&found, &[verb])?;
        self.parents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key, found.clone()));
        Ok(found)
    }

    /// `partition`, which the catalog must say is a partition of exactly
    /// `parent`.
    pub(super) async fn partition_of(
        &self,
        conn: &mut PgConnection,
        parent: &Found,
        partition: &wit::Relation,
    ) -> Result<Found, Failure> {
        let found = self.existing(conn, partition, Some(&parent.schema)).await?;
        let why = if found.oid == parent.oid {
            Some("it is the parent itself".to_owned())
        } else if !found.is_partition {
            Some("it is not a partition".to_owned())
        } else if found.parent != Some(parent.oid) {
            Some(format!(
                "it is a partition of another table, not of `{}`",
                parent.display()
            ))
        } else {
            None
        };
        if let Some(why) = why {
            self.output.log(
                Level::Warn,
                &format!(
                    "sql access denied: `{}` is not a partition of `{}`: {why}",
                    found.display(),
                    parent.display()
                ),
            );
            return Err(Failure::Guest(wit::SqlError::AccessDenied(wit::Denial {
                table: found.display(),
                verb: SqlVerb::DropPartition.as_str().to_owned(),
            })));
        }
        Ok(found)
    }

    /// Refuses to attach `table` to `parent` unless it is a plain table
    /// (or a partitioned one) of its own, which the role attaching it as
    /// the parent's owner also owns.
    pub(super) async fn attachable(
        &self,
        conn: &mut PgConnection,
        parent: &Found,
        table: &Found,
    ) -> Result<(), Failure> {
        let (inherits_from, has_children, owner_may): (Option<String>, bool, bool) =
            sqlx::query_as(
                "SELECT (SELECT format('%s.%s', n.nspname, c.relname)
                         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhparent
                         JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE i.inhrelid = $1::oid ORDER BY i.inhseqno LIMIT 1),
                        EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = $1::oid),
                        pg_has_role($2::text::name, $3::text::name, 'USAGE')",
            )
            .bind(table.oid)
            .bind(&parent.owner)
            .bind(&table.owner)
            .fetch_one(&mut *conn)
            .await
            .map_err(self.fail())?;
        let why = if table.oid == parent.oid {
            Some("it is the parent itself".to_owned())
        } else if !matches!(table.kind.as_str(), "r" | "p") {
            Some("it is not a table".to_owned())
        } else if table.is_partition {
            Some(format!(
                "it is already a partition of `{}`",
                inherits_from.unwrap_or_default()
            ))
        } else if let Some(other) = inherits_from {
            Some(format!("it inherits from `{other}`"))
        } else if has_children && table.kind == "r" {
            Some("other tables inherit from it".to_owned())
        } else if !owner_may {
            Some(format!(
                "it is owned by role `{}`, and PostgreSQL lets only a role owning both tables attach one to the other; `{}` is owned by `{}`: ALTER TABLE {} OWNER TO {}",
                table.owner,
                parent.display(),
                parent.owner,
                table.quoted,
                parent.owner_quoted
            ))
        } else {
            None
        };
        match why {
            Some(why) => Err(refused(format!(
                "`{}` cannot be attached to `{}`: {why}",
                table.display(),
                parent.display()
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_render_in_order_with_keywords_of_the_hosts_own() {
        use wit::{PartitionBounds as B, RangeBound as R, Value as V};
        let range = B::Range(wit::RangeBounds {
            from: vec![R::Value(V::Timestamp(1_767_225_600_000)), R::Minvalue],
            to: vec![
                R::Value(V::Text("x'); DROP TABLE t; --".into())),
                R::Maxvalue,
            ],
        });
        assert_eq!(
            literals(&range).unwrap(),
            [
                Some("2026-01-01 00:00:00.000+00".to_owned()),
                Some("x'); DROP TABLE t; --".to_owned())
            ]
        );
        assert_eq!(
            for_values(&range, &["'a'".into(), "'b'".into()]),
            "FOR VALUES FROM ('a', MINVALUE) TO ('b', MAXVALUE)"
        );
        let list = B::ValuesIn(vec![
            V::Null,
            V::Integer(-3),
            V::Boolean(true),
            V::Float(f64::NEG_INFINITY),
            V::Bytes(vec![0, 255]),
        ]);
        assert_eq!(
            literals(&list).unwrap(),
            [
                None,
                Some("-3".into()),
                Some("true".into()),
                Some("-Infinity".into()),
                Some("\\x00ff".into())
            ]
        );
        assert_eq!(
            for_values(
                &list,
                &[
                    "NULL".into(),
                    "'-3'".into(),
                    "'t'".into(),
                    "'i'".into(),
                    "'b'".into()
                ]
            ),
            "FOR VALUES IN (NULL, '-3', 't', 'i', 'b')"
        );
        let hash = B::Hash(wit::HashBounds {
            modulus: 4,
            remainder: 1,
        });
        assert_eq!(
            for_values(&hash, &[]),
            "FOR VALUES WITH (MODULUS 4, REMAINDER 1)"
        );
        assert_eq!(for_values(&B::Default, &[]), "DEFAULT");
        assert!(literals(&B::ValuesIn(vec![V::Text("a\0".into())])).is_err());
        assert!(literals(&B::ValuesIn(vec![V::Timestamp(i64::MAX)])).is_err());
        assert!(literals(&B::ValuesIn(Vec::new())).is_err());
        let empty = B::Range(wit::RangeBounds {
            from: Vec::new(),
            to: vec![R::Maxvalue],
        });
        assert!(literals(&empty).is_err());
    }

    #[test]
    fn names_are_quoted_only_where_postgresql_needs_it() {
        for plain in ["events", "events_2026_11_26", "_x", "a1", "name", "data"] {
            assert_eq!(quote_ident(plain), plain);
        }
        for (name, quoted) in [
            ("Events", r#""Events""#),
            ("1a", r#""1a""#),
            ("select", r#""select""#),
            ("user", r#""user""#),
            ("between", r#""between""#),
            ("a b", r#""a b""#),
            (r#"a"b"#, r#""a""b""#),
            ("é", r#""é""#),
            ("a$", r#""a$""#),
            ("", r#""""#),
        ] {
            assert_eq!(quote_ident(name), quoted, "{name:?}");
        }
    }

    #[test]
    fn literals_are_quoted_as_quote_nullable_does() {
        let quoted = quote_literals(&[
            None,
            Some("plain".into()),
            Some("it's".into()),
            Some(r"a\b".into()),
            Some(r"\'".into()),
        ]);
        assert_eq!(
            quoted,
            ["NULL", "'plain'", "'it''s'", r"E'a\\b'", r"E'\\'''"]
        );
    }
}
