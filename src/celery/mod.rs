//! Publishing Celery messages to Redis or RabbitMQ, as Celery's own producer does
//! (`celery-wire.md`). One long-lived connection per broker, reconnecting on failure; a batch is
//! published in one round trip (Redis MULTI/EXEC pipeline, AMQP publishes with confirms).

pub mod message;

use std::{collections::HashSet, time::Duration};

use chrono::Utc;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString},
};
use redis::aio::ConnectionManager;
use serde_json::Value;
use tokio::sync::Mutex;

pub use message::TaskMessage;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("unsupported broker URL (expected redis://, rediss://, amqp:// or amqps://): {0}")]
    Url(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker did not confirm message {0}")]
    NotConfirmed(String),
    #[error("publishing took longer than {0:?}")]
    Timeout(std::time::Duration),
}

/// A connected broker.
pub enum Publisher {
    Redis {
        conn: ConnectionManager,
        db: i64,
        /// How long a task id is remembered as sent (see [`REDIS_PUBLISH`]).
        dedupe_seconds: u64,
    },
    Amqp(Box<AmqpPublisher>),
}

/// Enqueue each message unless its task id was enqueued before. A publish whose reply was lost
/// (timeout, connection reset after the broker applied it) is retried with the same task ids;
/// this makes the retry a no-op on the broker instead of a second run. One script per batch:
/// atomic, and one round trip. KEYS: `kubebeat:sent:<task id>`; ARGV: ttl, then (list, envelope)
/// pairs.
const REDIS_PUBLISH: &str = r"
local ttl = ARGV[1]
local sent = 0
for i = 1, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ttl) then
    redis.call('LPUSH', ARGV[2 * i], ARGV[2 * i + 1])
    sent = sent + 1
  end
end
return sent
";

impl Publisher {
    /// Connect to the broker named by a Celery broker URL. On Redis, a task id re-published
    /// within `dedupe_window` of its first publish is not enqueued again.
    pub async fn connect(url: &str, dedupe_window: Duration) -> Result<Publisher, PublishError> {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            let client = redis::Client::open(url)?;
            let db = client.get_connection_info().redis_settings().db();
            let manager = ConnectionManager::new(client).await?;
            Ok(Publisher::Redis {
                conn: manager,
                db,
                dedupe_seconds: dedupe_window.as_secs().max(60),
            })
        } else if url.starts_with("amqp://") || url.starts_with("amqps://") {
            let publisher = AmqpPublisher {
                uri: amqp_uri(url),
                state: Mutex::new(None),
            };
            publisher.channel().await?;
            Ok(Publisher::Amqp(Box::new(publisher)))
        } else {
            Err(PublishError::Url(url.to_string()))
        }
    }

    /// Publish a batch. On error nothing is known to be delivered; the caller retries with the
    /// same task ids.
    pub async fn publish(&self, messages: &[TaskMessage]) -> Result<(), PublishError> {
        if messages.is_empty() {
            return Ok(());
        }
        match self {
            Publisher::Redis {
                conn,
                dedupe_seconds,
                ..
            } => {
                let now = Utc::now();
                let script = redis::Script::new(REDIS_PUBLISH);
                let mut call = script.prepare_invoke();
                call.arg(*dedupe_seconds);
                for m in messages {
                    let tag = uuid::Uuid::new_v4().to_string();
                    call.key(format!("kubebeat:sent:{}", m.id))
                        .arg(m.redis_list())
                        .arg(m.redis_envelope(&tag, now));
                }
                let mut conn = conn.clone();
                call.invoke_async::<i64>(&mut conn).await?;
                Ok(())
            }
            Publisher::Amqp(p) => p.publish(messages).await,
        }
    }
}

impl Publisher {
    /// `redis` or `amqp`, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Publisher::Redis { .. } => "redis",
            Publisher::Amqp(_) => "amqp",
        }
    }

    /// Messages waiting in `queue`: on Redis the list and its priority lists, on RabbitMQ the
    /// queue's message count (a passive declare; a missing queue counts 0).
    pub async fn queue_depth(&self, queue: &str) -> Result<u64, PublishError> {
        match self {
            Publisher::Redis { conn, .. } => {
                let mut pipe = redis::pipe();
                for suffix in ["", "\x06\x163", "\x06\x166", "\x06\x169"] {
                    pipe.llen(format!("{queue}{suffix}"));
                }
                let mut conn = conn.clone();
                let lens: Vec<u64> = pipe.query_async(&mut conn).await?;
                Ok(lens.iter().sum())
            }
            Publisher::Amqp(p) => {
                // A passive declare of a missing queue closes the channel: use a throwaway one.
                let conn = Connection::connect(&p.uri, ConnectionProperties::default()).await?;
                let channel = conn.create_channel().await?;
                let opts = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                let depth = match channel
                    .queue_declare(ShortString::from(queue), opts, FieldTable::default())
                    .await
                {
                    Ok(q) => u64::from(q.message_count()),
                    Err(_) => 0,
                };
                let _ = conn.close(200, ShortString::from("done")).await;
                Ok(depth)
            }
        }
    }

    /// Celery's remote-control `revoke` broadcast (what `app.control.revoke(id, terminate=True)`
    /// sends): every worker adds the ids to its revoked set and terminates them if running.
    pub async fn revoke(&self, task_ids: &[String]) -> Result<(), PublishError> {
        for id in task_ids {
            let body = message::revoke_body(id);
            match self {
                Publisher::Redis { conn, db, .. } => {
                    let envelope = message::pidbox_envelope(
                        &body,
                        &uuid::Uuid::new_v4().to_string(),
                        Utc::now(),
                    );
                    let mut conn = conn.clone();
                    redis::cmd("PUBLISH")
                        .arg(format!("/{db}.celery.pidbox"))
                        .arg(envelope)
                        .query_async::<()>(&mut conn)
                        .await?;
                }
                Publisher::Amqp(p) => p.broadcast_revoke(&body).await?,
            }
        }
        Ok(())
    }
}

/// kombu spells the default vhost `//` (or leaves it empty); lapin wants it URL-encoded.
fn amqp_uri(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    match rest.split_once('/') {
        None => format!("{scheme}://{rest}/%2F"),
        Some((host, "")) | Some((host, "/")) => format!("{scheme}://{host}/%2F"),
        Some((host, vhost)) => format!("{scheme}://{host}/{vhost}"),
    }
}

pub struct AmqpPublisher {
    uri: String,
    state: Mutex<Option<AmqpState>>,
}

struct AmqpState {
    _conn: Connection,
    channel: Channel,
    declared: HashSet<String>,
}

impl AmqpPublisher {
    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut state = self.state.lock().await;
        if let Some(s) = state.as_ref()
            && s.channel.status().connected()
        {
            return Ok(s.channel.clone());
        }
        let conn = Connection::connect(&self.uri, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *state = Some(AmqpState {
            _conn: conn,
            channel: channel.clone(),
            declared: HashSet::new(),
        });
        Ok(channel)
    }

    /// Declare a queue the way Celery's worker does (durable, no arguments). If the worker
    /// declared it with other arguments (x-max-priority, ...), the broker refuses ours and closes
    /// the channel: the queue exists, which is all we need.
    async fn ensure_queue(&self, queue: &str) -> Result<(), PublishError> {
        if self
            .state
            .lock()
            .await
            .as_ref()
            .is_some_and(|s| s.declared.contains(queue))
        {
            return Ok(());
        }
        let channel = self.channel().await?;
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        if let Err(e) = channel
            .queue_declare(ShortString::from(queue), opts, FieldTable::default())
            .await
        {
            tracing::debug!(queue, error = %e, "queue exists with other arguments; using it as is");
            // The channel is closed by the refusal: open a fresh one.
            *self.state.lock().await = None;
            self.channel().await?;
        }
        if let Some(s) = self.state.lock().await.as_mut() {
            s.declared.insert(queue.to_string());
        }
        Ok(())
    }

    /// Publish a remote-control message to the workers' fanout exchange `celery.pidbox`
    /// (declared by the workers; if none is running there is nobody to revoke anything).
    async fn broadcast_revoke(&self, body: &[u8]) -> Result<(), PublishError> {
        let channel = self.channel().await?;
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from("clock"), AMQPValue::LongInt(1));
        let expires = (Utc::now().timestamp_millis() as f64) / 1000.0 + 1.0;
        headers.insert(ShortString::from("expires"), AMQPValue::Double(expires));
        let props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_content_encoding(ShortString::from("utf-8"))
            .with_delivery_mode(2)
            .with_headers(headers);
        let result = channel
            .basic_publish(
                ShortString::from("celery.pidbox"),
                ShortString::from(""),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await;
        match result {
            Ok(confirm) => {
                confirm.await?;
                Ok(())
            }
            Err(e) => {
                *self.state.lock().await = None;
                Err(e.into())
            }
        }
    }

    async fn publish(&self, messages: &[TaskMessage]) -> Result<(), PublishError> {
        let result = self.publish_once(messages).await;
        if result.is_err() {
            // Reconnect on the next call.
            *self.state.lock().await = None;
        }
        result
    }

    async fn publish_once(&self, messages: &[TaskMessage]) -> Result<(), PublishError> {
        for m in messages {
            self.ensure_queue(&m.queue).await?;
        }
        let channel = self.channel().await?;
        let now = Utc::now();
        let mut confirms = Vec::with_capacity(messages.len());
        for m in messages {
            let mut props = BasicProperties::default()
                .with_content_type(ShortString::from("application/json"))
                .with_content_encoding(ShortString::from("utf-8"))
                .with_delivery_mode(2)
                .with_correlation_id(ShortString::from(m.id.as_str()))
                .with_reply_to(ShortString::from(""))
                .with_headers(headers_table(&m.headers()));
            if let Some(p) = m.priority {
                props = props.with_priority(p);
            }
            if let Some(exp) = m.expiration_ms(now) {
                props = props.with_expiration(ShortString::from(exp));
            }
            let confirm = channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(m.queue.as_str()),
                    BasicPublishOptions::default(),
                    &m.body(),
                    props,
                )
                .await?;
            confirms.push((m.id.clone(), confirm));
        }
        for (id, confirm) in confirms {
            if confirm.await?.is_nack() {
                return Err(PublishError::NotConfirmed(id));
            }
        }
        Ok(())
    }
}

/// JSON headers as an AMQP field table with the types py-amqp uses (str→S, int→I/l, bool→t,
/// None→V, list→A, dict→F, float→d).
fn headers_table(headers: &serde_json::Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(ShortString::from(k.as_str()), amqp_value(v));
    }
    table
}

fn amqp_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => match i32::try_from(i) {
                Ok(i) => AMQPValue::LongInt(i),
                Err(_) => AMQPValue::LongLongInt(i),
            },
            (None, Some(f)) => AMQPValue::Double(f),
            _ => AMQPValue::LongString(LongString::from(n.to_string())),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(amqp_value).collect::<Vec<_>>(),
        )),
        Value::Object(map) => AMQPValue::FieldTable(headers_table(map)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_uris() {
        assert_eq!(
            amqp_uri("amqp://guest:guest@127.0.0.1:5672//"),
            "amqp://guest:guest@127.0.0.1:5672/%2F"
        );
        assert_eq!(
            amqp_uri("amqp://guest:guest@127.0.0.1:5672/"),
            "amqp://guest:guest@127.0.0.1:5672/%2F"
        );
        assert_eq!(
            amqp_uri("amqp://guest:guest@127.0.0.1:5672"),
            "amqp://guest:guest@127.0.0.1:5672/%2F"
        );
        assert_eq!(amqp_uri("amqp://u:p@h:5672/prod"), "amqp://u:p@h:5672/prod");
        assert_eq!(amqp_uri("amqp://u:p@h:5672/%2F"), "amqp://u:p@h:5672/%2F");
    }

    #[test]
    fn header_types() {
        let h = serde_json::json!({"s": "x", "i": 0, "big": 1i64 << 40, "b": false, "n": null, "a": [null, null], "f": {}});
        let t = headers_table(h.as_object().expect("object"));
        let get = |k: &str| t.inner().get(k).cloned();
        assert_eq!(get("s"), Some(AMQPValue::LongString(LongString::from("x"))));
        assert_eq!(get("i"), Some(AMQPValue::LongInt(0)));
        assert_eq!(get("big"), Some(AMQPValue::LongLongInt(1 << 40)));
        assert_eq!(get("b"), Some(AMQPValue::Boolean(false)));
        assert_eq!(get("n"), Some(AMQPValue::Void));
        assert_eq!(
            get("a"),
            Some(AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::Void,
                AMQPValue::Void
            ])))
        );
        assert_eq!(get("f"), Some(AMQPValue::FieldTable(FieldTable::default())));
    }
}
