//! Puts the git revision into `--version`: AUDIT_TRANSFER_GIT_REV from the environment (for
//! image builds without .git: docker build --build-arg GIT_REV=$(git rev-parse --short HEAD)),
//! else `git rev-parse --short HEAD`, else "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
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
            // Rebuild when HEAD moves: HEAD itself, the branch it points to, packed refs.
            for path in ["HEAD", "packed-refs"] {
                if let Some(p) = git(&["rev-parse", "--git-path", path]) {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                if let Some(p) = git(&["rev-parse", "--git-path", &branch]) {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
            rev
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=AUDIT_TRANSFER_GIT_REV={rev}");
}
