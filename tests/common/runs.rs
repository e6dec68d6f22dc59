//! Driving `sluice run` processes through checkpoints: how far their
//! checkpoints have got, waiting for more, and what they said on stderr.

use std::io::Read;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// The highest id among the completed checkpoints under `dir`.
pub fn latest_checkpoint(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter(|e| e.path().join("_metadata.json").exists())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("chk-")?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Waits until checkpoint `past` + `more` has completed (or the run exits).
pub fn wait_for_checkpoints(child: &mut Child, dir: &Path, past: u64, more: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let latest = latest_checkpoint(dir);
        if latest >= past + more {
            return Ok(latest);
        }
        if let Some(status) = child.try_wait()? {
            let err = stderr_of(child)?;
            return Err(format!("sluice run exited ({status}) before checkpoint {}: {err}", past + more).into());
        }
        if Instant::now() > deadline {
            return Err(format!("no checkpoint past {latest} within 60 s").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Everything the (ended) child wrote to its piped stderr.
pub fn stderr_of(child: &mut Child) -> Result<String, Box<dyn std::error::Error>> {
    let mut err = String::new();
    child.stderr.take().ok_or("stderr")?.read_to_string(&mut err)?;
    Ok(err)
}
