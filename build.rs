//! Puts the git revision into `--version`: AUDIT_TRANSFER_GIT_REV from the environment (for
//! image builds without .git: docker build --build-arg GIT_REV=$(git rev-parse --short HEAD)),
//! else `git rev-parse --short HEAD`, else "unknown".

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// `$GIT_DIR/<name>` as git resolves it: in a worktree HEAD is the worktree's own, refs and
/// packed-refs are the shared ones. Absolute, since git answers relative to the current dir.
fn git_path(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(git(&["rev-parse", "--git-path", name])?);
    Some(if p.is_absolute() {
        p
    } else {
        std::env::current_dir().ok()?.join(p)
    })
}

/// The files that change when HEAD moves to another commit. Cargo counts a watched path that
/// does not exist as changed on every build (and then recompiles the crate), so only existing
/// paths are named.
fn head_watch() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = ["HEAD", "packed-refs", "reftable"]
        .into_iter()
        .filter_map(git_path)
        .collect();
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]).and_then(|b| git_path(&b)) {
        // A branch held only in packed-refs (after `git gc`) is written loose by its next
        // commit, which touches nothing else watched here; its directory sees the new file.
        let watched = branch
            .ancestors()
            .find(|p| p.exists())
            .map(Path::to_path_buf);
        paths.extend(watched);
    }
    paths.retain(|p| p.exists());
    paths
}

fn main() {
    println!("cargo:rerun-if-env-changed=AUDIT_TRANSFER_GIT_REV");
    if let Ok(rev) = std::env::var("AUDIT_TRANSFER_GIT_REV") {
        if !rev.trim().is_empty() {
            println!("cargo:rustc-env=AUDIT_TRANSFER_GIT_REV={}", rev.trim());
            return;
        }
    }
    let rev = match git(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) => {
            for path in head_watch() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
            rev
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=AUDIT_TRANSFER_GIT_REV={rev}");
}
