//! Watch plumbing: watches feeding caches, their reconnect backoff, what is trimmed from cached
//! objects, and the leadership trigger.

use std::{
    sync::Arc,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use futures::StreamExt;
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use tracing::warn;

/// First wait before a watch reconnects.
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest wait between watch reconnects.
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(4);

/// Watch reconnects: 0.5 s, doubling up to [`WATCH_BACKOFF_MAX`], back to the start once a watch
/// delivers again (kube resets the backoff then). kube's default grows to 30 s, so after a 30 s
/// apiserver outage a job created next went unseen for 12-22 s (the fault suite); a handful of
/// watches per replica retrying every 4 s is no load for an apiserver. No jitter, as only a few
/// replicas ever retry together.
pub fn watch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::new()
        .with_min_delay(WATCH_BACKOFF_MIN)
        .with_max_delay(WATCH_BACKOFF_MAX)
        .with_factor(2.0)
        .without_max_times()
        .into()
}

/// A watch feeding a cache, flagging when the cache holds the initial list.
pub fn reflected<K>(
    api: Api<K>,
    cfg: watcher::Config,
    listed: Arc<AtomicBool>,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    // managedFields and kubectl's last-applied copy of the object are never read here and are
    // most of a cached object's memory (a parsed fieldsV1 tree per writer; the whole spec again
    // as a string): dropped before the cache keeps the object.
    let watch = watcher(api, cfg)
        .backoff(watch_backoff())
        .modify(|obj| trim_for_cache(obj.meta_mut()));
    let stream = reflector::reflector(writer, watch)
        .inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                listed.store(true, Ordering::Release);
            }
        })
        .applied_objects();
    (reader, stream)
}

/// Drop what the operator never reads from a cached object's metadata.
fn trim_for_cache(meta: &mut kube::api::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// A stream that fires each time this replica becomes the leader. It ends when the role's
/// sender is gone (the elector stopped: the process is shutting down).
pub fn on_becoming_leader(
    role: tokio::sync::watch::Receiver<crate::leader::Role>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold((role, false), |(mut role, mut was_leader)| async move {
        loop {
            // The role as it is first (leadership may have come before this stream started).
            let leader = matches!(
                *role.borrow_and_update(),
                crate::leader::Role::Leader { .. }
            );
            let became = leader && !was_leader;
            was_leader = leader;
            if became {
                return Some(((), (role, was_leader)));
            }
            if role.changed().await.is_err() {
                tracing::debug!("leader election stopped: no more leadership changes");
                return None;
            }
        }
    })
}

/// Reconciler failures are logged by the error policy; this reports the rest (watch errors).
pub async fn log_controller_error<T, E: std::fmt::Display, Q: std::fmt::Display>(
    result: Result<T, kube::runtime::controller::Error<E, Q>>,
) {
    match result {
        Ok(_) | Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
        // A job naming a TaskFunction that does not exist maps to nothing to reconcile.
        Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
            tracing::debug!(object = %obj, "trigger for an object not in the cache")
        }
        Err(e) => warn!(error = %e, "controller watch error (retrying with backoff)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    #[test]
    fn watch_reconnects_back_off_to_a_few_seconds_and_start_over() {
        use kube::runtime::utils::Backoff;
        let mut b = watch_backoff();
        let waits: Vec<u64> = b.by_ref().take(7).map(|d| d.as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 4000, 4000, 4000]);
        b.reset();
        assert_eq!(b.next(), Some(WATCH_BACKOFF_MIN));
        assert_eq!(b.next(), Some(2 * WATCH_BACKOFF_MIN));
    }

    #[test]
    fn cached_metadata_keeps_what_reconcile_reads() {
        let mut meta = kube::api::ObjectMeta {
            name: Some("nightly".into()),
            generation: Some(3),
            managed_fields: Some(vec![ManagedFieldsEntry::default()]),
            annotations: Some(
                [
                    (
                        "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                        "{\"spec\":{}}".to_string(),
                    ),
                    (
                        crate::api::TRIGGER_ANNOTATION.to_string(),
                        "now".to_string(),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        };
        trim_for_cache(&mut meta);
        assert_eq!(meta.managed_fields, None);
        let annotations = meta.annotations.expect("annotations kept");
        assert_eq!(annotations.len(), 1);
        assert_eq!(
            annotations
                .get(crate::api::TRIGGER_ANNOTATION)
                .map(String::as_str),
            Some("now")
        );
        assert_eq!(meta.generation, Some(3));
    }
}
