//! An example Sluice plug-in with two functions:
//! - `discount(price DOUBLE, pct DOUBLE) -> DOUBLE`: the price less `pct` percent;
//!   it panics on a discount above 100 %, to show that a panicking function
//!   fails only its own query;
//! - `geo_mean(x DOUBLE) -> DOUBLE`: the geometric mean of the positive values,
//!   an aggregate with mergeable state, so it works inside TUMBLE/HOP/SESSION.
//!
//! Build with `cargo build -p sluice-example-udfs`, then in Sluice:
//! `CREATE FUNCTION discount LANGUAGE rust AS 'target/debug/libsluice_example_udfs.so';`

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, UInt64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{exec_err, ScalarValue};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};
use datafusion_ffi::udaf::FFI_AggregateUDF;
use datafusion_ffi::udf::FFI_ScalarUDF;
use sluice_udf::panic_safe::{PanicSafeAggregate, PanicSafeScalar};

#[no_mangle]
pub extern "C" fn sluice_plugin_ffi_version() -> u64 {
    datafusion_ffi::version()
}

#[no_mangle]
pub extern "C" fn sluice_scalar_udf_discount() -> FFI_ScalarUDF {
    Arc::new(PanicSafeScalar::wrap(ScalarUDF::new_from_impl(Discount::default()))).into()
}

#[no_mangle]
pub extern "C" fn sluice_aggregate_udf_geo_mean() -> FFI_AggregateUDF {
    Arc::new(PanicSafeAggregate::wrap(AggregateUDF::new_from_impl(GeoMean::default()))).into()
}

fn floats(value: &ColumnarValue, rows: usize) -> Result<Float64Array> {
    let array = cast(&value.clone().into_array(rows)?, &DataType::Float64)?;
    match array.as_any().downcast_ref::<Float64Array>() {
        Some(a) => Ok(a.clone()),
        None => exec_err!("expected DOUBLE"),
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Discount {
    signature: Signature,
}

impl Default for Discount {
    fn default() -> Self {
        Discount { signature: Signature::exact(vec![DataType::Float64, DataType::Float64], Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for Discount {
    fn name(&self) -> &str {
        "discount"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let (price, pct) = (floats(&args.args[0], rows)?, floats(&args.args[1], rows)?);
        let out: Float64Array = (0..rows)
            .map(|i| {
                if price.is_null(i) || pct.is_null(i) {
                    return None;
                }
                assert!(pct.value(i) <= 100.0, "discount of {}% is more than the price", pct.value(i));
                Some(price.value(i) * (1.0 - pct.value(i) / 100.0))
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct GeoMean {
    signature: Signature,
}

impl Default for GeoMean {
    fn default() -> Self {
        GeoMean { signature: Signature::exact(vec![DataType::Float64], Volatility::Immutable) }
    }
}

impl AggregateUDFImpl for GeoMean {
    fn name(&self) -> &str {
        "geo_mean"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new("sum_ln", DataType::Float64, true)),
            Arc::new(Field::new("count", DataType::UInt64, true)),
        ])
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(GeoMeanAccumulator::default()))
    }
}

/// Sum of logarithms and count: merging two states adds them.
#[derive(Debug, Default)]
struct GeoMeanAccumulator {
    sum_ln: f64,
    count: u64,
}

impl Accumulator for GeoMeanAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let x = floats(&ColumnarValue::Array(Arc::clone(&values[0])), values[0].len())?;
        for v in x.iter().flatten().filter(|v| *v > 0.0) {
            self.sum_ln += v.ln();
            self.count += 1;
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64((self.count > 0).then(|| (self.sum_ln / self.count as f64).exp())))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Float64(Some(self.sum_ln)), ScalarValue::UInt64(Some(self.count))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let sums = floats(&ColumnarValue::Array(Arc::clone(&states[0])), states[0].len())?;
        let counts = cast(&states[1], &DataType::UInt64)?;
        let Some(counts) = counts.as_any().downcast_ref::<UInt64Array>() else {
            return exec_err!("geo_mean: bad state");
        };
        self.sum_ln += sums.iter().flatten().sum::<f64>();
        self.count += counts.iter().flatten().sum::<u64>();
        Ok(())
    }
}
