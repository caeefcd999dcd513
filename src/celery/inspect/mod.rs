//! Asking the workers what they run, the way `celery inspect registered` and `celery inspect
//! active_queues` do: two remote-control broadcasts on `celery.pidbox` with one reply queue
//! `<uuid>.reply.celery.pidbox` bound to the direct exchange `reply.celery.pidbox`, replies told
//! apart by their `ticket` header. Captured from Celery 5.7 / kombu 5.7 on both brokers:
//! `docs/celery-remote-control.md`, `tests/fixtures/celery-remote-control/`.
//!
//! Celery has no command that answers both questions, so two broadcasts go out back to back and
//! share the reply queue and the wait. A worker's reply is untrusted input (its task names come
//! from whatever code it imported): every reply, name and list is bounded and decoding never
//! panics; what does not fit is dropped, never truncated into another name.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

/// Workers whose replies are kept at most (the rest are ignored, with a warning).
pub const MAX_WORKERS: usize = 1_000;
/// A reply larger than this is dropped whole: 256 KiB is ~3,000 task names of 80 characters, or
/// ~400 queues as `active_queues` describes them (each ~600 bytes).
pub const MAX_REPLY_BYTES: usize = 256 * 1024;
/// Task names kept per worker.
pub const MAX_TASKS: usize = 10_000;
/// Queues kept per worker.
pub const MAX_QUEUES: usize = 1_000;
/// A task, queue or host name longer than this is dropped (a TaskFunction's task and queue are
/// at most 255 characters, so a longer one can match nothing).
pub const MAX_NAME: usize = 255;
/// Replies read in all, both questions together (two per worker, and room for strays).
const MAX_REPLIES: usize = 2 * MAX_WORKERS + 100;
/// How often the reply queue is polled while waiting.
const POLL: Duration = Duration::from_millis(100);

/// Celery's remote-control exchanges (namespace `celery`, as every Celery app has by default).
pub const BROADCAST_EXCHANGE: &str = "celery.pidbox";
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";

/// What one live worker answered: its node name (`celery@host`), the tasks it registered and
/// the queues it consumes. Only workers that answered both questions within the wait.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct WorkerReport {
    pub hostname: String,
    pub registered: Vec<String>,
    pub queues: Vec<String>,
}

/// The two questions, in the order they are broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Question {
    Registered,
    ActiveQueues,
}

impl Question {
    pub const ALL: [Question; 2] = [Question::Registered, Question::ActiveQueues];

    pub fn method(self) -> &'static str {
        match self {
            Question::Registered => "registered",
            Question::ActiveQueues => "active_queues",
        }
    }

    fn arguments(self) -> Value {
        match self {
            // No extra task attributes: the reply is then the bare names.
            Question::Registered => json!({"taskinfoitems": []}),
            Question::ActiveQueues => json!({}),
        }
    }
}

/// The remote-control body asking every worker `question`, replies to `reply_key`, as
/// `celery inspect` sends it (captured: `*-request.json`).
pub fn request_body(question: Question, ticket: &str, reply_key: &str) -> Vec<u8> {
    let body = json!({
        "method": question.method(),
        "arguments": question.arguments(),
        "destination": null, "pattern": null, "matcher": null,
        "ticket": ticket,
        "reply_to": {"exchange": REPLY_EXCHANGE, "routing_key": reply_key},
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The reply queue's name for a reply routing key (kombu: `{oid}.reply.celery.pidbox`).
pub fn reply_queue(reply_key: &str) -> String {
    format!("{reply_key}.{REPLY_EXCHANGE}")
}

/// The member of kombu's Redis binding set `_kombu.binding.reply.celery.pidbox` that routes
/// replies sent with `reply_key` to the reply queue: `routing_key \x06\x16 pattern \x06\x16 queue`.
pub fn redis_reply_binding(reply_key: &str) -> String {
    format!("{reply_key}\x06\x16\x06\x16{}", reply_queue(reply_key))
}

/// One decoded reply: the ticket it answers, the worker and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub ticket: String,
    pub hostname: String,
    /// Task names (`registered`) or queue names (`active_queues`), bounded.
    pub names: Vec<String>,
}

/// Decode the body of a reply as Celery sends it: `{"<hostname>": <answer>}`, the answer a list
/// of task names (`registered`) or of queue descriptions with a `name` (`active_queues`).
/// `None` for anything else (too large, not JSON, not that shape).
pub fn decode_reply_body(question: Question, ticket: &str, body: &[u8]) -> Option<Reply> {
    if body.len() > MAX_REPLY_BYTES {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    // One worker per reply; anything else is not Celery's.
    if object.len() != 1 {
        return None;
    }
    let (hostname, answer) = object.iter().next()?;
    if hostname.is_empty() || hostname.len() > MAX_NAME {
        return None;
    }
    let items = answer.as_array()?;
    let (limit, name_of): (usize, fn(&Value) -> Option<&str>) = match question {
        Question::Registered => (MAX_TASKS, |v| v.as_str()),
        Question::ActiveQueues => (MAX_QUEUES, |v| v.get("name").and_then(Value::as_str)),
    };
    let names = items
        .iter()
        .filter_map(name_of)
        .filter(|n| !n.is_empty() && n.len() <= MAX_NAME)
        .take(limit)
        .map(str::to_string)
        .collect();
    Some(Reply {
        ticket: ticket.to_string(),
        hostname: hostname.clone(),
        names,
    })
}

/// Decode a reply as it lies in a Redis reply list: kombu's envelope (`*-reply.json` of the
/// Redis fixtures), its body base64, the ticket in its headers. Returns (ticket, body).
pub fn decode_redis_envelope(envelope: &[u8]) -> Option<(String, Vec<u8>)> {
    if envelope.len() > MAX_REPLY_BYTES * 2 {
        return None;
    }
    let v: Value = serde_json::from_slice(envelope).ok()?;
    let ticket = v.get("headers")?.get("ticket")?.as_str()?.to_string();
    let body = v.get("body")?.as_str()?;
    let encoding = v
        .get("properties")
        .and_then(|p| p.get("body_encoding"))
        .and_then(Value::as_str);
    let body = match encoding {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(body)
            .ok()?,
        _ => body.as_bytes().to_vec(),
    };
    Some((ticket, body))
}

/// The `ticket` header of an AMQP reply.
pub fn amqp_ticket(headers: Option<&FieldTable>) -> Option<String> {
    match headers?.inner().get("ticket")? {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// A worker's answers so far: (registered, queues).
type Answers = (Option<Vec<String>>, Option<Vec<String>>);

/// Collects the replies to the two tickets of one inspection.
#[derive(Debug)]
pub struct Collector {
    tickets: [(Question, String); 2],
    /// hostname → its answers; a BTreeMap so reports come out in a stable order.
    workers: BTreeMap<String, Answers>,
    /// Replies read (kept or not), and replies dropped as oversized or malformed.
    pub read: usize,
    pub dropped: usize,
}

impl Collector {
    pub fn new(registered_ticket: &str, queues_ticket: &str) -> Collector {
        Collector {
            tickets: [
                (Question::Registered, registered_ticket.to_string()),
                (Question::ActiveQueues, queues_ticket.to_string()),
            ],
            workers: BTreeMap::new(),
            read: 0,
            dropped: 0,
        }
    }

    pub fn ticket(&self, question: Question) -> &str {
        match question {
            Question::Registered => &self.tickets[0].1,
            Question::ActiveQueues => &self.tickets[1].1,
        }
    }

    /// Whether more replies may be read.
    pub fn wants_more(&self) -> bool {
        self.read < MAX_REPLIES
    }

    /// Take one reply body answering `ticket` (another ticket's reply, a stray, is ignored).
    pub fn offer(&mut self, ticket: &str, body: &[u8]) {
        self.read += 1;
        let Some(question) = self
            .tickets
            .iter()
            .find(|(_, t)| t == ticket)
            .map(|(q, _)| *q)
        else {
            self.dropped += 1;
            return;
        };
        let Some(reply) = decode_reply_body(question, ticket, body) else {
            self.dropped += 1;
            return;
        };
        if !self.workers.contains_key(&reply.hostname) && self.workers.len() >= MAX_WORKERS {
            self.dropped += 1;
            return;
        }
        let entry = self.workers.entry(reply.hostname).or_default();
        // A worker's first answer counts (a duplicate is a redelivery or an impostor).
        let slot = match question {
            Question::Registered => &mut entry.0,
            Question::ActiveQueues => &mut entry.1,
        };
        if slot.is_none() {
            *slot = Some(reply.names);
        }
    }

    /// The workers that answered both questions.
    pub fn reports(self) -> Vec<WorkerReport> {
        if self.dropped > 0 {
            tracing::warn!(
                dropped = self.dropped,
                "worker inspection: replies dropped (oversized, malformed or beyond {MAX_WORKERS} workers)"
            );
        }
        self.workers
            .into_iter()
            .filter_map(|(hostname, (registered, queues))| {
                Some(WorkerReport {
                    hostname,
                    registered: registered?,
                    queues: queues?,
                })
            })
            .collect()
    }
}

/// The broadcast and the wait for replies over each broker (Redis, AMQP), and the consumer
/// count of a queue.
mod broker;

#[cfg(test)]
mod tests;
