//! Native plug-in functions: Rust scalar and aggregate functions in a shared
//! library, built against `datafusion-ffi`, loaded with
//! `CREATE FUNCTION name LANGUAGE rust AS 'path/to/lib.so'` or `sluice --udf`.
//!
//! A plug-in library exports, with `#[no_mangle] extern "C"`:
//! - `sluice_plugin_ffi_version() -> u64`: `datafusion_ffi::version()` as the
//!   plug-in was built; it must equal Sluice's, or the library is refused;
//! - for each scalar function `NAME`: `sluice_scalar_udf_NAME() -> FFI_ScalarUDF`
//!   (a function whose `name()` is `NAME`);
//! - for each aggregate function `NAME`: `sluice_aggregate_udf_NAME() -> FFI_AggregateUDF`.
//!
//! Libraries stay loaded for the life of the process. Wrap implementations in
//! [`crate::panic_safe`] so a panic fails the calling query instead of aborting.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use datafusion::logical_expr::{AggregateUDF, AggregateUDFImpl, ScalarUDF, ScalarUDFImpl};
use datafusion_ffi::udaf::FFI_AggregateUDF;
use datafusion_ffi::udf::FFI_ScalarUDF;
use libloading::Library;

/// Symbol every plug-in exports with the FFI version it was built against.
pub const VERSION_SYMBOL: &str = "sluice_plugin_ffi_version";

/// A function loaded from a plug-in.
#[derive(Debug, Clone)]
pub enum NativeFunction {
    Scalar(Arc<ScalarUDF>),
    Aggregate(Arc<AggregateUDF>),
}

/// Why a plug-in function could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("function '{name}': cannot load library {path}: {reason}")]
    Load { name: String, path: PathBuf, reason: String },
    #[error("function '{name}': library {path} was built for datafusion-ffi version {found}, Sluice uses {expected}: rebuild it against datafusion-ffi {expected}")]
    Incompatible { name: String, path: PathBuf, found: u64, expected: u64 },
    #[error("function '{name}': library {path} exports neither sluice_scalar_udf_{name} nor sluice_aggregate_udf_{name}")]
    Missing { name: String, path: PathBuf },
}

/// Loaded libraries, kept so their code stays mapped while functions may run.
static LIBRARIES: Mutex<Vec<Arc<Library>>> = Mutex::new(Vec::new());

/// Loads the function `name` from the plug-in at `path`; it is callable as `name`.
pub fn load_native_function(path: &Path, name: &str) -> Result<NativeFunction, PluginError> {
    let load_err = |reason: String| PluginError::Load { name: name.to_string(), path: path.to_path_buf(), reason };
    if !path.is_file() {
        return Err(load_err("no such file".into()));
    }
    // SAFETY: loading runs the library's initialisers; a plug-in is trusted code
    // the user asked for by path, as with any database extension.
    let library = unsafe { Library::new(path) }.map_err(|e| load_err(e.to_string()))?;
    // SAFETY: the symbol's type is fixed by the plug-in contract above.
    let version = unsafe { library.get::<extern "C" fn() -> u64>(VERSION_SYMBOL.as_bytes()) }
        .map_err(|_| load_err(format!("not a Sluice plug-in (no {VERSION_SYMBOL} symbol)")))?;
    let (found, expected) = (version(), datafusion_ffi::version());
    if found != expected {
        return Err(PluginError::Incompatible { name: name.to_string(), path: path.to_path_buf(), found, expected });
    }
    let scalar = format!("sluice_scalar_udf_{name}");
    let aggregate = format!("sluice_aggregate_udf_{name}");
    // SAFETY: as above; the FFI structs carry their own vtables and release functions.
    let function = unsafe {
        if let Ok(make) = library.get::<extern "C" fn() -> FFI_ScalarUDF>(scalar.as_bytes()) {
            let inner: Arc<dyn ScalarUDFImpl> = make().into();
            NativeFunction::Scalar(Arc::new(ScalarUDF::new_from_shared_impl(inner)))
        } else if let Ok(make) = library.get::<extern "C" fn() -> FFI_AggregateUDF>(aggregate.as_bytes()) {
            let ffi = make();
            let inner: Arc<dyn AggregateUDFImpl> = (&ffi).into();
            NativeFunction::Aggregate(Arc::new(AggregateUDF::new_from_shared_impl(inner)))
        } else {
            return Err(PluginError::Missing { name: name.to_string(), path: path.to_path_buf() });
        }
    };
    let exported = match &function {
        NativeFunction::Scalar(f) => f.name().to_string(),
        NativeFunction::Aggregate(f) => f.name().to_string(),
    };
    if exported != name {
        return Err(load_err(format!("its function for '{name}' calls itself '{exported}'")));
    }
    if let Ok(mut libs) = LIBRARIES.lock() {
        libs.push(Arc::new(library));
    }
    Ok(function)
}
