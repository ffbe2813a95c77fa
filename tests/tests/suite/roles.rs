//! Task roles on a real PostgreSQL: a task's SQL runs under a role that
//! holds exactly its grant, the host keeps that role in line where its login
//! role may, refuses the run (naming each difference) where it may not, and
//! never runs task SQL on a superuser login unless the connection opts in.

use SqlVerb::*;
use housekeeper::capabilities::sql::Connection;
use housekeeper::capabilities::sql::roles::role_name;
use housekeeper::manifest::SqlVerb;
use housekeeper::model::{RunResult, RunStatus};
use housekeeper::runtime::RunRequest;
use housekeeper_tests::{KillOnDrop, binary, component, fixture_path, runtime, sql_request};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::time::Duration;

const SCHEMA: &str = "
    CREATE TABLE events (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
    INSERT INTO events (at) SELECT now() FROM generate_series(1, 5);
    CREATE TABLE secrets (id int PRIMARY KEY, value text NOT NULL);
    INSERT INTO secrets VALUES (1, 'the-secret-row');";

async fn database_name(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A short name no other test database uses (roles are cluster-wide), and
/// no role of that task left from an earlier run of the same test.
async fn unique(pool: &PgPool, prefix: &str) -> String {
    let db = database_name(pool).await;
    let name = format!("{prefix}-{}", &db[db.len().saturating_sub(16)..]);
    for role in [role_name(&name), name.clone()] {
        sqlx::raw_sql(&format!("DROP ROLE IF EXISTS \"{role}\""))
            .execute(pool)
            .await
            .unwrap();
    }
    name
}

async fn unique_task(pool: &PgPool) -> String {
    unique(pool, "t").await
}

async fn url_as(pool: &PgPool, user: &str) -> String {
    let db = database_name(pool).await;
    format!("postgres://{user}@127.0.0.1:5432/{db}")
}

async fn pool_as(pool: &PgPool, user: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&url_as(pool, user).await)
        .await
        .unwrap()
}

async fn run(request: RunRequest) -> RunResult {
    runtime()
        .run(&component(&fixture_path("hostile")), request)
        .await
}

async fn privilege(pool: &PgPool, role: &str, table: &str, privilege: &str) -> bool {
    sqlx::query_scalar("SELECT has_table_privilege($1, $2, $3)")
        .bind(role)
        .bind(table)
        .bind(privilege)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_superuser_login_runs_no_task_sql_unless_the_connection_opts_in(pool: PgPool) {
    sqlx::raw_sql(SCHEMA).execute(&pool).await.unwrap();
    let task = unique_task(&pool).await;
    let grants: &[(&str, &[SqlVerb])] = &[("events", &[Select])];
    let refused = run(sql_request(
        &task,
        Connection::postgres(pool.clone()),
        "sql-query",
        "SELECT id FROM events",
        grants,
    ))
    .await;
    assert_eq!(refused.status, RunStatus::Error, "{refused:#?}");
    let error = refused.error.unwrap_or_default();
    assert!(error.contains("a superuser"), "{error}");
    assert!(error.contains("unsafe_superuser"), "{error}");

    let allowed = run(sql_request(
        &task,
        Connection::postgres(pool.clone()).allow_unsafe_superuser(),
        "sql-query",
        "SELECT id FROM events",
        grants,
    ))
    .await;
    assert_eq!(allowed.status, RunStatus::Success, "{allowed:#?}");
    assert_eq!(allowed.summary.as_deref(), Some("query returned 5 rows"));
}

/// The host creates the role with exactly the grant, and the statement
/// really runs as that role: PostgreSQL says so itself.
#[sqlx::test]
async fn statements_run_as_a_role_holding_exactly_the_grant(pool: PgPool) {
    sqlx::raw_sql(SCHEMA).execute(&pool).await.unwrap();
    let task = unique_task(&pool).await;
    let role = role_name(&task);
    let connection = Connection::postgres(pool.clone()).allow_unsafe_superuser();
    let result = run(sql_request(
        &task,
        connection.clone(),
        "sql-query",
        "SELECT current_user, session_user FROM events WHERE current_user = current_role",
        &[("events", &[Select, Delete])],
    ))
    .await;
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    assert_eq!(result.summary.as_deref(), Some("query returned 5 rows"));
    assert!(
        result.output.contains(&format!("CREATE ROLE \"{role}\"")),
        "{}",
        result.output
    );

    let (login, superuser, inherit): (bool, bool, bool) =
        sqlx::query_as("SELECT rolcanlogin, rolsuper, rolinherit FROM pg_roles WHERE rolname = $1")
            .bind(&role)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!login && !superuser && !inherit);
    for (table, privilege_type, held) in [
        ("events", "SELECT", true),
        ("events", "DELETE", true),
        ("events", "INSERT", false),
        ("events", "UPDATE", false),
        ("events", "TRUNCATE", false),
        ("secrets", "SELECT", false),
    ] {
        assert_eq!(
            privilege(&pool, &role, table, privilege_type).await,
            held,
            "{privilege_type} on {table}"
        );
    }

    // Only the role's own name reaches the statement.
    let who = run(sql_request(
        &task,
        connection,
        "sql-values",
        "SELECT current_user::text",
        &[("events", &[Select, Delete])],
    ))
    .await;
    assert_eq!(
        who.summary.as_deref(),
        Some(format!("text:{role}").as_str()),
        "{who:#?}"
    );
}

/// Privileges beyond the grant, however they came, are taken away before
/// the statement runs; a narrower grant is widened.
#[sqlx::test]
async fn the_host_brings_a_drifted_role_back_to_the_grant(pool: PgPool) {
    sqlx::raw_sql(SCHEMA).execute(&pool).await.unwrap();
    let task = unique_task(&pool).await;
    let role = role_name(&task);
    let q = format!("\"{role}\"");
    sqlx::raw_sql(&format!(
        "CREATE ROLE {q} NOLOGIN NOINHERIT CREATEDB;
         GRANT SELECT, UPDATE ON secrets TO {q};
         GRANT SELECT (value) ON secrets TO {q};
         GRANT CREATE ON SCHEMA public TO {q};
         GRANT pg_read_all_data TO {q};
         GRANT CREATE ON DATABASE \"{}\" TO {q};",
        database_name(&pool).await
    ))
    .execute(&pool)
    .await
    .unwrap();
    let result = run(sql_request(
        &task,
        Connection::postgres(pool.clone()).allow_unsafe_superuser(),
        "sql-execute",
        "INSERT INTO events DEFAULT VALUES",
        &[("events", &[Insert])],
    ))
    .await;
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    assert_eq!(result.summary.as_deref(), Some("execute changed 1 rows"));
    for (table, privilege_type, held) in [
        ("secrets", "SELECT", false),
        ("secrets", "UPDATE", false),
        ("events", "INSERT", true),
        ("events", "SELECT", false),
    ] {
        assert_eq!(
            privilege(&pool, &role, table, privilege_type).await,
            held,
            "{privilege_type} on {table}"
        );
    }
    let (createdb, create_in_public, members): (bool, bool, i64) = sqlx::query_as(
        "SELECT rolcreatedb, has_schema_privilege($1, 'public', 'CREATE'),
                (SELECT count(*) FROM pg_auth_members WHERE member = r.oid)
         FROM pg_roles r WHERE rolname = $1",
    )
    .bind(&role)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!createdb && !create_in_public);
    let create_schemas: bool =
        sqlx::query_scalar("SELECT has_database_privilege($1, current_database(), 'CREATE')")
            .bind(&role)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!create_schemas);
    assert_eq!(members, 0);
}

/// A login role that may not manage roles gets a refusal naming each
/// difference; `db roles` prints the SQL, and once an administrator has
/// applied it the task runs.
#[sqlx::test]
async fn without_createrole_the_run_is_refused_and_db_roles_prints_the_fix(pool: PgPool) {
    sqlx::raw_sql(SCHEMA).execute(&pool).await.unwrap();
    let task = unique_task(&pool).await;
    let login = unique(&pool, "l").await;
    sqlx::raw_sql(&format!("CREATE ROLE \"{login}\" LOGIN NOINHERIT"))
        .execute(&pool)
        .await
        .unwrap();
    let plain = pool_as(&pool, &login).await;
    let grants: &[(&str, &[SqlVerb])] = &[("events", &[Select])];
    let refused = run(sql_request(
        &task,
        Connection::postgres(plain.clone()),
        "sql-query",
        "SELECT id FROM events",
        grants,
    ))
    .await;
    assert_eq!(refused.status, RunStatus::Error, "{refused:#?}");
    let error = refused.error.unwrap_or_default();
    assert!(error.contains("does not exist"), "{error}");
    assert!(error.contains("housekeeper db roles"), "{error}");

    // The operator's view: the manifest in a tasks directory.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        housekeeper_tests::fixture_path("hostile"),
        dir.path().join("hostile.wasm"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join(format!("{task}.toml")),
        format!(
            "name = \"{task}\"\ncomponent = \"hostile.wasm\"\n[grants.database]\nconnection = \"main\"\ntables = {{ events = [\"select\"] }}\n"
        ),
    )
    .unwrap();
    let url = url_as(&pool, &login).await;
    let db_roles = || {
        std::process::Command::new(binary())
            .args(["db", "roles", "--tasks-dir", dir.path().to_str().unwrap()])
            .env_remove("DB_HOST")
            .env("DATABASE_URL", &url)
            .env("HOUSEKEEPER_DATA_DIR", dir.path())
            .output()
            .unwrap()
    };
    let printed = db_roles();
    let script = String::from_utf8_lossy(&printed.stdout).into_owned();
    assert!(
        printed.status.success(),
        "{script}{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let role = role_name(&task);
    for expected in [
        format!("CREATE ROLE \"{role}\" NOLOGIN NOINHERIT;"),
        format!("GRANT \"{role}\" TO \"{login}\";"),
        format!("GRANT SELECT ON \"public\".\"events\" TO \"{role}\";"),
    ] {
        assert!(script.contains(&expected), "{expected} in {script}");
    }
    // The administrator applies it as printed.
    sqlx::raw_sql(&script).execute(&pool).await.unwrap();
    let again = db_roles();
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("in line with the grant"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    let ok = run(sql_request(
        &task,
        Connection::postgres(plain.clone()),
        "sql-query",
        "SELECT id FROM events",
        grants,
    ))
    .await;
    assert_eq!(ok.status, RunStatus::Success, "{ok:#?}");
    plain.close().await;
}

/// The login role README recommends: `NOINHERIT`, `CREATEROLE`, a member of
/// the role that owns the tables. The host sets the task's role up on its
/// own, switching to the owner for the grants, and the login role itself
/// still reads nothing.
#[sqlx::test]
async fn the_recommended_login_role_sets_up_task_roles_itself(pool: PgPool) {
    sqlx::raw_sql(SCHEMA).execute(&pool).await.unwrap();
    let task = unique_task(&pool).await;
    let owner = unique(&pool, "o").await;
    let login = unique(&pool, "l").await;
    sqlx::raw_sql(&format!(
        "CREATE ROLE \"{owner}\" NOLOGIN;
         ALTER TABLE events OWNER TO \"{owner}\";
         ALTER TABLE secrets OWNER TO \"{owner}\";
         CREATE ROLE \"{login}\" LOGIN NOINHERIT CREATEROLE;
         GRANT \"{owner}\" TO \"{login}\";"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let as_login = pool_as(&pool, &login).await;
    let grants: &[(&str, &[SqlVerb])] = &[("events", &[Select, Insert])];
    let result = run(sql_request(
        &task,
        Connection::postgres(as_login.clone()),
        "sql-transaction",
        "INSERT INTO events DEFAULT VALUES\nINSERT INTO events DEFAULT VALUES",
        grants,
    ))
    .await;
    assert_eq!(result.status, RunStatus::Success, "{result:#?}");
    let role = role_name(&task);
    assert!(
        result.output.contains(&format!(
            "GRANT USAGE ON SEQUENCE \"public\".\"events_id_seq\" TO \"{role}\""
        )),
        "{}",
        result.output
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 7);
    // The login role holds nothing itself.
    let direct = sqlx::query("SELECT * FROM secrets")
        .fetch_all(&as_login)
        .await;
    let error = direct
        .err()
        .expect("the login role cannot read secrets")
        .to_string();
    assert!(error.contains("permission denied"), "{error}");
    as_login.close().await;
}

/// What PostgreSQL's own privileges stop with nothing parsed: a runtime whose
/// parse layer is off sends every statement as written, on a login role that
/// is a member of the task's role only. Each class of statement a parser
/// could misread is refused by the database, and the canary is untouched.
#[sqlx::test]
async fn with_the_parse_layer_off_postgresql_refuses_every_class_itself(pool: PgPool) {
    sqlx::raw_sql(SCHEMA).execute(&pool).await.unwrap();
    let task = unique_task(&pool).await;
    let role = role_name(&task);
    let grants: &[(&str, &[SqlVerb])] = &[("events", &[Select])];
    // The role, set up once by the host through an allowed superuser login.
    let setup = run(sql_request(
        &task,
        Connection::postgres(pool.clone()).allow_unsafe_superuser(),
        "sql-query",
        "SELECT 1",
        grants,
    ))
    .await;
    assert_eq!(setup.status, RunStatus::Success, "{setup:#?}");
    let login = unique(&pool, "l").await;
    sqlx::raw_sql(&format!(
        "CREATE ROLE \"{login}\" LOGIN NOINHERIT; GRANT \"{role}\" TO \"{login}\";"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let (unparsed, hostile) = housekeeper_tests::unparsed();
    // One connection, so that every run reuses the session the last one left.
    let as_login = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url_as(&pool, &login).await)
        .await
        .unwrap();
    let marker = std::env::temp_dir().join(format!("{task}-program-ran"));
    let program = format!("COPY (SELECT 1) TO PROGRAM 'touch {}'", marker.display());
    let cases: Vec<(&str, String)> = vec![
        ("sql-query", "SELECT value FROM secrets".into()),
        ("sql-query", "SELECT rolpassword FROM pg_authid".into()),
        ("sql-query", "SELECT pg_read_file('/etc/passwd')".into()),
        ("sql-query", "SELECT lo_import('/etc/passwd')".into()),
        ("sql-execute", program),
        ("sql-execute", "COPY secrets TO '/tmp/secrets.csv'".into()),
        (
            "sql-query",
            "WITH d AS (DELETE FROM secrets RETURNING *) SELECT * FROM d".into(),
        ),
        ("sql-execute", "SELECT 1; DELETE FROM secrets".into()),
        (
            "sql-transaction",
            "SELECT set_config('role', 'postgres', true)\nSELECT value FROM secrets".into(),
        ),
        (
            "sql-transaction",
            "RESET ROLE\nSELECT value FROM secrets".into(),
        ),
        ("sql-execute", "SET ROLE postgres".into()),
        ("sql-execute", "SET SESSION AUTHORIZATION postgres".into()),
        ("sql-execute", "ALTER TABLE secrets ADD COLUMN x int".into()),
        ("sql-execute", "CREATE TABLE stolen (LIKE secrets)".into()),
        (
            "sql-execute",
            "CREATE TABLE child (id int REFERENCES secrets (id))".into(),
        ),
        ("sql-execute", "TRUNCATE secrets CASCADE".into()),
        ("sql-execute", "DROP TABLE secrets".into()),
        ("sql-query", "SELECT * FROM secrets FOR UPDATE".into()),
        ("sql-query", "SELECT * FROM events FOR UPDATE".into()),
        ("sql-execute", "GRANT SELECT ON secrets TO PUBLIC".into()),
        (
            "sql-execute",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'".into(),
        ),
        (
            "sql-query",
            "SELECT query_to_xml('SELECT * FROM secrets', true, true, '')".into(),
        ),
        (
            "sql-execute",
            "DO $$ BEGIN DELETE FROM secrets; END $$".into(),
        ),
        ("sql-execute", "ALTER SYSTEM SET work_mem = '1GB'".into()),
        ("sql-execute", "INSERT INTO events DEFAULT VALUES".into()),
        ("sql-execute", "DELETE FROM events".into()),
        ("sql-execute", "VACUUM secrets".into()),
        ("sql-execute", "CREATE EXTENSION dblink".into()),
        (
            "sql-query",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                .into(),
        ),
    ];
    housekeeper_tests::assert_each_refused(&cases, |mode, statement| {
        sql_request(
            &task,
            Connection::postgres(as_login.clone()),
            mode,
            statement,
            grants,
        )
    })
    .await;
    assert!(!marker.exists(), "COPY … TO PROGRAM ran");
    let canary: Vec<(i32, String)> = sqlx::query_as("SELECT id, value FROM secrets")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(canary, [(1, "the-secret-row".to_owned())]);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 5);

    // A setting a call leaves on the session does not reach the next call.
    let set = unparsed
        .run(
            hostile,
            sql_request(
                &task,
                Connection::postgres(as_login.clone()),
                "sql-query",
                "SELECT set_config('search_path', 'pg_temp, evil', false), set_config('TimeZone', 'Pacific/Kiritimati', false)",
                grants,
            ),
        )
        .await;
    assert_eq!(set.status, RunStatus::Success, "{set:#?}");
    let after = unparsed
        .run(
            hostile,
            sql_request(
                &task,
                Connection::postgres(as_login.clone()),
                "sql-values",
                "SELECT current_setting('search_path') || ' ' || current_setting('TimeZone') || ' ' || current_user",
                grants,
            ),
        )
        .await;
    let defaults: String =
        sqlx::query_scalar("SELECT boot_val FROM pg_settings WHERE name = 'search_path'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let summary = after.summary.unwrap_or_default();
    assert!(
        summary.starts_with(&format!("text:{defaults} ")),
        "{summary}"
    );
    assert!(!summary.contains("Kiritimati"), "{summary}");
    assert!(summary.ends_with(&role), "{summary}");
    as_login.close().await;
}

/// `serve` sets task roles up when it loads the tasks, before any run: an
/// operator sees a missing privilege in the log at start, not at 01:00.
#[sqlx::test]
async fn serve_sets_the_roles_up_when_it_loads_the_tasks(pool: PgPool) {
    sqlx::raw_sql(SCHEMA).execute(&pool).await.unwrap();
    let task = unique_task(&pool).await;
    let role = role_name(&task);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture_path("hostile"), dir.path().join("hostile.wasm")).unwrap();
    std::fs::write(
        dir.path().join(format!("{task}.toml")),
        format!(
            "name = \"{task}\"\ncomponent = \"hostile.wasm\"\nschedule = \"0 0 1 1 *\"\n[grants.database]\nconnection = \"main\"\ntables = {{ events = [\"select\"] }}\n"
        ),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(binary())
        .arg("serve")
        .env_remove("DB_HOST")
        .env_remove("DATABASE_URL")
        .env("HOUSEKEEPER_DB_MAIN_URL", url_as(&pool, "postgres").await)
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("HOUSEKEEPER_TASKS_DIR", dir.path())
        .env("HOUSEKEEPER_DATA_DIR", data.path())
        .env("HOUSEKEEPER_DB_MAIN_UNSAFE_SUPERUSER", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _child = KillOnDrop(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
    )
    .bind(&role)
    .fetch_one(&pool)
    .await
    .unwrap()
        || !privilege(&pool, &role, "events", "SELECT").await
    {
        assert!(
            std::time::Instant::now() < deadline,
            "role {role} was not set up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!privilege(&pool, &role, "secrets", "SELECT").await);
}

/// A function that runs as its owner reaches what the owner may: a role
/// that may call one holds more than its grant, and no run starts until
/// the owner revokes it.
#[sqlx::test]
async fn a_callable_security_definer_function_refuses_the_run(pool: PgPool) {
    sqlx::raw_sql(SCHEMA).execute(&pool).await.unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION leak() RETURNS text LANGUAGE sql SECURITY DEFINER
             AS 'SELECT value FROM secrets LIMIT 1'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let task = unique_task(&pool).await;
    let grants: &[(&str, &[SqlVerb])] = &[("events", &[Select])];
    let connection = Connection::postgres(pool.clone()).allow_unsafe_superuser();
    let refused = run(sql_request(
        &task,
        connection.clone(),
        "sql-query",
        "SELECT id FROM events",
        grants,
    ))
    .await;
    assert_eq!(refused.status, RunStatus::Error, "{refused:#?}");
    let error = refused.error.unwrap_or_default();
    assert!(error.contains("leak()"), "{error}");
    assert!(error.contains("SECURITY DEFINER"), "{error}");

    // One in a schema the role may not use is out of its reach.
    sqlx::raw_sql(
        "CREATE SCHEMA tools;
         CREATE FUNCTION tools.leak() RETURNS text LANGUAGE sql SECURITY DEFINER
             AS 'SELECT value FROM secrets LIMIT 1';
         REVOKE EXECUTE ON FUNCTION leak() FROM PUBLIC",
    )
    .execute(&pool)
    .await
    .unwrap();
    let ok = run(sql_request(
        &task,
        connection,
        "sql-query",
        "SELECT id FROM events",
        grants,
    ))
    .await;
    assert_eq!(ok.status, RunStatus::Success, "{ok:#?}");
}
