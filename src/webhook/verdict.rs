//! The verdict on one ScheduledJob or TaskFunction object given as JSON: the reconcile's own
//! validation ([`crate::reconcile::validate`]), reached the way the reconcile reaches it, so a
//! refusal at apply time (the admission webhook) or in CI (`kube-beat validate`) says the very
//! words the `Ready=False` condition would show.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::{
    api::TaskFunction,
    reconcile::{
        Guarded, cached_job::CachedJob, guarded::schema_mismatch, scheduled_job::to_chrono,
        validate,
    },
};

/// The two kinds kube-beat judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ScheduledJob,
    TaskFunction,
}

impl Kind {
    /// The kind of an object by its `apiVersion` group and `kind`; `None` for any other kind.
    pub fn of(api_version: &str, kind: &str) -> Option<Kind> {
        let group = api_version.split('/').next().unwrap_or_default();
        match (group, kind) {
            ("kubebeat.io", "ScheduledJob") => Some(Kind::ScheduledJob),
            ("kubebeat.io", "TaskFunction") => Some(Kind::TaskFunction),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ScheduledJob => "ScheduledJob",
            Kind::TaskFunction => "TaskFunction",
        }
    }
}

/// The TaskFunction a ScheduledJob object names (`spec.taskFunction`), to look it up before
/// judging the job.
pub fn job_reference(obj: &Value) -> Option<String> {
    obj.get("spec")?
        .get("taskFunction")?
        .as_str()
        .map(str::to_string)
}

/// Whether `name` can be an object's name (a DNS-1123 subdomain: at most 253 characters,
/// dot-separated labels of lowercase letters, digits and '-', each starting and ending with a
/// letter or digit). A TaskFunction reference that is not cannot name an existing TaskFunction,
/// and must never reach a URL path (`echo/status`, `../x`, `?watch=1`).
pub fn is_object_name(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    name.len() <= 253
        && name.split('.').all(|label| {
            label.starts_with(alnum)
                && label.ends_with(alnum)
                && label.chars().all(|c| alnum(c) || c == '-')
        })
}

/// Judge a ScheduledJob object against its TaskFunction object (`None`: it does not exist).
/// `default_namespace` stands in for an object that names none (a file for `kubectl apply -n`).
/// The object is taken, not copied (the webhook's reviews are bounded in memory).
pub fn scheduled_job(
    mut obj: Value,
    default_namespace: &str,
    tf: Option<&Guarded<TaskFunction>>,
    now: DateTime<Utc>,
) -> Result<(), validate::Invalid> {
    if let Some(map) = obj.as_object_mut() {
        // Without a status the cached form always keeps the spec (it lets go of the spec of a
        // generation the status shows stored).
        map.remove("status");
    }
    // The reconcile's own reading of a watched object: the same spec error text.
    let job = CachedJob::from_value(obj);
    let spec = match job.spec() {
        Some(Ok(spec)) => spec,
        Some(Err(why)) => return Err(schema_mismatch("ScheduledJob", &why)),
        None => return Err(schema_mismatch("ScheduledJob", "no spec")),
    };
    let namespace = match job.namespace() {
        "" => default_namespace,
        ns => ns,
    };
    let uid = job.uid().unwrap_or_default();
    let meta = validate::JobMeta {
        uid: &uid,
        namespace,
        name: job.name(),
        generation: job.generation().unwrap_or(0),
        // Not created yet (a file, a CREATE before the apiserver stamped it): created now.
        created: job
            .creation_timestamp()
            .map(|t| to_chrono(t.0))
            .unwrap_or(now),
        trigger: job.trigger(),
    };
    validate::scheduled_job_with(&meta, &spec, tf, now).map(|_| ())
}

/// A TaskFunction object as the reconcile reads it (undeserializable objects included).
pub fn read_task_function(obj: Value) -> Guarded<TaskFunction> {
    // `DeserializeGuard` never fails on an object: a spec that does not match is kept as an
    // error. Something that is not even an object cannot carry metadata: an empty one.
    serde_json::from_value(obj).unwrap_or_else(|e| {
        kube::core::DeserializeGuard(Err(kube::core::error_boundary::InvalidObject {
            error: e.to_string(),
            metadata: Default::default(),
        }))
    })
}

/// Judge a TaskFunction object, as its reconcile does.
pub fn task_function(tf: &Guarded<TaskFunction>) -> Result<(), validate::Invalid> {
    match &tf.0 {
        Ok(tf) => validate::task_function(&kube::ResourceExt::name_any(tf), &tf.spec).map(|_| ()),
        Err(e) => Err(schema_mismatch("TaskFunction", &e.error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn tf(spec: Value) -> Guarded<TaskFunction> {
        read_task_function(json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "TaskFunction",
            "metadata": {"name": "echo"}, "spec": spec,
        }))
    }

    fn job(spec: Value) -> Value {
        json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
            "metadata": {"name": "j", "namespace": "team-a"}, "spec": spec,
        })
    }

    #[test]
    fn a_valid_job_and_the_reconciles_messages() {
        let echo = tf(json!({"task": "kb.echo", "queue": "q"}));
        let ok = job(json!({"taskFunction": "echo", "schedule": {"cron": "*/5 * * * *"}}));
        assert_eq!(
            scheduled_job(ok.clone(), "default", Some(&echo), now()),
            Ok(())
        );

        let missing = scheduled_job(ok.clone(), "default", None, now()).expect_err("missing");
        assert_eq!(missing.reason, validate::Reason::UnknownTaskFunction);
        assert_eq!(missing.message, "TaskFunction \"echo\" does not exist");

        let bad = job(json!({"taskFunction": "echo", "schedule": {"cron": "61 * * * *"}}));
        let e = scheduled_job(bad, "default", Some(&echo), now()).expect_err("bad cron");
        assert_eq!(e.reason, validate::Reason::InvalidSchedule);

        let fenced = tf(json!({"task": "kb.echo", "queue": "q", "allowedNamespaces": ["b"]}));
        let e = scheduled_job(ok.clone(), "default", Some(&fenced), now()).expect_err("namespace");
        assert_eq!(e.reason, validate::Reason::NamespaceNotAllowed);

        let reserved = tf(json!({"task": "kb.echo", "queue": "amq.direct"}));
        let e = task_function(&reserved).expect_err("reserved queue");
        assert!(e.message.contains("reserved"), "{e}");
        let e =
            scheduled_job(ok.clone(), "default", Some(&reserved), now()).expect_err("tf invalid");
        assert_eq!(e.reason, validate::Reason::TaskFunctionNotReady);
    }

    #[test]
    fn object_names() {
        for good in ["echo", "a", "a.b-c", "0x", &"a".repeat(253)] {
            assert!(is_object_name(good), "{good}");
        }
        for bad in [
            "",
            "echo/status",
            "?watch=1",
            "../x",
            "..",
            "Echo",
            "-a",
            "a-",
            "a..b",
            "a b",
            "é",
            &"a".repeat(254),
        ] {
            assert!(!is_object_name(bad), "{bad}");
        }
    }

    #[test]
    fn garbage_is_refused_not_a_panic() {
        let echo = tf(json!({"task": "kb.echo"}));
        for garbage in [
            json!(null),
            json!(42),
            json!("text"),
            json!([1, 2]),
            json!({"metadata": 7, "spec": "x"}),
            json!({"metadata": {"name": ["x"], "creationTimestamp": "yesterday"}, "spec": {}}),
            json!({"spec": {"taskFunction": "echo", "schedule": {"cron": "\u{0}\u{ffff}"}}}),
            json!({"spec": {"taskFunction": "echo", "schedule": {"interval": {"seconds": -1}}}}),
            json!({"spec": {"taskFunction": "echo", "schedule": {"at": "9999-99-99"}}}),
        ] {
            assert!(
                scheduled_job(garbage.clone(), "default", Some(&echo), now()).is_err(),
                "{garbage}"
            );
            assert!(
                task_function(&read_task_function(garbage.clone())).is_err(),
                "{garbage}"
            );
        }
    }
}
