//! Files inside disk images: a read-only reader of partition tables and FAT filesystems.
//!
//! A Raspberry Pi boots over the network by asking TFTP for `start4.elf`, `config.txt`, the
//! kernel and its device trees: the contents of the FAT boot partition of an OS image. This
//! module finds those files inside the image file itself, without mounting it (nobodd's
//! `nobodd.disk` and `nobodd.fs`):
//!
//! - [`partitions`] reads the partition table: the MBR (its four primary entries and the EBR
//!   chains of extended partitions), the GPT of the UEFI specification (§5.3, the GPT header
//!   and partition entry array with their CRC32s), or no table at all (a "superfloppy": a FAT
//!   boot sector at offset 0);
//! - [`Fat::open`] reads a partition's boot sector and its FAT, following Microsoft's *FAT32
//!   File System Specification* (version 1.03): the BPB fields of §3, the FAT type determined
//!   by the count of clusters alone (§3.5), the FAT entries and their end-of-chain and
//!   bad-cluster marks (§4), the directory entries of §6 and the long names of §7, matched to
//!   their short entry by the checksum of §7.2;
//! - [`Fat::find`] turns a path into the file's [`Extent`]s: where its bytes lie in the image.
//!
//! # Why a reader of our own
//!
//! The server must not copy a file out of the image to serve it: it hands the extents to its
//! executors, and the io_uring one reads them straight from the image descriptor into its
//! registered buffers with `READ_FIXED`, like any file it serves. FAT crates offer a `Read`
//! over a file, never where its clusters lie. And the images come from elsewhere: every field
//! read from one is untrusted. Nothing here panics, overflows, loops or allocates without a
//! bound on any input: cluster chains are bounded by the cluster count and checked for loops,
//! every read is checked against the partition, every partition against the image, and the
//! FAT table (at most 64 MiB) and directories (at most 2 MiB, the specification's 65536
//! entries) are bounded in size.
//!
//! # Limits
//!
//! Partition tables are read with 512-byte sectors. Only the primary GPT is read, and one that
//! fails a check (its signature, sizes or either CRC32) is an error rather than a reason to
//! fall back to the protective MBR, which describes nothing useful, or to the backup GPT. The
//! container of an extended partition is not listed, only its logical partitions (numbered
//! from 5 as fdisk and Linux do). exFAT and writing are out of scope. Short names with
//! non-ASCII bytes are read as Latin-1 (the volume's OEM code page is unknown).

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

mod fat;
mod table;
#[cfg(test)]
mod tests;

pub use fat::Fat;
pub use table::{partition, partitions, Partition};

/// A file or directory found by [`Fat::find`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The file's length in bytes (0 for a directory).
    pub len: u64,
    /// Whether it is a directory (which has no extents: it is not served).
    pub is_dir: bool,
    /// Where the file's bytes lie in the image, in file order.
    pub extents: Extents,
}

/// A file's extents, in file order, with where each starts in the file: the one holding a byte
/// is found by binary search, as a hostile image may cut a file into a million pieces and a
/// chunk read looks one up per piece it crosses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extents {
    runs: Vec<Extent>,
    /// `starts[i]`: the file offset of `runs[i]`'s first byte.
    starts: Vec<u64>,
}

impl Extents {
    /// The extents `runs`, in file order (cut where their lengths would add up past 2^64, which
    /// no file inside an image reaches).
    pub fn new(mut runs: Vec<Extent>) -> Extents {
        let mut starts = Vec::with_capacity(runs.len());
        let mut at = 0u64;
        for run in &runs {
            let Some(end) = at.checked_add(run.len) else {
                break;
            };
            starts.push(at);
            at = end;
        }
        runs.truncate(starts.len());
        Extents { runs, starts }
    }

    /// Maps the file's byte `at` to its place in the image: the image offset, and how many
    /// bytes of the file lie contiguously from there. `None` at or past the end.
    pub fn locate(&self, at: u64) -> Option<(u64, u64)> {
        // The last extent starting at or before `at`.
        let i = self
            .starts
            .partition_point(|&start| start <= at)
            .checked_sub(1)?;
        let (run, into) = (self.runs[i], at - self.starts[i]);
        if into >= run.len {
            return None;
        }
        Some((run.offset.checked_add(into)?, run.len - into))
    }
}

impl std::ops::Deref for Extents {
    type Target = [Extent];

    fn deref(&self) -> &[Extent] {
        &self.runs
    }
}

impl<'a> IntoIterator for &'a Extents {
    type Item = &'a Extent;
    type IntoIter = std::slice::Iter<'a, Extent>;

    fn into_iter(self) -> Self::IntoIter {
        self.runs.iter()
    }
}

/// A run of bytes of the file, contiguous in the image: `offset` is absolute in the image
/// (partition offset included). Consecutive clusters are merged into one extent; the extents'
/// lengths add up to exactly the file's length (the last one cut at the file's size). A
/// zero-length file has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Where the run starts in the image.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// An entry of a directory, as [`Fat::list`] gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The long name if it has one, else the short name as `NAME.EXT`.
    pub name: String,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// The file's length in bytes (0 for a directory).
    pub len: u64,
}

/// Why an image, a partition or a file in it cannot be read.
///
/// The messages never name the image: they are logged, and the image's path is the caller's
/// to add.
#[derive(Debug)]
pub enum ImageError {
    /// Reading the image failed.
    Io(io::Error),
    /// No file or directory has that path.
    NotFound,
    /// A directory was asked for as a file.
    NotAFile,
    /// The image has no partition with that number.
    NoSuchPartition(u32),
    /// The partition table or filesystem is inconsistent; says what is wrong.
    Corrupt(&'static str),
}

impl ImageError {
    /// The same error again, for a caller that keeps one and reports it more than once.
    pub fn again(&self) -> ImageError {
        match self {
            ImageError::Io(e) => ImageError::Io(io::Error::new(e.kind(), e.to_string())),
            ImageError::NotFound => ImageError::NotFound,
            ImageError::NotAFile => ImageError::NotAFile,
            ImageError::NoSuchPartition(n) => ImageError::NoSuchPartition(*n),
            ImageError::Corrupt(what) => ImageError::Corrupt(what),
        }
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Io(e) => write!(f, "reading the image: {e}"),
            ImageError::NotFound => f.write_str("no such file in the image"),
            ImageError::NotAFile => f.write_str("a directory, not a file"),
            ImageError::NoSuchPartition(n) => write!(f, "the image has no partition {n}"),
            ImageError::Corrupt(what) => write!(f, "corrupt image: {what}"),
        }
    }
}

impl std::error::Error for ImageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ImageError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Reads `buf.len()` bytes at `offset` of the image, without moving any file position so the
/// descriptor can be shared. An image shorter than its tables say is corrupt, not an I/O error.
fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
    file.read_exact_at(buf, offset).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ImageError::Corrupt("truncated image"),
        _ => ImageError::Io(e),
    })
}

/// The little-endian `u16` at `at` of `b` (0 if `b` is too short: callers size their buffers).
fn le16(b: &[u8], at: usize) -> u16 {
    b.get(at..at.saturating_add(2))
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

/// The little-endian `u32` at `at` of `b` (0 if `b` is too short).
fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at.saturating_add(4))
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// The little-endian `u64` at `at` of `b` (0 if `b` is too short).
fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at.saturating_add(8))
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Reads the file's bytes from its logical offset `at` into `buf` through its extents, with
/// `pread`; returns how many bytes were read: fewer than `buf.len()` only at the end of the file
/// (0 at or past it).
///
/// For tests and tools: the server reads through [`crate::resolve::Layout`].
pub fn read_extents(file: &File, extents: &Extents, at: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0usize;
    while done < buf.len() {
        let Some(pos) = at.checked_add(done as u64) else {
            break;
        };
        let Some((offset, run)) = extents.locate(pos) else {
            break;
        };
        let take = usize::try_from(run)
            .unwrap_or(usize::MAX)
            .min(buf.len() - done);
        file.read_exact_at(&mut buf[done..done + take], offset)?;
        done += take;
    }
    Ok(done)
}
