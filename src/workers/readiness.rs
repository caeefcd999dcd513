//! Whether live Celery workers will run a task published to a queue, decided from a [`Census`]
//! alone (pure: no clock, no I/O).
//!
//! The rules, in order (`n` = replying workers that registered `task` AND consume `queue`):
//!
//! 1. `n > 0` → [`Readiness::Ready`] (reason `WorkersReady`).
//! 2. Some replying worker consumes `queue` but none registered `task` → `TaskNotRegistered`:
//!    that worker takes the messages and rejects them ("Received unregistered task"). It comes
//!    before rule 3: a worker that answers and lacks the task is a fault whoever else consumes.
//! 3. No replying worker consumes `queue`. The broker's count of the queue's consumers
//!    (`census.consumers[queue]`) decides between a real absence and workers that do not answer
//!    (remote control disabled: `worker_enable_remote_control = False`, or `--without-...`):
//!    - `Some(c)`, `c > 0` (RabbitMQ counted consumers no reply explains) → `Unknown`, reason
//!      `RemoteControlDisabled`: never a false alarm.
//!    - `Some(0)` (RabbitMQ: no consumer; Redis: no worker ever declared the queue) →
//!      `NoConsumer`.
//!    - `None` (Redis: a worker declared the queue once, consumers cannot be counted) → if no
//!      worker replied at all, `Unknown` reason `NoReplies`; else `Unknown` reason
//!      `RemoteControlDisabled` (the declaring worker may not answer, or may be gone).
//!    - not asked about the queue → as `None`.
//!
//! Reasons are contract strings (issue #26): `WorkersReady`, `NoConsumer`, `TaskNotRegistered`,
//! `RemoteControlDisabled`, `NoReplies`.

use super::Census;

/// The condition type kube-beat writes on TaskFunctions.
pub const WORKERS_READY: &str = "WorkersReady";

pub const REASON_READY: &str = "WorkersReady";
pub const REASON_NO_CONSUMER: &str = "NoConsumer";
pub const REASON_TASK_NOT_REGISTERED: &str = "TaskNotRegistered";
pub const REASON_REMOTE_CONTROL_DISABLED: &str = "RemoteControlDisabled";
pub const REASON_NO_REPLIES: &str = "NoReplies";

/// Whether workers are there for a task on a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// `workers` live workers registered the task and consume the queue.
    Ready { workers: u32 },
    /// Nothing consumes the queue: messages wait there.
    NoConsumer { message: String },
    /// Workers consume the queue but none registered the task: they reject the messages.
    TaskNotRegistered { message: String },
    /// The replies cannot tell (`reason`: `RemoteControlDisabled` or `NoReplies`).
    Unknown {
        reason: &'static str,
        message: String,
    },
}

impl Readiness {
    pub fn reason(&self) -> &'static str {
        match self {
            Readiness::Ready { .. } => REASON_READY,
            Readiness::NoConsumer { .. } => REASON_NO_CONSUMER,
            Readiness::TaskNotRegistered { .. } => REASON_TASK_NOT_REGISTERED,
            Readiness::Unknown { reason, .. } => reason,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Readiness::Ready { workers: 1 } => {
                "1 live worker registered the task and consumes the queue".to_string()
            }
            Readiness::Ready { workers } => {
                format!("{workers} live workers registered the task and consume the queue")
            }
            Readiness::NoConsumer { message }
            | Readiness::TaskNotRegistered { message }
            | Readiness::Unknown { message, .. } => message.clone(),
        }
    }

    /// The condition status: `True`, `False` or `Unknown`.
    pub fn status(&self) -> &'static str {
        match self {
            Readiness::Ready { .. } => "True",
            Readiness::NoConsumer { .. } | Readiness::TaskNotRegistered { .. } => "False",
            Readiness::Unknown { .. } => "Unknown",
        }
    }

    /// Live workers that registered the task and consume the queue (`status.workers`).
    pub fn workers(&self) -> u32 {
        match self {
            Readiness::Ready { workers } => *workers,
            _ => 0,
        }
    }
}

/// Decide, by the rules of the module's header, whether live workers run `task` from `queue`.
pub fn readiness(census: &Census, task: &str, queue: &str) -> Readiness {
    let replied = census.workers.len();
    let consuming: Vec<_> = census
        .workers
        .iter()
        .filter(|w| w.queues.iter().any(|q| q == queue))
        .collect();
    let ready = consuming
        .iter()
        .filter(|w| w.registered.iter().any(|t| t == task))
        .count();
    if ready > 0 {
        return Readiness::Ready {
            workers: u32::try_from(ready).unwrap_or(u32::MAX),
        };
    }
    if !consuming.is_empty() {
        let names: Vec<&str> = consuming
            .iter()
            .take(3)
            .map(|w| w.hostname.as_str())
            .collect();
        let more = consuming.len().saturating_sub(names.len());
        return Readiness::TaskNotRegistered {
            message: format!(
                "queue {queue} is consumed by {} live worker{} ({}{}), none of which registered task {task}",
                consuming.len(),
                plural(consuming.len()),
                names.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                },
            ),
        };
    }
    match census.consumers.get(queue).copied().flatten() {
        Some(0) => Readiness::NoConsumer {
            message: if census.broker == "amqp" {
                format!(
                    "queue {queue} has no consumer (0 on the broker; {replied} live worker{} replied, none consumes it)",
                    plural(replied)
                )
            } else {
                format!(
                    "no Celery worker consumes queue {queue}: none declared it ({replied} live worker{} replied)",
                    plural(replied)
                )
            },
        },
        Some(c) => Readiness::Unknown {
            reason: REASON_REMOTE_CONTROL_DISABLED,
            message: format!(
                "the broker counts {c} consumer{} on queue {queue} but no worker that replied ({replied}) consumes it: remote control disabled on those workers?",
                plural(c as usize)
            ),
        },
        None if replied == 0 => Readiness::Unknown {
            reason: REASON_NO_REPLIES,
            message: format!(
                "no worker replied to the {} remote-control inspection (remote control disabled, or no worker running) and the broker cannot count consumers of queue {queue}",
                census.broker
            ),
        },
        None => Readiness::Unknown {
            reason: REASON_REMOTE_CONTROL_DISABLED,
            message: format!(
                "no worker that replied ({replied}) consumes queue {queue}, but a Celery worker declared it: it may have remote control disabled, or be gone"
            ),
        },
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
