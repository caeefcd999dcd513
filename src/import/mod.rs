//! `kube-beat import`: turn another scheduler's job definitions into TaskFunction and
//! ScheduledJob YAML, with a report of every entry that was not converted (and why) and of the
//! semantic differences between the source and kube-beat that apply to the input.
//!
//! Sources (`--from`):
//! - `plan` (default): the migration plan's own job list ([`plan`]);
//! - `celery-beat`: an app's `beat_schedule`, read by a small Python helper run with the user's
//!   own Python and Celery ([`celery_beat`]);
//! - `django-celery-beat`: its tables in Postgres ([`django_beat`]);
//! - `redbeat`: RedBeat's `redbeat:*` keys in Redis ([`redbeat`]);
//! - `apscheduler`: the SQLAlchemy job store table `apscheduler_jobs` ([`apscheduler`]).
//!
//! Every reader produces [`Candidate`]s (or per-entry [`ImportError`]s); [`Builder`] turns them into
//! objects, validating each job exactly as the operator will, so what `import` writes applies
//! cleanly. Readers are the only code that knows a source's shapes; the rest is shared.

pub mod apscheduler;
pub mod celery_beat;
pub mod celery_schedule;
pub mod cron_fields;
pub mod django_beat;
pub mod plan;
pub mod redbeat;

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::{
    api::{ScheduledJobSpec, TaskFunctionSpec},
    reconcile::validate::{self, JobMeta, TaskFunctionRef},
};

pub use plan::convert;

/// The annotation holding an entry's name in its source when the object name had to differ.
pub const IMPORTED_NAME_ANNOTATION: &str = "kubebeat.io/imported-name";
/// The annotation naming the scheduler an object was imported from (`celery-beat`, ...).
pub const IMPORTED_FROM_ANNOTATION: &str = "kubebeat.io/imported-from";

/// Where the definitions come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// The migration plan's job list (a JSON or YAML file).
    Plan,
    /// A Celery app's `beat_schedule` (a module name or a path to a Python file).
    CeleryBeat,
    /// django-celery-beat's tables (a Postgres URL).
    DjangoCeleryBeat,
    /// RedBeat's keys (a Redis URL).
    Redbeat,
    /// APScheduler's SQLAlchemy job store (a Postgres URL).
    Apscheduler,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plan => "plan",
            Self::CeleryBeat => "celery-beat",
            Self::DjangoCeleryBeat => "django-celery-beat",
            Self::Redbeat => "redbeat",
            Self::Apscheduler => "apscheduler",
        }
    }
}

/// What shapes the written objects, whatever the source.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `metadata.namespace` of every ScheduledJob (none: the namespace `kubectl apply` uses).
    pub namespace: Option<String>,
    /// Prepended to every generated TaskFunction name (TaskFunctions are cluster-scoped, so a
    /// team importing into a shared cluster keeps its own).
    pub task_function_prefix: String,
}

/// How a reader reaches its source.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// The Python interpreter the celery-beat helper runs with (the user's, with their Celery).
    pub python: String,
    /// `--key-prefix` for RedBeat (its `redbeat_key_prefix`, default `redbeat:`).
    pub redbeat_key_prefix: String,
    /// The APScheduler job store's table (default `apscheduler_jobs`).
    pub apscheduler_table: String,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            python: "python3".into(),
            redbeat_key_prefix: "redbeat:".into(),
            apscheduler_table: "apscheduler_jobs".into(),
        }
    }
}

/// One entry of the source, already in kube-beat's terms but not yet validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The entry's name in its source (free-form: the object name is derived from it and the
    /// original kept in an annotation when they differ).
    pub name: String,
    /// The registered Celery task name.
    pub task: String,
    /// The ScheduledJob spec without `taskFunction` (filled in by [`Builder`]): `schedule`,
    /// `timeZone`, `startTime`, `args`, `kwargs`, `queue`, `priority`, `expiresSeconds`,
    /// `exchange`, `routingKey`, `headers`, `suspend`, `startingDeadlineSeconds`,
    /// `concurrencyPolicy`, `jitterSeconds`, `description`, ... exactly as in the CRD.
    pub spec: Map<String, Value>,
    /// Where source and kube-beat behave differently for this entry.
    pub differences: Vec<Difference>,
}

/// A semantic difference between the source scheduler and kube-beat. `id` groups the same
/// difference across entries in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub id: &'static str,
    pub text: String,
}

impl Difference {
    pub fn new(id: &'static str, text: impl Into<String>) -> Self {
        Self {
            id,
            text: text.into(),
        }
    }
}

/// One entry that cannot be imported (or, with `index` and `name` both `None`, a problem with
/// the source itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportError {
    /// Position in the source (0-based), when it has an order.
    pub index: Option<usize>,
    /// The entry's name in its source.
    pub name: Option<String>,
    pub reason: String,
}

impl ImportError {
    /// A problem with the source as a whole (nothing can be read).
    pub fn source(reason: impl Into<String>) -> Self {
        Self {
            index: None,
            name: None,
            reason: reason.into(),
        }
    }

    /// One named entry that is not converted.
    pub fn entry(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            index: None,
            name: Some(name.into()),
            reason: reason.into(),
        }
    }

    /// Whether nothing at all could be read.
    pub fn is_source_error(&self) -> bool {
        self.index.is_none() && self.name.is_none()
    }
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.index, &self.name) {
            (Some(i), Some(n)) => write!(f, "job #{i} ({n}): {}", self.reason),
            (Some(i), None) => write!(f, "job #{i}: {}", self.reason),
            (None, Some(n)) => write!(f, "{n}: {}", self.reason),
            (None, None) => write!(f, "{}", self.reason),
        }
    }
}

/// A difference as reported: its text once, with every entry it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportedDifference {
    pub id: &'static str,
    pub text: String,
    /// Source names of the entries it applies to.
    pub entries: Vec<String>,
}

/// What an import produced.
#[derive(Debug, Default)]
pub struct Imported {
    /// TaskFunctions (cluster-scoped), then ScheduledJobs, as Kubernetes objects.
    pub objects: Vec<Value>,
    pub errors: Vec<ImportError>,
    pub differences: Vec<ReportedDifference>,
}

impl Imported {
    /// The objects as one YAML stream.
    pub fn yaml(&self) -> Result<String, serde_yaml::Error> {
        let mut out = String::new();
        for o in &self.objects {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(o)?);
        }
        Ok(out)
    }

    /// The report (`--report FILE`): what was converted, what was not and why, and the
    /// differences that apply.
    pub fn report(&self, source: SourceKind) -> Value {
        let kind_count = |kind: &str| self.objects.iter().filter(|o| o["kind"] == kind).count();
        json!({
            "source": source,
            "converted": {
                "scheduledJobs": kind_count("ScheduledJob"),
                "taskFunctions": kind_count("TaskFunction"),
            },
            "notConverted": self.errors,
            "differences": self.differences,
        })
    }

    /// The report as text, one line per item (standard error of `kube-beat import`).
    pub fn report_text(&self) -> String {
        let mut out = String::new();
        for e in &self.errors {
            out.push_str(&format!("not converted: {e}\n"));
        }
        for d in &self.differences {
            out.push_str(&format!(
                "difference [{}] ({}): {}\n",
                d.id,
                d.entries.join(", "),
                d.text
            ));
        }
        out
    }
}

/// Builds the objects: unique valid names, one TaskFunction per Celery task, every job
/// validated as the operator will validate it.
pub struct Builder<'a> {
    opts: &'a Options,
    from: SourceKind,
    now: DateTime<Utc>,
    names: HashSet<String>,
    functions: BTreeMap<String, Value>,
    jobs: Vec<Value>,
    errors: Vec<ImportError>,
    differences: BTreeMap<&'static str, ReportedDifference>,
}

impl<'a> Builder<'a> {
    pub fn new(from: SourceKind, opts: &'a Options, now: DateTime<Utc>) -> Self {
        Self {
            opts,
            from,
            now,
            names: HashSet::new(),
            functions: BTreeMap::new(),
            jobs: Vec::new(),
            errors: Vec::new(),
            differences: BTreeMap::new(),
        }
    }

    /// Record an entry that is not converted.
    pub fn reject(&mut self, error: ImportError) {
        self.errors.push(error);
    }

    /// The TaskFunction name for a Celery task: the prefix and a valid object name.
    pub fn task_function_name(&self, task: &str) -> String {
        k8s_subdomain(&format!("{}{task}", self.opts.task_function_prefix))
    }

    /// Add a job under an explicit TaskFunction (name and spec as given), validated; on error the
    /// entry is rejected with `index`.
    pub fn add_with_function(
        &mut self,
        index: Option<usize>,
        source_name: &str,
        tf_name: &str,
        tf: Map<String, Value>,
        mut spec: Map<String, Value>,
        differences: Vec<Difference>,
    ) {
        spec.insert("taskFunction".into(), json!(tf_name));
        match self.check(tf_name, &tf, source_name, &spec) {
            Ok(()) => {
                self.functions.entry(tf_name.to_string()).or_insert(json!({
                    "apiVersion": "kubebeat.io/v1alpha1", "kind": "TaskFunction",
                    "metadata": {"name": tf_name}, "spec": tf,
                }));
                self.push_job(source_name, spec);
                for d in differences {
                    self.differences
                        .entry(d.id)
                        .or_insert_with(|| ReportedDifference {
                            id: d.id,
                            text: d.text,
                            entries: Vec::new(),
                        })
                        .entries
                        .push(source_name.to_string());
                }
            }
            Err(reason) => self.errors.push(ImportError {
                index,
                name: Some(source_name.to_string()),
                reason,
            }),
        }
    }

    /// Validate one job (and its TaskFunction) exactly as the operator will.
    fn check(
        &self,
        tf_name: &str,
        tf: &Map<String, Value>,
        name: &str,
        spec: &Map<String, Value>,
    ) -> Result<(), String> {
        let tf_spec: TaskFunctionSpec = serde_json::from_value(Value::Object(tf.clone()))
            .map_err(|e| format!("task function {tf_name}: {e}"))?;
        let valid_tf = validate::task_function(tf_name, &tf_spec).map_err(|e| e.message)?;
        let parsed: ScheduledJobSpec = serde_json::from_value(Value::Object(spec.clone()))
            .map_err(|e| format!("invalid spec: {e}"))?;
        let meta = JobMeta {
            uid: "import",
            namespace: self.opts.namespace.as_deref().unwrap_or("import"),
            name,
            generation: 1,
            created: self.now,
            trigger: None,
        };
        validate::scheduled_job(&meta, &parsed, TaskFunctionRef::Valid(&valid_tf), self.now)
            .map_err(|e| format!("{}: {}", e.reason.as_str(), e.message))?;
        Ok(())
    }

    fn push_job(&mut self, source_name: &str, spec: Map<String, Value>) {
        let base = k8s_name(source_name);
        let mut name = base.clone();
        let mut n = 2;
        while !self.names.insert(name.clone()) {
            name = format!("{}-{n}", base.chars().take(58).collect::<String>());
            n += 1;
        }
        let mut meta = json!({"name": name});
        if let Some(ns) = &self.opts.namespace {
            meta["namespace"] = json!(ns);
        }
        let mut annotations = Map::new();
        if source_name != name {
            annotations.insert(IMPORTED_NAME_ANNOTATION.into(), json!(source_name));
        }
        if self.from != SourceKind::Plan {
            annotations.insert(IMPORTED_FROM_ANNOTATION.into(), json!(self.from.as_str()));
        }
        if !annotations.is_empty() {
            meta["annotations"] = Value::Object(annotations);
        }
        self.jobs.push(json!({
            "apiVersion": "kubebeat.io/v1alpha1", "kind": "ScheduledJob",
            "metadata": meta, "spec": spec,
        }));
    }

    /// TaskFunctions first (they must exist before the jobs that name them), then jobs.
    pub fn finish(self) -> Imported {
        let mut objects: Vec<Value> = self.functions.into_values().collect();
        objects.extend(self.jobs);
        Imported {
            objects,
            errors: self.errors,
            differences: self.differences.into_values().collect(),
        }
    }
}

/// Turn a source's candidates into objects: one TaskFunction per Celery task (its queue the one
/// most of the task's jobs use, every other queue they use allowed), jobs naming a different
/// queue keep it in their own spec.
pub fn render(
    from: SourceKind,
    entries: Vec<Result<Candidate, ImportError>>,
    opts: &Options,
    now: DateTime<Utc>,
) -> Imported {
    let mut b = Builder::new(from, opts, now);
    let mut candidates = Vec::new();
    for (index, entry) in entries.into_iter().enumerate() {
        match entry {
            Ok(c) => candidates.push((index, c)),
            Err(e) => b.reject(e),
        }
    }
    // Queues per task, counted so the TaskFunction's default is the usual one.
    let mut queues: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    for (_, c) in &candidates {
        *queues
            .entry(c.task.as_str())
            .or_default()
            .entry(queue_of(&c.spec))
            .or_default() += 1;
    }
    let functions: BTreeMap<String, (String, Map<String, Value>)> = queues
        .iter()
        .map(|(task, counts)| {
            let default = counts
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(q, _)| q.clone())
                .unwrap_or_else(|| "celery".into());
            let mut tf = Map::new();
            tf.insert("task".into(), json!(task));
            tf.insert("queue".into(), json!(default));
            if counts.len() > 1 {
                tf.insert(
                    "allowedQueues".into(),
                    json!(counts.keys().collect::<Vec<_>>()),
                );
            }
            (task.to_string(), (default, tf))
        })
        .collect();
    for (index, mut c) in candidates {
        let Some((default_queue, tf)) = functions.get(&c.task) else {
            continue; // every candidate's task has an entry (built above)
        };
        if c.spec.get("queue").and_then(Value::as_str) == Some(default_queue.as_str()) {
            c.spec.remove("queue");
        }
        let tf_name = b.task_function_name(&c.task);
        b.add_with_function(
            Some(index),
            &c.name,
            &tf_name,
            tf.clone(),
            c.spec,
            c.differences,
        );
    }
    b.finish()
}

fn queue_of(spec: &Map<String, Value>) -> String {
    spec.get("queue")
        .and_then(Value::as_str)
        .unwrap_or("celery")
        .to_string()
}

/// Read `target` (a module, path or URL, per source) into candidates. Network sources are read
/// once, with bounded timeouts; nothing is written to them.
pub async fn read(
    from: SourceKind,
    target: &str,
    opts: &ReadOptions,
) -> Result<Vec<Result<Candidate, ImportError>>, ImportError> {
    match from {
        SourceKind::Plan => Err(ImportError::source(
            "the plan format is read from a file (kube-beat import FILE)",
        )),
        SourceKind::CeleryBeat => celery_beat::read(target, opts).await,
        SourceKind::DjangoCeleryBeat => django_beat::read(target, opts).await,
        SourceKind::Redbeat => redbeat::read(target, opts).await,
        SourceKind::Apscheduler => apscheduler::read(target, opts).await,
    }
}

/// A valid Kubernetes object name (RFC 1123 label: lowercase alphanumerics and '-', at most 63
/// characters, alphanumeric at both ends) derived from a free-form job name.
pub fn k8s_name(name: &str) -> String {
    dns_name(name, 63, "job")
}

/// A TaskFunction name from a Celery task name: as [`k8s_name`], but at most 253 characters (a
/// DNS subdomain), so long dotted task paths stay distinct.
pub fn k8s_subdomain(name: &str) -> String {
    dns_name(name, 253, "task")
}

/// Lowercase alphanumerics, every other run of characters one '-', at most `max` characters,
/// alphanumeric at both ends; `fallback` when nothing is left.
fn dns_name(name: &str, max: usize, fallback: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out: String = out.trim_matches('-').chars().take(max).collect();
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        fallback.into()
    } else {
        out.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn candidate(name: &str, task: &str, spec: Value) -> Candidate {
        Candidate {
            name: name.into(),
            task: task.into(),
            spec: spec.as_object().unwrap().clone(),
            differences: vec![Difference::new("anchor", "intervals start at creation")],
        }
    }

    #[test]
    fn one_task_function_per_task_with_its_usual_queue() {
        let opts = Options {
            namespace: Some("team-a".into()),
            task_function_prefix: "team-a.".into(),
        };
        let entries = vec![
            Ok(candidate(
                "sync every hour",
                "tasks.sync",
                json!({"schedule": {"interval": {"hours": 1}}, "queue": "ad"}),
            )),
            Ok(candidate(
                "sync nightly",
                "tasks.sync",
                json!({"schedule": {"cron": "0 3 * * *"}, "queue": "ad"}),
            )),
            Ok(candidate(
                "sync-urgent",
                "tasks.sync",
                json!({"schedule": {"cron": "*/5 * * * *"}, "queue": "urgent"}),
            )),
            Err(ImportError::entry(
                "sun",
                "solar schedules are not supported",
            )),
            Ok(candidate(
                "bad",
                "tasks.other",
                json!({"schedule": {"cron": "61 * * * *"}}),
            )),
        ];
        let r = render(SourceKind::CeleryBeat, entries, &opts, now());
        let tfs: Vec<&Value> = r
            .objects
            .iter()
            .filter(|o| o["kind"] == "TaskFunction")
            .collect();
        assert_eq!(tfs.len(), 1, "{:?}", r.objects);
        assert_eq!(tfs[0]["metadata"]["name"], "team-a-tasks-sync");
        assert_eq!(tfs[0]["spec"]["queue"], "ad");
        assert_eq!(tfs[0]["spec"]["allowedQueues"], json!(["ad", "urgent"]));
        let jobs: Vec<&Value> = r
            .objects
            .iter()
            .filter(|o| o["kind"] == "ScheduledJob")
            .collect();
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[0]["metadata"]["name"], "sync-every-hour");
        assert_eq!(jobs[0]["metadata"]["namespace"], "team-a");
        assert_eq!(
            jobs[0]["metadata"]["annotations"][IMPORTED_NAME_ANNOTATION],
            "sync every hour"
        );
        assert_eq!(
            jobs[0]["metadata"]["annotations"][IMPORTED_FROM_ANNOTATION],
            "celery-beat"
        );
        assert!(jobs[0]["spec"].get("queue").is_none());
        assert_eq!(jobs[2]["spec"]["queue"], "urgent");
        assert_eq!(jobs[2]["spec"]["taskFunction"], "team-a-tasks-sync");
        // The rejected entry and the invalid one are both reported, with reasons.
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        assert!(r.errors[0].to_string().contains("solar"));
        assert!(
            r.errors[1].reason.contains("InvalidSchedule"),
            "{:?}",
            r.errors[1]
        );
        assert_eq!(r.errors[1].index, Some(4));
        // The difference is reported once, for the converted entries only.
        assert_eq!(r.differences.len(), 1);
        assert_eq!(
            r.differences[0].entries,
            vec!["sync every hour", "sync nightly", "sync-urgent"]
        );
        let report = r.report(SourceKind::CeleryBeat);
        assert_eq!(report["converted"]["scheduledJobs"], 3);
        assert_eq!(report["notConverted"].as_array().unwrap().len(), 2);
        assert!(r.report_text().contains("not converted: sun: solar"));
    }

    #[test]
    fn names_are_valid() {
        assert_eq!(k8s_name("Domain User Sync!"), "domain-user-sync");
        assert_eq!(k8s_name("__x__"), "x");
        assert_eq!(k8s_name(&"a".repeat(100)).len(), 63);
        assert_eq!(k8s_name("***"), "job");
        assert_eq!(
            k8s_subdomain("Tasks.AD_sync.sync_domain_users_task"),
            "tasks-ad-sync-sync-domain-users-task"
        );
        assert_eq!(k8s_subdomain(&"a.".repeat(200)).len(), 253);
    }
}
