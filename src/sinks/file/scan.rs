//! `verify` for files and buckets: every document they hold, with where it is. The lines carry
//! no ids, so `verify` matches them by content.

use super::object::Bucket;
use crate::base::sink::Found;
use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use std::io::Read;
use std::path::Path;

/// Each line of every archive file under `dir` (`.jsonl`, `.jsonl.gz`, CDP's `.json.gz`);
/// temporary files of a write in progress (`.name.tmp-…`) are not archive files.
pub fn local(dir: &Path, each: &mut dyn Found) -> Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            // Nothing written yet: an empty archive.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", d.display())),
        };
        let mut paths: Vec<_> = entries
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot list {}", d.display()))?;
        paths.sort();
        for p in paths {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if p.is_dir() {
                stack.push(p);
            } else if archive_file(name) {
                let bytes =
                    std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
                lines(&p.display().to_string(), name, &bytes, each)?;
            }
        }
    }
    Ok(())
}

/// Each line of every archive object under the bucket's prefix.
pub async fn bucket(b: &Bucket, each: &mut dyn Found) -> Result<()> {
    let listed: Vec<object_store::ObjectMeta> = b
        .store
        .list(Some(&b.location.prefix))
        .try_collect()
        .await
        .with_context(|| format!("cannot list {}", b.location))?;
    for meta in listed {
        let name = meta.location.filename().unwrap_or_default().to_string();
        if !archive_file(&name) {
            continue;
        }
        let bytes = b
            .store
            .get(&meta.location)
            .await
            .with_context(|| format!("cannot read {}", meta.location))?
            .bytes()
            .await
            .with_context(|| format!("cannot read {}", meta.location))?;
        lines(
            &format!("{}/{}", b.location, meta.location),
            &name,
            &bytes,
            each,
        )?;
    }
    Ok(())
}

fn archive_file(name: &str) -> bool {
    !name.starts_with('.')
        && (name.ends_with(".jsonl") || name.ends_with(".jsonl.gz") || name.ends_with(".json.gz"))
}

/// `where:line` and the bytes of each non-empty line; gzip by its name.
fn lines(at: &str, name: &str, bytes: &[u8], each: &mut dyn Found) -> Result<()> {
    let text;
    let body: &[u8] = if name.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .with_context(|| format!("{at} is not valid gzip"))?;
        text = out;
        &text
    } else {
        bytes
    };
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        if !line.is_empty() {
            each.found(&format!("{at}:{}", n + 1), line);
        }
    }
    Ok(())
}
