//! Turns a panic inside a function into an error of the query that called it.
//!
//! Plug-in authors wrap their implementations: `PanicSafeScalar::wrap(udf)` and
//! `PanicSafeAggregate::wrap(udaf)`. A panic then fails only the calling query
//! with "function NAME panicked: ..." while the shell or server stays up.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{exec_datafusion_err, ScalarValue};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};

fn guarded<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        Err(exec_datafusion_err!("function {name} panicked: {}", panic_message(panic.as_ref())))
    })
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// A scalar function whose panics become errors.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PanicSafeScalar(Arc<ScalarUDF>);

impl PanicSafeScalar {
    pub fn wrap(udf: ScalarUDF) -> ScalarUDF {
        ScalarUDF::new_from_impl(PanicSafeScalar(Arc::new(udf)))
    }
}

impl ScalarUDFImpl for PanicSafeScalar {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn signature(&self) -> &Signature {
        self.0.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.0.return_type(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        guarded(self.0.name(), || self.0.invoke_with_args(args))
    }
}

/// An aggregate function whose panics (in any accumulator call) become errors.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PanicSafeAggregate(Arc<AggregateUDF>);

impl PanicSafeAggregate {
    pub fn wrap(udaf: AggregateUDF) -> AggregateUDF {
        AggregateUDF::new_from_impl(PanicSafeAggregate(Arc::new(udaf)))
    }
}

impl AggregateUDFImpl for PanicSafeAggregate {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn signature(&self) -> &Signature {
        self.0.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.0.return_type(arg_types)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.0.state_fields(args)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let name = self.0.name().to_string();
        let inner = guarded(&name, || self.0.accumulator(args))?;
        Ok(Box::new(PanicSafeAccumulator { name, inner }))
    }
}

#[derive(Debug)]
struct PanicSafeAccumulator {
    name: String,
    inner: Box<dyn Accumulator>,
}

impl Accumulator for PanicSafeAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        guarded(&self.name, || self.inner.update_batch(values))
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        guarded(&self.name, || self.inner.evaluate())
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        guarded(&self.name, || self.inner.state())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        guarded(&self.name, || self.inner.merge_batch(states))
    }
}
