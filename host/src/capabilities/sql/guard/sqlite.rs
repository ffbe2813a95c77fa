//! SQLite statements, parsed with `sqlparser`: the statement's kind and
//! verb, the tables it acts on and reads (CTE names apart), and one scan
//! of the whole tree for its relations, function calls and nested
//! statements. The engine's authorizer checks each statement again as it
//! is prepared (`sql/sqlite.rs`).

use super::{
    Checked, Denial, Dialect, Grants, Kind, function_allowed, only_statement, pg, readable_catalog,
    refused, same_table,
};
use crate::manifest::SqlVerb;
use sqlparser::ast::{
    AlterTableOperation, CreateTable, Expr, FromTable, ObjectName, ObjectNamePart, ObjectType,
    OnConflictAction, OnInsert, Query, Select, SetExpr, Statement, TableFactor, TableObject, Visit,
    Visitor, visit_relations,
};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};
use std::collections::BTreeSet;
use std::ops::ControlFlow;

/// The most operators a statement may hold. SQLite refuses an expression
/// nested deeper than 1,000 (`SQLITE_MAX_EXPR_DEPTH`), and a chain such as
/// `1+1+…+1` nests one level per operator: tens of thousands of them, well
/// within the statement size cap, would make the parsed tree too deep to
/// walk or free on a thread's stack. Refused before parsing.
const MAX_OPERATORS: usize = 2_000;

pub(super) fn check(sql: &str, grants: &Grants) -> Result<Checked, Denial> {
    let dialect = Dialect::Sqlite;
    let tokens = tokens(dialect, sql)?;
    let operators = tokens.iter().filter(|t| is_operator(t)).count();
    if operators > MAX_OPERATORS {
        return Err(refused(format!(
            "the statement holds {operators} operators, over the cap of {MAX_OPERATORS} (SQLite nests expressions at most 1000 deep)"
        )));
    }
    let words = leading_words(&tokens);
    let first = words.first().map(String::as_str).unwrap_or("");
    match first {
        "" => return Err(refused("the statement is empty")),
        "vacuum" => return Err(refused(pg::VACUUM_CALL)),
        "analyze" => return Err(refused(pg::ANALYZE_CALL)),
        _ => {}
    }
    let statements = Parser::parse_sql(&SQLiteDialect {}, sql)
        .map_err(|e| refused(format!("cannot parse the statement: {e}")))?;
    let statement = only_statement(&statements)?;
    let expanded = expanded_bytes(statement);
    if expanded > MAX_EXPANDED_BYTES {
        return Err(refused(format!(
            "the statement's common table expressions expand to {expanded} bytes or more, over the cap of {MAX_EXPANDED_BYTES} (SQLite copies a CTE's query for every reference to it while it prepares the statement)"
        )));
    }
    let flattened = flattened_bytes(statement);
    if flattened > MAX_EXPANDED_BYTES {
        return Err(refused(format!(
            "the statement's subqueries expand to {flattened} bytes or more, over the cap of {MAX_EXPANDED_BYTES} (SQLite copies the columns of a subquery or CTE into every reference to them when it merges it into the query around it, while it prepares the statement)"
        )));
    }
    Analysis::new(dialect, grants).statement(statement)
}

/// The most text SQLite may copy while it expands a statement's common
/// table expressions. Every reference to a CTE is a copy of its query, and
/// of everything that query references in turn, made while the statement
/// is prepared, which no deadline interrupts: a chain of CTEs each
/// referring to the one before twice doubles per step (twenty steps take
/// gigabytes), and a long single chain overflows SQLite's stack.
const MAX_EXPANDED_BYTES: u64 = 1 << 20;

/// The text SQLite copies to expand `statement`'s CTEs, counted from above:
/// each reference anywhere in the statement costs its CTE's query plus the
/// expansion of what that query references (a name defined in several
/// scopes counts as its largest definition).
fn expanded_bytes(statement: &Statement) -> u64 {
    use std::collections::{HashMap, HashSet};
    struct Ctes(HashMap<String, Vec<(u64, Vec<String>)>>);
    impl Visitor for Ctes {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            for cte in query.with.iter().flat_map(|w| &w.cte_tables) {
                let body = cte.query.to_string().len() as u64;
                self.0
                    .entry(cte.alias.name.value.to_ascii_lowercase())
                    .or_default()
                    .push((body, relations_of(&*cte.query)));
            }
            ControlFlow::Continue(())
        }
    }
    let mut ctes = Ctes(HashMap::new());
    let _ = statement.visit(&mut ctes);
    let defs = ctes.0;
    if defs.is_empty() {
        return 0;
    }
    // Sizes by name, depth first without recursion (a chain may be
    // thousands long); a cycle (invalid SQL) counts as nothing more.
    let mut size: HashMap<&str, u64> = HashMap::new();
    let mut open: HashSet<&str> = HashSet::new();
    for root in defs.keys() {
        let mut stack = vec![(root.as_str(), false)];
        while let Some((name, children_done)) = stack.pop() {
            if size.contains_key(name) {
                continue;
            }
            let Some(bodies) = defs.get(name) else {
                size.insert(name, 0);
                continue;
            };
            if children_done {
                let total = bodies
                    .iter()
                    .map(|(body, refs)| {
                        refs.iter().fold(*body, |sum, r| {
                            sum.saturating_add(size.get(r.as_str()).copied().unwrap_or(0))
                        })
                    })
                    .max()
                    .unwrap_or(0);
                size.insert(name, total);
                open.remove(name);
            } else if open.insert(name) {
                stack.push((name, true));
                for (_, refs) in bodies {
                    stack.extend(refs.iter().map(|r| (r.as_str(), false)));
                }
            }
        }
    }
    relations_of(statement).iter().fold(0u64, |sum, r| {
        sum.saturating_add(size.get(r.as_str()).copied().unwrap_or(0))
    })
}

/// The expression text SQLite may make while it flattens `statement`'s
/// subqueries (in `FROM`, and CTEs named there) into the queries that
/// select from them, counted from above: every column reference in a query
/// may become a copy of the largest column of what it selects from, so
/// nested subqueries that each use a column several times multiply.
fn flattened_bytes(statement: &Statement) -> u64 {
    use std::collections::HashMap;
    use std::rc::Rc;
    #[derive(Default)]
    struct Flatten {
        ctes: HashMap<String, Rc<Query>>,
        /// A CTE's columns and what it copies; `None` while it is being
        /// measured (a recursive CTE counts nothing more for itself).
        widths: HashMap<String, Option<(Columns, u64)>>,
        /// Queries already measured (by address: each node is measured
        /// once, however deep it lies): their columns, and what they copy
        /// in all.
        measured: HashMap<usize, (Columns, u64)>,
        /// What the whole statement copies: the sum over every query.
        total: u64,
    }
    impl Flatten {
        /// The columns `query` yields, once flattened.
        fn width(&mut self, query: &Query) -> Columns {
            self.measure(query).0
        }

        /// `query`'s columns and what it copies in all (counted into
        /// `total` the first time only).
        fn measure(&mut self, query: &Query) -> (Columns, u64) {
            let at = query as *const Query as usize;
            if let Some(measured) = self.measured.get(&at) {
                return measured.clone();
            }
            let before = self.total;
            let columns = self.body_width(&query.body);
            // `ORDER BY` may name result columns: each such reference is a
            // copy of one.
            if let Some(order_by) = &query.order_by {
                let copies = order_by
                    .text_len()
                    .saturating_add(copies(order_by, &columns));
                self.total = self.total.saturating_add(copies);
            }
            // Every `OVER name`, wherever it is, copies the named window,
            // which may copy the windows it is built on.
            if let SetExpr::Select(select) = &*query.body
                && !select.named_window.is_empty()
            {
                let windows: u64 = select.named_window.iter().map(|w| w.text_len()).sum();
                let windows = windows.saturating_mul(select.named_window.len() as u64);
                let mut uses = 0u64;
                let _ = sqlparser::ast::visit_expressions(query, |e| {
                    if matches!(e, Expr::Function(f) if f.over.is_some()) {
                        uses += 1;
                    }
                    ControlFlow::<()>::Continue(())
                });
                self.total = self.total.saturating_add(uses.saturating_mul(windows));
            }
            let measured = (columns, self.total.saturating_sub(before));
            self.measured.insert(at, measured.clone());
            measured
        }

        fn body_width(&mut self, body: &SetExpr) -> Columns {
            match body {
                SetExpr::Select(select) => self.select_width(select),
                SetExpr::Query(query) => self.width(query),
                SetExpr::SetOperation { left, right, .. } => {
                    let mut columns = self.body_width(left);
                    columns.merge(&self.body_width(right));
                    columns
                }
                other => Columns::unnamed(other.to_string().len() as u64),
            }
        }

        /// Measures one `SELECT`: its columns' sizes once every reference
        /// is a copy of the column it names in what it selects from (the
        /// widest, when the name is not known); adds the whole to `total`,
        /// and returns its columns.
        fn select_width(&mut self, select: &Select) -> Columns {
            let (from, arms) = self.tables_width(&select.from);
            let expand = |node: &dyn VisitNode, columns: &Columns| {
                node.text_len().saturating_add(node.copies(columns))
            };
            let mut out = Columns::default();
            let mut aliased = Columns::default();
            let mut total = 0u64;
            for item in &select.projection {
                use sqlparser::ast::SelectItem;
                let size = match item {
                    SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                        out.merge(&from);
                        from.widest.max(1)
                    }
                    SelectItem::ExprWithAlias { alias, .. } => {
                        let size = expand(item, &from);
                        out.name(&alias.value, size);
                        aliased.name(&alias.value, size);
                        size
                    }
                    SelectItem::UnnamedExpr(expr) => {
                        let size = expand(item, &from);
                        match column_name(expr) {
                            Some(name) => out.name(name, size),
                            None => out.widest = out.widest.max(size),
                        }
                        size
                    }
                    other => {
                        let size = expand(other, &from);
                        out.widest = out.widest.max(size);
                        aliased.widest = aliased.widest.max(size);
                        size
                    }
                };
                total = total.saturating_add(size);
            }
            // `WHERE`, `GROUP BY` and `HAVING` may name a result column's
            // alias: SQLite copies the aliased expression there.
            let mut copy = from.clone();
            copy.merge(&aliased);
            for clause in [&select.selection, &select.having].into_iter().flatten() {
                total = total
                    .saturating_add(expand(clause, &copy))
                    .saturating_add(propagated(clause));
            }
            total = total.saturating_add(expand(&select.group_by, &copy));
            // A join's `ON` may name the columns of a subquery it joins.
            for table in &select.from {
                for join in &table.joins {
                    total = total.saturating_add(copies(&join.join_operator, &copy));
                }
            }
            // Merged into a compound subquery (`UNION ALL`), or pushed into
            // one, the query is copied once per arm.
            self.total = self.total.saturating_add(total.saturating_mul(arms));
            out
        }

        /// The columns of what `tables` (with their joins) select from, and
        /// the most arms of a compound among them.
        fn tables_width(&mut self, tables: &[sqlparser::ast::TableWithJoins]) -> (Columns, u64) {
            let (mut from, mut arms) = (Columns::default(), 1u64);
            for table in tables {
                let factors =
                    std::iter::once(&table.relation).chain(table.joins.iter().map(|j| &j.relation));
                for factor in factors {
                    let (columns, n) = self.factor_width(factor);
                    from.merge(&columns);
                    arms = arms.max(n);
                }
            }
            (from, arms)
        }

        /// `UPDATE … FROM`: its `SET`, `WHERE` and `RETURNING` may name the
        /// columns of what it updates from.
        fn update(&mut self, update: &sqlparser::ast::Update) {
            let (mut from, mut arms) = self.tables_width(std::slice::from_ref(&update.table));
            if let Some(
                sqlparser::ast::UpdateTableFromKind::BeforeSet(tables)
                | sqlparser::ast::UpdateTableFromKind::AfterSet(tables),
            ) = &update.from
            {
                let (columns, n) = self.tables_width(tables);
                from.merge(&columns);
                arms = arms.max(n);
            }
            let total = copies(&update.assignments, &from)
                .saturating_add(copies(&update.selection, &from))
                .saturating_add(copies(&update.returning, &from))
                .saturating_add(update.selection.as_ref().map_or(0, propagated));
            self.total = self.total.saturating_add(total.saturating_mul(arms));
        }

        /// The columns `factor` yields and its arms (1 unless it is a
        /// compound query).
        fn factor_width(&mut self, factor: &TableFactor) -> (Columns, u64) {
            match factor {
                TableFactor::Derived { subquery, .. } => {
                    (self.width(subquery), arms(&subquery.body))
                }
                TableFactor::NestedJoin {
                    table_with_joins, ..
                } => self.tables_width(std::slice::from_ref(table_with_joins)),
                TableFactor::Table { name: object, .. } => {
                    let key = name(object);
                    // Every reference to a CTE is a copy of its query, with
                    // all that query copies in turn.
                    let columns = match self.widths.get(&key) {
                        Some(Some((columns, copies))) => {
                            let (columns, copies) = (columns.clone(), *copies);
                            self.total = self.total.saturating_add(copies);
                            columns
                        }
                        Some(None) => Columns::default(),
                        None => match self.ctes.get(&key).cloned() {
                            Some(query) => {
                                self.widths.insert(key.clone(), None);
                                let measured = self.measure(&query);
                                self.widths.insert(key.clone(), Some(measured.clone()));
                                measured.0
                            }
                            None => Columns::default(),
                        },
                    };
                    let arms = self.ctes.get(&key).map_or(1, |q| arms(&q.body));
                    (columns, arms)
                }
                _ => (Columns::default(), 1),
            }
        }
    }
    impl Visitor for Flatten {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            self.width(query);
            ControlFlow::Continue(())
        }

        fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
            if let Statement::Update(update) = statement {
                self.update(update);
            }
            ControlFlow::Continue(())
        }
    }
    // The CTEs by name (a name defined in several scopes: its first
    // definition), then every query of the statement measured.
    struct Ctes(HashMap<String, Rc<Query>>);
    impl Visitor for Ctes {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            for cte in query.with.iter().flat_map(|w| &w.cte_tables) {
                self.0
                    .entry(cte.alias.name.value.to_ascii_lowercase())
                    .or_insert_with(|| Rc::new((*cte.query).clone()));
            }
            ControlFlow::Continue(())
        }
    }
    let mut ctes = Ctes(HashMap::new());
    let _ = statement.visit(&mut ctes);
    let mut flatten = Flatten {
        ctes: ctes.0,
        ..Flatten::default()
    };
    let _ = statement.visit(&mut flatten);
    flatten.total
}

/// The columns a query yields, as the text SQLite may copy into each
/// reference to one: by name where the name is known, the widest for any
/// other name.
#[derive(Clone, Default)]
struct Columns {
    widest: u64,
    named: std::collections::HashMap<String, u64>,
}

impl Columns {
    fn unnamed(size: u64) -> Self {
        Columns {
            widest: size,
            named: Default::default(),
        }
    }

    fn name(&mut self, name: &str, size: u64) {
        let slot = self.named.entry(name.to_ascii_lowercase()).or_insert(0);
        *slot = (*slot).max(size);
        self.widest = self.widest.max(size);
    }

    fn merge(&mut self, other: &Columns) {
        self.widest = self.widest.max(other.widest);
        for (name, size) in &other.named {
            let slot = self.named.entry(name.clone()).or_insert(0);
            *slot = (*slot).max(*size);
        }
    }

    /// What a reference to `name` may copy.
    fn get(&self, name: &str) -> u64 {
        self.named
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(self.widest)
    }
}

/// The name SQLite gives a result column that is a bare column reference.
fn column_name(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Identifier(ident) => Some(&ident.value),
        Expr::CompoundIdentifier(parts) => parts.last().map(|p| p.value.as_str()),
        _ => None,
    }
}

/// What `flattened_bytes` measures of a node: its text, and what its
/// column references may copy.
trait VisitNode {
    fn text_len(&self) -> u64;
    fn copies(&self, columns: &Columns) -> u64;
}

impl<T: Visit + std::fmt::Display> VisitNode for T {
    fn text_len(&self) -> u64 {
        self.to_string().len() as u64
    }

    fn copies(&self, columns: &Columns) -> u64 {
        copies(self, columns)
    }
}

/// What the column references in `node` (nested queries included) may
/// copy of `columns`.
fn copies<V: Visit>(node: &V, columns: &Columns) -> u64 {
    let mut n = 0u64;
    let _ = sqlparser::ast::visit_expressions(node, |e| {
        if let Some(name) = column_name(e) {
            n = n.saturating_add(columns.get(name));
        }
        ControlFlow::<()>::Continue(())
    });
    n
}

/// The arms of a compound query (`UNION ALL` …); 1 for any other.
fn arms(body: &SetExpr) -> u64 {
    match body {
        SetExpr::SetOperation { left, right, .. } => arms(left).saturating_add(arms(right)),
        SetExpr::Query(query) => arms(&query.body),
        _ => 1,
    }
}

/// What SQLite's constant propagation may copy in a `WHERE` or `HAVING`:
/// a `column = constant` term puts the constant in place of every other
/// reference to the column.
fn propagated(clause: &Expr) -> u64 {
    let mut largest = 0u64;
    let _ = sqlparser::ast::visit_expressions(clause, |e| {
        if let Expr::Value(v) = e {
            largest = largest.max(v.to_string().len() as u64);
        }
        ControlFlow::<()>::Continue(())
    });
    largest.saturating_mul(references(clause))
}

/// How many column references `node` holds, nested queries included.
fn references<V: Visit>(node: &V) -> u64 {
    let mut n = 0u64;
    let _ = sqlparser::ast::visit_expressions(node, |e| {
        if matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
            n += 1;
        }
        ControlFlow::<()>::Continue(())
    });
    n
}

/// The first two words, lowercased, to refuse what the parser may not know.
fn leading_words(tokens: &[Token]) -> Vec<String> {
    tokens
        .iter()
        .take(2)
        .map(|t| match t {
            Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_lowercase(),
            other => other.to_string(),
        })
        .collect()
}

/// Whether `token` joins two expressions (or negates one): each such
/// token can add a level to the parsed tree.
fn is_operator(token: &Token) -> bool {
    use sqlparser::keywords::Keyword;
    match token {
        Token::Word(w) if w.quote_style.is_none() => matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::LIKE
                | Keyword::GLOB
                | Keyword::REGEXP
                | Keyword::MATCH
                | Keyword::BETWEEN
                | Keyword::IN
                | Keyword::COLLATE
                | Keyword::ESCAPE
        ),
        Token::Plus
        | Token::Minus
        | Token::Mul
        | Token::Div
        | Token::Mod
        | Token::StringConcat
        | Token::Eq
        | Token::DoubleEq
        | Token::Neq
        | Token::Lt
        | Token::Gt
        | Token::LtEq
        | Token::GtEq
        | Token::Spaceship
        | Token::Ampersand
        | Token::Pipe
        | Token::Caret
        | Token::Tilde
        | Token::ShiftLeft
        | Token::ShiftRight
        | Token::Arrow
        | Token::LongArrow => true,
        _ => false,
    }
}

fn tokens(dialect: Dialect, sql: &str) -> Result<Vec<Token>, Denial> {
    let tokens = match dialect {
        Dialect::Postgres => {
            return Err(refused("PostgreSQL statements are parsed by libpg_query"));
        }
        Dialect::Sqlite => Tokenizer::new(&SQLiteDialect {}, sql).tokenize(),
    }
    .map_err(|e| refused(format!("cannot parse the statement: {e}")))?;
    Ok(tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect())
}

/// Normalized SQLite name: SQLite compares identifiers, quoted or not,
/// ignoring ASCII case only; parts joined with `.`.
fn name(object: &ObjectName) -> String {
    object
        .0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => ident.value.to_ascii_lowercase(),
            other => other.to_string().to_ascii_lowercase(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn fold(value: &str, _quote: Option<char>) -> String {
    value.to_ascii_lowercase()
}

/// What a statement does, before grants are checked.
struct Plan {
    kind: Kind,
    verb: SqlVerb,
    /// Tables the statement acts on, with the verb each needs; the statement
    /// may also read them.
    targets: Vec<(String, SqlVerb)>,
}

impl Plan {
    fn new(kind: Kind, verb: SqlVerb, targets: Vec<(String, SqlVerb)>) -> Self {
        Plan {
            kind,
            verb,
            targets,
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
            Statement::Insert(insert) => (insert_ctes(statement, insert), statement),
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
                || readable_catalog(self.dialect, relation);
            if !covered {
                self.grants.require(relation, SqlVerb::Select)?;
            }
        }
        Ok(Checked {
            kind: plan.kind,
            verb: plan.verb,
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
        if create.partition_of.is_some() {
            return Err(refused("this database has no partitions"));
        }
        Ok(Plan::new(
            Kind::Change,
            SqlVerb::Ddl,
            vec![(name(&create.name), SqlVerb::Ddl)],
        ))
    }

    fn drop_tables(&self, names: &[ObjectName], cascade: bool) -> Result<Plan, Denial> {
        if cascade {
            return Err(refused(
                "DROP TABLE … CASCADE is not allowed: drop each table by name",
            ));
        }
        Ok(Plan::new(
            Kind::Change,
            SqlVerb::Ddl,
            with_verb(names.iter().map(name).collect(), SqlVerb::Ddl),
        ))
    }

    fn alter_table(&self, table: &str, operations: &[AlterTableOperation]) -> Result<Plan, Denial> {
        if operations
            .iter()
            .any(|op| matches!(op, AlterTableOperation::DetachPartitionOf { .. }))
        {
            return Err(refused("this database has no partitions"));
        }
        Ok(Plan::new(
            Kind::Change,
            SqlVerb::Ddl,
            vec![(table.to_owned(), SqlVerb::Ddl)],
        ))
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

/// The names the `WITH` of an `INSERT`'s query defines (`INSERT INTO t
/// WITH c AS (…) SELECT … FROM c`), which denote its CTEs in that query
/// only: one the rest of the statement also names (an upsert's `SET`,
/// `RETURNING`) denotes a table there, so it is not exempt.
fn insert_ctes(statement: &Statement, insert: &sqlparser::ast::Insert) -> BTreeSet<String> {
    let Some(source) = &insert.source else {
        return BTreeSet::new();
    };
    let Some(with) = &source.with else {
        return BTreeSet::new();
    };
    let count =
        |relations: Vec<String>, name: &str| relations.iter().filter(|r| *r == name).count();
    cte_names(with)
        .into_iter()
        .filter(|name| count(relations_of(statement), name) == count(relations_of(&**source), name))
        .collect()
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
        for part in &relation.0 {
            if let ObjectNamePart::Identifier(ident) = part
                && ident.value.contains('.')
            {
                return ControlFlow::Break(refused(format!(
                    "the name \"{}\" contains `.`: a table name with a dot cannot be granted",
                    ident.value
                )));
            }
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
