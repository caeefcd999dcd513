//! Tests of `reconcile::cached_job`.
use super::*;
use kube::ResourceExt;
use serde_json::json;

#[test]
fn jobs_with_unreadable_metadata_keep_keys_of_their_own() {
    let odd = |uid: &str, name: &str| {
        CachedJob::from_value(json!({"metadata": {
            "uid": uid, "name": name, "namespace": "ns", "labels": "not a map"}}))
    };
    let (a, b) = (odd("u-a", "a"), odd("u-b", "b"));
    assert_ne!(a.key(), b.key());
    assert_eq!(a.key(), Uid::parse("u-a"));
    assert_eq!(b.key_text(), "ns/b");
}

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
    let job = CachedJob::from_value(object(spec.clone(), status.clone()));

    assert_eq!(job.name(), "nightly");
    assert_eq!(job.namespace(), "team-a");
    assert_eq!(
        job.uid().as_deref(),
        Some("u-1"),
        "not a UUID: kept as it is"
    );
    assert_eq!(job.resource_version(), Some("42"));
    assert_eq!(job.generation(), Some(3));
    assert!(job.creation_timestamp().is_some());
    assert!(!job.deleting());
    assert_eq!(job.finalizers(), [crate::api::FINALIZER]);
    assert!(job.finalized());
    // Of the annotations, only the trigger.
    assert_eq!(job.trigger(), Some("now"));

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
        let kept = CachedJob::from_value(object(spec.clone(), status.clone()));
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
        crate::api::status_digest::written_digest(&serde_json::to_value(&typed).expect("json"))
    );
    assert_eq!(job.status.last_trigger.as_deref(), Some("before"));
    let previous = job.previous_conditions();
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
fn a_uuid_is_kept_as_16_bytes_and_given_back_as_sent() {
    let uid = "71cd4f29-67bc-4c1a-89c8-1130e5d24eb3";
    let mut obj = object(json!({}), Value::Null);
    obj["metadata"]["uid"] = uid.into();
    let job = CachedJob::from_value(obj.clone());
    assert!(matches!(job.key(), Uid::Uuid(_)));
    assert_eq!(job.uid().as_deref(), Some(uid));
    // Upper case parses as the same UUID but would print back differently: kept as sent.
    obj["metadata"]["uid"] = uid.to_uppercase().into();
    let job = CachedJob::from_value(obj);
    assert_eq!(job.key(), Uid::Other(uid.to_uppercase().into()));
    assert_eq!(job.uid(), Some(uid.to_uppercase()));
}

#[test]
fn other_finalizers_are_kept_and_namespaces_shared() {
    let mut obj = object(json!({}), Value::Null);
    obj["metadata"]["finalizers"] = json!(["example.com/a", crate::api::FINALIZER]);
    obj["metadata"]["deletionTimestamp"] = "2026-11-02T00:00:00Z".into();
    let a = CachedJob::from_value(obj.clone());
    assert_eq!(a.finalizers(), ["example.com/a", crate::api::FINALIZER]);
    assert!(a.deleting());
    obj["metadata"]["finalizers"] = json!(["example.com/a"]);
    let b = CachedJob::from_value(obj);
    assert!(!b.finalized());
    assert_eq!(b.finalizers(), ["example.com/a"]);
    assert!(
        Arc::ptr_eq(&a.namespace, &b.namespace),
        "one copy per namespace"
    );
    // The watched form carries what kube's watcher reads.
    let watched: WatchedJob =
        serde_json::from_value(object(json!({}), Value::Null)).expect("never fails");
    assert_eq!(watched.resource_version().as_deref(), Some("42"));
    assert_eq!(watched.job.name(), "nightly");
}

#[test]
fn a_spec_that_does_not_deserialize_is_recorded_not_fatal() {
    let job = CachedJob::from_value(object(
        json!({"taskFunction": 7, "schedule": "hourly"}),
        json!({"conditions": "not a list"}),
    ));
    let why = job
        .spec()
        .expect("an invalid spec is kept")
        .expect_err("not a ScheduledJobSpec");
    assert!(why.contains("invalid type"), "{why}");
    assert_eq!(job.task_function(), None);
    assert!(job.status.unreadable);
    assert_eq!(job.name(), "nightly");

    let missing = CachedJob::from_value(json!({"metadata": {"name": "bare"}}));
    assert!(missing.spec().is_some_and(|s| s.is_err()));
    assert_eq!(missing.status, seen(&ScheduledJobStatus::default()));
}

#[test]
fn conditions_of_other_types_are_neither_kept_nor_compared() {
    let other = json!({"type": "Degraded", "status": "False", "reason": "Fine",
        "message": "", "lastTransitionTime": "2026-11-01T00:00:00Z"});
    let spec = json!({"taskFunction": "t", "schedule": {"cron": "* * * * *"}});
    let alone = CachedJob::from_value(object(
        spec.clone(),
        json!({"conditions": [ready("False", "2026-11-01T00:00:05Z")]}),
    ));
    let job = CachedJob::from_value(object(
        spec.clone(),
        json!({"conditions": [ready("False", "2026-11-01T00:00:05Z"), other]}),
    ));
    let previous = job.previous_conditions();
    assert_eq!(previous.len(), 1);
    assert_eq!(previous[0].type_, "Ready");
    assert_eq!(previous[0].status, "False");
    // Another controller's condition does not make the reconciler's fields look changed.
    assert_eq!(job.status.reconciled, alone.status.reconciled);

    let none = CachedJob::from_value(object(spec, Value::Null));
    assert_eq!(none.previous_conditions(), Vec::new());
}
