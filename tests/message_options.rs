//! Message options (`exchange`, `routingKey`, `headers`, `timeLimit`, `softTimeLimit`,
//! `ignoreResult`): kube-beat's messages against messages of real `apply_async` calls with the
//! same options, captured live on both brokers; and jobs with these options dispatched by the
//! operator to a real Celery worker, which sees them.

mod common;

use std::{process::Command, time::Duration};

use base64::Engine;
use common::{Invocation, Worker, assert_no_duplicates, env, eventually, fixture, ok, unique};
use kube_beat::celery::{Publisher, SendOptions, TaskMessage};
use serde_json::{Value, json};

/// Run `tests/celery_app/capture.py` (Celery's own `apply_async`, then a read-back).
fn capture(broker: &str, opts: &Value) -> Value {
    let env = env();
    let out = Command::new(env.celery_venv.join("bin/python"))
        .arg("capture.py")
        .arg(opts.to_string())
        .current_dir(env.repo.join("tests/celery_app"))
        .env("CELERY_BROKER_URL", broker)
        .env("KB_RECORD_DSN", "unused")
        .output()
        .expect("running capture.py");
    serde_json::from_str(ok(&out).trim()).expect("capture output")
}

/// The options of the capture, as `apply_async` arguments and as kube-beat's.
fn options(exchange: &str, routing_key: &str) -> (Value, SendOptions) {
    let headers = json!({"kbt_tenant": "acme", "kbt_n": 3, "kbt_flag": true,
                         "kbt_list": [1, "x"], "kbt_obj": {"a": null}, "kbt_big": 5_000_000_000_i64});
    let call = json!({"exchange": exchange, "routing_key": routing_key, "headers": headers,
                      "time_limit": 60, "soft_time_limit": 30, "ignore_result": true});
    let send = SendOptions {
        exchange: Some(exchange.into()),
        routing_key: Some(routing_key.into()),
        headers: headers
            .as_object()
            .expect("object")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        time_limit: Some(60),
        soft_time_limit: Some(30),
        ignore_result: true,
    };
    (call, send)
}

fn message(id: &str, queue: &str, origin: &str, options: SendOptions) -> TaskMessage {
    TaskMessage {
        id: id.into(),
        task: "kb.echo".into(),
        args: vec![json!("a")],
        kwargs: json!({"k": 1}).as_object().cloned().expect("object"),
        queue: queue.into(),
        priority: None,
        expires: None,
        origin: origin.into(),
        extra_headers: Vec::new(),
        options,
    }
}

/// An envelope with what differs by design made equal: `reply_to` (kube-beat writes `""`),
/// the body's spacing (compared parsed), `origin` and `delivery_tag` (per process, per message).
/// serde_json keeps key order, so equal text means equal keys in equal order.
fn canonical_envelope(envelope: &str) -> String {
    let mut v: Value = serde_json::from_str(envelope).expect("envelope json");
    v["properties"]["reply_to"] = json!("");
    v["properties"]["delivery_tag"] = json!("TAG");
    v["headers"]["origin"] = json!("ORIGIN");
    let body = base64::engine::general_purpose::STANDARD
        .decode(v["body"].as_str().expect("body"))
        .expect("b64");
    v["body"] = serde_json::from_slice(&body).expect("body json");
    v.to_string()
}

fn redis_cmd(url: &str, args: &[&str]) -> redis::Value {
    let mut conn = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("redis");
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut conn).expect("redis command")
}

fn rpop(url: &str, list: &str) -> Option<String> {
    match redis_cmd(url, &["RPOP", list]) {
        redis::Value::BulkString(b) => Some(String::from_utf8(b).expect("utf-8")),
        redis::Value::Nil => None,
        other => panic!("RPOP {list}: {other:?}"),
    }
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn redis_envelope_equals_apply_async_with_the_same_options() {
    let url = format!("{}/0", env().redis_url);
    let (queue, bound, exchange, rk) = (
        unique("kbt-q"),
        unique("kbt-bound"),
        unique("kbt-x"),
        unique("kbt-rk"),
    );
    // The exchange's binding, as a worker consuming `bound` from that exchange declares it.
    let member = format!("{rk}\x06\x16\x06\x16{bound}");
    redis_cmd(
        &url,
        &["SADD", &format!("_kombu.binding.{exchange}"), &member],
    );
    let id = unique("cap");
    let (call, send) = options(&exchange, &rk);
    let mut opts = call.clone();
    opts["task"] = json!("kb.echo");
    opts["id"] = json!(id);
    opts["queue"] = json!(queue);
    opts["args"] = json!(["a"]);
    opts["kwargs"] = json!({"k": 1});
    opts["read"] = json!(bound);
    let celery = capture(&url, &opts)["envelope"]
        .as_str()
        .expect("apply_async delivered to the bound queue")
        .to_string();

    let publisher = Publisher::connect(&url, Duration::from_secs(60), &unique("kubebeat.sent"))
        .await
        .expect("redis");
    let rejected = publisher
        .publish(
            vec![message(&id, &queue, "kube-beat@test", send.clone())],
            1,
        )
        .await
        .expect("publish");
    assert!(rejected.is_empty(), "{rejected:?}");
    let ours = rpop(&url, &bound).expect("kube-beat delivered to the bound queue");
    assert_eq!(canonical_envelope(&ours), canonical_envelope(&celery));
    let env: Value = serde_json::from_str(&ours).expect("json");
    assert_eq!(
        env["properties"]["delivery_info"],
        json!({"exchange": exchange, "routing_key": rk})
    );
    // Neither went to the job's queue itself: the exchange decided.
    assert_eq!(rpop(&url, &queue), None);

    // No binding with that routing key: kombu drops the message without a trace; kube-beat
    // does not publish it either, and says why.
    let lost = unique("cap");
    let mut opts = opts.clone();
    opts["id"] = json!(lost);
    opts["routing_key"] = json!("kbt-nobody");
    assert_eq!(capture(&url, &opts)["envelope"], Value::Null);
    let (_, mut nobody) = options(&exchange, "kbt-nobody");
    nobody.headers.clear();
    let rejected = publisher
        .publish(vec![message(&lost, &queue, "kube-beat@test", nobody)], 1)
        .await
        .expect("publish");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(
        rejected[0].reason.contains("no queue is bound to exchange"),
        "{}",
        rejected[0].reason
    );
    assert_eq!(rpop(&url, &bound), None);
    assert_eq!(rpop(&url, &queue), None);
    for key in [
        format!("_kombu.binding.{exchange}"),
        format!("_kombu.binding.{queue}"),
        format!("_kombu.binding_permanent.{queue}"),
    ] {
        redis_cmd(&url, &["DEL", &key]);
    }
}

fn rabbitmqctl(args: &[&str]) {
    let _ = Command::new("rabbitmqctl").args(args).output();
}

/// A message read back with py-amqp, made comparable: `reply_to` and `origin` blanked, headers
/// by name (lapin's field table is sorted by name), the body parsed.
fn canonical_amqp(mut m: Value) -> Value {
    m["properties"]
        .as_object_mut()
        .expect("properties")
        .remove("reply_to");
    let headers = m["headers"].as_array_mut().expect("headers");
    for h in headers.iter_mut() {
        if h[0] == "origin" {
            h[1] = json!(["str", "ORIGIN"]);
        }
    }
    headers.sort_by_key(|h| h[0].as_str().unwrap_or_default().to_string());
    let body: Value = serde_json::from_str(m["body"].as_str().expect("body")).expect("json");
    m["body"] = body;
    m
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn amqp_message_equals_apply_async_with_the_same_options() {
    let url = env().amqp_url;
    let (queue, bound, exchange, rk) = (
        unique("kbt-q"),
        unique("kbt-bound"),
        unique("kbt-x"),
        unique("kbt-rk"),
    );
    let id = unique("cap");
    let (call, send) = options(&exchange, &rk);
    let mut opts = call.clone();
    opts["task"] = json!("kb.echo");
    opts["id"] = json!(id);
    opts["queue"] = json!(queue);
    opts["args"] = json!(["a"]);
    opts["kwargs"] = json!({"k": 1});
    opts["read"] = json!(bound);
    opts["bind"] = json!(true);
    let celery = capture(&url, &opts)["message"].clone();
    assert_ne!(
        celery,
        Value::Null,
        "apply_async delivered to the bound queue"
    );

    let publisher = Publisher::connect(&url, Duration::from_secs(60), &unique("kubebeat.sent"))
        .await
        .expect("amqp");
    publisher
        .publish(vec![message(&id, &queue, "kube-beat@test", send)], 1)
        .await
        .expect("publish");
    opts["send"] = json!(false);
    let ours = eventually(
        "kube-beat's message in the bound queue",
        Duration::from_secs(10),
        || {
            let opts = opts.clone();
            let url = url.clone();
            async move {
                let m = capture(&url, &opts)["message"].clone();
                (m != Value::Null).then_some(m)
            }
        },
    )
    .await;
    assert_eq!(ours["exchange"], json!(exchange));
    assert_eq!(ours["routing_key"], json!(rk));
    assert_eq!(canonical_amqp(ours), canonical_amqp(celery));
    for q in [&queue, &bound] {
        rabbitmqctl(&["-q", "delete_queue", q]);
    }
}

/// Jobs with message options, dispatched by the operator to a worker whose queue is bound to
/// its own exchange: the worker runs them and sees the headers, the time limits and
/// ignore_result; no result is stored for the job that ignores it.
async fn options_reach_the_worker(broker: String) {
    let f = fixture("kbt-mopt", broker).await;
    let backend = format!("{}/1", env().redis_url);
    let (exchange, rk) = (unique("kbt-x"), unique("kbt-rk"));
    let bound = format!("{}:{exchange}:{rk}", f.queue);
    let _worker = Worker::start_env(
        &f.broker,
        Some(&backend),
        &f.queue,
        &f.db.url,
        8,
        "threads",
        &[("KB_BOUND_QUEUE", &bound)],
    );
    f.task_function_with(
        "echo",
        "kb.echo",
        json!({"headers": {"kbt_tenant": "tf", "kbt_from_tf": 1}, "timeLimit": 300}),
    )
    .await;
    f.job(
        "opts",
        "echo",
        json!({"schedule": {"interval": {"seconds": 1}},
               "exchange": exchange, "routingKey": rk,
               "headers": {"kbt_tenant": "acme", "kbt_list": [1, "x"]},
               "timeLimit": 120, "softTimeLimit": 60, "ignoreResult": true}),
    )
    .await;
    // The TaskFunction's defaults only, on the default exchange (every queue is reachable
    // there by name): its result is stored.
    f.job(
        "plain",
        "echo",
        json!({"schedule": {"interval": {"seconds": 1}}}),
    )
    .await;
    f.job(
        "reserved",
        "echo",
        json!({"schedule": {"interval": {"seconds": 1}}, "headers": {"timelimit": [1, 1]}}),
    )
    .await;
    let redis = f.broker.starts_with("redis");
    if redis {
        f.job(
            "unbound",
            "echo",
            json!({"schedule": {"interval": {"seconds": 1}}, "exchange": exchange, "routingKey": "kbt-nobody"}),
        )
        .await;
    }
    let op = f.operator(&["--result-backend", &backend]);

    // Every row of this test's database (the options job's rows carry its routing key as
    // their queue, which `Fixture::record` filters on).
    let all = || async {
        let rows: Vec<Invocation> = sqlx::query_as(
            "SELECT task_id, task_name, args, kwargs, queue, priority, headers
             FROM celery_invocations ORDER BY id",
        )
        .fetch_all(&f.pool)
        .await
        .unwrap_or_default();
        rows
    };
    let record = eventually("runs of both jobs", Duration::from_secs(90), || async {
        let r = all().await;
        let n = |job: &str| r.iter().filter(|i| i.job().ends_with(job)).count();
        (n("/opts") >= 2 && n("/plain") >= 2).then_some(r)
    })
    .await;
    assert_no_duplicates(&record);
    let opts: Vec<_> = record
        .iter()
        .filter(|i| i.job().ends_with("/opts"))
        .collect();
    for inv in &opts {
        assert_eq!(
            inv.headers["kbt_tenant"], "acme",
            "the job's header wins: {inv:?}"
        );
        assert_eq!(
            inv.headers["kbt_from_tf"], 1,
            "the TaskFunction's is merged: {inv:?}"
        );
        assert_eq!(inv.headers["kbt_list"], json!([1, "x"]));
        assert_eq!(inv.headers["timelimit"], json!([120, 60]), "{inv:?}");
        assert_eq!(inv.headers["ignore_result"], true);
        assert_eq!(inv.headers["exchange"], json!(exchange), "{inv:?}");
        assert_eq!(
            inv.queue.as_deref(),
            Some(rk.as_str()),
            "delivery_info routing key"
        );
    }
    let plain: Vec<_> = record
        .iter()
        .filter(|i| i.job().ends_with("/plain"))
        .collect();
    for inv in &plain {
        assert_eq!(inv.headers["kbt_tenant"], "tf", "{inv:?}");
        assert_eq!(inv.headers["timelimit"], json!([300, null]));
        assert_eq!(inv.headers["ignore_result"], false);
        assert_eq!(inv.headers["exchange"], "");
        assert_eq!(inv.queue.as_deref(), Some(f.queue.as_str()));
    }
    // ignore_result: no result key; the job without it gets one (give it time to be written).
    let result_key = |id: &str| format!("celery-task-meta-{id}");
    let plain_id = plain[0].task_id.clone();
    eventually(
        "the plain run's result stored",
        Duration::from_secs(20),
        || async {
            matches!(
                redis_cmd(&backend, &["EXISTS", &result_key(&plain_id)]),
                redis::Value::Int(1)
            )
            .then_some(())
        },
    )
    .await;
    for inv in &opts {
        assert_eq!(
            redis_cmd(&backend, &["EXISTS", &result_key(&inv.task_id)]),
            redis::Value::Int(0),
            "no result stored for {}",
            inv.task_id
        );
    }
    // A reserved header name: not Ready, with the reason, and never run.
    let status = f.status("reserved").await;
    let ready = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(ready["status"], "False", "{status}");
    assert_eq!(ready["reason"], "InvalidSpec", "{status}");
    assert!(
        ready["message"]
            .as_str()
            .unwrap_or_default()
            .contains("\"timelimit\" is reserved"),
        "{status}"
    );
    assert!(!record.iter().any(|i| i.job().ends_with("/reserved")));
    if redis {
        // No queue bound with that key: not published (kombu would drop it), recorded.
        let failed = eventually(
            "the unbound run recorded",
            Duration::from_secs(30),
            || async {
                let s = f.status("unbound").await;
                (s["lastExecution"]["state"] == "DISPATCH_FAILED").then_some(s)
            },
        )
        .await;
        assert!(
            failed["lastExecution"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("no queue is bound to exchange"),
            "{failed}"
        );
        assert!(!record.iter().any(|i| i.job().ends_with("/unbound")));
    }
    drop(op);
    f.finish().await;
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn options_reach_a_real_worker_over_redis() {
    options_reach_the_worker(format!("{}/0", env().redis_url)).await;
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn options_reach_a_real_worker_over_rabbitmq() {
    options_reach_the_worker(env().amqp_url).await;
}
