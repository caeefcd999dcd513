//! Published runs recorded as DISPATCHED in the background, in order, while the next chunks
//! of a burst go out.

/// Published runs being recorded as DISPATCHED in the background, one batch after another, so
/// a burst's next chunk goes out without waiting for Postgres. Until they are recorded these
/// runs are still PENDING, so the outbox is read again only after [`Recorder::flush`].
#[derive(Default)]
pub(super) struct Recorder {
    /// The latest batch's task; it waits for the one before it.
    last: Option<tokio::task::JoinHandle<bool>>,
}

impl Recorder {
    /// Record a batch after those pushed before it. `mark` returns whether it succeeded.
    pub(super) fn push(&mut self, mark: impl std::future::Future<Output = bool> + Send + 'static) {
        let before = self.last.take();
        self.last = Some(tokio::spawn(async move {
            let earlier = match before {
                Some(task) => task.await.unwrap_or(false),
                None => true,
            };
            mark.await && earlier
        }));
    }

    /// Wait until every batch pushed is recorded; false if any failed to be (those runs are
    /// still PENDING, though published: the publish record settles them).
    pub(super) async fn flush(&mut self) -> bool {
        match self.last.take() {
            Some(task) => task.await.unwrap_or(false),
            None => true,
        }
    }
}

/// Record published runs as DISPATCHED (at `at`), log each and report its job's status change.
/// Returns whether they were recorded (if not, they stay PENDING until the publish record
/// settles them).
pub(super) async fn mark_published(
    pool: sqlx::PgPool,
    feed: crate::status::Feed,
    ids: Vec<i64>,
    at: chrono::DateTime<chrono::Utc>,
) -> bool {
    let marked = match crate::store::outbox::mark_dispatched(&pool, &ids, at).await {
        Ok(marked) => marked,
        Err(e) => {
            tracing::warn!(error = %e, "marking executions dispatched failed; the publish record settles them");
            return false;
        }
    };
    crate::metrics::METRICS.dispatched("published", ids.len() as u64);
    for p in &marked {
        feed.touch(p.job_id);
        tracing::info!(job = %format!("{}/{}", p.namespace, p.name), task = %p.task_name,
              task_id = %p.task_id, slot = %crate::schedule::rfc3339(p.scheduled_for),
              trigger = %p.trigger, "Dispatched job");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{sync::Arc, time::Duration};

    #[tokio::test]
    async fn marks_are_recorded_in_order_and_a_failure_is_reported_by_flush() {
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut marks = Recorder::default();
        assert!(marks.flush().await, "nothing pushed");
        for (i, ok, delay) in [(1, true, 30), (2, false, 0), (3, true, 10)] {
            let order = order.clone();
            marks.push(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                order.lock().map(|mut o| o.push(i)).ok();
                ok
            });
        }
        assert!(!marks.flush().await, "the second batch failed");
        assert_eq!(
            *order.lock().expect("lock"),
            vec![1, 2, 3],
            "one after another"
        );
        marks.push(async { true });
        assert!(marks.flush().await, "a failure is reported once");
    }
}
