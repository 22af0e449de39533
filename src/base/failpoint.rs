//! Pause points for the crash tests, compiled into debug builds only.
//!
//! With `AUDIT_TRANSFER_FAILPOINT=<name>:<n>` and `AUDIT_TRANSFER_FAILPOINT_DIR=<dir>`, the n-th
//! time the job reaches `name` it creates `<dir>/<name>.reached` and waits until
//! `<dir>/<name>.continue` exists. A test can then SIGKILL the process at exactly that point, or
//! break its database connection and let it continue. Release builds compile this to nothing.

#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static COUNTS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

    let Ok(spec) = std::env::var("AUDIT_TRANSFER_FAILPOINT") else {
        return;
    };
    let Some((point, nth)) = spec.split_once(':') else {
        return;
    };
    if point != name {
        return;
    }
    let count = {
        let mut guard = COUNTS.lock().unwrap();
        let c = guard
            .get_or_insert_with(HashMap::new)
            .entry(name.to_string())
            .or_insert(0);
        *c += 1;
        *c
    };
    if nth.parse::<u64>().ok() != Some(count) {
        return;
    }
    let dir = std::path::PathBuf::from(
        std::env::var("AUDIT_TRANSFER_FAILPOINT_DIR").unwrap_or_else(|_| ".".into()),
    );
    let _ = std::fs::write(dir.join(format!("{name}.reached")), b"");
    // Blocking on purpose: nothing else may happen in this process until the test decides.
    while !dir.join(format!("{name}.continue")).exists() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_name: &str) {}
