//! Where files come from: the [`Resolver`] hook and the confined [`DirectoryResolver`].
//!
//! RFC 1350 says nothing about how a requested filename maps to a file: "the file name" is an
//! opaque netascii string (§5), and which names a server honours is local policy. This module is
//! that policy. It is the Rust counterpart of nobodd.tftpd's `TFTPBaseHandler.resolve_path` (the
//! hook) and `SimpleTFTPHandler` (the directory server):
//!
//! - a [`Resolver`] turns `(filename, peer)` into a [`Source`]: an open file (the fast path, read
//!   by the io_uring driver straight into registered buffers), bytes in memory (an iPXE script
//!   generated per client) or anything that can [`ReadAt`] an offset (an archive member, a
//!   partition of a disk image);
//! - a failure is a [`ResolveError`], which knows the TFTP [`ErrorCode`] it becomes and a message
//!   fit for the wire.
//!
//! # Security
//!
//! TFTP has no authentication, so the filename is attacker-controlled input from anyone who can
//! reach the port. [`DirectoryResolver`] confines every request to its root *at open time*:
//! `openat2(2)` with `RESOLVE_BENEATH` makes the kernel refuse any `..` or symlink (absolute or
//! relative) that would leave the root, during the very lookup that opens the file, so there is
//! no check-then-open race for a renamed directory or a swapped symlink to exploit. On kernels
//! without `openat2` (before 5.6) a component-by-component walk with `O_NOFOLLOW` gives the same
//! answers. Error messages sent to clients never contain server paths, unlike nobodd, whose
//! `FileNotFoundError` text includes the full local path.

use std::ffi::{CStr, CString};
use std::fmt;
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::image::Extents;
use crate::packet::ErrorCode;

pub mod boards;
pub(crate) mod neighbour;
pub mod remap;

pub use remap::{Remap, RemapError};

/// Maps a requested filename to something that can be served: the only hook a server needs.
///
/// The server calls [`resolve`](Resolver::resolve) once per read request (RRQ), synchronously,
/// on the thread that received it, before it answers. Keep it quick: opening a file costs a few
/// microseconds, but a resolver that blocks on the network stalls every other request on that
/// thread. Generate slow content ahead of time and hand out [`Source::memory`] copies.
///
/// Implemented for closures, so a one-off policy needs no type of its own:
///
/// ```
/// use std::net::{IpAddr, SocketAddr};
/// use ringtftp::resolve::{ResolveError, Resolver, Source};
///
/// let ipxe = |name: &str, peer: SocketAddr| match name {
///     "boot.ipxe" => Ok(Source::memory(format!("#!ipxe\necho hello {}\n", peer.ip()).into_bytes())),
///     _ => Err(ResolveError::NotFound),
/// };
/// let peer: SocketAddr = "192.0.2.7:2000".parse().unwrap();
/// assert_eq!(ipxe.resolve("boot.ipxe", peer).unwrap().len(), 28);
/// ```
pub trait Resolver: Send + Sync + 'static {
    /// Resolves `filename`, exactly as the client sent it, for the client at `peer`.
    fn resolve(&self, filename: &str, peer: SocketAddr) -> Result<Source, ResolveError>;
}

impl<R: Resolver + ?Sized> Resolver for Arc<R> {
    fn resolve(&self, filename: &str, peer: SocketAddr) -> Result<Source, ResolveError> {
        (**self).resolve(filename, peer)
    }
}

impl<F> Resolver for F
where
    F: Fn(&str, SocketAddr) -> Result<Source, ResolveError> + Send + Sync + 'static,
{
    fn resolve(&self, filename: &str, peer: SocketAddr) -> Result<Source, ResolveError> {
        self(filename, peer)
    }
}

/// Something a transfer can read from: what a [`Resolver`] returns.
///
/// The length is fixed when the source is made; it is what the server announces as `tsize`
/// (RFC 2349) and where it ends the transfer. A file that shrinks afterwards reads short.
#[non_exhaustive]
pub enum Source {
    /// An open regular file. The io_uring driver reads these itself, through the descriptor.
    File(FileSource),
    /// Bytes in memory, shared rather than copied between transfers.
    Memory(Arc<[u8]>),
    /// Anything else that can read at an offset.
    Custom(Box<dyn ReadAt>),
}

impl Source {
    /// Wraps an open file, taking its length and [`FileId`] from `fstat` of the descriptor.
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] if `file` is not a regular file: a directory,
    /// device or pipe has no meaningful length (wrap a block device in [`Source::custom`]).
    pub fn file(file: File) -> io::Result<Source> {
        Ok(Source::File(FileSource::new(file)?))
    }

    /// Wraps bytes in memory.
    pub fn memory(bytes: impl Into<Arc<[u8]>>) -> Source {
        Source::Memory(bytes.into())
    }

    /// Wraps any [`ReadAt`].
    pub fn custom(source: impl ReadAt) -> Source {
        Source::Custom(Box::new(source))
    }

    /// The length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Source::File(file) => file.len(),
            Source::Memory(bytes) => bytes.len() as u64,
            Source::Custom(source) => source.len(),
        }
    }

    /// Whether the source has no bytes (a transfer of one empty DATA block).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads into `buf` from `offset`, returning how many bytes were read: 0 at or past the end,
    /// possibly fewer than asked before it (see [`read_full_at`](Self::read_full_at)).
    ///
    /// This is the generic slow path; the io_uring driver reads [`Source::File`] through the
    /// descriptor into its registered buffers instead.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match self {
            Source::File(file) => file.read_at(buf, offset),
            Source::Memory(bytes) => Ok(copy_at(bytes, buf, offset)),
            Source::Custom(source) => source.read_at(buf, offset),
        }
    }

    /// Reads until `buf` is full or the source ends, returning how many bytes were read. A TFTP
    /// block must be full unless it is the last, so a short read is only allowed at the end.
    pub fn read_full_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(file) => f.debug_tuple("File").field(file).finish(),
            // The bytes themselves would flood a log line.
            Source::Memory(bytes) => f.debug_struct("Memory").field("len", &bytes.len()).finish(),
            Source::Custom(source) => f.debug_tuple("Custom").field(source).finish(),
        }
    }
}

/// Anything that can be read at an offset: the interface of a [`Source::Custom`].
pub trait ReadAt: Send + Sync + fmt::Debug + 'static {
    /// The length in bytes, fixed for the life of the transfer.
    fn len(&self) -> u64;

    /// Reads into `buf` from `offset`, returning how many bytes were read (0 at or past the
    /// end). Like `pread(2)`: takes `&self`, so concurrent transfers can share one source.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Whether the source has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An open regular file, with the identity it had when it was opened; or a file inside a disk
/// image, read through the image's descriptor at the extents its filesystem gives it.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    id: FileId,
    len: u64,
    layout: Layout,
}

/// Where a [`FileSource`]'s bytes lie in the descriptor it is read through.
#[derive(Debug, Clone, Default)]
pub enum Layout {
    /// At their own offsets: a plain file.
    #[default]
    Whole,
    /// In these runs of the descriptor, in file order: a file inside a disk image (see
    /// [`crate::image`]), whose clusters the executors read straight from the image.
    Extents(Arc<Extents>),
}

impl Layout {
    /// Where the file's byte `at` lies in the descriptor, and how many of the `len` bytes from
    /// there lie after it without a break; `None` past the extents.
    pub fn place(&self, at: u64, len: usize) -> Option<(u64, usize)> {
        match self {
            Layout::Whole => Some((at, len)),
            Layout::Extents(extents) => {
                let (offset, run) = extents.locate(at)?;
                Some((offset, len.min(usize::try_from(run).unwrap_or(usize::MAX))))
            }
        }
    }
}

impl FileSource {
    /// Wraps an open regular file; see [`Source::file`].
    pub fn new(file: File) -> io::Result<FileSource> {
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(FileSource {
            id: FileId::from_metadata(&meta),
            len: meta.size(),
            file,
            layout: Layout::Whole,
        })
    }

    /// A file of `len` bytes lying in `extents` of `image` (a disk image file or a block
    /// device), as [`crate::image::Fat::find`] gives them. `image_id` is the image's identity
    /// when the filesystem those extents came from was read, not now: an image rewritten in
    /// between then fails the first check a transfer makes, rather than pass it with stale
    /// extents. The file is told apart from the image's other files by where it lies.
    pub fn in_image(image: File, image_id: FileId, extents: Extents, len: u64) -> FileSource {
        let within = Within {
            offset: extents.first().map_or(0, |e| e.offset),
            len,
        };
        FileSource {
            id: FileId {
                within: Some(within),
                ..image_id
            },
            len,
            file: image,
            layout: Layout::Extents(Arc::new(extents)),
        }
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The identity of the file when it was opened.
    pub fn id(&self) -> FileId {
        self.id
    }

    /// The length in bytes when it was opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Where its bytes lie in [`file`](Self::file).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether the file was empty when it was opened.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads into `buf` from the file's byte `offset`, as `pread(2)` does (the generic slow
    /// path; the executors read through [`layout`](Self::layout) themselves).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if let Layout::Whole = self.layout {
            return self.file.read_at(buf, offset);
        }
        let left = usize::try_from(self.len.saturating_sub(offset)).unwrap_or(usize::MAX);
        match self.layout.place(offset, buf.len().min(left)) {
            Some((at, run)) if run > 0 => self.file.read_at(&mut buf[..run], at),
            _ => Ok(0),
        }
    }

    /// Gives up the open file and where the bytes lie in it.
    pub fn into_parts(self) -> (File, Layout) {
        (self.file, self.layout)
    }
}

impl AsFd for FileSource {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for FileSource {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Which file, in which version: a cache key for sharing reads of a hot file between transfers.
///
/// Two opens of the same unchanged file give equal ids. Replacing the file (a new inode renamed
/// over the name) changes `ino`; rewriting it in place changes `ctime`, and usually `mtime` and
/// `size`. The change time is what makes the id trustworthy: `cp -p`, `rsync --inplace -t` or
/// `touch -d` can put the size and modification time back after rewriting the bytes, but no
/// writer can set `st_ctime` (any write or `utimensat` moves it to now). A driver can compare a
/// cached id with [`FileId::of`] a fresh open to tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// The device holding the file (`st_dev`).
    pub dev: u64,
    /// The inode number (`st_ino`).
    pub ino: u64,
    /// Last modification, whole seconds since the epoch (`st_mtime`).
    pub mtime_sec: i64,
    /// Last modification, nanoseconds within the second (`st_mtime_nsec`).
    pub mtime_nsec: i64,
    /// The length in bytes (`st_size`).
    pub size: u64,
    /// Last status change, whole seconds since the epoch (`st_ctime`): moved by every write,
    /// truncation, `chmod` or `utimensat`, and settable by no one.
    pub ctime_sec: i64,
    /// Last status change, nanoseconds within the second (`st_ctime_nsec`).
    pub ctime_nsec: i64,
    /// For a file inside a disk image, where in the image it lies; the other fields are then
    /// the image's.
    pub within: Option<Within>,
}

/// Where a file lies inside a disk image: what tells its files apart in a [`FileId`]. Two
/// directory entries with the same first byte and length (a hostile image can cross-link
/// them) hold the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Within {
    /// The image offset of the file's first byte (0 for an empty file).
    pub offset: u64,
    /// The file's length.
    pub len: u64,
}

impl FileId {
    /// The identity of an open file, from `fstat` of its descriptor (never of a path, which may
    /// name a different file by now).
    pub fn of(file: &File) -> io::Result<FileId> {
        Ok(FileId::from_metadata(&file.metadata()?))
    }

    /// Whether `file` (open as this id) still holds the bytes it held when the id was taken:
    /// for a transfer checking, as it reads on, that it is not serving a mix of two versions.
    ///
    /// Like `==`, except that a file no longer linked anywhere (renamed over by a new version,
    /// or deleted) may have a new change time: unlinking moves `st_ctime` without touching the
    /// bytes, and a transfer that opened the old version keeps serving that snapshot. Other
    /// changes of the change time alone (a `chmod`, a new hard link) count as changes.
    pub fn unchanged_in(&self, file: &File) -> io::Result<bool> {
        let meta = file.metadata()?;
        let now = FileId {
            within: self.within,
            ..FileId::from_metadata(&meta)
        };
        Ok(now == *self
            || meta.nlink() == 0
                && FileId {
                    ctime_sec: self.ctime_sec,
                    ctime_nsec: self.ctime_nsec,
                    ..now
                } == *self)
    }

    fn from_metadata(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            size: meta.size(),
            ctime_sec: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
            within: None,
        }
    }
}

/// Why a filename could not be resolved.
///
/// [`message`](Self::message) is what goes to the client in the ERROR packet: fixed text that
/// never names a server path. [`Display`](fmt::Display) is for logs and may add the underlying
/// I/O error.
#[derive(Debug)]
#[non_exhaustive]
pub enum ResolveError {
    /// No such file (or a path through something that is not a directory).
    NotFound,
    /// The request may not be served: it leaves the root, crosses a forbidden link, or the
    /// server may not read the file.
    AccessViolation,
    /// The name is a directory, device, pipe or socket, not a regular file.
    NotAFile,
    /// Any other I/O failure (out of descriptors, a disk error...).
    Io(io::Error),
    /// A custom resolver's refusal; the text is sent to the client as is.
    Other(String),
    /// Refused by policy (a remap rule), with this message for the client: an access
    /// violation.
    Refused(String),
}

impl ResolveError {
    /// The TFTP error code to send (RFC 1350 §5 Appendix).
    pub fn code(&self) -> ErrorCode {
        match self {
            ResolveError::NotFound => ErrorCode::FileNotFound,
            ResolveError::AccessViolation | ResolveError::NotAFile | ResolveError::Refused(_) => {
                ErrorCode::AccessViolation
            }
            ResolveError::Io(_) | ResolveError::Other(_) => ErrorCode::Undefined,
        }
    }

    /// The message to send: generic text, never a path.
    pub fn message(&self) -> &str {
        match self {
            ResolveError::NotFound => ErrorCode::FileNotFound.message(),
            ResolveError::AccessViolation => ErrorCode::AccessViolation.message(),
            ResolveError::NotAFile => "Not a regular file",
            // io::Error's text is usually harmless, but a custom resolver's may carry a path.
            ResolveError::Io(_) => "I/O error",
            ResolveError::Other(message) | ResolveError::Refused(message) => message,
        }
    }
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Io(e) => write!(f, "I/O error: {e}"),
            _ => f.write_str(self.message()),
        }
    }
}

impl std::error::Error for ResolveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ResolveError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ResolveError {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            // ENOTDIR: a path through a regular file, which is simply not there.
            Some(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG) => ResolveError::NotFound,
            // EXDEV: RESOLVE_BENEATH refused an escape; ELOOP: a symlink loop, too many hops
            // or a /proc magic link; EPERM: an LSM or seccomp said no.
            Some(libc::EACCES | libc::EPERM | libc::ELOOP | libc::EXDEV) => {
                ResolveError::AccessViolation
            }
            Some(libc::EISDIR) => ResolveError::NotAFile,
            Some(_) => ResolveError::Io(e),
            None => match e.kind() {
                io::ErrorKind::NotFound => ResolveError::NotFound,
                io::ErrorKind::PermissionDenied => ResolveError::AccessViolation,
                io::ErrorKind::IsADirectory => ResolveError::NotAFile,
                _ => ResolveError::Io(e),
            },
        }
    }
}

/// Serves regular files from beneath one directory: nobodd's `SimpleTFTPHandler`, confined.
///
/// How a filename becomes a path beneath the root:
///
/// - **Backslashes are separators.** `\` is translated to `/` before anything else, so Windows
///   Deployment Services clients asking for `boot\x64\wdsnbp.com` get `boot/x64/wdsnbp.com`, and
///   the translated path is confined like any other.
/// - **Leading slashes are stripped.** `/pxelinux.0` (what many PXE ROMs and iPXE send) means
///   `pxelinux.0` under the root, as with `in.tftpd -s`. This differs from nobodd, which joins
///   the name onto its base path so that an absolute name escapes it.
/// - **The rest is resolved by the kernel, confined.** `..` and symlinks work while they stay
///   beneath the root (`a/../b`, a link to `../common/initrd` from a subdirectory) and are an
///   [`AccessViolation`](ResolveError::AccessViolation) when they would leave it, as is every
///   absolute symlink and every `/proc` magic link. Mount points beneath the root are crossed.
/// - **Only regular files are served, and nothing else is opened.** An empty name (the root
///   itself), a directory, device, pipe or socket is [`NotAFile`](ResolveError::NotAFile). The
///   type is checked on an `O_PATH` handle before anything is opened for reading, so a FIFO in
///   the tree cannot hang the server and a device node's driver is never called.
///
/// The root follows its path, as operators deploy a new tree: renamed into place
/// (`mv tftp.new tftp`) or by flipping a symlink. At most every [`FOLLOW_EVERY`] a request checks
/// whether the path now names another directory, and from then on requests are served from that
/// one; running transfers finish from the files they opened. While the path names nothing (the
/// moment between two renames), the last directory keeps serving. [`reload`](Self::reload)
/// checks at once.
#[derive(Debug)]
pub struct DirectoryResolver {
    root: PathBuf,
    dir: RwLock<Root>,
    /// When the path was last checked, in milliseconds since `origin`.
    checked: AtomicU64,
    origin: Instant,
    /// Whether the path names no directory (said once per change).
    lost: AtomicBool,
    /// Set once `openat2` turns out to be missing (ENOSYS): use [`walk_beneath`] from then on.
    no_openat2: AtomicBool,
    /// Set once `/proc/self/fd` turns out to be missing: reopen by name from then on.
    no_proc: AtomicBool,
    /// Look in a directory per client first (see [`with_client_dirs`](Self::with_client_dirs)).
    client_dirs: bool,
    /// Rewrite names first (see [`with_remap`](Self::with_remap)).
    remap: RwLock<Option<Arc<Remap>>>,
}

/// How often, at most, a request checks whether the root's path names another directory.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// The directory served from, and which one it is.
#[derive(Debug)]
struct Root {
    fd: Arc<OwnedFd>,
    id: (u64, u64),
}

impl Root {
    fn open(path: &Path) -> io::Result<Root> {
        // std adds O_CLOEXEC; O_DIRECTORY makes a non-directory fail here rather than later.
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(path)?;
        let meta = dir.metadata()?;
        Ok(Root {
            fd: Arc::new(dir.into()),
            id: (meta.dev(), meta.ino()),
        })
    }
}

impl DirectoryResolver {
    /// Opens `root`, which must be an existing directory, to serve files from beneath it.
    pub fn new(root: impl AsRef<Path>) -> io::Result<Self> {
        let root = root.as_ref();
        Ok(DirectoryResolver {
            root: root.to_path_buf(),
            dir: RwLock::new(Root::open(root)?),
            checked: AtomicU64::new(0),
            origin: Instant::now(),
            lost: AtomicBool::new(false),
            no_openat2: AtomicBool::new(false),
            no_proc: AtomicBool::new(false),
            client_dirs: false,
            remap: RwLock::new(None),
        })
    }

    /// Checks now whether the root's path names another directory, and serves from it if so:
    /// `Ok(true)` if it did, `Ok(false)` if the path names the directory already served. An
    /// error (the path names nothing, or no directory) keeps the directory served.
    pub fn reload(&self) -> io::Result<bool> {
        self.checked.store(self.millis(), Ordering::Relaxed);
        let meta = std::fs::metadata(&self.root)?;
        if !meta.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        if (meta.dev(), meta.ino()) == self.root_id() {
            return Ok(false);
        }
        let new = Root::open(&self.root)?;
        let mut dir = self.dir.write().unwrap_or_else(|e| e.into_inner());
        let changed = new.id != dir.id;
        *dir = new;
        Ok(changed)
    }

    /// The directory served from now, following its path at most every [`FOLLOW_EVERY`].
    fn current(&self) -> Arc<OwnedFd> {
        let now = self.millis();
        let last = self.checked.load(Ordering::Relaxed);
        // One request per period checks; the others go on with the directory they have.
        if now.saturating_sub(last) >= FOLLOW_EVERY.as_millis() as u64
            && self
                .checked
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.follow();
        }
        self.dir
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .fd
            .clone()
    }

    /// [`reload`](Self::reload), saying what happened in the log.
    fn follow(&self) {
        match self.reload() {
            Ok(changed) => {
                if self.lost.swap(false, Ordering::Relaxed) || changed {
                    tracing::info!(directory = %self.root.display(), "{} names a new directory: new requests are served from it (running transfers finish from the files they opened)", self.root.display());
                }
            }
            Err(e) => {
                if !self.lost.swap(true, Ordering::Relaxed) {
                    tracing::warn!(directory = %self.root.display(), error = %e, "{} names no directory now: still serving the one it named", self.root.display());
                }
            }
        }
    }

    fn root_id(&self) -> (u64, u64) {
        self.dir.read().unwrap_or_else(|e| e.into_inner()).id
    }

    fn millis(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Serves each client its own files where it has them, as dnsmasq's
    /// `--tftp-unique-root=ip` (and `=mac`) do: a request for `NAME` is served from the first
    /// of these that exists beneath the root:
    ///
    /// 1. `01-aa-bb-cc-dd-ee-ff/NAME`, by the client's MAC address in pxelinux's spelling, when
    ///    the kernel's neighbour table has one for it: a client on a directly attached network
    ///    (not behind a router, not on loopback). Without an entry this step is skipped;
    /// 2. `ADDR/NAME`, by the client's IP address: IPv4 dotted (`192.0.2.7`), IPv6 in its RFC
    ///    5952 text with the colons (`2001:db8::7`), an IPv4-mapped IPv6 client as IPv4;
    /// 3. `NAME`.
    ///
    /// Each is looked up exactly as a plain name is, confined beneath the root (so
    /// `ADDR/../../x` is refused like `../x`, and `ADDR/kernel` may be a symlink to
    /// `../kernel`). Only "not found" moves on to the next: a per-client entry that exists but
    /// is refused (a directory, a FIFO, unreadable) is an error, never silently replaced by the
    /// shared file. The directories select files; they do not hide them: any client may ask for
    /// `192.0.2.8/NAME` by that name.
    pub fn with_client_dirs(mut self, on: bool) -> Self {
        self.client_dirs = on;
        self
    }

    /// Rewrites every requested name with tftp-hpa's rules (see [`remap`]) before it is looked
    /// up (and before the per-client directories are tried). The rewritten name is confined
    /// beneath the root like any other.
    pub fn with_remap(self, remap: Remap) -> Self {
        self.set_remap(Some(remap));
        self
    }

    /// Replaces the rules of [`with_remap`](Self::with_remap) (or drops them with `None`) for
    /// the requests that come after, as a configuration reload does.
    pub fn set_remap(&self, remap: Option<Remap>) {
        *self.remap.write().unwrap_or_else(|e| e.into_inner()) = remap.map(Arc::new);
    }

    /// The root, as given to [`new`](Self::new).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens `name` (already [`normalise`]d) beneath the root with `flags` ([`PATH_FLAGS`] or
    /// [`OPEN_FLAGS`]): `openat2` if the kernel has it, else the walker.
    fn open_beneath(&self, dir: &OwnedFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
        if !self.no_openat2.load(Ordering::Relaxed) {
            match openat2_beneath(dir.as_fd(), name, flags) {
                // ENOSYS: before Linux 5.6 (or a seccomp profile that predates it); E2BIG: a
                // kernel that does not know this open_how. Neither will change.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::E2BIG)) => {
                    self.no_openat2.store(true, Ordering::Relaxed);
                }
                // EPERM may be a seccomp filter (then the walker works) or an LSM denying this
                // file (then the walker fails the same way); not cached, as it may be the latter.
                // EAGAIN: concurrent renames kept defeating RESOLVE_BENEATH's retry.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EAGAIN)) => {}
                result => return result,
            }
        }
        walk_beneath(dir.as_fd(), name, flags)
    }

    /// Opens `name` beneath the root for serving, refusing anything but a regular file before
    /// it is opened for reading.
    ///
    /// Opening is what has side effects: a FIFO's open waits for a writer, a watchdog device
    /// arms on open, a tape device rewinds on close. So the name is first opened with `O_PATH`
    /// (no read access, no driver `open` call, but the inode pinned), its type read with
    /// `fstat`, and only a regular file is opened for reading, through `/proc/self/fd/N`: the
    /// magic link to that very inode, not a second lookup of the name, so there is no window
    /// for a rename or a swapped symlink between the check and the open. Reading permission is
    /// checked by that second open, as by any other.
    ///
    /// Without `/proc` (a chroot or a container that does not mount it), the name is looked up
    /// again, confined the same way and non-blocking, and served only if it is the same inode
    /// as the one checked. Someone able to swap files in the tree at that instant could then
    /// make us open (never read or serve) a device node; one warning says so.
    fn open_file(&self, dir: &OwnedFd, name: &CStr) -> Result<(File, FileId), ResolveError> {
        let path = File::from(self.open_beneath(dir, name, PATH_FLAGS)?);
        let meta = path.metadata()?;
        if !meta.is_file() {
            return Err(ResolveError::NotAFile);
        }
        let id = FileId::from_metadata(&meta);
        if !self.no_proc.load(Ordering::Relaxed) {
            match reopen(path.as_fd()) {
                // ENOENT: the descriptor exists, so it is /proc/self/fd that does not.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if !self.no_proc.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "/proc is not mounted: files are reopened by name and checked to be \
                             the inode whose type was checked"
                        );
                    }
                }
                result => return Ok((result?, id)),
            }
        }
        let file = File::from(self.open_beneath(dir, name, OPEN_FLAGS)?);
        let again = file.metadata()?;
        if (again.dev(), again.ino()) != (meta.dev(), meta.ino()) {
            // Renamed over between the two lookups: ask again rather than guess.
            return Err(ResolveError::Io(io::Error::from_raw_os_error(libc::EAGAIN)));
        }
        clear_nonblock(&file)?;
        Ok((file, id))
    }
}

impl DirectoryResolver {
    /// [`resolve`](Resolver::resolve) for a client whose neighbour-table MAC is `mac`.
    fn resolve_with(
        &self,
        filename: &str,
        peer: SocketAddr,
        mac: impl FnOnce(IpAddr) -> Option<[u8; 6]>,
    ) -> Result<Source, ResolveError> {
        let client = peer.ip().to_canonical();
        let remapped;
        let remap = self.remap.read().unwrap_or_else(|e| e.into_inner()).clone();
        let filename = match &remap {
            Some(remap) => {
                remapped = remap.apply(filename, client)?;
                remapped.as_str()
            }
            None => filename,
        };
        let name = normalise(filename)?;
        let dir = self.current();
        let (file, id) = if self.client_dirs {
            self.open_client_file(&dir, &name, client, mac)?
        } else {
            self.open_file(&dir, &name)?
        };
        Ok(Source::File(FileSource {
            len: id.size,
            id,
            file,
            layout: Layout::Whole,
        }))
    }

    /// Opens `name` from the client's MAC directory, else its address directory, else the root
    /// (see [`with_client_dirs`](Self::with_client_dirs)).
    fn open_client_file(
        &self,
        root: &OwnedFd,
        name: &CStr,
        client: IpAddr,
        mac: impl FnOnce(IpAddr) -> Option<[u8; 6]>,
    ) -> Result<(File, FileId), ResolveError> {
        let dirs = mac(client)
            .map(neighbour::mac_dir)
            .into_iter()
            .chain([client.to_string()]);
        for dir in dirs {
            let mut path = dir.into_bytes();
            path.push(b'/');
            path.extend_from_slice(name.to_bytes());
            let path = CString::new(path).map_err(|_| ResolveError::NotFound)?;
            match self.open_file(root, &path) {
                Err(ResolveError::NotFound) => continue,
                result => return result,
            }
        }
        self.open_file(root, name)
    }
}

impl Resolver for DirectoryResolver {
    fn resolve(&self, filename: &str, peer: SocketAddr) -> Result<Source, ResolveError> {
        self.resolve_with(filename, peer, neighbour::mac)
    }
}

/// Turns a requested filename into the name to open beneath the root: `\` becomes `/` and
/// leading slashes go (see [`DirectoryResolver`]).
fn normalise(filename: &str) -> Result<CString, ResolveError> {
    let bytes: Vec<u8> = filename
        .bytes()
        .map(|b| if b == b'\\' { b'/' } else { b })
        .skip_while(|&b| b == b'/')
        .collect();
    if bytes.is_empty() {
        // Nothing left names the root directory itself.
        return Err(ResolveError::NotAFile);
    }
    // The packet codec stops at NUL, so this is a custom caller's odd name: no file has it.
    CString::new(bytes).map_err(|_| ResolveError::NotFound)
}

/// Opens `name` with `flags` beneath `root` in one `openat2(2)`, the kernel enforcing
/// confinement.
fn openat2_beneath(root: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: open_how is three u64s (non_exhaustive only to allow growth); all-zero is valid
    // and is what the kernel expects of fields we do not set.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    let mut last = io::Error::from_raw_os_error(libc::EAGAIN);
    for _ in 0..OPENAT2_ATTEMPTS {
        // SAFETY: `name` is NUL-terminated and `how` a valid open_how of the size passed; both
        // outlive the call. `root` is a live descriptor borrowed for the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                name.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: openat2 returned a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        last = io::Error::last_os_error();
        // EAGAIN: a rename or mount raced the lookup (RESOLVE_BENEATH's seqlock check).
        if !matches!(last.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
            break;
        }
    }
    Err(last)
}

/// Opens `name` with `flags` beneath `root` without `openat2`, one component at a time.
///
/// Gives the same answers (as errno values) as [`openat2_beneath`]: each component is opened with
/// `O_PATH | O_NOFOLLOW`, so the kernel never follows a link for us; `..` pops back to a
/// directory already opened and is `EXDEV` at the root; a symlink's target is read and walked
/// in its place (`ELOOP` after [`MAX_SYMLINKS`]), and an absolute target is `EXDEV`. For
/// [`PATH_FLAGS`] the last component's `O_PATH` descriptor is the answer; other flags reopen it
/// by name with `O_NOFOLLOW`, so a symlink swapped in after the walk is refused, not followed.
///
/// Unlike `RESOLVE_BENEATH`, this does not notice a directory being moved out of the root while
/// it is being walked. That takes write access to the tree, which a TFTP client does not have.
fn walk_beneath(root: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // Components still to walk, next last; directories walked into, innermost last.
    let mut pending: Vec<Vec<u8>> = components(name.to_bytes());
    let mut dirs: Vec<File> = Vec::new();
    let mut hops = 0;
    while let Some(component) = pending.pop() {
        match component.as_slice() {
            b"" | b"." => continue,
            b".." => {
                if dirs.pop().is_none() {
                    return Err(io::Error::from_raw_os_error(libc::EXDEV));
                }
                continue;
            }
            _ => {}
        }
        let parent = dirs.last().map_or(root, |dir| dir.as_fd());
        let component = CString::new(component).map_err(|_| einval())?;
        let file = File::from(openat(parent, &component, libc::O_PATH | libc::O_NOFOLLOW)?);
        let kind = file.metadata()?.file_type();
        if kind.is_symlink() {
            hops += 1;
            if hops > MAX_SYMLINKS {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let target = readlink(file.as_fd())?;
            if target.starts_with(b"/") {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            }
            // The target is walked from the link's own directory, which `dirs` still ends at.
            pending.extend(components(&target));
        } else if kind.is_dir() {
            dirs.push(file);
        } else if pending.is_empty() {
            if flags == PATH_FLAGS {
                return Ok(file.into());
            }
            return openat(parent, &component, flags | libc::O_NOFOLLOW);
        } else {
            // Like the kernel: `file/more` (even `file/` or `file/.`) is not there.
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
    }
    // The walk ended on a directory (the name ended in `..`, `.` or `/`).
    Err(io::Error::from_raw_os_error(libc::EISDIR))
}

/// `path`'s components in reverse, so that popping yields them in order.
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/')
        .rev()
        .map(<[u8]>::to_vec)
        .collect()
}

fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and outlives the call; `dir` is a live descriptor; no
    // mode argument is needed as the flags never include O_CREAT.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The target of the symlink open (with `O_PATH | O_NOFOLLOW`) as `link`.
fn readlink(link: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `buf` is valid for `buf.len()` bytes of writes; the empty path is NUL-terminated
    // and, with an O_PATH descriptor, names the link itself (Linux 2.6.39+).
    let n = unsafe {
        libc::readlinkat(
            link.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n >= buf.len() {
        // Possibly truncated: no path that long can be opened anyway.
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf.truncate(n);
    Ok(buf)
}

/// Opens the inode `path` (an `O_PATH` descriptor) for reading through its `/proc/self/fd` magic
/// link: the same inode, whatever its name points to by now.
fn reopen(path: BorrowedFd<'_>) -> io::Result<File> {
    let link = CString::new(format!("/proc/self/fd/{}", path.as_raw_fd())).map_err(|_| einval())?;
    // SAFETY: `link` is NUL-terminated and outlives the call; no O_CREAT, so no mode.
    let fd = unsafe { libc::open(link.as_ptr(), REOPEN_FLAGS) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Clears the O_NONBLOCK we opened with: io_uring honours it on regular files by failing reads
/// of uncached pages with EAGAIN instead of doing them.
fn clear_nonblock(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL on a live descriptor reads its flags and touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on a live descriptor sets its flags and touches no memory.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn copy_at(bytes: &[u8], buf: &mut [u8], offset: u64) -> usize {
    let Some(rest) = usize::try_from(offset).ok().and_then(|at| bytes.get(at..)) else {
        return 0;
    };
    let n = rest.len().min(buf.len());
    buf[..n].copy_from_slice(&rest[..n]);
    n
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// How a name is first opened: a handle on the inode that reads nothing and calls no driver.
const PATH_FLAGS: libc::c_int = libc::O_PATH | libc::O_CLOEXEC;

/// How a name is opened for reading when `/proc` is missing (see
/// [`DirectoryResolver::open_file`]). O_NONBLOCK: a FIFO swapped in after the type check must
/// not make the open wait for a writer (cleared on the regular file kept); O_NOCTTY: nor may a
/// tty become our controlling terminal.
const OPEN_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;

/// How a checked regular file is reopened through `/proc/self/fd`.
const REOPEN_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY;

/// How many times to retry `openat2` failing with EAGAIN before walking instead.
const OPENAT2_ATTEMPTS: usize = 4;

/// Symlinks followed in one lookup before ELOOP, as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINKS: u32 = 40;

#[cfg(test)]
mod tests;
