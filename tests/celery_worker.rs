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
    use kube_beat::celery::{Publisher, TaskMessage};
    let url = format!("{}/0", env().redis_url);
    let queue = unique("kbt-q");
    let publisher = Publisher::connect(&url, Duration::from_secs(60))
        .await
        .expect("redis");
    let message = |id: &str| TaskMessage {
        id: id.to_string(),
        task: "kb.echo".into(),
        args: vec![],
        kwargs: serde_json::Map::new(),
        queue: queue.clone(),
        priority: None,
        expires: None,
        origin: "test".into(),
        extra_headers: vec![],
    };
    let (a, b) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    publisher.publish(&[message(&a)]).await.expect("publish");
    publisher
        .publish(&[message(&a), message(&b)])
        .await
        .expect("re-publish with a new one");
    let mut conn = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("redis");
    let items: Vec<String> = redis::cmd("LRANGE")
        .arg(&queue)
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .expect("lrange");
    let _: () = redis::cmd("DEL").arg(&queue).query(&mut conn).expect("del");
    assert_eq!(items.len(), 2, "a once, b once: {items:?}");
    assert!(items.iter().any(|i| i.contains(&a)) && items.iter().any(|i| i.contains(&b)));
}
