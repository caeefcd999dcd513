use super::*;
use lapin::types::ShortString;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/celery-remote-control/"
);

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{FIXTURES}{name}")).expect("fixture");
    serde_json::from_str(&text).expect("fixture json")
}

/// The tasks kb_worker.py registers (the captured worker's), hostile name included.
const KB_TASKS: [&str; 9] = [
    "kb.echo",
    "kb.fail",
    "kb.hostile'\"; DROP TABLE celery_invocations; -- \\ ünï ✓",
    "kb.retry_once",
    "kb.sleep",
    "services.auth_service.auth_service.cleanup_all_expired_sessions",
    "services.desktop_session_service.DesktopSessionService.cleanup_stale_sessions",
    "tasks.ad_sync_tasks.sync_domain_users_task",
    "tasks.deployment_tasks.cleanup_stale_deployment_jobs",
];

/// What `celery inspect` broadcast, decoded, equals what we send (but for the ticket and the
/// reply key, which are fresh each time).
#[test]
fn requests_match_celery_inspect_on_both_brokers() {
    for question in Question::ALL {
        let method = question.method();
        let redis = fixture(&format!("redis-{method}-request.json"));
        assert_eq!(redis["command"], "PUBLISH");
        assert_eq!(redis["key"], "/5.celery.pidbox");
        let envelope: Value =
            serde_json::from_str(redis["value"].as_str().expect("value")).expect("envelope");
        assert_eq!(
            envelope["properties"]["delivery_info"]["exchange"],
            BROADCAST_EXCHANGE
        );
        let body = base64::engine::general_purpose::STANDARD
            .decode(envelope["body"].as_str().expect("body"))
            .expect("base64");
        let amqp = fixture(&format!("amqp-{method}-request.json"));
        assert_eq!(amqp["exchange"], BROADCAST_EXCHANGE);
        assert_eq!(amqp["properties"]["content_type"], "application/json");
        for captured in [
            serde_json::from_slice::<Value>(&body).expect("redis body"),
            serde_json::from_str::<Value>(amqp["body"].as_str().expect("amqp body"))
                .expect("amqp body json"),
        ] {
            let ticket = captured["ticket"].as_str().expect("ticket");
            let key = captured["reply_to"]["routing_key"].as_str().expect("key");
            let ours: Value =
                serde_json::from_slice(&request_body(question, ticket, key)).expect("ours");
            assert_eq!(ours, captured, "{method}");
        }
    }
}

/// Our Redis envelope is the one kombu PUBLISHed, but for the delivery tag and expiry.
#[test]
fn redis_envelope_matches_kombus() {
    let redis = fixture("redis-registered-request.json");
    let mut theirs: Value =
        serde_json::from_str(redis["value"].as_str().expect("value")).expect("envelope");
    let body = base64::engine::general_purpose::STANDARD
        .decode(theirs["body"].as_str().expect("body"))
        .expect("base64");
    let tag = theirs["properties"]["delivery_tag"]
        .as_str()
        .expect("tag")
        .to_string();
    let expires = theirs["headers"]["expires"].as_f64().expect("expires");
    let ours: Value = serde_json::from_str(&crate::celery::message::pidbox_envelope_until(
        &body, &tag, expires,
    ))
    .expect("ours");
    theirs["body"] = ours["body"].clone(); // same bytes, key order of the JSON aside
    assert_eq!(ours, theirs);
}

fn redis_reply(method: &str) -> (String, Vec<u8>) {
    let redis = fixture(&format!("redis-{method}-reply.json"));
    assert_eq!(redis["command"], "LPUSH");
    let key = redis["key"].as_str().expect("key");
    assert!(key.ends_with(".reply.celery.pidbox"), "{key}");
    decode_redis_envelope(redis["value"].as_str().expect("value").as_bytes()).expect("decoded")
}

fn amqp_reply(method: &str) -> (String, Vec<u8>) {
    let amqp = fixture(&format!("amqp-{method}-reply.json"));
    assert_eq!(amqp["exchange"], REPLY_EXCHANGE);
    let mut headers = FieldTable::default();
    let ticket = amqp["properties"]["application_headers"]["ticket"]
        .as_str()
        .expect("ticket");
    headers.insert(
        ShortString::from("ticket"),
        AMQPValue::LongString(ticket.into()),
    );
    headers.insert(ShortString::from("clock"), AMQPValue::LongInt(15));
    (
        amqp_ticket(Some(&headers)).expect("ticket decoded"),
        amqp["body"].as_str().expect("body").as_bytes().to_vec(),
    )
}

#[test]
fn captured_replies_decode_on_both_brokers() {
    for (broker, host, replies) in [
        (
            "redis",
            "capw@vm",
            [redis_reply("registered"), redis_reply("active_queues")],
        ),
        (
            "amqp",
            "capwa@vm",
            [amqp_reply("registered"), amqp_reply("active_queues")],
        ),
    ] {
        let [(t1, registered), (t2, queues)] = replies;
        let mut c = Collector::new(&t1, &t2);
        // Out of order, with a stray ticket's reply between: only the tickets asked count.
        c.offer(&t2, &queues);
        c.offer("another-inspection", &registered);
        c.offer(&t1, &registered);
        assert_eq!(c.dropped, 1, "{broker}");
        let reports = c.reports();
        assert_eq!(
            reports,
            vec![WorkerReport {
                hostname: host.into(),
                registered: KB_TASKS.iter().map(|s| s.to_string()).collect(),
                queues: vec!["capq".into(), "capq2".into()],
            }],
            "{broker}"
        );
    }
}

#[test]
fn a_worker_that_answered_one_question_is_not_reported() {
    let (t1, registered) = redis_reply("registered");
    let mut c = Collector::new(&t1, "other");
    c.offer(&t1, &registered);
    assert_eq!(c.reports(), vec![]);
}

#[test]
fn the_first_answer_of_a_worker_counts() {
    let mut c = Collector::new("r", "q");
    c.offer("r", br#"{"w@h": ["a"]}"#);
    c.offer("r", br#"{"w@h": ["b"]}"#);
    c.offer("q", br#"{"w@h": [{"name": "q1"}]}"#);
    let r = c.reports();
    assert_eq!(r[0].registered, vec!["a".to_string()]);
}

#[test]
fn malformed_replies_are_dropped_never_panic() {
    let mut c = Collector::new("r", "q");
    for body in [
        &b""[..],
        b"null",
        b"[]",
        b"{}",
        b"\xff\xfe",
        br#"{"a@h": ["x"], "b@h": ["y"]}"#, // two workers in one reply
        br#"{"": ["x"]}"#,
        br#"{"w@h": "kb.echo"}"#,
        br#"{"w@h": {"name": "q"}}"#,
        br#"{"w@h": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["#,
    ] {
        c.offer("r", body);
    }
    let deep = "[".repeat(100_000);
    c.offer("q", deep.as_bytes());
    assert_eq!(c.dropped, 11);
    assert_eq!(c.reports(), vec![]);
    // Items that are not names are skipped, the rest kept.
    let r = decode_reply_body(
        Question::ActiveQueues,
        "t",
        br#"{"w@h": [{"name": 3}, {"nom": "x"}, "q", {"name": ""}, {"name": "ok"}]}"#,
    )
    .expect("decoded");
    assert_eq!(r.names, vec!["ok".to_string()]);
    assert_eq!(decode_redis_envelope(b"{\"body\": 1}"), None);
    assert_eq!(
        decode_redis_envelope(br#"{"body": "!!", "headers": {"ticket": "t"}, "properties": {"body_encoding": "base64"}}"#),
        None
    );
    assert_eq!(amqp_ticket(None), None);
}

#[test]
fn replies_are_bounded() {
    // A reply over the byte bound is dropped whole.
    let huge = format!(r#"{{"w@h": ["{}"]}}"#, "x".repeat(MAX_REPLY_BYTES));
    assert_eq!(
        decode_reply_body(Question::Registered, "t", huge.as_bytes()),
        None
    );
    // Names beyond MAX_NAME are dropped, not cut into another name; a hostname too.
    let long = "t".repeat(MAX_NAME + 1);
    let r = decode_reply_body(
        Question::Registered,
        "t",
        format!(r#"{{"w@h": ["{long}", "ok"]}}"#).as_bytes(),
    )
    .expect("decoded");
    assert_eq!(r.names, vec!["ok".to_string()]);
    assert_eq!(
        decode_reply_body(
            Question::Registered,
            "t",
            format!(r#"{{"{long}": ["ok"]}}"#).as_bytes()
        ),
        None
    );
    // At most MAX_TASKS tasks per worker.
    let many: Vec<String> = (0..MAX_TASKS + 5).map(|i| format!("t{i}")).collect();
    let body = serde_json::to_vec(&json!({"w@h": many})).expect("json");
    assert!(body.len() < MAX_REPLY_BYTES);
    let r = decode_reply_body(Question::Registered, "t", &body).expect("decoded");
    assert_eq!(r.names.len(), MAX_TASKS);
    // At most MAX_WORKERS workers; at most MAX_REPLIES replies read.
    let mut c = Collector::new("r", "q");
    for i in 0..MAX_WORKERS + 60 {
        c.offer("r", format!(r#"{{"w{i}@h": ["a"]}}"#).as_bytes());
        c.offer(
            "q",
            format!(r#"{{"w{i}@h": [{{"name": "q"}}]}}"#).as_bytes(),
        );
    }
    assert!(!c.wants_more());
    assert_eq!(c.reports().len(), MAX_WORKERS);
}

#[test]
fn the_redis_reply_binding_is_kombus() {
    // As kombu SADDed it for `celery inspect` (docs/celery-remote-control.md).
    let key = "4c09dae6-d88b-3442-91a2-d0475e9ff4d0";
    assert_eq!(
        redis_reply_binding(key),
        "4c09dae6-d88b-3442-91a2-d0475e9ff4d0\x06\x16\x06\x164c09dae6-d88b-3442-91a2-d0475e9ff4d0.reply.celery.pidbox"
    );
    let reply = fixture("redis-registered-reply.json");
    assert_eq!(reply["key"].as_str(), Some(reply_queue(key).as_str()));
}
