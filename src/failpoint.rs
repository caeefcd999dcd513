//! Crash points for the fault-injection suite (`make chaos`, `tests/chaos/`).
//!
//! `KUBE_BEAT_CRASH_AT=<point>:<n>` aborts the process (like a SIGKILL: no cleanup, no lease
//! release) the n-th time it passes `<point>`, so the suite can kill a leader at the exact
//! moments a random signal rarely hits: inside a claim transaction, or between a committed claim
//! and its publish.
//!
//! Compiled in only with the `failpoints` cargo feature (`make test` and `make chaos` build with
//! it). Without it — release builds, the image — [`hit`] is an empty inline function and the
//! variable is not even read: a production binary cannot be made to abort by its environment.

/// Where a crash can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Claim rows written, transaction not yet committed.
    ClaimBeforeCommit,
    /// Claim committed, its executions not yet published.
    ClaimBeforePublish,
}

/// Abort here if the crash point is armed and this is its n-th pass.
#[cfg(feature = "failpoints")]
pub fn hit(point: Point) {
    armed::hit(point)
}

/// Crash points are not compiled in: nothing to do.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_point: Point) {}

#[cfg(feature = "failpoints")]
mod armed {
    use super::Point;
    use std::sync::{
        LazyLock,
        atomic::{AtomicU64, Ordering},
    };

    impl Point {
        fn name(self) -> &'static str {
            match self {
                Point::ClaimBeforeCommit => "claim-before-commit",
                Point::ClaimBeforePublish => "claim-before-publish",
            }
        }
    }

    #[derive(Debug)]
    pub(super) struct Armed {
        point: String,
        at: u64,
        seen: AtomicU64,
    }

    /// `<point>:<n>`, or why not.
    pub(super) fn parse(spec: &str) -> Result<Armed, String> {
        let (point, at) = spec
            .rsplit_once(':')
            .ok_or_else(|| format!("{spec:?} is not <point>:<n>"))?;
        let at = at
            .parse()
            .map_err(|e| format!("{spec:?}: the pass count {at:?} is not a number ({e})"))?;
        Ok(Armed {
            point: point.to_string(),
            at,
            seen: AtomicU64::new(0),
        })
    }

    static ARMED: LazyLock<Option<Armed>> = LazyLock::new(|| {
        let spec = std::env::var("KUBE_BEAT_CRASH_AT").ok()?;
        // A typo would otherwise disarm the crash silently and the suite would test nothing.
        parse(&spec)
            .inspect_err(|why| eprintln!("KUBE_BEAT_CRASH_AT ignored: {why}"))
            .ok()
    });

    pub(super) fn hit(point: Point) {
        if let Some(armed) = ARMED.as_ref()
            && armed.passes(point)
        {
            eprintln!("crash point {} reached: aborting", point.name());
            std::process::abort();
        }
    }

    impl Armed {
        /// Count a pass of `point`: whether it is the armed one's n-th.
        pub(super) fn passes(&self, point: Point) -> bool {
            self.point == point.name() && self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.at
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_armed_point_fires_on_its_nth_pass_only() {
            let armed = parse("claim-before-publish:2").expect("valid");
            assert!(!armed.passes(Point::ClaimBeforeCommit));
            assert!(!armed.passes(Point::ClaimBeforePublish));
            assert!(armed.passes(Point::ClaimBeforePublish));
            assert!(!armed.passes(Point::ClaimBeforePublish));
        }

        #[test]
        fn a_malformed_spec_is_refused_with_a_reason() {
            let why = parse("claim-before-commit").expect_err("no count");
            assert!(why.contains("<point>:<n>"), "{why}");
            let why = parse("claim-before-commit:x").expect_err("bad count");
            assert!(why.contains("not a number"), "{why}");
        }
    }
}
