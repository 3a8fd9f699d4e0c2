//! Helpers shared by every integration test: scratch directories, deterministic file contents,
//! SHA-256, the daemon under test ([`Daemon`]) on each of its executors ([`Backend`]), the real
//! TFTP clients (`clients.rs`) and a raw TFTP peer on a UDP socket (`raw.rs`).

// Not every helper has a caller yet: the test modules that use them are still being written.
#![allow(dead_code)]

mod backend;
mod clients;
mod daemon;
mod process;
pub mod raw;
pub mod skip;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

// Re-exported so tests say `util::Daemon`; unused until the test modules arrive.
pub use backend::Backend;
#[allow(unused_imports)]
pub use clients::{
    client, fetch_atftp, fetch_busybox, fetch_curl, fetch_curl_with, fetch_tftp_hpa, CurlOptions,
    Mode, ATFTP, BUSYBOX, CURL, TFTP_HPA,
};
#[allow(unused_imports)]
pub use daemon::{free_udp_port, Daemon, PROBE_FILE};
#[allow(unused_imports)]
pub use process::{run, Finished};

/// Serialises the tests that load the machine heavily (10 000 clients at once) with the ones
/// whose real clients run on fixed timers (loss in network namespaces): each holds this while
/// it runs, so a starved CPU never fails a timer-bound client. Other tests run alongside.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that panicked while holding it leaves it poisoned; the lock is still good.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the tests run as root (the effective UID from /proc: no libc call needed).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// A fresh directory under `std::env::temp_dir()`, removed on drop.
///
/// When the owning test panics the directory is kept and its path printed, so the files a
/// client wrote can be inspected.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `ringtftp-test-<pid>-<n>-<label>`; `label` (usually the test's name) is only
    /// there to make a kept directory easy to recognise.
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path =
            std::env::temp_dir().join(format!("ringtftp-test-{}-{n}-{label}", std::process::id()));
        // A directory left by an earlier process with the same pid must not leak into this test.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Writes `bytes` to `dir/name`, creating the parent directories `name` mentions.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    fs::write(&path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// `len` pseudo-random bytes, the same for the same `seed` on every run (xorshift64*).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    // xorshift must not start from 0; mixing in a constant keeps seed 0 usable.
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    if state == 0 {
        state = 0x9E37_79B9_7F4A_7C15;
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of the file at `path` (panics if it cannot be read).
pub fn sha256_file(path: &Path) -> String {
    let mut file =
        fs::File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn pattern_is_deterministic_and_seeded() {
    assert_eq!(pattern(1000, 7), pattern(1000, 7));
    assert_ne!(pattern(1000, 7), pattern(1000, 8));
    assert_eq!(pattern(13, 0).len(), 13);
    assert_eq!(&pattern(100, 3)[..13], &pattern(13, 3)[..]);
}

#[test]
fn sha256_matches_known_vectors() {
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert_eq!(sha256(b""), empty);
    let dir = TempDir::new("sha256_matches_known_vectors");
    let abc = write_file(dir.path(), "sub/abc", b"abc");
    assert_eq!(
        sha256_file(&abc),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

/// `<target>/debug/loadgen` (next to `ringtftpd`), built by `cargo test --workspace` (the
/// loadgen package's own integration test makes cargo build it).
pub fn loadgen() -> Option<PathBuf> {
    let exe = Path::new(env!("CARGO_BIN_EXE_ringtftpd"));
    let path = exe.parent()?.join("loadgen");
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "{} not built (cargo test --workspace builds it)",
        path.display()
    );
    skip::missing(&why, "cargo build -p loadgen");
    None
}
