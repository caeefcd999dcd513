//! Background tasks that survive their own panics.
//!
//! The operator's long-running parts (dispatcher, result tracker, status writer, Events,
//! housekeeping) each run as a task of their own under [`supervise`]: if one panics — a bug
//! reached by some input nobody thought of — it is logged, counted in
//! `kube_beat_task_restarts{task}` and started again after a backoff, while the others go on.
//! Without this, one panic would end the process, and every replica that read the same row
//! after it would end too: a crash loop of the whole operator from one object.

use std::{future::Future, time::Duration};

use tokio::sync::watch;

/// First wait before a restart; doubled after each quick failure, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A task that ran this long before failing starts again from the first backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Run `make()` as a task until it returns; when it panics, start a new one from `make` (after
/// a backoff) unless `stop` is set. A task that returns normally is done.
pub async fn supervise<F, Fut>(name: &'static str, mut stop: watch::Receiver<bool>, mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut delay = FIRST_BACKOFF;
    loop {
        let started = std::time::Instant::now();
        match tokio::spawn(make()).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                let why = panic_message(e.into_panic());
                tracing::error!(task = name, panic = %why, retry_in = ?delay, "background task panicked: restarting it");
                crate::metrics::METRICS
                    .task_restarts
                    .get_or_create(&crate::metrics::Task { task: name })
                    .inc();
            }
            // Cancelled: the runtime is shutting down.
            Err(_) => return,
        }
        if *stop.borrow() {
            return;
        }
        if started.elapsed() >= HEALTHY_RUN {
            delay = FIRST_BACKOFF;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_and_counted_until_it_succeeds() {
        let (_stop_tx, stop) = watch::channel(false);
        let runs = Arc::new(AtomicUsize::new(0));
        let before = crate::metrics::METRICS
            .task_restarts
            .get_or_create(&crate::metrics::Task {
                task: "test-panics",
            })
            .get();
        let r = runs.clone();
        supervise("test-panics", stop, move || {
            let r = r.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) < 3 {
                    panic!("boom");
                }
            }
        })
        .await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            4,
            "three panics, then a clean end"
        );
        let after = crate::metrics::METRICS
            .task_restarts
            .get_or_create(&crate::metrics::Task {
                task: "test-panics",
            })
            .get();
        assert_eq!(after - before, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_ends_the_restarts() {
        let (stop_tx, stop) = watch::channel(false);
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let sup = tokio::spawn(supervise("test-stop", stop, move || {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                panic!("always");
            }
        }));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = stop_tx.send(true);
        sup.await.expect("supervisor ends without panicking itself");
        let n = runs.load(Ordering::SeqCst);
        assert!(
            (2..=4).contains(&n),
            "backoff 0.5 s, 1 s, 2 s: {n} runs in 2 s"
        );
    }
}
