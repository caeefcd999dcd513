//! `kube-beat validate -f FILE|DIR`: the webhook's verdict on files, for CI pipelines. Every
//! ScheduledJob and TaskFunction document is judged; other kinds are skipped. A job whose
//! TaskFunction is among the files is judged against it; one whose TaskFunction is not gets a
//! note and every check that does not need it (or, with `--cluster`, the cluster's).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::verdict::{self, Kind};
use crate::{api::TaskFunction, reconcile::Guarded};

/// Largest file read.
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;
/// Most files read from the directories given.
pub const MAX_FILES: usize = 100_000;
/// How long one `--cluster` TaskFunction lookup may take.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One document of one file (or one item of a `kind: List` document).
pub struct Document {
    pub file: String,
    /// `DOC` or, for an item of a List, `DOC.ITEM`.
    pub index: String,
    pub value: Value,
}

/// What `kube-beat validate` found.
#[derive(Debug, Default)]
pub struct Report {
    /// `FILE[#DOC_INDEX] KIND NAMESPACE/NAME: message`, or `FILE: message` for a file that
    /// could not be read. One line each.
    pub errors: Vec<String>,
    /// Not errors: what could not be checked, or is worth knowing. One line each.
    pub notes: Vec<String>,
    /// ScheduledJobs and TaskFunctions judged.
    pub checked: usize,
    /// Files read.
    pub files: usize,
}

/// Where the TaskFunctions not in the files come from.
pub enum Lookup {
    /// Nowhere: the jobs get a note.
    None,
    /// The kubeconfig's cluster.
    Cluster(kube::Client),
}

/// The cluster's answers by name: each name looked up once per run.
type Looked = HashMap<String, Result<Option<Guarded<TaskFunction>>, String>>;

/// Judge every ScheduledJob and TaskFunction in `paths` (files, or directories searched for
/// `.yaml`, `.yml` and `.json` files). `namespace` stands in for documents that name none.
pub async fn validate(paths: &[PathBuf], namespace: &str, lookup: &Lookup) -> Report {
    let mut report = Report::default();
    let docs = read_all(paths, &mut report);
    judge(&docs, namespace, lookup, Utc::now(), &mut report).await;
    report
}

/// Every document of the files under `paths` (unreadable files and documents are errors in
/// `report`). Shared with `kube-beat plan`, which reads the same files the same way.
pub fn read_all(paths: &[PathBuf], report: &mut Report) -> Vec<Document> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files, report);
    }
    report.files += files.len();
    let mut docs = Vec::new();
    for f in &files {
        read_documents(f, &mut docs, report);
    }
    docs
}

/// Judge every ScheduledJob and TaskFunction among `docs` as of `now`: each error is a line of
/// `report.errors`, and the verdict of document `i` is `verdicts[i]` (`None`: valid, or not a
/// kind kube-beat judges), so `kube-beat plan` shows the very words `validate` prints.
pub async fn judge(
    docs: &[Document],
    namespace: &str,
    lookup: &Lookup,
    now: DateTime<Utc>,
    report: &mut Report,
) -> Vec<Option<String>> {
    let mut verdicts = Vec::with_capacity(docs.len());
    let functions: HashMap<String, Guarded<TaskFunction>> = docs
        .iter()
        .filter(|d| kind(&d.value) == Some(Kind::TaskFunction))
        .filter_map(|d| {
            let name = d.value.pointer("/metadata/name")?.as_str()?.to_string();
            Some((name, verdict::read_task_function(d.value.clone())))
        })
        .collect();
    let mut looked = Looked::new();
    // Jobs whose verdict inputs are the same (spec, namespace, creation time, trigger: the
    // name and uid only reach the row, never the verdict) are judged once: generated
    // manifests repeat one spec thousands of times, and each verdict walks the schedule.
    let mut seen: HashMap<String, (Option<String>, Vec<String>)> = HashMap::new();
    for d in docs {
        let Some(k) = kind(&d.value) else {
            verdicts.push(None);
            continue;
        };
        report.checked += 1;
        let result = match k {
            Kind::TaskFunction => {
                verdict::task_function(&verdict::read_task_function(d.value.clone()))
            }
            Kind::ScheduledJob => {
                let head = heading(d, k, namespace);
                let key = verdict_key(&d.value, namespace);
                if let Some((verdict, notes)) = seen.get(&key) {
                    for n in notes {
                        report.notes.push(format!("{head}: {n}"));
                    }
                    if let Some(message) = verdict {
                        report.errors.push(format!("{head}: {message}"));
                    }
                    verdicts.push(verdict.clone());
                    continue;
                }
                let before = report.notes.len();
                let result =
                    judge_job(d, namespace, &functions, lookup, &mut looked, now, report).await;
                let prefix = format!("{head}: ");
                let notes = report.notes[before..]
                    .iter()
                    .map(|n| n.strip_prefix(&prefix).unwrap_or(n).to_string())
                    .collect();
                let verdict = result.as_ref().err().map(|e| one_line(&e.message));
                seen.insert(key, (verdict, notes));
                result
            }
        };
        let verdict = result.err().map(|invalid| one_line(&invalid.message));
        if let Some(message) = &verdict {
            report
                .errors
                .push(format!("{}: {message}", heading(d, k, namespace)));
        }
        verdicts.push(verdict);
    }
    // One line each: a message with a newline (a YAML error, a nested cause) would read as two
    // entries in CI logs.
    for line in report.errors.iter_mut().chain(report.notes.iter_mut()) {
        *line = one_line(line);
    }
    verdicts
}

/// What a job's verdict depends on, as one string.
fn verdict_key(job: &Value, namespace: &str) -> String {
    let ns = job
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or(namespace);
    json!([
        job.get("spec"),
        ns,
        job.pointer("/metadata/creationTimestamp"),
        job.pointer("/metadata/annotations"),
        job.get("apiVersion"),
    ])
    .to_string()
}

/// `text` with every run of whitespace (newlines included) made one space.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A job's verdict, a one-shot job whose `at` has passed noted rather than refused: a committed
/// one-shot job must not turn CI red once its time has come (the cluster's copy was judged when
/// it was applied).
async fn judge_job(
    d: &Document,
    namespace: &str,
    functions: &HashMap<String, Guarded<TaskFunction>>,
    lookup: &Lookup,
    looked: &mut Looked,
    now: DateTime<Utc>,
    report: &mut Report,
) -> Result<(), crate::reconcile::validate::Invalid> {
    let result = judge_job_at(d, namespace, functions, lookup, looked, now, report).await;
    // A one-shot `schedule`, or `schedules` with a one-shot entry.
    let once = d.value.pointer("/spec/schedule/at").is_some()
        || d.value
            .pointer("/spec/schedules")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|list| list.iter().any(|e| e.get("at").is_some()));
    match result {
        Err(e) if once && e.reason == crate::reconcile::validate::Reason::InvalidSchedule => {
            // Judged as if applied before its instant (the epoch): if that passes, the only
            // problem was the time. The lookup is memoised: no second request.
            let before = DateTime::<Utc>::UNIX_EPOCH;
            let mut quiet = Report::default();
            let earlier =
                judge_job_at(d, namespace, functions, lookup, looked, before, &mut quiet).await;
            // The schedule passes then: its only problem is the time (noted); whatever else is
            // wrong with the job is still an error.
            if earlier
                .as_ref()
                .is_err_and(|other| other.reason == e.reason)
            {
                return Err(e);
            }
            report.notes.push(format!(
                "{}: {} (a one-shot job whose time has passed: not an error)",
                heading(d, Kind::ScheduledJob, namespace),
                e.message
            ));
            earlier
        }
        other => other,
    }
}

async fn judge_job_at(
    d: &Document,
    namespace: &str,
    functions: &HashMap<String, Guarded<TaskFunction>>,
    lookup: &Lookup,
    looked: &mut Looked,
    now: DateTime<Utc>,
    report: &mut Report,
) -> Result<(), crate::reconcile::validate::Invalid> {
    let job = d.value.clone();
    let Some(name) = verdict::job_reference(&d.value) else {
        // No TaskFunction named: the spec does not match the schema, which the verdict says.
        return verdict::scheduled_job(job, namespace, None, now);
    };
    if let Some(tf) = functions.get(&name) {
        return verdict::scheduled_job(job, namespace, Some(tf), now);
    }
    match lookup {
        // Not a name an object can have: it does not exist (and is never put in a URL).
        Lookup::Cluster(_) if !verdict::is_object_name(&name) => {
            return verdict::scheduled_job(job, namespace, None, now);
        }
        Lookup::Cluster(client) => {
            if !looked.contains_key(&name) {
                let found = cluster_lookup(client, &name).await;
                looked.insert(name.clone(), found);
            }
            match looked.get(&name) {
                Some(Ok(tf)) => return verdict::scheduled_job(job, namespace, tf.as_ref(), now),
                Some(Err(e)) => {
                    return Err(crate::reconcile::validate::Invalid {
                        reason: crate::reconcile::validate::Reason::UnknownTaskFunction,
                        message: format!(
                            "TaskFunction {name:?} could not be read from the cluster: {e}"
                        ),
                    });
                }
                None => {}
            }
        }
        Lookup::None => report.notes.push(format!(
            "{}: TaskFunction {name:?} is not in the given files: checked without it (--cluster reads it from the cluster)",
            heading(d, Kind::ScheduledJob, namespace)
        )),
    }
    let stand_in = stand_in(&d.value, &name);
    verdict::scheduled_job(job, namespace, Some(&stand_in), now)
}

/// One TaskFunction from the cluster, bounded in time.
async fn cluster_lookup(
    client: &kube::Client,
    name: &str,
) -> Result<Option<Guarded<TaskFunction>>, String> {
    let api: kube::Api<Guarded<TaskFunction>> = kube::Api::all(client.clone());
    match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(name)).await {
        Ok(Ok(tf)) => Ok(tf),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", LOOKUP_TIMEOUT.as_secs())),
    }
}

/// A TaskFunction that allows the job everything a TaskFunction can restrict (its namespace,
/// its queue) and adds no arguments: every check that does not depend on the real one runs.
fn stand_in(job: &Value, name: &str) -> Guarded<TaskFunction> {
    let queue = job
        .pointer("/spec/queue")
        .and_then(Value::as_str)
        .unwrap_or("celery");
    verdict::read_task_function(json!({
        "apiVersion": "kubebeat.io/v1alpha1", "kind": "TaskFunction",
        "metadata": {"name": name},
        "spec": {"task": "stand-in", "queue": queue},
    }))
}

fn kind(v: &Value) -> Option<Kind> {
    Kind::of(
        v.get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        v.get("kind").and_then(Value::as_str).unwrap_or_default(),
    )
}

/// `FILE[#DOC_INDEX] KIND NAMESPACE/NAME` (TaskFunctions are cluster-wide: `KIND NAME`).
fn heading(d: &Document, k: Kind, namespace: &str) -> String {
    let name = d
        .value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<no name>");
    let who = match k {
        Kind::TaskFunction => name.to_string(),
        Kind::ScheduledJob => {
            let ns = d
                .value
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(namespace);
            format!("{ns}/{name}")
        }
    };
    format!("{}[#{}] {} {who}", d.file, d.index, k.as_str())
}

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// The files under `p`, in name order (a directory's entries filtered by extension; a file
/// named on the command line is read whatever its name). Symbolic links inside a directory are
/// not followed into directories (a link to `..` or `/` would walk forever or far away); a link
/// to a file is read.
fn collect(p: &Path, files: &mut Vec<PathBuf>, report: &mut Report) {
    let walk = walkdir::WalkDir::new(p)
        .follow_links(false)
        .follow_root_links(true)
        .sort_by_file_name();
    for entry in walk {
        if files.len() >= MAX_FILES {
            report
                .errors
                .push(format!("more than {MAX_FILES} files: the rest is not read"));
            return;
        }
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let at = e.path().unwrap_or(p).display().to_string();
                let why = e
                    .io_error()
                    .map(|io| io.to_string())
                    .unwrap_or_else(|| e.to_string());
                report.errors.push(format!("{at}: {why}"));
                continue;
            }
        };
        if entry.depth() == 0 {
            if !entry.file_type().is_dir() {
                files.push(entry.into_path());
            }
            continue;
        }
        let is_file = if entry.path_is_symlink() {
            // A link to a file counts; one to a directory is not walked.
            std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file())
        } else {
            entry.file_type().is_file()
        };
        if is_file && is_manifest(entry.path()) {
            files.push(entry.into_path());
        }
    }
}

fn read_documents(path: &Path, docs: &mut Vec<Document>, report: &mut Report) {
    let file = path.display().to_string();
    let text = match read_bounded(path) {
        Ok(t) => t,
        Err(e) => {
            report.errors.push(format!("{file}: {e}"));
            return;
        }
    };
    let mut push = |index: usize, mut value: Value| {
        if value.is_null() {
            return;
        }
        // `kind: List` (what `kubectl get -o yaml` writes): each item is a document of its own.
        if value.get("kind").and_then(Value::as_str) == Some("List")
            && let Some(Value::Array(items)) = value.get_mut("items").map(Value::take)
        {
            for (item, value) in items.into_iter().enumerate() {
                if !value.is_null() {
                    docs.push(Document {
                        file: file.clone(),
                        index: format!("{index}.{item}"),
                        value,
                    });
                }
            }
            return;
        }
        docs.push(Document {
            file: file.clone(),
            index: index.to_string(),
            value,
        });
    };
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        let stream = serde_json::Deserializer::from_str(&text).into_iter::<Value>();
        for (index, doc) in stream.enumerate() {
            match doc {
                Ok(v) => push(index, v),
                Err(e) => {
                    report
                        .errors
                        .push(format!("{file}[#{index}]: not JSON: {e}"));
                    return;
                }
            }
        }
        return;
    }
    for (index, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        match Value::deserialize(doc) {
            Ok(v) => push(index, v),
            Err(e) => {
                // The stream cannot be followed past a broken document.
                report
                    .errors
                    .push(format!("{file}[#{index}]: not YAML: {e}"));
                return;
            }
        }
    }
}

fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    Ok(text)
}
