//! The catalog: tables (with their connectors and watermarks) and views, by name.
//!
//! Names follow SQL rules: unquoted identifiers are case-insensitive (stored in
//! lower case), quoted ones are kept as written.

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use sluice_connectors::TableSpec;
use sluice_udf::NativeFunction;
use sqlparser::ast::{Expr, ObjectName, Query};

use crate::error::{Result, SqlError};

/// `WATERMARK FOR column AS expr` of a table.
#[derive(Debug, Clone)]
pub struct WatermarkDef {
    pub column: String,
    pub expr: Expr,
}

/// A table declared with CREATE TABLE.
#[derive(Debug, Clone)]
pub struct TableDef {
    pub name: String,
    pub schema: SchemaRef,
    pub watermark: Option<WatermarkDef>,
    pub connector: String,
    /// WITH options other than `connector`.
    pub options: BTreeMap<String, String>,
    /// `PRIMARY KEY (...) NOT ENFORCED` columns.
    pub primary_key: Vec<String>,
    /// Metadata columns declared `VIRTUAL`: read, never written by a sink.
    pub virtual_columns: Vec<String>,
    /// What its connector says the table can do, asked when it was created.
    pub capabilities: sluice_connectors::Capabilities,
}

impl TableDef {
    /// What a connector needs to open this table.
    pub fn spec(&self) -> TableSpec {
        TableSpec {
            name: self.name.clone(),
            schema: self.schema.clone(),
            connector: self.connector.clone(),
            options: self.options.clone(),
            primary_key: self.primary_key.clone(),
            time_column: self.watermark.as_ref().map(|w| w.column.clone()),
            read_columns: None,
        }
    }
}

/// A view declared with CREATE VIEW; inlined wherever it is referenced.
#[derive(Debug, Clone)]
pub struct ViewDef {
    pub name: String,
    pub query: Box<Query>,
}

/// A function declared with CREATE FUNCTION.
#[derive(Debug, Clone)]
pub struct FunctionDef {
    pub name: String,
    pub body: FunctionBody,
}

/// What a function runs.
#[derive(Debug, Clone)]
pub enum FunctionBody {
    /// `AS 'expression'`, inlined at planning.
    Sql {
        params: Vec<(String, DataType)>,
        return_type: DataType,
        /// The body as written, over the parameter names.
        body: Box<Expr>,
    },
    /// `LANGUAGE rust AS 'path'`: loaded from a plug-in library.
    Native { path: String, function: NativeFunction },
}

/// Tables, views and SQL functions of one Sluice instance.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    tables: BTreeMap<String, TableDef>,
    views: BTreeMap<String, ViewDef>,
    functions: BTreeMap<String, FunctionDef>,
}

/// The catalog key of a (possibly qualified) SQL name.
pub fn normalize_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part.as_ident() {
            Some(id) if id.quote_style.is_some() => id.value.clone(),
            Some(id) => id.value.to_lowercase(),
            None => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

impl Catalog {
    fn ensure_free(&self, name: &str) -> Result<()> {
        if self.tables.contains_key(name) {
            return Err(SqlError::Catalog(format!("table '{name}' already exists")));
        }
        if self.views.contains_key(name) {
            return Err(SqlError::Catalog(format!("view '{name}' already exists")));
        }
        Ok(())
    }

    pub fn add_table(&mut self, table: TableDef) -> Result<()> {
        self.ensure_free(&table.name)?;
        self.tables.insert(table.name.clone(), table);
        Ok(())
    }

    /// Adds or (with `replace`) replaces a view.
    pub fn add_view(&mut self, view: ViewDef, replace: bool) -> Result<()> {
        if !(replace && self.views.contains_key(&view.name)) {
            self.ensure_free(&view.name)?;
        }
        self.views.insert(view.name.clone(), view);
        Ok(())
    }

    pub fn table(&self, name: &str) -> Option<&TableDef> {
        self.tables.get(name)
    }

    pub fn view(&self, name: &str) -> Option<&ViewDef> {
        self.views.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tables.contains_key(name) || self.views.contains_key(name)
    }

    pub fn tables(&self) -> impl Iterator<Item = &TableDef> {
        self.tables.values()
    }

    pub fn views(&self) -> impl Iterator<Item = &ViewDef> {
        self.views.values()
    }

    /// Removes a table; `Ok(false)` if it did not exist.
    pub fn drop_table(&mut self, name: &str) -> Result<bool> {
        if self.views.contains_key(name) {
            return Err(SqlError::Catalog(format!("'{name}' is a view: use DROP VIEW")));
        }
        Ok(self.tables.remove(name).is_some())
    }

    /// Adds or (with `replace`) replaces a SQL function.
    pub fn add_function(&mut self, function: FunctionDef, replace: bool) -> Result<()> {
        if !replace && self.functions.contains_key(&function.name) {
            return Err(SqlError::Catalog(format!("function '{}' already exists", function.name)));
        }
        self.functions.insert(function.name.clone(), function);
        Ok(())
    }

    pub fn functions(&self) -> impl Iterator<Item = &FunctionDef> {
        self.functions.values()
    }

    /// Removes a SQL function; `false` if it did not exist.
    pub fn drop_function(&mut self, name: &str) -> bool {
        self.functions.remove(name).is_some()
    }

    /// Removes a view; `Ok(false)` if it did not exist.
    pub fn drop_view(&mut self, name: &str) -> Result<bool> {
        if self.tables.contains_key(name) {
            return Err(SqlError::Catalog(format!("'{name}' is a table: use DROP TABLE")));
        }
        Ok(self.views.remove(name).is_some())
    }
}
