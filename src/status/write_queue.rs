//! Which jobs wait for a status write, in order, and which must wait out their per-job interval.
//! Pure bookkeeping (time is passed in) so it can be tested without a clock.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet, VecDeque},
    time::Duration,
};

// tokio's Instant, so the writer's tests can run on a paused clock.
use tokio::time::Instant;

#[derive(Debug, Default)]
pub struct WriteQueue {
    ready: VecDeque<i64>,
    queued: HashSet<i64>,
    cooling: BinaryHeap<Reverse<(Instant, i64)>>,
    last_write: HashMap<i64, Instant>,
}

impl WriteQueue {
    pub fn touch(&mut self, id: i64, now: Instant, every: Duration) {
        if !self.queued.insert(id) {
            return; // already waiting: coalesced
        }
        match self.last_write.get(&id) {
            Some(t) if *t + every > now => self.cooling.push(Reverse((*t + every, id))),
            _ => self.ready.push_back(id),
        }
    }

    /// Up to `n` jobs that may be written now, oldest first.
    pub fn take(&mut self, n: usize, now: Instant) -> Vec<i64> {
        while let Some(Reverse((at, id))) = self.cooling.peek().copied() {
            if at > now {
                break;
            }
            self.cooling.pop();
            self.ready.push_back(id);
        }
        let n = n.min(self.ready.len());
        let out: Vec<i64> = self.ready.drain(..n).collect();
        for id in &out {
            self.queued.remove(id);
        }
        out
    }

    pub fn wrote(&mut self, id: i64, now: Instant) {
        self.last_write.insert(id, now);
    }

    /// When the next cooling job becomes writable.
    pub fn next_ready(&self) -> Option<Instant> {
        if !self.ready.is_empty() {
            return Some(Instant::now());
        }
        self.cooling.peek().map(|Reverse((at, _))| *at)
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Drop write times older than `every` (they no longer delay anything).
    pub fn forget(&mut self, now: Instant, every: Duration) {
        self.last_write.retain(|_, t| *t + every > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_queue_coalesces_and_spaces_writes_per_job() {
        let every = Duration::from_secs(1);
        let t = Instant::now();
        let mut p = WriteQueue::default();
        p.touch(1, t, every);
        p.touch(2, t, every);
        p.touch(1, t, every); // coalesced
        assert_eq!(p.len(), 2);
        assert_eq!(p.take(10, t), vec![1, 2]);
        p.wrote(1, t);
        // Job 1 changes again at once: it waits out its interval; job 3 does not wait.
        p.touch(1, t + Duration::from_millis(100), every);
        p.touch(3, t + Duration::from_millis(100), every);
        assert_eq!(p.take(10, t + Duration::from_millis(200)), vec![3]);
        assert_eq!(p.next_ready(), Some(t + every));
        assert!(p.take(10, t + Duration::from_millis(900)).is_empty());
        assert_eq!(p.take(10, t + every), vec![1]);
        assert!(p.is_empty());
        // Batches are bounded and FIFO.
        for id in 10..20 {
            p.touch(id, t, every);
        }
        assert_eq!(p.take(3, t), vec![10, 11, 12]);
        p.forget(t + Duration::from_secs(5), every);
        assert!(p.last_write.is_empty());
    }
}
