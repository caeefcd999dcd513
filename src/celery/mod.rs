//! Publishing Celery messages to Redis or RabbitMQ, as Celery's own producer does
//! (`celery-wire.md`). One long-lived connection per broker, reconnecting on failure; a batch is
//! published in one round trip (a Redis script, an AMQP transaction).
//!
//! A publish whose outcome is unknown (a timeout, a reset connection, a leader killed before it
//! recorded success) is retried with the same task ids, and the retry must not enqueue a second
//! copy. On Redis a batch goes out in one transaction with a record of its task ids, refused if
//! any was recorded by another publisher meanwhile ([`redis_publish`]); the record says what went
//! out. RabbitMQ has no transactions across a check and a publish, so each batch is
//! published together with one ledger message naming its task ids, in one AMQP transaction (both
//! or neither). Before re-publishing or expiring anything uncertain the dispatcher asks
//! ([`Publisher::read_ledger`]) and records what is already out.

mod amqp;
pub mod inspect;
pub mod message;
mod redis_publish;

use std::time::Duration;

use chrono::Utc;
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicAckOptions, QueueDeclareOptions},
    types::{FieldTable, ShortString},
};
use tokio::sync::Mutex;

use amqp::amqp_uri;
#[cfg(test)]
use amqp::headers_table;
pub use amqp::{AmqpPublisher, LedgerRead, QUEUE_RECHECK};
pub use inspect::WorkerReport;
pub use message::{SendOptions, TaskMessage};
use redis_publish::RedisPublisher;
pub use redis_publish::Rejected;

use crate::redact::{self, RedactedUrl};
use crate::redis_target::{RedisTarget, SharedConn, TargetError, TransportOptions};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(
        "unsupported broker URL (expected redis://, rediss://, sentinel://, amqp:// or amqps://): {0}"
    )]
    Url(RedactedUrl),
    #[error("invalid broker URL {url}: {reason}")]
    InvalidUrl { url: RedactedUrl, reason: String },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("publishing took longer than {0:?}")]
    Timeout(std::time::Duration),
    #[error("task {0} was encoded for another broker")]
    Encoding(String),
    #[error("the publish record kept changing under {0} attempts (another publisher?)")]
    Contended(usize),
    #[error("unexpected reply to {0}")]
    Reply(&'static str),
    #[error("fenced: leader epoch {ours} is over, epoch {current} has begun")]
    Fenced { ours: i64, current: i64 },
}

/// A connected broker.
pub enum Publisher {
    Redis {
        /// Everything but publishing (and where the publisher connects).
        conn: std::sync::Arc<SharedConn>,
        db: i64,
        /// Celery's `global_keyprefix` transport option: before every key kube-beat uses.
        keyprefix: String,
        publisher: Box<RedisPublisher>,
    },
    Amqp(Box<AmqpPublisher>),
}

/// Check a Celery broker URL without connecting: a URL that cannot work is an error at start,
/// not a connection retried forever.
pub fn check_url(url: &str) -> Result<(), PublishError> {
    check_url_with(url, &TransportOptions::default())
}

/// [`check_url`] with Celery's transport options (`master_name` for a `sentinel://` URL).
pub fn check_url_with(url: &str, options: &TransportOptions) -> Result<(), PublishError> {
    let reason = if url.starts_with("sentinel://") {
        RedisTarget::new(url, options)?;
        None
    } else if is_redis(url) {
        // redis's parse errors are fixed phrases ("Redis URL did not parse"), never the URL.
        redis::Client::open(url).err().map(|e| e.to_string())
    } else if is_amqp(url) {
        amqp_uri(url)
            .parse::<lapin::uri::AMQPUri>()
            .err()
            // amq-protocol quotes the whole URL in one of its errors ("Invalid URL: '...'", for
            // a URL without `//`, which the prefix test above rules out): keep the phrase only.
            .map(|e| e.split(": '").next().unwrap_or_default().to_string())
    } else {
        return Err(PublishError::Url(redact::url(url)));
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(PublishError::InvalidUrl {
            url: redact::url(url),
            reason,
        }),
    }
}

fn is_redis(url: &str) -> bool {
    crate::redis_target::is_redis(url)
}

fn is_amqp(url: &str) -> bool {
    url.starts_with("amqp://") || url.starts_with("amqps://")
}

impl Publisher {
    /// Connect to the broker named by a Celery broker URL. A task id re-published within
    /// `dedupe_window` of its first publish is not enqueued again (on RabbitMQ: via the ledger
    /// queue `ledger`, one per installation).
    pub async fn connect(
        url: &str,
        dedupe_window: Duration,
        ledger: &str,
    ) -> Result<Publisher, PublishError> {
        Publisher::connect_with(url, &TransportOptions::default(), dedupe_window, ledger).await
    }

    /// [`Publisher::connect`] with Celery's broker transport options (`master_name` for a
    /// `sentinel://` URL, `global_keyprefix`; see [`crate::redis_target`]).
    pub async fn connect_with(
        url: &str,
        options: &TransportOptions,
        dedupe_window: Duration,
        ledger: &str,
    ) -> Result<Publisher, PublishError> {
        if is_redis(url) {
            let target = RedisTarget::new(url, options)?;
            let db = target.db();
            let conn = std::sync::Arc::new(
                // The publish ledger's reads (up to 20,000 task ids) and the fencing epoch: the
                // crate's 500 ms default timed out on a new leader's first ledger read at 100,000
                // jobs a minute, as the result backend's 5 s does not.
                SharedConn::connect(
                    target,
                    redis::aio::ConnectionManagerConfig::new()
                        .set_response_timeout(Some(std::time::Duration::from_secs(5))),
                )
                .await?,
            );
            let keyprefix = options.global_keyprefix.clone();
            // kube-beat's own keys (the publish record, the fencing epoch) carry the prefix too:
            // a deployment that prefixes keys may allow its clients no others (Redis ACLs).
            let publisher = RedisPublisher::connect(
                conn.clone(),
                &format!("{keyprefix}{ledger}"),
                &keyprefix,
                dedupe_window.as_secs(),
            )
            .await?;
            Ok(Publisher::Redis {
                conn,
                db,
                keyprefix,
                publisher: Box::new(publisher),
            })
        } else if is_amqp(url) {
            let publisher = AmqpPublisher {
                uri: amqp_uri(url),
                ledger: ledger.to_string(),
                ledger_ttl_ms: dedupe_window.as_millis().max(60_000).to_string(),
                state: Mutex::new(None),
            };
            publisher.channel().await?;
            Ok(Publisher::Amqp(Box::new(publisher)))
        } else {
            Err(PublishError::Url(redact::url(url)))
        }
    }

    /// Publish a batch as the leader of term `epoch`. On error nothing is known to be
    /// delivered; the caller retries with the same task ids.
    pub async fn publish(
        &self,
        messages: Vec<TaskMessage>,
        epoch: i64,
    ) -> Result<Vec<Rejected>, PublishError> {
        let prepared: Vec<Prepared> = messages.into_iter().map(|m| self.prepare(m)).collect();
        self.publish_prepared(&prepared, epoch).await
    }

    /// Encode a message for this broker now, to publish it later with
    /// [`Publisher::publish_prepared`] (a burst due in the same second is encoded before it is
    /// due, so publishing it is only the round trips).
    pub fn prepare(&self, message: TaskMessage) -> Prepared {
        self.encoding().prepare(message)
    }

    /// How this broker's messages are encoded (a value, so encoding can run on another thread).
    pub fn encoding(&self) -> Encoding {
        match self {
            Publisher::Redis { .. } => Encoding::Redis,
            Publisher::Amqp(_) => Encoding::Amqp,
        }
    }

    /// Publish prepared messages, as [`Publisher::publish`] (on Redis a burst is one
    /// transaction, refused once a newer term than `epoch` has read the record). Returns the
    /// messages left out because their queue cannot take them (the rest went out).
    pub async fn publish_prepared(
        &self,
        messages: &[Prepared],
        epoch: i64,
    ) -> Result<Vec<Rejected>, PublishError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Publisher::Redis { publisher, .. } => publisher.publish(messages, epoch).await,
            Publisher::Amqp(p) => {
                let messages = messages
                    .iter()
                    .map(|m| match m {
                        Prepared::Amqp(message) => Ok(message.as_ref()),
                        Prepared::Redis { id, .. } => Err(PublishError::Encoding(id.clone())),
                    })
                    .collect::<Result<Vec<&TaskMessage>, _>>()?;
                p.publish(&messages).await.map(|()| Vec::new())
            }
        }
    }
}

/// The encoding of a broker's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Redis,
    Amqp,
}

impl Encoding {
    /// Encode a message now, to publish it later with [`Publisher::publish_prepared`].
    pub fn prepare(self, message: TaskMessage) -> Prepared {
        match self {
            Encoding::Redis => {
                let (list, envelope) = redis_parts(&message);
                let (exchange, routing_key) = message.routing();
                // A named exchange is kombu's virtual one: its queues are looked up when the
                // message is published (the bindings may change until then).
                let bound = (!exchange.is_empty()).then(|| {
                    Box::new(Binding {
                        exchange: exchange.to_string(),
                        routing_key: routing_key.to_string(),
                        priority: message.priority,
                    })
                });
                Prepared::Redis {
                    id: message.id,
                    list,
                    envelope,
                    bound,
                }
            }
            Encoding::Amqp => Prepared::Amqp(Box::new(message)),
        }
    }
}

/// A message encoded for its broker ahead of publishing.
/// On Redis only the envelope is kept.
pub enum Prepared {
    /// The task id, the list and the envelope.
    Redis {
        id: String,
        /// The queue's list; unused when `bound` is set.
        list: String,
        envelope: String,
        /// Published to an exchange: the lists are those of the queues bound to it.
        bound: Option<Box<Binding>>,
    },
    /// Boxed: a message is ~200 bytes inline, which every Redis envelope held in a burst paid.
    Amqp(Box<TaskMessage>),
}

/// Where a Redis message published to a named exchange goes: as kombu's virtual direct
/// exchange does it, to every queue bound to `exchange` with exactly `routing_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub exchange: String,
    pub routing_key: String,
    pub priority: Option<u8>,
}

fn redis_parts(m: &TaskMessage) -> (String, String) {
    let tag = uuid::Uuid::new_v4().to_string();
    (m.redis_list(), m.redis_envelope(&tag, Utc::now()))
}

impl Publisher {
    /// Which task ids went out, read by the leader of term `epoch`. On Redis: those of
    /// `candidates` in the publish record, read after raising the fencing epoch (so no older
    /// term publishes after the read). On RabbitMQ: every id the ledger lists (and has not had
    /// acknowledged); the entries stay in the broker until [`Publisher::ack_ledger`], so a
    /// reader that dies first leaves them for the next one.
    pub async fn read_ledger(
        &self,
        candidates: &[String],
        epoch: i64,
    ) -> Result<LedgerRead, PublishError> {
        match self {
            Publisher::Redis {
                conn: shared,
                publisher,
                ..
            } => {
                let mut conn = shared.get().await?;
                let read = async {
                    publisher.fence(&mut conn, epoch).await?;
                    publisher.sent(&mut conn, candidates).await
                };
                let sent = match read.await {
                    Ok(sent) => sent,
                    Err(e) => {
                        if let PublishError::Redis(r) = &e {
                            shared.failed(r).await;
                        }
                        return Err(e);
                    }
                };
                Ok(LedgerRead {
                    task_ids: candidates
                        .iter()
                        .zip(sent)
                        .filter(|(_, sent)| *sent)
                        .map(|(id, _)| id.clone())
                        .collect(),
                    ..LedgerRead::default()
                })
            }
            Publisher::Amqp(p) => p.read_ledger().await,
        }
    }

    /// Whether [`Publisher::read_ledger`] needs the candidates (Redis) or reads its own (AMQP).
    pub fn ledger_needs_candidates(&self) -> bool {
        matches!(self, Publisher::Redis { .. })
    }

    /// Drop the ledger entries read (their executions are now recorded as published).
    pub async fn ack_ledger(&self, read: LedgerRead) -> Result<(), PublishError> {
        if let (Some(channel), Some(tag)) = (read.channel, read.last_tag) {
            channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await?;
            let _ = channel.close(200, ShortString::from("done")).await;
        }
        Ok(())
    }

    /// Leave the entries read in the ledger (for the next reader): what could not be recorded.
    pub async fn return_ledger(&self, read: LedgerRead) {
        if let Some(channel) = read.channel {
            // Closing the channel requeues what it had not acknowledged.
            let _ = channel.close(200, ShortString::from("returned")).await;
        }
    }

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
            Publisher::Redis {
                conn: shared,
                keyprefix,
                ..
            } => {
                let mut pipe = redis::pipe();
                for suffix in ["", "\x06\x163", "\x06\x166", "\x06\x169"] {
                    pipe.llen(format!("{keyprefix}{queue}{suffix}"));
                }
                let mut conn = shared.get().await?;
                match pipe.query_async::<Vec<u64>>(&mut conn).await {
                    Ok(lens) => Ok(lens.iter().sum()),
                    Err(e) => {
                        shared.failed(&e).await;
                        Err(e.into())
                    }
                }
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

    /// Celery's remote-control `revoke` broadcast (what `app.control.revoke(id, terminate=..)`
    /// sends): every live worker adds the ids to its revoked set (a message of one arriving
    /// later is dropped, and stored REVOKED) and, with `terminate`, stops it if running. A
    /// worker started afterwards never hears of it (Celery keeps revokes in worker memory).
    pub async fn revoke(&self, task_ids: &[String], terminate: bool) -> Result<(), PublishError> {
        for id in task_ids {
            let body = message::revoke_body(id, terminate);
            match self {
                Publisher::Redis {
                    conn: shared,
                    db,
                    keyprefix,
                    ..
                } => {
                    let envelope = message::pidbox_envelope(
                        &body,
                        &uuid::Uuid::new_v4().to_string(),
                        Utc::now(),
                    );
                    let mut conn = shared.get().await?;
                    // kombu prefixes PUBLISH's channel too (and its workers SUBSCRIBE to that).
                    if let Err(e) = redis::cmd("PUBLISH")
                        .arg(format!("{keyprefix}/{db}.celery.pidbox"))
                        .arg(envelope)
                        .query_async::<()>(&mut conn)
                        .await
                    {
                        shared.failed(&e).await;
                        return Err(e.into());
                    }
                }
                Publisher::Amqp(p) => p.broadcast_revoke(&body).await?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldArray, LongString};

    #[test]
    fn broker_urls_checked_without_their_password() {
        for ok in [
            "redis://:pw@127.0.0.1:6379/0",
            "rediss://u:pw@redis:6380/1",
            "amqp://guest:guest@127.0.0.1:5672//",
            "amqps://u:pw@mq:5671/prod",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for (bad, shown) in [
            (
                "ftp://u:s3cr3t@127.0.0.1/",
                "unsupported broker URL (expected redis://, rediss://, sentinel://, amqp:// or amqps://): ftp://u:***@127.0.0.1/",
            ),
            (
                "guest:s3cr3t@127.0.0.1",
                "unsupported broker URL (expected redis://, rediss://, sentinel://, amqp:// or amqps://): <unparseable URL: no //host>",
            ),
            (
                "redis://:s3cr3t@127.0.0.1/zero",
                "invalid broker URL redis://:***@127.0.0.1/zero: ",
            ),
            (
                "amqp://u:s3cr3t@127.0.0.1/%2F?heartbeat=x",
                "invalid broker URL amqp://u:***@127.0.0.1/%2F?heartbeat=x: ",
            ),
        ] {
            // Our words exactly; the library's reason after them, whatever it says, without the
            // password.
            let e = check_url(bad).expect_err(bad).to_string();
            assert!(e.starts_with(shown), "{bad}: {e}");
            assert!(!e.contains("s3cr3t"), "{bad}: {e}");
        }
    }

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
