//! What a manual run's overrides are checked against: the job's stored (effective) arguments
//! and its TaskFunction's parameters, as the reconciler stored them.

use serde_json::Value;
use sqlx::PgPool;

use super::StoreError;

/// A live job's arguments and its TaskFunction's `spec.parameters`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JobArguments {
    pub task_function: String,
    /// The job was valid when last stored (an invalid job's arguments are not judged).
    pub valid: bool,
    pub args: Value,
    pub kwargs: Value,
    /// `None`: no parameters (or the TaskFunction is not stored).
    pub parameters: Option<Value>,
}

pub async fn job_arguments(
    pool: &PgPool,
    namespace: &str,
    name: &str,
) -> Result<Option<JobArguments>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT j.task_function, j.valid, j.args, j.kwargs, t.parameters
         FROM scheduled_jobs j LEFT JOIN task_functions t ON t.name = j.task_function
         WHERE j.deleted_at IS NULL AND j.namespace = $1 AND j.name = $2",
    )
    .bind(namespace)
    .bind(name)
    .fetch_optional(pool)
    .await?)
}
