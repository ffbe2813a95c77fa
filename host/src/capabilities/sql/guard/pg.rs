//! PostgreSQL statements, parsed by PostgreSQL's own grammar (libpg_query):
//! the tree the guard checks is the tree the server builds, with the same
//! tokenizer, identifier folding and truncation.
//!
//! The parse tree is walked generically (as the serialized protobuf), so no
//! node kind can hide a relation or a function call from the guard: every
//! `RangeVar` anywhere in the tree is a relation that needs a grant for the
//! use its position gives it, and every `FuncCall` anywhere is checked
//! against the allowlist.

use super::{
    Checked, Denial, Grants, Kind, SqlVerb, function_allowed, readable_catalog, refused, same_table,
};
use pg_query::protobuf::{
    AlterTableType, DropBehavior, ObjectType, OnConflictAction, ReindexObjectType,
};
use serde_json::{Map, Value};

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
    let statement = match parsed.protobuf.stmts.as_slice() {
        [one] => one,
        [] => return Err(refused("the statement is empty")),
        many => {
            return Err(refused(format!(
                "exactly one statement per call is allowed, got {}",
                many.len()
            )));
        }
    };
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

/// `{"node": {"Kind": body}}` → `("Kind", body)`.
fn unwrap_node(value: &Value) -> Option<(&str, &Value)> {
    let inner = value.as_object()?.get("node")?.as_object()?;
    if inner.len() != 1 {
        return None;
    }
    inner.iter().next().map(|(k, v)| (k.as_str(), v))
}

fn field<'a>(body: &'a Value, key: &str) -> &'a Value {
    body.get(key).unwrap_or(&Value::Null)
}

fn list<'a>(body: &'a Value, key: &str) -> &'a [Value] {
    body.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn int(body: &Value, key: &str) -> i64 {
    body.get(key).and_then(Value::as_i64).unwrap_or(0)
}

fn flag(body: &Value, key: &str) -> bool {
    body.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn text<'a>(body: &'a Value, key: &str) -> &'a str {
    body.get(key).and_then(Value::as_str).unwrap_or("")
}

fn present(value: &Value) -> bool {
    !value.is_null()
}

/// The `sval`s of a list of `String` nodes (a qualified name).
fn strings(items: &[Value]) -> Option<Vec<String>> {
    items
        .iter()
        .map(|item| match unwrap_node(item) {
            Some(("String", s)) => Some(text(s, "sval").to_owned()),
            _ => None,
        })
        .collect()
}

fn is_range_var(body: &Value) -> bool {
    body.get("relname").is_some() && body.get("relpersistence").is_some()
}

fn is_func_call(body: &Value) -> bool {
    body.get("funcname").is_some() && body.get("agg_star").is_some()
}

fn is_select(body: &Value) -> bool {
    body.get("larg").is_some() && body.get("target_list").is_some()
}

fn relation(body: &Value) -> Result<Relation, Denial> {
    let part = |key: &str| -> Result<Option<String>, Denial> {
        let value = text(body, key);
        if value.contains('.') {
            return Err(refused(format!(
                "the name \"{value}\" contains `.`: a table name with a dot cannot be granted"
            )));
        }
        Ok((!value.is_empty()).then(|| value.to_owned()))
    };
    if part("catalogname")?.is_some() {
        return Err(refused("a database-qualified name is not allowed"));
    }
    let name = part("relname")?.ok_or_else(|| refused("a relation without a name"))?;
    Ok(Relation {
        schema: part("schemaname")?,
        name,
    })
}

/// The name a `DROP TABLE` object list gives.
fn dropped(object: &Value) -> Result<Relation, Denial> {
    let parts = match unwrap_node(object) {
        Some(("List", l)) => strings(list(l, "items")),
        _ => None,
    }
    .ok_or_else(|| refused("DROP TABLE names a table by a name it cannot read"))?;
    if parts.iter().any(|p| p.contains('.')) {
        return Err(refused("a table name containing `.` cannot be granted"));
    }
    match parts.as_slice() {
        [name] => Ok(Relation {
            schema: None,
            name: name.clone(),
        }),
        [schema, name] => Ok(Relation {
            schema: Some(schema.clone()),
            name: name.clone(),
        }),
        _ => Err(refused("a database-qualified name is not allowed")),
    }
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

    fn function(&mut self, name: &[String], call: &Value) -> Found {
        let bare = match name {
            [bare] => bare.as_str(),
            [schema, bare] if schema == "pg_catalog" => bare.as_str(),
            _ => {
                return Err(refused(format!(
                    "function `{}` is not allowed",
                    name.join(".")
                )));
            }
        };
        if !function_allowed(bare) {
            return Err(refused(format!(
                "function `{}` is not allowed",
                name.join(".")
            )));
        }
        if bare == "current_setting" {
            // Only settings that say what the server is, never paths, roles
            // or other sessions' values.
            let setting = list(call, "args")
                .first()
                .and_then(string_constant)
                .map(|s| s.to_ascii_lowercase());
            match setting.as_deref() {
                Some(s) if READABLE_SETTINGS.contains(&s) => {}
                _ => {
                    return Err(refused(format!(
                        "function `current_setting` is allowed only for {}",
                        READABLE_SETTINGS.join(", ")
                    )));
                }
            }
        }
        Ok(())
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

    /// The statement at the top.
    fn statement(&mut self, kind: &str, body: &Value) -> Result<Plan, Denial> {
        let top = Scope::default();
        match kind {
            "SelectStmt" => {
                self.select(body, &top)?;
                Ok(Plan::new(Kind::Read, SqlVerb::Select))
            }
            "InsertStmt" => {
                let scope = self.with(field(body, "with_clause"), &top)?;
                let target = field(body, "relation");
                self.range_var(target, Use::Act(SqlVerb::Insert), &top)?;
                let conflict = field(body, "on_conflict_clause");
                if int(conflict, "action") == OnConflictAction::OnconflictUpdate as i64 {
                    self.range_var(target, Use::Act(SqlVerb::Update), &top)?;
                }
                self.rest(body, &["with_clause", "relation"], &scope)?;
                Ok(Plan::new(Kind::Change, SqlVerb::Insert))
            }
            "UpdateStmt" => {
                let scope = self.with(field(body, "with_clause"), &top)?;
                self.range_var(field(body, "relation"), Use::Act(SqlVerb::Update), &top)?;
                self.rest(body, &["with_clause", "relation"], &scope)?;
                Ok(Plan::new(Kind::Change, SqlVerb::Update))
            }
            "DeleteStmt" => {
                let scope = self.with(field(body, "with_clause"), &top)?;
                self.range_var(field(body, "relation"), Use::Act(SqlVerb::Delete), &top)?;
                self.rest(body, &["with_clause", "relation"], &scope)?;
                Ok(Plan::new(Kind::Change, SqlVerb::Delete))
            }
            "CreateStmt" => self.create_table(body),
            "CreateTableAsStmt" => {
                if int(body, "objtype") != ObjectType::ObjectTable as i64
                    || flag(body, "is_select_into")
                {
                    return Err(refused(
                        "only CREATE TABLE … AS is allowed of its kind; SELECT … INTO is not",
                    ));
                }
                let into = field(body, "into");
                self.range_var(field(into, "rel"), Use::Act(SqlVerb::Ddl), &top)?;
                self.rest(into, &["rel"], &top)?;
                self.value(field(body, "query"), &top)?;
                Ok(Plan::new(Kind::Change, SqlVerb::Ddl))
            }
            "IndexStmt" => {
                if flag(body, "concurrent") {
                    return Err(refused(
                        "CREATE INDEX CONCURRENTLY cannot run inside the host's transaction",
                    ));
                }
                self.range_var(field(body, "relation"), Use::Act(SqlVerb::Ddl), &top)?;
                self.rest(body, &["relation"], &top)?;
                Ok(Plan::new(Kind::Change, SqlVerb::Ddl))
            }
            "ReindexStmt" => {
                for param in list(body, "params") {
                    if let Some(("DefElem", d)) = unwrap_node(param)
                        && text(d, "defname") == "concurrently"
                    {
                        return Err(refused(
                            "REINDEX CONCURRENTLY cannot run inside the host's transaction",
                        ));
                    }
                }
                let target = int(body, "kind");
                if target != ReindexObjectType::ReindexObjectTable as i64
                    && target != ReindexObjectType::ReindexObjectIndex as i64
                {
                    return Err(refused("only REINDEX TABLE and REINDEX INDEX are allowed"));
                }
                // An index is granted by its own name.
                self.range_var(field(body, "relation"), Use::Act(SqlVerb::Ddl), &top)?;
                self.rest(body, &["relation"], &top)?;
                Ok(Plan::new(Kind::Change, SqlVerb::Ddl))
            }
            "TruncateStmt" => {
                if int(body, "behavior") == DropBehavior::DropCascade as i64 {
                    return Err(refused(
                        "TRUNCATE … CASCADE is not allowed: name every table",
                    ));
                }
                for r in list(body, "relations") {
                    match unwrap_node(r) {
                        Some(("RangeVar", rv)) => {
                            self.range_var(rv, Use::Act(SqlVerb::Ddl), &top)?
                        }
                        _ => return Err(refused("TRUNCATE of something other than a table")),
                    }
                }
                Ok(Plan::new(Kind::Change, SqlVerb::Ddl))
            }
            "DropStmt" => self.drop(body),
            "AlterTableStmt" => self.alter_table(body),
            "VacuumStmt" => self.maintenance(body),
            other => Err(refused(describe_refused(other))),
        }
    }

    fn create_table(&mut self, body: &Value) -> Result<Plan, Denial> {
        let top = Scope::default();
        let new = field(body, "relation");
        let table = relation(new)?;
        if text(new, "relpersistence") == "t" {
            return Err(refused("temporary tables are not allowed"));
        }
        if present(field(body, "of_typename")) {
            return Err(refused("CREATE TABLE … OF type is not allowed"));
        }
        let parents = list(body, "inh_relations");
        if present(field(body, "partbound")) {
            let [parent] = parents else {
                return Err(refused("CREATE TABLE … PARTITION OF names one parent"));
            };
            let Some(("RangeVar", parent)) = unwrap_node(parent) else {
                return Err(refused("CREATE TABLE … PARTITION OF names one parent"));
            };
            let parent_rel = relation(parent)?;
            if same_table(&parent_rel.key(), &table.key()) {
                return Err(refused("a table cannot be a partition of itself"));
            }
            // Free text under `create_partition` is refused: that verb is
            // for the call the host builds itself. With `ddl` on the parent
            // this is plain DDL, which needs `ddl` on the new table too.
            if !self.grants.allows(&parent_rel.key(), SqlVerb::Ddl)
                && self
                    .grants
                    .allows(&parent_rel.key(), SqlVerb::CreatePartition)
            {
                return Err(refused(CREATE_PARTITION_CALL));
            }
            self.range_var(parent, Use::Act(SqlVerb::Ddl), &top)?;
            self.range_var(new, Use::Act(SqlVerb::Ddl), &top)?;
            self.rest(body, &["relation", "inh_relations"], &top)?;
            return Ok(Plan::new(Kind::Change, SqlVerb::Ddl));
        }
        self.range_var(new, Use::Act(SqlVerb::Ddl), &top)?;
        // INHERITS makes the new table's rows part of every scan of the
        // parent: it changes the parent too.
        for parent in parents {
            match unwrap_node(parent) {
                Some(("RangeVar", p)) => self.range_var(p, Use::Act(SqlVerb::Ddl), &top)?,
                _ => return Err(refused("INHERITS names a table the guard cannot read")),
            }
        }
        self.rest(body, &["relation", "inh_relations"], &top)?;
        Ok(Plan::new(Kind::Change, SqlVerb::Ddl))
    }

    fn drop(&mut self, body: &Value) -> Result<Plan, Denial> {
        if int(body, "remove_type") != ObjectType::ObjectTable as i64 {
            return Err(refused("only DROP TABLE is allowed of DROP statements"));
        }
        if int(body, "behavior") == DropBehavior::DropCascade as i64 {
            return Err(refused(
                "DROP TABLE … CASCADE is not allowed: drop each table by name",
            ));
        }
        for object in list(body, "objects") {
            let table = dropped(object)?;
            if table.is_system() {
                return Err(refused(format!("`{}` is a system relation", table.key())));
            }
            let key = table.key();
            if !self.grants.allows(&key, SqlVerb::Ddl)
                && !self.grants.tables_with(SqlVerb::DropPartition).is_empty()
            {
                return Err(refused(DROP_PARTITION_CALL));
            }
            self.add(table, Use::Act(SqlVerb::Ddl));
        }
        Ok(Plan::new(Kind::Change, SqlVerb::Ddl))
    }

    fn alter_table(&mut self, body: &Value) -> Result<Plan, Denial> {
        if int(body, "objtype") != ObjectType::ObjectTable as i64 {
            return Err(refused("only ALTER TABLE is allowed of ALTER statements"));
        }
        let top = Scope::default();
        let target = field(body, "relation");
        let table = relation(target)?;
        let commands: Vec<&Value> = list(body, "cmds")
            .iter()
            .map(|c| match unwrap_node(c) {
                Some(("AlterTableCmd", cmd)) => Ok(cmd),
                _ => Err(refused("an ALTER TABLE command the guard cannot read")),
            })
            .collect::<Result<_, _>>()?;
        let detach = AlterTableType::AtDetachPartition as i64;
        let finalize = AlterTableType::AtDetachPartitionFinalize as i64;
        if commands
            .iter()
            .any(|c| int(c, "subtype") == detach || int(c, "subtype") == finalize)
            && !self.grants.allows(&table.key(), SqlVerb::Ddl)
            && self.grants.allows(&table.key(), SqlVerb::DropPartition)
        {
            return Err(refused(DETACH_PARTITION_CALL));
        }
        let attach = AlterTableType::AtAttachPartition as i64;
        if commands.iter().any(|c| int(c, "subtype") == attach)
            && !self.grants.allows(&table.key(), SqlVerb::Ddl)
            && self.grants.allows(&table.key(), SqlVerb::CreatePartition)
        {
            return Err(refused(ATTACH_PARTITION_CALL));
        }
        self.range_var(target, Use::Act(SqlVerb::Ddl), &top)?;
        for cmd in commands {
            let subtype = int(cmd, "subtype");
            if REFUSED_ALTERS.iter().any(|t| *t as i64 == subtype) {
                return Err(refused(format!(
                    "ALTER TABLE … {} is not allowed",
                    alter_words(subtype)
                )));
            }
            let def = field(cmd, "def");
            match unwrap_node(def) {
                // ATTACH/DETACH PARTITION and INHERIT/NO INHERIT change
                // the other table as well.
                Some(("PartitionCmd", pc)) => {
                    if flag(pc, "concurrent") {
                        return Err(refused(DETACH_CONCURRENTLY_CALL));
                    }
                    self.range_var(field(pc, "name"), Use::Act(SqlVerb::Ddl), &top)?;
                    self.rest(pc, &["name"], &top)?;
                }
                Some(("RangeVar", other)) => self.range_var(other, Use::Act(SqlVerb::Ddl), &top)?,
                _ => self.value(def, &top)?,
            }
            self.rest(cmd, &["def"], &top)?;
        }
        Ok(Plan::new(Kind::Change, SqlVerb::Ddl))
    }

    /// `VACUUM` and `ANALYZE` run only as the host's own calls, as the
    /// table's owner.
    fn maintenance(&mut self, body: &Value) -> Result<Plan, Denial> {
        Err(refused(if flag(body, "is_vacuumcmd") {
            VACUUM_CALL
        } else {
            ANALYZE_CALL
        }))
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

fn strings_only(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .filter_map(|item| match unwrap_node(item) {
            Some(("String", s)) => Some(text(s, "sval").to_owned()),
            _ => None,
        })
        .collect()
}

/// A name after a `.` that PostgreSQL may read as a function call on what
/// comes before it (`x.f` is `f(x)` when `x` has no column `f`). Refused when
/// it names a function that is neither allowed nor immutable: one of
/// PostgreSQL's that reads state, and every `pg_…`/`lo_…` name. A column of
/// that name can still be used unqualified.
fn attribute(name: &str) -> Found {
    // Allowed only with the arguments `function` checks.
    if function_allowed(name) && name != "current_setting" {
        return Ok(());
    }
    if name.starts_with("pg_")
        || name.starts_with("lo_")
        || name.starts_with("dblink")
        || STATEFUL_FUNCTIONS.contains(&name)
    {
        return Err(refused(format!(
            "`.{name}` may call function `{name}`, which is not allowed; write the column without its table name"
        )));
    }
    Ok(())
}

/// A constant's value node (`{"Sval": {"sval": …}}` → `("String", …)`).
fn constant(value: &Value) -> Option<(&str, &Value)> {
    match unwrap_node(value)? {
        ("AConst", c) => {
            let (kind, inner) = c.get("val")?.as_object()?.iter().next()?;
            let kind = match kind.as_str() {
                "Sval" => "String",
                "Ival" => "Integer",
                "Fval" => "Float",
                "Boolval" => "Boolean",
                _ => return None,
            };
            Some((kind, inner))
        }
        (kind @ ("String" | "Integer" | "Float" | "Boolean"), inner) => Some((kind, inner)),
        _ => None,
    }
}

fn string_constant(value: &Value) -> Option<String> {
    match constant(value)? {
        ("String", s) => Some(text(s, "sval").to_owned()),
        _ => None,
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

/// Settings `current_setting` may read.
const READABLE_SETTINGS: &[&str] = &[
    "server_version",
    "server_version_num",
    "timezone",
    "datestyle",
    "intervalstyle",
    "block_size",
    "max_connections",
    "default_statistics_target",
];

/// ALTER TABLE commands that switch off what protects the table's data or
/// hand it to another role.
const REFUSED_ALTERS: &[AlterTableType] = &[
    AlterTableType::AtChangeOwner,
    AlterTableType::AtEnableTrig,
    AlterTableType::AtEnableAlwaysTrig,
    AlterTableType::AtEnableReplicaTrig,
    AlterTableType::AtDisableTrig,
    AlterTableType::AtEnableTrigAll,
    AlterTableType::AtDisableTrigAll,
    AlterTableType::AtEnableTrigUser,
    AlterTableType::AtDisableTrigUser,
    AlterTableType::AtEnableRule,
    AlterTableType::AtEnableAlwaysRule,
    AlterTableType::AtEnableReplicaRule,
    AlterTableType::AtDisableRule,
    AlterTableType::AtEnableRowSecurity,
    AlterTableType::AtDisableRowSecurity,
    AlterTableType::AtForceRowSecurity,
    AlterTableType::AtNoForceRowSecurity,
    AlterTableType::AtGenericOptions,
    AlterTableType::AtAlterColumnGenericOptions,
    AlterTableType::AtAddOf,
    AlterTableType::AtDropOf,
    AlterTableType::AtReplicaIdentity,
    AlterTableType::AtDetachPartitionFinalize,
];

fn alter_words(subtype: i64) -> &'static str {
    match AlterTableType::try_from(subtype as i32) {
        Ok(AlterTableType::AtChangeOwner) => "OWNER TO",
        Ok(
            AlterTableType::AtEnableRowSecurity
            | AlterTableType::AtDisableRowSecurity
            | AlterTableType::AtForceRowSecurity
            | AlterTableType::AtNoForceRowSecurity,
        ) => "ROW LEVEL SECURITY",
        Ok(AlterTableType::AtDetachPartitionFinalize) => "DETACH PARTITION … FINALIZE",
        Ok(AlterTableType::AtReplicaIdentity) => "REPLICA IDENTITY",
        Ok(AlterTableType::AtAddOf | AlterTableType::AtDropOf) => "OF type",
        Ok(AlterTableType::AtGenericOptions | AlterTableType::AtAlterColumnGenericOptions) => {
            "OPTIONS"
        }
        _ => "ENABLE/DISABLE TRIGGER or RULE",
    }
}

/// A refused statement kind in words.
fn describe_refused(kind: &str) -> String {
    match kind {
        "VariableSetStmt" | "VariableShowStmt" => {
            "SET and RESET are never allowed: the host owns session settings and the role".into()
        }
        "TransactionStmt" => {
            "transaction control (each call is its own transaction) is not allowed".into()
        }
        "DoStmt" => "DO blocks are never allowed".into(),
        "AlterSystemStmt" => "ALTER SYSTEM is never allowed".into(),
        "CopyStmt" => "COPY is not allowed".into(),
        "CallStmt" => "CALL is not allowed".into(),
        "ListenStmt" | "NotifyStmt" | "UnlistenStmt" => "LISTEN/NOTIFY is not allowed".into(),
        "CreateFunctionStmt" => "CREATE FUNCTION is not allowed".into(),
        "CreateExtensionStmt" => "CREATE EXTENSION is not allowed".into(),
        "ExplainStmt" => "EXPLAIN is not allowed".into(),
        "PrepareStmt" | "ExecuteStmt" | "DeallocateStmt" => "PREPARE/EXECUTE is not allowed".into(),
        "MergeStmt" => "MERGE is not allowed".into(),
        "LockStmt" => "LOCK is not allowed".into(),
        "GrantStmt" | "GrantRoleStmt" => "GRANT is not allowed".into(),
        other => {
            let words = other.strip_suffix("Stmt").unwrap_or(other);
            let mut out = String::new();
            for (i, c) in words.char_indices() {
                if i > 0 && c.is_ascii_uppercase() {
                    out.push(' ');
                }
                out.push(c.to_ascii_uppercase());
            }
            format!("{out} is not allowed")
        }
    }
}

/// PostgreSQL's functions callable with one argument that are not
/// immutable (they read or change state), by name (from `pg_proc`, less
/// the casts to date/time and number types). Names starting
/// with `pg_`, `lo_` or `dblink` are refused in attribute position without
/// being listed.
const STATEFUL_FUNCTIONS: &[&str] = &[
    "aclexplode",
    "aclitemin",
    "aclitemout",
    "amvalidate",
    "anyarray_out",
    "anyarray_recv",
    "anyarray_send",
    "anycompatiblearray_out",
    "anycompatiblearray_recv",
    "anycompatiblearray_send",
    "anycompatiblemultirange_out",
    "anycompatiblerange_out",
    "anyenum_out",
    "anymultirange_out",
    "anyrange_out",
    "array_out",
    "array_send",
    "array_to_json",
    "array_typanalyze",
    "binary_upgrade_set_next_array_pg_type_oid",
    "binary_upgrade_set_next_attribute_versions",
    "binary_upgrade_set_next_heap_pg_class_oid",
    "binary_upgrade_set_next_heap_relfilenode",
    "binary_upgrade_set_next_index_pg_class_oid",
    "binary_upgrade_set_next_index_relfilenode",
    "binary_upgrade_set_next_multirange_array_pg_type_oid",
    "binary_upgrade_set_next_multirange_pg_type_oid",
    "binary_upgrade_set_next_pg_authid_oid",
    "binary_upgrade_set_next_pg_enum_oid",
    "binary_upgrade_set_next_pg_tablespace_oid",
    "binary_upgrade_set_next_pg_type_oid",
    "binary_upgrade_set_next_toast_pg_class_oid",
    "binary_upgrade_set_next_toast_relfilenode",
    "binary_upgrade_set_record_init_privs",
    "bpcharsend",
    "brin_bloom_summary_recv",
    "brin_bloom_summary_send",
    "brin_desummarize_range",
    "brin_minmax_multi_summary_recv",
    "brin_minmax_multi_summary_send",
    "brin_summarize_new_values",
    "brin_summarize_range",
    "brinhandler",
    "bthandler",
    "cash_in",
    "cash_out",
    "cstring_recv",
    "cstring_send",
    "current_database",
    "current_query",
    "current_schemas",
    "current_setting",
    "currval",
    "date_in",
    "date_out",
    "dsnowball_init",
    "enum_first",
    "enum_last",
    "enum_out",
    "enum_range",
    "enum_send",
    "fmgr_c_validator",
    "fmgr_internal_validator",
    "fmgr_sql_validator",
    "gin_clean_pending_list",
    "ginhandler",
    "gisthandler",
    "has_any_column_privilege",
    "has_column_privilege",
    "has_database_privilege",
    "has_function_privilege",
    "has_schema_privilege",
    "has_table_privilege",
    "hashhandler",
    "heap_tableam_handler",
    "inet_client_addr",
    "inet_server_addr",
    "interval_out",
    "json_agg",
    "json_build_array",
    "json_build_object",
    "json_populate_record",
    "json_to_record",
    "json_to_recordset",
    "jsonb_agg",
    "jsonb_agg_finalfn",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_object_agg_finalfn",
    "jsonb_populate_record",
    "jsonb_to_record",
    "jsonb_to_recordset",
    "lastval",
    "multirange_out",
    "multirange_send",
    "multirange_typanalyze",
    "mxid_age",
    "namerecv",
    "namesend",
    "nextval",
    "obj_description",
    "oidvectortypes",
    "phraseto_tsquery",
    "plainto_tsquery",
    "plpgsql_inline_handler",
    "plpgsql_validator",
    "query_to_xml",
    "quote_nullable",
    "range_out",
    "range_send",
    "range_typanalyze",
    "record_out",
    "record_send",
    "regclassin",
    "regclassout",
    "regcollationin",
    "regcollationout",
    "regconfigin",
    "regconfigout",
    "regdictionaryin",
    "regdictionaryout",
    "regnamespacein",
    "regnamespaceout",
    "regoperatorin",
    "regoperatorout",
    "regoperin",
    "regoperout",
    "regprocedurein",
    "regprocedureout",
    "regprocin",
    "regprocout",
    "regrolein",
    "regroleout",
    "regtypein",
    "regtypeout",
    "row_security_active",
    "row_to_json",
    "set_config",
    "setseed",
    "setval",
    "shobj_description",
    "spghandler",
    "table_to_xml",
    "textrecv",
    "textsend",
    "timestamp_out",
    "timestamptz_out",
    "to_json",
    "to_jsonb",
    "to_regclass",
    "to_regcollation",
    "to_regnamespace",
    "to_regoper",
    "to_regoperator",
    "to_regproc",
    "to_regprocedure",
    "to_regrole",
    "to_regtype",
    "to_tsquery",
    "to_tsvector",
    "ts_debug",
    "ts_stat",
    "ts_token_type",
    "ts_typanalyze",
    "txid_current",
    "txid_status",
    "txid_visible_in_snapshot",
    "varcharsend",
    "version",
    "websearch_to_tsquery",
    "xml",
    "xml_in",
    "xml_is_well_formed",
    "xml_recv",
    "xml_send",
];
