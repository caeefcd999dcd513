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
    reconcile::{Guarded, LabelSelector},
};

/// How long the TaskFunction lookup may take: well inside the apiserver's `timeoutSeconds`
/// (the chart's default is 5), so a slow lookup is an error the `failurePolicy` decides on,
/// not a timeout.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// What the endpoint needs.
pub struct Reviewer {
    pub client: Client,
    /// `--task-function-selector`: another installation's TaskFunctions (and their jobs) are
    /// that installation's to judge.
    pub selector: LabelSelector,
    /// `--namespace`: jobs elsewhere are not this installation's.
    pub namespace: Option<String>,
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
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
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
    match reviewer.review(kind, &request).await {
        Ok((decision, refusal)) => {
            count(label, decision.as_str());
            let response = match refusal {
                Some(message) => {
                    tracing::info!(kind = label, namespace = ?request.namespace, name = %request.name,
                        message = %message, "admission refused");
                    response.deny(message)
                }
                None => response,
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
    /// The decision on one request, and the refusal message if refused.
    async fn review(
        &self,
        kind: Option<Kind>,
        request: &AdmissionRequest<DynamicObject>,
    ) -> Result<(Decision, Option<String>), ReviewError> {
        let skip = Ok((Decision::Skipped, None));
        let Some(kind) = kind else { return skip };
        if !matches!(request.operation, Operation::Create | Operation::Update)
            || request.sub_resource.is_some()
        {
            return skip;
        }
        let Some(object) = request.object.as_ref() else {
            return skip;
        };
        let Ok(object) = serde_json::to_value(object) else {
            return skip;
        };
        if !changes_what_is_judged(&object, request.old_object.as_ref()) {
            return skip;
        }
        let now = chrono::Utc::now();
        let verdict = match kind {
            Kind::TaskFunction => {
                let tf = verdict::read_task_function(&object);
                if !self.selector.matches(tf.labels()) {
                    return skip;
                }
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
                verdict::scheduled_job(&object, namespace, tf.as_ref(), now)
            }
        };
        Ok(match verdict {
            Ok(()) => (Decision::Allowed, None),
            Err(invalid) => (Decision::Refused, Some(invalid.message)),
        })
    }

    /// The TaskFunction from the apiserver, not a cache: a TaskFunction applied a moment before
    /// its jobs (one `kubectl apply -f dir`) must be found.
    async fn task_function(
        &self,
        name: &str,
    ) -> Result<Option<Guarded<TaskFunction>>, ReviewError> {
        let api: Api<Guarded<TaskFunction>> = Api::all(self.client.clone());
        let failed = |error: String| ReviewError::Lookup {
            name: name.chars().take(253).collect(),
            error,
        };
        match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(name)).await {
            Ok(Ok(tf)) => Ok(tf),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed(format!("no answer within {LOOKUP_TIMEOUT:?}"))),
        }
    }
}

/// Whether the request changes what kube-beat judges. An update that leaves the spec and the
/// trigger annotation alone (kube-beat's own finalizer, labels, another controller's
/// annotations) or one to an object being deleted is let through: refusing it could leave an
/// object created while the webhook was away stuck with its finalizer.
fn changes_what_is_judged(object: &Value, old: Option<&DynamicObject>) -> bool {
    if object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        return false;
    }
    let Some(old) = old.and_then(|o| serde_json::to_value(o).ok()) else {
        return true;
    };
    let trigger = |v: &Value| {
        v.pointer("/metadata/annotations")
            .and_then(|a| a.get(crate::api::TRIGGER_ANNOTATION))
            .cloned()
    };
    object.get("spec") != old.get("spec") || trigger(object) != trigger(&old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_spec_and_trigger_changes_are_judged() {
        let old: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
            "metadata": {"name": "j", "namespace": "a"}, "spec": {"x": 1},
        }))
        .expect("object");
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
