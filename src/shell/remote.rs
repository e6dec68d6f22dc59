//! The shell as a client of a running `sluice serve`: DDL and catalog statements
//! go to `/api/v1/statements`, queries are submitted to `/api/v1/queries` and their
//! results streamed back (NDJSON) and printed in the shell's format, as a local
//! query's are; Ctrl-C stops
//! the query on the server (a stdout closed under it, too).

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use serde_json::{json, Value};
use sluice_connectors::output_format::{OutputFormat, ResultWriter};
use sluice_sql::SluiceStatement;

use crate::interrupt::Interrupts;
use crate::render::{report_outcome, status, write_text, Ending, Halt, PrintOptions, Report};

/// A connection to a Sluice server.
pub struct Remote {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

fn text_of(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A value as text; NULL stays NULL (an empty CSV field, NULL in a table).
fn cell_of(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        other => Some(text_of(other)),
    }
}

/// A row as a JSON object of every column in order, NULLs as `null` (the
/// server leaves them out), as a local query prints it.
fn json_object(names: &[String], row: &Value) -> String {
    let fields: Vec<String> =
        names.iter().map(|n| format!("{}:{}", Value::from(n.as_str()), row.get(n).unwrap_or(&Value::Null))).collect();
    format!("{{{}}}", fields.join(","))
}

fn text_batch(schema: &SchemaRef, rows: &[Vec<Option<String>>]) -> Result<RecordBatch, String> {
    let columns: Vec<ArrayRef> = (0..schema.fields().len())
        .map(|i| Arc::new(rows.iter().map(|r| r[i].as_deref()).collect::<StringArray>()) as ArrayRef)
        .collect();
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| e.to_string())
}

fn text_schema(names: &[String]) -> SchemaRef {
    Arc::new(Schema::new(names.iter().map(|n| Field::new(n, DataType::Utf8, true)).collect::<Vec<_>>()))
}

impl Remote {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Remote { client: reqwest::Client::new(), base: base.trim_end_matches('/').to_string(), token }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn send_json(&self, path: &str, body: Value) -> Result<Value, String> {
        let resp = self.request(reqwest::Method::POST, path).json(&body).send().await.map_err(|e| format!("{}: {e}", self.base))?;
        let status = resp.status();
        let value: Value = resp.json().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(value["error"].as_str().map(str::to_string).unwrap_or_else(|| format!("{status}")))
        }
    }

    /// Runs every statement of `sql` on the server; stops at the first error,
    /// interrupt or closed stdout, and says which.
    pub async fn run_script(&self, sql: &str, print: PrintOptions, out: &mut impl Write, interrupts: &mut Interrupts) -> Ending {
        let statements = match sluice_sql::parse_statements(sql) {
            Ok(s) => s,
            Err(e) => {
                status(format_args!("error: syntax error: {e}"));
                return Ending::Failed;
            }
        };
        interrupts.clear();
        for statement in statements {
            if interrupts.pending() {
                return crate::render::interrupted();
            }
            let started = Instant::now();
            let is_query = matches!(&statement, SluiceStatement::Sql(s)
                if matches!(**s, sqlparser::ast::Statement::Query(_) | sqlparser::ast::Statement::Insert(_)));
            let text = match &statement {
                SluiceStatement::Sql(s) => s.to_string(),
                _ => sql.to_string(),
            };
            // A SELECT is only previewed: the server ends it when this shell stops reading.
            let preview = matches!(&statement, SluiceStatement::Sql(s) if matches!(**s, sqlparser::ast::Statement::Query(_)));
            let result = if is_query {
                self.run_query(&text, preview, print.format, out, interrupts).await
            } else {
                self.run_statement(&text, print.format, out).await
            };
            let ending = report_outcome(result, started, print.timing, out);
            if ending != Ending::Completed {
                return ending;
            }
        }
        Ending::Completed
    }

    async fn run_statement(&self, sql: &str, format: OutputFormat, out: &mut impl Write) -> Result<Report, Halt> {
        let answer = self.send_json("/api/v1/statements", json!({ "sql": sql })).await?;
        if let Some(message) = answer["message"].as_str() {
            return Ok(Report::completed(message));
        }
        let names: Vec<String> = answer["columns"].as_array().into_iter().flatten().map(text_of).collect();
        let rows: Vec<Vec<Option<String>>> = answer["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r.as_array().into_iter().flatten().map(cell_of).collect())
            .collect();
        let schema = text_schema(&names);
        let mut printer = ResultWriter::new(Arc::clone(&schema), format);
        let batch = text_batch(&schema, &rows)?;
        write_text(out, &printer.format_batch(&batch).map_err(|e| e.to_string())?)?;
        write_text(out, &printer.finish())?;
        Ok(Report::completed(format!("{} row(s)", rows.len())))
    }

    async fn run_query(
        &self,
        sql: &str,
        preview: bool,
        format: OutputFormat,
        out: &mut impl Write,
        interrupts: &mut Interrupts,
    ) -> Result<Report, Halt> {
        let info = self.send_json("/api/v1/queries", json!({ "sql": sql, "preview": preview })).await?;
        let id = info["id"].as_str().ok_or("the server returned no query id")?.to_string();
        let names: Vec<String> = info["schema"].as_array().into_iter().flatten().map(|c| text_of(&c["name"])).collect();
        let schema = text_schema(&names);
        let resp = self
            .request(reqwest::Method::GET, &format!("/api/v1/queries/{id}/results"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let mut printer = ResultWriter::new(Arc::clone(&schema), format);
        let json_through = matches!(format, OutputFormat::Json | OutputFormat::NdJson);
        let mut stream = resp.bytes_stream();
        let mut pending = String::new();
        let mut cancelled = false;
        let mut reader_gone = false;
        loop {
            let chunk = tokio::select! {
                biased;
                _ = interrupts.next() => { cancelled = true; None }
                c = stream.next() => c,
            };
            let Some(chunk) = chunk else { break };
            pending.push_str(&String::from_utf8_lossy(&chunk.map_err(|e| e.to_string())?));
            let mut rows = Vec::new();
            let mut objects = Vec::new();
            while let Some(pos) = pending.find('\n') {
                let line: String = pending.drain(..=pos).collect();
                let value: Value = serde_json::from_str(line.trim()).map_err(|e| e.to_string())?;
                if let Some(warning) = value.get("warning") {
                    eprintln!("warning: {}", text_of(warning));
                    continue;
                }
                if value.get("error").is_some() {
                    continue; // the query's final state, read below, tells it
                }
                if json_through {
                    objects.push(json_object(&names, &value));
                } else {
                    rows.push(names.iter().map(|n| cell_of(&value[n])).collect::<Vec<_>>());
                }
            }
            let text = if !objects.is_empty() {
                printer.format_json_objects(&objects)
            } else if !rows.is_empty() {
                printer.format_batch(&text_batch(&schema, &rows)?).map_err(|e| e.to_string())?
            } else {
                String::new()
            };
            if !text.is_empty() {
                match write_text(out, &text) {
                    Err(Halt::ReaderGone) => {
                        reader_gone = true;
                        break;
                    }
                    r => r?,
                }
            }
        }
        if cancelled || reader_gone {
            let _ = self.request(reqwest::Method::POST, &format!("/api/v1/queries/{id}/stop")).send().await;
        }
        if reader_gone {
            return Err(Halt::ReaderGone);
        }
        write_text(out, &printer.finish())?;
        let final_info: Value = self
            .request(reqwest::Method::GET, &format!("/api/v1/queries/{id}"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if let Some(error) = final_info["error"].as_str() {
            return Err(error.into());
        }
        let how = if cancelled { " (stopped)" } else { "" };
        let summary = format!("{} row(s){how}; query {id} on the server", printer.rows());
        Ok(Report { summary: Some(summary), ending: if cancelled { Ending::Interrupted } else { Ending::Completed } })
    }
}
