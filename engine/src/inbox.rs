//! The receiving end of a channel fed by one or more upstream lanes.
//!
//! Every message is tagged with the index of the lane that sent it. The inbox
//! passes batches through, forwards the minimum watermark over its inputs when it
//! advances (an idle input does not hold time back; an ended one no longer
//! counts), and reports the end of stream once every input has ended.

use tokio::sync::mpsc;

use crate::message::{Message, Watermark};

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
}

impl WatermarkMerger {
    pub fn new(inputs: usize) -> Self {
        WatermarkMerger { inputs: vec![InputState::default(); inputs], emitted: None, idle_reported: false }
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

/// Receives from `inputs` upstream lanes as if from one.
pub struct Inbox {
    rx: mpsc::Receiver<Tagged>,
    merger: WatermarkMerger,
}

impl Inbox {
    pub fn new(rx: mpsc::Receiver<Tagged>, inputs: usize) -> Self {
        Inbox { rx, merger: WatermarkMerger::new(inputs) }
    }

    /// The next merged message; `None` if every sender went away before ending
    /// its stream (an upstream task failed or was cancelled).
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            let (i, msg) = self.rx.recv().await?;
            match msg {
                Message::Batch(b) => return Some(Message::Batch(b)),
                Message::Watermark(wm) => {
                    if let Some(merged) = self.merger.update(i, wm) {
                        return Some(Message::Watermark(merged));
                    }
                }
                Message::EndOfStream => {
                    let merged = self.merger.end(i);
                    if self.merger.all_ended() {
                        // Every input sent its final (maximal) watermark before ending.
                        return Some(Message::EndOfStream);
                    }
                    if let Some(wm) = merged {
                        return Some(Message::Watermark(wm));
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
    fn idle_and_ended_inputs_do_not_hold_time_back() {
        let mut m = WatermarkMerger::new(3);
        m.update(0, Watermark::EventTime(10));
        assert_eq!(m.update(1, Watermark::Idle), None);
        assert_eq!(m.end(2), Some(Watermark::EventTime(10)));
        assert_eq!(m.update(1, Watermark::EventTime(3)), None, "no longer idle, but behind what was emitted");
        assert!(!m.all_ended());
    }
}
