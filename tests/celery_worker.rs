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
