//! What the operator keeps of a ScheduledJob in its informer cache.
//!
//! Whole objects made the cache the largest part of the operator's memory: 2.2 KB per job, 213 MB
//! at 100,000 jobs (a String per field, a map node per label and annotation map, the status with
//! its conditions and executions). The operator reads few of those fields, so the watch decodes
//! each object straight into a [`CachedJob`]: the metadata the reconciler acts on, the spec as one
//! JSON string (parsed again when the job is reconciled), and a digest of the status fields each
//! status writer owns, enough to tell "the object already shows this" without the fields.

use std::{
    borrow::Cow,
    hash::{Hash, Hasher},
};

use k8s_openapi::{
    NamespaceResourceScope,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::Resource;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::api::{Condition, ScheduledJob, ScheduledJobSpec, ScheduledJobStatus};

/// One ScheduledJob as cached. Built only by deserializing an object from the apiserver.
#[derive(Clone, Debug)]
pub struct CachedJob {
    /// Name, namespace, resourceVersion, generation, timestamps, finalizers and the trigger
    /// annotation; nothing else. The uid only if it is not a UUID (see `uid`).
    pub metadata: ObjectMeta,
    /// The uid as a UUID (as Kubernetes makes them), kept out of the metadata: the cache's key
    /// (kube's ObjectRef) copies the metadata's uid, so a String there was two per job
    /// (~100 bytes; 10 MB at 100,000 jobs).
    uid: Option<uuid::Uuid>,
    /// The spec as JSON (`None` once the job is stored: see [`CachedJob::spec`]), or why it
    /// does not deserialize as a [`ScheduledJobSpec`].
    spec: Result<Option<Box<str>>, Box<str>>,
    /// `spec.taskFunction` of a spec that deserializes.
    task_function: Option<Box<str>>,
    /// What the status shows, as far as the status writers need to know.
    pub status: SeenStatus,
}

/// The parts of a job's status its writers compare against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeenStatus {
    /// [`reconciled_digest`] of the fields the reconciler writes.
    pub reconciled: u64,
    /// [`crate::status::written_digest`] of the fields the status writer writes.
    pub written: u64,
    /// The `Ready` condition's status (`True`) and when it last flipped.
    pub ready: Option<(bool, Time)>,
    /// Conditions of other types exist (someone else wrote them): the reconciler reads the
    /// object to keep them.
    pub other_conditions: bool,
    pub last_trigger: Option<Box<str>>,
    /// The status did not deserialize (only a schema change could do that).
    pub unreadable: bool,
}

impl CachedJob {
    /// `metadata.uid` as the apiserver sent it.
    pub fn uid(&self) -> Option<String> {
        match self.uid {
            Some(uuid) => Some(uuid.hyphenated().to_string()),
            None => self.metadata.uid.clone(),
        }
    }

    /// The spec, parsed from the cached JSON, or why the object does not deserialize.
    ///
    /// `None` when the cache let go of it: the status shows this generation stored and Ready, so
    /// Postgres holds the spec (`store::stored_spec`). Most jobs are in that state most of the
    /// time, and the spec was a fifth of a cache entry (~20 MB at 100,000 jobs).
    pub fn spec(&self) -> Option<Result<ScheduledJobSpec, String>> {
        match &self.spec {
            Ok(Some(json)) => Some(serde_json::from_str(json).map_err(|e| e.to_string())),
            Ok(None) => None,
            Err(why) => Some(Err(why.to_string())),
        }
    }

    /// `spec.taskFunction`, when the spec deserializes.
    pub fn task_function(&self) -> Option<&str> {
        self.task_function.as_deref()
    }

    /// The `Ready` condition as last written, for [`crate::reconcile::conditions::set_ready`]
    /// (which reads only its status and transition time). `None` when other conditions exist:
    /// the caller reads the object to keep them.
    pub fn previous_conditions(&self) -> Option<Vec<Condition>> {
        if self.status.other_conditions {
            return None;
        }
        Some(
            self.status
                .ready
                .iter()
                .map(|(ready, since)| Condition {
                    type_: super::conditions::READY.to_string(),
                    status: if *ready { "True" } else { "False" }.to_string(),
                    last_transition_time: since.clone(),
                    reason: String::new(),
                    message: String::new(),
                    observed_generation: None,
                })
                .collect(),
        )
    }

    fn from_value(mut value: Value) -> CachedJob {
        let take = |v: &mut Value, key: &str| v.get_mut(key).map(Value::take);
        let mut metadata = take(&mut value, "metadata")
            .and_then(|m| serde_json::from_value(m).ok())
            .map(trimmed)
            .unwrap_or_default();
        // Only a uid that prints back the same moves out of the metadata.
        let uid = metadata.uid.as_deref().and_then(|u| {
            uuid::Uuid::parse_str(u)
                .ok()
                .filter(|p| p.hyphenated().to_string() == u)
        });
        if uid.is_some() {
            metadata.uid = None;
        }
        let (status, stored) = match take(&mut value, "status") {
            None | Some(Value::Null) => (seen(&ScheduledJobStatus::default()), false),
            Some(v) => match ScheduledJobStatus::deserialize(&v) {
                Ok(s) => (seen(&s), shows_stored(&s, metadata.generation)),
                Err(_) => (
                    SeenStatus {
                        unreadable: true,
                        ..Default::default()
                    },
                    false,
                ),
            },
        };
        let spec_value = take(&mut value, "spec").unwrap_or(Value::Null);
        let (spec, task_function) = match ScheduledJobSpec::deserialize(&spec_value) {
            Ok(parsed) => (
                Ok((!stored).then(|| spec_value.to_string().into_boxed_str())),
                Some(parsed.task_function.into_boxed_str()),
            ),
            Err(e) => (Err(e.to_string().into_boxed_str()), None),
        };
        CachedJob {
            metadata,
            uid,
            spec,
            task_function,
            status,
        }
    }
}

/// Keep of the metadata only what the operator reads.
fn trimmed(meta: ObjectMeta) -> ObjectMeta {
    let trigger = meta
        .annotations
        .and_then(|mut a| a.remove_entry(crate::api::TRIGGER_ANNOTATION));
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        generation: meta.generation,
        creation_timestamp: meta.creation_timestamp,
        deletion_timestamp: meta.deletion_timestamp,
        finalizers: meta.finalizers,
        annotations: trigger.map(|kv| [kv].into()),
        ..Default::default()
    }
}

/// The reconciler stored this generation and found it valid (it writes that status only after
/// the row, with the spec, is in Postgres).
fn shows_stored(status: &ScheduledJobStatus, generation: Option<i64>) -> bool {
    generation.is_some()
        && status.observed_generation == generation
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == super::conditions::READY && c.status == "True")
}

fn seen(status: &ScheduledJobStatus) -> SeenStatus {
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == super::conditions::READY)
        .map(|c| (c.status == "True", c.last_transition_time.clone()));
    SeenStatus {
        reconciled: reconciled_digest(
            status.observed_generation,
            &status.conditions,
            status.schedule.as_deref(),
            status.last_trigger.as_deref(),
        ),
        written: serde_json::to_value(status)
            .map(|v| crate::status::written_digest(&v))
            .unwrap_or_default(),
        ready,
        other_conditions: status
            .conditions
            .iter()
            .any(|c| c.type_ != super::conditions::READY),
        last_trigger: status.last_trigger.as_deref().map(Box::from),
        unreadable: false,
    }
}

/// A digest of the status fields the reconciler owns, from their typed values (so what was read
/// back and what would be written compare alike).
pub fn reconciled_digest(
    observed_generation: Option<i64>,
    conditions: &[Condition],
    schedule: Option<&str>,
    last_trigger: Option<&str>,
) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    observed_generation.hash(&mut h);
    serde_json::to_string(conditions)
        .unwrap_or_default()
        .hash(&mut h);
    schedule.hash(&mut h);
    last_trigger.hash(&mut h);
    h.finish()
}

impl<'de> Deserialize<'de> for CachedJob {
    /// Never fails on an object the apiserver sends: a spec or status that does not match the
    /// schema is recorded, so one bad object cannot break the watch for the others.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(CachedJob::from_value)
    }
}

impl Resource for CachedJob {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        ScheduledJob::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        ScheduledJob::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        ScheduledJob::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        ScheduledJob::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::ObjectRef;
    use serde_json::json;

    fn object(spec: Value, status: Value) -> Value {
        json!({
            "apiVersion": "kubebeat.io/v1alpha1",
            "kind": "ScheduledJob",
            "metadata": {
                "name": "nightly", "namespace": "team-a", "uid": "u-1",
                "resourceVersion": "42", "generation": 3,
                "creationTimestamp": "2026-11-01T00:00:00Z",
                "finalizers": [crate::api::FINALIZER],
                "labels": {"app": "billing"},
                "annotations": {
                    crate::api::TRIGGER_ANNOTATION: "now",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"spec\":{}}"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
            },
            "spec": spec,
            "status": status,
        })
    }

    fn ready(status: &str, since: &str) -> Value {
        json!({"type": "Ready", "status": status, "reason": "Stored",
               "message": "valid and stored", "observedGeneration": 3,
               "lastTransitionTime": since})
    }

    #[test]
    fn keeps_what_the_operator_reads_and_nothing_else() {
        let spec = json!({"taskFunction": "send-report", "schedule": {"cron": "0 3 * * *"},
                          "kwargs": {"to": "ops"}});
        let status = json!({"observedGeneration": 3, "schedule": "0 3 * * *",
            "conditions": [ready("True", "2026-11-01T00:00:05Z")], "lastTrigger": "before",
            "totalRuns": 2, "nextScheduleTime": "2026-11-02T03:00:00Z"});
        let job: CachedJob = serde_json::from_value(object(spec.clone(), status.clone()))
            .expect("always deserializes");

        let meta = &job.metadata;
        assert_eq!(meta.name.as_deref(), Some("nightly"));
        assert_eq!(meta.namespace.as_deref(), Some("team-a"));
        assert_eq!(
            job.uid().as_deref(),
            Some("u-1"),
            "not a UUID: kept as it is"
        );
        assert_eq!(meta.resource_version.as_deref(), Some("42"));
        assert_eq!(meta.generation, Some(3));
        assert!(meta.creation_timestamp.is_some());
        assert_eq!(meta.finalizers.as_deref().map(<[_]>::len), Some(1));
        // Of the annotations, only the trigger.
        let annotations: Vec<_> = meta.annotations.iter().flatten().collect();
        assert_eq!(
            annotations,
            [(
                &crate::api::TRIGGER_ANNOTATION.to_string(),
                &"now".to_string()
            )]
        );
        assert_eq!(
            (meta.labels.as_ref(), meta.managed_fields.as_ref()),
            (None, None)
        );

        // Stored and Ready at its generation: the spec is read from Postgres, not kept.
        assert_eq!(job.spec(), None);
        assert_eq!(job.task_function(), Some("send-report"));
        // Kept while another generation, or not Ready, shows.
        let parsed: ScheduledJobSpec = serde_json::from_value(spec.clone()).expect("spec");
        let mut older = status.clone();
        older["observedGeneration"] = 2.into();
        let mut not_ready = status.clone();
        not_ready["conditions"] = json!([ready("False", "2026-11-01T00:00:05Z")]);
        for status in [older, not_ready, Value::Null] {
            let kept: CachedJob =
                serde_json::from_value(object(spec.clone(), status.clone())).expect("job");
            assert_eq!(kept.spec(), Some(Ok(parsed.clone())), "{status}");
        }

        let typed: ScheduledJobStatus = serde_json::from_value(status).expect("status");
        assert_eq!(
            job.status.reconciled,
            reconciled_digest(
                Some(3),
                &typed.conditions,
                Some("0 3 * * *"),
                Some("before")
            )
        );
        assert_ne!(
            job.status.reconciled,
            reconciled_digest(
                Some(4),
                &typed.conditions,
                Some("0 3 * * *"),
                Some("before")
            )
        );
        assert_eq!(
            job.status.written,
            crate::status::written_digest(&serde_json::to_value(&typed).expect("json"))
        );
        assert_eq!(job.status.last_trigger.as_deref(), Some("before"));
        let previous = job.previous_conditions().expect("only Ready");
        assert_eq!(previous.len(), 1);
        assert_eq!(
            (
                previous[0].status.as_str(),
                &previous[0].last_transition_time
            ),
            ("True", &typed.conditions[0].last_transition_time)
        );
        // The whole object's entry is the same as the watched one's.
        let whole: ScheduledJob = serde_json::from_value(object(
            json!({"taskFunction": "send-report", "schedule": {"cron": "0 3 * * *"},
                   "kwargs": {"to": "ops"}}),
            serde_json::to_value(&typed).expect("json"),
        ))
        .expect("whole");
        let from_whole = CachedJob::from_value(serde_json::to_value(&whole).expect("json"));
        assert_eq!(from_whole.status, job.status);
    }

    #[test]
    fn a_uuid_is_kept_out_of_the_metadata_and_given_back_as_sent() {
        let uid = "71cd4f29-67bc-4c1a-89c8-1130e5d24eb3";
        let mut obj = object(json!({}), Value::Null);
        obj["metadata"]["uid"] = uid.into();
        let job: CachedJob = serde_json::from_value(obj.clone()).expect("job");
        assert_eq!(job.metadata.uid, None);
        assert_eq!(job.uid().as_deref(), Some(uid));
        assert_eq!(ObjectRef::from_obj(&job).extra.uid, None);
        // Upper case parses as the same UUID but would print back differently: kept as sent.
        obj["metadata"]["uid"] = uid.to_uppercase().into();
        let job: CachedJob = serde_json::from_value(obj).expect("job");
        assert_eq!(job.uid(), Some(uid.to_uppercase()));
    }

    #[test]
    fn a_spec_that_does_not_deserialize_is_recorded_not_fatal() {
        let job: CachedJob = serde_json::from_value(object(
            json!({"taskFunction": 7, "schedule": "hourly"}),
            json!({"conditions": "not a list"}),
        ))
        .expect("never fails");
        let why = job
            .spec()
            .expect("an invalid spec is kept")
            .expect_err("not a ScheduledJobSpec");
        assert!(why.contains("invalid type"), "{why}");
        assert_eq!(job.task_function(), None);
        assert!(job.status.unreadable);
        assert_eq!(job.metadata.name.as_deref(), Some("nightly"));

        let missing: CachedJob =
            serde_json::from_value(json!({"metadata": {"name": "bare"}})).expect("never fails");
        assert!(missing.spec().is_some_and(|s| s.is_err()));
        assert_eq!(missing.status, seen(&ScheduledJobStatus::default()));
    }

    #[test]
    fn conditions_of_other_types_are_read_from_the_object() {
        let other = json!({"type": "Degraded", "status": "False", "reason": "Fine",
            "message": "", "lastTransitionTime": "2026-11-01T00:00:00Z"});
        let job: CachedJob = serde_json::from_value(object(
            json!({"taskFunction": "t", "schedule": {"cron": "* * * * *"}}),
            json!({"conditions": [ready("False", "2026-11-01T00:00:05Z"), other]}),
        ))
        .expect("job");
        assert!(job.status.other_conditions);
        assert_eq!(job.previous_conditions(), None);

        let none: CachedJob = serde_json::from_value(object(
            json!({"taskFunction": "t", "schedule": {"cron": "* * * * *"}}),
            Value::Null,
        ))
        .expect("job");
        assert_eq!(none.previous_conditions(), Some(Vec::new()));
    }
}
