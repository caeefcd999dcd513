//! What the operator keeps of a ScheduledJob in its cache.
//!
//! Whole objects made the cache the largest part of the operator's memory: 2.2 KB per job, 213 MB
//! at 100,000 jobs (a String per field, a map node per label and annotation map, the status with
//! its conditions and executions). The operator reads few of those fields, so the watch decodes
//! each object straight into a [`CachedJob`]: the few metadata fields the reconciler acts on, the
//! spec as one JSON string (parsed again when the job is reconciled, and dropped once Postgres
//! holds it), and a digest of the status fields each status writer owns, enough to tell "the
//! object already shows this" without the fields.
//!
//! A [`CachedJob`] has no `ObjectMeta`: kube's informer store needs one inline per object (344
//! bytes, nearly all empty fields) and keys each entry by an `ObjectRef` with its own copies of
//! name, namespace and resourceVersion; with those, the cache of 100,000 jobs was ~100 MB (see
//! [`super::job_cache`] for what replaced it). [`WatchedJob`] is the form the watch decodes (a
//! `Resource`, as kube's watcher needs), alive only while one event is handled.

use std::{
    borrow::Cow,
    collections::HashSet,
    fmt,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex, OnceLock},
};

use k8s_openapi::{
    NamespaceResourceScope,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::Resource;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::api::{Condition, FINALIZER, ScheduledJob, ScheduledJobSpec, ScheduledJobStatus};

/// A job's identity in the cache: its uid, as 16 bytes when it is a UUID (as Kubernetes makes
/// them), else as sent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Uid {
    Uuid(uuid::Uuid),
    Other(Box<str>),
}

impl Uid {
    /// Only a uid that prints back the same becomes a UUID (so `to_string` gives what was sent).
    pub fn parse(text: &str) -> Uid {
        match uuid::Uuid::parse_str(text) {
            Ok(u) if u.hyphenated().to_string() == text => Uid::Uuid(u),
            _ => Uid::Other(text.into()),
        }
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uid::Uuid(u) => write!(f, "{}", u.hyphenated()),
            Uid::Other(s) => f.write_str(s),
        }
    }
}

/// One shared copy of each namespace and TaskFunction name (a few distinct values across
/// 100,000 jobs). Names no job holds any more are let go of whenever the set has doubled since
/// the last clean-up.
fn intern(text: &str) -> Arc<str> {
    struct Interned {
        set: HashSet<Arc<str>>,
        clean_at: usize,
    }
    static INTERNED: OnceLock<Mutex<Interned>> = OnceLock::new();
    let mut interned = INTERNED
        .get_or_init(|| {
            Mutex::new(Interned {
                set: HashSet::new(),
                clean_at: 64,
            })
        })
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(found) = interned.set.get(text) {
        return found.clone();
    }
    if interned.set.len() >= interned.clean_at {
        interned.set.retain(|s| Arc::strong_count(s) > 1);
        interned.clean_at = (interned.set.len() * 2).max(64);
    }
    let new: Arc<str> = Arc::from(text);
    interned.set.insert(new.clone());
    new
}

/// One ScheduledJob as cached. Built only by deserializing an object from the apiserver.
#[derive(Clone, Debug)]
pub struct CachedJob {
    name: Box<str>,
    namespace: Arc<str>,
    uid: Option<Uid>,
    resource_version: Option<Box<str>>,
    generation: Option<i64>,
    created: Option<Time>,
    deleting: bool,
    /// Whether our finalizer is on the object; the others are kept apart (usually none, which
    /// allocates nothing).
    finalized: bool,
    other_finalizers: Box<[Box<str>]>,
    /// The trigger annotation.
    trigger: Option<Box<str>>,
    /// The resume annotation (with the trigger and the backfill, the only annotations the
    /// operator reads).
    resume: Option<Box<str>>,
    /// The backfill annotation (JSON; see `crate::backfill`).
    backfill: Option<Box<str>>,
    /// A manual run's overrides (`kubebeat.io/trigger-args`, `-kwargs`), read with the trigger
    /// (with it and the resume annotation, the only annotations the operator reads). Usually
    /// absent: nothing allocated.
    trigger_overrides: Option<Box<TriggerOverrides>>,
    /// The spec as JSON (`None` once the job is stored: see [`CachedJob::spec`]), or why it
    /// does not deserialize as a [`ScheduledJobSpec`].
    spec: Result<Option<Box<str>>, Box<str>>,
    /// `spec.taskFunction` of a spec that deserializes.
    task_function: Option<Arc<str>>,
    /// `spec.calendars` of a spec that deserializes (empty for most jobs: no allocation).
    calendars: Box<[Arc<str>]>,
    /// What the status shows, as far as the status writers need to know.
    pub status: SeenStatus,
}

/// The override annotations' values: (args, kwargs).
type TriggerOverrides = (Option<Box<str>>, Option<Box<str>>);

/// The form a ScheduledJob is watched in: the job as cached, and the metadata kube's watcher
/// reads (name, namespace, resourceVersion). Dropped once its event is applied to the cache.
#[derive(Clone, Debug)]
pub struct WatchedJob {
    metadata: ObjectMeta,
    pub job: CachedJob,
}

/// The parts of a job's status its writers compare against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeenStatus {
    /// [`reconciled_digest`] of the fields the reconciler writes.
    pub reconciled: u64,
    /// [`crate::api::status_digest::written_digest`] of the fields the status writer writes.
    pub written: u64,
    /// The `Ready` condition's status (`True`) and when it last flipped. Conditions of other
    /// types are other controllers' (kube-beat applies only `Ready`), so none are kept.
    pub ready: Option<(bool, Time)>,
    pub last_trigger: Option<Box<str>>,
    /// The status did not deserialize (only a schema change could do that).
    pub unreadable: bool,
}

impl CachedJob {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `namespace/name`, for logs and backoff.
    pub fn key_text(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `metadata.uid` as the apiserver sent it.
    pub fn uid(&self) -> Option<String> {
        self.uid.as_ref().map(Uid::to_string)
    }

    /// The job's key in the cache: its uid (an object without one, which no apiserver sends,
    /// is keyed by its namespace and name).
    pub fn key(&self) -> Uid {
        self.uid
            .clone()
            .unwrap_or_else(|| Uid::Other(self.key_text().into()))
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    pub fn generation(&self) -> Option<i64> {
        self.generation
    }

    pub fn creation_timestamp(&self) -> Option<&Time> {
        self.created.as_ref()
    }

    /// `metadata.deletionTimestamp` is set.
    pub fn deleting(&self) -> bool {
        self.deleting
    }

    /// Whether our finalizer is on the object.
    pub fn finalized(&self) -> bool {
        self.finalized
    }

    /// The finalizers other than ours.
    pub fn other_finalizers(&self) -> &[Box<str>] {
        &self.other_finalizers
    }

    /// `metadata.finalizers` (ours last).
    pub fn finalizers(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .other_finalizers
            .iter()
            .map(|f| f.to_string())
            .collect();
        if self.finalized {
            all.push(FINALIZER.to_string());
        }
        all
    }

    /// The trigger annotation's value.
    pub fn trigger(&self) -> Option<&str> {
        self.trigger.as_deref()
    }

    /// The resume annotation's value.
    pub fn resume(&self) -> Option<&str> {
        self.resume.as_deref()
    }

    /// The backfill annotation's value.
    pub fn backfill(&self) -> Option<&str> {
        self.backfill.as_deref()
    }

    /// The override annotations' values (args, kwargs) that come with the trigger.
    pub fn trigger_overrides(&self) -> (Option<&str>, Option<&str>) {
        match &self.trigger_overrides {
            Some(o) => (o.0.as_deref(), o.1.as_deref()),
            None => (None, None),
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

    /// This job without its spec, when it holds one that deserializes: for the cache to let go
    /// of it once Postgres holds it (see [`super::job_cache::JobCache::spec_stored`]).
    pub fn without_spec(&self) -> Option<CachedJob> {
        matches!(self.spec, Ok(Some(_))).then(|| CachedJob {
            spec: Ok(None),
            ..self.clone()
        })
    }

    /// `spec.taskFunction`, when the spec deserializes.
    pub fn task_function(&self) -> Option<&str> {
        self.task_function.as_deref()
    }

    /// `spec.calendars`, when the spec deserializes.
    pub fn calendars(&self) -> &[Arc<str>] {
        &self.calendars
    }

    /// The `Ready` condition as last written, for
    /// [`crate::reconcile::conditions::ready_condition`] (which reads only its status and
    /// transition time). Other types are not kube-beat's: its apply leaves them as they are.
    pub fn previous_conditions(&self) -> Vec<Condition> {
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
            .collect()
    }

    pub(crate) fn from_value(mut value: Value) -> CachedJob {
        let take = |v: &mut Value, key: &str| v.get_mut(key).map(Value::take);
        let meta = match take(&mut value, "metadata") {
            None => ObjectMeta::default(),
            Some(m) => ObjectMeta::deserialize(&m).unwrap_or_else(|e| salvaged_meta(&m, &e)),
        };
        let generation = meta.generation;
        let (status, stored) = match take(&mut value, "status") {
            None | Some(Value::Null) => (seen(&ScheduledJobStatus::default()), false),
            Some(v) => match ScheduledJobStatus::deserialize(&v) {
                Ok(s) => (seen(&s), shows_stored(&s, generation)),
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
        let (spec, task_function, calendars) = match ScheduledJobSpec::deserialize(&spec_value) {
            Ok(parsed) => (
                Ok((!stored).then(|| spec_value.to_string().into_boxed_str())),
                Some(intern(&parsed.task_function)),
                // Bounded like the schema, for objects stored without it.
                parsed
                    .calendars
                    .iter()
                    .take(crate::api::scheduled_job::MAX_JOB_CALENDARS)
                    .map(|c| intern(c))
                    .collect(),
            ),
            Err(e) => (Err(e.to_string().into_boxed_str()), None, Box::default()),
        };
        let finalizers = meta.finalizers.unwrap_or_default();
        let mut annotations = meta.annotations.unwrap_or_default();
        let mut annotation = |key: &str| annotations.remove(key).map(String::into_boxed_str);
        let overrides = (
            annotation(crate::arguments::TRIGGER_ARGS_ANNOTATION),
            annotation(crate::arguments::TRIGGER_KWARGS_ANNOTATION),
        );
        let trigger_overrides =
            (overrides.0.is_some() || overrides.1.is_some()).then(|| Box::new(overrides));
        CachedJob {
            name: meta.name.unwrap_or_default().into_boxed_str(),
            namespace: intern(meta.namespace.as_deref().unwrap_or_default()),
            uid: meta.uid.as_deref().map(Uid::parse),
            resource_version: meta.resource_version.map(String::into_boxed_str),
            generation,
            created: meta.creation_timestamp,
            deleting: meta.deletion_timestamp.is_some(),
            finalized: finalizers.iter().any(|f| f == FINALIZER),
            other_finalizers: finalizers
                .into_iter()
                .filter(|f| f != FINALIZER)
                .map(String::into_boxed_str)
                .collect(),
            trigger: annotation(crate::api::TRIGGER_ANNOTATION),
            resume: annotation(crate::api::RESUME_ANNOTATION),
            backfill: annotation(crate::api::BACKFILL_ANNOTATION),
            trigger_overrides,
            spec,
            task_function,
            calendars,
            status,
        }
    }
}

/// Metadata that does not deserialize (no apiserver sends it): what identifies the object, read
/// field by field, so such jobs keep keys of their own instead of all becoming the one job `/`.
fn salvaged_meta(raw: &Value, error: &serde_json::Error) -> ObjectMeta {
    let text = |key: &str| raw.get(key).and_then(Value::as_str).map(str::to_string);
    let meta = ObjectMeta {
        name: text("name"),
        namespace: text("namespace"),
        uid: text("uid"),
        resource_version: text("resourceVersion"),
        ..Default::default()
    };
    tracing::warn!(namespace = ?meta.namespace, name = ?meta.name, %error,
                   "a ScheduledJob's metadata does not deserialize");
    meta
}

impl WatchedJob {
    fn from_value(value: Value) -> WatchedJob {
        let job = CachedJob::from_value(value);
        WatchedJob {
            metadata: ObjectMeta {
                name: Some(job.name.to_string()),
                namespace: Some(job.namespace.to_string()),
                resource_version: job.resource_version.as_deref().map(String::from),
                ..Default::default()
            },
            job,
        }
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
    // Only kube-beat's own condition counts: another controller's conditions changing is no
    // reason for the reconciler to write.
    let ours: Vec<Condition> = status
        .conditions
        .iter()
        .filter(|c| c.type_ == super::conditions::READY)
        .cloned()
        .collect();
    SeenStatus {
        reconciled: reconciled_digest(
            status.observed_generation,
            &ours,
            status.schedule.as_deref(),
            status.last_trigger.as_deref(),
        ),
        written: serde_json::to_value(status)
            .map(|v| crate::api::status_digest::written_digest(&v))
            .unwrap_or_default(),
        ready,
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

impl<'de> Deserialize<'de> for WatchedJob {
    /// Never fails on an object the apiserver sends: a spec or status that does not match the
    /// schema is recorded, so one bad object cannot break the watch for the others.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(WatchedJob::from_value)
    }
}

impl Resource for WatchedJob {
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
mod tests;
