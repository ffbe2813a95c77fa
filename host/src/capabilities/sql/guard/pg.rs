//! PostgreSQL statements, parsed by PostgreSQL's own grammar (libpg_query):
//! the tree the guard checks is the tree the server builds, with the same
//! tokenizer, identifier folding and truncation.
//!
//! The parse tree is walked generically (as the serialized protobuf), so no
//! node kind can hide a relation or a function call from the guard: every
//! `RangeVar` anywhere in the tree is a relation that needs a grant for the
//! use its position gives it, and every `FuncCall` anywhere is checked
//! against the allowlist.

mod functions;
mod statements;
mod tree;

use super::{
    Checked, Denial, Grants, Kind, SqlVerb, function_allowed, only_statement, readable_catalog,
    refused, same_table,
};
use functions::attribute;
use serde_json::{Map, Value};
use tree::{
    field, flag, is_func_call, is_range_var, is_select, list, present, relation, strings,
    strings_only, text, unwrap_node,
};

/// How a statement uses a relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Read: needs `select` (or is a readable catalog, or a target of the
    /// same statement).
    Read,
    /// Row-locked by `FOR UPDATE/SHARE/...`: needs `select` and `update`,
    /// never a catalog.
    Lock,
    /// Acted on with this verb.
    Act(SqlVerb),
}

/// A relation as PostgreSQL resolves it: schema (if written) and name, each
/// already folded by the grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Relation {
    schema: Option<String>,
    name: String,
}

impl Relation {
    fn key(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.name),
            None => self.name.clone(),
        }
    }

    /// A system relation: in a system schema, or an unqualified `pg_` name
    /// (`pg_catalog` is searched first, so that is where it resolves).
    fn is_system(&self) -> bool {
        match &self.schema {
            Some(s) => is_system_schema(s),
            None => self.name.starts_with("pg_"),
        }
    }
}

fn is_system_schema(schema: &str) -> bool {
    matches!(schema, "pg_catalog" | "information_schema" | "pg_toast")
        || schema.starts_with("pg_temp")
        || schema.starts_with("pg_toast_temp")
}

/// What the walk found.
struct Walk<'g> {
    grants: &'g Grants,
    uses: Vec<(Relation, Use)>,
}

/// What is in scope while walking: CTE names that shadow tables, and
/// whether relations met now are row-locked.
#[derive(Clone, Default)]
struct Scope {
    ctes: Vec<String>,
    lock: bool,
}

type Found = Result<(), Denial>;

/// The statement's plan before grants are checked.
struct Plan {
    kind: Kind,
    verb: SqlVerb,
}

impl Plan {
    fn new(kind: Kind, verb: SqlVerb) -> Self {
        Plan { kind, verb }
    }
}

/// Checks one statement under one reading of string literals.
pub(super) fn check(
    sql: &str,
    grants: &Grants,
    options: pg_query::ParserOptions,
) -> Result<Checked, Denial> {
    let parsed = pg_query::parse(sql, options)
        .map_err(|e| refused(format!("cannot parse the statement: {e}")))?;
    let statement = only_statement(&parsed.protobuf.stmts)?;
    let node = statement
        .stmt
        .as_ref()
        .ok_or_else(|| refused("the statement is empty"))?;
    let tree = serde_json::to_value(node.as_ref())
        .map_err(|e| refused(format!("cannot read the statement: {e}")))?;
    let (kind, body) = unwrap_node(&tree).ok_or_else(|| refused("the statement is empty"))?;
    let mut walk = Walk {
        grants,
        uses: Vec::new(),
    };
    let plan = walk.statement(kind, body)?;
    walk.verify(&plan)?;
    Ok(Checked {
        kind: plan.kind,
        verb: plan.verb,
    })
}

impl Walk<'_> {
    fn add(&mut self, relation: Relation, used: Use) {
        self.uses.push((relation, used));
    }

    fn range_var(&mut self, body: &Value, used: Use, scope: &Scope) -> Found {
        if text(body, "relpersistence") == "t" {
            return Err(refused("temporary tables are not allowed"));
        }
        let relation = relation(body)?;
        if relation.schema.is_none() && used == Use::Read && scope.ctes.contains(&relation.name) {
            return Ok(());
        }
        let used = if scope.lock && used == Use::Read {
            Use::Lock
        } else {
            used
        };
        self.add(relation, used);
        Ok(())
    }

    /// Any value of the tree: nodes are recognized by their wrapper or, when
    /// embedded directly, by their fields.
    fn value(&mut self, value: &Value, scope: &Scope) -> Found {
        match value {
            Value::Array(items) => items.iter().try_for_each(|v| self.value(v, scope)),
            Value::Object(map) => {
                if let Some((kind, body)) = unwrap_node(value) {
                    return self.node(kind, body, scope);
                }
                if is_range_var(value) {
                    return self.range_var(value, Use::Read, scope);
                }
                if is_func_call(value) {
                    return self.node("FuncCall", value, scope);
                }
                if is_select(value) {
                    return self.select(value, scope);
                }
                self.fields(map, &[], scope)
            }
            _ => Ok(()),
        }
    }

    fn fields(&mut self, map: &Map<String, Value>, skip: &[&str], scope: &Scope) -> Found {
        for (key, v) in map {
            if !skip.contains(&key.as_str()) {
                self.value(v, scope)?;
            }
        }
        Ok(())
    }

    fn rest(&mut self, body: &Value, skip: &[&str], scope: &Scope) -> Found {
        match body.as_object() {
            Some(map) => self.fields(map, skip, scope),
            None => Ok(()),
        }
    }

    fn node(&mut self, kind: &str, body: &Value, scope: &Scope) -> Found {
        match kind {
            "RangeVar" => self.range_var(body, Use::Read, scope),
            "SelectStmt" => self.select(body, scope),
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => Err(refused(
                "data-modifying statements inside WITH or subqueries are not allowed",
            )),
            "FuncCall" => {
                let name = strings(list(body, "funcname"))
                    .ok_or_else(|| refused("a function call without a plain name"))?;
                self.function(&name, body)?;
                self.rest(body, &["funcname"], scope)
            }
            "ColumnRef" => {
                // `x.f` is `f(x)` when `x` has no column `f`.
                for part in strings_only(list(body, "fields")).iter().skip(1) {
                    attribute(part)?;
                }
                Ok(())
            }
            "AIndirection" => {
                // `(expr).f` is `f(expr)` when `expr` has no field `f`.
                for part in strings_only(list(body, "indirection")) {
                    attribute(&part)?;
                }
                self.rest(body, &[], scope)
            }
            "AExpr" => {
                if let Some(name) = strings(list(body, "name"))
                    && let [schema, _, ..] = name.as_slice()
                    && schema != "pg_catalog"
                {
                    return Err(refused(format!(
                        "operator `{}` is not allowed: only built-in operators are",
                        name.join(".")
                    )));
                }
                self.rest(body, &["name"], scope)
            }
            "RangeTableSample" => {
                let method = strings(list(body, "method")).unwrap_or_default();
                if !matches!(method.as_slice(), [m] if m == "bernoulli" || m == "system") {
                    return Err(refused(format!(
                        "TABLESAMPLE method `{}` is not allowed",
                        method.join(".")
                    )));
                }
                self.rest(body, &["method"], scope)
            }
            "RangeTableFunc" | "JsonTable" | "XmlExpr" | "XmlSerialize" => Err(refused(format!(
                "{} is not allowed",
                match kind {
                    "RangeTableFunc" => "XMLTABLE",
                    "JsonTable" => "JSON_TABLE",
                    _ => "XML",
                }
            ))),
            "IntoClause" => Err(refused("SELECT … INTO is not allowed")),
            "Constraint" => {
                // A foreign key adds triggers to the referenced table and
                // can block its deletes: it changes that table too.
                if let Some(pk) = body.get("pktable").filter(|v| present(v)) {
                    self.range_var(pk, Use::Act(SqlVerb::Ddl), scope)?;
                }
                self.rest(body, &["pktable"], scope)
            }
            "TableLikeClause" => {
                if let Some(source) = body.get("relation").filter(|v| present(v)) {
                    self.range_var(source, Use::Read, &Scope::default())?;
                }
                Ok(())
            }
            // The names of a locking clause point at FROM items, already
            // walked (the lock is applied there).
            "LockingClause" => Ok(()),
            "CommonTableExpr" | "WithClause" => {
                Err(refused("WITH in this position is not allowed"))
            }
            _ => self.rest(body, &[], scope),
        }
    }

    /// A `WITH` clause: walks each CTE with the names it may see, and
    /// returns the scope its statement sees.
    fn with(&mut self, with: &Value, scope: &Scope) -> Result<Scope, Denial> {
        let mut inner = scope.clone();
        if !present(with) {
            return Ok(inner);
        }
        let recursive = flag(with, "recursive");
        let ctes: Vec<(&str, &Value)> = list(with, "ctes")
            .iter()
            .filter_map(|c| match unwrap_node(c) {
                Some(("CommonTableExpr", body)) => Some((text(body, "ctename"), body)),
                _ => None,
            })
            .collect();
        if ctes.len() != list(with, "ctes").len() {
            return Err(refused("a WITH clause the guard cannot read"));
        }
        let names: Vec<String> = ctes.iter().map(|(n, _)| (*n).to_owned()).collect();
        for (i, (_, cte)) in ctes.iter().enumerate() {
            let mut visible = scope.clone();
            visible.lock = false;
            // Without RECURSIVE a CTE sees only those before it.
            let seen = if recursive { &names[..] } else { &names[..i] };
            visible.ctes.extend(seen.iter().cloned());
            self.rest(cte, &[], &visible)?;
        }
        inner.ctes.extend(names);
        Ok(inner)
    }

    fn select(&mut self, body: &Value, scope: &Scope) -> Found {
        if present(field(body, "into_clause")) {
            return Err(refused("SELECT … INTO is not allowed"));
        }
        let inner = self.with(field(body, "with_clause"), scope)?;
        let locks = !list(body, "locking_clause").is_empty();
        // A row lock applies to the FROM items of its SELECT (and the
        // subqueries there); nothing else of the statement is locked.
        let from = Scope {
            ctes: inner.ctes.clone(),
            lock: scope.lock || locks,
        };
        let other = Scope {
            ctes: inner.ctes.clone(),
            lock: false,
        };
        self.value(field(body, "from_clause"), &from)?;
        self.value(field(body, "larg"), &from)?;
        self.value(field(body, "rarg"), &from)?;
        self.rest(
            body,
            &["with_clause", "from_clause", "larg", "rarg", "into_clause"],
            &other,
        )
    }

    /// Every relation the walk found, against the grants.
    fn verify(&self, _plan: &Plan) -> Found {
        let targets: Vec<String> = self
            .uses
            .iter()
            .filter(|(_, u)| matches!(u, Use::Act(_)))
            .map(|(r, _)| r.key())
            .collect();
        for (relation, used) in &self.uses {
            let key = relation.key();
            match used {
                Use::Act(verb) => {
                    if relation.is_system() {
                        return Err(refused(format!(
                            "`{key}` is a system relation: it is never changed by a task"
                        )));
                    }
                    self.grants.require(&key, *verb)?;
                }
                Use::Lock => {
                    if relation.is_system() {
                        return Err(refused(format!(
                            "`{key}` is a system relation: its rows are never locked by a task"
                        )));
                    }
                    self.grants.require(&key, SqlVerb::Select)?;
                    self.grants.require(&key, SqlVerb::Update)?;
                }
                Use::Read => {
                    let covered = targets.iter().any(|t| same_table(t, &key))
                        || readable_catalog(super::Dialect::Postgres, &key);
                    if !covered {
                        if relation.is_system() {
                            return Err(Denial::AccessDenied {
                                table: key,
                                verb: SqlVerb::Select,
                            });
                        }
                        self.grants.require(&key, SqlVerb::Select)?;
                    }
                }
            }
        }
        Ok(())
    }
}

pub(super) const CREATE_PARTITION_CALL: &str =
    "a partition is created with the `create-partition` call (sql::create_partition), not as SQL";
pub(super) const DROP_PARTITION_CALL: &str = "a partition is dropped with the `drop-partition` call (sql::drop_partition), not as SQL; DROP TABLE needs `ddl` on the table";
pub(super) const DETACH_PARTITION_CALL: &str =
    "a partition is detached with the `detach-partition` call (sql::detach_partition), not as SQL";
pub(super) const DETACH_CONCURRENTLY_CALL: &str = "DETACH PARTITION CONCURRENTLY/FINALIZE cannot run inside the host's transaction: use the `detach-partition` call with `concurrently` (sql::detach_partition(parent, partition, true)), which needs `drop_partition` on the parent";
pub(super) const ATTACH_PARTITION_CALL: &str = "a table is attached as a partition with the `attach-partition` call (sql::attach_partition), not as SQL";
pub(super) const VACUUM_CALL: &str =
    "VACUUM runs only through the `vacuum` call (sql::vacuum), not as SQL";
pub(super) const ANALYZE_CALL: &str =
    "ANALYZE runs only through the `analyze` call (sql::analyze), not as SQL";
