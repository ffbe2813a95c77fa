//! The statement at the top: its kind and verb, and what DDL may do
//! (partition DDL, `VACUUM` and `ANALYZE` are refused in favour of the
//! typed calls, and so are the `ALTER TABLE` commands that lift a
//! table's protection).

use super::tree::{dropped, field, flag, int, list, present, relation, text, unwrap_node};
use super::{
    ANALYZE_CALL, ATTACH_PARTITION_CALL, CREATE_PARTITION_CALL, DETACH_CONCURRENTLY_CALL,
    DETACH_PARTITION_CALL, DROP_PARTITION_CALL, Denial, Kind, Plan, Scope, SqlVerb, Use,
    VACUUM_CALL, Walk, refused, same_table,
};
use pg_query::protobuf::{
    AlterTableType, DropBehavior, ObjectType, OnConflictAction, ReindexObjectType,
};
use serde_json::Value;

impl Walk<'_> {
    /// The statement at the top.
    pub(super) fn statement(&mut self, kind: &str, body: &Value) -> Result<Plan, Denial> {
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
}

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
