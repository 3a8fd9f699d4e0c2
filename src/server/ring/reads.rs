//! File data for the engine's transfers: 64 KiB chunks from the shard's cache, or read once
//! with `READ_FIXED` into a registered buffer (a plain `READ` into heap memory where the slab
//! is spent or was refused), the transfers that need a chunk waiting on its one read.

use std::io;
use std::rc::Rc;

use io_uring::{opcode, types};

use super::{push, user_data, Conn, Engine, Op};
use crate::resolve::FileId;
use crate::server::cache::{BlockBuf, Chunk, Lease, Lookup, CHUNK};
use crate::server::window::{chunk_len, chunks_for, read_custom, Data, CHANGED, READ_FAILED};

/// A chunk read in flight.
pub(super) struct ReadOp {
    file: Rc<std::fs::File>,
    id: FileId,
    index: u64,
    buf: BlockBuf,
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
    /// Makes sure the chunks covering blocks `acked + 1 ..= upto` are held, starting the reads
    /// of those that are not; whether they all are now.
    pub(super) fn ensure(&mut self, conn: &mut Conn, slot: u32, upto: u64) -> bool {
        if conn.window.holds(&conn.data, &conn.t, upto) {
            return true;
        }
        let Some((first, Some(last))) = chunks_for(&conn.data, &conn.t, upto) else {
            return true;
        };
        let len = conn.t.len();
        for index in first..=last {
            if conn.window.get(index).is_some() || conn.awaiting.contains(&index) {
                continue;
            }
            match &conn.data {
                Data::File(file, id) => match self.cache.lookup(*id, index) {
                    Lookup::Hit(chunk) => conn.window.insert(index, chunk),
                    Lookup::Wait(_) => match self.loading.get(&(*id, index)) {
                        Some(&read) => {
                            if let Some(op) = self.reads[read as usize].as_mut() {
                                op.waiters.push((slot, conn.gen));
                                conn.awaiting.push(index);
                            }
                        }
                        // Only this shard reads into its cache, so every read it waits for is
                        // in `loading`.
                        None => conn.failed = Some(READ_FAILED),
                    },
                    Lookup::Miss => {
                        let file = file.clone();
                        self.start_read(file, *id, index, len, (slot, conn.gen));
                        conn.awaiting.push(index);
                    }
                },
                Data::Custom(source) => {
                    match read_custom(&self.shared.budget, &**source, len, index) {
                        Ok(chunk) => conn.window.insert(index, Rc::new(chunk)),
                        Err(e) => conn.failed = Some(e),
                    }
                }
                Data::Memory(_) => {}
            }
        }
        conn.failed.is_none() && conn.window.holds(&conn.data, &conn.t, upto)
    }

    fn start_read(
        &mut self,
        file: Rc<std::fs::File>,
        id: FileId,
        index: u64,
        len: u64,
        waiter: (u32, u32),
    ) {
        let buf = match self.slab.as_ref().and_then(|s| s.take()) {
            Some(buf) => BlockBuf::Slab(buf),
            None => {
                if self.slab.is_some() {
                    self.spilled += 1;
                }
                BlockBuf::Heap(vec![0; CHUNK])
            }
        };
        let op = ReadOp {
            file,
            id,
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
        let offset = op.index * CHUNK as u64 + op.done as u64;
        let left = (op.want - op.done) as u32;
        let entry = match &mut op.buf {
            BlockBuf::Slab(buf) => {
                // SAFETY: `done` < `want` <= CHUNK, within the registered buffer.
                let at = unsafe { buf.ptr().add(op.done) };
                opcode::ReadFixed::new(fd, at, left, buf.index())
                    .offset(offset)
                    .build()
            }
            BlockBuf::Heap(vec) => {
                // SAFETY: as above, within the heap buffer, which does not move while owned.
                let at = unsafe { vec.as_mut_ptr().add(op.done) };
                opcode::Read::new(fd, at, left).offset(offset).build()
            }
            BlockBuf::Fixed(_) => return,
        };
        push(
            &mut self.ring,
            &entry.user_data(user_data(Op::Read, read, 0)),
        );
    }

    pub(super) fn on_read(&mut self, read: u32, result: i32) {
        let Some(op) = self.reads.get_mut(read as usize).and_then(Option::as_mut) else {
            return;
        };
        let outcome = match result {
            // The file is shorter than it was when the transfer opened it.
            0 => Err(CHANGED),
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
                Err(READ_FAILED)
            }
        };
        let Some(op) = self.reads[read as usize].take() else {
            return;
        };
        self.reads_free.push(read);
        self.loading.remove(&(op.id, op.index));
        let chunk = match outcome {
            Ok(()) => {
                let chunk = Rc::new(Chunk::new(op.buf, op.want, op.lease));
                self.cache.insert(op.id, op.index, chunk.clone());
                Ok(chunk)
            }
            Err(e) => {
                self.cache.abandon(op.id, op.index);
                Err(e)
            }
        };
        for (slot, gen) in op.waiters {
            let Some(mut conn) = self.take_conn(slot, gen) else {
                continue;
            };
            conn.awaiting.retain(|&i| i != op.index);
            match &chunk {
                Ok(chunk) => conn.window.insert(op.index, chunk.clone()),
                Err(e) => conn.failed = Some(*e),
            }
            self.mark(&mut conn, slot);
            self.put_conn(slot, conn);
        }
    }
}
