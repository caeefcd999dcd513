//! What a reconcile can fail with, and how long to wait before trying again.

use std::time::Duration;

use crate::store::StoreError;

/// Errors worth retrying. Invalid input is not an error here: it becomes a condition.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Upsert(#[from] super::upserts::UpsertError),
    #[error("object has no {0}")]
    MissingMetadata(&'static str),
    #[error("cache not ready: {0}")]
    CacheNotReady(String),
    /// This replica leads but its lease renewal is late: retried shortly (see
    /// `Role::lapsed`).
    #[error("leader lease not certainly held")]
    LeaseUncertain,
}

impl Error {
    /// A static category for logs, metrics and Events (never the message: unbounded labels).
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Store(_) | Error::Upsert(_) => "database",
            Error::MissingMetadata(_) => "metadata",
            Error::CacheNotReady(_) => "cache",
            Error::LeaseUncertain => "leadership",
        }
    }
}

/// Failures that are no fault of the object or a dependency, retried soon without backing off
/// or counting as errors: a 409 (we acted on a stale copy; the change that beat us is already
/// on its way as an event), and a leader's late lease renewal (over once the renewal lands, or
/// this replica is a follower by then and the retry does nothing).
pub fn quick_retry(e: &Error) -> Option<Duration> {
    match e {
        Error::Kube(kube::Error::Api(s)) if s.code == 409 => Some(Duration::from_millis(500)),
        Error::LeaseUncertain => Some(Duration::from_secs(1)),
        _ => None,
    }
}

/// 2 s, 4 s, 8 s ... capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(8);
    Duration::from_secs((2u64 << exp).min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_retries_double_from_two_seconds_up_to_five_minutes() {
        let waits: Vec<u64> = (1..=10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(0).as_secs(), 2);
        assert_eq!(backoff(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn conflicts_and_an_uncertain_lease_are_retried_soon_other_errors_back_off() {
        let conflict = Error::Kube(kube::Error::Api(Box::new(
            kube::core::Status::failure("stale", "Conflict").with_code(409),
        )));
        assert_eq!(quick_retry(&conflict), Some(Duration::from_millis(500)));
        assert_eq!(
            quick_retry(&Error::LeaseUncertain),
            Some(Duration::from_secs(1))
        );
        assert_eq!(quick_retry(&Error::MissingMetadata("uid")), None);
        assert_eq!(Error::LeaseUncertain.category(), "leadership");
    }
}
