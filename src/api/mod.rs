//! API types: the two custom resources and their generated CRD YAML.

pub mod scheduled_job;
mod schema;
pub mod task_function;

pub use scheduled_job::{
    ActiveExecution, ConcurrencyPolicy, ExecutionSummary, IntervalSchedule, Schedule, ScheduledJob,
    ScheduledJobSpec, ScheduledJobStatus,
};
pub use schema::Condition;
pub use task_function::{TaskFunction, TaskFunctionSpec, TaskFunctionStatus};

use kube::CustomResourceExt;

/// Annotation whose every new value asks for one run now.
pub const TRIGGER_ANNOTATION: &str = "kubebeat.io/trigger";
/// Finalizer that lets kube-beat stop a job's scheduling before the object disappears.
pub const FINALIZER: &str = "kubebeat.io/cleanup";

/// Rendering the CRDs failed (only possible through a serializer bug).
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("rendering CRD as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("rendering CRD as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// Both CRDs as one multi-document YAML stream, the content of `crds/` and `kube-beat crd`.
pub fn crd_yaml() -> Result<String, CrdError> {
    let mut out = String::new();
    for crd in crds()? {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// The CRDs as JSON values, ready to apply.
///
/// `nullable: true` (which schemars puts on every `Option`) is removed: the apiserver's published
/// OpenAPI v2 drops the type of nullable fields, so `kubectl explain` would show `<>` for them.
/// kube-beat never writes explicit nulls, so nothing is lost.
pub fn crds() -> Result<Vec<serde_json::Value>, CrdError> {
    let mut out = Vec::new();
    for crd in [TaskFunction::crd(), ScheduledJob::crd()] {
        let mut value = serde_json::to_value(&crd)?;
        strip_nullable(&mut value);
        out.push(value);
    }
    Ok(out)
}

fn strip_nullable(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.remove("nullable");
            map.values_mut().for_each(strip_nullable);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nullable),
        _ => {}
    }
}
