//! The interface's calls as the guest makes them: statements go through
//! the guard and run checked; partition, `VACUUM` and `ANALYZE` calls are
//! structured calls (`structured.rs`).

use super::{Commit, Outcome, SqlCapability, changed, guard, structured};
use crate::bindings::housekeeper::task::sql::{self as wit, Host};

// One method per call of the interface: the partition calls and their list
// forms are alike by design, each naming its `structured::Action`.
impl Host for SqlCapability {
    async fn dialect(&mut self) -> wasmtime::Result<Result<wit::SqlDialect, wit::SqlError>> {
        Ok(self.access().map(|a| match a.connection.dialect() {
            guard::Dialect::Postgres => wit::SqlDialect::Postgres,
            guard::Dialect::Sqlite => wit::SqlDialect::Sqlite,
        }))
    }

    async fn query(
        &mut self,
        sql: String,
        params: Vec<wit::Value>,
    ) -> wasmtime::Result<Result<wit::Rows, wit::SqlError>> {
        let prepared = match self.check(&sql, params).await {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self
            .run(vec![prepared], true, Commit::Wait)
            .await?
            .map(|mut outcomes| match outcomes.pop() {
                Some(Outcome::Rows(rows)) => rows,
                _ => wit::Rows {
                    columns: Vec::new(),
                    rows: Vec::new(),
                },
            }))
    }

    async fn execute(
        &mut self,
        sql: String,
        params: Vec<wit::Value>,
    ) -> wasmtime::Result<Result<u64, wit::SqlError>> {
        self.execute_with(sql, params, Commit::Wait).await
    }

    async fn execute_async_commit(
        &mut self,
        sql: String,
        params: Vec<wit::Value>,
    ) -> wasmtime::Result<Result<u64, wit::SqlError>> {
        self.execute_with(sql, params, Commit::Async).await
    }

    async fn transaction(
        &mut self,
        statements: Vec<wit::Statement>,
    ) -> wasmtime::Result<Result<Vec<u64>, wit::SqlError>> {
        let mut prepared = Vec::with_capacity(statements.len());
        for statement in statements {
            match self.check(&statement.sql, statement.params).await {
                Ok(p) => prepared.push(p),
                Err(e) => return Ok(Err(e)),
            }
        }
        if prepared.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        Ok(self
            .run(prepared, false, Commit::Wait)
            .await?
            .map(|outcomes| outcomes.iter().map(changed).collect()))
    }

    async fn create_partition(
        &mut self,
        parent: wit::Relation,
        partition: wit::Relation,
        bounds: wit::PartitionBounds,
    ) -> wasmtime::Result<Result<(), wit::SqlError>> {
        self.structured(structured::Action::Create {
            parent,
            partition,
            bounds,
        })
        .await
    }

    async fn attach_partition(
        &mut self,
        parent: wit::Relation,
        partition: wit::Relation,
        bounds: wit::PartitionBounds,
    ) -> wasmtime::Result<Result<(), wit::SqlError>> {
        self.structured(structured::Action::Attach {
            parent,
            partition,
            bounds,
        })
        .await
    }

    async fn drop_partition(
        &mut self,
        parent: wit::Relation,
        partition: wit::Relation,
    ) -> wasmtime::Result<Result<(), wit::SqlError>> {
        self.structured(structured::Action::Drop { parent, partition })
            .await
    }

    async fn detach_partition(
        &mut self,
        parent: wit::Relation,
        partition: wit::Relation,
        concurrently: bool,
    ) -> wasmtime::Result<Result<(), wit::SqlError>> {
        self.structured(structured::Action::Detach {
            parent,
            partition,
            concurrently,
        })
        .await
    }

    async fn create_partitions(
        &mut self,
        parent: wit::Relation,
        partitions: Vec<wit::NewPartition>,
    ) -> wasmtime::Result<Result<Vec<Result<(), wit::SqlError>>, wit::SqlError>> {
        let actions = partitions
            .into_iter()
            .map(|p| structured::Action::Create {
                parent: parent.clone(),
                partition: p.partition,
                bounds: p.bounds,
            })
            .collect();
        self.structured_many(actions).await
    }

    async fn drop_partitions(
        &mut self,
        parent: wit::Relation,
        partitions: Vec<wit::Relation>,
    ) -> wasmtime::Result<Result<Vec<Result<(), wit::SqlError>>, wit::SqlError>> {
        let actions = partitions
            .into_iter()
            .map(|partition| structured::Action::Drop {
                parent: parent.clone(),
                partition,
            })
            .collect();
        self.structured_many(actions).await
    }

    async fn detach_partitions(
        &mut self,
        parent: wit::Relation,
        partitions: Vec<wit::Relation>,
    ) -> wasmtime::Result<Result<Vec<Result<(), wit::SqlError>>, wit::SqlError>> {
        let actions = partitions
            .into_iter()
            .map(|partition| structured::Action::Detach {
                parent: parent.clone(),
                partition,
                concurrently: false,
            })
            .collect();
        self.structured_many(actions).await
    }

    async fn vacuum(
        &mut self,
        table: Option<wit::Relation>,
        options: wit::VacuumOptions,
    ) -> wasmtime::Result<Result<(), wit::SqlError>> {
        self.structured(structured::Action::Vacuum { table, options })
            .await
    }

    async fn analyze(
        &mut self,
        table: Option<wit::Relation>,
    ) -> wasmtime::Result<Result<(), wit::SqlError>> {
        self.structured(structured::Action::Analyze { table }).await
    }
}

impl SqlCapability {
    async fn execute_with(
        &mut self,
        sql: String,
        params: Vec<wit::Value>,
        commit: Commit,
    ) -> wasmtime::Result<Result<u64, wit::SqlError>> {
        let prepared = match self.check(&sql, params).await {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self
            .run(vec![prepared], false, commit)
            .await?
            .map(|outcomes| outcomes.iter().map(changed).sum()))
    }
}
