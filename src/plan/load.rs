//! The I/O edge of `kube-beat plan`: the files (read as `kube-beat validate` reads them, and
//! judged by its very verdict) and, with `--against-cluster`, the cluster's ScheduledJobs,
//! TaskFunctions and ScheduleCalendars. Everything after this is [`super::build`] (pure).

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    sync::Arc,
    time::Duration as StdDuration,
};

use chrono::Utc;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde_json::Value;

use super::{
    Calendars, Counts, Exclude, InCluster, Input, JobInput, Limits, MAX_JOBS, PlanError,
    parse_window,
};
use crate::{
    api::{ScheduledJob, schedule_calendar::ScheduleCalendarSpec},
    calendar::Calendar,
    webhook::{offline, verdict::Kind},
};

/// How long one request to the cluster may take.
const REQUEST_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// Objects asked for per list request.
const PAGE: u32 = 500;
/// Most objects read from the cluster per kind and namespace (a namespace holding more is
/// planned against the first ones, with a note).
const MAX_CLUSTER_OBJECTS: usize = 200_000;

/// What `kube-beat plan` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    pub files: Vec<PathBuf>,
    /// Namespace of documents that name none.
    pub namespace: String,
    pub against_cluster: bool,
    /// `--now` (RFC 3339); the clock when absent.
    pub now: Option<String>,
    pub window: String,
    pub limits: Limits,
}

/// Read everything the plan is built from.
pub async fn load(opts: &Options) -> Result<Input, PlanError> {
    let window = parse_window(&opts.window)?;
    let now = match &opts.now {
        Some(text) => crate::schedule::parse_instant("--now", text).map_err(|e| PlanError(e.0))?,
        None => Utc::now(),
    };
    let client = if opts.against_cluster {
        Some(kube::Client::try_default().await.map_err(|e| {
            PlanError(format!(
                "connecting to the cluster (--against-cluster): {e}"
            ))
        })?)
    } else {
        None
    };
    let lookup = match &client {
        Some(c) => offline::Lookup::Cluster(c.clone()),
        None => offline::Lookup::None,
    };
    let mut read = offline::Report::default();
    let docs = offline::read_all(&opts.files, &mut read);
    // Judged apart from the reading: the files' own errors are the plan's errors, the
    // verdicts' lines go with their jobs.
    let mut judged = offline::Report::default();
    let verdicts = offline::judge(&docs, &opts.namespace, &lookup, now, &mut judged).await;

    let mut counts = Counts {
        files: read.files,
        ..Counts::default()
    };
    let mut errors = read.errors;
    let mut notes = read.notes;
    notes.append(&mut judged.notes);
    let mut jobs = Vec::new();
    let mut calendars = Calendars::new();
    for (doc, verdict) in docs.iter().zip(verdicts) {
        let source = format!("{}[#{}]", doc.file, doc.index);
        match kind_of(&doc.value) {
            Some(Kind::ScheduledJob) => {
                counts.scheduled_jobs += 1;
                if jobs.len() >= MAX_JOBS {
                    continue;
                }
                let prefix = format!("{source} ");
                let (mine, rest): (Vec<String>, Vec<String>) =
                    notes.into_iter().partition(|n| n.starts_with(&prefix));
                notes = rest;
                let text = |p: &str| doc.value.pointer(p).and_then(Value::as_str);
                jobs.push(JobInput {
                    namespace: text("/metadata/namespace")
                        .unwrap_or(&opts.namespace)
                        .to_string(),
                    name: text("/metadata/name").unwrap_or("<no name>").to_string(),
                    source,
                    value: doc.value.clone(),
                    error: verdict,
                    notes: mine
                        .iter()
                        .map(|n| n.split_once(": ").map_or(n.as_str(), |x| x.1).to_string())
                        .collect(),
                    cluster: InCluster::NotAsked,
                });
            }
            Some(Kind::TaskFunction) => counts.task_functions += 1,
            None if is_calendar(&doc.value) => {
                counts.schedule_calendars += 1;
                if let Some(name) = doc.value.pointer("/metadata/name").and_then(Value::as_str) {
                    calendars.insert(name.to_string(), calendar_model(name, &doc.value));
                }
            }
            None => counts.other += 1,
        }
    }
    if counts.scheduled_jobs > MAX_JOBS {
        errors.push(format!(
            "{} ScheduledJobs: more than {MAX_JOBS}, only the first {MAX_JOBS} are planned",
            counts.scheduled_jobs
        ));
    }
    let mut cluster_calendars = Calendars::new();
    if let Some(client) = &client {
        cluster_calendars = read_cluster_calendars(client, &mut notes).await;
        for (name, c) in &cluster_calendars {
            calendars.entry(name.clone()).or_insert_with(|| c.clone());
        }
        read_cluster_jobs(client, &mut jobs, &mut notes).await;
        for job in &mut jobs {
            missing_calendars(job, &calendars);
        }
    }
    Ok(Input {
        now,
        now_given: opts.now.is_some(),
        window,
        window_text: opts.window.clone(),
        limits: opts.limits,
        counts,
        errors,
        notes,
        jobs,
        calendars,
        cluster_calendars,
        against_cluster: opts.against_cluster,
    })
}

fn kind_of(v: &Value) -> Option<Kind> {
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
    Kind::of(text("apiVersion"), text("kind"))
}

fn is_calendar(v: &Value) -> bool {
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
    text("apiVersion").split('/').next() == Some("kubebeat.io")
        && text("kind") == "ScheduleCalendar"
}

/// A calendar object as the model the dispatcher uses (the same verdicts and reasons).
fn calendar_model(name: &str, obj: &Value) -> Result<Arc<dyn Exclude>, String> {
    let spec: ScheduleCalendarSpec =
        serde_json::from_value(obj.get("spec").cloned().unwrap_or(Value::Null)).map_err(|e| {
            offline::one_line(&format!("does not match the ScheduleCalendar schema: {e}"))
        })?;
    let calendar = Calendar::from_spec(name, &spec).map_err(|e| offline::one_line(&e.0))?;
    Ok(Arc::new(calendar))
}

/// With the cluster read, a calendar a job names that exists neither in the files nor in the
/// cluster makes the job not Ready, as the reconcile would.
fn missing_calendars(job: &mut JobInput, calendars: &Calendars) {
    if job.error.is_some() {
        return;
    }
    let names = job
        .value
        .pointer("/spec/calendars")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(missing) = names.iter().find(|n| !calendars.contains_key(**n)) {
        job.error = Some(format!("ScheduleCalendar {missing:?} does not exist"));
    }
}

fn calendar_resource() -> ApiResource {
    ApiResource {
        group: "kubebeat.io".into(),
        version: "v1alpha1".into(),
        api_version: "kubebeat.io/v1alpha1".into(),
        kind: "ScheduleCalendar".into(),
        plural: "schedulecalendars".into(),
    }
}

/// Every object of `api`, page by page, each request bounded in time.
async fn list_all(api: &Api<DynamicObject>) -> Result<(Vec<Value>, bool), String> {
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = match tokio::time::timeout(REQUEST_TIMEOUT, api.list(&params)).await {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())),
        };
        for item in page.items {
            out.push(serde_json::to_value(item).map_err(|e| e.to_string())?);
        }
        if out.len() >= MAX_CLUSTER_OBJECTS {
            return Ok((out, true));
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok((out, false)),
        }
    }
}

async fn read_cluster_calendars(client: &kube::Client, notes: &mut Vec<String>) -> Calendars {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &calendar_resource());
    let mut out = Calendars::new();
    match list_all(&api).await {
        Ok((items, capped)) => {
            if capped {
                notes.push(format!(
                    "the cluster has more than {MAX_CLUSTER_OBJECTS} ScheduleCalendars: only the first are read"
                ));
            }
            for obj in items {
                if let Some(name) = obj.pointer("/metadata/name").and_then(Value::as_str) {
                    out.insert(name.to_string(), calendar_model(name, &obj));
                }
            }
        }
        Err(e) => notes.push(format!(
            "the cluster's ScheduleCalendars could not be read: {}",
            offline::one_line(&e)
        )),
    }
    out
}

/// Each job's version in the cluster: one list per namespace the files name.
async fn read_cluster_jobs(client: &kube::Client, jobs: &mut [JobInput], notes: &mut Vec<String>) {
    let resource = ApiResource::erase::<ScheduledJob>(&());
    let namespaces: BTreeSet<String> = jobs.iter().map(|j| j.namespace.clone()).collect();
    let mut found: HashMap<String, Result<HashMap<String, Value>, String>> = HashMap::new();
    for ns in namespaces {
        // Not a name a namespace can have: nothing there (and never put in a URL).
        if !crate::webhook::verdict::is_object_name(&ns) {
            found.insert(ns, Ok(HashMap::new()));
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
        let result = list_all(&api).await.map(|(items, capped)| {
            if capped {
                notes.push(format!(
                    "namespace {ns} has more than {MAX_CLUSTER_OBJECTS} ScheduledJobs: compared with the first only"
                ));
            }
            items
                .into_iter()
                .filter_map(|obj| {
                    let name = obj.pointer("/metadata/name")?.as_str()?.to_string();
                    Some((name, obj))
                })
                .collect()
        });
        found.insert(ns, result);
    }
    for job in jobs {
        job.cluster = match found.get(&job.namespace) {
            Some(Ok(objs)) => match objs.get(&job.name) {
                Some(obj) => InCluster::Present(obj.clone()),
                None => InCluster::Absent,
            },
            Some(Err(e)) => InCluster::Unreadable(offline::one_line(e)),
            None => InCluster::Absent,
        };
    }
}
