//! The receiving end of a channel fed by one or more upstream lanes.
//!
//! Every message is tagged with the index of the lane that sent it. The inbox
//! passes batches through, forwards the minimum watermark over its inputs when it
//! advances (an idle input does not hold time back; an ended one no longer
//! counts; once every input is idle, time moves to the furthest any announced),
//! and reports the end of stream once every input has ended.

use std::collections::BTreeMap;

use tokio::sync::mpsc;

use crate::message::{Barrier, Message, Watermark};

/// A message and the index of the upstream lane that sent it.
pub type Tagged = (usize, Message);

#[derive(Debug, Clone, Copy, Default)]
struct InputState {
    watermark: Option<i64>,
    idle: bool,
    ended: bool,
}

/// Merges the watermarks of several inputs into one.
#[derive(Debug)]
pub struct WatermarkMerger {
    inputs: Vec<InputState>,
    emitted: Option<i64>,
    /// Whether `Idle` was reported since the last event-time watermark.
    idle_reported: bool,
    /// Every input went idle and time moved: `Idle` is owed after that watermark.
    idle_owed: bool,
}

impl WatermarkMerger {
    pub fn new(inputs: usize) -> Self {
        WatermarkMerger {
            inputs: vec![InputState::default(); inputs],
            emitted: None,
            idle_reported: false,
            idle_owed: false,
        }
    }

    /// Records input `i`'s watermark; returns the merged watermark if it advanced.
    pub fn update(&mut self, i: usize, wm: Watermark) -> Option<Watermark> {
        let input = self.inputs.get_mut(i)?;
        match wm {
            Watermark::EventTime(t) => {
                input.watermark = Some(input.watermark.map_or(t, |w| w.max(t)));
                input.idle = false;
            }
            Watermark::Idle => input.idle = true,
        }
        self.advance()
    }

    /// Records that input `i` ended; returns the merged watermark if it advanced.
    pub fn end(&mut self, i: usize) -> Option<Watermark> {
        if let Some(input) = self.inputs.get_mut(i) {
            input.ended = true;
        }
        self.advance()
    }

    /// The `Idle` owed after the watermark an all-idle update returned.
    pub fn take_idle(&mut self) -> Option<Watermark> {
        if !std::mem::take(&mut self.idle_owed) {
            return None;
        }
        self.idle_reported = true;
        Some(Watermark::Idle)
    }

    pub fn all_ended(&self) -> bool {
        self.inputs.iter().all(|i| i.ended)
    }

    fn advance(&mut self) -> Option<Watermark> {
        let mut min: Option<i64> = None;
        for input in self.inputs.iter().filter(|i| !i.ended && !i.idle) {
            let w = input.watermark?;
            min = Some(min.map_or(w, |m| m.min(w)));
        }
        let Some(candidate) = min else {
            // No input is active: if some are idle (not all ended), so are we.
            let all_idle = self.inputs.iter().any(|i| !i.ended) && self.inputs.iter().all(|i| i.ended || i.idle);
            // None holds time back any more: it moves to the furthest any input
            // announced (whichever went idle last), then we are idle too.
            let furthest = self.inputs.iter().filter(|i| !i.ended).filter_map(|i| i.watermark).max();
            if let Some(f) = furthest.filter(|f| all_idle && self.emitted.is_none_or(|e| *f > e)) {
                self.emitted = Some(f);
                self.idle_owed = true;
                return Some(Watermark::EventTime(f));
            }
            if all_idle && !self.idle_reported {
                self.idle_reported = true;
                return Some(Watermark::Idle);
            }
            return None;
        };
        if self.emitted.is_none_or(|e| candidate > e) {
            self.idle_reported = false;
            self.emitted = Some(candidate);
            Some(Watermark::EventTime(candidate))
        } else {
            None
        }
    }
}

/// What an inbox yields: a message, or the news that one logical input (all the
/// upstream lanes of one side of a join) has ended.
#[derive(Debug)]
pub enum InboxEvent {
    Batch { input: usize, batch: datafusion::arrow::record_batch::RecordBatch },
    /// Rows of one split of a source's lane (see [`crate::source::SplitTag`]).
    SplitBatch { tag: crate::source::SplitTag, batch: datafusion::arrow::record_batch::RecordBatch },
    Watermark(Watermark),
    /// The watermark of one logical input advanced (grouped inboxes only; the
    /// merged [`InboxEvent::Watermark`] follows when it advances too).
    InputWatermark(usize, Watermark),
    InputEnded(usize),
    /// A barrier has arrived from every input that has not ended.
    Barrier(Barrier),
    End,
}

/// Forwards each barrier once every input that has not ended delivered it.
///
/// Inputs are not blocked while others catch up (that needs a channel per
/// input): rows that arrive after an input's barrier are processed before the
/// barrier goes on, so a completed barrier means at least everything before it
/// reached the sink.
#[derive(Debug)]
struct BarrierMerger {
    /// Per input, the id of the last barrier it delivered (0: none yet).
    delivered: Vec<u64>,
    ended: Vec<bool>,
    /// Barriers some input delivered that have not gone on yet, by id.
    waiting: BTreeMap<u64, Barrier>,
}

impl BarrierMerger {
    fn new(inputs: usize) -> Self {
        BarrierMerger { delivered: vec![0; inputs], ended: vec![false; inputs], waiting: BTreeMap::new() }
    }

    fn deliver(&mut self, input: usize, barrier: Barrier) -> Vec<Barrier> {
        if let Some(d) = self.delivered.get_mut(input) {
            *d = (*d).max(barrier.id);
        }
        self.waiting.insert(barrier.id, barrier);
        self.ready()
    }

    fn end(&mut self, input: usize) -> Vec<Barrier> {
        if let Some(e) = self.ended.get_mut(input) {
            *e = true;
        }
        self.ready()
    }

    /// The waiting barriers every open input has delivered, in order.
    fn ready(&mut self) -> Vec<Barrier> {
        let reached = self
            .delivered
            .iter()
            .zip(&self.ended)
            .filter(|(_, ended)| !**ended)
            .map(|(d, _)| *d)
            .min()
            .unwrap_or(u64::MAX);
        let later = self.waiting.split_off(&reached.saturating_add(1));
        std::mem::replace(&mut self.waiting, later).into_values().collect()
    }
}

/// Receives from several upstream lanes as if from one. The lanes may be grouped
/// into logical inputs (the two sides of a join): batches say which input they
/// came from, and the end of each input is reported.
pub struct Inbox {
    rx: mpsc::Receiver<Tagged>,
    merger: WatermarkMerger,
    /// Lanes in each logical input, in tag order.
    groups: Vec<usize>,
    /// Lanes of each logical input still open.
    open: Vec<usize>,
    /// Per logical input, the merge of its lanes' watermarks (grouped inboxes).
    input_mergers: Vec<WatermarkMerger>,
    barriers: BarrierMerger,
    /// Events decided but not yet returned.
    pending: std::collections::VecDeque<InboxEvent>,
}

impl Inbox {
    /// One logical input fed by `inputs` lanes.
    pub fn new(rx: mpsc::Receiver<Tagged>, inputs: usize) -> Self {
        Self::grouped(rx, vec![inputs])
    }

    /// Logical inputs of `groups[i]` lanes each; tags number the lanes in order.
    pub fn grouped(rx: mpsc::Receiver<Tagged>, groups: Vec<usize>) -> Self {
        let total = groups.iter().sum();
        let input_mergers = match groups.len() {
            1 => Vec::new(),
            _ => groups.iter().map(|g| WatermarkMerger::new(*g)).collect(),
        };
        Inbox {
            rx,
            merger: WatermarkMerger::new(total),
            open: groups.clone(),
            groups,
            input_mergers,
            barriers: BarrierMerger::new(total),
            pending: Default::default(),
        }
    }

    fn group_of(&self, tag: usize) -> usize {
        self.group_and_lane(tag).0
    }

    /// The logical input of a tag, and the tag's lane within it.
    fn group_and_lane(&self, tag: usize) -> (usize, usize) {
        let mut first = 0;
        for (g, size) in self.groups.iter().enumerate() {
            if tag < first + size {
                return (g, tag - first);
            }
            first += size;
        }
        (self.groups.len().saturating_sub(1), 0)
    }

    /// Feeds a lane's watermark (or end) to its input's own merger.
    fn input_progress(&mut self, tag: usize, wm: Option<Watermark>) {
        let (group, lane) = self.group_and_lane(tag);
        let Some(merger) = self.input_mergers.get_mut(group) else { return };
        let advanced = match wm {
            Some(wm) => merger.update(lane, wm),
            None => merger.end(lane),
        };
        for wm in advanced.into_iter().chain(merger.take_idle()) {
            self.pending.push_back(InboxEvent::InputWatermark(group, wm));
        }
    }

    /// The next merged message; `None` if every sender went away before ending
    /// its stream (an upstream task failed or was cancelled).
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            match self.next_event().await? {
                // Past the first step, the split a batch came from no longer matters.
                InboxEvent::Batch { batch, .. } | InboxEvent::SplitBatch { batch, .. } => return Some(Message::Batch(batch)),
                InboxEvent::Watermark(wm) => return Some(Message::Watermark(wm)),
                InboxEvent::Barrier(b) => return Some(Message::Barrier(b)),
                InboxEvent::InputEnded(_) | InboxEvent::InputWatermark(..) => {}
                InboxEvent::End => return Some(Message::EndOfStream),
            }
        }
    }

    /// The next event, telling inputs apart.
    pub async fn next_event(&mut self) -> Option<InboxEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            let (i, msg) = self.rx.recv().await?;
            match msg {
                Message::Batch(batch) => return Some(InboxEvent::Batch { input: self.group_of(i), batch }),
                Message::SplitBatch(tag, batch) => return Some(InboxEvent::SplitBatch { tag, batch }),
                Message::Watermark(wm) => {
                    self.input_progress(i, Some(wm));
                    let merged = self.merger.update(i, wm);
                    for wm in merged.into_iter().chain(self.merger.take_idle()) {
                        self.pending.push_back(InboxEvent::Watermark(wm));
                    }
                }
                Message::Barrier(b) => {
                    for b in self.barriers.deliver(i, b) {
                        self.pending.push_back(InboxEvent::Barrier(b));
                    }
                }
                Message::EndOfStream => {
                    let merged = self.merger.end(i);
                    if self.merger.all_ended() {
                        // Every input sent its final (maximal) watermark before ending.
                        self.pending.clear();
                        return Some(InboxEvent::End);
                    }
                    self.input_progress(i, None);
                    let group = self.group_of(i);
                    if let Some(open) = self.open.get_mut(group) {
                        *open = open.saturating_sub(1);
                        if *open == 0 && self.groups.len() > 1 {
                            self.pending.push_back(InboxEvent::InputEnded(group));
                        }
                    }
                    for wm in merged.into_iter().chain(self.merger.take_idle()) {
                        self.pending.push_back(InboxEvent::Watermark(wm));
                    }
                    for b in self.barriers.end(i) {
                        self.pending.push_back(InboxEvent::Barrier(b));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_the_minimum_once_every_input_has_one() {
        let mut m = WatermarkMerger::new(2);
        assert_eq!(m.update(0, Watermark::EventTime(10)), None);
        assert_eq!(m.update(1, Watermark::EventTime(5)), Some(Watermark::EventTime(5)));
        assert_eq!(m.update(1, Watermark::EventTime(20)), Some(Watermark::EventTime(10)));
        assert_eq!(m.update(0, Watermark::EventTime(8)), None, "watermarks never go back");
    }

    #[test]
    fn idle_everywhere_is_reported_once() {
        let mut m = WatermarkMerger::new(2);
        assert_eq!(m.update(0, Watermark::Idle), None);
        assert_eq!(m.update(1, Watermark::Idle), Some(Watermark::Idle));
        assert_eq!(m.update(1, Watermark::Idle), None);
        assert_eq!(m.update(0, Watermark::EventTime(4)), Some(Watermark::EventTime(4)));
    }

    #[test]
    fn once_every_input_is_idle_time_moves_to_the_furthest_announced() {
        let mut m = WatermarkMerger::new(2);
        m.update(0, Watermark::EventTime(50));
        assert_eq!(m.update(1, Watermark::EventTime(20)), Some(Watermark::EventTime(20)));
        assert_eq!(m.update(0, Watermark::Idle), None, "input 1 is still active at 20");
        assert_eq!(m.take_idle(), None);
        assert_eq!(m.update(1, Watermark::Idle), Some(Watermark::EventTime(50)), "whichever goes idle last");
        assert_eq!(m.take_idle(), Some(Watermark::Idle));
        assert_eq!(m.take_idle(), None);
        assert_eq!(m.update(1, Watermark::Idle), None);
    }

    fn barrier(id: u64) -> Barrier {
        Barrier { id, kind: crate::message::BarrierKind::Checkpoint }
    }

    #[test]
    fn a_barrier_goes_on_once_every_open_input_delivered_it() {
        let mut b = BarrierMerger::new(3);
        assert!(b.deliver(0, barrier(1)).is_empty());
        assert!(b.deliver(0, barrier(2)).is_empty(), "input 0 ran ahead");
        assert!(b.deliver(1, barrier(1)).is_empty());
        assert_eq!(b.end(2), vec![barrier(1)], "an ended input does not hold barriers back");
        assert_eq!(b.deliver(1, barrier(2)), vec![barrier(2)]);
        assert!(b.deliver(1, barrier(3)).is_empty());
        assert_eq!(b.end(0), vec![barrier(3)]);
    }

    #[test]
    fn idle_and_ended_inputs_do_not_hold_time_back() {
        let mut m = WatermarkMerger::new(3);
        m.update(0, Watermark::EventTime(10));
        assert_eq!(m.update(1, Watermark::Idle), None);
        assert_eq!(m.end(2), Some(Watermark::EventTime(10)));
        assert_eq!(m.update(1, Watermark::EventTime(3)), None, "no longer idle, but behind what was emitted");
        assert!(!m.all_ended());
    }
}
