//! File data for the engine's transfers: 64 KiB chunks from the shard's cache, or read once
//! with `READ_FIXED` into a registered buffer (a plain `READ` into heap memory where the slab
//! is spent or was refused), the transfers that need a chunk waiting on its one read.

use std::io;
use std::rc::Rc;
use std::time::Instant;

use io_uring::{opcode, types};

use super::bufs::SlabBuf;
use super::{push, user_data, Conn, Engine, Op};
use crate::resolve::{FileId, Layout};
use crate::server::cache::{Chunk, Lease, Lookup, CHUNK};
use crate::server::ending::ReadError;
use crate::server::window::{chunk_len, read_custom, Data};

/// A buffer a chunk is read into: registered (`READ_FIXED`), or heap memory where the slab is
/// spent or was refused (a plain `READ`).
enum Buf {
    Slab(SlabBuf),
    Heap(Vec<u8>),
}

/// A chunk read in flight.
pub(super) struct ReadOp {
    file: Rc<std::fs::File>,
    id: FileId,
    /// Where the file's bytes lie in `file`: a read stops at the end of an extent, and the
    /// next one goes on from the next extent.
    layout: Layout,
    index: u64,
    buf: Buf,
    /// Bytes wanted, and read so far (a read may return fewer).
    want: usize,
    done: usize,
    lease: Lease,
    /// The transfers (slot, generation) waiting for it.
    waiters: Vec<(u32, u32)>,
}

impl ReadOp {
    /// Forgets a read still in flight as the engine stops: a heap buffer is leaked (the kernel
    /// may still write into it); a registered one is kept from its slab's free list.
    pub(super) fn abandon(self) {
        std::mem::forget(self.buf);
        // The budget lease, the file and the waiters go as usual.
    }
}

impl Engine {
    /// Answers a session's [`Io::Read`](crate::server::session::Io::Read) of chunk `index`:
    /// from the shard's cache, after the read of it already in flight, or by reading it.
    pub(super) fn read(&mut self, conn: &mut Conn, slot: u32, index: u64, now: Instant) {
        let len = conn.session.transfer().len();
        let chunk = match conn.session.data() {
            Data::File(file, id, layout) => match self.cache.lookup(*id, index) {
                Lookup::Hit(chunk) => Ok(chunk),
                Lookup::Wait(_) => match self.loading.get(&(*id, index)) {
                    Some(&read) => {
                        if let Some(op) = self.reads[read as usize].as_mut() {
                            op.waiters.push((slot, conn.gen));
                        }
                        return;
                    }
                    // Only this shard reads into its cache, so every read it waits for is
                    // in `loading`.
                    None => Err(ReadError::Failed),
                },
                Lookup::Miss => {
                    let (file, id, layout) = (file.clone(), *id, layout.clone());
                    self.start_read(file, id, layout, index, len, (slot, conn.gen));
                    return;
                }
            },
            Data::Custom(source) => {
                read_custom(&self.shared.budget, &**source, len, index).map(Rc::new)
            }
            // Bytes in memory are never read.
            Data::Memory(_) => Err(ReadError::Failed),
        };
        conn.session.handle_read(now, index, chunk);
    }

    fn start_read(
        &mut self,
        file: Rc<std::fs::File>,
        id: FileId,
        layout: Layout,
        index: u64,
        len: u64,
        waiter: (u32, u32),
    ) {
        let buf = match self.slab.as_ref().and_then(|s| s.take()) {
            Some(buf) => Buf::Slab(buf),
            None => {
                if self.slab.is_some() {
                    self.spilled += 1;
                }
                Buf::Heap(vec![0; CHUNK])
            }
        };
        let op = ReadOp {
            file,
            id,
            layout,
            index,
            buf,
            want: chunk_len(len, index),
            done: 0,
            lease: self.shared.budget.lease(CHUNK),
            waiters: vec![waiter],
        };
        let read = match self.reads_free.pop() {
            Some(read) => {
                self.reads[read as usize] = Some(op);
                read
            }
            None => {
                self.reads.push(Some(op));
                (self.reads.len() - 1) as u32
            }
        };
        self.loading.insert((id, index), read);
        self.submit_read(read);
    }

    /// Submits the rest of read `read`.
    fn submit_read(&mut self, read: u32) {
        let Some(op) = self.reads[read as usize].as_mut() else {
            return;
        };
        let fd = types::Fd(std::os::fd::AsRawFd::as_raw_fd(&*op.file));
        // Past the extents (never, for a filesystem the image reader accepted), a read of
        // nothing completes with 0 and ends the transfers as a file that shrank would.
        let (offset, left) = op
            .layout
            .place(op.index * CHUNK as u64 + op.done as u64, op.want - op.done)
            .unwrap_or((0, 0));
        let left = left as u32;
        let entry = match &mut op.buf {
            Buf::Slab(buf) => {
                // SAFETY: `done` < `want` <= CHUNK, within the registered buffer.
                let at = unsafe { buf.ptr().add(op.done) };
                opcode::ReadFixed::new(fd, at, left, buf.index())
                    .offset(offset)
                    .build()
            }
            Buf::Heap(vec) => {
                // SAFETY: as above, within the heap buffer, which does not move while owned.
                let at = unsafe { vec.as_mut_ptr().add(op.done) };
                opcode::Read::new(fd, at, left).offset(offset).build()
            }
        };
        push(
            &mut self.ring,
            &entry.user_data(user_data(Op::Read, read, 0)),
        );
    }

    pub(super) fn on_read(&mut self, read: u32, result: i32, now: Instant) {
        let Some(op) = self.reads.get_mut(read as usize).and_then(Option::as_mut) else {
            return;
        };
        let outcome = match result {
            // The file is shorter than it was when the transfer opened it.
            0 => Err(ReadError::Changed),
            n if n > 0 => {
                op.done += n as usize;
                if op.done < op.want {
                    self.submit_read(read);
                    return;
                }
                Ok(())
            }
            e if -e == libc::EINTR || -e == libc::EAGAIN => {
                self.submit_read(read);
                return;
            }
            e => {
                tracing::warn!(error = %io::Error::from_raw_os_error(-e), "read failed");
                Err(ReadError::Failed)
            }
        };
        let Some(op) = self.reads[read as usize].take() else {
            return;
        };
        self.reads_free.push(read);
        self.loading.remove(&(op.id, op.index));
        let chunk = match outcome {
            Ok(()) => {
                let chunk = Rc::new(match op.buf {
                    Buf::Slab(buf) => Chunk::new(buf, op.want, op.lease),
                    Buf::Heap(vec) => Chunk::new(vec, op.want, op.lease),
                });
                self.cache.insert(op.id, op.index, chunk.clone());
                Ok(chunk)
            }
            Err(e) => {
                self.cache.abandon(op.id, op.index);
                Err(e)
            }
        };
        for (slot, gen) in op.waiters {
            let Some(mut conn) = self.slots.take(slot, gen) else {
                continue;
            };
            conn.session.handle_read(now, op.index, chunk.clone());
            self.slots.mark(&mut conn, slot);
            self.slots.put(slot, conn);
        }
    }
}
