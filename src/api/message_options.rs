//! Celery message options a TaskFunction sets as defaults and a ScheduledJob overrides: the
//! `exchange`/`routing_key`, extra `headers`, `time_limit`/`soft_time_limit` and
//! `ignore_result` of `apply_async`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

/// Message options, as `apply_async` takes them. Flattened into both specs: on a ScheduledJob
/// each field overrides the TaskFunction's (`headers` are merged, the job's winning per name).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageOptions {
    /// Exchange the message is published to (Celery `exchange`). Default: the default exchange
    /// `""`, which routes to the queue named by the routing key. On Redis, kombu's virtual
    /// exchange: the queues bound to it (`_kombu.binding.<exchange>`) with this routing key.
    /// At most 255 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub exchange: Option<String>,

    /// Routing key (Celery `routing_key`). Default: the queue's name. With the default exchange
    /// it must be the queue (set `queue` instead). At most 255 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub routing_key: Option<String>,

    /// Extra message headers (Celery `headers`), read by the task as `self.request.<name>`.
    /// At most 32, names at most 255 bytes, 8 KiB of JSON in all. Celery's own header names
    /// (`task`, `id`, `eta`, `timelimit`, ...) and names starting with `kubebeat` are reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::message_headers")]
    pub headers: Option<serde_json::Map<String, serde_json::Value>>,

    /// Hard time limit in seconds (Celery `time_limit`): the worker kills the task after it.
    /// 1 to 31536000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub time_limit: Option<i64>,

    /// Soft time limit in seconds (Celery `soft_time_limit`): the task gets
    /// `SoftTimeLimitExceeded`. 1 to 31536000, at most `timeLimit` when both are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub soft_time_limit: Option<i64>,

    /// Do not store the task's result (Celery `ignore_result`). kube-beat then has no outcome
    /// to follow: the run stays DISPATCHED (as with no result backend), and the job's
    /// `concurrencyPolicy` must be `Allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_result: Option<bool>,
}
