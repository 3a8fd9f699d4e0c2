//! Skipped tests, said out loud: a test that cannot run here (a client not installed, no root
//! for network namespaces) calls [`missing`] or [`unsupported`], which print one line at once
//! and add it to a list printed again after libtest's summary, when the test binary exits, so
//! `cargo test --workspace` ends with what was skipped and how to install it — visible without
//! `--nocapture`, since both go straight to the process's stderr, past libtest's capture.
//!
//! With `RINGTFTP_REQUIRE_CLIENTS` set (`.ci/run` sets it and installs everything), [`missing`]
//! fails the test instead.

use std::io::Write;
use std::sync::{Mutex, Once};

/// Set (to anything but "" or "0") by `.ci/run`: something missing fails the test.
pub const REQUIRE: &str = "RINGTFTP_REQUIRE_CLIENTS";

/// Whether `RINGTFTP_REQUIRE_CLIENTS` asks for every test to run.
pub fn required() -> bool {
    std::env::var_os(REQUIRE).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The running test skips because `what` is missing, which `install` provides; panics instead
/// when [`required`].
pub fn missing(what: &str, install: &str) {
    if required() {
        panic!("{what}, required because {REQUIRE} is set ({install})");
    }
    record(format!("{what} (install: {install})"));
}

/// The running test skips because this host cannot run it (`why`), which no install fixes.
pub fn unsupported(why: &str) {
    record(why.to_owned());
}

static SKIPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record(why: String) {
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let line = format!("SKIPPED {test}: {why}");
    // Straight to the stderr handle: libtest captures `eprintln!`, not this.
    let _ = writeln!(std::io::stderr(), "{line}");
    SKIPPED.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    static SUMMARY: Once = Once::new();
    SUMMARY.call_once(|| {
        // SAFETY: `summary` is an `extern "C" fn()` that never unwinds; atexit only stores it.
        unsafe {
            libc::atexit(summary);
        }
    });
}

/// Prints the list at exit, after libtest's own summary.
extern "C" fn summary() {
    let skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = format!(
        "\n{} integration test(s) skipped something; they passed without running it \
         (set {REQUIRE}=1 to make this a failure):\n",
        skipped.len()
    );
    for line in skipped.iter() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    let _ = std::io::stderr().write_all(out.as_bytes());
}
