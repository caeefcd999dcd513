//! Celery protocol 2 task messages, exactly as `celery-wire.md` captured them from real Celery.
//! A malformed message can crash every worker that receives it, so this is pure and unit-tested
//! against the captured vectors.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use std::fmt::Write as _;

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
        h.insert("timelimit".into(), json!([null, null]));
        h.insert("root_id".into(), json!(self.id));
        h.insert("parent_id".into(), Value::Null);
        h.insert("argsrepr".into(), json!(py_repr_items(&self.args)));
        h.insert("kwargsrepr".into(), json!(py_repr_pairs(&self.kwargs)));
        h.insert("origin".into(), json!(self.origin));
        h.insert("ignore_result".into(), json!(false));
        h.insert("replaced_task_nesting".into(), json!(0));
        h.insert("stamped_headers".into(), Value::Null);
        h.insert("stamps".into(), json!({}));
        for (k, v) in &self.extra_headers {
            h.insert((*k).into(), json!(v));
        }
        h
    }

    /// AMQP `expiration`: milliseconds from `now` to `expires`, as a string (RabbitMQ TTL).
    pub fn expiration_ms(&self, now: DateTime<Utc>) -> Option<String> {
        self.expires
            .map(|e| (e - now).num_milliseconds().max(0).to_string())
    }

    /// The Redis list a message goes to: the queue, or its priority bucket (`\x06\x16` + 3/6/9).
    pub fn redis_list(&self) -> String {
        match self.priority.unwrap_or(0) {
            0..=2 => self.queue.clone(),
            3..=5 => format!("{}\x06\x163", self.queue),
            6..=8 => format!("{}\x06\x166", self.queue),
            _ => format!("{}\x06\x169", self.queue),
        }
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
        out.push_str(r#","group":null,"group_index":null,"retries":0,"timelimit":[null,null],"#);
        out.push_str(r#""root_id":"#);
        json_str(out, &m.id);
        out.push_str(r#","parent_id":null,"argsrepr":"#);
        json_str(out, &self.argsrepr);
        out.push_str(r#","kwargsrepr":"#);
        json_str(out, &self.kwargsrepr);
        out.push_str(r#","origin":"#);
        json_str(out, &m.origin);
        out.push_str(r#","ignore_result":false,"replaced_task_nesting":0,"#);
        out.push_str(r#""stamped_headers":null,"stamps":{}"#);
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
        out.push_str(r#","delivery_info":{"exchange":"","routing_key":"#);
        json_str(out, &m.queue);
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

/// The remote-control body of a `revoke` for every worker (`destination: null`).
pub fn revoke_body(task_id: &str) -> Vec<u8> {
    let body = json!({
        "method": "revoke",
        "arguments": {"task_id": task_id, "terminate": true, "signal": "SIGTERM"},
        "destination": null, "pattern": null, "matcher": null,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The Redis envelope of a remote-control message, as kombu PUBLISHes it on `/{db}.celery.pidbox`.
/// Workers drop it after `expires` (one second, like `app.control`).
pub fn pidbox_envelope(body: &[u8], delivery_tag: &str, now: DateTime<Utc>) -> String {
    let expires = now.timestamp_millis() as f64 / 1000.0 + 1.0;
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
mod tests {
    use super::*;

    fn vector() -> TaskMessage {
        TaskMessage {
            id: "aaaaaaaa-0000-4000-8000-000000000002".into(),
            task: "tasks.ad_sync_tasks.sync_domain_users_task".into(),
            args: vec![json!("corp.example.com")],
            kwargs: json!({"mode": "full"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            queue: "ad_queue".into(),
            priority: Some(5),
            expires: Some(
                DateTime::parse_from_rfc3339("2030-01-02T04:04:05Z")
                    .expect("t")
                    .with_timezone(&Utc),
            ),
            origin: "kube-beat@test".into(),
            extra_headers: vec![("kubebeat_job", "ns/job".into())],
        }
    }

    #[test]
    fn body_matches_the_captured_vector() {
        // celery-wire.md §2: the base64 body decodes to exactly this.
        let captured = base64::engine::general_purpose::STANDARD
            .decode("W1siY29ycC5leGFtcGxlLmNvbSJdLCB7Im1vZGUiOiAiZnVsbCJ9LCB7ImNhbGxiYWNrcyI6IG51bGwsICJlcnJiYWNrcyI6IG51bGwsICJjaGFpbiI6IG51bGwsICJjaG9yZCI6IG51bGx9XQ==")
            .expect("b64");
        let captured: Value = serde_json::from_slice(&captured).expect("json");
        let ours: Value = serde_json::from_slice(&vector().body()).expect("json");
        assert_eq!(ours, captured);
        assert_eq!(
            ours.as_array().map(Vec::len),
            Some(3),
            "exactly three elements"
        );
    }

    #[test]
    fn headers_match_the_captured_vector() {
        let h = vector().headers();
        let keys: Vec<&str> = h.keys().map(String::as_str).collect();
        assert_eq!(
            keys[..19],
            [
                "lang",
                "task",
                "id",
                "shadow",
                "eta",
                "expires",
                "group",
                "group_index",
                "retries",
                "timelimit",
                "root_id",
                "parent_id",
                "argsrepr",
                "kwargsrepr",
                "origin",
                "ignore_result",
                "replaced_task_nesting",
                "stamped_headers",
                "stamps"
            ]
        );
        assert_eq!(h["task"], "tasks.ad_sync_tasks.sync_domain_users_task");
        assert_eq!(h["id"], h["root_id"]);
        assert_eq!(h["argsrepr"], "['corp.example.com']");
        assert_eq!(h["kwargsrepr"], "{'mode': 'full'}");
        assert_eq!(h["expires"], "2030-01-02T04:04:05.000000+00:00");
        assert_eq!(h["timelimit"], json!([null, null]));
        assert_eq!(h["kubebeat_job"], "ns/job");
    }

    /// The envelope as a `Value` tree, as kube-beat built it until the envelope was written
    /// straight from the message: the reference the fast one must equal byte for byte.
    fn reference_envelope(m: &TaskMessage, tag: &str, now: DateTime<Utc>) -> String {
        let mut properties = Map::new();
        properties.insert("correlation_id".into(), json!(m.id));
        properties.insert("reply_to".into(), json!(""));
        properties.insert("delivery_mode".into(), json!(2));
        if let Some(exp) = m.expiration_ms(now) {
            properties.insert("expiration".into(), json!(exp));
        }
        properties.insert(
            "delivery_info".into(),
            json!({"exchange": "", "routing_key": m.queue}),
        );
        properties.insert("priority".into(), json!(m.priority.unwrap_or(0)));
        properties.insert("body_encoding".into(), json!("base64"));
        properties.insert("delivery_tag".into(), json!(tag));
        // The body as a `Value` tree too, as it was built before it was written in place.
        let body = json!([
            m.args,
            m.kwargs,
            {"callbacks": null, "errbacks": null, "chain": null, "chord": null}
        ]);
        json!({
            "body": base64::engine::general_purpose::STANDARD.encode(body.to_string()),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": m.headers(),
            "properties": properties,
        })
        .to_string()
    }

    fn envelope_time() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2030-01-02T03:04:05Z")
            .expect("t")
            .with_timezone(&Utc)
    }

    /// No priority, expiry, arguments or extra headers.
    fn plain() -> TaskMessage {
        TaskMessage {
            priority: None,
            expires: None,
            args: Vec::new(),
            kwargs: Map::new(),
            extra_headers: Vec::new(),
            ..vector()
        }
    }

    #[test]
    fn the_envelope_is_byte_for_byte_the_reference() {
        let (now, plain) = (envelope_time(), plain());
        let hostile = TaskMessage {
            task: "evil\"task\n\u{0}".into(),
            args: vec![
                json!("it's"),
                json!({"a": [1, 2.5, null, true]}),
                json!("\u{7f}"),
            ],
            kwargs: json!({"q": "'; DROP TABLE x; --", "é": "\\"})
                .as_object()
                .cloned()
                .expect("object"),
            queue: "q\"ueue".into(),
            origin: "o\\rigin\t\u{1f}".into(),
            extra_headers: vec![("kubebeat_job", "ns/\u{1}job\"".into())],
            priority: Some(9),
            ..vector()
        };
        for m in [vector(), plain, hostile] {
            assert_eq!(
                m.redis_envelope("tag-1", now),
                reference_envelope(&m, "tag-1", now)
            );
        }
    }

    /// The envelope's buffer is sized from its fields: never too small for plain ones (it
    /// would be copied as it grows), never much too large (a burst holds many).
    #[test]
    fn the_size_hint_fits() {
        let (now, plain) = (envelope_time(), plain());
        let long = TaskMessage {
            args: vec![json!("x".repeat(5_000))],
            extra_headers: vec![
                ("kubebeat_job", "namespace/a-long-job-name".into()),
                ("kubebeat_slot", "2030-01-02T03:04:05Z".into()),
            ],
            ..vector()
        };
        for m in [vector(), plain, long] {
            let envelope = m.redis_envelope("0b1c5f8e-3c1f-4d2e-9a57-6f0e2d3c4b5a", now);
            let written = envelope.len();
            let capacity = envelope.capacity();
            assert!(capacity >= written);
            assert!(
                capacity <= written + written / 8,
                "{capacity} bytes held for {written}"
            );
            // The hint itself: a guess only where the JSON escapes something.
            let hint = m
                .parts(now)
                .size_hint(&m, "0b1c5f8e-3c1f-4d2e-9a57-6f0e2d3c4b5a");
            assert!(
                hint.abs_diff(written) <= 16,
                "hint {hint}, written {written}"
            );
        }
    }

    #[test]
    fn redis_envelope_has_what_workers_require() {
        let now = DateTime::parse_from_rfc3339("2030-01-02T03:04:05Z")
            .expect("t")
            .with_timezone(&Utc);
        let env: Value =
            serde_json::from_str(&vector().redis_envelope("tag-1", now)).expect("json");
        assert_eq!(env["content-type"], "application/json");
        assert_eq!(env["content-encoding"], "utf-8");
        assert_eq!(env["properties"]["delivery_tag"], "tag-1");
        assert_eq!(
            env["properties"]["delivery_info"],
            json!({"exchange": "", "routing_key": "ad_queue"})
        );
        assert_eq!(env["properties"]["body_encoding"], "base64");
        assert_eq!(env["properties"]["priority"], 5);
        assert_eq!(env["properties"]["expiration"], "3600000");
        assert_eq!(
            env["headers"]["task"],
            "tasks.ad_sync_tasks.sync_domain_users_task"
        );
        assert_eq!(env["headers"]["id"], "aaaaaaaa-0000-4000-8000-000000000002");
    }

    #[test]
    fn priority_buckets() {
        let mut m = vector();
        for (p, list) in [
            (0, "ad_queue"),
            (2, "ad_queue"),
            (3, "ad_queue\x06\x163"),
            (5, "ad_queue\x06\x163"),
            (6, "ad_queue\x06\x166"),
            (8, "ad_queue\x06\x166"),
            (9, "ad_queue\x06\x169"),
        ] {
            m.priority = Some(p);
            assert_eq!(m.redis_list(), list, "priority {p}");
        }
        m.priority = None;
        assert_eq!(m.redis_list(), "ad_queue");
    }

    #[test]
    fn hostile_values_stay_data() {
        let mut m = vector();
        m.task = "evil\"task\n\u{0}".into();
        m.kwargs = json!({"q": "'; DROP TABLE x; --", "nl": "a\nb", "nul": "\u{0}"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let env: Value =
            serde_json::from_str(&m.redis_envelope("t", Utc::now())).expect("still valid JSON");
        assert_eq!(env["headers"]["task"], "evil\"task\n\u{0}");
        let body = base64::engine::general_purpose::STANDARD
            .decode(env["body"].as_str().expect("b64"))
            .expect("b64");
        let body: Value = serde_json::from_slice(&body).expect("json body");
        assert_eq!(body[1]["q"], "'; DROP TABLE x; --");
    }

    #[test]
    fn revoke_matches_what_celery_sends() {
        // Captured from `app.control.revoke('abc-123', terminate=True, signal='SIGTERM')`.
        let captured: Value = serde_json::from_str(r#"{"method": "revoke", "arguments": {"task_id": "abc-123", "terminate": true, "signal": "SIGTERM"}, "destination": null, "pattern": null, "matcher": null}"#).expect("json");
        let ours: Value = serde_json::from_slice(&revoke_body("abc-123")).expect("json");
        assert_eq!(ours, captured);
        let env: Value =
            serde_json::from_str(&pidbox_envelope(b"{}", "t", Utc::now())).expect("json");
        assert_eq!(
            env["properties"]["delivery_info"],
            json!({"exchange": "celery.pidbox", "routing_key": ""})
        );
        assert_eq!(env["headers"]["clock"], 1);
        assert!(env["headers"]["expires"].is_f64());
    }

    #[test]
    fn python_repr() {
        assert_eq!(
            py_repr(&json!([1, "a", null, true, {"k": [1.5]}])),
            "[1, 'a', None, True, {'k': [1.5]}]"
        );
        assert_eq!(py_repr(&json!("it's")), "\"it's\"");
        assert_eq!(py_repr(&json!("a\nb")), "'a\\nb'");
        assert_eq!(py_repr(&json!([])), "[]");
    }
}
