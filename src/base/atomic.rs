//! Replacing a file so that a reader (or the next run after a crash) sees either the old or the
//! new content, never half of it: write a temporary file next to it, fsync, rename over the
//! target, fsync the directory (without which the rename itself may not survive a power loss).

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Writes `path` through `write`, which gets the temporary file and hands it back when done
/// (encoders that own their writer return it from `finish`). On error the temporary file is
/// removed and `path` is untouched.
pub fn replace(path: &Path, write: impl FnOnce(File) -> io::Result<File>) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let file = write(File::create(&tmp)?)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// An exclusive lock on `<path>.lock` for the state file in variable `var`, held while the
/// returned file is open and released by the OS even if the process is killed. A separate
/// file, because `path` itself is replaced on every save. A lock file that cannot be created is
/// a configuration error (exit 2); one held by another run, or a file system without locks,
/// stops this run (exit 1).
pub fn lock_state_file(var: &str, path: &Path) -> anyhow::Result<File> {
    let lock_path = beside(path);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            crate::base::exit::config_error(format!(
                "invalid {var} {}: cannot create its lock file {} ({e})",
                path.display(),
                lock_path.display()
            ))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another run is using {var} {} (locked: {}); runs of one {var} must not overlap",
            path.display(),
            lock_path.display()
        ),
        Err(fs::TryLockError::Error(e)) => {
            anyhow::bail!("cannot lock {} for {var}: {e}", lock_path.display())
        }
    }
}

/// `<path>.lock`.
fn beside(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn replaces_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&path, |mut f| f.write_all(b"one").map(|_| f)).unwrap();
        replace(&path, |mut f| f.write_all(b"two").map(|_| f)).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        let err = replace(&path, |mut f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursor.json");
        let first = lock_state_file("S3_CURSOR_FILE", &path).unwrap();
        assert!(dir.path().join("cursor.json.lock").exists());
        let e = lock_state_file("S3_CURSOR_FILE", &path).unwrap_err();
        assert!(
            e.to_string()
                .contains("another run is using S3_CURSOR_FILE"),
            "{e}"
        );
        assert_eq!(
            crate::base::exit::exit_for(&e),
            crate::base::exit::Exit::Failed
        );
        drop(first);
        assert!(lock_state_file("S3_CURSOR_FILE", &path).is_ok());
        let e =
            lock_state_file("S3_CURSOR_FILE", &dir.path().join("no/such/dir/c.json")).unwrap_err();
        assert_eq!(
            crate::base::exit::exit_for(&e),
            crate::base::exit::Exit::Config
        );
    }
}
