//! Offset bookkeeping of one partition: which dispatched offsets are unfinished, which
//! offsets count windows still hold, and from that the offset safe to store (the next
//! offset to read after a restart).

use std::collections::{HashMap, VecDeque};

/// Finished entries kept behind an unfinished one before they are swept out.
pub const COMPACT_SLACK: usize = 1024;

/// A count window holding offsets: (handler, slot, window id).
pub type HoldKey = (usize, usize, i64);

/// How an offset relates to what was dispatched before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next offset, or past a gap.
    InOrder,
    /// Dispatched before by this worker.
    Repeat,
    /// Below anything this worker dispatched: never dispatched here.
    Behind { next: i64 },
}

#[derive(Debug, Default)]
pub struct InFlight {
    /// Dispatched offsets in increasing order, with the number of handlers still
    /// working on each; finished ones leave from the front. Offsets are dispatched in
    /// order, so this is a queue, not a map.
    pending: VecDeque<(i64, u32)>,
    /// Entries of `pending` with handlers left.
    unfinished: usize,
    /// The first offset dispatched.
    first: Option<i64>,
    /// One past the highest offset dispatched so far.
    next: Option<i64>,
    /// First offset each unemitted count window counted from this partition.
    holds: HashMap<HoldKey, i64>,
}

impl InFlight {
    /// Whether `offset` may be dispatched next. Gaps above the next offset are legal
    /// (compaction, transaction markers). Between the first offset dispatched and the
    /// next, an offset is a repeat: the queue delivers in order, so it was dispatched
    /// already (librdkafka fetches again after some errors), and a gap there never
    /// fills. Below the first offset, it was never dispatched (it reached the main
    /// queue before the partition's queue was split), and the offsets stored since may
    /// have passed it.
    pub fn arrival(&self, offset: i64) -> Arrival {
        match (self.first, self.next) {
            (Some(first), Some(next)) if offset < first => Arrival::Behind { next },
            (_, Some(next)) if offset < next => Arrival::Repeat,
            _ => Arrival::InOrder,
        }
    }

    /// Records a dispatched offset that `handlers` handlers must finish.
    pub fn dispatched(&mut self, offset: i64, handlers: u32) {
        debug_assert_eq!(self.arrival(offset), Arrival::InOrder);
        if handlers > 0 {
            self.pending.push_back((offset, handlers));
            self.unfinished += 1;
        }
        self.first.get_or_insert(offset);
        self.next = Some(offset + 1);
    }

    /// One handler finished `offset`.
    pub fn finished(&mut self, offset: i64) {
        let Ok(at) = self.pending.binary_search_by_key(&offset, |(o, _)| *o) else {
            return;
        };
        let left = &mut self.pending[at].1;
        if *left == 0 {
            return;
        }
        *left -= 1;
        if *left == 0 {
            self.unfinished -= 1;
            while self.pending.front().is_some_and(|(_, left)| *left == 0) {
                self.pending.pop_front();
            }
            // Finished offsets behind one that stays unfinished (a write retried for a
            // long time) would pile up: drop them once they outnumber the rest.
            if self.pending.len() > 2 * self.unfinished + COMPACT_SLACK {
                self.pending.retain(|(_, left)| *left > 0);
            }
        }
    }

    pub fn hold(&mut self, key: HoldKey, offset: i64) {
        self.holds
            .entry(key)
            .and_modify(|held| *held = (*held).min(offset))
            .or_insert(offset);
    }

    pub fn release(&mut self, key: HoldKey) {
        self.holds.remove(&key);
    }

    /// Offsets dispatched and not yet finished by every handler.
    pub fn len(&self) -> usize {
        self.unfinished
    }

    pub fn is_empty(&self) -> bool {
        self.unfinished == 0
    }

    pub fn holds(&self) -> usize {
        self.holds.len()
    }

    /// The offset to store: the lowest unfinished or held offset, else one past the
    /// last dispatched. `None` before anything was dispatched.
    pub fn committable(&self) -> Option<i64> {
        let next = self.next?;
        let lowest_pending = self.pending.front().map_or(next, |(offset, _)| *offset);
        let lowest_held = self.holds.values().min().copied().unwrap_or(next);
        Some(lowest_pending.min(lowest_held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_dispatched_stores_nothing() {
        assert_eq!(InFlight::default().committable(), None);
    }

    #[test]
    fn stores_the_lowest_unfinished_offset() {
        let mut inflight = InFlight::default();
        for offset in 10..15 {
            inflight.dispatched(offset, 1);
        }
        inflight.finished(11);
        inflight.finished(12);
        assert_eq!(inflight.committable(), Some(10));
        inflight.finished(10);
        assert_eq!(inflight.committable(), Some(13));
        inflight.finished(13);
        inflight.finished(14);
        // Committed offset is the next one to read, one past the last finished.
        assert_eq!(inflight.committable(), Some(15));
        assert!(inflight.is_empty());
    }

    #[test]
    fn offsets_finished_out_of_order_release_only_from_the_lowest() {
        let mut inflight = InFlight::default();
        for offset in [3, 4, 7, 8] {
            inflight.dispatched(offset, 1);
        }
        inflight.finished(7);
        inflight.finished(4);
        inflight.finished(4); // a repeat report
        inflight.finished(5); // never dispatched
        assert_eq!(inflight.len(), 2);
        assert_eq!(inflight.committable(), Some(3));
        inflight.finished(3);
        assert_eq!(inflight.committable(), Some(8));
        inflight.finished(8);
        assert!(inflight.is_empty());
        assert_eq!(inflight.committable(), Some(9));
    }

    #[test]
    fn offsets_finished_behind_a_stuck_one_do_not_pile_up() {
        let mut inflight = InFlight::default();
        for offset in 0..100_000 {
            inflight.dispatched(offset, 1);
            if offset > 0 {
                inflight.finished(offset);
            }
        }
        assert_eq!(inflight.len(), 1);
        assert_eq!(inflight.committable(), Some(0));
        assert!(
            inflight.pending.len() <= 2 + COMPACT_SLACK,
            "{} entries kept for 1 unfinished offset",
            inflight.pending.len()
        );
        inflight.finished(0);
        assert_eq!(inflight.committable(), Some(100_000));
    }

    #[test]
    fn an_offset_waits_for_every_handler() {
        let mut inflight = InFlight::default();
        inflight.dispatched(0, 2);
        inflight.finished(0);
        assert_eq!(inflight.committable(), Some(0));
        inflight.finished(0);
        assert_eq!(inflight.committable(), Some(1));
    }

    #[test]
    fn offsets_no_handler_wants_pass_at_once_and_gaps_are_skipped() {
        let mut inflight = InFlight::default();
        inflight.dispatched(5, 0);
        inflight.dispatched(9, 0);
        assert_eq!(inflight.committable(), Some(10));
        assert_eq!(inflight.arrival(10), Arrival::InOrder);
        assert_eq!(
            inflight.arrival(25),
            Arrival::InOrder,
            "a gap above is legal"
        );
    }

    #[test]
    fn an_offset_below_the_first_is_behind_never_quietly_dropped() {
        let mut inflight = InFlight::default();
        assert_eq!(
            inflight.arrival(40),
            Arrival::InOrder,
            "the first offset starts anywhere"
        );
        inflight.dispatched(40, 1);
        inflight.dispatched(41, 1);
        inflight.finished(40);
        inflight.finished(41);
        assert_eq!(inflight.committable(), Some(42));
        // A stray from the main queue: the stored offset already passed it.
        assert_eq!(inflight.arrival(37), Arrival::Behind { next: 42 });
        // Fetched again after an error: already dispatched here.
        assert_eq!(inflight.arrival(41), Arrival::Repeat);
        assert_eq!(inflight.arrival(42), Arrival::InOrder);
    }

    #[test]
    fn a_count_window_holds_the_offset_until_released() {
        let mut inflight = InFlight::default();
        inflight.dispatched(3, 1);
        inflight.dispatched(4, 1);
        inflight.hold((0, 0, 1000), 3);
        inflight.finished(3);
        inflight.hold((0, 0, 1000), 4);
        inflight.finished(4);
        assert_eq!(inflight.len(), 0);
        assert_eq!(inflight.committable(), Some(3));
        inflight.release((0, 0, 1000));
        assert_eq!(inflight.committable(), Some(5));
    }
}
