//! The admission endpoint: an AdmissionReview (v1) in, the reconcile's verdict out.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use kube::{
    Api, Client, ResourceExt,
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
    },
};
use serde_json::Value;

use super::verdict::{self, Kind};
use crate::{
    api::TaskFunction,
    reconcile::{Guarded, LabelSelector, validate},
};

/// How long the TaskFunction lookup may take: well inside the apiserver's `timeoutSeconds`
/// (the chart's default is 5), so a slow lookup is an error the `failurePolicy` decides on,
/// not a timeout.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a looked-up TaskFunction (or its absence) is reused: long enough that a flood of
/// reviews naming one TaskFunction costs the apiserver one GET per name per 5 s, short enough
/// that a TaskFunction applied just after its jobs is seen on their next apply.
const LOOKUP_CACHE_TTL: Duration = Duration::from_secs(5);
/// Names cached at most (each entry one TaskFunction object: bounded by the CRD's size).
const LOOKUP_CACHE_ENTRIES: u64 = 1024;

/// `--webhook-missing-task-function`: what a ScheduledJob naming a TaskFunction that does not
/// exist (yet) gets. Helm, Argo CD and `kubectl apply -f dir/` create ScheduledJobs before
/// their TaskFunctions (kinds alphabetical, file order): refusing them would break every
/// install that ships both, so the default warns and the reconcile's `Ready=False` stays the
/// backstop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MissingTaskFunction {
    /// Allowed, with the reconcile's message as an admission warning.
    #[default]
    Warn,
    /// Refused with the reconcile's message.
    Deny,
}

/// What the endpoint needs.
pub struct Reviewer {
    client: Client,
    /// `--task-function-selector`: another installation's TaskFunctions (and their jobs) are
    /// that installation's to judge.
    selector: LabelSelector,
    /// `--namespace`: jobs elsewhere are not this installation's.
    namespace: Option<String>,
    missing_task_function: MissingTaskFunction,
    /// TaskFunction lookups by name ([`LOOKUP_CACHE_TTL`]); `None`: it does not exist.
    task_functions: moka::sync::Cache<String, Option<Arc<Guarded<TaskFunction>>>>,
}

/// What one review decided, for the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Refused,
    /// Not this installation's object, not a change to judge, or not a kind kube-beat judges.
    Skipped,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Refused => "refused",
            Decision::Skipped => "skipped",
        }
    }
}

/// Why a review could not be answered: the apiserver applies the `failurePolicy`.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("looking up TaskFunction {name:?}: {error}")]
    Lookup { name: String, error: String },
}

/// `POST /validate`.
pub async fn validate(State(reviewer): State<Arc<Reviewer>>, body: Bytes) -> Response {
    // One JSON tree per review: the object and the old object are moved out of it (not copied)
    // before the rest is read as the AdmissionRequest, so a review costs its parsed size once.
    let mut review: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("not an AdmissionReview: {e}")),
    };
    drop(body);
    let mut take = |pointer: &str| {
        review
            .pointer_mut(pointer)
            .map(Value::take)
            .filter(|v| !v.is_null())
    };
    let object = take("/request/object");
    let old_object = take("/request/oldObject");
    let review: AdmissionReview<DynamicObject> = match serde_json::from_value(review) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("not an AdmissionReview: {e}")),
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(_) => return bad_request("an AdmissionReview without a request".to_string()),
    };
    let kind = Kind::of(
        &format!("{}/{}", request.kind.group, request.kind.version),
        &request.kind.kind,
    );
    let label = kind.map(Kind::as_str).unwrap_or("other");
    let response = AdmissionResponse::from(&request);
    match reviewer
        .review(kind, &request, object, old_object.as_ref())
        .await
    {
        Ok((decision, outcome)) => {
            count(label, decision.as_str());
            let response = match outcome {
                Outcome::Refused(message) => {
                    tracing::info!(kind = label, namespace = ?request.namespace, name = %request.name,
                        message = %message, "admission refused");
                    response.deny(message)
                }
                Outcome::Warned(message) => {
                    tracing::info!(kind = label, namespace = ?request.namespace, name = %request.name,
                        message = %message, "admission allowed with a warning");
                    let mut response = response;
                    response.warnings = Some(vec![message]);
                    response
                }
                Outcome::None => response,
            };
            Json(response.into_review()).into_response()
        }
        Err(e) => {
            count(label, "error");
            tracing::warn!(error = %e, "admission review failed: the failurePolicy decides");
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
        }
    }
}

/// What the response carries besides allowed/refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    None,
    /// Refused with this message.
    Refused(String),
    /// Allowed, with this warning (kubectl prints `Warning: ...`).
    Warned(String),
}

fn bad_request(message: String) -> Response {
    count("other", "error");
    (
        StatusCode::BAD_REQUEST,
        Json(AdmissionResponse::invalid(message).into_review()),
    )
        .into_response()
}

fn count(kind: &'static str, result: &'static str) {
    crate::metrics::METRICS
        .admissions
        .get_or_create(&crate::metrics::Admission { kind, result })
        .inc();
}

impl Reviewer {
    pub fn new(
        client: Client,
        selector: LabelSelector,
        namespace: Option<String>,
        missing_task_function: MissingTaskFunction,
    ) -> Reviewer {
        Reviewer {
            client,
            selector,
            namespace,
            missing_task_function,
            task_functions: moka::sync::Cache::builder()
                .max_capacity(LOOKUP_CACHE_ENTRIES)
                .time_to_live(LOOKUP_CACHE_TTL)
                .build(),
        }
    }

    /// The decision on one request, and what the response says besides.
    async fn review(
        &self,
        kind: Option<Kind>,
        request: &AdmissionRequest<DynamicObject>,
        object: Option<Value>,
        old_object: Option<&Value>,
    ) -> Result<(Decision, Outcome), ReviewError> {
        let skip = Ok((Decision::Skipped, Outcome::None));
        let Some(kind) = kind else { return skip };
        if !matches!(request.operation, Operation::Create | Operation::Update)
            || request.sub_resource.is_some()
        {
            return skip;
        }
        let Some(object) = object else {
            return skip;
        };
        if !changes_what_is_judged(&object, old_object) {
            return skip;
        }
        let now = chrono::Utc::now();
        let verdict = match kind {
            Kind::TaskFunction => {
                let tf = verdict::read_task_function(object);
                if !self.selector.matches(tf.labels()) {
                    return skip;
                }
                // This replica's next lookup of it sees the change (others within the TTL).
                self.task_functions.invalidate(&tf.name_any());
                verdict::task_function(&tf)
            }
            Kind::ScheduledJob => {
                let namespace = request.namespace.as_deref().unwrap_or_default();
                if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
                    return skip;
                }
                let tf = match verdict::job_reference(&object) {
                    Some(name) => self.task_function(&name).await?,
                    None => None,
                };
                if tf
                    .as_ref()
                    .is_some_and(|tf| !self.selector.matches(tf.labels()))
                {
                    return skip;
                }
                verdict::scheduled_job(object, namespace, tf.as_deref(), now)
            }
        };
        Ok(match verdict {
            Ok(()) => (Decision::Allowed, Outcome::None),
            // The schedule and the job's own fields are checked before the TaskFunction is
            // resolved: this reason means nothing else is wrong with the job (yet).
            Err(invalid)
                if invalid.reason == validate::Reason::UnknownTaskFunction
                    && self.missing_task_function == MissingTaskFunction::Warn =>
            {
                (Decision::Allowed, Outcome::Warned(invalid.message))
            }
            Err(invalid) => (Decision::Refused, Outcome::Refused(invalid.message)),
        })
    }

    /// The TaskFunction from the apiserver, through a short-lived cache: repeated reviews of
    /// one name (a hostile caller's, or one `kubectl apply` of many jobs) cost one GET per
    /// [`LOOKUP_CACHE_TTL`]. A TaskFunction created a moment before its jobs is found unless
    /// this replica looked that name up (and cached its absence) within the TTL; a review of
    /// the TaskFunction itself on this replica drops the entry.
    async fn task_function(
        &self,
        name: &str,
    ) -> Result<Option<Arc<Guarded<TaskFunction>>>, ReviewError> {
        // Not a name an object can have: it does not exist, and it never reaches a URL path.
        if !verdict::is_object_name(name) {
            return Ok(None);
        }
        if let Some(cached) = self.task_functions.get(name) {
            return Ok(cached);
        }
        let api: Api<Guarded<TaskFunction>> = Api::all(self.client.clone());
        let failed = |error: String| ReviewError::Lookup {
            name: name.to_string(),
            error,
        };
        let found = match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(name)).await {
            Ok(Ok(tf)) => tf.map(Arc::new),
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(_) => return Err(failed(format!("no answer within {LOOKUP_TIMEOUT:?}"))),
        };
        self.task_functions.insert(name.to_string(), found.clone());
        Ok(found)
    }
}

/// Whether the request changes what kube-beat judges. An update that leaves the spec and the
/// trigger annotation alone (kube-beat's own finalizer, labels, another controller's
/// annotations) or one to an object being deleted is let through: refusing it could leave an
/// object created while the webhook was away stuck with its finalizer.
fn changes_what_is_judged(object: &Value, old: Option<&Value>) -> bool {
    if object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        return false;
    }
    let Some(old) = old else {
        return true;
    };
    let trigger = |v: &Value| {
        v.pointer("/metadata/annotations")
            .and_then(|a| a.get(crate::api::TRIGGER_ANNOTATION))
            .cloned()
    };
    object.get("spec") != old.get("spec") || trigger(object) != trigger(old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_spec_and_trigger_changes_are_judged() {
        let old = json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
            "metadata": {"name": "j", "namespace": "a"}, "spec": {"x": 1},
        });
        let same = json!({"metadata": {"name": "j", "finalizers": ["kubebeat.io/cleanup"]}, "spec": {"x": 1}});
        assert!(!changes_what_is_judged(&same, Some(&old)));
        let spec = json!({"metadata": {"name": "j"}, "spec": {"x": 2}});
        assert!(changes_what_is_judged(&spec, Some(&old)));
        let trigger = json!({"metadata": {"name": "j", "annotations": {"kubebeat.io/trigger": "1"}}, "spec": {"x": 1}});
        assert!(changes_what_is_judged(&trigger, Some(&old)));
        let deleting = json!({"metadata": {"name": "j", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"x": 2}});
        assert!(!changes_what_is_judged(&deleting, Some(&old)));
        assert!(changes_what_is_judged(&spec, None), "a create is judged");
    }
}
