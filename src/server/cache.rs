//! File data in memory: 64 KiB chunks read once into registered buffers, shared by every
//! transfer of the shard, and the pieces a DATA datagram (RFC 1350 §5: opcode, block number,
//! up to `blksize` bytes, RFC 2348) is sent from.
//!
//! A DATA datagram goes out as an iovec list — its 4-byte header from a static table, then its
//! payload straight from the chunk(s) holding it — so a file is read in large fixed reads,
//! never copied, and the same bytes serve every client at every block size. With UDP GSO a
//! whole window of such datagrams is one `sendmsg`: the kernel concatenates the iovecs and cuts
//! them at `4 + blksize`.
//!
//! Chunks are keyed by the file's identity *and* version (device, inode, mtime, size, ctime, as
//! [`FileId`] says at open time), so a replaced or rewritten file is a different key and never
//! gets stale bytes. Two transfers that miss the same chunk at once read it once: the second
//! waits for the first. The cache is bounded in bytes and forgets the oldest chunks first; a
//! chunk still used by a transfer lives on until that transfer lets go of it.
//!
//! The file data transfers hold — chunks, registered or not, and netascii encodings — is
//! counted against one server-wide [`Budget`]. A new request is refused with "Server busy"
//! while the budget is spent, so a flood of requests for many different files cannot grow
//! memory without bound, while running transfers always get the chunks they need (so the bound
//! is soft: those admitted together may each take a few chunks past it).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::resolve::FileId;

/// Bytes per chunk: one fixed read, and a multiple of the page size.
pub(crate) const CHUNK: usize = 64 * 1024;

/// Memory a chunk was read into, whoever owns it: a heap buffer, a buffer registered with an
/// executor's ring. The cache and the sends only need where its bytes are.
///
/// # Safety
///
/// [`ChunkMemory::as_ptr`] must point to memory that stays where it is, readable and
/// unchanged, for as long as the value lives, and that holds at least the `len` initialised
/// bytes the [`Chunk`] made of it says.
pub(crate) unsafe trait ChunkMemory: 'static {
    fn as_ptr(&self) -> *const u8;
    /// The bytes the memory holds.
    fn len(&self) -> usize;
}

// SAFETY: a Vec's heap buffer does not move while the Vec is not touched, and a Chunk never
// touches it again.
unsafe impl ChunkMemory for Vec<u8> {
    fn as_ptr(&self) -> *const u8 {
        <[u8]>::as_ptr(self)
    }

    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

/// A run of file bytes, `[index × CHUNK, index × CHUNK + len)`, never written again once read.
pub(crate) struct Chunk {
    buf: Box<dyn ChunkMemory>,
    len: usize,
    /// The chunk's place in the [`Budget`], given back when the last holder drops it.
    _lease: Lease,
}

impl Chunk {
    /// Wraps a buffer whose first `len` bytes hold the chunk (never more than it has), counted
    /// by `lease`.
    pub(crate) fn new(buf: impl ChunkMemory, len: usize, lease: Lease) -> Self {
        Self {
            len: len.min(buf.len()),
            buf: Box::new(buf),
            _lease: lease,
        }
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk").field("len", &self.len).finish()
    }
}

/// The bytes of file data held in memory across the server, and the most it may hold before
/// new requests are refused.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Whether `more` bytes would take the server past its budget: new requests wait.
    pub(crate) fn exceeded_by(&self, more: usize) -> bool {
        self.used.load(Ordering::Relaxed).saturating_add(more) > self.max
    }

    /// Counts `bytes` until the lease is dropped. Never refused: a running transfer must get
    /// the data it needs, and admission (see [`Budget::exceeded_by`]) is what bounds the total.
    pub(crate) fn lease(self: &Arc<Self>, bytes: usize) -> Lease {
        self.used.fetch_add(bytes, Ordering::Relaxed);
        Lease {
            budget: self.clone(),
            bytes,
        }
    }

    /// Bytes held now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Bytes counted in a [`Budget`] while this lives.
#[derive(Debug)]
pub(crate) struct Lease {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// One iovec of a datagram, owned for the time of the send.
#[derive(Debug, Clone)]
pub(crate) enum Piece {
    /// A DATA header from [`header`].
    Header(&'static [u8]),
    /// Bytes of a chunk: `start..start + len`.
    Chunk(Rc<Chunk>, usize, usize),
    /// Bytes of a source in memory: `start..start + len`.
    Memory(Arc<[u8]>, usize, usize),
    /// A whole small packet (OACK, ERROR).
    Owned(Vec<u8>),
}

impl Piece {
    /// Its first byte. Every variant points into memory that neither moves nor changes while
    /// the piece is alive (a static table, a chunk or memory source behind a reference count, a
    /// Vec's heap buffer), and holds only initialised bytes within bounds checked when made.
    pub(crate) fn as_ptr(&self) -> *const u8 {
        match self {
            Self::Header(h) => h.as_ptr(),
            // The bounds were checked where the piece was made.
            Self::Chunk(chunk, start, _) => chunk.buf.as_ptr().wrapping_add(*start),
            Self::Memory(bytes, start, _) => bytes.as_ptr().wrapping_add(*start),
            Self::Owned(v) => v.as_ptr(),
        }
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Header(h) => h.len(),
            Self::Chunk(_, _, len) | Self::Memory(_, _, len) => *len,
            Self::Owned(v) => v.len(),
        }
    }
}

impl Piece {
    /// Bytes `start..start + len` of `chunk`, if it holds them.
    pub(crate) fn chunk(chunk: &Rc<Chunk>, start: usize, len: usize) -> Option<Self> {
        (start.checked_add(len)? <= chunk.len).then(|| Self::Chunk(chunk.clone(), start, len))
    }

    /// Bytes `start..start + len` of `bytes`, if it holds them.
    pub(crate) fn memory(bytes: &Arc<[u8]>, start: usize, len: usize) -> Option<Self> {
        (start.checked_add(len)? <= bytes.len()).then(|| Self::Memory(bytes.clone(), start, len))
    }
}

/// The DATA header (RFC 1350 §5: opcode 3, block number) of wire block `block`.
pub(crate) fn header(block: u16) -> &'static [u8] {
    &HEADERS[usize::from(block)]
}

/// Every DATA header, so a datagram's first iovec is never built at run time.
static HEADERS: [[u8; 4]; 65536] = {
    let mut headers = [[0u8; 4]; 65536];
    let mut i = 0;
    while i < 65536 {
        let [hi, lo] = crate::packet::DATA_OPCODE.to_be_bytes();
        headers[i] = [hi, lo, (i >> 8) as u8, i as u8];
        i += 1;
    }
    headers
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    file: FileId,
    index: u64,
}

enum Entry {
    Ready(Rc<Chunk>),
    /// Another transfer is reading this chunk; wait for it.
    Loading(Rc<Loading>),
}

/// A read in progress that other transfers wait for.
#[derive(Debug, Default)]
pub(crate) struct Loading {
    done: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl Loading {
    /// Resolves once the read has been stored or abandoned.
    pub(crate) fn wait(self: Rc<Self>) -> impl Future<Output = ()> {
        WaitLoaded(self)
    }

    fn finish(&self) {
        self.done.set(true);
        for waker in self.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

struct WaitLoaded(Rc<Loading>);

impl Future for WaitLoaded {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.done.get() {
            return Poll::Ready(());
        }
        self.0.wakers.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

/// What a lookup found.
pub(crate) enum Lookup {
    /// The chunk, ready.
    Hit(Rc<Chunk>),
    /// Another transfer is reading it: wait on this, then look again.
    Wait(Rc<Loading>),
    /// Nobody has it: read it, then [`ChunkCache::insert`] it (or [`ChunkCache::abandon`]).
    Miss,
}

/// The per-shard chunk cache, bounded in bytes.
pub(crate) struct ChunkCache {
    entries: RefCell<HashMap<Key, Entry>>,
    /// Insertion order, for eviction: oldest first.
    order: RefCell<VecDeque<Key>>,
    bytes: Cell<usize>,
    budget: usize,
    hits: Cell<u64>,
    misses: Cell<u64>,
    /// Places in the [`Budget`] for first chunks not read yet, by file (see
    /// [`ChunkCache::reserve_first`]).
    first: RefCell<HashMap<FileId, Weak<Lease>>>,
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCache")
            .field("chunks", &self.entries.borrow().len())
            .field("bytes", &self.bytes.get())
            .field("budget", &self.budget)
            .finish()
    }
}

impl ChunkCache {
    /// A cache holding up to `budget` bytes (0: every transfer reads for itself).
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            entries: RefCell::new(HashMap::new()),
            order: RefCell::new(VecDeque::new()),
            bytes: Cell::new(0),
            budget,
            hits: Cell::new(0),
            misses: Cell::new(0),
            first: RefCell::new(HashMap::new()),
        }
    }

    /// A place in `budget` for the first chunk of `file`, for a transfer admitted now to hold
    /// until it has that chunk: admission checks the budget, but a burst of requests is
    /// admitted before any of their reads is asked for, so without this a burst of distinct
    /// files would all pass a budget none of them had spent yet. Every transfer of the file
    /// admitted meanwhile shares the one place, so a storm of one file reserves one chunk.
    /// `None` when this shard holds the chunk or is reading it.
    pub(crate) fn reserve_first(&self, budget: &Arc<Budget>, file: FileId) -> Option<Rc<Lease>> {
        let key = Key { file, index: 0 };
        if self.entries.borrow().contains_key(&key) {
            return None;
        }
        let mut first = self.first.borrow_mut();
        if let Some(lease) = first.get(&file).and_then(Weak::upgrade) {
            return Some(lease);
        }
        // Forget files whose transfers all have their chunk, before the map can grow.
        if first.len() >= 64 && first.len().is_power_of_two() {
            first.retain(|_, lease| lease.strong_count() > 0);
        }
        let lease = Rc::new(budget.lease(CHUNK));
        first.insert(file, Rc::downgrade(&lease));
        Some(lease)
    }

    /// Looks chunk `index` of `file` up; a miss reserves it for the caller.
    pub(crate) fn lookup(&self, file: FileId, index: u64) -> Lookup {
        if self.budget == 0 {
            return Lookup::Miss;
        }
        let key = Key { file, index };
        let mut entries = self.entries.borrow_mut();
        match entries.get(&key) {
            Some(Entry::Ready(chunk)) => {
                self.hits.set(self.hits.get() + 1);
                Lookup::Hit(chunk.clone())
            }
            Some(Entry::Loading(loading)) => Lookup::Wait(loading.clone()),
            None => {
                self.misses.set(self.misses.get() + 1);
                entries.insert(key, Entry::Loading(Rc::default()));
                Lookup::Miss
            }
        }
    }

    /// Stores a chunk read after a [`Lookup::Miss`] and wakes those waiting for it.
    pub(crate) fn insert(&self, file: FileId, index: u64, chunk: Rc<Chunk>) {
        if self.budget == 0 {
            return;
        }
        let key = Key { file, index };
        let previous = self.entries.borrow_mut().insert(key, Entry::Ready(chunk));
        match previous {
            Some(Entry::Loading(loading)) => loading.finish(),
            // Already counted.
            Some(Entry::Ready(_)) => return,
            None => {}
        }
        self.order.borrow_mut().push_back(key);
        self.bytes.set(self.bytes.get() + CHUNK);
        self.evict();
    }

    /// Gives up a reservation after a failed read and wakes those waiting (they read the chunk
    /// themselves, and fail or succeed on their own).
    pub(crate) fn abandon(&self, file: FileId, index: u64) {
        let key = Key { file, index };
        let mut entries = self.entries.borrow_mut();
        if let Some(Entry::Loading(loading)) = entries.get(&key) {
            loading.finish();
            entries.remove(&key);
        }
    }

    /// Hits and misses since start.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.hits.get(), self.misses.get())
    }

    /// Forgets every chunk no transfer is holding, so its memory goes back to the [`Budget`];
    /// returns how many were dropped. For when the budget is spent: idle cached chunks must
    /// never be what keeps new requests out.
    pub(crate) fn shed_idle(&self) -> usize {
        let mut entries = self.entries.borrow_mut();
        let before = entries.len();
        entries.retain(|_, entry| match entry {
            Entry::Ready(chunk) => Rc::strong_count(chunk) > 1,
            Entry::Loading(_) => true,
        });
        let shed = before - entries.len();
        drop(entries);
        if shed > 0 {
            let entries = self.entries.borrow();
            self.order
                .borrow_mut()
                .retain(|key| entries.contains_key(key));
            self.bytes
                .set(self.bytes.get().saturating_sub(shed * CHUNK));
        }
        shed
    }

    /// Forgets the oldest chunks until the cache fits its budget.
    fn evict(&self) {
        let mut order = self.order.borrow_mut();
        let mut entries = self.entries.borrow_mut();
        while self.bytes.get() > self.budget {
            let Some(key) = order.pop_front() else { break };
            if let Some(Entry::Ready(_)) = entries.get(&key) {
                entries.remove(&key);
                self.bytes.set(self.bytes.get().saturating_sub(CHUNK));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64) -> FileId {
        FileId {
            dev: 1,
            ino,
            mtime_sec: 0,
            mtime_nsec: 0,
            size: 100,
            ctime_sec: 0,
            ctime_nsec: 0,
            within: None,
        }
    }

    fn chunk() -> Rc<Chunk> {
        let lease = Budget::new(usize::MAX).lease(CHUNK);
        Rc::new(Chunk::new(vec![7; CHUNK], 100, lease))
    }

    #[test]
    fn leases_count_until_dropped() {
        let budget = Budget::new(2 * CHUNK);
        let a = budget.lease(CHUNK);
        assert!(!budget.exceeded_by(CHUNK));
        let b = budget.lease(CHUNK);
        assert!(budget.exceeded_by(1), "spent");
        // Never refused: a running transfer takes what it needs past the budget.
        let c = budget.lease(CHUNK);
        assert_eq!(budget.used(), 3 * CHUNK);
        drop((a, b, c));
        assert_eq!(budget.used(), 0);
        assert!(!budget.exceeded_by(2 * CHUNK));
    }

    #[test]
    fn headers_are_data_packets() {
        assert_eq!(header(0), [0, 3, 0, 0]);
        assert_eq!(header(0x1234), [0, 3, 0x12, 0x34]);
        assert_eq!(header(65535), [0, 3, 0xff, 0xff]);
    }

    #[test]
    fn a_miss_reserves_and_others_wait_for_the_reader() {
        let cache = ChunkCache::new(4 * CHUNK);
        assert!(matches!(cache.lookup(id(1), 0), Lookup::Miss));
        let Lookup::Wait(loading) = cache.lookup(id(1), 0) else {
            panic!("expected a wait")
        };
        cache.insert(id(1), 0, chunk());
        assert!(loading.done.get());
        assert!(matches!(cache.lookup(id(1), 0), Lookup::Hit(_)));
        assert_eq!(cache.counts(), (1, 1));
    }

    #[test]
    fn another_version_of_a_file_is_another_key() {
        let cache = ChunkCache::new(4 * CHUNK);
        assert!(matches!(cache.lookup(id(1), 0), Lookup::Miss));
        cache.insert(id(1), 0, chunk());
        let changed = FileId {
            mtime_nsec: 1,
            ..id(1)
        };
        assert!(matches!(cache.lookup(changed, 0), Lookup::Miss));
        // Rewritten in place with size and mtime put back: only the change time tells.
        let rewritten = FileId {
            ctime_nsec: 1,
            ..id(1)
        };
        assert!(matches!(cache.lookup(rewritten, 0), Lookup::Miss));
    }

    #[test]
    fn abandoned_reads_wake_waiters_and_free_the_key() {
        let cache = ChunkCache::new(4 * CHUNK);
        assert!(matches!(cache.lookup(id(1), 3), Lookup::Miss));
        let Lookup::Wait(loading) = cache.lookup(id(1), 3) else {
            panic!("expected a wait")
        };
        cache.abandon(id(1), 3);
        assert!(loading.done.get());
        assert!(matches!(cache.lookup(id(1), 3), Lookup::Miss));
    }

    #[test]
    fn the_oldest_chunks_are_evicted_beyond_the_budget() {
        let cache = ChunkCache::new(2 * CHUNK);
        for index in 0..3 {
            assert!(matches!(cache.lookup(id(1), index), Lookup::Miss));
            cache.insert(id(1), index, chunk());
        }
        assert!(
            matches!(cache.lookup(id(1), 0), Lookup::Miss),
            "oldest evicted"
        );
        assert!(matches!(cache.lookup(id(1), 2), Lookup::Hit(_)));
    }

    #[test]
    fn idle_chunks_are_shed_and_held_ones_kept() {
        let budget = Budget::new(usize::MAX);
        let cache = ChunkCache::new(8 * CHUNK);
        let chunk = |len| Rc::new(Chunk::new(vec![0; 16], len, budget.lease(CHUNK)));
        for index in 0..3 {
            assert!(matches!(cache.lookup(id(1), index), Lookup::Miss));
            cache.insert(id(1), index, chunk(16));
        }
        let Lookup::Hit(held) = cache.lookup(id(1), 1) else {
            panic!("expected a hit")
        };
        assert_eq!(budget.used(), 3 * CHUNK);
        assert_eq!(cache.shed_idle(), 2);
        assert_eq!(budget.used(), CHUNK, "only the held chunk is still counted");
        assert!(matches!(cache.lookup(id(1), 0), Lookup::Miss));
        drop(held);
        assert!(matches!(cache.lookup(id(1), 1), Lookup::Hit(_)));
    }

    #[test]
    fn pieces_check_their_bounds() {
        let c = chunk();
        assert!(Piece::chunk(&c, 0, 100).is_some());
        assert!(Piece::chunk(&c, 1, 100).is_none());
        let m: Arc<[u8]> = Arc::from(&b"hello"[..]);
        assert_eq!(Piece::memory(&m, 1, 3).map(|p| p.len()), Some(3));
        assert!(Piece::memory(&m, 4, 3).is_none());
        assert!(Piece::memory(&m, usize::MAX, 2).is_none());
        // A chunk is never longer than its memory.
        let short = Chunk::new(vec![0; 8], 100, Budget::new(usize::MAX).lease(8));
        assert!(Piece::chunk(&Rc::new(short), 0, 9).is_none());
    }
}
