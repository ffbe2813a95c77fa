//! The SQL guard: decides, before anything reaches the database, whether one
//! statement is allowed under a task's `grants.database`.
//!
//! The statement is parsed with `sqlparser` in the connection's dialect and
//! must be exactly one statement of an allowed kind. Every relation it names
//! must be granted for the verb it is used with: the target of an `INSERT`,
//! `UPDATE` or `DELETE` needs that verb (and may also be read by the same
//! statement), every other relation needs `select`. Session and transaction
//! control, `COPY`, `DO`, `CALL`, `LISTEN`/`NOTIFY`, functions and
//! extensions are always refused, and so is any function outside a fixed
//! allowlist. Whether a dropped or detached table really is a partition of a
//! granted table is a catalog question: the guard returns it as a
//! [`PartitionCheck`] for the caller to answer before running the statement.
//!
//! The guard is one layer. Operators should still give each connection a
//! role with only the privileges its tasks need.

use crate::manifest::SqlVerb;
use sqlparser::ast::{
    AlterTableOperation, CreateTable, Expr, FromTable, ObjectName, ObjectNamePart, ObjectType,
    OnConflictAction, OnInsert, Query, Select, SetExpr, Statement, TableFactor, TableObject, Visit,
    Visitor, visit_relations,
};
use sqlparser::dialect::{PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

/// The SQL flavour of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// Why a statement may not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// The statement is allowed in kind but `table` is not granted `verb`.
    #[error("access denied: `{table}` is not granted `{}`", verb.as_str())]
    AccessDenied { table: String, verb: SqlVerb },
    /// The statement is never allowed, or could not be understood.
    #[error("refused: {0}")]
    Refused(String),
}

fn refused(reason: impl Into<String>) -> Denial {
    Denial::Refused(reason.into())
}

/// How the host must run an allowed statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reads only.
    Read,
    /// Changes rows or schema; runs in a transaction, rolled back in a dry-run.
    Change,
    /// `VACUUM`/`ANALYZE`: cannot run in a transaction; recorded, not run, in a
    /// dry-run.
    Maintenance,
}

/// A table that must be a partition of one of `parents` (catalog check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCheck {
    pub partition: String,
    pub parents: Vec<String>,
}

/// An allowed statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub kind: Kind,
    /// The verb the statement is recorded under.
    pub verb: SqlVerb,
    pub partition_checks: Vec<PartitionCheck>,
}

/// A task's table grants, with names normalized as the database folds them.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    tables: BTreeMap<String, BTreeSet<SqlVerb>>,
}

impl Grants {
    pub fn new(tables: &BTreeMap<String, Vec<SqlVerb>>) -> Self {
        Grants {
            tables: tables
                .iter()
                .map(|(name, verbs)| (name.to_lowercase(), verbs.iter().copied().collect()))
                .collect(),
        }
    }

    /// `table` is a normalized name (`events`, `public.events`). A grant on
    /// `events` covers `events` and `public.events`; `*` covers every table.
    pub fn allows(&self, table: &str, verb: SqlVerb) -> bool {
        let has = |key: &str| self.tables.get(key).is_some_and(|v| v.contains(&verb));
        if has(table) || has("*") {
            return true;
        }
        match table.strip_prefix("public.") {
            Some(bare) => has(bare),
            None => !table.contains('.') && has(&format!("public.{table}")),
        }
    }

    /// Granted tables that allow `verb`, as written in the manifest.
    pub fn tables_with(&self, verb: SqlVerb) -> Vec<String> {
        self.tables
            .iter()
            .filter(|(_, v)| v.contains(&verb))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn require(&self, table: &str, verb: SqlVerb) -> Result<(), Denial> {
        if self.allows(table, verb) {
            Ok(())
        } else {
            Err(Denial::AccessDenied {
                table: table.to_owned(),
                verb,
            })
        }
    }
}

/// Whether two normalized names denote the same table under the default
/// search path.
pub fn same_table(a: &str, b: &str) -> bool {
    let bare = |n: &str| n.strip_prefix("public.").unwrap_or(n).to_owned();
    bare(a) == bare(b)
}

/// Checks one statement against `grants`.
pub fn check(dialect: Dialect, sql: &str, grants: &Grants) -> Result<Checked, Denial> {
    let words = leading_words(dialect, sql)?;
    let first = words.first().map(String::as_str).unwrap_or("");
    let second = words.get(1).map(String::as_str).unwrap_or("");
    match (first, second) {
        ("", _) => return Err(refused("the statement is empty")),
        ("vacuum", _) | ("analyze", _) | ("analyse", _) => {
            return maintenance(dialect, sql, grants);
        }
        ("do", _) => return Err(refused("DO blocks are never allowed")),
        ("alter", "system") => return Err(refused("ALTER SYSTEM is never allowed")),
        ("set", _) | ("reset", _) => {
            return Err(refused(
                "SET and RESET are never allowed: the host owns session settings and the role",
            ));
        }
        _ => {}
    }
    let statements = match dialect {
        Dialect::Postgres => Parser::parse_sql(&PostgreSqlDialect {}, sql),
        Dialect::Sqlite => Parser::parse_sql(&SQLiteDialect {}, sql),
    }
    .map_err(|e| refused(format!("cannot parse the statement: {e}")))?;
    let statement = match statements.as_slice() {
        [one] => one,
        [] => return Err(refused("the statement is empty")),
        many => {
            return Err(refused(format!(
                "exactly one statement per call is allowed, got {}",
                many.len()
            )));
        }
    };
    Analysis::new(dialect, grants).statement(statement)
}

/// The first two words, lowercased, to refuse what the parser may not know.
fn leading_words(dialect: Dialect, sql: &str) -> Result<Vec<String>, Denial> {
    let tokens = tokens(dialect, sql)?;
    Ok(tokens
        .iter()
        .take(2)
        .map(|t| match t {
            Token::Word(w) if w.quote_style.is_none() => w.value.to_lowercase(),
            other => other.to_string(),
        })
        .collect())
}

fn tokens(dialect: Dialect, sql: &str) -> Result<Vec<Token>, Denial> {
    let tokens = match dialect {
        Dialect::Postgres => Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize(),
        Dialect::Sqlite => Tokenizer::new(&SQLiteDialect {}, sql).tokenize(),
    }
    .map_err(|e| refused(format!("cannot parse the statement: {e}")))?;
    Ok(tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect())
}

/// Normalized name: unquoted identifiers fold to lower case, parts joined
/// with `.`.
pub fn name(object: &ObjectName) -> String {
    object
        .0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) if ident.quote_style.is_some() => ident.value.clone(),
            ObjectNamePart::Identifier(ident) => ident.value.to_lowercase(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn fold(value: &str, quote: Option<char>) -> String {
    if quote.is_some() {
        value.to_owned()
    } else {
        value.to_lowercase()
    }
}

/// What a statement does, before grants are checked.
struct Plan {
    kind: Kind,
    verb: SqlVerb,
    /// Tables the statement acts on, with the verb each needs; the statement
    /// may also read them.
    targets: Vec<(String, SqlVerb)>,
    /// Names that are not existing tables (a table being created).
    exempt: Vec<String>,
    checks: Vec<PartitionCheck>,
}

impl Plan {
    fn new(kind: Kind, verb: SqlVerb, targets: Vec<(String, SqlVerb)>) -> Self {
        Plan {
            kind,
            verb,
            targets,
            exempt: Vec::new(),
            checks: Vec::new(),
        }
    }
}

struct Analysis<'g> {
    dialect: Dialect,
    grants: &'g Grants,
}

impl<'g> Analysis<'g> {
    fn new(dialect: Dialect, grants: &'g Grants) -> Self {
        Analysis { dialect, grants }
    }

    fn statement(&self, statement: &Statement) -> Result<Checked, Denial> {
        // A top-level `WITH` names relations that are not tables.
        let (ctes, main) = match statement {
            Statement::Query(query) => {
                let ctes = query.with.as_ref().map(cte_names).unwrap_or_default();
                match query.body.as_ref() {
                    SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) => (ctes, s),
                    _ => (ctes, statement),
                }
            }
            other => (BTreeSet::new(), other),
        };

        let mut scan = Scan::new();
        if let ControlFlow::Break(denial) = statement.visit(&mut scan) {
            return Err(denial);
        }
        let allowed_statements = if std::ptr::eq(main, statement) { 1 } else { 2 };
        if scan.statements > allowed_statements {
            return Err(refused(
                "data-modifying statements inside WITH or subqueries are not allowed",
            ));
        }

        let plan = self.classify(main)?;
        for (table, verb) in &plan.targets {
            self.grants.require(table, *verb)?;
        }
        for relation in &scan.relations {
            let covered = ctes.contains(relation)
                || plan.targets.iter().any(|(t, _)| same_table(t, relation))
                || plan.exempt.iter().any(|t| same_table(t, relation))
                || plan
                    .checks
                    .iter()
                    .any(|c| same_table(&c.partition, relation))
                || readable_catalog(self.dialect, relation);
            if !covered {
                self.grants.require(relation, SqlVerb::Select)?;
            }
        }
        Ok(Checked {
            kind: plan.kind,
            verb: plan.verb,
            partition_checks: plan.checks,
        })
    }

    fn classify(&self, statement: &Statement) -> Result<Plan, Denial> {
        match statement {
            Statement::Query(_) => Ok(Plan::new(Kind::Read, SqlVerb::Select, Vec::new())),
            Statement::Insert(insert) => {
                let TableObject::TableName(table) = &insert.table else {
                    return Err(refused("INSERT INTO a table function is not allowed"));
                };
                let table = name(table);
                let mut targets = vec![(table.clone(), SqlVerb::Insert)];
                let updates = match &insert.on {
                    Some(OnInsert::OnConflict(c)) => {
                        matches!(c.action, OnConflictAction::DoUpdate(_))
                    }
                    Some(OnInsert::DuplicateKeyUpdate(_)) => true,
                    _ => false,
                } || insert.or.is_some()
                    || insert.replace_into;
                if updates {
                    targets.push((table, SqlVerb::Update));
                }
                Ok(Plan::new(Kind::Change, SqlVerb::Insert, targets))
            }
            Statement::Update(update) => Ok(Plan::new(
                Kind::Change,
                SqlVerb::Update,
                with_verb(relations_of(&update.table), SqlVerb::Update),
            )),
            Statement::Delete(delete) => {
                if !delete.tables.is_empty() {
                    return Err(refused("multi-table DELETE is not allowed"));
                }
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) =
                    &delete.from;
                Ok(Plan::new(
                    Kind::Change,
                    SqlVerb::Delete,
                    with_verb(relations_of(from), SqlVerb::Delete),
                ))
            }
            Statement::CreateTable(create) => self.create_table(create),
            Statement::CreateIndex(index) => Ok(Plan::new(
                Kind::Change,
                SqlVerb::Ddl,
                vec![(name(&index.table_name), SqlVerb::Ddl)],
            )),
            Statement::Truncate(truncate) => Ok(Plan::new(
                Kind::Change,
                SqlVerb::Ddl,
                truncate
                    .table_names
                    .iter()
                    .map(|t| (name(&t.name), SqlVerb::Ddl))
                    .collect(),
            )),
            Statement::Drop {
                object_type,
                names,
                cascade,
                temporary,
                ..
            } => {
                if *object_type != ObjectType::Table || *temporary {
                    return Err(refused(format!(
                        "DROP {object_type} is not allowed; only DROP TABLE is"
                    )));
                }
                self.drop_tables(names, *cascade)
            }
            Statement::AlterTable(alter) => self.alter_table(&name(&alter.name), &alter.operations),
            other => Err(refused(format!("{} is not allowed", statement_kind(other)))),
        }
    }

    fn create_table(&self, create: &CreateTable) -> Result<Plan, Denial> {
        if create.temporary {
            return Err(refused("temporary tables are not allowed"));
        }
        let table = name(&create.name);
        let Some(parent) = &create.partition_of else {
            return Ok(Plan::new(
                Kind::Change,
                SqlVerb::Ddl,
                vec![(table, SqlVerb::Ddl)],
            ));
        };
        if self.dialect != Dialect::Postgres {
            return Err(refused("this database has no partitions"));
        }
        if create.query.is_some()
            || create.like.is_some()
            || create.clone.is_some()
            || create.inherits.is_some()
            || create.or_replace
        {
            return Err(refused(
                "CREATE TABLE … PARTITION OF must not copy, inherit or select from other tables",
            ));
        }
        if create.for_values.is_none() {
            return Err(refused("CREATE TABLE … PARTITION OF needs FOR VALUES"));
        }
        let parent = name(parent);
        if same_table(&parent, &table) {
            return Err(refused("a table cannot be a partition of itself"));
        }
        let mut plan = Plan::new(
            Kind::Change,
            SqlVerb::CreatePartition,
            vec![(parent, SqlVerb::CreatePartition)],
        );
        // The new table does not exist yet, so it needs no grant of its own.
        plan.exempt.push(table);
        Ok(plan)
    }

    fn drop_tables(&self, names: &[ObjectName], cascade: bool) -> Result<Plan, Denial> {
        let parents = self.grants.tables_with(SqlVerb::DropPartition);
        let mut plan = Plan::new(Kind::Change, SqlVerb::Ddl, Vec::new());
        for table in names.iter().map(name) {
            if self.grants.allows(&table, SqlVerb::Ddl) {
                plan.targets.push((table, SqlVerb::Ddl));
            } else if parents.is_empty() || self.dialect != Dialect::Postgres {
                return Err(Denial::AccessDenied {
                    table,
                    verb: SqlVerb::DropPartition,
                });
            } else if cascade {
                return Err(refused(
                    "DROP TABLE … CASCADE is not allowed on a partition; drop it alone",
                ));
            } else {
                plan.verb = SqlVerb::DropPartition;
                plan.checks.push(PartitionCheck {
                    partition: table,
                    parents: parents.clone(),
                });
            }
        }
        Ok(plan)
    }

    fn alter_table(&self, table: &str, operations: &[AlterTableOperation]) -> Result<Plan, Denial> {
        let mut checks = Vec::new();
        for op in operations {
            match op {
                AlterTableOperation::DetachPartitionOf { partition, mode } => {
                    if mode.is_some() {
                        return Err(refused(
                            "DETACH PARTITION CONCURRENTLY/FINALIZE cannot run inside the host's transaction",
                        ));
                    }
                    checks.push(PartitionCheck {
                        partition: name(partition),
                        parents: vec![table.to_owned()],
                    });
                }
                _ => {
                    return Ok(Plan::new(
                        Kind::Change,
                        SqlVerb::Ddl,
                        vec![(table.to_owned(), SqlVerb::Ddl)],
                    ));
                }
            }
        }
        let mut plan = Plan::new(
            Kind::Change,
            SqlVerb::DropPartition,
            vec![(table.to_owned(), SqlVerb::DropPartition)],
        );
        plan.checks = checks;
        Ok(plan)
    }
}

/// The names a top-level `WITH` defines that denote only its CTEs. A name
/// that some CTE's own body uses before it is defined (a CTE may see only
/// those before it, and itself when `RECURSIVE`) denotes a table there, so
/// it is not exempt: the table must be granted.
fn cte_names(with: &sqlparser::ast::With) -> BTreeSet<String> {
    let names: Vec<String> = with
        .cte_tables
        .iter()
        .map(|cte| fold(&cte.alias.name.value, cte.alias.name.quote_style))
        .collect();
    let mut tables = BTreeSet::new();
    for (i, cte) in with.cte_tables.iter().enumerate() {
        let visible = if with.recursive {
            &names[..=i]
        } else {
            &names[..i]
        };
        for relation in relations_of(&cte.query) {
            if !visible.contains(&relation) {
                tables.insert(relation);
            }
        }
    }
    names.into_iter().filter(|n| !tables.contains(n)).collect()
}

fn with_verb(tables: Vec<String>, verb: SqlVerb) -> Vec<(String, SqlVerb)> {
    tables.into_iter().map(|t| (t, verb)).collect()
}

fn relations_of<V: Visit>(node: &V) -> Vec<String> {
    let mut found = Vec::new();
    let _ = visit_relations(node, |r| {
        found.push(name(r));
        ControlFlow::<()>::Continue(())
    });
    found
}

/// The statement's kind in words, for refusals.
fn statement_kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    match statement {
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => {
            "transaction control (each call is its own transaction)".into()
        }
        Statement::Copy { .. } => "COPY".into(),
        Statement::Call(_) => "CALL".into(),
        Statement::LISTEN { .. } | Statement::NOTIFY { .. } | Statement::UNLISTEN { .. } => {
            "LISTEN/NOTIFY".into()
        }
        Statement::CreateFunction(_) => "CREATE FUNCTION".into(),
        Statement::CreateExtension(_) => "CREATE EXTENSION".into(),
        _ => words.join(" ").to_uppercase(),
    }
}

/// Catalog relations any task may read: enough to list partitions, sizes
/// and columns, nothing that shows other sessions, roles or settings.
fn readable_catalog(dialect: Dialect, relation: &str) -> bool {
    const POSTGRES: &[&str] = &[
        "pg_class",
        "pg_namespace",
        "pg_inherits",
        "pg_partitioned_table",
        "pg_attribute",
        "pg_type",
        "pg_index",
        "pg_indexes",
        "pg_tables",
        "pg_constraint",
        "pg_stat_user_tables",
        "pg_statio_user_tables",
        "information_schema.tables",
        "information_schema.columns",
    ];
    match dialect {
        Dialect::Postgres => {
            let bare = relation.strip_prefix("pg_catalog.").unwrap_or(relation);
            POSTGRES.contains(&bare)
        }
        Dialect::Sqlite => matches!(relation, "sqlite_master" | "sqlite_schema"),
    }
}

/// Functions a statement may call: pure date/time, math, string, JSON,
/// aggregate and window functions, and a few read-only size helpers.
const ALLOWED_FUNCTIONS: &[&str] = &[
    // date and time
    "now",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtimestamp",
    "localtime",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "date_trunc",
    "date_part",
    "date_bin",
    "extract",
    "age",
    "make_date",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "make_interval",
    "to_timestamp",
    "to_date",
    "to_char",
    "to_number",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "isfinite",
    "timezone",
    "datetime",
    "date",
    "time",
    "julianday",
    "strftime",
    "unixepoch",
    // math
    "abs",
    "ceil",
    "ceiling",
    "floor",
    "round",
    "trunc",
    "mod",
    "power",
    "sqrt",
    "greatest",
    "least",
    "sign",
    "div",
    "ln",
    "log",
    "exp",
    "random",
    "width_bucket",
    // conditional
    "coalesce",
    "nullif",
    "ifnull",
    "iif",
    // strings
    "lower",
    "upper",
    "length",
    "char_length",
    "octet_length",
    "substr",
    "substring",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "concat",
    "concat_ws",
    "format",
    "left",
    "right",
    "lpad",
    "rpad",
    "replace",
    "split_part",
    "strpos",
    "position",
    "starts_with",
    "regexp_replace",
    "regexp_match",
    "regexp_matches",
    "md5",
    "encode",
    "decode",
    "quote_ident",
    "quote_literal",
    "instr",
    "hex",
    "printf",
    "gen_random_uuid",
    "sha256",
    "string_to_array",
    "array_to_string",
    "array_length",
    "cardinality",
    "unnest",
    "generate_series",
    "array",
    // json
    "to_json",
    "to_jsonb",
    "json_build_object",
    "jsonb_build_object",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "jsonb_set",
    "json_extract",
    "json_object",
    "json_array",
    "json_group_array",
    // aggregates and windows
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "group_concat",
    "bool_and",
    "bool_or",
    "every",
    "row_number",
    "rank",
    "dense_rank",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "ntile",
    // catalog helpers that only read sizes and names
    "pg_relation_size",
    "pg_total_relation_size",
    "pg_table_size",
    "pg_indexes_size",
    "pg_size_pretty",
    "pg_get_expr",
    "to_regclass",
    "format_type",
    // locks that end with the transaction
    "pg_try_advisory_xact_lock",
    "pg_advisory_xact_lock",
];

fn function_allowed(name: &str) -> bool {
    let bare = name.strip_prefix("pg_catalog.").unwrap_or(name);
    ALLOWED_FUNCTIONS.contains(&bare)
}

/// One pass over the whole statement: the relations it names, its function
/// calls and nested statements.
struct Scan {
    relations: Vec<String>,
    statements: usize,
    /// The next relation the visitor reports is a table function's name.
    next_is_function: bool,
}

impl Scan {
    fn new() -> Self {
        Scan {
            relations: Vec::new(),
            statements: 0,
            next_is_function: false,
        }
    }

    fn function(&self, name: &str) -> ControlFlow<Denial> {
        if function_allowed(name) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(refused(format!("function `{name}` is not allowed")))
        }
    }
}

impl Visitor for Scan {
    type Break = Denial;

    fn pre_visit_statement(&mut self, _statement: &Statement) -> ControlFlow<Denial> {
        self.statements += 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<Denial> {
        fn body(set: &SetExpr) -> ControlFlow<Denial> {
            match set {
                SetExpr::Table(_) => {
                    ControlFlow::Break(refused("TABLE name is not allowed; use SELECT * FROM name"))
                }
                SetExpr::Merge(_) => ControlFlow::Break(refused("MERGE is not allowed")),
                SetExpr::SetOperation { left, right, .. } => {
                    body(left)?;
                    body(right)
                }
                _ => ControlFlow::Continue(()),
            }
        }
        body(&query.body)
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<Denial> {
        if select.into.is_some() {
            return ControlFlow::Break(refused("SELECT … INTO is not allowed"));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<Denial> {
        match factor {
            TableFactor::Table {
                name: n,
                args: Some(_),
                ..
            } => {
                self.next_is_function = true;
                self.function(&name(n))
            }
            TableFactor::Function { name: n, .. } => self.function(&name(n)),
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<Denial> {
        if std::mem::take(&mut self.next_is_function) {
            return ControlFlow::Continue(());
        }
        self.relations.push(name(relation));
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<Denial> {
        if let Expr::Function(f) = expr {
            return self.function(&name(&f.name));
        }
        ControlFlow::Continue(())
    }
}

/// `VACUUM` and `ANALYZE`, parsed by hand: the SQL parser does not know
/// PostgreSQL's forms of them. Only options and a list of tables (with
/// optional column lists) are accepted.
fn maintenance(dialect: Dialect, sql: &str, grants: &Grants) -> Result<Checked, Denial> {
    let tokens = tokens(dialect, sql)?;
    let mut p = Tokens { tokens, at: 0 };
    let command = p.word().unwrap_or_default();
    let vacuum = command == "vacuum";
    let mut analyze = !vacuum;
    const OPTIONS: &[&str] = &[
        "analyze",
        "analyse",
        "verbose",
        "freeze",
        "full",
        "skip_locked",
        "index_cleanup",
        "process_toast",
        "process_main",
        "truncate",
        "parallel",
        "disable_page_skipping",
        "buffer_usage_limit",
        "skip_database_stats",
        "only_database_stats",
    ];
    if p.eat(&Token::LParen) {
        loop {
            let option = p
                .word()
                .ok_or_else(|| refused(format!("{command}: expected an option name")))?;
            if !OPTIONS.contains(&option.as_str()) {
                return Err(refused(format!(
                    "{command}: option `{option}` is not allowed"
                )));
            }
            if option == "analyze" || option == "analyse" {
                analyze = true;
            }
            // An optional value: a word, number or string.
            if !matches!(p.peek(), Some(Token::Comma) | Some(Token::RParen)) {
                p.next();
            }
            if p.eat(&Token::RParen) {
                break;
            }
            if !p.eat(&Token::Comma) {
                return Err(refused(format!("{command}: malformed option list")));
            }
        }
    }
    while let Some(Token::Word(w)) = p.peek() {
        let word = w.value.to_lowercase();
        if w.quote_style.is_none()
            && matches!(
                word.as_str(),
                "full" | "freeze" | "verbose" | "analyze" | "analyse"
            )
        {
            if word.starts_with("analy") {
                analyze = true;
            }
            p.next();
        } else {
            break;
        }
    }
    if dialect == Dialect::Sqlite && vacuum && p.peek().is_some_and(|t| *t != Token::SemiColon) {
        return Err(refused("VACUUM takes no arguments on this database"));
    }
    let mut tables = Vec::new();
    while p.peek().is_some() && p.peek() != Some(&Token::SemiColon) {
        let mut parts = vec![
            p.ident()
                .ok_or_else(|| refused(format!("{command}: expected a table name")))?,
        ];
        while p.eat(&Token::Period) {
            parts.push(
                p.ident()
                    .ok_or_else(|| refused(format!("{command}: expected a table name")))?,
            );
        }
        tables.push(parts.join("."));
        if p.eat(&Token::LParen) {
            while !p.eat(&Token::RParen) {
                match p.next() {
                    Some(Token::Word(_)) | Some(Token::Comma) => {}
                    _ => return Err(refused(format!("{command}: malformed column list"))),
                }
            }
        }
        if !p.eat(&Token::Comma) {
            break;
        }
    }
    p.eat(&Token::SemiColon);
    if p.peek().is_some() {
        return Err(refused(format!(
            "{command}: unexpected `{}`; exactly one statement per call is allowed",
            p.peek().map(ToString::to_string).unwrap_or_default()
        )));
    }
    let mut verbs = Vec::new();
    if vacuum {
        verbs.push(SqlVerb::Vacuum);
    }
    if analyze {
        verbs.push(SqlVerb::Analyze);
    }
    let everything = ["*".to_owned()];
    let targets: &[String] = if tables.is_empty() {
        &everything
    } else {
        &tables
    };
    for table in targets {
        for verb in &verbs {
            grants.require(table, *verb)?;
        }
    }
    Ok(Checked {
        kind: Kind::Maintenance,
        verb: if vacuum {
            SqlVerb::Vacuum
        } else {
            SqlVerb::Analyze
        },
        partition_checks: Vec::new(),
    })
}

struct Tokens {
    tokens: Vec<Token>,
    at: usize,
}

impl Tokens {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn eat(&mut self, token: &Token) -> bool {
        if self.peek() == Some(token) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn word(&mut self) -> Option<String> {
        match self.peek() {
            Some(Token::Word(w)) => {
                let value = w.value.to_lowercase();
                self.at += 1;
                Some(value)
            }
            _ => None,
        }
    }

    fn ident(&mut self) -> Option<String> {
        match self.peek() {
            Some(Token::Word(w)) => {
                let value = fold(&w.value, w.quote_style);
                self.at += 1;
                Some(value)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SqlVerb::*;

    fn grants() -> Grants {
        let mut t = BTreeMap::new();
        t.insert(
            "events".to_owned(),
            vec![Select, CreatePartition, DropPartition],
        );
        t.insert(
            "device_logs".to_owned(),
            vec![Select, Delete, Vacuum, Analyze],
        );
        t.insert("devices".to_owned(), vec![Select, Update]);
        t.insert("audit_logs".to_owned(), vec![Insert]);
        t.insert("tokens".to_owned(), vec![Delete]);
        t.insert("scratch".to_owned(), vec![Ddl]);
        t.insert("public.readings".to_owned(), vec![Select]);
        Grants::new(&t)
    }

    enum Want {
        Ok(Kind, SqlVerb),
        Denied(&'static str, SqlVerb),
        Refused(&'static str),
    }
    use Want::*;

    fn run(dialect: Dialect, cases: &[(&str, Want)]) {
        let g = grants();
        let mut failures = Vec::new();
        for (sql, want) in cases {
            let got = check(dialect, sql, &g);
            let ok = match (want, &got) {
                (Ok(kind, verb), std::result::Result::Ok(c)) => c.kind == *kind && c.verb == *verb,
                (Denied(table, verb), Err(Denial::AccessDenied { table: t, verb: v })) => {
                    t == table && v == verb
                }
                (Refused(part), Err(Denial::Refused(reason))) => reason.contains(part),
                _ => false,
            };
            if !ok {
                failures.push(format!("{sql}\n    got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn postgres_statements() {
        run(
            Dialect::Postgres,
            &[
                // reads
                ("SELECT count(*) FROM events", Ok(Kind::Read, Select)),
                (
                    "select * from EVENTS where created_at < now() - interval '90 days'",
                    Ok(Kind::Read, Select),
                ),
                ("SELECT * FROM public.events", Ok(Kind::Read, Select)),
                ("SELECT * FROM readings", Ok(Kind::Read, Select)),
                ("SELECT * FROM other.events", Denied("other.events", Select)),
                ("SELECT * FROM \"Events\"", Denied("Events", Select)),
                ("SELECT * FROM secrets", Denied("secrets", Select)),
                (
                    "SELECT e.id FROM events e JOIN secrets s ON s.id = e.id",
                    Denied("secrets", Select),
                ),
                (
                    "SELECT * FROM events WHERE id IN (SELECT id FROM secrets)",
                    Denied("secrets", Select),
                ),
                (
                    "SELECT (SELECT max(id) FROM secrets)",
                    Denied("secrets", Select),
                ),
                (
                    "SELECT * FROM events UNION SELECT * FROM secrets",
                    Denied("secrets", Select),
                ),
                (
                    "WITH old AS (SELECT id FROM events) SELECT * FROM old",
                    Ok(Kind::Read, Select),
                ),
                (
                    "WITH old AS (SELECT id FROM secrets) SELECT * FROM old",
                    Denied("secrets", Select),
                ),
                (
                    "SELECT * FROM (WITH secrets AS (SELECT 1) SELECT * FROM secrets) x",
                    Denied("secrets", Select),
                ),
                (
                    "SELECT date_trunc('day', now()), coalesce(max(id), 0) FROM events",
                    Ok(Kind::Read, Select),
                ),
                (
                    "SELECT * FROM generate_series(1, 10)",
                    Ok(Kind::Read, Select),
                ),
                (
                    "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass",
                    Ok(Kind::Read, Select),
                ),
                ("SELECT * FROM pg_catalog.pg_class", Ok(Kind::Read, Select)),
                ("SELECT * FROM pg_authid", Denied("pg_authid", Select)),
                (
                    "SELECT query FROM pg_stat_activity",
                    Denied("pg_stat_activity", Select),
                ),
                ("SELECT * FROM pg_settings", Denied("pg_settings", Select)),
                ("TABLE secrets", Refused("")),
                ("SELECT * INTO copy FROM events", Refused("INTO")),
                ("SELECT * FROM events FOR UPDATE", Ok(Kind::Read, Select)),
                // functions
                (
                    "SELECT pg_read_file('/etc/passwd')",
                    Refused("pg_read_file"),
                ),
                (
                    "SELECT pg_catalog.pg_read_file('/etc/passwd')",
                    Refused("pg_read_file"),
                ),
                (
                    "SELECT * FROM pg_read_file('/etc/passwd')",
                    Refused("pg_read_file"),
                ),
                (
                    "SELECT pg_terminate_backend(1)",
                    Refused("pg_terminate_backend"),
                ),
                ("SELECT lo_import('/etc/passwd')", Refused("lo_import")),
                (
                    "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)",
                    Refused("dblink"),
                ),
                (
                    "SELECT set_config('role', 'postgres', false)",
                    Refused("set_config"),
                ),
                (
                    "SELECT current_setting('data_directory')",
                    Refused("current_setting"),
                ),
                ("SELECT pg_sleep(600)", Refused("pg_sleep")),
                ("SELECT pg_advisory_lock(1)", Refused("pg_advisory_lock")),
                ("SELECT nextval('events_id_seq')", Refused("nextval")),
                ("SELECT my_schema.evil()", Refused("my_schema.evil")),
                (
                    "SELECT count(*) FILTER (WHERE pg_sleep(1) IS NULL) FROM events",
                    Refused("pg_sleep"),
                ),
                (
                    "SELECT id FROM events ORDER BY pg_sleep(1)",
                    Refused("pg_sleep"),
                ),
                // writes
                (
                    "DELETE FROM device_logs WHERE created_at < $1",
                    Ok(Kind::Change, Delete),
                ),
                (
                    "DELETE FROM device_logs WHERE ctid = ANY(ARRAY(SELECT ctid FROM device_logs WHERE created_at < $1 LIMIT 1000))",
                    Ok(Kind::Change, Delete),
                ),
                (
                    "DELETE FROM tokens WHERE id IN (SELECT id FROM tokens LIMIT 10)",
                    Ok(Kind::Change, Delete),
                ),
                ("DELETE FROM events", Denied("events", Delete)),
                (
                    "DELETE FROM device_logs USING secrets WHERE secrets.id = device_logs.id",
                    Denied("secrets", Select),
                ),
                (
                    "DELETE FROM device_logs USING devices WHERE devices.id = device_logs.id RETURNING device_logs.id",
                    Ok(Kind::Change, Delete),
                ),
                (
                    "UPDATE devices SET key_hash = $1 WHERE id = $2",
                    Ok(Kind::Change, Update),
                ),
                ("UPDATE events SET x = 1", Denied("events", Update)),
                (
                    "UPDATE devices SET x = s.x FROM secrets s",
                    Denied("secrets", Select),
                ),
                (
                    "INSERT INTO audit_logs (action) VALUES ($1)",
                    Ok(Kind::Change, Insert),
                ),
                (
                    "INSERT INTO audit_logs SELECT * FROM devices",
                    Ok(Kind::Change, Insert),
                ),
                (
                    "INSERT INTO audit_logs SELECT * FROM secrets",
                    Denied("secrets", Select),
                ),
                (
                    "INSERT INTO devices (id) VALUES (1)",
                    Denied("devices", Insert),
                ),
                (
                    "INSERT INTO audit_logs (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = 2",
                    Denied("audit_logs", Update),
                ),
                (
                    "INSERT INTO audit_logs (id) VALUES (1) ON CONFLICT DO NOTHING",
                    Ok(Kind::Change, Insert),
                ),
                (
                    "WITH d AS (DELETE FROM secrets RETURNING *) SELECT * FROM d",
                    Refused("data-modifying"),
                ),
                (
                    "WITH d AS (DELETE FROM tokens RETURNING *) SELECT * FROM d",
                    Refused("data-modifying"),
                ),
                (
                    "WITH old AS (SELECT id FROM devices) UPDATE devices SET x = 1 WHERE id IN (SELECT id FROM old)",
                    Ok(Kind::Change, Update),
                ),
                (
                    "INSERT INTO audit_logs (action) VALUES (pg_read_file('/etc/passwd'))",
                    Refused("pg_read_file"),
                ),
                // partitions
                (
                    "CREATE TABLE events_2026_11_25 PARTITION OF events FOR VALUES FROM ('2026-11-25') TO ('2026-11-26')",
                    Ok(Kind::Change, CreatePartition),
                ),
                (
                    "CREATE TABLE IF NOT EXISTS public.events_2026_11_25 PARTITION OF public.events FOR VALUES FROM ('2026-11-25') TO ('2026-11-26')",
                    Ok(Kind::Change, CreatePartition),
                ),
                (
                    "CREATE TABLE x PARTITION OF secrets FOR VALUES FROM (1) TO (2)",
                    Denied("secrets", CreatePartition),
                ),
                (
                    "CREATE TABLE x PARTITION OF device_logs FOR VALUES FROM (1) TO (2)",
                    Denied("device_logs", CreatePartition),
                ),
                ("CREATE TEMP TABLE x (id int)", Refused("temporary")),
                ("CREATE TABLE x (id int)", Denied("x", Ddl)),
                ("CREATE TABLE scratch (id int)", Ok(Kind::Change, Ddl)),
                (
                    "CREATE TABLE scratch AS SELECT * FROM secrets",
                    Denied("secrets", Select),
                ),
                (
                    "DROP TABLE events_2020_01_01",
                    Ok(Kind::Change, DropPartition),
                ),
                (
                    "DROP TABLE IF EXISTS events_2020_01_01, events_2020_01_02",
                    Ok(Kind::Change, DropPartition),
                ),
                ("DROP TABLE events_2020_01_01 CASCADE", Refused("CASCADE")),
                ("DROP TABLE scratch", Ok(Kind::Change, Ddl)),
                ("DROP VIEW v", Refused("DROP VIEW")),
                ("DROP SCHEMA public CASCADE", Refused("DROP SCHEMA")),
                (
                    "ALTER TABLE events DETACH PARTITION events_2020_01_01",
                    Ok(Kind::Change, DropPartition),
                ),
                (
                    "ALTER TABLE events DETACH PARTITION events_2020_01_01 CONCURRENTLY",
                    Refused("CONCURRENTLY"),
                ),
                (
                    "ALTER TABLE device_logs DETACH PARTITION x",
                    Denied("device_logs", DropPartition),
                ),
                ("ALTER TABLE events ADD COLUMN x int", Denied("events", Ddl)),
                (
                    "ALTER TABLE scratch ADD COLUMN x int",
                    Ok(Kind::Change, Ddl),
                ),
                (
                    "ALTER TABLE events OWNER TO postgres",
                    Denied("events", Ddl),
                ),
                ("CREATE INDEX ON scratch (id)", Ok(Kind::Change, Ddl)),
                ("CREATE INDEX ON events (id)", Denied("events", Ddl)),
                ("TRUNCATE events", Denied("events", Ddl)),
                // maintenance
                ("VACUUM ANALYZE device_logs", Ok(Kind::Maintenance, Vacuum)),
                (
                    "VACUUM (ANALYZE, VERBOSE, SKIP_LOCKED) device_logs",
                    Ok(Kind::Maintenance, Vacuum),
                ),
                (
                    "VACUUM device_logs (created_at)",
                    Ok(Kind::Maintenance, Vacuum),
                ),
                ("VACUUM", Denied("*", Vacuum)),
                ("VACUUM ANALYZE events", Denied("events", Vacuum)),
                ("VACUUM (FULL) device_logs", Ok(Kind::Maintenance, Vacuum)),
                ("VACUUM (bogus) device_logs", Refused("bogus")),
                ("VACUUM device_logs; DROP TABLE x", Refused("one statement")),
                ("ANALYZE device_logs", Ok(Kind::Maintenance, Analyze)),
                ("ANALYZE devices", Denied("devices", Analyze)),
                // always refused
                ("RESET ROLE", Refused("SET and RESET")),
                ("SET ROLE postgres", Refused("SET and RESET")),
                ("set statement_timeout = 0", Refused("SET and RESET")),
                ("SET LOCAL lock_timeout = 0", Refused("SET and RESET")),
                (
                    "SET SESSION AUTHORIZATION postgres",
                    Refused("SET and RESET"),
                ),
                ("/* hi */ SET search_path = evil", Refused("SET and RESET")),
                ("BEGIN", Refused("transaction control")),
                ("COMMIT", Refused("transaction control")),
                ("ROLLBACK", Refused("transaction control")),
                ("SAVEPOINT a", Refused("transaction control")),
                ("COPY events TO PROGRAM 'id'", Refused("COPY")),
                ("COPY events FROM '/etc/passwd'", Refused("COPY")),
                ("DO $$ BEGIN PERFORM 1; END $$", Refused("DO blocks")),
                ("CALL cleanup()", Refused("CALL")),
                ("LISTEN x", Refused("LISTEN")),
                ("NOTIFY x", Refused("LISTEN")),
                ("ALTER SYSTEM SET work_mem = '1GB'", Refused("ALTER SYSTEM")),
                (
                    "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
                    Refused("CREATE FUNCTION"),
                ),
                ("CREATE EXTENSION dblink", Refused("CREATE EXTENSION")),
                ("GRANT ALL ON events TO public", Refused("not allowed")),
                ("CREATE ROLE evil SUPERUSER", Refused("not allowed")),
                ("EXPLAIN ANALYZE DELETE FROM events", Refused("not allowed")),
                ("LOCK TABLE events", Refused("not allowed")),
                ("PREPARE p AS SELECT 1", Refused("not allowed")),
                ("SELECT 1; SELECT 2", Refused("exactly one statement")),
                (
                    "SELECT 1; DELETE FROM events",
                    Refused("exactly one statement"),
                ),
                ("", Refused("empty")),
                ("   ", Refused("empty")),
                ("SELEC 1", Refused("cannot parse")),
            ],
        );
    }

    #[test]
    fn sqlite_statements() {
        run(
            Dialect::Sqlite,
            &[
                ("SELECT count(*) FROM events", Ok(Kind::Read, Select)),
                (
                    "SELECT name FROM sqlite_master WHERE type = 'table'",
                    Ok(Kind::Read, Select),
                ),
                ("SELECT * FROM secrets", Denied("secrets", Select)),
                (
                    "DELETE FROM device_logs WHERE created_at < datetime('now', '-90 days')",
                    Ok(Kind::Change, Delete),
                ),
                (
                    "DELETE FROM device_logs WHERE rowid IN (SELECT rowid FROM device_logs LIMIT 100)",
                    Ok(Kind::Change, Delete),
                ),
                ("DELETE FROM events", Denied("events", Delete)),
                (
                    "INSERT OR REPLACE INTO audit_logs (id) VALUES (1)",
                    Denied("audit_logs", Update),
                ),
                (
                    "SELECT load_extension('evil.so')",
                    Refused("load_extension"),
                ),
                ("ATTACH DATABASE '/etc/passwd' AS x", Refused("not allowed")),
                ("PRAGMA writable_schema = 1", Refused("not allowed")),
                ("VACUUM INTO '/tmp/x'", Refused("no arguments")),
                ("VACUUM main", Refused("no arguments")),
                ("VACUUM", Denied("*", Vacuum)),
                ("ANALYZE device_logs", Ok(Kind::Maintenance, Analyze)),
                (
                    "CREATE TABLE x PARTITION OF events FOR VALUES FROM (1) TO (2)",
                    Refused(""),
                ),
                (
                    "DROP TABLE events_2020_01_01",
                    Denied("events_2020_01_01", DropPartition),
                ),
                ("BEGIN", Refused("transaction control")),
                ("SELECT 1; SELECT 2", Refused("exactly one statement")),
            ],
        );
    }

    #[test]
    fn partition_checks_name_the_granted_parents() {
        let c = check(Dialect::Postgres, "DROP TABLE events_2020_01_01", &grants()).unwrap();
        assert_eq!(
            c.partition_checks,
            vec![PartitionCheck {
                partition: "events_2020_01_01".into(),
                parents: vec!["events".into()],
            }]
        );
        let c = check(
            Dialect::Postgres,
            "ALTER TABLE events DETACH PARTITION events_2020_01_01",
            &grants(),
        )
        .unwrap();
        assert_eq!(c.partition_checks[0].parents, vec!["events".to_owned()]);
    }

    #[test]
    fn a_wildcard_grant_covers_every_table() {
        let mut t = BTreeMap::new();
        t.insert("*".to_owned(), vec![Vacuum, Analyze]);
        let g = Grants::new(&t);
        assert!(check(Dialect::Postgres, "VACUUM ANALYZE", &g).is_ok());
        assert!(check(Dialect::Postgres, "VACUUM ANALYZE anything", &g).is_ok());
        assert!(matches!(
            check(Dialect::Postgres, "SELECT * FROM anything", &g),
            Err(Denial::AccessDenied { .. })
        ));
    }
}
