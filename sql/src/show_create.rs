//! `SHOW CREATE TABLE t` and `SHOW CREATE VIEW v`: the statement that creates
//! the object again, printed from the catalog as Flink prints it.
//!
//! The text is built from what the catalog keeps (the resolved column types,
//! not the spelling they were declared with), so it is the same however the
//! table was written, and running it in a fresh session makes a table whose
//! `SHOW CREATE TABLE` prints the same text again. Names are quoted with
//! backticks, as Flink does: the catalog holds them as resolved (unquoted ones
//! in lower case), and a quoted name is taken as written. The WATERMARK
//! expression is printed as it was written. Sluice has no computed columns;
//! metadata columns keep their key and `VIRTUAL`.

use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use sluice_connectors::metadata::metadata_key;
use sqlparser::ast::{Ident, ShowCreateObject};

use crate::catalog::{Catalog, TableDef, ViewDef};
use crate::create_table::quote;
use crate::error::{plan_err, Result, SqlError};
use crate::session::sql_type_name;

/// The text `SHOW CREATE <kind> <name>` answers with.
pub fn show_create(catalog: &Catalog, kind: &ShowCreateObject, name: &str) -> Result<String> {
    match (kind, catalog.table(name), catalog.view(name)) {
        (ShowCreateObject::Table, Some(table), _) => Ok(create_table_sql(table)),
        (ShowCreateObject::View, _, Some(view)) => Ok(create_view_sql(view)),
        (ShowCreateObject::Table, None, Some(_)) => plan_err(format!("'{name}' is a view: use SHOW CREATE VIEW {name}")),
        (ShowCreateObject::View, Some(_), None) => plan_err(format!("'{name}' is a table: use SHOW CREATE TABLE {name}")),
        (ShowCreateObject::Table, None, None) => {
            Err(SqlError::Catalog(format!("table '{name}' does not exist (SHOW TABLES lists them)")))
        }
        (ShowCreateObject::View, None, None) => {
            Err(SqlError::Catalog(format!("view '{name}' does not exist (SHOW TABLES lists them)")))
        }
        (other, _, _) => plan_err(format!("SHOW CREATE {other} is not supported (SHOW CREATE TABLE and VIEW are)")),
    }
}

/// `CREATE TABLE` for `table`: its columns, watermark, key and options, one
/// clause per line.
pub fn create_table_sql(table: &TableDef) -> String {
    let mut clauses: Vec<String> = table.schema.fields().iter().map(|f| column_sql(table, f)).collect();
    if let Some(wm) = &table.watermark {
        clauses.push(format!("WATERMARK FOR {} AS {}", ident(&wm.column), wm.expr));
    }
    if !table.primary_key.is_empty() {
        let key: Vec<String> = table.primary_key.iter().map(|k| ident(k)).collect();
        clauses.push(format!("PRIMARY KEY ({}) NOT ENFORCED", key.join(", ")));
    }
    // The connector first, the other options by name.
    let options: Vec<String> = std::iter::once(("connector", table.connector.as_str()))
        .chain(table.options.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map(|(k, v)| format!("  {} = {}", quote(k), quote(v)))
        .collect();
    format!(
        "CREATE TABLE {} (\n  {}\n) WITH (\n{}\n)",
        ident(&table.name),
        clauses.join(",\n  "),
        options.join(",\n")
    )
}

/// `CREATE VIEW` for `view`, its query as the catalog keeps it.
pub fn create_view_sql(view: &ViewDef) -> String {
    format!("CREATE VIEW {} AS\n{}", ident(&view.name), view.query)
}

fn column_sql(table: &TableDef, field: &Field) -> String {
    let mut text = format!("{} {}", ident(field.name()), type_sql(field.data_type()));
    if !field.is_nullable() {
        text.push_str(" NOT NULL");
    }
    if let Some(key) = metadata_key(field) {
        text.push_str(" METADATA");
        if key != field.name() {
            text.push_str(&format!(" FROM {}", quote(key)));
        }
        if table.virtual_columns.iter().any(|c| c == field.name()) {
            text.push_str(" VIRTUAL");
        }
    }
    text
}

/// How a column type is declared so that it resolves to `t` again. As
/// DESCRIBE names it, except where that name is not one CREATE TABLE takes.
fn type_sql(t: &DataType) -> String {
    match t {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTEA".into(),
        // The zone is the session's (UTC): a declaration names none.
        DataType::Timestamp(unit, Some(_)) => format!("TIMESTAMP({}) WITH TIME ZONE", precision(unit)),
        DataType::List(item) | DataType::LargeList(item) | DataType::FixedSizeList(item, _) => {
            format!("ARRAY<{}>", type_sql(item.data_type()))
        }
        DataType::Struct(fields) => {
            let fields: Vec<String> = fields.iter().map(|f| format!("{} {}", ident(f.name()), type_sql(f.data_type()))).collect();
            format!("STRUCT<{}>", fields.join(", "))
        }
        other => sql_type_name(other),
    }
}

fn precision(unit: &TimeUnit) -> u8 {
    match unit {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 3,
        TimeUnit::Microsecond => 6,
        TimeUnit::Nanosecond => 9,
    }
}

/// A name as Flink prints it: in backticks, so it is taken as written.
fn ident(name: &str) -> String {
    Ident::with_quote('`', name).to_string()
}

#[cfg(test)]
mod tests {
    use crate::{Session, StatementOutput};

    type TestResult<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

    /// Runs `sql` in `session`; the text of its last statement's one row.
    async fn text_of(session: &mut Session, sql: &str) -> TestResult<String> {
        let Some(StatementOutput::Rows { batches, .. }) = session.execute_script(sql).await?.pop() else {
            return Err("no rows".into());
        };
        let batch = batches.first().ok_or("no batch")?;
        let column = batch.column(0).as_any().downcast_ref::<datafusion::arrow::array::StringArray>().ok_or("not text")?;
        assert_eq!((batch.num_rows(), batch.num_columns()), (1, 1), "one row in one column");
        Ok(column.value(0).to_string())
    }

    /// The statement `SHOW CREATE TABLE` prints for the table `create` makes,
    /// checked to make, in a fresh session, a table printed the same way.
    async fn round_trip(create: &str, name: &str) -> TestResult<String> {
        let mut first = Session::default();
        first.execute_script(create).await?;
        let shown = text_of(&mut first, &format!("SHOW CREATE TABLE {name}")).await?;
        let mut fresh = Session::default();
        fresh.execute_script(&shown).await.map_err(|e| format!("{e}\nin:\n{shown}"))?;
        let again = text_of(&mut fresh, &format!("SHOW CREATE TABLE {name}")).await?;
        assert_eq!(again, shown, "printed again after a round trip");
        Ok(shown)
    }

    #[tokio::test]
    async fn prints_columns_watermark_and_options_as_flink() -> TestResult {
        let shown = round_trip(
            "CREATE TABLE Clicks (user_id BIGINT, event_type VARCHAR, ts TIMESTAMP(3), \
             WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) WITH (connector = 'generator', rows = '100', 'rate' = '10')",
            "clicks",
        )
        .await?;
        assert_eq!(
            shown,
            "CREATE TABLE `clicks` (\n  `user_id` BIGINT,\n  `event_type` VARCHAR,\n  `ts` TIMESTAMP(3),\n  \
             WATERMARK FOR `ts` AS ts - INTERVAL '5' SECOND\n) WITH (\n  'connector' = 'generator',\n  \
             'rate' = '10',\n  'rows' = '100'\n)"
        );
        Ok(())
    }

    #[tokio::test]
    async fn every_column_type_key_and_quoted_name_survives_a_round_trip() -> TestResult {
        let shown = round_trip(
            r#"CREATE TABLE "Orders" (id BIGINT NOT NULL, "Mixed Case" VARCHAR, b BOOLEAN, t TINYINT, s SMALLINT,
               i INT, u INT UNSIGNED, f FLOAT, d DOUBLE, dec DECIMAL(10, 2), day DATE, raw BYTEA,
               ts0 TIMESTAMP(0), ts6 TIMESTAMP(6), ts9 TIMESTAMP, tz TIMESTAMP(3) WITH TIME ZONE,
               tags VARCHAR[], pt STRUCT<x INT, "Y" VARCHAR>, "it's" VARCHAR,
               PRIMARY KEY (id) NOT ENFORCED)
               WITH (connector = 'file', path = 'no/such/dir/it''s.jsonl', format = 'json')"#,
            "\"Orders\"",
        )
        .await?;
        for expected in [
            "CREATE TABLE `Orders` (",
            "`id` BIGINT NOT NULL,",
            "`Mixed Case` VARCHAR,",
            "`dec` DECIMAL(10, 2),",
            "`ts9` TIMESTAMP(9),",
            "`tz` TIMESTAMP(3),",
            "`tags` ARRAY<VARCHAR>,",
            "`pt` STRUCT<`x` INT, `Y` VARCHAR>,",
            "PRIMARY KEY (`id`) NOT ENFORCED",
            "'path' = 'no/such/dir/it''s.jsonl'",
        ] {
            assert!(shown.contains(expected), "{expected} not in\n{shown}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn metadata_columns_keep_their_key_and_virtual() -> TestResult {
        let shown = round_trip(
            "CREATE TABLE events (n BIGINT, k VARCHAR METADATA FROM 'key', p INT METADATA FROM 'partition' VIRTUAL, \
             \"offset\" BIGINT METADATA VIRTUAL) \
             WITH (connector = 'kafka', topic = 'events', 'bootstrap.servers' = 'localhost:9092')",
            "events",
        )
        .await?;
        assert!(shown.contains("`k` VARCHAR METADATA FROM 'key',"), "{shown}");
        assert!(shown.contains("`p` INT METADATA FROM 'partition' VIRTUAL,"), "{shown}");
        assert!(shown.contains("`offset` BIGINT METADATA VIRTUAL\n"), "{shown}");
        Ok(())
    }

    #[tokio::test]
    async fn views_and_missing_names() -> TestResult {
        let mut session = Session::default();
        session
            .execute_script(
                "CREATE TABLE t (user_id BIGINT) WITH (connector = 'generator', rows = '1'); \
                 CREATE VIEW v AS SELECT user_id FROM t WHERE user_id > 1",
            )
            .await?;
        let view = text_of(&mut session, "SHOW CREATE VIEW v").await?;
        assert_eq!(view, "CREATE VIEW `v` AS\nSELECT user_id FROM t WHERE user_id > 1");
        let error = |sql: &'static str| {
            let mut session = Session::default();
            async move {
                session.execute_script("CREATE TABLE t (user_id BIGINT) WITH (connector = 'generator'); CREATE VIEW v AS SELECT * FROM t").await?;
                Ok::<_, crate::SqlError>(session.execute_script(sql).await.err().map(|e| e.to_string()).unwrap_or_default())
            }
        };
        assert_eq!(error("SHOW CREATE TABLE nope").await?, "table 'nope' does not exist (SHOW TABLES lists them)");
        assert_eq!(error("SHOW CREATE TABLE v").await?, "'v' is a view: use SHOW CREATE VIEW v");
        assert_eq!(error("SHOW CREATE VIEW t").await?, "'t' is a table: use SHOW CREATE TABLE t");
        Ok(())
    }
}
