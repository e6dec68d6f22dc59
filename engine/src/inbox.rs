//! The receiving end of a channel fed by one or more upstream lanes.
//!
//! Every message is tagged with the index of the lane that sent it. The inbox
//! passes batches through, forwards the minimum watermark over its inputs when it
//! advances (an idle input does not hold time back; an ended one no longer
//! counts; once every input is idle, time moves to the furthest any announced),
//! and reports the end of stream once every input has ended.

use tokio::sync::mpsc;

use crate::message::{Barrier, BarrierKind, Message, Watermark};

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

/// Receives from several upstream lanes as if from one, over one channel per
/// lane (edge). The lanes may be grouped into logical inputs (the two sides of
/// a join): batches say which input they came from, and the end of each input
/// is reported.
///
/// Barriers are aligned: once a lane has delivered a barrier, it is not read
/// until every other open lane has delivered it too; the barrier then goes on.
/// What the lanes send after their barriers therefore stays after it, so the
/// state of a step at a barrier covers exactly the input before it. A lane that
/// ends no longer holds barriers back. Only the blocked lanes' channels fill up
/// meanwhile, so memory stays bounded.
pub struct Inbox {
    inputs: Vec<mpsc::Receiver<Message>>,
    ended: Vec<bool>,
    /// Per lane, the barrier it delivered that waits for the other lanes.
    blocked: Vec<Option<Barrier>>,
    /// When the first lane of the barrier being aligned delivered it.
    aligning_since: Option<std::time::Instant>,
    /// The lane polled first next time, so no lane starves the others.
    next_poll: usize,
    merger: WatermarkMerger,
    /// Lanes in each logical input, in lane order.
    groups: Vec<usize>,
    /// Lanes of each logical input still open.
    open: Vec<usize>,
    /// Per logical input, the merge of its lanes' watermarks (grouped inboxes).
    input_mergers: Vec<WatermarkMerger>,
    /// Events decided but not yet returned.
    pending: std::collections::VecDeque<InboxEvent>,
    /// Time spent aligning barriers so far, in nanoseconds.
    alignment_nanos: u64,
    /// A stop barrier went on: the lanes' ends that follow it only close the
    /// stream. Were an ended lane to stop holding time back, the others' time
    /// would close windows after the stop's snapshot, and a resumed run would
    /// emit them again.
    stopped: bool,
}

/// One bounded channel per lane: the senders, and the inbox reading them all.
pub fn edges(lanes: usize, capacity: usize) -> (Vec<mpsc::Sender<Message>>, Inbox) {
    grouped_edges(vec![lanes], capacity)
}

/// Like [`edges`], for logical inputs of `groups[i]` lanes each.
pub fn grouped_edges(groups: Vec<usize>, capacity: usize) -> (Vec<mpsc::Sender<Message>>, Inbox) {
    let total: usize = groups.iter().sum();
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..total).map(|_| mpsc::channel(capacity.max(1))).unzip();
    (txs, Inbox::grouped(rxs, groups))
}

impl Inbox {
    /// One logical input fed by one lane per receiver.
    pub fn new(inputs: Vec<mpsc::Receiver<Message>>) -> Self {
        let n = inputs.len();
        Self::grouped(inputs, vec![n])
    }

    /// Logical inputs of `groups[i]` lanes each, numbered in order.
    pub fn grouped(inputs: Vec<mpsc::Receiver<Message>>, groups: Vec<usize>) -> Self {
        let total = inputs.len();
        let input_mergers = match groups.len() {
            1 => Vec::new(),
            _ => groups.iter().map(|g| WatermarkMerger::new(*g)).collect(),
        };
        Inbox {
            inputs,
            ended: vec![false; total],
            blocked: vec![None; total],
            aligning_since: None,
            next_poll: 0,
            merger: WatermarkMerger::new(total),
            open: groups.clone(),
            groups,
            input_mergers,
            pending: Default::default(),
            alignment_nanos: 0,
            stopped: false,
        }
    }

    /// Time this inbox has spent aligning barriers so far.
    pub fn alignment_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.alignment_nanos)
    }

    fn group_of(&self, lane: usize) -> usize {
        self.group_and_lane(lane).0
    }

    /// The logical input of a lane, and the lane's index within it.
    fn group_and_lane(&self, lane: usize) -> (usize, usize) {
        let mut first = 0;
        for (g, size) in self.groups.iter().enumerate() {
            if lane < first + size {
                return (g, lane - first);
            }
            first += size;
        }
        (self.groups.len().saturating_sub(1), 0)
    }

    /// Feeds a lane's watermark (or end) to its input's own merger.
    fn input_progress(&mut self, lane: usize, wm: Option<Watermark>) {
        let (group, index) = self.group_and_lane(lane);
        let Some(merger) = self.input_mergers.get_mut(group) else { return };
        let advanced = match wm {
            Some(wm) => merger.update(index, wm),
            None => merger.end(index),
        };
        for wm in advanced.into_iter().chain(merger.take_idle()) {
            self.pending.push_back(InboxEvent::InputWatermark(group, wm));
        }
    }

    /// Releases the barrier being aligned once every open lane delivered it.
    fn release_aligned(&mut self) {
        let open = self.ended.iter().zip(&self.blocked).filter(|(ended, _)| !**ended);
        let mut barrier = None;
        for (_, blocked) in open {
            match blocked {
                Some(b) => barrier = Some(*b),
                None => return,
            }
        }
        let Some(barrier) = barrier else { return };
        self.blocked.iter_mut().for_each(|b| *b = None);
        if let Some(since) = self.aligning_since.take() {
            self.alignment_nanos += since.elapsed().as_nanos() as u64;
        }
        self.stopped |= barrier.kind == BarrierKind::Stop;
        self.pending.push_back(InboxEvent::Barrier(barrier));
    }

    /// The next message of a lane that is neither blocked nor ended; `None` if a
    /// lane's sender went away before ending its stream.
    async fn recv(&mut self) -> Option<(usize, Message)> {
        std::future::poll_fn(|cx| {
            let n = self.inputs.len();
            let mut any_open = false;
            for k in 0..n {
                let lane = (self.next_poll + k) % n;
                if self.ended[lane] {
                    continue;
                }
                any_open = true;
                if self.blocked[lane].is_some() {
                    continue;
                }
                match self.inputs[lane].poll_recv(cx) {
                    std::task::Poll::Ready(Some(msg)) => {
                        self.next_poll = (lane + 1) % n;
                        return std::task::Poll::Ready(Some((lane, msg)));
                    }
                    std::task::Poll::Ready(None) => return std::task::Poll::Ready(None),
                    std::task::Poll::Pending => {}
                }
            }
            if any_open {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(None)
            }
        })
        .await
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
            let (i, msg) = self.recv().await?;
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
                    self.blocked[i] = Some(b);
                    self.aligning_since.get_or_insert_with(std::time::Instant::now);
                    self.release_aligned();
                }
                Message::EndOfStream => {
                    self.ended[i] = true;
                    self.blocked[i] = None;
                    let merged = self.merger.end(i);
                    if self.merger.all_ended() {
                        // Every input sent its final (maximal) watermark before ending.
                        self.pending.clear();
                        return Some(InboxEvent::End);
                    }
                    if self.stopped {
                        continue;
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
                    self.release_aligned();
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

    fn batch(v: i64) -> datafusion::arrow::record_batch::RecordBatch {
        let a: datafusion::arrow::array::ArrayRef = std::sync::Arc::new(datafusion::arrow::array::Int64Array::from(vec![v]));
        datafusion::arrow::record_batch::RecordBatch::try_from_iter([("v", a)]).unwrap()
    }

    fn value(event: &InboxEvent) -> Option<i64> {
        use datafusion::arrow::array::AsArray;
        match event {
            InboxEvent::Batch { batch, .. } => Some(batch.column(0).as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(0)),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_lane_that_delivered_a_barrier_waits_for_the_others() {
        let (txs, mut inbox) = edges(2, 8);
        txs[0].send(Message::Batch(batch(1))).await.unwrap();
        txs[0].send(Message::Barrier(barrier(1))).await.unwrap();
        txs[0].send(Message::Batch(batch(2))).await.unwrap();
        txs[1].send(Message::Batch(batch(10))).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            seen.push(value(&inbox.next_event().await.unwrap()));
        }
        seen.sort();
        assert_eq!(seen, vec![Some(1), Some(10)], "lane 0's row after its barrier waits");
        txs[1].send(Message::Barrier(barrier(1))).await.unwrap();
        assert!(matches!(inbox.next_event().await, Some(InboxEvent::Barrier(b)) if b.id == 1));
        assert_eq!(value(&inbox.next_event().await.unwrap()), Some(2));
    }

    #[tokio::test]
    async fn an_ended_lane_does_not_hold_barriers_back() {
        let (txs, mut inbox) = edges(3, 8);
        txs[0].send(Message::Barrier(barrier(1))).await.unwrap();
        txs[1].send(Message::Barrier(barrier(1))).await.unwrap();
        txs[2].send(Message::Watermark(Watermark::MAX)).await.unwrap();
        txs[2].send(Message::EndOfStream).await.unwrap();
        let mut got = None;
        while got.is_none() {
            if let InboxEvent::Barrier(b) = inbox.next_event().await.unwrap() {
                got = Some(b);
            }
        }
        assert_eq!(got, Some(barrier(1)));
    }

    #[tokio::test]
    async fn lanes_ending_after_a_stop_move_time_no_further() {
        let (txs, mut inbox) = edges(2, 8);
        txs[0].send(Message::Watermark(Watermark::EventTime(10))).await.unwrap();
        txs[1].send(Message::Watermark(Watermark::EventTime(20))).await.unwrap();
        let stop = Barrier { id: 1, kind: BarrierKind::Stop };
        for tx in &txs {
            tx.send(Message::Barrier(stop)).await.unwrap();
        }
        txs[0].send(Message::EndOfStream).await.unwrap();
        let mut events = Vec::new();
        while !matches!(events.last(), Some(InboxEvent::Barrier(_))) {
            events.push(inbox.next_event().await.unwrap());
        }
        txs[1].send(Message::EndOfStream).await.unwrap();
        let after = inbox.next_event().await;
        assert!(matches!(after, Some(InboxEvent::End)), "lane 1's time (20) is not let through after the stop: {after:?}");
        assert!(matches!(events.as_slice(), [InboxEvent::Watermark(Watermark::EventTime(10)), InboxEvent::Barrier(_)]));
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
