//! The accumulator state of every open session, as slots of one DataFusion
//! `GroupsAccumulator` per aggregate.
//!
//! A session aggregate touches thousands of sessions per batch; one plain
//! `Accumulator` per session would cost a call per session, aggregate and
//! batch. Here a batch is one `update_batch` per aggregate, with each row's
//! slot as its group. A `GroupsAccumulator` cannot merge one group into
//! another, nor hand out some of its groups: a session that merged others
//! owns their slots too, and closing sessions ([`SessionSlots::close`])
//! takes the state of every slot, evaluates the closed sessions' slots
//! merged, and puts the open slots back as they were, in array operations
//! whatever the number of sessions. Freed slots are reused; when more than
//! half are free, [`SessionSlots::renumber`] packs the open sessions' slots.

use datafusion::arrow::array::{ArrayRef, BooleanArray, UInt32Array};
use datafusion::arrow::compute::{and, take};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};

use super::window_groups::{AggregateSpec, EvaluatedBatch};
use crate::error::{EngineError, Result};

/// Slots `0..len` of one groups accumulator per aggregate; `free` ones
/// hold no session (and their initial state).
pub(crate) struct SessionSlots {
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    len: usize,
    free: Vec<usize>,
    is_free: Vec<bool>,
}

/// Which slots each group of a [`SessionSlots::regroup`] is made of: groups
/// are numbered in the order they are pushed.
#[derive(Default)]
pub(crate) struct Regrouping {
    slots: Vec<u32>,
    groups: Vec<usize>,
    len: usize,
}

impl Regrouping {
    /// Adds a group made of `slots`; returns its number.
    pub(crate) fn push(&mut self, slots: impl IntoIterator<Item = usize>) -> usize {
        let group = self.len;
        for slot in slots {
            self.slots.push(slot as u32);
            self.groups.push(group);
        }
        self.len += 1;
        group
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Merges rows `slots` of the slot states `states` (one set of columns
    /// per aggregate) into fresh accumulators, one group per pushed group.
    fn merged(&self, spec: &AggregateSpec, states: &[Vec<ArrayRef>]) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        let mut fresh = spec.new_groups_accumulators()?;
        if self.len == 0 {
            return Ok(fresh);
        }
        let rows = UInt32Array::from(self.slots.clone());
        for (acc, state) in fresh.iter_mut().zip(states) {
            let taken = state.iter().map(|c| Ok(take(c.as_ref(), &rows, None)?)).collect::<Result<Vec<ArrayRef>>>()?;
            acc.merge_batch(&taken, &self.groups, self.len)?;
        }
        Ok(fresh)
    }
}

impl SessionSlots {
    pub(crate) fn new(spec: &AggregateSpec) -> Result<Self> {
        Ok(SessionSlots { accumulators: spec.new_groups_accumulators()?, len: 0, free: Vec::new(), is_free: Vec::new() })
    }

    /// An empty slot.
    pub(crate) fn allocate(&mut self) -> usize {
        if let Some(slot) = self.free.pop() {
            self.is_free[slot] = false;
            return slot;
        }
        self.is_free.push(false);
        self.len += 1;
        self.len - 1
    }

    /// Whether more than half the slots, and many, are free.
    pub(crate) fn sparse(&self) -> bool {
        self.len > 4096 && self.free.len() * 2 > self.len
    }

    /// Adds each row of `ev` to its slot `slots[row]`, except rows that
    /// `valid` marks false (their slot is ignored). Every slot given must
    /// have been allocated.
    pub(crate) fn update(&mut self, ev: &EvaluatedBatch, slots: &[usize], valid: Option<&BooleanArray>) -> Result<()> {
        for (a, acc) in self.accumulators.iter_mut().enumerate() {
            let (values, mask) = ev.agg_rows(a, None)?;
            let mask = match (mask, valid) {
                (None, None) => None,
                (Some(m), None) => Some(m),
                (None, Some(v)) => Some(v.clone()),
                (Some(m), Some(v)) => Some(and(&m, v)?),
            };
            acc.update_batch(&values, slots, mask.as_ref(), self.len)?;
        }
        Ok(())
    }

    /// Takes the state out of every slot (one set of columns per aggregate),
    /// leaving fresh accumulators.
    fn take_states(&mut self, spec: &AggregateSpec) -> Result<Vec<Vec<ArrayRef>>> {
        let states = match self.len {
            // An adapted plain accumulator without groups has no typed state.
            0 => vec![Vec::new(); self.accumulators.len()],
            _ => self.accumulators.iter_mut().map(|a| Ok(a.state(EmitTo::All)?)).collect::<Result<_>>()?,
        };
        self.accumulators = spec.new_groups_accumulators()?;
        Ok(states)
    }

    /// Puts the slots that are not free back, from `states` taken by
    /// [`Self::take_states`].
    fn put_back(&mut self, spec: &AggregateSpec, states: &[Vec<ArrayRef>]) -> Result<()> {
        let mut kept = Regrouping { len: self.len, ..Regrouping::default() };
        for slot in (0..self.len).filter(|s| !self.is_free[*s]) {
            kept.slots.push(slot as u32);
            kept.groups.push(slot);
        }
        self.accumulators = kept.merged(spec, states)?;
        Ok(())
    }

    /// Frees the slots of the groups of `closed`, and returns the
    /// aggregates' values of those groups (one column per aggregate, a row
    /// per group).
    pub(crate) fn close(&mut self, spec: &AggregateSpec, closed: &Regrouping) -> Result<Vec<ArrayRef>> {
        let states = self.take_states(spec)?;
        let values =
            closed.merged(spec, &states)?.iter_mut().map(|a| Ok(a.evaluate(EmitTo::All)?)).collect::<Result<_>>()?;
        for slot in &closed.slots {
            self.is_free[*slot as usize] = true;
            self.free.push(*slot as usize);
        }
        self.put_back(spec, &states)?;
        Ok(values)
    }

    /// Makes the groups of `open` the slots, numbered as pushed, with none
    /// free; every slot not in `open` is dropped.
    pub(crate) fn renumber(&mut self, spec: &AggregateSpec, open: &Regrouping) -> Result<()> {
        let states = self.take_states(spec)?;
        self.accumulators = open.merged(spec, &states)?;
        self.len = open.len();
        self.free.clear();
        self.is_free = vec![false; self.len];
        Ok(())
    }

    /// The states of the groups of `groups` as columns (one row per group,
    /// every aggregate's columns in turn), keeping the slots as they are.
    pub(crate) fn states(&mut self, spec: &AggregateSpec, groups: &Regrouping) -> Result<Vec<ArrayRef>> {
        let states = self.take_states(spec)?;
        let mut columns = Vec::new();
        if groups.len() > 0 {
            for mut acc in groups.merged(spec, &states)? {
                columns.extend(acc.state(EmitTo::All)?);
            }
        }
        self.put_back(spec, &states)?;
        Ok(columns)
    }

    /// Adds one slot per row of the `rows` rows of `states` (laid out as
    /// [`Self::states`] writes them, `widths` columns per aggregate) holding
    /// that row's state; returns the first new slot.
    pub(crate) fn restore(&mut self, states: &[ArrayRef], widths: &[usize], rows: usize) -> Result<usize> {
        let first = self.len;
        let total = first + rows;
        let groups: Vec<usize> = (first..total).collect();
        let mut start = 0;
        for (acc, width) in self.accumulators.iter_mut().zip(widths) {
            let columns = states
                .get(start..start + width)
                .ok_or_else(|| EngineError::Checkpoint("a session's state columns are missing".into()))?;
            acc.merge_batch(columns, &groups, total)?;
            start += width;
        }
        self.len = total;
        self.is_free.resize(total, false);
        Ok(first)
    }

    /// Bytes held by the accumulators and the slot bookkeeping.
    pub(crate) fn size(&self) -> usize {
        self.accumulators.iter().map(|a| a.size()).sum::<usize>() + self.free.capacity() * 8 + self.is_free.capacity()
    }
}
