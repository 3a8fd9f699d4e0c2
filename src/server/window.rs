//! What a transfer holds of its file: where its bytes come from ([`Data`]), and the window of
//! 64 KiB chunks covering the blocks in flight and the next window (RFC 7440 §4; one block in
//! lock-step), from which each DATA datagram's iovecs are cut (RFC 1350 §5: a 4-byte header,
//! then up to `blksize` bytes, RFC 2348).
//!
//! The session ([`super::session`]) keeps a transfer's chunks here; how a missing chunk is
//! read is its executor's.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::Arc;

use super::cache::{header, Budget, Chunk, Piece, CHUNK};
use super::ending::ReadError;
use crate::resolve::{FileId, Layout, ReadAt, Source};
use crate::transfer::Transfer;

/// A shard's open files by identity, so concurrent transfers of one file share one descriptor
/// (and a backend's wrapper around it, `F`).
pub(crate) struct OpenFiles<F>(HashMap<FileId, Weak<F>>);

impl<F> OpenFiles<F> {
    pub(crate) fn new() -> Self {
        Self(HashMap::new())
    }

    /// Where a resolved source's bytes come from: a file already open for another transfer
    /// (closing `source`'s descriptor), else `source`'s, adopted by `adopt` and now shared.
    pub(crate) fn data(
        &mut self,
        source: Source,
        adopt: impl FnOnce(std::fs::File) -> F,
    ) -> Data<F> {
        match source {
            Source::File(file) => {
                let id = file.id();
                let (file, layout) = file.into_parts();
                if let Some(open) = self.0.get(&id).and_then(Weak::upgrade) {
                    return Data::File(open, id, layout);
                }
                let open = Rc::new(adopt(file));
                if self.0.len() >= 1024 {
                    self.0.retain(|_, f| f.strong_count() > 0);
                }
                self.0.insert(id, Rc::downgrade(&open));
                Data::File(open, id, layout)
            }
            Source::Memory(bytes) => Data::Memory(bytes),
            Source::Custom(custom) => Data::Custom(custom),
        }
    }
}

/// Where a transfer's bytes come from.
pub(crate) enum Data<F> {
    /// An open file, read by the backend (fixed reads under io_uring), what it was when
    /// opened, and where the transfer's bytes lie in it (all of it, or a file's extents in a
    /// disk image).
    File(Rc<F>, FileId, Layout),
    /// Bytes in memory (generated per client, or a netascii encoding), sent without a copy.
    Memory(Arc<[u8]>),
    /// Any other source, read synchronously into private chunks.
    Custom(Box<dyn ReadAt>),
}

/// An open file as an executor holds it, which can say whether it is still the version the
/// transfer opened (RFC 1350 has no way to tell a client that its file changed half-way; the
/// server ends the transfer with an ERROR instead of sending a mix).
pub(crate) trait FileHandle {
    /// Whether the file is still `id` (one `fstat`).
    fn unchanged(&self, id: &FileId) -> bool;
}

impl FileHandle for std::fs::File {
    fn unchanged(&self, id: &FileId) -> bool {
        unchanged_fd(self.as_raw_fd(), id)
    }
}

/// Whether the file open as `fd` is still `id`.
pub(crate) fn unchanged_fd(fd: RawFd, id: &FileId) -> bool {
    // SAFETY: the caller keeps the descriptor open while this borrowed view lives, and
    // ManuallyDrop keeps the view from closing it.
    let view = std::mem::ManuallyDrop::new(unsafe {
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    matches!(id.unchanged_in(&view), Ok(true))
}

/// The chunks a transfer holds: those covering the window in flight and the one read ahead,
/// in file order.
#[derive(Default)]
pub(crate) struct Window {
    chunks: VecDeque<(u64, Rc<Chunk>)>,
    /// The first and last chunk index held when they are all held in a run (the usual case),
    /// so the per-packet check in [`Window::holds`] reads two numbers instead of the deque.
    run: Option<(u64, u64)>,
}

impl Window {
    pub(crate) fn get(&self, index: u64) -> Option<&Rc<Chunk>> {
        self.chunks
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, c)| c)
    }

    /// Appends the iovecs of block `block` (header, then payload) to `pieces`; false if a chunk
    /// it needs is not loaded.
    pub(crate) fn pieces(
        &self,
        data: &Data<impl Sized>,
        t: &Transfer,
        block: u64,
        pieces: &mut Vec<Piece>,
    ) -> bool {
        pieces.push(Piece::Header(header(Transfer::wire_block(block))));
        let mut offset = t.offset(block);
        let mut left = t.block_len(block);
        if let Data::Memory(bytes) = data {
            let Ok(start) = usize::try_from(offset) else {
                return false;
            };
            return match Piece::memory(bytes, start, left) {
                Some(piece) => {
                    pieces.push(piece);
                    true
                }
                None => false,
            };
        }
        while left > 0 {
            let index = offset / CHUNK as u64;
            let start = (offset % CHUNK as u64) as usize;
            let len = left.min(CHUNK - start);
            let Some(piece) = self.get(index).and_then(|c| Piece::chunk(c, start, len)) else {
                return false;
            };
            pieces.push(piece);
            offset += len as u64;
            left -= len;
        }
        true
    }

    /// Drops the chunks wholly before block `acked + 1`; whether those up to block `upto` are
    /// all held (nothing to load).
    pub(crate) fn holds(&mut self, data: &Data<impl Sized>, t: &Transfer, upto: u64) -> bool {
        let Some((first, last)) = chunks_for(data, t, upto) else {
            return true;
        };
        if let Some((lo, hi)) = self.run {
            if lo >= first {
                // Nothing to drop: answer from the run alone.
                return last.is_none_or(|last| lo == first && last <= hi);
            }
        }
        self.drop_before(first);
        last.is_none_or(|last| (first..=last).all(|index| self.get(index).is_some()))
    }

    /// Drops the chunks before chunk `first`.
    pub(crate) fn drop_before(&mut self, first: u64) {
        while self.chunks.front().is_some_and(|(i, _)| *i < first) {
            self.chunks.pop_front();
        }
        self.note_run();
    }

    fn note_run(&mut self) {
        self.run = match (self.chunks.front(), self.chunks.back()) {
            (Some(&(lo, _)), Some(&(hi, _))) if hi - lo + 1 == self.chunks.len() as u64 => {
                Some((lo, hi))
            }
            _ => None,
        };
    }

    /// Keeps the chunks in file order (few: a window spans a handful).
    pub(crate) fn insert(&mut self, index: u64, chunk: Rc<Chunk>) {
        let at = self.chunks.partition_point(|(i, _)| *i < index);
        self.chunks.insert(at, (index, chunk));
        self.note_run();
    }
}

/// The chunks that blocks `acked + 1 ..= upto` lie in: the first, and the last unless those
/// blocks hold no bytes (an empty final block). `None` where data is not read in chunks.
pub(crate) fn chunks_for(
    data: &Data<impl Sized>,
    t: &Transfer,
    upto: u64,
) -> Option<(u64, Option<u64>)> {
    if matches!(data, Data::Memory(_)) || t.is_empty() {
        return None;
    }
    let from = t.offset(t.acked() + 1);
    let to = t.offset(upto) + t.block_len(upto) as u64;
    let last = (to > from).then(|| (to - 1) / CHUNK as u64);
    Some((from / CHUNK as u64, last))
}

/// The bytes of chunk `index` of a source of `len` bytes.
pub(crate) fn chunk_len(len: u64, index: u64) -> usize {
    let start = index * CHUNK as u64;
    len.saturating_sub(start).min(CHUNK as u64) as usize
}

/// What one read toward a chunk came to: how many bytes it brought (0 for a read interrupted
/// by a signal, to try again), or why the chunk cannot be had: a read of nothing before the
/// chunk is whole means the file is shorter than when the transfer opened it.
pub(crate) fn read_progress(result: io::Result<usize>) -> Result<usize, ReadError> {
    match result {
        Ok(0) => Err(ReadError::Changed),
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => {
            tracing::warn!(error = %e, "read failed");
            Err(ReadError::Failed)
        }
    }
}

/// Reads chunk `index` of a source that is neither an open file nor bytes in memory (a
/// resolver's own [`ReadAt`]), synchronously into heap memory.
pub(crate) fn read_custom(
    budget: &Arc<Budget>,
    source: &dyn ReadAt,
    len: u64,
    index: u64,
) -> Result<Chunk, ReadError> {
    let want = chunk_len(len, index);
    let start = index * CHUNK as u64;
    let lease = budget.lease(want);
    let mut buf = vec![0; want];
    let mut done = 0;
    while done < want {
        match source.read_at(&mut buf[done..], start + done as u64) {
            Ok(0) => return Err(ReadError::Changed),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadError::Failed),
        }
    }
    Ok(Chunk::new(buf, want, lease))
}
