//! Tests of `celery::message`, against bytes captured from real Celery.
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
        options: SendOptions::default(),
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
    let (exchange, routing_key) = m.routing();
    properties.insert(
        "delivery_info".into(),
        json!({"exchange": exchange, "routing_key": routing_key}),
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
    let env: Value = serde_json::from_str(&vector().redis_envelope("tag-1", now)).expect("json");
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
    let ours: Value = serde_json::from_slice(&revoke_body("abc-123", true)).expect("json");
    assert_eq!(ours, captured);
    // `app.control.revoke('abc-123')`: the signal is sent (and unused) without terminate.
    let ours: Value = serde_json::from_slice(&revoke_body("abc-123", false)).expect("json");
    assert_eq!(
        ours["arguments"],
        json!({"task_id": "abc-123", "terminate": false, "signal": "SIGTERM"})
    );
    let env: Value = serde_json::from_str(&pidbox_envelope(b"{}", "t", Utc::now())).expect("json");
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

/// Captured from `app.tasks["kb.echo"].apply_async(args=["a"], kwargs={"k": 1},
/// task_id="cap-1", queue="kbt-cap-q", exchange="kbt-cap-x", routing_key="kbt-cap-rk",
/// headers={"tenant": "acme", "n": 3, "flag": True, "list": [1, "x"], "obj": {"a": None}},
/// time_limit=60, soft_time_limit=30, ignore_result=True)` on the Redis transport (Celery 5.7.0,
/// kombu 5.7.0; `tests/celery_app/capture.py`), with `_kombu.binding.kbt-cap-x` holding
/// `kbt-cap-rk\x06\x16\x06\x16kbt-cap-bound`: the value RPOPped from `kbt-cap-bound`.
/// `tests/message_options.rs` captures it again live and compares.
const CAPTURED_OPTIONS_ENVELOPE: &str = r#"{"body": "W1siYSJdLCB7ImsiOiAxfSwgeyJjYWxsYmFja3MiOiBudWxsLCAiZXJyYmFja3MiOiBudWxsLCAiY2hhaW4iOiBudWxsLCAiY2hvcmQiOiBudWxsfV0=", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "kb.echo", "id": "cap-1", "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null, "retries": 0, "timelimit": [60, 30], "root_id": "cap-1", "parent_id": null, "argsrepr": "['a']", "kwargsrepr": "{'k': 1}", "origin": "gen25802@vm", "ignore_result": true, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}, "tenant": "acme", "n": 3, "flag": true, "list": [1, "x"], "obj": {"a": null}}, "properties": {"correlation_id": "cap-1", "reply_to": "70643ad0-7fba-3a35-99f5-9122d4eb868b", "delivery_mode": 2, "delivery_info": {"exchange": "kbt-cap-x", "routing_key": "kbt-cap-rk"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "54185a29-942a-475d-a6fb-b89fa0d8fc58"}}"#;

/// The same call on RabbitMQ, read back with py-amqp's `basic_get`: each header with the Python
/// type py-amqp decoded its AMQP type tag into (`S`→str, `I`/`l`→int, `t`→bool, `V`→None,
/// `A`→list, `F`→dict). Published to exchange `kbt-cap-x`, routing key `kbt-cap-rk`.
const CAPTURED_OPTIONS_AMQP_HEADERS: &str = r#"[["lang", ["str", "py"]], ["task", ["str", "kb.echo"]], ["id", ["str", "cap-1"]], ["shadow", ["none", null]], ["eta", ["none", null]], ["expires", ["none", null]], ["group", ["none", null]], ["group_index", ["none", null]], ["retries", ["int", 0]], ["timelimit", ["list", [["int", 60], ["int", 30]]]], ["root_id", ["str", "cap-1"]], ["parent_id", ["none", null]], ["argsrepr", ["str", "['a']"]], ["kwargsrepr", ["str", "{'k': 1}"]], ["origin", ["str", "gen25957@vm"]], ["ignore_result", ["bool", true]], ["replaced_task_nesting", ["int", 0]], ["stamped_headers", ["none", null]], ["stamps", ["dict", []]], ["tenant", ["str", "acme"]], ["n", ["int", 3]], ["flag", ["bool", true]], ["list", ["list", [["int", 1], ["str", "x"]]]], ["obj", ["dict", [["a", ["none", null]]]]]]"#;

/// The message `capture.py` sent, as kube-beat builds it.
pub(crate) fn captured_options_message(origin: &str) -> TaskMessage {
    TaskMessage {
        id: "cap-1".into(),
        task: "kb.echo".into(),
        args: vec![json!("a")],
        kwargs: json!({"k": 1}).as_object().cloned().unwrap_or_default(),
        queue: "kbt-cap-q".into(),
        priority: None,
        expires: None,
        origin: origin.into(),
        extra_headers: Vec::new(),
        options: SendOptions {
            exchange: Some("kbt-cap-x".into()),
            routing_key: Some("kbt-cap-rk".into()),
            headers: vec![
                ("tenant".into(), json!("acme")),
                ("n".into(), json!(3)),
                ("flag".into(), json!(true)),
                ("list".into(), json!([1, "x"])),
                ("obj".into(), json!({"a": null})),
            ],
            time_limit: Some(60),
            soft_time_limit: Some(30),
            ignore_result: true,
        },
    }
}

/// A JSON envelope with what differs by design between two producers made equal: the
/// producer's `reply_to` (kube-beat uses no rpc:// backend and writes `""`) and the body's
/// spacing (Python's `json.dumps` writes `", "`; the parsed body must be equal). The
/// `delivery_tag` and `origin` are fresh per message and process and are passed in equal.
/// Returns the canonical text: serde_json keeps key order, so equal text means equal order.
pub(crate) fn canonical_envelope(envelope: &str) -> String {
    let mut v: Value = serde_json::from_str(envelope).expect("envelope json");
    v["properties"]["reply_to"] = json!("");
    let body = base64::engine::general_purpose::STANDARD
        .decode(v["body"].as_str().expect("body"))
        .expect("b64");
    let body: Value = serde_json::from_slice(&body).expect("body json");
    v["body"] = body;
    v.to_string()
}

#[test]
fn options_envelope_matches_the_captured_apply_async() {
    let m = captured_options_message("gen25802@vm");
    let ours = m.redis_envelope("54185a29-942a-475d-a6fb-b89fa0d8fc58", envelope_time());
    assert_eq!(
        canonical_envelope(&ours),
        canonical_envelope(CAPTURED_OPTIONS_ENVELOPE)
    );
    // And the fast writer still equals the reference writer with options set.
    assert_eq!(
        ours,
        reference_envelope(&m, "54185a29-942a-475d-a6fb-b89fa0d8fc58", envelope_time())
    );
    assert_eq!(m.routing(), ("kbt-cap-x", "kbt-cap-rk"));
    // The body's bytes: Celery's with its spacing removed (JSON text, no other difference).
    let captured: Value = serde_json::from_str(CAPTURED_OPTIONS_ENVELOPE).expect("json");
    let body = base64::engine::general_purpose::STANDARD
        .decode(captured["body"].as_str().expect("b64"))
        .expect("b64");
    let compact = String::from_utf8(body)
        .expect("utf-8")
        .replace(", ", ",")
        .replace(": ", ":");
    assert_eq!(String::from_utf8(m.body()).expect("utf-8"), compact);
}

/// A header value as the capture writes it: `[python type, value]`.
fn typed(v: &lapin::types::AMQPValue) -> Value {
    use lapin::types::AMQPValue as A;
    match v {
        A::LongString(s) => json!(["str", String::from_utf8_lossy(s.as_bytes())]),
        A::LongInt(i) => json!(["int", i]),
        A::LongLongInt(i) => json!(["int", i]),
        A::Boolean(b) => json!(["bool", b]),
        A::Void => json!(["none", null]),
        A::Double(f) => json!(["float", f]),
        A::FieldArray(a) => json!(["list", a.as_slice().iter().map(typed).collect::<Vec<_>>()]),
        A::FieldTable(t) => json!([
            "dict",
            t.inner()
                .iter()
                .map(|(k, v)| json!([k.as_str(), typed(v)]))
                .collect::<Vec<_>>()
        ]),
        other => json!(["other", format!("{other:?}")]),
    }
}

#[test]
fn options_amqp_headers_match_the_captured_apply_async() {
    let m = captured_options_message("gen25957@vm");
    let table = crate::celery::headers_table(&m.headers());
    let ours: Vec<Value> = table
        .inner()
        .iter()
        .map(|(k, v)| json!([k.as_str(), typed(v)]))
        .collect();
    let mut captured: Vec<Value> =
        serde_json::from_str(CAPTURED_OPTIONS_AMQP_HEADERS).expect("json");
    // lapin's field table is sorted by name (py-amqp keeps the dict's order): workers read the
    // headers by name, so the order is the one difference allowed here.
    let name = |v: &Value| v[0].as_str().unwrap_or_default().to_string();
    captured.sort_by_key(name);
    let mut ours = ours;
    ours.sort_by_key(name);
    assert_eq!(
        Value::Array(ours).to_string(),
        Value::Array(captured).to_string()
    );
}

#[test]
fn default_options_change_nothing() {
    // No options: the default exchange, the queue as routing key, Celery's default headers.
    let m = vector();
    assert_eq!(m.routing(), ("", "ad_queue"));
    let h = m.headers();
    assert_eq!(h["timelimit"], json!([null, null]));
    assert_eq!(h["ignore_result"], json!(false));
    // Only a hard or only a soft limit: the other stays null, as apply_async writes it.
    let mut m = vector();
    m.options.soft_time_limit = Some(5);
    assert_eq!(m.headers()["timelimit"], json!([null, 5]));
    let env: Value = serde_json::from_str(&m.redis_envelope("t", envelope_time())).expect("json");
    assert_eq!(env["headers"]["timelimit"], json!([null, 5]));
}
