//! Function calls: each `FuncCall` against the allowlist (with the
//! settings `current_setting` may read), and a name after a `.` that
//! PostgreSQL may read as a call of a function that reads or changes
//! state.

use super::tree::{list, string_constant};
use super::{Found, Walk, function_allowed, refused};
use serde_json::Value;

impl Walk<'_> {
    pub(super) fn function(&mut self, name: &[String], call: &Value) -> Found {
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
}

/// A name after a `.` that PostgreSQL may read as a function call on what
/// comes before it (`x.f` is `f(x)` when `x` has no column `f`). Refused when
/// it names a function that is neither allowed nor immutable: one of
/// PostgreSQL's that reads state, and every `pg_…`/`lo_…` name. A column of
/// that name can still be used unqualified.
pub(super) fn attribute(name: &str) -> Found {
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
    // Whether this call's commit waits for the disk (`execute-async-commit`).
    "synchronous_commit",
];

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
