//! The timer heap: a min-heap ordered by (deadline, insertion order) with lazy
//! cancellation, as asyncio's `_scheduled` list is.
//!
//! Cancelling a timer only marks it (the owner keeps the flag); the heap drops
//! cancelled entries when they reach the head, or all at once (compaction) when
//! they are more than half of a large heap, so that a program that arms and
//! cancels many timeouts does not keep them all alive.  Pure Rust: the payload is
//! generic so `cargo test` covers the ordering and compaction rules.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// asyncio compacts only heaps with more than this many entries...
pub const MIN_SCHEDULED_FOR_COMPACTION: usize = 100;
/// ...of which more than this fraction is cancelled.
pub const CANCELLED_FRACTION_FOR_COMPACTION: f64 = 0.5;

struct Entry<T> {
    when: f64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    // Reversed so that std's max-heap pops the earliest deadline first; equal
    // deadlines pop in insertion order.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .when
            .total_cmp(&self.when)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

pub struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        TimerHeap { heap: BinaryHeap::new(), next_seq: 0 }
    }
}

impl<T> TimerHeap<T> {
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn push(&mut self, when: f64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { when, seq, item });
    }

    /// Deadline of the earliest timer, cancelled or not.
    pub fn next_deadline(&self) -> Option<f64> {
        self.heap.peek().map(|e| e.when)
    }

    /// Pop the earliest timer if its deadline is strictly before `end`.
    pub fn pop_due(&mut self, end: f64) -> Option<T> {
        match self.heap.peek() {
            Some(e) if e.when < end => self.heap.pop().map(|e| e.item),
            _ => None,
        }
    }

    /// Drop cancelled timers: all of them when `cancelled` (the owner's count of
    /// cancelled entries still in the heap) makes up most of a large heap,
    /// otherwise only those at the head.  Removed items are moved into
    /// `removed` so the caller decides when they are dropped.  Returns how many
    /// were removed.
    pub fn prune(
        &mut self,
        cancelled: usize,
        is_cancelled: impl Fn(&T) -> bool,
        removed: &mut Vec<T>,
    ) -> usize {
        let before = removed.len();
        let len = self.heap.len();
        if len > MIN_SCHEDULED_FOR_COMPACTION
            && cancelled as f64 / len as f64 > CANCELLED_FRACTION_FOR_COMPACTION
        {
            let mut kept = Vec::with_capacity(len - cancelled.min(len));
            for e in std::mem::take(&mut self.heap).into_vec() {
                if is_cancelled(&e.item) {
                    removed.push(e.item);
                } else {
                    kept.push(e);
                }
            }
            self.heap = BinaryHeap::from(kept);
        } else {
            while let Some(e) = self.heap.peek() {
                if !is_cancelled(&e.item) {
                    break;
                }
                if let Some(e) = self.heap.pop() {
                    removed.push(e.item);
                }
            }
        }
        removed.len() - before
    }

    /// Remove every timer (loop close).
    pub fn drain(&mut self) -> Vec<T> {
        std::mem::take(&mut self.heap).into_vec().into_iter().map(|e| e.item).collect()
    }

    /// Visit every item (garbage-collector traversal).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|e| &e.item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct T {
        id: u32,
        cancelled: Cell<bool>,
    }

    fn t(id: u32) -> T {
        T { id, cancelled: Cell::new(false) }
    }

    fn drain_due(h: &mut TimerHeap<T>, end: f64) -> Vec<u32> {
        let mut out = vec![];
        while let Some(x) = h.pop_due(end) {
            out.push(x.id);
        }
        out
    }

    #[test]
    fn orders_by_deadline_then_insertion() {
        let mut h = TimerHeap::default();
        h.push(2.0, t(1));
        h.push(1.0, t(2));
        h.push(2.0, t(3));
        h.push(1.0, t(4));
        h.push(0.5, t(5));
        assert_eq!(h.next_deadline(), Some(0.5));
        assert_eq!(drain_due(&mut h, 10.0), vec![5, 2, 4, 1, 3]);
    }

    #[test]
    fn pop_due_is_strict() {
        let mut h = TimerHeap::default();
        h.push(1.0, t(1));
        assert!(h.pop_due(1.0).is_none());
        assert_eq!(h.pop_due(1.0 + 1e-9).map(|x| x.id), Some(1));
    }

    #[test]
    fn prune_drops_cancelled_head_only_on_small_heaps() {
        let mut h = TimerHeap::default();
        for i in 0..10 {
            h.push(i as f64, t(i));
        }
        for e in h.heap.iter() {
            if e.item.id == 0 || e.item.id == 1 || e.item.id == 5 {
                e.item.cancelled.set(true);
            }
        }
        let mut removed = vec![];
        let n = h.prune(3, |x| x.cancelled.get(), &mut removed);
        assert_eq!(n, 2);
        let mut ids: Vec<u32> = removed.iter().map(|x| x.id).collect();
        ids.sort();
        assert_eq!(ids, vec![0, 1]);
        assert_eq!(h.len(), 8);
    }

    #[test]
    fn prune_compacts_large_mostly_cancelled_heaps() {
        let mut h = TimerHeap::default();
        for i in 0..1000 {
            h.push(1000.0 - i as f64, t(i));
        }
        let mut cancelled = 0;
        for e in h.heap.iter() {
            if e.item.id % 10 != 0 {
                e.item.cancelled.set(true);
                cancelled += 1;
            }
        }
        let mut removed = vec![];
        assert_eq!(h.prune(cancelled, |x| x.cancelled.get(), &mut removed), 900);
        assert_eq!(h.len(), 100);
        let order = drain_due(&mut h, f64::INFINITY);
        let expected: Vec<u32> = (0..1000).rev().filter(|i| i % 10 == 0).collect();
        assert_eq!(order, expected);
    }

    #[test]
    fn nan_deadlines_do_not_break_ordering() {
        let mut h = TimerHeap::default();
        h.push(1.0, t(1));
        h.push(f64::NAN, t(2));
        h.push(0.0, t(3));
        assert_eq!(h.pop_due(0.5).map(|x| x.id), Some(3));
        assert_eq!(h.len(), 2);
    }
}
