//! GROUPING SETS, ROLLUP and CUBE for aggregations that take one set of group
//! keys: each row is repeated once per grouping set.
//!
//! A window aggregate of `GROUP BY window_start, window_end, GROUPING SETS ((a),
//! (b), ())` is the ordinary window aggregate of rows that were repeated
//! first: once with `a` kept and `b` NULL, once the other way round, once with
//! both NULL. Each repetition carries DataFusion's `__grouping_id` (which keys
//! its set left out), a group key like any other, so a key that is NULL in the
//! data stays apart from one its set rolled up; the projection DataFusion puts
//! above the aggregate drops it (or answers `GROUPING()` from it). The
//! repetition has to happen in front of the exchange, so that the rows of one
//! rolled-up group meet in one lane.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_plan::aggregates::{evaluate_group_by, PhysicalGroupBy};

use crate::error::Result;
use crate::operator::{Emitter, Operator};

/// Repeats each row once per grouping set of `group_by`: the row's columns,
/// then the set's group keys (NULL where the set leaves a key out) and its
/// grouping id. Stateless: watermarks pass straight through.
pub struct GroupingSetExpand {
    group_by: PhysicalGroupBy,
    output_schema: SchemaRef,
}

impl GroupingSetExpand {
    pub fn try_new(group_by: PhysicalGroupBy, input_schema: &SchemaRef) -> Result<Self> {
        let groups = group_by.group_schema(input_schema)?;
        let fields = input_schema.fields().iter().chain(groups.fields().iter()).cloned().collect::<Vec<_>>();
        Ok(GroupingSetExpand { group_by, output_schema: Arc::new(Schema::new(fields)) })
    }

    /// The input's columns, then each group key, then `__grouping_id`.
    pub fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.output_schema)
    }
}

#[async_trait]
impl Operator for GroupingSetExpand {
    fn name(&self) -> &'static str {
        "grouping sets"
    }

    fn describe(&self) -> String {
        let names: Vec<&str> = self.group_by.expr().iter().map(|(_, n)| n.as_str()).collect();
        let sets: Vec<String> = self
            .group_by
            .groups()
            .iter()
            .map(|set| {
                let kept: Vec<&str> = names.iter().zip(set).filter(|(_, null)| !**null).map(|(n, _)| *n).collect();
                format!("({})", kept.join(", "))
            })
            .collect();
        format!("grouping sets: each row once per set of {}", sets.join(", "))
    }

    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let sets = evaluate_group_by(&self.group_by, &batch)?
            .into_iter()
            .map(|keys| {
                let columns = batch.columns().iter().cloned().chain(keys).collect();
                Ok(RecordBatch::try_new(Arc::clone(&self.output_schema), columns)?)
            })
            .collect::<Result<Vec<_>>>()?;
        out.emit(concat_batches(&self.output_schema, &sets)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, UInt8Array};
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::physical_expr::expressions::{col, lit};
    use datafusion::scalar::ScalarValue;

    use crate::message::Message;
    use crate::operators::checkpoint_testing::row_strings;

    #[tokio::test]
    async fn repeats_each_row_once_per_set_with_its_grouping_id() -> Result<()> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int64, true),
        ]));
        let keys = vec![(col("a", &schema)?, "a".to_string()), (col("b", &schema)?, "b".to_string())];
        let nulls = vec![(lit(ScalarValue::Int64(None)), "a".to_string()), (lit(ScalarValue::Int64(None)), "b".to_string())];
        // ROLLUP (a, b): (a, b), (a), ().
        let sets = vec![vec![false, false], vec![false, true], vec![true, true]];
        let mut op = GroupingSetExpand::try_new(PhysicalGroupBy::new(keys, nulls, sets, true), &schema)?;
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from(vec![Some(1), None])), Arc::new(Int64Array::from(vec![2, 3]))],
        )?;
        let mut out = Emitter::default();
        op.on_batch(batch, &mut out).await?;
        let [Message::Batch(expanded)] = &out.drain()[..] else { panic!("one batch") };
        assert_eq!(
            row_strings(expanded),
            ["1|2|1|2|0", "|3||3|0", "1|2|1||1", "|3|||1", "1|2|||3", "|3|||3"].map(String::from).to_vec()
        );
        let ids = expanded.column(4).as_any().downcast_ref::<UInt8Array>().expect("a UInt8 grouping id");
        assert_eq!(ids.len(), 6);
        assert!(op.describe().ends_with("(a, b), (a), ()"), "{}", op.describe());
        Ok(())
    }
}
