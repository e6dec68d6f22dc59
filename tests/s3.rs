//! The lake on S3: written through an S3-compatible endpoint (moto's server, from
//! PyPI), listed by boto3 and read back by DataFusion over `object_store`.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::prelude::SessionContext;
use object_store::aws::AmazonS3Builder;
use sluice_connectors::table_printer::format_cells;
use sluice_sql::{Session, StatementOutput};

use common::{free_port, wait_listening, KillOnDrop};

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct S3Server {
    _child: KillOnDrop,
    endpoint: String,
}

fn start_s3() -> Result<S3Server, Box<dyn std::error::Error>> {
    let port = free_port()?;
    let child = Command::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = S3Server { _child: KillOnDrop(child), endpoint: format!("http://127.0.0.1:{port}") };
    wait_listening(&format!("127.0.0.1:{port}"), "moto server did not start (pip install 'moto[server]')")?;
    Ok(server)
}

fn boto3(endpoint: &str, code: &str) -> Result<String, Box<dyn std::error::Error>> {
    let script = format!(
        "import boto3\ns3 = boto3.client('s3', endpoint_url='{endpoint}', aws_access_key_id='test', \
         aws_secret_access_key='test', region_name='us-east-1')\n{code}"
    );
    let out = Command::new("python3").args(["-c", &script]).output()?;
    if !out.status.success() {
        return Err(format!("boto3: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lake_on_s3_read_back_by_boto3_and_datafusion() -> TestResult {
    let s3 = start_s3()?;
    boto3(&s3.endpoint, "s3.create_bucket(Bucket='lake')")?;
    let mut session = Session::default();
    session
        .execute_script(&format!(
            "CREATE TABLE clicks (event_type VARCHAR, price DOUBLE, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) \
             WITH (connector = 'generator', rows = '5000', 'interval.ms' = '1000'); \
             CREATE TABLE lake (window_start TIMESTAMP(3), event_type VARCHAR, n BIGINT) \
             WITH (connector = 'lake', path = 's3://lake/clicks', 'partition.by' = 'dt,hour', 'partition.time-column' = 'window_start', \
                   's3.endpoint' = '{}', 's3.access-key-id' = 'test', 's3.secret-access-key' = 'test', 's3.allow-http' = 'true');",
            s3.endpoint
        ))
        .await?;
    let mut outputs = session
        .execute_script(
            "INSERT INTO lake SELECT window_start, event_type, count(*) \
             FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' MINUTE)) GROUP BY window_start, window_end, event_type",
        )
        .await?;
    let Some(StatementOutput::Insert { mut job, .. }) = outputs.pop() else { return Err("not an insert".into()) };
    job.wait().await?;

    let keys = boto3(&s3.endpoint, "print('\\n'.join(o['Key'] for o in s3.list_objects_v2(Bucket='lake')['Contents']))")?;
    let keys: Vec<&str> = keys.lines().collect();
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| k.starts_with("clicks/dt=2024-01-01/hour=") && k.ends_with(".parquet")), "{keys:?}");

    let store = AmazonS3Builder::new()
        .with_bucket_name("lake")
        .with_endpoint(&s3.endpoint)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_allow_http(true)
        .build()?;
    let ctx = SessionContext::new();
    ctx.register_object_store(&url::Url::parse("s3://lake")?, Arc::new(store));
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![("dt".to_string(), DataType::Utf8), ("hour".to_string(), DataType::Utf8)]);
    ctx.register_listing_table("lake", "s3://lake/clicks/", options, None, None).await?;
    let batches = ctx.sql("SELECT sum(n), count(DISTINCT window_start), min(hour), max(hour) FROM lake").await?.collect().await?;
    let rows = format_cells(&batches[0])?;
    // 5000 events one second apart: 1 h 23 min of event time in 10-minute windows.
    assert_eq!(rows, vec![vec!["5000".to_string(), "9".to_string(), "00".to_string(), "01".to_string()]]);
    Ok(())
}

/// Checkpoints on S3 (`SET 'state.checkpoints.dir' = 's3://...'` with Flink's
/// `s3.*` settings): boto3 lists the completed ones, and a second run resumes
/// from the newest.
#[test]
fn checkpoints_on_s3_are_listed_by_boto3_and_resumed_from() -> TestResult {
    let s3 = start_s3()?;
    boto3(&s3.endpoint, "s3.create_bucket(Bucket='state')")?;
    let dir = tempfile::tempdir()?;
    let sql = format!(
        "SET 'execution.checkpointing.interval' = '300 ms'; SET 'state.checkpoints.dir' = 's3://state/checkpoints'; \
         SET 's3.endpoint' = '{endpoint}'; SET 's3.access-key' = 'test'; SET 's3.secret-key' = 'test'; SET 's3.allow-http' = 'true'; \
         SET 'pipeline.name' = 'counts'; \
         CREATE TABLE clicks (event_type VARCHAR, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) \
         WITH (connector = 'generator', rate = '500'); \
         CREATE TABLE out (window_start TIMESTAMP(3), event_type VARCHAR, n BIGINT) WITH (connector = 'lake', path = '{}'); \
         INSERT INTO out SELECT window_start, event_type, count(*) AS n \
         FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY window_start, window_end, event_type;",
        dir.path().join("lake").display(),
        endpoint = s3.endpoint,
    );
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "-c", &sql])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
    };
    let completed = || boto3(&s3.endpoint, "r = s3.list_objects_v2(Bucket='state', Prefix='checkpoints/counts/')\nprint(sum(1 for o in r.get('Contents', []) if o['Key'].endswith('/_metadata.json')))");
    let interrupt = |mut child: std::process::Child| -> Result<String, Box<dyn std::error::Error>> {
        Command::new("kill").args(["-INT", &child.id().to_string()]).status()?;
        let status = child.wait()?;
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().ok_or("stderr")?, &mut err)?;
        assert!(status.success(), "{err}");
        Ok(err)
    };
    let first = run()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while completed()?.trim() == "0" {
        assert!(std::time::Instant::now() < deadline, "no checkpoint on S3 within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    interrupt(first)?;
    let second = run()?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    let stderr = interrupt(second)?;
    assert!(stderr.contains("resuming 'counts' from checkpoint") && stderr.contains("s3://state/checkpoints/counts"), "{stderr}");
    Ok(())
}
