//! The `readiness` rules, branch by branch, on hand-made censuses.

use super::readiness::*;
use super::*;

fn worker(host: &str, tasks: &[&str], queues: &[&str]) -> WorkerReport {
    WorkerReport {
        hostname: host.into(),
        registered: tasks.iter().map(|s| s.to_string()).collect(),
        queues: queues.iter().map(|s| s.to_string()).collect(),
    }
}

fn census(
    broker: &'static str,
    workers: Vec<WorkerReport>,
    consumers: &[(&str, Option<u32>)],
) -> Census {
    Census {
        taken_at: chrono::DateTime::UNIX_EPOCH,
        workers,
        consumers: consumers.iter().map(|(q, c)| (q.to_string(), *c)).collect(),
        broker,
    }
}

fn check(r: &Readiness, status: &str, reason: &str, message_has: &[&str]) {
    assert_eq!(r.status(), status, "{r:?}");
    assert_eq!(r.reason(), reason, "{r:?}");
    for m in message_has {
        assert!(r.message().contains(m), "{m:?} in {:?}", r.message());
    }
}

#[test]
fn ready_counts_workers_that_registered_the_task_and_consume_the_queue() {
    let c = census(
        "amqp",
        vec![
            worker("a@h", &["t"], &["q", "other"]),
            worker("b@h", &["t"], &["q"]),
            worker("c@h", &["t"], &["other"]), // registered, another queue
            worker("d@h", &["x"], &["q"]),     // the queue, another task
        ],
        &[("q", Some(4))],
    );
    let r = readiness(&c, "t", "q");
    assert_eq!(r, Readiness::Ready { workers: 2 });
    assert_eq!(r.workers(), 2);
    check(&r, "True", "WorkersReady", &["2 live workers"]);
    // The same on Redis, where consumers cannot be counted.
    let c = census("redis", c.workers, &[("q", None)]);
    assert_eq!(readiness(&c, "t", "q"), Readiness::Ready { workers: 2 });
}

#[test]
fn consumers_without_the_task_are_task_not_registered() {
    for broker in ["amqp", "redis"] {
        let c = census(
            broker,
            vec![
                worker("a@h", &["tasks.other"], &["q"]),
                worker("b@h", &["t"], &["elsewhere"]),
            ],
            // More consumers than replies: still TaskNotRegistered (a replying consumer lacks it).
            &[("q", Some(3))],
        );
        let r = readiness(&c, "t", "q");
        check(
            &r,
            "False",
            "TaskNotRegistered",
            &["consumed by 1 live worker (a@h)", "registered task t"],
        );
        assert_eq!(r.workers(), 0);
    }
    // Names are listed three at most.
    let many = (0..5)
        .map(|i| worker(&format!("w{i}@h"), &[], &["q"]))
        .collect();
    let r = readiness(&census("amqp", many, &[]), "t", "q");
    check(
        &r,
        "False",
        "TaskNotRegistered",
        &["w0@h, w1@h, w2@h and 2 more"],
    );
}

#[test]
fn no_consumer_on_rabbitmq_when_the_broker_counts_none() {
    // Replies, none for the queue, broker says 0.
    let c = census(
        "amqp",
        vec![worker("a@h", &["t"], &["other"])],
        &[("q", Some(0))],
    );
    check(
        &readiness(&c, "t", "q"),
        "False",
        "NoConsumer",
        &["queue q", "0 on the broker"],
    );
    // No replies at all and 0 consumers: still certain.
    let c = census("amqp", vec![], &[("q", Some(0))]);
    check(
        &readiness(&c, "t", "q"),
        "False",
        "NoConsumer",
        &["0 live workers replied"],
    );
}

#[test]
fn unexplained_broker_consumers_are_unknown_never_false() {
    // Replies that do not consume the queue, but the broker counts a consumer.
    let c = census(
        "amqp",
        vec![worker("a@h", &["t"], &["other"])],
        &[("q", Some(1))],
    );
    check(
        &readiness(&c, "t", "q"),
        "Unknown",
        "RemoteControlDisabled",
        &["1 consumer on queue q", "remote control disabled"],
    );
    // No replies at all, consumers counted.
    let c = census("amqp", vec![], &[("q", Some(2))]);
    check(
        &readiness(&c, "t", "q"),
        "Unknown",
        "RemoteControlDisabled",
        &["2 consumers"],
    );
}

#[test]
fn redis_without_replies_is_unknown_no_replies() {
    // A worker declared the queue (None: cannot count) and nobody replied.
    let c = census("redis", vec![], &[("q", None)]);
    let r = readiness(&c, "t", "q");
    check(
        &r,
        "Unknown",
        "NoReplies",
        &["no worker replied", "redis", "queue q"],
    );
    // A queue the probe did not ask about counts as not countable.
    let c = census("redis", vec![], &[]);
    check(&readiness(&c, "t", "q"), "Unknown", "NoReplies", &[]);
}

#[test]
fn redis_declared_queue_without_a_replying_consumer_is_unknown() {
    let c = census(
        "redis",
        vec![worker("a@h", &["t"], &["other"])],
        &[("q", None)],
    );
    check(
        &readiness(&c, "t", "q"),
        "Unknown",
        "RemoteControlDisabled",
        &["declared it", "remote control disabled"],
    );
}

#[test]
fn redis_queue_never_declared_is_no_consumer() {
    for workers in [vec![], vec![worker("a@h", &["t"], &["other"])]] {
        let c = census("redis", workers, &[("q", Some(0))]);
        check(
            &readiness(&c, "t", "q"),
            "False",
            "NoConsumer",
            &["none declared it"],
        );
    }
}

#[test]
fn the_health_monitor_sees_the_readiness_of_a_fresh_census_only() {
    use crate::health::WorkerSignal;
    let now = chrono::DateTime::UNIX_EPOCH + chrono::Duration::seconds(10);
    let max_age = chrono::Duration::seconds(90);
    let c = census(
        "amqp",
        vec![worker("a@h", &["t"], &["q"])],
        &[("q", Some(1)), ("empty", Some(0)), ("deaf", Some(2))],
    );
    let signal = |task, queue| worker_signal(Some(&c), task, queue, now, max_age);
    assert_eq!(signal("t", "q"), WorkerSignal::Ready);
    assert!(matches!(signal("x", "q"), WorkerSignal::TaskNotRegistered(m) if m.contains("task x")));
    assert!(matches!(signal("t", "empty"), WorkerSignal::NoWorkers(m) if m.contains("empty")));
    assert_eq!(signal("t", "deaf"), WorkerSignal::Unknown);
    // No census yet, or one older than max_age: never an alarm.
    assert_eq!(
        worker_signal(None, "x", "q", now, max_age),
        WorkerSignal::Unknown
    );
    let later = chrono::DateTime::UNIX_EPOCH + chrono::Duration::seconds(91);
    assert_eq!(
        worker_signal(Some(&c), "x", "q", later, max_age),
        WorkerSignal::Unknown
    );
}

#[test]
fn census_channel_starts_empty() {
    let (tx, rx) = census_channel();
    assert!(rx.borrow().is_none());
    tx.send_replace(Some(Arc::new(census("redis", vec![], &[]))));
    assert_eq!(rx.borrow().as_ref().map(|c| c.broker), Some("redis"));
}
