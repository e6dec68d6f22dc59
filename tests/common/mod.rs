//! What the integration tests share: external processes (brokers, S3 and
//! registry servers, the Sluice server) stopped when the test ends, and
//! waiting for them to listen.

#![allow(dead_code)] // each test binary uses its share

pub mod broker;
pub mod runs;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// A child process killed (and reaped) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits up to 30 s for something to accept connections at `addr`.
pub fn wait_listening(addr: &str, fails_with: &str) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(fails_with.into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The golden SQL files (`*.slt`) under `dir`, at any depth, appended to `out`.
pub fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            slt_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "slt") {
            out.push(path);
        }
    }
    Ok(())
}
