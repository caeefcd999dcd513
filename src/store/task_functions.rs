//! `task_functions`: one row per TaskFunction (cluster-scoped: its name is its identity).

use sqlx::PgPool;

use super::StoreError;
use crate::reconcile::validate::ValidTaskFunction;

/// Insert or update a TaskFunction's row (its name is its identity: it is cluster-scoped).
pub async fn upsert_task_function(
    pool: &PgPool,
    tf: &ValidTaskFunction,
    uid: &str,
    generation: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO task_functions (name, uid, generation, task, queue, priority, expires_seconds,
                                     default_args, default_kwargs, allowed_namespaces, description,
                                     parameters)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (name) DO UPDATE SET
             uid = EXCLUDED.uid, generation = EXCLUDED.generation, task = EXCLUDED.task,
             queue = EXCLUDED.queue, priority = EXCLUDED.priority,
             expires_seconds = EXCLUDED.expires_seconds, default_args = EXCLUDED.default_args,
             default_kwargs = EXCLUDED.default_kwargs,
             allowed_namespaces = EXCLUDED.allowed_namespaces,
             description = EXCLUDED.description, parameters = EXCLUDED.parameters,
             updated_at = now()",
    )
    .bind(&tf.name)
    .bind(uid)
    .bind(generation)
    .bind(&tf.task)
    .bind(&tf.queue)
    .bind(tf.priority)
    .bind(tf.expires_seconds)
    .bind(serde_json::Value::Array(tf.default_args.clone()))
    .bind(serde_json::Value::Object(tf.default_kwargs.clone()))
    .bind(&tf.allowed_namespaces)
    .bind(&tf.description)
    .bind(&tf.parameters_json)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn delete_task_function(pool: &PgPool, name: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM task_functions WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(())
}

/// What the worker probe needs of a stored (valid) TaskFunction.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ProbedTaskFunction {
    pub name: String,
    pub generation: i64,
    pub task: String,
    pub queue: String,
}

/// The stored TaskFunctions, by name, at most `limit` (the probe's bounded label set).
pub async fn probed_task_functions(
    pool: &PgPool,
    limit: i64,
) -> Result<Vec<ProbedTaskFunction>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT name, generation, task, queue FROM task_functions ORDER BY name LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
