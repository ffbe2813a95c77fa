//! Every integration test, in one test binary: it links the host (wasmtime,
//! libpg_query, sqlx) and compiles each fixture component once, instead of
//! once per file. Each module is one area; `cargo test -p housekeeper-tests
//! --test suite <module>::` runs one.

mod adopt;
mod api;
mod cleanup;
mod cli;
mod cluster;
mod compile_cache;
mod db_tasks;
mod deploy;
mod maintenance_sql;
mod outage;
mod pooler;
mod replicas;
mod roles;
mod sandbox;
mod scheduler;
mod serve;
mod sql;
mod store;
