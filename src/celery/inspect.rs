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

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use lapin::{
    BasicProperties, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use serde_json::{Value, json};

use super::{PublishError, Publisher};

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

/// Pop up to ARGV[1] replies off the list; one larger than ARGV[2] bytes comes back empty (so
/// a hostile worker's reply never crosses the wire to us whole).
const POP_REPLIES: &str = r"
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('RPOP', KEYS[1])
  if not v then break end
  if #v > tonumber(ARGV[2]) then out[#out + 1] = '' else out[#out + 1] = v end
end
return out
";

impl Publisher {
    /// Ask every live worker which tasks it registered and which queues it consumes, waiting
    /// `wait` for the replies (as `celery inspect -t`). Workers with remote control disabled do
    /// not answer; no worker at all is an empty list, not an error.
    pub async fn inspect(&self, wait: Duration) -> Result<Vec<WorkerReport>, PublishError> {
        let reply_key = uuid::Uuid::new_v4().to_string();
        let mut collector = Collector::new(
            &uuid::Uuid::new_v4().to_string(),
            &uuid::Uuid::new_v4().to_string(),
        );
        match self {
            Publisher::Redis {
                conn: shared,
                db,
                keyprefix,
                ..
            } => {
                let result =
                    inspect_redis(shared, *db, keyprefix, &reply_key, wait, &mut collector).await;
                if let Err(PublishError::Redis(e)) = &result {
                    shared.failed(e).await;
                }
                result?;
            }
            Publisher::Amqp(p) => inspect_amqp(&p.uri, &reply_key, wait, &mut collector).await?,
        }
        Ok(collector.reports())
    }

    /// How many consumers the broker counts on `queue`: on RabbitMQ the passive declare's
    /// consumer count (a missing queue has 0). On Redis consumers cannot be counted: `None`,
    /// except `Some(0)` when no Celery worker ever declared the queue (kombu keeps no binding
    /// `_kombu.binding.<queue>` for it), which is certain.
    pub async fn queue_consumers(&self, queue: &str) -> Result<Option<u32>, PublishError> {
        let counts = self.queue_consumers_many(&[queue.to_string()]).await?;
        Ok(counts.get(queue).copied().flatten())
    }

    /// [`Publisher::queue_consumers`] of several queues, over one connection.
    pub async fn queue_consumers_many(
        &self,
        queues: &[String],
    ) -> Result<HashMap<String, Option<u32>>, PublishError> {
        let mut out = HashMap::with_capacity(queues.len());
        // No queues yet (a probe before any TaskFunction is stored): an empty Redis pipeline
        // is an error ("empty command"), which dropped the connection and logged a warning.
        if queues.is_empty() {
            return Ok(out);
        }
        match self {
            Publisher::Redis {
                conn: shared,
                keyprefix,
                ..
            } => {
                let mut pipe = redis::pipe();
                for q in queues {
                    pipe.exists(format!("{keyprefix}_kombu.binding.{q}"));
                }
                let mut conn = shared.get().await?;
                let exists: Vec<bool> = match pipe.query_async(&mut conn).await {
                    Ok(v) => v,
                    Err(e) => {
                        shared.failed(&e).await;
                        return Err(e.into());
                    }
                };
                for (q, declared) in queues.iter().zip(exists) {
                    out.insert(q.clone(), (!declared).then_some(0));
                }
            }
            Publisher::Amqp(p) => {
                let conn = Connection::connect(&p.uri, ConnectionProperties::default()).await?;
                let result = async {
                    let mut channel = conn.create_channel().await?;
                    for q in queues {
                        let opts = QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        };
                        match channel
                            .queue_declare(
                                ShortString::from(q.as_str()),
                                opts,
                                FieldTable::default(),
                            )
                            .await
                        {
                            Ok(declared) => {
                                out.insert(q.clone(), Some(declared.consumer_count()));
                            }
                            Err(_) => {
                                // A missing queue (the channel is closed by it: open another).
                                out.insert(q.clone(), Some(0));
                                channel = conn.create_channel().await?;
                            }
                        }
                    }
                    Ok::<(), PublishError>(())
                }
                .await;
                let _ = conn.close(200, ShortString::from("done")).await;
                result?;
            }
        }
        Ok(out)
    }
}

async fn inspect_redis(
    shared: &crate::redis_target::SharedConn,
    db: i64,
    keyprefix: &str,
    reply_key: &str,
    wait: Duration,
    collector: &mut Collector,
) -> Result<(), PublishError> {
    let mut conn = shared.get().await?;
    // kombu prefixes the keys of SADD/SREM/LPUSH/PUBLISH with global_keyprefix, but not the
    // binding's member: the workers read the member and push to the prefixed queue.
    let binding_key = format!("{keyprefix}_kombu.binding.{REPLY_EXCHANGE}");
    // kombu >= 5.7 sweeps a binding set whose deadline passed (Celery's own inspect clients set
    // one on this exchange) unless its `_kombu.binding_permanent.` set has members: ours is there
    // while we wait.
    let permanent_key = format!("{keyprefix}_kombu.binding_permanent.{REPLY_EXCHANGE}");
    let member = redis_reply_binding(reply_key);
    let list = format!("{keyprefix}{}", reply_queue(reply_key));
    redis::pipe()
        .cmd("SADD")
        .arg(&binding_key)
        .arg(&member)
        .ignore()
        .cmd("SADD")
        .arg(&permanent_key)
        .arg(&member)
        .ignore()
        .query_async::<()>(&mut conn)
        .await?;
    let asked = async {
        let expires = expires_at(wait);
        for question in Question::ALL {
            let body = request_body(question, collector.ticket(question), reply_key);
            let envelope = super::message::pidbox_envelope_until(
                &body,
                &uuid::Uuid::new_v4().to_string(),
                expires,
            );
            redis::cmd("PUBLISH")
                .arg(format!("{keyprefix}/{db}.{BROADCAST_EXCHANGE}"))
                .arg(envelope)
                .query_async::<()>(&mut conn)
                .await?;
        }
        let script = redis::Script::new(POP_REPLIES);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let popped: Vec<Vec<u8>> = script
                .key(&list)
                .arg(100)
                .arg(MAX_REPLY_BYTES * 2)
                .invoke_async(&mut conn)
                .await?;
            let drained = popped.len() < 100;
            for envelope in popped {
                match decode_redis_envelope(&envelope) {
                    Some((ticket, body)) => collector.offer(&ticket, &body),
                    None => {
                        collector.read += 1;
                        collector.dropped += 1;
                    }
                }
            }
            if !collector.wants_more() || tokio::time::Instant::now() >= deadline {
                break;
            }
            if drained {
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + POLL)).await;
            }
        }
        Ok::<(), PublishError>(())
    }
    .await;
    // Unbind and drop the reply queue whatever happened (late replies then go nowhere).
    let cleanup = redis::pipe()
        .cmd("SREM")
        .arg(&binding_key)
        .arg(&member)
        .ignore()
        .cmd("SREM")
        .arg(&permanent_key)
        .arg(&member)
        .ignore()
        .cmd("DEL")
        .arg(&list)
        .ignore()
        .query_async::<()>(&mut conn)
        .await;
    asked?;
    cleanup?;
    Ok(())
}

async fn inspect_amqp(
    uri: &str,
    reply_key: &str,
    wait: Duration,
    collector: &mut Collector,
) -> Result<(), PublishError> {
    // A connection of its own: a missing exchange closes the channel that names it, and the
    // exclusive reply queue goes with the connection whatever happens.
    let conn = Connection::connect(uri, ConnectionProperties::default()).await?;
    let result = inspect_amqp_on(&conn, reply_key, wait, collector).await;
    let _ = conn.close(200, ShortString::from("done")).await;
    result
}

async fn inspect_amqp_on(
    conn: &Connection,
    reply_key: &str,
    wait: Duration,
    collector: &mut Collector,
) -> Result<(), PublishError> {
    // No broadcast exchange: no worker with remote control ever ran on this vhost.
    let probe = conn.create_channel().await?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    if probe
        .exchange_declare(
            ShortString::from(BROADCAST_EXCHANGE),
            ExchangeKind::Fanout,
            passive,
            FieldTable::default(),
        )
        .await
        .is_err()
    {
        return Ok(());
    }
    let _ = probe.close(200, ShortString::from("done")).await;
    let channel = conn.create_channel().await?;
    // Declared as kombu declares it (direct, not durable): the workers' declares must agree.
    channel
        .exchange_declare(
            ShortString::from(REPLY_EXCHANGE),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let queue = reply_queue(reply_key);
    let mut args = FieldTable::default();
    // As kombu's reply queue: gone 10 s after its last use even if the connection lingers;
    // and never more than the replies we would read.
    args.insert(ShortString::from("x-expires"), AMQPValue::LongInt(10_000));
    args.insert(
        ShortString::from("x-max-length"),
        AMQPValue::LongInt(MAX_REPLIES as i32),
    );
    channel
        .queue_declare(
            ShortString::from(queue.as_str()),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    channel
        .queue_bind(
            ShortString::from(queue.as_str()),
            ShortString::from(REPLY_EXCHANGE),
            ShortString::from(reply_key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let expires = expires_at(wait);
    for question in Question::ALL {
        let body = request_body(question, collector.ticket(question), reply_key);
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from("clock"), AMQPValue::LongInt(1));
        headers.insert(ShortString::from("expires"), AMQPValue::Double(expires));
        let props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_content_encoding(ShortString::from("utf-8"))
            .with_delivery_mode(2)
            .with_priority(0)
            .with_headers(headers);
        channel
            .basic_publish(
                ShortString::from(BROADCAST_EXCHANGE),
                ShortString::from(""),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await?;
    }
    let deadline = tokio::time::Instant::now() + wait;
    while collector.wants_more() && tokio::time::Instant::now() < deadline {
        match channel
            .basic_get(
                ShortString::from(queue.as_str()),
                BasicGetOptions { no_ack: true },
            )
            .await?
        {
            Some(msg) => {
                let d = msg.delivery;
                match amqp_ticket(d.properties.headers().as_ref()) {
                    Some(ticket) => collector.offer(&ticket, &d.data),
                    None => {
                        collector.read += 1;
                        collector.dropped += 1;
                    }
                }
            }
            None => {
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + POLL)).await
            }
        }
    }
    let _ = channel
        .queue_delete(
            ShortString::from(queue.as_str()),
            QueueDeleteOptions::default(),
        )
        .await;
    Ok(())
}

/// The `expires` header: the workers drop a request still unread after the wait (Celery:
/// `time() + timeout`).
fn expires_at(wait: Duration) -> f64 {
    Utc::now().timestamp_millis() as f64 / 1000.0 + wait.as_secs_f64().max(1.0)
}

#[cfg(test)]
#[path = "inspect_tests.rs"]
mod tests;
