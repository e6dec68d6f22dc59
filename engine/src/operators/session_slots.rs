//! The accumulator state of every open session, as numbered slots.
//!
//! A session aggregate touches thousands of sessions per batch; one plain
//! `Accumulator` per session would cost a call per session, aggregate and
//! batch. For DataFusion's common aggregates (count, sum, avg, min, max,
//! bool_and, bool_or) the state of every slot lives in one
//! `GroupsAccumulator` ([`SlotStates::Groups`]): a batch is one
//! `update_batch`, with each row's slot as its group. A `GroupsAccumulator`
//! cannot merge one group into another, nor hand out some of its groups: a
//! session that merged others owns their slots too, and closing sessions
//! ([`SessionSlots::close`]) takes the state of every slot, evaluates the
//! closed sessions' slots merged, and puts the open slots back as they were,
//! in array operations whatever the number of sessions.
//!
//! Every other aggregate (DISTINCT, sketches, plug-ins) keeps a plain
//! accumulator per slot ([`SlotStates::Plain`]), touched only when its
//! session is: putting its state back at every closing watermark would cost
//! a rebuild per open session, and a sketch's state need not survive the
//! round trip unchanged.
//!
//! The aggregates that live in groups accumulators write checkpoints in the
//! layout their plain accumulators write (which checkpoints held before),
//! so either kind restores the other's.
//!
//! Freed slots are reused; when more than half are free,
//! [`SessionSlots::renumber`] packs the open sessions' slots.

use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, UInt32Array};
use datafusion::arrow::compute::{and, take};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

use super::state_table::is_plain_builtin;
use super::window_groups::{filtered, AggregateSpec, EvaluatedBatch};
use crate::error::{EngineError, Result};

/// Slots `0..len` of every aggregate; `free` ones hold no session (and
/// their initial state).
pub(crate) struct SessionSlots {
    aggregates: Vec<SlotStates>,
    len: usize,
    free: Vec<usize>,
    is_free: Vec<bool>,
}

/// One aggregate's state of every slot.
enum SlotStates {
    /// A group per slot.
    Groups { aggregate: Arc<AggregateFunctionExpr>, accumulator: Box<dyn GroupsAccumulator> },
    /// An accumulator per slot, made when a row first reaches it.
    Plain { aggregate: Arc<AggregateFunctionExpr>, accumulators: Vec<Option<Box<dyn Accumulator>>>, kept: bool },
}

/// Whether `aggregate` keeps its state in a groups accumulator: one of
/// DataFusion's plain built-ins ([`is_plain_builtin`]), whose groups
/// accumulators write the state layout of their plain ones.
fn in_groups(aggregate: &AggregateFunctionExpr) -> bool {
    is_plain_builtin(aggregate) && aggregate.groups_accumulator_supported()
}

/// Which slots each group of sessions is made of (closed sessions, or the
/// open ones being packed or checkpointed): groups are numbered in the
/// order they are pushed.
#[derive(Default)]
pub(crate) struct Regrouping {
    slots: Vec<u32>,
    groups: Vec<usize>,
    /// Where each group's slots start in `slots`.
    starts: Vec<usize>,
}

impl Regrouping {
    /// Adds a group made of `slots`; returns its number.
    pub(crate) fn push(&mut self, slots: impl IntoIterator<Item = usize>) -> usize {
        let group = self.starts.len();
        self.starts.push(self.slots.len());
        for slot in slots {
            self.slots.push(slot as u32);
            self.groups.push(group);
        }
        group
    }

    pub(crate) fn len(&self) -> usize {
        self.starts.len()
    }

    /// Each group's slots, in order.
    fn members(&self) -> impl Iterator<Item = &[u32]> {
        let ends = self.starts.iter().skip(1).copied().chain(std::iter::once(self.slots.len()));
        self.starts.iter().zip(ends).map(|(start, end)| &self.slots[*start..end])
    }

    /// Merges rows `slots` of `states` (a groups accumulator's state of
    /// every slot) into a fresh groups accumulator, one group per group.
    fn merged(&self, aggregate: &AggregateFunctionExpr, states: &[ArrayRef]) -> Result<Box<dyn GroupsAccumulator>> {
        let mut fresh = aggregate.create_groups_accumulator()?;
        if self.len() > 0 {
            let rows = UInt32Array::from(self.slots.clone());
            let taken = states.iter().map(|c| Ok(take(c.as_ref(), &rows, None)?)).collect::<Result<Vec<ArrayRef>>>()?;
            fresh.merge_batch(&taken, &self.groups, self.len())?;
        }
        Ok(fresh)
    }
}

/// A plain accumulator's state as arrays of one row.
fn state_arrays(accumulator: &mut dyn Accumulator) -> Result<Vec<ArrayRef>> {
    Ok(accumulator.state()?.iter().map(|s| s.to_array()).collect::<Result<_, _>>()?)
}

/// The plain accumulators of `members` (taken out of `accumulators`, a
/// fresh one for a slot no row reached) merged into one.
fn merge_plain(
    aggregate: &AggregateFunctionExpr,
    accumulators: &mut [Option<Box<dyn Accumulator>>],
    members: &[u32],
) -> Result<Box<dyn Accumulator>> {
    let mut merged: Option<Box<dyn Accumulator>> = None;
    for slot in members {
        let Some(mut acc) = accumulators[*slot as usize].take() else { continue };
        match &mut merged {
            None => merged = Some(acc),
            Some(into) => into.merge_batch(&state_arrays(acc.as_mut())?)?,
        }
    }
    match merged {
        Some(acc) => Ok(acc),
        None => Ok(aggregate.create_accumulator()?),
    }
}

impl SessionSlots {
    pub(crate) fn new(spec: &AggregateSpec) -> Result<Self> {
        let aggregates = spec
            .aggregates
            .iter()
            .map(|a| -> Result<SlotStates> {
                Ok(match in_groups(a) {
                    true => SlotStates::Groups { aggregate: Arc::clone(a), accumulator: a.create_groups_accumulator()? },
                    false => {
                        let kept = super::state_table::states_are_kept(std::slice::from_ref(a));
                        SlotStates::Plain { aggregate: Arc::clone(a), accumulators: Vec::new(), kept }
                    }
                })
            })
            .collect::<Result<_>>()?;
        Ok(SessionSlots { aggregates, len: 0, free: Vec::new(), is_free: Vec::new() })
    }

    /// An empty slot.
    pub(crate) fn allocate(&mut self) -> usize {
        if let Some(slot) = self.free.pop() {
            self.is_free[slot] = false;
            return slot;
        }
        self.is_free.push(false);
        for states in &mut self.aggregates {
            if let SlotStates::Plain { accumulators, .. } = states {
                accumulators.push(None);
            }
        }
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
        // For plain accumulators: the rows in order of slot, as runs.
        let mut by_slot: Option<RowsBySlot> = None;
        for (a, states) in self.aggregates.iter_mut().enumerate() {
            match states {
                SlotStates::Groups { accumulator, .. } => {
                    let (values, mask) = ev.agg_rows(a, None)?;
                    let mask = match (mask, valid) {
                        (None, None) => None,
                        (Some(m), None) => Some(m),
                        (None, Some(v)) => Some(v.clone()),
                        (Some(m), Some(v)) => Some(and(&m, v)?),
                    };
                    accumulator.update_batch(&values, slots, mask.as_ref(), self.len)?;
                }
                SlotStates::Plain { aggregate, accumulators, .. } => {
                    let (order, runs) = by_slot.get_or_insert_with(|| rows_by_slot(slots, valid));
                    let (values, mask) = ev.agg_rows(a, Some(&*order))?;
                    for (slot, rows) in runs.iter() {
                        let values: Vec<ArrayRef> = values.iter().map(|v| v.slice(rows.start, rows.len())).collect();
                        let mask = mask.as_ref().map(|m| m.slice(rows.start, rows.len()));
                        let acc = match &mut accumulators[*slot] {
                            Some(acc) => acc,
                            empty => empty.insert(aggregate.create_accumulator()?),
                        };
                        acc.update_batch(&filtered(values, mask.as_ref())?)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Frees the slots of the groups of `closed`, and returns the
    /// aggregates' values of those groups (one column per aggregate, a row
    /// per group).
    pub(crate) fn close(&mut self, closed: &Regrouping) -> Result<Vec<ArrayRef>> {
        for slot in &closed.slots {
            self.is_free[*slot as usize] = true;
            self.free.push(*slot as usize);
        }
        let open = self.open_slots();
        let mut values = Vec::with_capacity(self.aggregates.len());
        for states in &mut self.aggregates {
            values.push(match states {
                SlotStates::Groups { aggregate, accumulator } => {
                    let state = take_state(accumulator.as_mut(), self.len)?;
                    let value = closed.merged(aggregate, &state)?.evaluate(EmitTo::All)?;
                    *accumulator = put_back(aggregate, &state, &open, self.len)?;
                    value
                }
                SlotStates::Plain { aggregate, accumulators, .. } => {
                    let values = closed
                        .members()
                        .map(|members| Ok(merge_plain(aggregate, accumulators, members)?.evaluate()?))
                        .collect::<Result<Vec<ScalarValue>>>()?;
                    ScalarValue::iter_to_array(values)?
                }
            });
        }
        Ok(values)
    }

    /// The slots not free.
    fn open_slots(&self) -> Vec<usize> {
        (0..self.len).filter(|s| !self.is_free[*s]).collect()
    }

    /// Makes the groups of `open` the slots, numbered as pushed, with none
    /// free; every slot not in `open` is dropped.
    pub(crate) fn renumber(&mut self, open: &Regrouping) -> Result<()> {
        for states in &mut self.aggregates {
            match states {
                SlotStates::Groups { aggregate, accumulator } => {
                    let state = take_state(accumulator.as_mut(), self.len)?;
                    *accumulator = open.merged(aggregate, &state)?;
                }
                SlotStates::Plain { aggregate, accumulators, .. } => {
                    let packed = open
                        .members()
                        .map(|members| Ok(Some(merge_plain(aggregate, accumulators, members)?)))
                        .collect::<Result<Vec<_>>>()?;
                    *accumulators = packed;
                }
            }
        }
        self.len = open.len();
        self.free.clear();
        self.is_free = vec![false; self.len];
        Ok(())
    }

    /// The states of the groups of `groups` as columns (one row per group,
    /// every aggregate's columns in turn), keeping the slots as they are.
    pub(crate) fn states(&mut self, groups: &Regrouping) -> Result<Vec<ArrayRef>> {
        let open = self.open_slots();
        let mut columns = Vec::new();
        for states in &mut self.aggregates {
            match states {
                SlotStates::Groups { aggregate, accumulator } => {
                    let state = take_state(accumulator.as_mut(), self.len)?;
                    columns.extend(groups.merged(aggregate, &state)?.state(EmitTo::All)?);
                    *accumulator = put_back(aggregate, &state, &open, self.len)?;
                }
                SlotStates::Plain { aggregate, accumulators, kept } => {
                    let mut rows: Vec<Vec<ScalarValue>> = Vec::with_capacity(groups.len());
                    for members in groups.members() {
                        let mut merged = aggregate.create_accumulator()?;
                        for slot in members {
                            let Some(acc) = &mut accumulators[*slot as usize] else { continue };
                            let state = state_arrays(acc.as_mut())?;
                            merged.merge_batch(&state)?;
                            // Taking the state may have spent it: put it back.
                            if !*kept {
                                let mut fresh = aggregate.create_accumulator()?;
                                fresh.merge_batch(&state)?;
                                *acc = fresh;
                            }
                        }
                        rows.push(merged.state()?);
                    }
                    let width = aggregate.state_fields()?.len();
                    for c in 0..width {
                        let column = rows.iter().map(|r| r.get(c).cloned()).collect::<Option<Vec<ScalarValue>>>();
                        let column = column.ok_or_else(|| EngineError::Internal("an accumulator's state changed shape".into()))?;
                        columns.push(ScalarValue::iter_to_array(column)?);
                    }
                }
            }
        }
        Ok(columns)
    }

    /// Adds one slot per row of the `rows` rows of `states` (laid out as
    /// [`Self::states`] writes them, `widths` columns per aggregate) holding
    /// that row's state; returns the first new slot.
    pub(crate) fn restore(&mut self, states: &[ArrayRef], widths: &[usize], rows: usize) -> Result<usize> {
        let first = self.len;
        let total = first + rows;
        let mut start = 0;
        for (states_of, width) in self.aggregates.iter_mut().zip(widths) {
            let columns = states
                .get(start..start + width)
                .ok_or_else(|| EngineError::Checkpoint("a session's state columns are missing".into()))?;
            match states_of {
                SlotStates::Groups { accumulator, .. } => {
                    let groups: Vec<usize> = (first..total).collect();
                    accumulator.merge_batch(columns, &groups, total)?;
                }
                SlotStates::Plain { aggregate, accumulators, .. } => {
                    for row in 0..rows {
                        let mut acc = aggregate.create_accumulator()?;
                        acc.merge_batch(&columns.iter().map(|c| c.slice(row, 1)).collect::<Vec<_>>())?;
                        accumulators.push(Some(acc));
                    }
                }
            }
            start += width;
        }
        self.len = total;
        self.is_free.resize(total, false);
        Ok(first)
    }

    /// Bytes held by the accumulators and the slot bookkeeping (plain
    /// accumulators measured on a sample: asking each its size would cost
    /// as much as aggregating).
    pub(crate) fn size(&self) -> usize {
        const SAMPLE: usize = 64;
        let open = self.len - self.free.len();
        let states: usize = self
            .aggregates
            .iter()
            .map(|states| match states {
                SlotStates::Groups { accumulator, .. } => accumulator.size(),
                SlotStates::Plain { accumulators, .. } => {
                    let (n, bytes) = accumulators.iter().flatten().take(SAMPLE).fold((0, 0), |(n, b), a| (n + 1, b + a.size()));
                    bytes.checked_div(n).unwrap_or(0) * open
                }
            })
            .sum();
        states + self.free.capacity() * 8 + self.is_free.capacity()
    }
}

/// A fresh groups accumulator of `len` slots, the slots `open` holding their
/// state in `state` (a groups accumulator's state of `len` slots).
fn put_back(aggregate: &AggregateFunctionExpr, state: &[ArrayRef], open: &[usize], len: usize) -> Result<Box<dyn GroupsAccumulator>> {
    let mut fresh = aggregate.create_groups_accumulator()?;
    if len > 0 {
        let rows = UInt32Array::from_iter_values(open.iter().map(|s| *s as u32));
        let taken = state.iter().map(|c| Ok(take(c.as_ref(), &rows, None)?)).collect::<Result<Vec<ArrayRef>>>()?;
        fresh.merge_batch(&taken, open, len)?;
    }
    Ok(fresh)
}

/// Takes a groups accumulator's state of all its `len` slots.
fn take_state(accumulator: &mut dyn GroupsAccumulator, len: usize) -> Result<Vec<ArrayRef>> {
    match len {
        0 => Ok(Vec::new()),
        _ => Ok(accumulator.state(EmitTo::All)?),
    }
}

/// Rows in order of their slot, and each slot's run of them.
type RowsBySlot = (UInt32Array, Vec<(usize, Range<usize>)>);

/// The rows that `valid` keeps, in order of their slot (arrival order
/// within one), and each slot's run of them.
fn rows_by_slot(slots: &[usize], valid: Option<&BooleanArray>) -> RowsBySlot {
    let mut rows: Vec<u32> =
        (0..slots.len() as u32).filter(|r| valid.is_none_or(|v| v.value(*r as usize))).collect();
    rows.sort_by_key(|r| slots[*r as usize]);
    let mut runs: Vec<(usize, Range<usize>)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let slot = slots[*r as usize];
        match runs.last_mut() {
            Some((last, run)) if *last == slot => run.end = i + 1,
            _ => runs.push((slot, i..i + 1)),
        }
    }
    (UInt32Array::from(rows), runs)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Float64Array, Int64Array};

    use super::*;
    use crate::operators::checkpoint_testing::{aggregate, input_schema};

    /// The aggregates kept in groups accumulators write, per group, the state
    /// their plain accumulators write (so checkpoints of either restore into
    /// the other); the others, DISTINCT included, keep plain accumulators.
    #[test]
    fn groups_accumulators_write_the_plain_accumulators_state() -> Result<()> {
        let input = input_schema();
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(3), None, Some(-7), Some(12)]));
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![Some(0.5), Some(2.25), None, Some(-1.0)]));
        for name in ["count", "sum", "avg", "min", "max"] {
            for (column, values) in [("v", &ints), ("x", &floats)] {
                // The planner casts avg's integer input to a float first.
                if name == "avg" && column == "v" {
                    continue;
                }
                let agg = aggregate(&input, name, column, false);
                assert!(in_groups(&agg), "{name}({column})");
                let mut plain = agg.create_accumulator()?;
                plain.update_batch(std::slice::from_ref(values))?;
                let plain: Vec<ArrayRef> = state_arrays(plain.as_mut())?;
                let mut groups = agg.create_groups_accumulator()?;
                groups.update_batch(std::slice::from_ref(values), &[0, 0, 0, 0], None, 1)?;
                let grouped = groups.state(EmitTo::All)?;
                assert_eq!(plain.len(), grouped.len(), "{name}({column}): state widths");
                for (p, g) in plain.iter().zip(&grouped) {
                    assert_eq!(p.as_ref(), g.as_ref(), "{name}({column}): state");
                }
            }
        }
        for (name, distinct) in [("count", true), ("approx_median", false), ("stddev", false), ("approx_distinct", false)] {
            assert!(!in_groups(&aggregate(&input, name, "v", distinct)), "{name} distinct={distinct} is plain");
        }
        Ok(())
    }
}
