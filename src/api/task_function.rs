//! The `TaskFunction` custom resource: the platform team's registry of what may be scheduled.

// clippy reads the repeated `printcolumn(type_ = ...)` keys of the derive as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MessageOptions, schema};

/// A Celery task that ScheduledJobs may run, with its queue and default arguments.
/// Cluster-scoped: owned by the platform team, referenced by name from ScheduledJobs.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kubebeat.io",
    version = "v1alpha1",
    kind = "TaskFunction",
    plural = "taskfunctions",
    shortname = "tf",
    status = "TaskFunctionStatus",
    derive = "PartialEq",
    doc = "A Celery task that ScheduledJobs may run, with its queue and default arguments.",
    printcolumn(
        name = "Task",
        type_ = "string",
        json_path = ".spec.task",
        description = "The Celery task name"
    ),
    printcolumn(name = "Queue", type_ = "string", json_path = ".spec.queue"),
    printcolumn(
        name = "Jobs",
        type_ = "integer",
        json_path = ".status.jobCount",
        description = "ScheduledJobs referencing it"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Workers",
        type_ = "integer",
        json_path = ".status.workers",
        description = "Live workers that registered the task and consume its queue"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TaskFunctionSpec {
    /// The registered Celery task name, e.g. `tasks.ad_sync_tasks.sync_domain_users_task`.
    #[schemars(length(min = 1, max = 255))]
    pub task: String,

    /// Celery queue the task is published to. Default `celery`. Names starting with `kubebeat`,
    /// `amq.`, `_kombu`, `unacked`, `celery-task-meta-`, `celery-taskset-meta-` or
    /// `chord-unlock` are reserved.
    #[serde(default = "default_queue")]
    #[schemars(length(min = 1, max = 255))]
    pub queue: String,

    /// Default message priority 0-9 (on Redis 0 is served first, on RabbitMQ 9 is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 9))]
    pub priority: Option<i32>,

    /// Default message expiry in seconds after publishing (Celery `expires`), 1 to 31536000
    /// (one year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub expires_seconds: Option<i64>,

    /// Celery message options: `exchange`, `routingKey`, `headers`, `timeLimit`,
    /// `softTimeLimit`, `ignoreResult`.
    #[serde(flatten)]
    pub message: MessageOptions,

    /// Positional arguments used when a ScheduledJob gives no `args`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::any_array")]
    pub default_args: Option<serde_json::Value>,

    /// Keyword arguments a ScheduledJob's `kwargs` are merged over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::any_object")]
    pub default_kwargs: Option<serde_json::Value>,

    /// JSON Schemas the arguments of its jobs and of manual runs must satisfy: `args` (for the
    /// positional arguments array) and `kwargs` (for the keyword arguments object). Only the
    /// keywords `type`, `properties`, `required`, `enum`, `minimum`, `maximum`, `minLength`,
    /// `maxLength`, `items`, `additionalProperties` and `description` are supported; each
    /// schema at most 32 KiB and 16 levels deep. A job whose arguments do not validate is not
    /// Ready (reason `InvalidArguments`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::parameters")]
    pub parameters: Option<serde_json::Value>,

    /// Namespaces whose ScheduledJobs may use this task. Empty: every namespace. At most 256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 63)))]
    pub allowed_namespaces: Vec<String>,

    /// Queues a ScheduledJob of this task may ask for with its `queue`. Empty: only `queue`.
    /// A job asking for any other queue is not Ready (reason `QueueNotAllowed`). Names starting
    /// with `kubebeat`, `amq.`, `_kombu`, `unacked`, `celery-task-meta-`,
    /// `celery-taskset-meta-` or `chord-unlock` are reserved. At most 256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 255)))]
    pub allowed_queues: Vec<String>,

    /// Free text for humans, at most 1024 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

fn default_queue() -> String {
    "celery".to_string()
}

/// What kube-beat observed. Written only by the leader.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskFunctionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`: the spec is valid and stored. `WorkersReady` (written every
    /// `--worker-probe-seconds` by the leader's worker probe, field manager `kube-beat-workers`):
    /// `True` (reason `WorkersReady`) when live Celery workers registered `spec.task` and consume
    /// `spec.queue`; `False` with reason `NoConsumer` (nothing consumes the queue) or
    /// `TaskNotRegistered` (workers consume it but none registered the task); `Unknown` with
    /// reason `RemoteControlDisabled` (consumers that do not answer Celery's remote control) or
    /// `NoReplies` (no worker answered and the broker cannot count consumers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<schema::Condition>,

    /// Number of ScheduledJobs referencing this TaskFunction.
    #[serde(default)]
    pub job_count: i64,

    /// Live Celery workers (answering remote control) that registered `spec.task` and consume
    /// `spec.queue`, as the last worker probe saw them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<i64>,
}
