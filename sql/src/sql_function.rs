//! SQL functions: `CREATE FUNCTION name(arg type, ...) RETURNS type AS 'expression'`.
//!
//! A SQL function is registered into every planning context as a DataFusion
//! scalar UDF whose `simplify` replaces each call by its body with the arguments
//! substituted (cast to the declared parameter types), so the planner inlines it
//! wherever it appears: filters, projections, window GROUP BY keys, aggregate
//! arguments. Evaluating the body directly is the fallback when a call was not
//! simplified.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::DFSchema;
use datafusion::error::Result as DfResult;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    cast, ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::create_physical_expr;

/// A function defined in SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SqlFunction {
    name: String,
    params: Vec<(String, DataType)>,
    return_type: DataType,
    /// The body, over columns named like the parameters.
    body: Expr,
    signature: Signature,
}

impl SqlFunction {
    pub fn new(name: String, params: Vec<(String, DataType)>, return_type: DataType, body: Expr) -> Self {
        let signature = Signature::exact(params.iter().map(|(_, t)| t.clone()).collect(), Volatility::Immutable);
        SqlFunction { name, params, return_type, body, signature }
    }

    pub fn into_udf(self) -> ScalarUDF {
        ScalarUDF::new_from_impl(self)
    }

    fn param_schema(&self) -> Schema {
        Schema::new(self.params.iter().map(|(n, t)| Field::new(n, t.clone(), true)).collect::<Vec<_>>())
    }
}

impl ScalarUDFImpl for SqlFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.return_type.clone())
    }

    fn simplify(&self, args: Vec<Expr>, _info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        let inlined = self
            .body
            .clone()
            .transform(|e| match &e {
                Expr::Column(c) => match self.params.iter().position(|(n, _)| *n == c.name) {
                    Some(i) => Ok(Transformed::yes(cast(args[i].clone(), self.params[i].1.clone()))),
                    None => Ok(Transformed::no(e)),
                },
                _ => Ok(Transformed::no(e)),
            })?
            .data;
        Ok(ExprSimplifyResult::Simplified(cast(inlined, self.return_type.clone())))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let schema = Arc::new(self.param_schema());
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let body = cast(self.body.clone(), self.return_type.clone());
        let physical = create_physical_expr(&body, &df_schema, &ExecutionProps::new(), &Default::default())?;
        let columns = args
            .args
            .into_iter()
            .map(|a| a.into_array(args.number_rows))
            .collect::<DfResult<Vec<_>>>()?;
        let batch = RecordBatch::try_new(schema, columns)?;
        physical.evaluate(&batch)
    }
}
