//! The functions queries can call.
//!
//! DataFusion's built-in scalar, aggregate and window functions come first. This
//! crate adds what stream analytics on event data needs and DataFusion lacks —
//! JSON field access (from `datafusion-functions-json`), URL parsing and Flink's
//! `MOD` — and
//! lists everything callable for `SHOW FUNCTIONS` / `\df`.

mod math_functions;
pub mod panic_safe;
pub mod plugin;
mod url_functions;

use datafusion::error::Result;
use datafusion::execution::context::SessionContext;
use datafusion::execution::SessionState;
use datafusion::execution::FunctionRegistry;

pub use math_functions::mod_function;
pub use plugin::{load_native_function, NativeFunction, PluginError};
pub use url_functions::url_functions;

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

/// Registers Sluice's own functions into a planning state, next to DataFusion's
/// built-ins:
/// - JSON on text columns: `json_get_str(json, 'key', ...)`, `json_get_int`,
///   `json_get_float`, `json_get_bool`, `json_contains`, `json_length`,
///   `json_object_keys`, and the `->` / `->>` operators;
/// - URLs: `url_host(url)`, `url_path(url)`, `url_query_param(url, 'name')`;
/// - `mod(a, b)`, as Flink's `MOD`.
pub fn register_functions(state: &mut SessionState) -> Result<()> {
    datafusion_functions_json::register_all(state)?;
    state.register_udf(std::sync::Arc::new(mod_function()))?;
    for f in url_functions() {
        state.register_udf(std::sync::Arc::new(f))?;
    }
    Ok(())
}

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
