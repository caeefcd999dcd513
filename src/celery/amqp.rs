//! The RabbitMQ publisher: each batch is published together with one ledger message naming its
//! task ids, in one AMQP transaction (both or neither); the ledger says what went out.

use std::collections::HashSet;

use chrono::Utc;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions},
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
    declared: HashSet<String>,
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
            declared: HashSet::new(),
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
