//! Celery protocol 2 task messages, exactly as `celery-wire.md` captured them from real Celery.
//! A malformed message can crash every worker that receives it, so this is pure and unit-tested
//! against the captured vectors.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::fmt::Write as _;

/// The message options of `apply_async` kube-beat sends (resolved: the job's over its
/// TaskFunction's). Stored with the job (as this JSON) so every replica sends the same message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendOptions {
    /// `None` or `""`: the default exchange, routing to the queue named by the routing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// `None`: the queue's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// Extra headers, in the order they are written (after Celery's, before kube-beat's).
    /// A list of pairs, not an object: Postgres `jsonb` would reorder an object's keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, Value)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_time_limit: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_result: bool,
}

impl SendOptions {
    /// About what these options add to a Redis envelope.
    fn size_hint(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + 4 + serde_json::to_string(v).map_or(0, |s| s.len()))
            .sum();
        headers
            + self.exchange().len()
            + self.routing_key.as_ref().map_or(0, |r| r.len())
            // A limit's digits in place of `null`.
            + self.time_limit.map_or(0, |_| 8)
            + self.soft_time_limit.map_or(0, |_| 8)
    }

    /// The exchange published to: `""` is AMQP's default exchange.
    pub fn exchange(&self) -> &str {
        self.exchange.as_deref().unwrap_or("")
    }
}

/// Everything needed to publish one task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// The Celery task id (kube-beat uses one uuid per execution; re-publishing keeps it).
    pub id: String,
    pub task: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub queue: String,
    /// 0-9.
    pub priority: Option<u8>,
    pub expires: Option<DateTime<Utc>>,
    /// `gen<pid>@<host>` in Celery; the operator's identity here.
    pub origin: String,
    /// Extra headers naming the job and slot (`kubebeat_job`, `kubebeat_slot`, ...).
    pub extra_headers: Vec<(&'static str, String)>,
    /// Exchange, routing key, user headers, time limits, ignore_result.
    pub options: SendOptions,
}

/// Python `repr()` of a JSON value, for `argsrepr`/`kwargsrepr` (only shown in worker logs).
pub fn py_repr(v: &Value) -> String {
    let mut out = String::new();
    write_py_repr(&mut out, v);
    out
}

/// [`py_repr`] appended to `out`: a burst writes one per message, so no string per element.
fn write_py_repr(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => {
            let _ = write!(out, "{n}"); // writing to a String cannot fail
        }
        Value::String(s) => write_py_str(out, s),
        Value::Array(items) => write_py_items(out, items),
        Value::Object(map) => write_py_pairs(out, map),
    }
}

fn write_py_str(out: &mut String, s: &str) {
    // Python prefers single quotes unless the text contains one and no double quote.
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.reserve(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// The Redis list of `queue` for a message of `priority` (kombu's `_q_for_pri`).
pub fn redis_list(queue: &str, priority: Option<u8>) -> String {
    match priority.unwrap_or(0) {
        0..=2 => queue.to_string(),
        3..=5 => format!("{queue}\x06\x163"),
        6..=8 => format!("{queue}\x06\x166"),
        _ => format!("{queue}\x06\x169"),
    }
}

/// The body's last element (no callbacks, errbacks, chain or chord) and its closing bracket.
const BODY_EMBED: &[u8] = br#",{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]"#;

/// Celery's ISO-8601 with `+00:00`.
fn iso(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

impl TaskMessage {
    /// The body: exactly three elements, `[args, kwargs, embed]`.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BODY_EMBED.len() + 32);
        out.push(b'[');
        // Written in place rather than as a `Value` tree, which copied args and kwargs.
        let written = serde_json::to_writer(&mut out, &self.args)
            .and_then(|()| {
                out.push(b',');
                serde_json::to_writer(&mut out, &self.kwargs)
            })
            .is_ok();
        if !written {
            return b"[[],{},{}]".to_vec(); // unreachable: JSON values always serialize
        }
        out.extend_from_slice(BODY_EMBED);
        out
    }

    /// The headers in the order `apply_async` writes them, then ours.
    pub fn headers(&self) -> Map<String, Value> {
        let mut h = Map::new();
        h.insert("lang".into(), json!("py"));
        h.insert("task".into(), json!(self.task));
        h.insert("id".into(), json!(self.id));
        h.insert("shadow".into(), Value::Null);
        h.insert("eta".into(), Value::Null);
        h.insert(
            "expires".into(),
            self.expires.map(iso).map_or(Value::Null, Value::String),
        );
        h.insert("group".into(), Value::Null);
        h.insert("group_index".into(), Value::Null);
        h.insert("retries".into(), json!(0));
        h.insert("timelimit".into(), self.timelimit());
        h.insert("root_id".into(), json!(self.id));
        h.insert("parent_id".into(), Value::Null);
        h.insert("argsrepr".into(), json!(py_repr_items(&self.args)));
        h.insert("kwargsrepr".into(), json!(py_repr_pairs(&self.kwargs)));
        h.insert("origin".into(), json!(self.origin));
        h.insert("ignore_result".into(), json!(self.options.ignore_result));
        h.insert("replaced_task_nesting".into(), json!(0));
        h.insert("stamped_headers".into(), Value::Null);
        h.insert("stamps".into(), json!({}));
        // Where `apply_async(headers=...)` puts them: after its own (validation keeps the
        // names apart, so none replaces one of Celery's or kube-beat's).
        for (k, v) in &self.options.headers {
            h.insert(k.clone(), v.clone());
        }
        for (k, v) in &self.extra_headers {
            h.insert((*k).into(), json!(v));
        }
        h
    }

    /// Celery's `timelimit` header: `[hard, soft]`, `null` where not set.
    fn timelimit(&self) -> Value {
        json!([self.options.time_limit, self.options.soft_time_limit])
    }

    /// The exchange and routing key as Celery writes them into `delivery_info`: the default
    /// exchange routes by the queue's name.
    pub fn routing(&self) -> (&str, &str) {
        (
            self.options.exchange(),
            self.options.routing_key.as_deref().unwrap_or(&self.queue),
        )
    }

    /// AMQP `expiration`: milliseconds from `now` to `expires`, as a string (RabbitMQ TTL).
    pub fn expiration_ms(&self, now: DateTime<Utc>) -> Option<String> {
        self.expires
            .map(|e| (e - now).num_milliseconds().max(0).to_string())
    }

    /// The Redis list a message goes to: the queue, or its priority bucket (`\x06\x16` + 3/6/9).
    pub fn redis_list(&self) -> String {
        redis_list(&self.queue, self.priority)
    }

    /// The JSON envelope kombu's Redis transport LPUSHes: [`TaskMessage::headers`] and the
    /// properties, in kombu's order. Written by hand, not by serde: every key and constant
    /// went through serde's escaping byte by byte, the largest cost of a burst's encoding
    /// (and a `Value` tree, before that, cost 25 µs a message). The test
    /// `the_envelope_is_byte_for_byte_the_reference` holds it to serde's output.
    pub fn redis_envelope(&self, delivery_tag: &str, now: DateTime<Utc>) -> String {
        let parts = self.parts(now);
        // Sized up front: a burst holds tens of thousands of envelopes, and a buffer left to
        // double as it is written puts a ~1 KB envelope in 2 KB (then copied to shrink it).
        let size = parts.size_hint(self, delivery_tag);
        let mut out = String::with_capacity(size + size / 16);
        parts.write(self, delivery_tag, &mut out);
        if out.capacity() > out.len() + out.len() / 8 {
            out.shrink_to_fit();
        }
        out
    }

    /// What the envelope holds beyond the message's own fields.
    fn parts(&self, now: DateTime<Utc>) -> EnvelopeParts {
        EnvelopeParts {
            body: self.body(),
            expires: self.expires.map(iso),
            expiration: self.expiration_ms(now),
            argsrepr: py_repr_items(&self.args),
            kwargsrepr: py_repr_pairs(&self.kwargs),
        }
    }
}

/// The envelope's computed fields (see [`TaskMessage::redis_envelope`]).
struct EnvelopeParts {
    body: Vec<u8>,
    expires: Option<String>,
    expiration: Option<String>,
    argsrepr: String,
    kwargsrepr: String,
}

/// The envelope's length without its variable fields (measured, see the test
/// `the_size_hint_fits`): its keys, punctuation and constant values.
const ENVELOPE_FIXED: usize = 549;

impl EnvelopeParts {
    /// About the envelope's length (more only where a field needs escaping).
    fn size_hint(&self, m: &TaskMessage, delivery_tag: &str) -> usize {
        ENVELOPE_FIXED
            + self.body.len().div_ceil(3) * 4
            + m.task.len()
            + 3 * m.id.len()
            + self.expires.as_ref().map_or(0, |e| e.len() + 2)
            + self.argsrepr.len()
            + self.kwargsrepr.len()
            + m.origin.len()
            + m.extra_headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 6)
                .sum::<usize>()
            + self.expiration.as_ref().map_or(0, |e| e.len() + 16)
            + m.options.size_hint()
            + m.queue.len()
            + delivery_tag.len()
    }

    fn write(&self, m: &TaskMessage, delivery_tag: &str, out: &mut String) {
        out.push_str(r#"{"body":""#);
        base64::engine::general_purpose::STANDARD.encode_string(&self.body, out);
        out.push_str(r#"","content-encoding":"utf-8","content-type":"application/json","#);
        out.push_str(r#""headers":{"lang":"py","task":"#);
        json_str(out, &m.task);
        out.push_str(r#","id":"#);
        json_str(out, &m.id);
        out.push_str(r#","shadow":null,"eta":null,"expires":"#);
        match &self.expires {
            Some(e) => json_str(out, e),
            None => out.push_str("null"),
        }
        out.push_str(r#","group":null,"group_index":null,"retries":0,"timelimit":"#);
        json_value(out, &m.timelimit());
        out.push_str(r#","root_id":"#);
        json_str(out, &m.id);
        out.push_str(r#","parent_id":null,"argsrepr":"#);
        json_str(out, &self.argsrepr);
        out.push_str(r#","kwargsrepr":"#);
        json_str(out, &self.kwargsrepr);
        out.push_str(r#","origin":"#);
        json_str(out, &m.origin);
        out.push_str(if m.options.ignore_result {
            r#","ignore_result":true,"#
        } else {
            r#","ignore_result":false,"#
        });
        out.push_str(r#""replaced_task_nesting":0,"stamped_headers":null,"stamps":{}"#);
        for (k, v) in &m.options.headers {
            out.push(',');
            json_str(out, k);
            out.push(':');
            json_value(out, v);
        }
        for (k, v) in &m.extra_headers {
            out.push(',');
            json_str(out, k);
            out.push(':');
            json_str(out, v);
        }
        out.push_str(r#"},"properties":{"correlation_id":"#);
        json_str(out, &m.id);
        out.push_str(r#","reply_to":"","delivery_mode":2"#);
        if let Some(e) = &self.expiration {
            out.push_str(r#","expiration":"#);
            json_str(out, e);
        }
        let (exchange, routing_key) = m.routing();
        out.push_str(r#","delivery_info":{"exchange":"#);
        json_str(out, exchange);
        out.push_str(r#","routing_key":"#);
        json_str(out, routing_key);
        let _ = write!(out, r#"}},"priority":{}"#, m.priority.unwrap_or(0)); // cannot fail
        out.push_str(r#","body_encoding":"base64","delivery_tag":"#);
        json_str(out, delivery_tag);
        out.push_str("}}");
    }
}

/// `s` as a JSON string, as serde_json writes it: copied as is unless it holds a quote, a
/// backslash or a control character (rare in task names, ids and reprs), escaped by serde then.
fn json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        match serde_json::to_string(s) {
            Ok(escaped) => out.push_str(&escaped),
            Err(_) => out.push_str(r#""""#), // unreachable: a str always serializes
        }
    }
}

/// Any JSON value, as serde_json writes it (user headers, the time limits: rare and small).
fn json_value(out: &mut String, v: &Value) {
    match serde_json::to_string(v) {
        Ok(s) => out.push_str(&s),
        Err(_) => out.push_str("null"), // unreachable: a Value always serializes
    }
}

/// `py_repr` of a list, without copying it into a `Value` first.
fn py_repr_items(items: &[Value]) -> String {
    let mut out = String::new();
    write_py_items(&mut out, items);
    out
}

/// `py_repr` of a dict, without copying it into a `Value` first.
fn py_repr_pairs(map: &Map<String, Value>) -> String {
    let mut out = String::new();
    write_py_pairs(&mut out, map);
    out
}

fn write_py_items(out: &mut String, items: &[Value]) {
    out.push('[');
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_py_repr(out, v);
    }
    out.push(']');
}

fn write_py_pairs(out: &mut String, map: &Map<String, Value>) {
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_py_str(out, k);
        out.push_str(": ");
        write_py_repr(out, v);
    }
    out.push('}');
}

/// The remote-control body of a `revoke` for every worker (`destination: null`), as
/// `app.control.revoke(task_id, terminate=terminate)` sends it: `terminate` also stops a run
/// already executing (SIGTERM to its pool process); without it, only a run not yet started is
/// dropped.
pub fn revoke_body(task_id: &str, terminate: bool) -> Vec<u8> {
    let body = json!({
        "method": "revoke",
        "arguments": {"task_id": task_id, "terminate": terminate, "signal": "SIGTERM"},
        "destination": null, "pattern": null, "matcher": null,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The Redis envelope of a remote-control message, as kombu PUBLISHes it on `/{db}.celery.pidbox`.
/// Workers drop it after `expires` (one second, like `app.control`).
pub fn pidbox_envelope(body: &[u8], delivery_tag: &str, now: DateTime<Utc>) -> String {
    pidbox_envelope_until(
        body,
        delivery_tag,
        now.timestamp_millis() as f64 / 1000.0 + 1.0,
    )
}

/// [`pidbox_envelope`] with its `expires` header (Unix seconds) given: the workers drop the
/// message unread after it.
pub fn pidbox_envelope_until(body: &[u8], delivery_tag: &str, expires: f64) -> String {
    json!({
        "body": base64::engine::general_purpose::STANDARD.encode(body),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"clock": 1, "expires": expires},
        "properties": {
            "delivery_mode": 2,
            "delivery_info": {"exchange": "celery.pidbox", "routing_key": ""},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": delivery_tag,
        },
    })
    .to_string()
}

#[cfg(test)]
mod tests;
