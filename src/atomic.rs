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

/// An exclusive lock on `<path>.lock`, held while the returned file is open and released by
/// the OS even if the process is killed. A separate file, because `path` itself is replaced on
/// every save. `Ok(None)`: another process holds it.
pub fn lock_beside(path: &Path) -> io::Result<Option<(File, std::path::PathBuf)>> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let lock_path = path.with_file_name(name);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some((file, lock_path))),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// [`lock_beside`] for the state file in variable `var`, with the errors a run reports: a lock
/// file that cannot be created is a configuration error (exit 2); one held by another run stops
/// this one.
pub fn lock_state_file(var: &str, path: &Path) -> anyhow::Result<File> {
    match lock_beside(path) {
        Ok(Some((file, _))) => Ok(file),
        Ok(None) => anyhow::bail!(
            "another run is using {var} {} (locked: {}.lock); runs of one {var} must not overlap",
            path.display(),
            path.display()
        ),
        Err(e) => Err(crate::error::config_error(format!(
            "invalid {var} {}: cannot create its lock file beside it ({e})",
            path.display()
        ))),
    }
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
        let (first, lock_path) = lock_beside(&path).unwrap().unwrap();
        assert!(lock_path.ends_with("cursor.json.lock"));
        assert!(lock_beside(&path).unwrap().is_none());
        drop(first);
        assert!(lock_beside(&path).unwrap().is_some());
    }
}
