//! The `ScheduledJob` custom resource: one periodic Celery task, declared by a platform team.

// clippy reads the repeated `printcolumn(type_ = ...)` keys of the derive as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MessageOptions, schema};

/// Most ScheduleCalendars one job may name (`spec.calendars`).
pub const MAX_JOB_CALENDARS: usize = 16;

/// A periodic Celery task. kube-beat stores it in Postgres, dispatches each due run to Celery
/// exactly once, and reports the outcome in `status`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kubebeat.io",
    version = "v1alpha1",
    kind = "ScheduledJob",
    plural = "scheduledjobs",
    shortname = "sj",
    namespaced,
    status = "ScheduledJobStatus",
    derive = "PartialEq",
    doc = "A periodic Celery task, dispatched by kube-beat exactly once per scheduled slot.",
    printcolumn(
        name = "Task",
        type_ = "string",
        json_path = ".spec.taskFunction",
        description = "The TaskFunction this job runs"
    ),
    printcolumn(
        name = "Schedule",
        type_ = "string",
        json_path = ".status.schedule",
        description = "Human summary of the schedule"
    ),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(
        name = "Last Run",
        type_ = "date",
        json_path = ".status.lastScheduleTime",
        description = "When the last run was scheduled"
    ),
    printcolumn(
        name = "Last Status",
        type_ = "string",
        json_path = ".status.lastExecution.state",
        description = "State of the last execution"
    ),
    printcolumn(
        name = "Next Run",
        type_ = "string",
        json_path = ".status.nextScheduleTime",
        description = "When the next run is due (UTC)"
    ),
    printcolumn(
        name = "Healthy",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Healthy\")].status",
        description = "Whether the job meets its health policy (spec.health)"
    ),
    printcolumn(
        name = "Complete",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Complete\")].status",
        description = "Whether the job has ended (spec.endTime or spec.maxRuns reached)"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("oneOf" = [{"required": ["schedule"]}, {"required": ["schedules"]}]))]
pub struct ScheduledJobSpec {
    /// Name of the cluster-scoped TaskFunction that says which Celery task runs, on which queue,
    /// with which default arguments.
    #[schemars(length(min = 1, max = 253))]
    pub task_function: String,

    /// When the job runs: exactly one of `interval`, `cron` or `at`. Exactly one of `schedule`
    /// and `schedules` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,

    /// Several schedules (1 to 16), instead of `schedule`: the job runs at every slot of each,
    /// an instant shared by two of them once. Each entry is one of `interval`, `cron` or `at`,
    /// with an optional `timeZone` (default: the job's `timeZone`, else UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub schedules: Option<Vec<ScheduleEntry>>,

    /// No run is scheduled after this instant (RFC 3339); past it the job is `Complete`
    /// (reason `EndTimeReached`). Moving it later makes the job run again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"), length(max = 64))]
    pub end_time: Option<String>,

    /// The job stops after this many scheduled runs (triggers `schedule` and `catchup`; manual
    /// runs and SKIPPED or MISSED slots do not count) and is `Complete` (reason
    /// `MaxRunsReached`). Raising it makes the job run again. 1 to 1000000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_runs: Option<i64>,

    /// IANA time zone the cron expression is read in, e.g. `Europe/Berlin`. Default `UTC`.
    /// At most 64 characters.
    /// A fixed-hour cron slot that falls into a spring-forward gap runs once, at the first instant
    /// after the gap; a slot in a fall-back overlap runs once, at its first occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,

    /// No run is scheduled before this instant (RFC 3339). Also anchors `interval` schedules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"), length(max = 64))]
    pub start_time: Option<String>,

    /// Positional arguments for the task. Replaces the TaskFunction's `defaultArgs` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::any_array")]
    pub args: Option<serde_json::Value>,

    /// Keyword arguments for the task, merged over the TaskFunction's `defaultKwargs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::any_object")]
    pub kwargs: Option<serde_json::Value>,

    /// Celery queue; overrides the TaskFunction's queue. It must be one of the TaskFunction's
    /// `allowedQueues` (by default only its `queue`), else the job is not Ready (reason
    /// `QueueNotAllowed`). Names starting with `kubebeat`, `amq.`, `_kombu`, `unacked`,
    /// `celery-task-meta-`, `celery-taskset-meta-` or `chord-unlock` are reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub queue: Option<String>,

    /// Celery message priority 0-9; overrides the TaskFunction's priority. Note that on Redis
    /// 0 is served first, on RabbitMQ 9 is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 9))]
    pub priority: Option<i32>,

    /// A message not started within this many seconds after publishing is discarded by the
    /// worker (Celery `expires`); overrides the TaskFunction's value. 1 to 31536000 (one year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub expires_seconds: Option<i64>,

    /// Celery message options: `exchange`, `routingKey`, `headers`, `timeLimit`,
    /// `softTimeLimit`, `ignoreResult`.
    #[serde(flatten)]
    pub message: MessageOptions,

    /// Stop scheduling new runs. Resuming does not replay the suspended period.
    #[serde(default)]
    pub suspend: bool,

    /// What to do when a run is due while the previous one has not finished:
    /// `Allow` (run anyway), `Forbid` (skip it, recorded as SKIPPED), `Replace` (revoke the
    /// unfinished one, then run).
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,

    /// A run that cannot be dispatched within this many seconds of its slot is not dispatched;
    /// it is recorded as MISSED. Several missed slots are coalesced into one run. 0 to 31536000
    /// (one year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31536000))]
    pub starting_deadline_seconds: Option<i64>,

    /// Delay each run by a deterministic amount in [0, jitterSeconds), derived from the job's
    /// uid and the slot, identical on every replica. Spreads load of jobs sharing a schedule.
    /// 0 to 86400 (one day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub jitter_seconds: Option<i64>,

    /// An execution with no final result this many seconds after dispatch is marked LOST.
    /// Default 3600; 1 to 31536000 (one year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub execution_timeout_seconds: Option<i64>,

    /// How many execution rows are kept for this job. Default 100; 0 to 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub history_limit: Option<i64>,

    /// Free text for humans, at most 1024 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// When the job counts as unhealthy (the `Healthy` condition) and what happens then.
    /// Every field is optional; without any, the job is judged by the default staleness only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthPolicy>,

    /// Names of ScheduleCalendars (cluster-scoped) whose excluded days and windows this job
    /// skips: such a slot is recorded SKIPPED with reason `Calendar: <name>: <reason>`. A
    /// missing calendar makes the job not Ready (`CalendarNotFound`) and stops it until the
    /// calendar exists. At most 16 names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub calendars: Vec<String>,
}

/// A job's health policy. A breach sets `Healthy=False` with an `Unhealthy` Event; with
/// `onBreach: Pause` it also pauses the job (`status.pause`) until it is resumed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthPolicy {
    /// Unhealthy (`Stale`) when no run has succeeded for this long while the job is due.
    /// Default: 3 × the interval, or the longest gap between cron slots, plus the job's
    /// deadline (`startingDeadlineSeconds` + `executionTimeoutSeconds`, at most one more such
    /// period); one-off (`at`) jobs are never stale. 1 to 31536000 (one year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub stale_after_seconds: Option<i64>,

    /// Unhealthy (`ConsecutiveFailures`) after this many runs in a row ended in FAILURE, LOST,
    /// DISPATCH_FAILED or MISSED. 1 to 10000; unset: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_consecutive_failures: Option<i64>,

    /// Unhealthy (`TooSlow`) while a run has been STARTED for longer than this (needs workers
    /// that report STARTED, Celery's `task_track_started`). 1 to 31536000; unset: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub max_duration_seconds: Option<i64>,

    /// `Notify` (default): condition and Event only. `Pause`: also stop dispatching (slots are
    /// recorded as SKIPPED with reason `Paused`) without touching the spec, until the job is
    /// resumed (annotation `kubebeat.io/resume`, `kube-beat resume`, the API or the dashboard).
    #[serde(default)]
    pub on_breach: OnBreach,

    /// Export this job's own Prometheus series (`kube_beat_job_healthy`,
    /// `kube_beat_job_consecutive_failures`, `kube_beat_job_last_success_timestamp_seconds`,
    /// with `namespace` and `name`). Capped per operator (`--job-metrics-limit`).
    #[serde(default)]
    pub metrics: bool,
}

/// What a health breach does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OnBreach {
    /// Set the condition and emit an Event.
    #[default]
    Notify,
    /// Also pause the job until it is resumed.
    Pause,
}

/// When a job runs. Exactly one of `interval`, `cron` or `at` must be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("oneOf" = [
    {"required": ["interval"]},
    {"required": ["cron"]},
    {"required": ["at"]}
]))]
pub struct Schedule {
    /// Run every `hours`h `minutes`m `seconds`s (total at least 1 s). The first run is one interval
    /// after the job is first stored, or after `startTime` when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<IntervalSchedule>,

    /// A Kubernetes CronJob expression: 5 fields (minute hour day-of-month month day-of-week,
    /// Sunday = 0), names (`JAN`, `MON`), ranges, steps, lists, `?`, the descriptors `@yearly`
    /// `@annually` `@monthly` `@weekly` `@daily` `@midnight` `@hourly`, and `@every <duration>`.
    /// Read in `timeZone`. Try it with `kube-beat next "<expr>"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub cron: Option<String>,

    /// Run once at this instant (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"), length(max = 64))]
    pub at: Option<String>,
}

/// One of a job's `schedules`: exactly one of `interval`, `cron` or `at`, read in `timeZone`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("oneOf" = [
    {"required": ["interval"]},
    {"required": ["cron"]},
    {"required": ["at"]}
]))]
pub struct ScheduleEntry {
    /// Run every `hours`h `minutes`m `seconds`s (total at least 1 s), from the job's first
    /// store or its `startTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<IntervalSchedule>,

    /// A Kubernetes CronJob expression (as `schedule.cron`), read in this entry's `timeZone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub cron: Option<String>,

    /// Run once at this instant (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"), length(max = 64))]
    pub at: Option<String>,

    /// IANA time zone of this entry. Default: the job's `timeZone`, else `UTC`. At most 64
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
}

impl ScheduleEntry {
    /// The entry's schedule without its zone.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            interval: self.interval.clone(),
            cron: self.cron.clone(),
            at: self.at.clone(),
        }
    }
}

/// A fixed interval; the parts are added together.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntervalSchedule {
    /// Hours (0 to 876000; the whole interval at most 100 years).
    #[serde(default)]
    #[schemars(range(min = 0, max = 876000))]
    pub hours: i64,
    /// Minutes (0 to 52560000).
    #[serde(default)]
    #[schemars(range(min = 0, max = 52560000))]
    pub minutes: i64,
    /// Seconds (0 to 3153600000).
    #[serde(default)]
    #[schemars(range(min = 0, max = 3_153_600_000_i64))]
    pub seconds: i64,
}

/// How overlapping runs of one job are treated.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Runs may overlap.
    #[default]
    Allow,
    /// Skip a run while the previous one is unfinished (recorded as SKIPPED).
    Forbid,
    /// Revoke the unfinished run, then start the new one.
    Replace,
}

/// What kube-beat observed and did. Written only by the leader.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledJobStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`: the spec is valid and stored. Reasons: `Stored`, `InvalidSchedule`,
    /// `UnknownTaskFunction`, `TaskFunctionNotReady`, `NamespaceNotAllowed`, `QueueNotAllowed`,
    /// `InvalidArguments`, `InvalidSpec`, `CalendarNotFound`, `CalendarInvalid`.
    /// `Healthy`: the job meets its health policy. Reasons: `Healthy`, `Stale`,
    /// `ConsecutiveFailures`, `TooSlow`, `NoWorkers`, `TaskNotRegistered`, `Paused`.
    /// `Complete` (only once true): the job has ended. Reasons: `EndTimeReached`,
    /// `MaxRunsReached`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<schema::Condition>,

    /// Human summary of the schedule, e.g. `every 1h` or `*/5 * * * * (Europe/Berlin)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,

    /// When the next run is due (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<String>,

    /// The slot time of the most recent run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,

    /// The slot time of the most recent successful run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<String>,

    /// The most recent execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_execution: Option<ExecutionSummary>,

    /// Unfinished executions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<ActiveExecution>,

    /// Runs dispatched so far.
    #[serde(default)]
    pub total_runs: i64,
    /// Runs that ended in SUCCESS.
    #[serde(default)]
    pub succeeded: i64,
    /// Runs that ended in FAILURE, LOST, REVOKED or DISPATCH_FAILED.
    #[serde(default)]
    pub failed: i64,
    /// Slots not dispatched because they were later than `startingDeadlineSeconds`.
    #[serde(default)]
    pub missed: i64,
    /// Slots skipped by `concurrencyPolicy: Forbid`, a pause, or a calendar.
    #[serde(default)]
    pub skipped: i64,

    /// Runs in a row that ended in FAILURE, LOST, DISPATCH_FAILED or MISSED (since the last
    /// SUCCESS or resume).
    #[serde(default)]
    pub consecutive_failures: i64,

    /// Set while the job is paused by its health policy (`onBreach: Pause`).
    // Nullable: when the status writer's apply stops carrying it, the 1.20 apiserver's
    // server-side apply leaves `pause: null` behind, which a non-nullable object refuses
    // (and with it every later status write of the job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("nullable" = true))]
    pub pause: Option<PauseStatus>,

    /// The latest backfill (`kube-beat backfill`, `POST .../backfill`) and its progress.
    // Nullable for the same reason as `pause`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("nullable" = true))]
    pub backfill: Option<BackfillStatus>,

    /// The most recent manual run (`kubebeat.io/trigger`, the API, `kube-beat trigger`):
    /// what `kube-beat trigger --wait` follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_manual_run: Option<ManualRunSummary>,

    /// The last value of the `kubebeat.io/trigger` annotation that caused a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trigger: Option<String>,
}

/// Why and since when a job is paused.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseStatus {
    /// The breach that paused it, e.g. `ConsecutiveFailures: 3 runs in a row failed`.
    pub reason: String,
    /// When it was paused (RFC 3339).
    pub since: String,
}

/// A backfill's progress, as shown in status (the latest backfill of the job).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackfillStatus {
    /// The request's id.
    #[schemars(length(max = 64))]
    pub id: String,
    /// The range's first and last instant (RFC 3339, both included).
    pub from: String,
    pub to: String,
    /// Running, Complete, Failed or Cancelled.
    pub state: String,
    /// Slots in the range.
    #[serde(default)]
    pub total: i64,
    /// Slots run by this backfill.
    #[serde(default)]
    pub dispatched: i64,
    /// Slots that already had an execution (not run again).
    #[serde(default)]
    pub already_ran: i64,
    /// Runs of this backfill that ended in SUCCESS.
    #[serde(default)]
    pub succeeded: i64,
    /// Runs of this backfill that ended in FAILURE, LOST, REVOKED, DISPATCH_FAILED or MISSED.
    #[serde(default)]
    pub failed: i64,
    /// Runs of this backfill not finished yet (at most its maxParallel).
    #[serde(default)]
    pub unfinished: i64,
    /// Why it failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One execution, as shown in status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionSummary {
    /// The Celery task id.
    pub task_id: String,
    /// The slot this run belongs to.
    pub scheduled_for: String,
    /// `schedule`, `manual` or `catchup`.
    pub trigger: String,
    /// PENDING, DISPATCHED, STARTED, RETRY, SUCCESS, FAILURE, REVOKED, LOST, DISPATCH_FAILED,
    /// SKIPPED, MISSED or SHADOW.
    pub state: String,
    /// When the message was published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_at: Option<String>,
    /// When a final state was observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Error or result summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A manual run, as shown in status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManualRunSummary {
    /// The request id: the trigger value without its ` by=<user>` part.
    pub request_id: String,
    /// Who asked (the API caller, the kubeconfig user, or the value's `by=` part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// The Celery task id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The run's state (final: SUCCESS, FAILURE, REVOKED, LOST, DISPATCH_FAILED, SHADOW).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// When the message was published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_at: Option<String>,
    /// When a final state was observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Its error, or its result as JSON (cut to 1 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// An unfinished execution.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveExecution {
    /// The Celery task id.
    pub task_id: String,
    /// The slot this run belongs to.
    pub scheduled_for: String,
    /// Current state.
    pub state: String,
}
