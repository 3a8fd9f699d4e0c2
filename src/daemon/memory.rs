//! Sizing the defaults to the memory the process may use: the limit of its cgroup (v2
//! `memory.max`, v1 `memory.limit_in_bytes`, the smallest along the path to the root, as the
//! kernel enforces every ancestor's), and what ringtftpd then chooses.
//!
//! Without a limit the defaults stand (256 MiB of file data, an 8 MiB cache per shard, one
//! shard per CPU). Under one, a container or a systemd `MemoryMax=`, they are cut so that the
//! process's fixed memory and the file data it holds stay within five eighths of it, the
//! main sockets' queues within another eighth: the kernel charges the cgroup for more than
//! the process's own pages (the transfers' socket buffers, and the page cache the files are
//! read through, which it can reclaim), and an OOM kill in the middle of a storm loses every
//! transfer.

use std::path::{Path, PathBuf};

use ringtftp::server::Config;

/// What one shard holds whatever it serves, measured on the io_uring engine (1.1 MiB resident
/// idle, with its receive buffers scaled below once a storm has touched them): its rings, its
/// thread's stack and bookkeeping.
const SHARD_FIXED: u64 = 3 << 19;
/// The process besides its shards (5 MiB resident with one shard, idle).
const BASE: u64 = 4 << 20;
/// Bytes per io_uring receive buffer (the engine's `RECV_SIZE`).
const RECV_BUFFER: u64 = 576;
/// Never less file data than this: a few transfers of distinct files must always fit.
const FILE_DATA_MIN: u64 = 4 << 20;

/// The memory limit this process runs under, with the file that says it; `None` without one.
pub fn limit() -> Option<(u64, PathBuf)> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut best: Option<(u64, PathBuf)> = None;
    for line in cgroups.lines() {
        // `ID:CONTROLLERS:PATH`; v2 is `0::PATH`.
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (mount, file) = match controllers {
            "" => ("/sys/fs/cgroup", "memory.max"),
            c if c.split(',').any(|c| c == "memory") => {
                ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
            }
            _ => continue,
        };
        // Inside a container the mount is often the container's own cgroup while the path is
        // the host's: each ancestor is tried, and the mount's root last.
        let mut dir = Path::new(path);
        loop {
            let at = Path::new(mount)
                .join(dir.strip_prefix("/").unwrap_or(dir))
                .join(file);
            if let Some(bytes) = read_limit(&at) {
                if best.as_ref().is_none_or(|(b, _)| bytes < *b) {
                    best = Some((bytes, at));
                }
            }
            match dir.parent() {
                Some(parent) => dir = parent,
                None => break,
            }
        }
    }
    best
}

/// A limit file's value; `None` for "max" or v1's "no limit" (a number near 2^63).
fn read_limit(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let bytes: u64 = text.trim().parse().ok()?;
    (bytes < 1 << 60).then_some(bytes)
}

/// Cuts the defaults the operator did not set to fit `limit` bytes; says what it chose.
///
/// `shards` was given (`--shards`), or is one per CPU and may be lowered; the file data
/// (`--max-buffer-mb`) and the per-shard cache (`--cache-mb`) likewise.
pub fn fit(config: &mut Config, limit: u64, source: &Path, given: Given) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ours = limit / 8 * 5;
    let mut shards = match config.shards {
        0 => cpus,
        n => n,
    };
    if !given.shards {
        // Each shard's fixed memory within a quarter of the limit.
        let fit = ((limit / 4) / SHARD_FIXED).max(1) as usize;
        shards = shards.min(fit);
        config.shards = shards;
    }
    let fixed = BASE + shards as u64 * SHARD_FIXED;
    if given.shards && fixed > ours / 2 {
        tracing::warn!(
            shards,
            limit_mb = limit >> 20,
            "{shards} shards hold about {} MiB of the {} MiB memory limit before any file data; \
             fewer shards (--shards) leave more for transfers",
            fixed >> 20,
            limit >> 20
        );
    }
    // The budget bounds what admission counts: one chunk per transfer of a distinct file. A
    // running transfer also holds the chunk it reads ahead, so in a storm of distinct files
    // the file data resident is up to twice the budget (measured: 60 MiB resident under a
    // 64 MiB limit when the budget took all of five eighths).
    let file_data = (ours.saturating_sub(fixed) / 2).max(FILE_DATA_MIN);
    if !given.buffer && (file_data as usize) < config.buffer_max {
        config.buffer_max = file_data as usize;
    }
    // The shards' caches share at most half the file data (the server keeps to that itself);
    // an explicit --cache-mb is cut there with a warning of its own.
    let cache = config.buffer_max / 2 / shards;
    if !given.cache && cache < config.block_cache {
        config.block_cache = cache;
    }
    // Datagrams queued on each main socket and taken into the engine's receive buffers count
    // too: an eighth of the limit for all of them together.
    let per_shard = limit / 8 / shards as u64;
    config.recv_buffer = config.recv_buffer.min(per_shard as usize);
    let entries = (per_shard / 2 / RECV_BUFFER)
        .max(256)
        .min(u64::from(config.recv_ring.max(1)));
    // A power of two, as the engine's buffer ring takes it.
    config.recv_ring = 1 << (63 - entries.leading_zeros());
    tracing::info!(
        limit_mb = limit >> 20,
        shards,
        max_buffer_mb = config.buffer_max >> 20,
        cache_kb = config.block_cache >> 10,
        recv_buffer_kb = config.recv_buffer >> 10,
        recv_ring = config.recv_ring,
        "memory limit {} MiB ({}): {shards} shard{}, {} MiB of file data, {} KiB cache per shard",
        limit >> 20,
        source.display(),
        if shards == 1 { "" } else { "s" },
        config.buffer_max >> 20,
        config.block_cache >> 10,
    );
}

/// Which of the sized settings the operator gave.
#[derive(Debug, Clone, Copy, Default)]
pub struct Given {
    pub shards: bool,
    pub buffer: bool,
    pub cache: bool,
}
