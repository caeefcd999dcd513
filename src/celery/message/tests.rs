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
    let ours: Value = serde_json::from_slice(&revoke_body("abc-123")).expect("json");
    assert_eq!(ours, captured);
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
