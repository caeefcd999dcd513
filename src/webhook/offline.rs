//! `kube-beat validate -f FILE|DIR`: the webhook's verdict on files, for CI pipelines. Every
//! ScheduledJob and TaskFunction document is judged; other kinds are skipped. A job whose
//! TaskFunction is among the files is judged against it; one whose TaskFunction is not gets a
//! note and every check that does not need it (or, with `--cluster`, the cluster's).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::verdict::{self, Kind};
use crate::{api::TaskFunction, reconcile::Guarded};

/// Largest file read.
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;
/// Most files read from the directories given.
pub const MAX_FILES: usize = 100_000;

/// One document of one file.
struct Document {
    file: String,
    index: usize,
    value: Value,
}

/// What `kube-beat validate` found.
#[derive(Debug, Default)]
pub struct Report {
    /// `FILE[#DOC_INDEX] KIND NAMESPACE/NAME: message`, or `FILE: message` for a file that
    /// could not be read.
    pub errors: Vec<String>,
    /// Not errors: what could not be checked.
    pub notes: Vec<String>,
    /// ScheduledJobs and TaskFunctions judged.
    pub checked: usize,
}

/// Where the TaskFunctions not in the files come from.
pub enum Lookup {
    /// Nowhere: the jobs get a note.
    None,
    /// The kubeconfig's cluster.
    Cluster(kube::Client),
}

/// Judge every ScheduledJob and TaskFunction in `paths` (files, or directories searched for
/// `.yaml`, `.yml` and `.json` files). `namespace` stands in for documents that name none.
pub async fn validate(paths: &[PathBuf], namespace: &str, lookup: &Lookup) -> Report {
    let now = Utc::now();
    let mut report = Report::default();
    let mut files = Vec::new();
    for p in paths {
        collect(p, true, &mut files, &mut report);
    }
    let mut docs = Vec::new();
    for f in &files {
        read_documents(f, &mut docs, &mut report);
    }
    let functions: std::collections::HashMap<String, Guarded<TaskFunction>> = docs
        .iter()
        .filter(|d| kind(&d.value) == Some(Kind::TaskFunction))
        .filter_map(|d| {
            let name = d.value.pointer("/metadata/name")?.as_str()?.to_string();
            Some((name, verdict::read_task_function(&d.value)))
        })
        .collect();
    for d in &docs {
        let Some(k) = kind(&d.value) else { continue };
        report.checked += 1;
        let result = match k {
            Kind::TaskFunction => verdict::task_function(&verdict::read_task_function(&d.value)),
            Kind::ScheduledJob => {
                judge_job(d, namespace, &functions, lookup, now, &mut report).await
            }
        };
        if let Err(invalid) = result {
            report
                .errors
                .push(format!("{}: {}", heading(d, k, namespace), invalid.message));
        }
    }
    report
}

async fn judge_job(
    d: &Document,
    namespace: &str,
    functions: &std::collections::HashMap<String, Guarded<TaskFunction>>,
    lookup: &Lookup,
    now: DateTime<Utc>,
    report: &mut Report,
) -> Result<(), crate::reconcile::validate::Invalid> {
    let Some(name) = verdict::job_reference(&d.value) else {
        // No TaskFunction named: the spec does not match the schema, which the verdict says.
        return verdict::scheduled_job(&d.value, namespace, None, now);
    };
    if let Some(tf) = functions.get(&name) {
        return verdict::scheduled_job(&d.value, namespace, Some(tf), now);
    }
    match lookup {
        Lookup::Cluster(client) => {
            let api: kube::Api<Guarded<TaskFunction>> = kube::Api::all(client.clone());
            match api.get_opt(&name).await {
                Ok(tf) => return verdict::scheduled_job(&d.value, namespace, tf.as_ref(), now),
                Err(e) => report.notes.push(format!(
                    "{}: TaskFunction {name:?} could not be read from the cluster ({e}): checked without it",
                    heading(d, Kind::ScheduledJob, namespace)
                )),
            }
        }
        Lookup::None => report.notes.push(format!(
            "{}: TaskFunction {name:?} is not in the given files: checked without it (--cluster reads it from the cluster)",
            heading(d, Kind::ScheduledJob, namespace)
        )),
    }
    let stand_in = stand_in(&d.value, &name);
    verdict::scheduled_job(&d.value, namespace, Some(&stand_in), now)
}

/// A TaskFunction that allows the job everything a TaskFunction can restrict (its namespace,
/// its queue) and adds no arguments: every check that does not depend on the real one runs.
fn stand_in(job: &Value, name: &str) -> Guarded<TaskFunction> {
    let queue = job
        .pointer("/spec/queue")
        .and_then(Value::as_str)
        .unwrap_or("celery");
    verdict::read_task_function(&json!({
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
/// named on the command line is read whatever its name).
fn collect(p: &Path, named: bool, files: &mut Vec<PathBuf>, report: &mut Report) {
    if files.len() >= MAX_FILES {
        return;
    }
    let meta = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) => {
            report.errors.push(format!("{}: {e}", p.display()));
            return;
        }
    };
    if meta.is_dir() {
        let entries = match std::fs::read_dir(p) {
            Ok(entries) => entries,
            Err(e) => {
                report.errors.push(format!("{}: {e}", p.display()));
                return;
            }
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for child in paths {
            collect(&child, false, files, report);
        }
    } else if named || is_manifest(p) {
        files.push(p.to_path_buf());
        if files.len() == MAX_FILES {
            report
                .errors
                .push(format!("more than {MAX_FILES} files: the rest is not read"));
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
    let mut push = |index: usize, value: Value| {
        if !value.is_null() {
            docs.push(Document {
                file: file.clone(),
                index,
                value,
            });
        }
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
