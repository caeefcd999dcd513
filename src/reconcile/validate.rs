//! Validation and row building: pure functions from (object, related objects, now) to either a
//! row to store or a precise reason why not. The apiserver's schema catches most mistakes, but
//! objects written with `--validate=false`, older schemas, and CEL-less clusters reach us too, so
//! everything is checked again here.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use kube::ResourceExt;

use super::Guarded;
use crate::{
    api::{ConcurrencyPolicy, ScheduledJobSpec, TaskFunction, TaskFunctionSpec},
    schedule::{JobSchedule, JobType},
};

/// Celery arguments larger than this (JSON, args + kwargs together) are refused: every message
/// carries them, and Redis/RabbitMQ are not blob stores.
pub const MAX_ARGUMENTS_BYTES: usize = 64 * 1024;
/// Longest task or queue name accepted.
pub const MAX_NAME_LEN: usize = 255;
/// Longest duration field accepted (`expiresSeconds`, `startingDeadlineSeconds`,
/// `executionTimeoutSeconds`): one year. Every time computed from one stays far inside what
/// chrono and Postgres intervals can hold, whatever date it is added to.
pub const MAX_DURATION_SECONDS: i64 = 31_536_000;
/// Longest `jitterSeconds`: one day.
pub const MAX_JITTER_SECONDS: i64 = 86_400;
/// Largest `historyLimit`.
pub const MAX_HISTORY_LIMIT: i64 = 100_000;
/// Longest `description`, in characters (the apiserver counts characters too): it is returned
/// by the API's job lists, so it must stay small.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Longest `kubebeat.io/trigger` value: it becomes the run's slot key, in a unique index.
pub const MAX_TRIGGER_CHARS: usize = 253;
/// Largest `maxRuns`.
pub const MAX_RUNS: i64 = 1_000_000;
/// Longest time zone name (the longest IANA name is ~32 characters).
pub const MAX_TIME_ZONE_LEN: usize = 64;
/// Most entries in `allowedNamespaces` and `allowedQueues`.
pub const MAX_LIST_ITEMS: usize = 256;
/// Queue names kube-beat refuses, by prefix (compared case-insensitively): its own keys and
/// queues (`kubebeat.sent.…`, `kubebeat:sent:…`, the fencing epoch), RabbitMQ's reserved `amq.`
/// names (declaring one closes the channel, failing a whole batch), kombu's own Redis keys
/// (`_kombu.binding.…`, `unacked…`) and Celery's result keys on Redis.
pub const RESERVED_QUEUE_PREFIXES: &[&str] = &[
    "kubebeat",
    "amq.",
    "_kombu",
    "unacked",
    "celery-task-meta-",
    "celery-taskset-meta-",
    "chord-unlock",
];

/// Most extra message `headers` (TaskFunction's and job's merged).
pub const MAX_HEADERS: usize = 32;
/// Largest extra `headers` (merged), as compact JSON: every message carries them.
pub const MAX_HEADERS_BYTES: usize = 8 * 1024;
/// Header names Celery's protocol 2 message itself uses (`apply_async` writes them; a user
/// header of the same name would replace Celery's value in the worker's request), refused.
pub const RESERVED_HEADERS: &[&str] = &[
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
];
/// Header names starting with this (compared case-insensitively) are kube-beat's own
/// (`kubebeat_job`, `kubebeat_slot`, `kubebeat_trigger`), refused.
pub const RESERVED_HEADER_PREFIX: &str = "kubebeat";
/// Exchanges Celery's workers use for remote control and events: a task message there would
/// reach every worker's control or event consumer, not a task queue. Refused, with names
/// starting with `kubebeat`.
pub const RESERVED_EXCHANGES: &[&str] = &["celery.pidbox", "reply.celery.pidbox", "celeryev"];

/// Why an object is not `Ready`. The reason is a stable CamelCase word (used in conditions,
/// Events and metric labels); the message says exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Invalid {
    pub reason: Reason,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    InvalidSchedule,
    InvalidSpec,
    UnknownTaskFunction,
    TaskFunctionNotReady,
    NamespaceNotAllowed,
    QueueNotAllowed,
    /// A ScheduleCalendar named in `spec.calendars` does not exist.
    CalendarNotFound,
    /// A ScheduleCalendar named in `spec.calendars` is not valid.
    CalendarInvalid,
    /// The job's effective args/kwargs do not satisfy its TaskFunction's `parameters`.
    InvalidArguments,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSchedule => "InvalidSchedule",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::UnknownTaskFunction => "UnknownTaskFunction",
            Reason::TaskFunctionNotReady => "TaskFunctionNotReady",
            Reason::NamespaceNotAllowed => "NamespaceNotAllowed",
            Reason::QueueNotAllowed => "QueueNotAllowed",
            Reason::CalendarNotFound => "CalendarNotFound",
            Reason::CalendarInvalid => "CalendarInvalid",
            Reason::InvalidArguments => "InvalidArguments",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn invalid(reason: Reason, message: impl Into<String>) -> Invalid {
    Invalid {
        reason,
        message: message.into(),
    }
}

/// A TaskFunction that passed validation: what jobs inherit from it.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidTaskFunction {
    pub name: String,
    pub task: String,
    pub queue: String,
    pub priority: Option<i16>,
    pub expires_seconds: Option<i64>,
    pub default_args: Vec<Value>,
    pub default_kwargs: Map<String, Value>,
    pub allowed_namespaces: Vec<String>,
    /// Queues its jobs may use: `allowedQueues`, or only `queue` when that is empty.
    pub allowed_queues: Vec<String>,
    pub description: Option<String>,
    /// Message option defaults (checked on their own; the job's are merged over them).
    pub message: crate::api::MessageOptions,
    /// `spec.parameters`, compiled (none set: any arguments).
    pub parameters: crate::arguments::Parameters,
    /// `spec.parameters` as written (stored, for the API to check a manual run's overrides).
    pub parameters_json: Option<Value>,
}

pub fn task_function(name: &str, spec: &TaskFunctionSpec) -> Result<ValidTaskFunction, Invalid> {
    let spec_err = |m: String| invalid(Reason::InvalidSpec, m);
    check_name("task", &spec.task).map_err(spec_err)?;
    check_queue("queue", &spec.queue).map_err(spec_err)?;
    let priority = check_priority(spec.priority).map_err(spec_err)?;
    let expires_seconds =
        check_duration("expiresSeconds", spec.expires_seconds, 1, None).map_err(spec_err)?;
    check_description(spec.description.as_deref()).map_err(spec_err)?;
    check_list_len("allowedNamespaces", spec.allowed_namespaces.len()).map_err(spec_err)?;
    check_list_len("allowedQueues", spec.allowed_queues.len()).map_err(spec_err)?;
    for q in &spec.allowed_queues {
        check_queue("allowedQueues", q).map_err(spec_err)?;
    }
    check_message_options(&spec.message).map_err(spec_err)?;
    let default_args = as_array("defaultArgs", spec.default_args.as_ref()).map_err(spec_err)?;
    let default_kwargs =
        as_object("defaultKwargs", spec.default_kwargs.as_ref()).map_err(spec_err)?;
    check_size(&default_args, &default_kwargs).map_err(spec_err)?;
    let parameters =
        crate::arguments::Parameters::compile(spec.parameters.as_ref()).map_err(spec_err)?;
    for ns in &spec.allowed_namespaces {
        if !is_dns_label(ns) {
            return Err(spec_err(format!(
                "allowedNamespaces: {ns:?} is not a valid namespace name"
            )));
        }
    }
    Ok(ValidTaskFunction {
        name: name.to_string(),
        task: spec.task.clone(),
        queue: spec.queue.clone(),
        priority,
        expires_seconds,
        default_args,
        default_kwargs,
        allowed_namespaces: spec.allowed_namespaces.clone(),
        allowed_queues: if spec.allowed_queues.is_empty() {
            vec![spec.queue.clone()]
        } else {
            spec.allowed_queues.clone()
        },
        description: spec.description.clone(),
        message: spec.message.clone(),
        parameters,
        parameters_json: spec.parameters.clone().filter(|p| !p.is_null()),
    })
}

/// What the reconciler knows about the referenced TaskFunction.
pub enum TaskFunctionRef<'a> {
    Missing,
    Invalid(&'a Invalid),
    Valid(&'a ValidTaskFunction),
}

/// A ScheduledJob that passed validation, resolved against its TaskFunction: the row to store.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub generation: i64,
    pub task_function: String,
    pub task_name: String,
    pub job_type: JobType,
    pub schedule_config: Value,
    pub schedule_summary: String,
    pub time_zone: String,
    pub start_time: Option<DateTime<Utc>>,
    pub anchor_time: DateTime<Utc>,
    pub args: Value,
    pub kwargs: Value,
    pub queue: String,
    pub priority: Option<i16>,
    pub expires_seconds: Option<i64>,
    /// Exchange, routing key, headers, time limits and ignore_result, resolved.
    pub message_options: crate::celery::SendOptions,
    pub suspended: bool,
    pub concurrency_policy: ConcurrencyPolicy,
    pub starting_deadline_seconds: Option<i64>,
    pub jitter_seconds: i64,
    pub execution_timeout_seconds: i64,
    pub history_limit: i32,
    pub description: Option<String>,
    /// `endTime`: no slot after it.
    pub end_time: Option<DateTime<Utc>>,
    /// `maxRuns`: no scheduled run after this many.
    pub max_runs: Option<i64>,
    /// The next slot after `now`, used when the schedule changed or the job (re)starts.
    pub next_slot_at: Option<DateTime<Utc>>,
    /// When that slot is dispatched: the slot plus the job's deterministic jitter.
    pub next_run_at: Option<DateTime<Utc>>,
    /// `spec.health`, resolved (with the default staleness).
    pub health: crate::health::ResolvedHealth,
    /// `spec.calendars` (names checked; their existence is the reconciler's to check).
    pub calendars: Vec<String>,
    /// The TaskFunction's parameters: a manual run's overrides are checked against them.
    pub parameters: crate::arguments::Parameters,
}

/// Identity of a ScheduledJob object.
pub struct JobMeta<'a> {
    pub uid: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub generation: i64,
    /// When the object was created: the interval anchor, identical on every replica.
    pub created: DateTime<Utc>,
    /// The `kubebeat.io/trigger` annotation's value, if any.
    pub trigger: Option<&'a str>,
}

/// Validate a ScheduledJob and build its row. The checks run in a fixed order (the schedule,
/// the job's own fields, then what depends on the TaskFunction), so a job with several mistakes
/// always reports the same one first.
pub fn scheduled_job(
    meta: &JobMeta<'_>,
    spec: &ScheduledJobSpec,
    tf: TaskFunctionRef<'_>,
    now: DateTime<Utc>,
) -> Result<JobRow, Invalid> {
    let spec_err = |m: String| invalid(Reason::InvalidSpec, m);
    let schedule = checked_schedule(meta, spec)?;
    let fields = JobFields::checked(meta, spec).map_err(spec_err)?;
    check_names(&spec.calendars).map_err(spec_err)?;
    let tf = resolved(spec, tf)?;
    let queue = allowed_queue(meta, spec, tf)?;
    let message_options =
        resolve_message_options(&tf.message, &spec.message, &queue).map_err(spec_err)?;
    // With ignoreResult the worker stores no outcome, so a run never looks finished (it stays
    // DISPATCHED, as with no result backend): Forbid would skip every later slot, Replace
    // revoke every run.
    if message_options.ignore_result && spec.concurrency_policy != ConcurrencyPolicy::Allow {
        return Err(spec_err(format!(
            "ignoreResult: the worker stores no outcome, so kube-beat cannot tell when a run ends; concurrencyPolicy {:?} needs that: use Allow",
            spec.concurrency_policy
        )));
    }

    // args replace the defaults; kwargs are merged over them.
    let args = fields.args.unwrap_or_else(|| tf.default_args.clone());
    let mut merged = tf.default_kwargs.clone();
    merged.extend(fields.kwargs);
    check_size(&args, &merged).map_err(spec_err)?;
    tf.parameters
        .check(&args, &merged)
        .map_err(|m| invalid(Reason::InvalidArguments, m))?;

    let execution_timeout_seconds = fields.execution_timeout_seconds.unwrap_or(3600);
    let health = crate::health::policy::resolve(
        spec.health.as_ref(),
        &schedule,
        fields.starting_deadline_seconds,
        execution_timeout_seconds,
        now,
    )
    .map_err(|e| spec_err(e.0))?;
    let schedule_config =
        crate::schedule::stored_config(spec).map_err(|e| spec_err(e.to_string()))?;
    let next_slot_at = if spec.suspend {
        None
    } else {
        schedule.next_after(now)
    };
    let jitter_secs = fields.jitter_seconds.unwrap_or(0);
    // Checked: a slot near the end of chrono's range plus jitter has no next run.
    let next_run_at = next_slot_at.and_then(|slot| {
        slot.checked_add_signed(crate::schedule::jitter(meta.uid, slot, jitter_secs))
    });
    Ok(JobRow {
        uid: meta.uid.to_string(),
        namespace: meta.namespace.to_string(),
        name: meta.name.to_string(),
        generation: meta.generation,
        task_function: spec.task_function.clone(),
        task_name: tf.task.clone(),
        job_type: schedule.job_type(),
        schedule_config,
        schedule_summary: schedule.summary().to_string(),
        time_zone: schedule.time_zone().name().to_string(),
        start_time: schedule.start(),
        anchor_time: schedule.anchor(),
        args: Value::Array(args),
        kwargs: Value::Object(merged),
        queue,
        priority: fields.priority.or(tf.priority),
        expires_seconds: fields.expires_seconds.or(tf.expires_seconds),
        message_options,
        suspended: spec.suspend,
        concurrency_policy: spec.concurrency_policy,
        starting_deadline_seconds: fields.starting_deadline_seconds,
        jitter_seconds: jitter_secs,
        execution_timeout_seconds,
        history_limit: fields.history_limit,
        description: spec.description.clone(),
        end_time: schedule.end(),
        max_runs: fields.max_runs,
        next_slot_at,
        next_run_at,
        health,
        calendars: spec.calendars.clone(),
        parameters: tf.parameters.clone(),
    })
}

/// [`scheduled_job`] against the TaskFunction object as read (from the reconciler's cache, the
/// apiserver or a file): the one place that turns that object into a [`TaskFunctionRef`], so
/// the reconcile, the admission webhook and `kube-beat validate` give the same verdict.
pub fn scheduled_job_with(
    meta: &JobMeta<'_>,
    spec: &ScheduledJobSpec,
    tf_obj: Option<&Guarded<TaskFunction>>,
    now: DateTime<Utc>,
) -> Result<JobRow, Invalid> {
    let tf_result = tf_obj.and_then(|g| match &g.0 {
        // A TaskFunction on its way out counts as gone.
        Ok(tf) if tf.metadata.deletion_timestamp.is_some() => None,
        Ok(tf) => Some(task_function(&tf.name_any(), &tf.spec)),
        Err(e) => Some(Err(invalid(
            Reason::InvalidSpec,
            format!("does not match the TaskFunction schema: {}", e.error),
        ))),
    });
    let tf_ref = match &tf_result {
        None => TaskFunctionRef::Missing,
        Some(Err(e)) => TaskFunctionRef::Invalid(e),
        Some(Ok(tf)) => TaskFunctionRef::Valid(tf),
    };
    scheduled_job(meta, spec, tf_ref, now)
}

/// The schedule first: it is the most common mistake and needs no other object.
fn checked_schedule(meta: &JobMeta<'_>, spec: &ScheduledJobSpec) -> Result<JobSchedule, Invalid> {
    if let Some(tz) = &spec.time_zone
        && tz.len() > MAX_TIME_ZONE_LEN
    {
        return Err(invalid(
            Reason::InvalidSchedule,
            format!("timeZone is longer than {MAX_TIME_ZONE_LEN} bytes"),
        ));
    }
    let long_zone = spec.schedules.iter().flatten().position(|e| {
        e.time_zone
            .as_ref()
            .is_some_and(|tz| tz.len() > MAX_TIME_ZONE_LEN)
    });
    if let Some(i) = long_zone {
        return Err(invalid(
            Reason::InvalidSchedule,
            format!("schedules[{i}].timeZone is longer than {MAX_TIME_ZONE_LEN} bytes"),
        ));
    }
    let schedule = JobSchedule::from_job_spec(spec, meta.created)
        .map_err(|e| invalid(Reason::InvalidSchedule, e.0))?;
    // A one-shot job created after its instant would silently never run.
    for (i, at) in schedule.one_shots() {
        if at <= meta.created {
            let field = if spec.schedules.is_some() {
                format!("schedules[{i}].at")
            } else {
                "at".to_string()
            };
            return Err(invalid(
                Reason::InvalidSchedule,
                format!(
                    "{field} {} is in the past (the job was created at {})",
                    crate::schedule::rfc3339(at),
                    crate::schedule::rfc3339(meta.created)
                ),
            ));
        }
    }
    Ok(schedule)
}

/// A job's own fields, checked (none depends on the TaskFunction).
struct JobFields {
    args: Option<Vec<Value>>,
    kwargs: Map<String, Value>,
    priority: Option<i16>,
    expires_seconds: Option<i64>,
    starting_deadline_seconds: Option<i64>,
    jitter_seconds: Option<i64>,
    execution_timeout_seconds: Option<i64>,
    history_limit: i32,
    max_runs: Option<i64>,
}

impl JobFields {
    fn checked(meta: &JobMeta<'_>, spec: &ScheduledJobSpec) -> Result<JobFields, String> {
        let args = spec
            .args
            .as_ref()
            .map(|v| as_array("args", Some(v)))
            .transpose()?;
        let kwargs = as_object("kwargs", spec.kwargs.as_ref())?;
        if let Some(q) = &spec.queue {
            check_queue("queue", q)?;
        }
        let priority = check_priority(spec.priority)?;
        let expires_seconds = check_duration("expiresSeconds", spec.expires_seconds, 1, None)?;
        let starting_deadline_seconds = check_duration(
            "startingDeadlineSeconds",
            spec.starting_deadline_seconds,
            0,
            None,
        )?;
        let jitter_seconds = check_duration(
            "jitterSeconds",
            spec.jitter_seconds,
            0,
            Some(MAX_JITTER_SECONDS),
        )?;
        let execution_timeout_seconds = check_duration(
            "executionTimeoutSeconds",
            spec.execution_timeout_seconds,
            1,
            None,
        )?;
        let history_limit = check_non_negative("historyLimit", spec.history_limit)?;
        let history_limit = i32::try_from(history_limit.unwrap_or(100))
            .ok()
            .filter(|h| i64::from(*h) <= MAX_HISTORY_LIMIT)
            .ok_or_else(|| format!("historyLimit must be at most {MAX_HISTORY_LIMIT}"))?;
        let max_runs = match spec.max_runs {
            Some(n) if !(1..=MAX_RUNS).contains(&n) => {
                return Err(format!("maxRuns must be between 1 and {MAX_RUNS}, got {n}"));
            }
            n => n,
        };
        check_description(spec.description.as_deref())?;
        check_message_options(&spec.message)?;
        if let Some(t) = meta.trigger {
            check_trigger(t)?;
        }
        Ok(JobFields {
            args,
            kwargs,
            priority,
            expires_seconds,
            starting_deadline_seconds,
            jitter_seconds,
            execution_timeout_seconds,
            history_limit,
            max_runs,
        })
    }
}

/// The job's TaskFunction, if it exists and is valid.
fn resolved<'a>(
    spec: &ScheduledJobSpec,
    tf: TaskFunctionRef<'a>,
) -> Result<&'a ValidTaskFunction, Invalid> {
    match tf {
        TaskFunctionRef::Missing => Err(invalid(
            Reason::UnknownTaskFunction,
            format!("TaskFunction {:?} does not exist", spec.task_function),
        )),
        TaskFunctionRef::Invalid(e) => Err(invalid(
            Reason::TaskFunctionNotReady,
            format!(
                "TaskFunction {:?} is not valid: {}",
                spec.task_function, e.message
            ),
        )),
        TaskFunctionRef::Valid(tf) => Ok(tf),
    }
}

/// The job's queue, if the TaskFunction allows it and the job's namespace.
fn allowed_queue(
    meta: &JobMeta<'_>,
    spec: &ScheduledJobSpec,
    tf: &ValidTaskFunction,
) -> Result<String, Invalid> {
    if !tf.allowed_namespaces.is_empty()
        && !tf.allowed_namespaces.iter().any(|n| n == meta.namespace)
    {
        return Err(invalid(
            Reason::NamespaceNotAllowed,
            format!(
                "TaskFunction {:?} may be used only from namespaces [{}]",
                tf.name,
                tf.allowed_namespaces.join(", ")
            ),
        ));
    }
    let queue = spec.queue.clone().unwrap_or_else(|| tf.queue.clone());
    if !tf.allowed_queues.contains(&queue) {
        return Err(invalid(
            Reason::QueueNotAllowed,
            format!(
                "queue {queue:?} is not allowed by TaskFunction {:?} (allowedQueues: [{}])",
                tf.name,
                tf.allowed_queues.join(", ")
            ),
        ));
    }
    Ok(queue)
}

mod checks;

pub use checks::check_trigger;
use checks::*;

#[cfg(test)]
mod tests;

#[cfg(test)]
#[path = "validate/schedules_tests.rs"]
mod schedules_tests;

#[cfg(test)]
mod arguments_tests;
