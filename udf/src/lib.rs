//! The functions queries can call.
//!
//! DataFusion's built-in scalar, aggregate and window functions come first; this
//! crate is where Sluice registers functions of its own into the planning
//! context, and lists what is callable for `SHOW FUNCTIONS`.

use datafusion::execution::context::SessionContext;

/// Kinds of callable functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FunctionKind {
    Scalar,
    Aggregate,
    Window,
}

impl std::fmt::Display for FunctionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FunctionKind::Scalar => "scalar",
            FunctionKind::Aggregate => "aggregate",
            FunctionKind::Window => "window",
        })
    }
}

/// Registers Sluice's own functions into a planning context. DataFusion's
/// built-ins are already there.
pub fn register_functions(_ctx: &SessionContext) {}

/// Every function a query planned in `ctx` can call, sorted by name.
pub fn list_functions(ctx: &SessionContext) -> Vec<(String, FunctionKind)> {
    let state = ctx.state();
    let mut all: Vec<(String, FunctionKind)> = state
        .scalar_functions()
        .keys()
        .map(|n| (n.clone(), FunctionKind::Scalar))
        .chain(state.aggregate_functions().keys().map(|n| (n.clone(), FunctionKind::Aggregate)))
        .chain(state.window_functions().keys().map(|n| (n.clone(), FunctionKind::Window)))
        .collect();
    all.sort();
    all
}
