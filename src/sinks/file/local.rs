//! Files in a local directory: written under a temporary name, fsynced and renamed, so a reader
//! never sees half a file and the source is marked only once the file is durable. A page
//! re-shipped after a crash replaces its own file (same name, same content).

use super::write_lines;
use crate::base::document::Document;
use anyhow::{Context, Result};
use flate2::write::GzEncoder;
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// Writes `docs` to `dir/name` atomically (see [`crate::base::atomic::replace`]).
pub fn write_atomically(
    dir: &Path,
    name: &str,
    gzip: Option<flate2::Compression>,
    docs: &[&Document],
) -> Result<PathBuf> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create OUTPUT_PATH {}", dir.display()))?;
    let final_path = dir.join(name);
    crate::base::atomic::replace(&final_path, |file| {
        if let Some(level) = gzip {
            let mut gz = GzEncoder::new(BufWriter::new(file), level);
            write_lines(&mut gz, docs)?;
            gz.finish()?.into_inner().map_err(|e| e.into_error())
        } else {
            let mut w = BufWriter::new(file);
            write_lines(&mut w, docs)?;
            w.into_inner().map_err(|e| e.into_error())
        }
    })
    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", final_path.display()))?;
    Ok(final_path)
}

/// The directory exists (or can be made) and takes a file.
pub fn check(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create OUTPUT_PATH {}", dir.display()))?;
    let probe = dir.join(format!(".audit-transfer-check-{}", std::process::id()));
    File::create(&probe)
        .and_then(|_| fs::remove_file(&probe))
        .with_context(|| format!("OUTPUT_PATH {} is not writable", dir.display()))
}
