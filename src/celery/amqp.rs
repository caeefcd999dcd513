//! The RabbitMQ publisher: each batch is published together with one ledger message naming its
//! task ids, in one AMQP transaction (both or neither); the ledger says what went out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions},
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString},
};
use serde_json::Value;
use tokio::sync::Mutex;

use super::*;

/// kombu spells the default vhost `//` (or leaves it empty); lapin wants it URL-encoded.
pub(super) fn amqp_uri(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    match rest.split_once('/') {
        None => format!("{scheme}://{rest}/%2F"),
        Some((host, "")) | Some((host, "/")) => format!("{scheme}://{host}/%2F"),
        Some((host, vhost)) => format!("{scheme}://{host}/{vhost}"),
    }
}

pub struct AmqpPublisher {
    pub(super) uri: String,
    /// The ledger queue's name and its entries' time to live (ms, as AMQP wants it: text).
    pub(super) ledger: String,
    pub(super) ledger_ttl_ms: String,
    pub(super) state: Mutex<Option<AmqpState>>,
}

pub(super) struct AmqpState {
    conn: Connection,
    /// In transaction mode (tx.select): a batch and its ledger entry commit together.
    channel: Channel,
    /// Queues known to exist, and when that was last seen.
    declared: HashMap<String, Instant>,
}

/// Ledger entries read and not yet acknowledged.
#[derive(Default)]
pub struct LedgerRead {
    pub task_ids: Vec<String>,
    pub(super) channel: Option<Channel>,
    pub(super) last_tag: Option<u64>,
}

impl AmqpPublisher {
    pub(super) async fn channel(&self) -> Result<Channel, PublishError> {
        let mut state = self.state.lock().await;
        if let Some(s) = state.as_ref()
            && s.channel.status().connected()
        {
            return Ok(s.channel.clone());
        }
        let conn = Connection::connect(&self.uri, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(
                ShortString::from(self.ledger.as_str()),
                opts,
                FieldTable::default(),
            )
            .await?;
        channel.tx_select().await?;
        *state = Some(AmqpState {
            conn,
            channel: channel.clone(),
            declared: HashMap::new(),
        });
        Ok(channel)
    }

    /// Pull every ledger entry (on a channel of its own: the publishing one is transactional).
    pub(super) async fn read_ledger(&self) -> Result<LedgerRead, PublishError> {
        self.channel().await?;
        let channel = match self.state.lock().await.as_ref() {
            Some(s) => s.conn.create_channel().await?,
            None => return Ok(LedgerRead::default()),
        };
        let mut read = LedgerRead::default();
        while let Some(msg) = channel
            .basic_get(
                ShortString::from(self.ledger.as_str()),
                BasicGetOptions { no_ack: false },
            )
            .await?
        {
            read.last_tag = Some(msg.delivery.delivery_tag);
            // Entries are ours (a JSON list of task ids); anything else is skipped.
            if let Ok(ids) = serde_json::from_slice::<Vec<String>>(&msg.delivery.data) {
                read.task_ids.extend(ids);
            }
        }
        read.channel = Some(channel);
        Ok(read)
    }

    /// Make sure `queue` exists without ever declaring it with arguments other than its own.
    /// Workers declare quorum queues (`x-queue-type: quorum`) and priority queues
    /// (`x-max-priority`); declaring such a queue with other arguments is refused with
    /// PRECONDITION_FAILED, which closes the channel it was sent on. So look first (a passive
    /// declare) and declare only a queue that does not exist, the way Celery's worker does
    /// (durable, no arguments); a worker that comes later with arguments of its own then finds
    /// a classic queue, as it would behind Celery beat. Both steps run on a throwaway channel:
    /// a failed passive declare closes its channel too, and the publishing one is
    /// transactional. A queue seen is not looked at again for [`QUEUE_RECHECK`], so a queue
    /// deleted meanwhile is declared again within that time rather than never.
    async fn ensure_queue(&self, queue: &str) -> Result<(), PublishError> {
        if self
            .state
            .lock()
            .await
            .as_ref()
            .and_then(|s| s.declared.get(queue))
            .is_some_and(|seen| seen.elapsed() < QUEUE_RECHECK)
        {
            return Ok(());
        }
        self.channel().await?;
        let (probe, fresh) = match self.state.lock().await.as_ref() {
            // Two: the look closes its channel when the queue is missing.
            Some(s) => (
                s.conn.create_channel().await?,
                s.conn.create_channel().await?,
            ),
            None => return Err(PublishError::Reply("queue check: no connection")),
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match probe
            .queue_declare(ShortString::from(queue), passive, FieldTable::default())
            .await
        {
            Ok(_) => {
                let _ = probe.close(200, ShortString::from("done")).await;
                let _ = fresh.close(200, ShortString::from("done")).await;
            }
            Err(e) if not_found(&e) => {
                let opts = QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                let declared = fresh
                    .queue_declare(ShortString::from(queue), opts, FieldTable::default())
                    .await;
                match declared {
                    Ok(_) => {
                        let _ = fresh.close(200, ShortString::from("done")).await;
                    }
                    // A worker declared it with its arguments between our look and our declare:
                    // it exists, which is all we need (only this throwaway channel is closed).
                    Err(e) if precondition_failed(&e) => {
                        tracing::debug!(queue, "queue declared meanwhile with other arguments");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => {
                let _ = fresh.close(200, ShortString::from("done")).await;
                return Err(e.into());
            }
        }
        if let Some(s) = self.state.lock().await.as_mut() {
            s.declared
                .insert(queue.to_string(), std::time::Instant::now());
        }
        Ok(())
    }

    /// Publish a remote-control message to the workers' fanout exchange `celery.pidbox`
    /// (declared by the workers; if none is running there is nobody to revoke anything).
    pub(super) async fn broadcast_revoke(&self, body: &[u8]) -> Result<(), PublishError> {
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
            Ok(_) => match channel.tx_commit().await {
                Ok(()) => Ok(()),
                Err(e) => {
                    *self.state.lock().await = None;
                    Err(e.into())
                }
            },
            Err(e) => {
                *self.state.lock().await = None;
                Err(e.into())
            }
        }
    }

    pub(super) async fn publish(&self, messages: &[&TaskMessage]) -> Result<(), PublishError> {
        let result = self.publish_once(messages).await;
        if result.is_err() {
            // Reconnect on the next call.
            *self.state.lock().await = None;
        }
        result
    }

    async fn publish_once(&self, messages: &[&TaskMessage]) -> Result<(), PublishError> {
        for m in messages {
            self.ensure_queue(&m.queue).await?;
        }
        let channel = self.channel().await?;
        let now = Utc::now();
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
            // As Celery: the default exchange `""` with the queue's name as routing key, or
            // the job's `exchange`/`routingKey` (the queue is declared either way, as
            // `apply_async` declares it).
            let (exchange, routing_key) = m.routing();
            channel
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::from(routing_key),
                    BasicPublishOptions::default(),
                    &m.body(),
                    props,
                )
                .await?;
        }
        let ids: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
        let entry = serde_json::to_vec(&ids).unwrap_or_default();
        channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(self.ledger.as_str()),
                BasicPublishOptions::default(),
                &entry,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_expiration(ShortString::from(self.ledger_ttl_ms.as_str())),
            )
            .await?;
        // The commit returns once the broker has taken the batch and its ledger entry
        // (persisted, for durable queues): from here on a retry finds the entry.
        channel.tx_commit().await?;
        Ok(())
    }
}

/// How long a queue seen to exist is taken to still exist (a queue deleted meanwhile swallows
/// what is published to it until then: RabbitMQ drops a message routed to no queue).
pub const QUEUE_RECHECK: Duration = Duration::from_secs(30);

fn soft_error(e: &lapin::Error, which: AMQPSoftError) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if *p.kind() == AMQPErrorKind::Soft(which))
}

/// The broker's NOT_FOUND (404): a passive declare of a queue that does not exist.
fn not_found(e: &lapin::Error) -> bool {
    soft_error(e, AMQPSoftError::NOTFOUND)
}

/// The broker's PRECONDITION_FAILED (406): a declare whose arguments differ from the queue's.
fn precondition_failed(e: &lapin::Error) -> bool {
    soft_error(e, AMQPSoftError::PRECONDITIONFAILED)
}

/// JSON headers as an AMQP field table with the types py-amqp uses (str→S, int→I/l, bool→t,
/// None→V, list→A, dict→F, float→d).
pub(super) fn headers_table(headers: &serde_json::Map<String, Value>) -> FieldTable {
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
