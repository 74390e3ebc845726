//! Benchmark helpers shared by the bench binaries.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Refuses to run without the release `bulk-export` binary the benchmark drives.
pub fn require_binary(bin: &Path) -> anyhow::Result<()> {
    if !bin.exists() {
        anyhow::bail!("{bin:?} not found: cargo build --release -p shared --bin bulk-export");
    }
    Ok(())
}

/// Writes `copies` copies of every ndjson file with ids and `Type/id` references suffixed.
pub fn replicate(src: &Path, copies: usize) -> anyhow::Result<(PathBuf, usize, u64)> {
    let out = crate::temp_dir();
    let (mut resources, mut bytes) = (0usize, 0u64);
    for entry in std::fs::read_dir(src)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("ndjson") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let mut f = std::io::BufWriter::new(std::fs::File::create(
            out.join(path.file_name().context("name")?),
        )?);
        for c in 0..copies {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let line = if c == 0 {
                    line.to_string()
                } else {
                    let mut v: serde_json::Value = serde_json::from_str(line)?;
                    suffix(&mut v, &format!("-c{c}"), true);
                    v.to_string()
                };
                bytes += line.len() as u64 + 1;
                resources += 1;
                writeln!(f, "{line}")?;
            }
        }
    }
    Ok((out, resources, bytes))
}

pub fn suffix(v: &mut serde_json::Value, sfx: &str, top: bool) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, c) in m.iter_mut() {
                match (k.as_str(), c) {
                    ("id", serde_json::Value::String(s)) if top => s.push_str(sfx),
                    ("reference", serde_json::Value::String(s))
                        if s.contains('/') && !s.starts_with('#') =>
                    {
                        s.push_str(sfx)
                    }
                    (_, c) => suffix(c, sfx, false),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|c| suffix(c, sfx, false)),
        _ => {}
    }
}
