//! Crash points for the fault-injection suite (`make chaos`, `tests/chaos.rs`).
//!
//! `KUBE_BEAT_CRASH_AT=<point>:<n>` aborts the process (like a SIGKILL: no cleanup, no lease
//! release) the n-th time it passes `<point>`, so the suite can kill a leader at the exact
//! moments a random signal rarely hits: inside a claim transaction, or between a committed claim
//! and its publish. Unset (always, in production) it costs one load of a parsed-once value.

use std::sync::{
    LazyLock,
    atomic::{AtomicU64, Ordering},
};

/// Where a crash can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Claim rows written, transaction not yet committed.
    ClaimBeforeCommit,
    /// Claim committed, its executions not yet published.
    ClaimBeforePublish,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::ClaimBeforeCommit => "claim-before-commit",
            Point::ClaimBeforePublish => "claim-before-publish",
        }
    }
}

struct Armed {
    point: String,
    at: u64,
    seen: AtomicU64,
}

static ARMED: LazyLock<Option<Armed>> = LazyLock::new(|| {
    let spec = std::env::var("KUBE_BEAT_CRASH_AT").ok()?;
    let (point, at) = spec.rsplit_once(':')?;
    Some(Armed {
        point: point.to_string(),
        at: at.parse().ok()?,
        seen: AtomicU64::new(0),
    })
});

/// Abort here if the crash point is armed and this is its n-th pass.
pub fn hit(point: Point) {
    if let Some(armed) = ARMED.as_ref()
        && armed.point == point.name()
        && armed.seen.fetch_add(1, Ordering::Relaxed) + 1 == armed.at
    {
        eprintln!("crash point {} reached: aborting", point.name());
        std::process::abort();
    }
}
