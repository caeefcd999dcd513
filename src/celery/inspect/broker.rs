//! The remote-control round trip over a live broker: publish the two broadcasts, collect the
//! replies for the wait (Redis: a list popped by a script; AMQP: an exclusive reply queue).

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use lapin::{
    BasicProperties, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};

use super::{
    BROADCAST_EXCHANGE, Collector, MAX_REPLIES, MAX_REPLY_BYTES, POLL, Question, REPLY_EXCHANGE,
    WorkerReport, amqp_ticket, decode_redis_envelope, redis_reply_binding, reply_queue,
    request_body,
};
use crate::celery::{PublishError, Publisher};

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
            let envelope = crate::celery::message::pidbox_envelope_until(
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
