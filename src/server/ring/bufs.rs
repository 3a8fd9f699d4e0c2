//! The memory a shard's ring reads into: the provided-buffer ring its multishot receives take
//! datagram buffers from, and the registered slab of chunk buffers its fixed reads fill.
//!
//! Both live in anonymous mappings (page-aligned, never moved) that outlive every operation the
//! kernel could still have on them: the engine drops its ring before these.

use std::cell::RefCell;
use std::io;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

use crate::server::cache::CHUNK;

/// An anonymous private mapping, unmapped when dropped.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `Mapping::new` with this length and is unmapped once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// A provided-buffer ring (`IORING_REGISTER_PBUF_RING`): the kernel takes a buffer for each
/// datagram a multishot receive completes, and says which in the completion; the engine hands
/// it back as soon as the datagram is handled. When every buffer is out, a multishot receive
/// ends with `ENOBUFS` and its datagrams wait in the socket until it is armed again.
#[derive(Debug)]
pub(crate) struct RecvRing {
    ring: Mapping,
    bufs: Mapping,
    entries: u16,
    size: usize,
    /// The tail as the engine has written it; published to the kernel by [`RecvRing::publish`].
    tail: u16,
    bgid: u16,
}

impl RecvRing {
    /// Registers a ring of `entries` buffers (a power of two) of `size` bytes as group `bgid`.
    pub(crate) fn new(
        submitter: &Submitter<'_>,
        bgid: u16,
        entries: u16,
        size: usize,
    ) -> io::Result<Self> {
        assert!(
            entries.is_power_of_two(),
            "ring entries must be a power of two"
        );
        let ring = Mapping::new(usize::from(entries) * size_of::<BufRingEntry>())?;
        let bufs = Mapping::new(usize::from(entries) * size)?;
        // SAFETY: the ring's memory is page-aligned, sized for `entries` entries, and lives as
        // long as this value, which the engine drops only after the ring itself.
        unsafe {
            submitter.register_buf_ring_with_flags(ring.ptr.as_ptr() as u64, entries, bgid, 0)?;
        }
        let mut this = Self {
            ring,
            bufs,
            entries,
            size,
            tail: 0,
            bgid,
        };
        for bid in 0..entries {
            this.give_back(bid);
        }
        this.publish();
        Ok(this)
    }

    /// The buffer group receives name.
    pub(crate) fn group(&self) -> u16 {
        self.bgid
    }

    /// The first `len` bytes of buffer `bid`, as a completion reported them.
    pub(crate) fn get(&self, bid: u16, len: usize) -> &[u8] {
        let bid = usize::from(bid % self.entries);
        let len = len.min(self.size);
        // SAFETY: the buffer lies within the mapping, and the kernel wrote it before posting the
        // completion that named it; it is not handed back (so not written) while borrowed.
        unsafe { std::slice::from_raw_parts(self.bufs.ptr.as_ptr().add(bid * self.size), len) }
    }

    /// Puts buffer `bid` back at the ring's tail (seen by the kernel after [`publish`]).
    ///
    /// [`publish`]: RecvRing::publish
    pub(crate) fn give_back(&mut self, bid: u16) {
        let bid = bid % self.entries;
        let index = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `index` < entries, so the entry lies within the ring mapping; the kernel reads
        // entries only up to the published tail, which does not cover this one yet.
        unsafe {
            let entry = &mut *self.ring.ptr.as_ptr().cast::<BufRingEntry>().add(index);
            entry.set_addr(self.bufs.ptr.as_ptr().add(usize::from(bid) * self.size) as u64);
            entry.set_len(self.size as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers given back so far visible to the kernel.
    pub(crate) fn publish(&self) {
        // SAFETY: the tail field sits in the first entry of the page-aligned ring; the kernel
        // reads it with acquire ordering, so the entries written before are visible first.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.ptr.as_ptr().cast::<BufRingEntry>());
            (*(tail as *const AtomicU16)).store(self.tail, Ordering::Release);
        }
    }
}

/// Chunk buffers registered with the ring (`IORING_REGISTER_BUFFERS`) for `READ_FIXED`: the
/// kernel pins them once, rather than on every read.
#[derive(Debug)]
pub(crate) struct Slab {
    mem: Rc<Mapping>,
    free: Rc<RefCell<Vec<u16>>>,
}

impl Slab {
    /// Maps `count` chunk buffers and registers them; fails where the kernel refuses
    /// (`RLIMIT_MEMLOCK` for an unprivileged user).
    pub(crate) fn new(submitter: &Submitter<'_>, count: usize) -> io::Result<Self> {
        let count = count.clamp(1, usize::from(u16::MAX));
        let mem = Mapping::new(count * CHUNK)?;
        let iovecs: Vec<libc::iovec> = (0..count)
            .map(|i| libc::iovec {
                // SAFETY: within the mapping.
                iov_base: unsafe { mem.ptr.as_ptr().add(i * CHUNK) }.cast(),
                iov_len: CHUNK,
            })
            .collect();
        // SAFETY: the iovecs describe the mapping, which lives (through `Rc`) as long as any
        // buffer carved from it, and the engine drops its ring before this slab.
        unsafe { submitter.register_buffers(&iovecs)? };
        Ok(Self {
            mem: Rc::new(mem),
            free: Rc::new(RefCell::new((0..count as u16).rev().collect())),
        })
    }

    /// A free chunk buffer, if any.
    pub(crate) fn take(&self) -> Option<SlabBuf> {
        let index = self.free.borrow_mut().pop()?;
        Some(SlabBuf {
            index,
            mem: self.mem.clone(),
            free: self.free.clone(),
        })
    }
}

/// One registered chunk buffer, back in its slab's free list when dropped.
#[derive(Debug)]
pub(crate) struct SlabBuf {
    index: u16,
    mem: Rc<Mapping>,
    free: Rc<RefCell<Vec<u16>>>,
}

impl SlabBuf {
    /// Its index in the ring's registered buffers, for `READ_FIXED`.
    pub(crate) fn index(&self) -> u16 {
        self.index
    }

    /// Its first byte; [`CHUNK`] bytes follow.
    pub(crate) fn ptr(&self) -> *mut u8 {
        // SAFETY: the buffer lies within the mapping.
        unsafe { self.mem.ptr.as_ptr().add(usize::from(self.index) * CHUNK) }
    }
}

impl Drop for SlabBuf {
    fn drop(&mut self) {
        self.free.borrow_mut().push(self.index);
    }
}

// SAFETY: a slab buffer is a fixed part of a mapping that lives (through `Rc`) as long as the
// buffer, and nothing writes to it while a chunk holds it (it is back in the free list only
// once dropped).
unsafe impl crate::server::cache::ChunkMemory for SlabBuf {
    fn as_ptr(&self) -> *const u8 {
        self.ptr()
    }

    fn len(&self) -> usize {
        CHUNK
    }
}
