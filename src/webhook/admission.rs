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
use serde_json::{Value, json};

use super::verdict::{self, Kind};
use crate::{
    api::{FINALIZER, TaskFunction},
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

/// What one validating review decided, for the metric (a mutating one that adds the finalizer
/// counts as `finalizer`).
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

/// An AdmissionReview read from a body: the request, and its object and old object moved out
/// of the JSON tree (not copied) before the rest is read, so a review costs its parsed size once.
struct Parsed {
    request: AdmissionRequest<DynamicObject>,
    kind: Option<Kind>,
    object: Option<Value>,
    old_object: Option<Value>,
}

impl Parsed {
    fn label(&self) -> &'static str {
        self.kind.map(Kind::as_str).unwrap_or("other")
    }
}

/// `Err`: why it is not one (answered with a 400).
fn parse(body: Bytes) -> Result<Parsed, String> {
    let mut review: Value =
        serde_json::from_slice(&body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    drop(body);
    let mut take = |pointer: &str| {
        review
            .pointer_mut(pointer)
            .map(Value::take)
            .filter(|v| !v.is_null())
    };
    let object = take("/request/object");
    let old_object = take("/request/oldObject");
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(review).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| "an AdmissionReview without a request".to_string())?;
    let kind = Kind::of(
        &format!("{}/{}", request.kind.group, request.kind.version),
        &request.kind.kind,
    );
    Ok(Parsed {
        request,
        kind,
        object,
        old_object,
    })
}

/// `POST /validate`.
pub async fn validate(State(reviewer): State<Arc<Reviewer>>, body: Bytes) -> Response {
    let parsed = match parse(body) {
        Ok(p) => p,
        Err(message) => return bad_request(message),
    };
    let label = parsed.label();
    let Parsed {
        request,
        kind,
        object,
        old_object,
    } = parsed;
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

/// `POST /mutate`: kube-beat's finalizer on a ScheduledJob as it is created, in the create
/// itself. Otherwise the operator adds it with a PATCH of its own after storing the job: one
/// more apiserver write (decoded, validated, stored in etcd, sent to every watcher) per new job,
/// which at 100,000 new jobs competes with the creates themselves. Never refuses: a job this
/// does not mark (the webhook down, its TaskFunction not found in time) gets the finalizer from
/// the operator as before. Only creates: a finalizer someone removed by hand stays removed.
///
/// The finalizer added here is in no field manager's managedFields (the apiserver records
/// them before mutating admission), so a later server-side apply of the job by its owner,
/// which never lists it, does not take it off.
pub async fn mutate(State(reviewer): State<Arc<Reviewer>>, body: Bytes) -> Response {
    let parsed = match parse(body) {
        Ok(p) => p,
        Err(message) => return bad_request(message),
    };
    let response = AdmissionResponse::from(&parsed.request);
    let Some(patch) = reviewer.finalizer_patch(&parsed).await else {
        return Json(response.into_review()).into_response();
    };
    // By hand, not kube's `with_patch`: that keeps the patch as `Vec<u8>`, which serde writes as
    // an array of numbers; the API's `[]byte` is a base64 string on the wire, which is what
    // every apiserver's decoder reads.
    let mut review = match serde_json::to_value(response.into_review()) {
        Ok(v) => v,
        // Not reachable (a struct of strings and maps); the apiserver's `Ignore` lets it by.
        Err(e) => {
            let message = format!("encoding the response: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, message).into_response();
        }
    };
    if let Some(Value::Object(fields)) = review.get_mut("response") {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
        fields.insert("patch".to_string(), Value::String(encoded));
        fields.insert("patchType".to_string(), Value::from("JSONPatch"));
        count(parsed.label(), "finalizer");
    }
    Json(review).into_response()
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

    /// The JSON patch adding kube-beat's finalizer to a ScheduledJob being created, when the
    /// job is this installation's and lacks it. A job whose TaskFunction does not exist (yet) is
    /// ours, as the reconcile treats it; one whose TaskFunction is outside our selector is not.
    /// A lookup that fails leaves the job to the operator's own PATCH.
    async fn finalizer_patch(&self, parsed: &Parsed) -> Option<Value> {
        let request = &parsed.request;
        if parsed.kind != Some(Kind::ScheduledJob)
            || !matches!(request.operation, Operation::Create)
            || request.sub_resource.is_some()
        {
            return None;
        }
        let namespace = request.namespace.as_deref().unwrap_or_default();
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return None;
        }
        let object = parsed.object.as_ref()?;
        let finalizers = object.pointer("/metadata/finalizers");
        let list = finalizers.and_then(Value::as_array);
        if list.is_some_and(|l| l.iter().any(|f| f == FINALIZER)) {
            return None;
        }
        // The empty selector (the default) takes every job: no lookup.
        if self.selector != LabelSelector::default() {
            let name = verdict::job_reference(object)?;
            match self.task_function(&name).await {
                Ok(Some(tf)) if !self.selector.matches(tf.labels()) => return None,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "no finalizer at create: the operator adds it");
                    return None;
                }
            }
        }
        let op = match (finalizers, list) {
            // No list (or `null`): the whole list.
            (None | Some(Value::Null), _) => {
                json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]})
            }
            (_, Some(_)) => {
                json!({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER})
            }
            // Not a list: the apiserver refuses the object anyway.
            (Some(_), None) => return None,
        };
        Some(json!([op]))
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
