//! The test Celery app: a message published by Celery's own client is executed by the real worker
//! and recorded durably. Proves worker, broker and recorder on both Redis and RabbitMQ before any
//! kube-beat code is trusted with them.

mod common;

use std::time::Duration;

use common::{TestDb, Worker, celery_send, env, unique, wait_invocations};

async fn published_message_is_recorded(broker: &str, backend: Option<&str>) {
    let db = TestDb::create().await;
    let queue = unique("kbt-q");
    let _worker = Worker::start(broker, backend, &queue, &db.url);
    let task_id = celery_send(
        broker,
        "tasks.ad_sync_tasks.sync_domain_users_task",
        &queue,
        r#"["corp.example.com"]"#,
        r#"{"mode": "full"}"#,
    );
    let pool = db.pool().await;
    let rows = wait_invocations(&pool, &queue, Duration::from_secs(30), |r| !r.is_empty()).await;
    assert_eq!(rows.len(), 1, "exactly one invocation recorded: {rows:?}");
    let row = &rows[0];
    assert_eq!(row.task_id, task_id);
    assert_eq!(row.task_name, "tasks.ad_sync_tasks.sync_domain_users_task");
    assert_eq!(row.args, serde_json::json!(["corp.example.com"]));
    assert_eq!(row.kwargs, serde_json::json!({"mode": "full"}));
    assert_eq!(row.queue.as_deref(), Some(queue.as_str()));
    pool.close().await;
    drop(_worker);
    db.drop_db().await;
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn redis_broker_message_is_recorded() {
    let env = env();
    let backend = format!("{}/1", env.redis_url);
    published_message_is_recorded(&format!("{}/0", env.redis_url), Some(&backend)).await;
}

#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn rabbitmq_broker_message_is_recorded() {
    let env = env();
    published_message_is_recorded(&env.amqp_url, None).await;
}

/// A publish whose reply was lost is retried with the same task ids; on Redis the retry must not
/// enqueue a second copy (the outage test found a late-applied timed-out publish doubled runs).
#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn republishing_a_task_id_on_redis_enqueues_it_once() {
    use kube_beat::celery::Publisher;
    let url = format!("{}/0", env().redis_url);
    let queue = unique("kbt-q");
    let publisher = Publisher::connect(&url, Duration::from_secs(60), "kubebeat.sent.test")
        .await
        .expect("redis");
    let message = |id: &str| echo_message(id, &queue);
    let (a, b) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    publisher
        .publish(vec![message(&a)], 1)
        .await
        .expect("publish");
    publisher
        .publish(vec![message(&a), message(&b)], 1)
        .await
        .expect("re-publish with a new one");
    let items = take_list(&url, &queue);
    assert_eq!(items.len(), 2, "a once, b once: {items:?}");
    assert!(items.iter().any(|i| i.contains(&a)) && items.iter().any(|i| i.contains(&b)));
    // What went out is what a new leader finds before it re-publishes or expires anything.
    let never = uuid::Uuid::new_v4().to_string();
    let read = publisher
        .read_ledger(&[a.clone(), never, b.clone()], 1)
        .await
        .expect("read");
    assert_eq!(read.task_ids, vec![a, b]);
}

/// Two Redis publishers of one installation (one publish record), as two replicas would be, with
/// the broker URL and a fresh queue name.
async fn two_redis_publishers() -> (
    String,
    String,
    kube_beat::celery::Publisher,
    kube_beat::celery::Publisher,
) {
    use kube_beat::celery::Publisher;
    let url = format!("{}/0", env().redis_url);
    let ledger = format!("kubebeat.sent.{}", unique("pair"));
    let connect = || Publisher::connect(&url, Duration::from_secs(60), &ledger);
    let (one, two) = (
        connect().await.expect("redis"),
        connect().await.expect("redis"),
    );
    (url.clone(), unique("kbt-q"), one, two)
}

/// Two leaders publishing the same runs at once (a paused one waking up beside its successor):
/// on Redis each task id is enqueued once, whichever transaction wins.
#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn racing_redis_publishers_enqueue_each_task_id_once() {
    let (url, queue, one, two) = two_redis_publishers().await;
    let ids: Vec<String> = (0..3000)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let batch = |from: usize, to: usize| -> Vec<_> {
        ids[from..to]
            .iter()
            .map(|id| echo_message(id, &queue))
            .collect()
    };
    // Overlapping batches, many rounds, so the transactions interleave.
    for round in 0..10 {
        let (a, b) = (round * 300, round * 300 + 300);
        let (x, y) = tokio::join!(
            one.publish(batch(a, b), 1),
            two.publish(batch(a.saturating_sub(150), b), 1)
        );
        x.expect("first publisher");
        y.expect("second publisher");
    }
    let items = take_list(&url, &queue);
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for item in &items {
        let envelope: serde_json::Value = serde_json::from_str(item).expect("json envelope");
        let id = envelope["headers"]["id"].as_str().expect("task id");
        *seen.entry(id.to_string()).or_default() += 1;
    }
    assert!(seen.keys().all(|id| ids.contains(id)), "only ours");
    assert_eq!(seen.len(), ids.len(), "every task id enqueued");
    assert!(
        seen.values().all(|n| *n == 1),
        "none twice: {} envelopes for {} ids",
        items.len(),
        ids.len()
    );
    let read = one.read_ledger(&ids, 1).await.expect("read");
    assert_eq!(read.task_ids.len(), ids.len(), "the record names them all");
}

/// A leader paused past its lease wakes up with a batch in hand after its successor has read the
/// publish record: on Redis that publish is refused, so what the successor read (not published:
/// to publish, or to expire as MISSED) stays true.
#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn a_deposed_leaders_publish_is_refused_on_redis() {
    use kube_beat::celery::PublishError;
    let (url, queue, old, new) = two_redis_publishers().await;
    let message = |id: &str| echo_message(id, &queue);
    let (a, b) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    old.publish(vec![message(&a)], 5).await.expect("term 5");
    let read = new
        .read_ledger(&[a.clone(), b.clone()], 6)
        .await
        .expect("term 6 reads the record");
    assert_eq!(read.task_ids, vec![a.clone()]);
    let refused = old.publish(vec![message(&b)], 5).await;
    assert!(
        matches!(
            refused,
            Err(PublishError::Fenced {
                ours: 5,
                current: 6
            })
        ),
        "term 5 after term 6 read the record: {refused:?}"
    );
    // Nor can the older term lower the epoch by reading.
    assert!(matches!(
        old.read_ledger(std::slice::from_ref(&b), 5).await,
        Err(PublishError::Fenced { .. })
    ));
    new.publish(vec![message(&b)], 6).await.expect("term 6");
    let items = take_list(&url, &queue);
    assert_eq!(items.len(), 2, "a by term 5, b by term 6 only: {items:?}");
    assert!(items.iter().any(|i| i.contains(&a)) && items.iter().any(|i| i.contains(&b)));
}

/// RabbitMQ has no "set if absent": each batch commits with a ledger entry naming its task ids,
/// and a reader that cannot record them returns them for the next reader.
#[tokio::test]
#[ignore = "needs the real services: make test"]
async fn rabbitmq_batches_are_listed_in_the_publish_ledger() {
    use kube_beat::celery::Publisher;
    let url = env().amqp_url;
    let queue = unique("kbt-q");
    let ledger = format!("kubebeat.sent.{}", unique("test"));
    let publisher = Publisher::connect(&url, Duration::from_secs(60), &ledger)
        .await
        .expect("rabbitmq");
    let message = |id: &str| echo_message(id, &queue);
    let (a, b) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    publisher
        .publish(vec![message(&a), message(&b)], 1)
        .await
        .expect("publish");
    let read = publisher.read_ledger(&[], 1).await.expect("read");
    assert_eq!(read.task_ids, vec![a.clone(), b.clone()]);
    publisher.return_ledger(read).await;
    let again = publisher.read_ledger(&[], 1).await.expect("read again");
    assert_eq!(
        again.task_ids,
        vec![a, b],
        "returned entries are read again"
    );
    publisher.ack_ledger(again).await.expect("ack");
    let empty = publisher.read_ledger(&[], 1).await.expect("read after ack");
    assert!(empty.task_ids.is_empty(), "acknowledged entries are gone");
    publisher.ack_ledger(empty).await.expect("ack nothing");
    assert_eq!(publisher.queue_depth(&queue).await.expect("depth"), 2);
    let rabbitmqctl = |args: &[&str]| {
        std::process::Command::new("rabbitmqctl")
            .args(args)
            .output()
    };
    let _ = rabbitmqctl(&["-q", "delete_queue", &queue]);
    let _ = rabbitmqctl(&["-q", "delete_queue", &ledger]);
}

/// A `kb.echo` message with no arguments, for the publisher tests.
/// Everything in a Redis list (oldest last), deleting it.
fn take_list(url: &str, list: &str) -> Vec<String> {
    let mut conn = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("redis");
    let items: Vec<String> = redis::cmd("LRANGE")
        .arg(list)
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .expect("lrange");
    let _: () = redis::cmd("DEL").arg(list).query(&mut conn).expect("del");
    items
}

fn echo_message(id: &str, queue: &str) -> kube_beat::celery::TaskMessage {
    kube_beat::celery::TaskMessage {
        id: id.to_string(),
        task: "kb.echo".into(),
        args: vec![],
        kwargs: serde_json::Map::new(),
        queue: queue.to_string(),
        priority: None,
        expires: None,
        origin: "test".into(),
        extra_headers: vec![],
        options: Default::default(),
    }
}
