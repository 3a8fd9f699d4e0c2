//! Boot partitions served from inside OS images, one per board: nobodd's `BootHandler`.
//!
//! A Raspberry Pi netbooting with its default `TFTP_PREFIX` asks for its files under a
//! directory named after its serial number (`1234abcd/start4.elf`). nobodd answers from the FAT
//! boot partition inside the OS image configured for that serial, with no loop mount; so does
//! [`BoardResolver`], through [`crate::image`]: a file's clusters become the extents of a
//! [`FileSource`], which the executors read from the image like any file (fixed reads into
//! registered buffers, shared through the chunk cache).
//!
//! As in nobodd: the first component of the name is the serial in hexadecimal (any case,
//! leading zeros allowed); a board configured with an address is served to that address only
//! (anyone else gets an access violation); a serial no board has is not found, or is handed to
//! the resolver behind (a directory served beside the boards). Unlike nobodd, every image is
//! opened and its partition and filesystem checked when the resolver is made, so a bad board
//! is a start-up error, and an image rewritten or replaced under the server is read again
//! before the next request is answered from it.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::{FileId, FileSource, ResolveError, Resolver, Source};
use crate::image::{self, Fat, ImageError};

/// One board: nobodd's `--board SERIAL,FILENAME[,PART[,IP]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Board {
    /// The serial number the board asks under (its files are `SERIAL/NAME`).
    pub serial: u32,
    /// The OS image (or block device) holding its boot partition.
    pub image: PathBuf,
    /// The boot partition's number in the image's partition table (1 by default).
    pub partition: u32,
    /// The only address served this board's files, if any.
    pub ip: Option<IpAddr>,
}

impl Board {
    /// Parses `SERIAL,FILENAME[,PART[,IP]]`; an empty PART is 1.
    pub fn parse(text: &str) -> Result<Board, String> {
        let parts: Vec<&str> = text.split(',').collect();
        if !(2..=4).contains(&parts.len()) {
            return Err(format!(
                "expected SERIAL,FILENAME[,PART[,IP]] instead of {text:?}"
            ));
        }
        let serial = parse_serial(parts[0])?;
        let partition = match parts.get(2).map(|p| p.trim()) {
            None | Some("") => 1,
            Some(part) => parse_partition(part)?,
        };
        let ip = parts.get(3).map(|ip| parse_ip(ip)).transpose()?;
        Ok(Board {
            serial,
            image: PathBuf::from(parts[1]),
            partition,
            ip,
        })
    }
}

/// A serial number as nobodd reads one: hexadecimal; 16 digits or more starting `10000000` or
/// `00000000` (as the Pi's OTP and `/proc/cpuinfo` show it) keep their last 8.
pub fn parse_serial(text: &str) -> Result<u32, String> {
    let mut digits = text.trim();
    if digits.len() >= 16 && (digits.starts_with("10000000") || digits.starts_with("00000000")) {
        digits = &digits[8..];
    }
    let digits = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
        .unwrap_or(digits);
    u64::from_str_radix(digits, 16)
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("invalid serial number {text:?}"))
}

/// A partition number, from 1.
pub fn parse_partition(text: &str) -> Result<u32, String> {
    match text.trim().parse() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("invalid partition number {text:?}")),
    }
}

/// An address a board is limited to.
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("invalid IP address {text:?}"))
}

/// Why a board cannot be served: for the operator, at start-up.
#[derive(Debug)]
pub struct BoardError {
    pub board: Board,
    pub error: ImageError,
}

impl fmt::Display for BoardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "board {:08x}: image {} partition {}: {}",
            self.board.serial,
            self.board.image.display(),
            self.board.partition,
            self.error
        )
    }
}

impl std::error::Error for BoardError {}

/// Serves each board's boot partition under `SERIAL/`, and hands every other name to the
/// resolver behind, if any. See the [module docs](self).
pub struct BoardResolver {
    /// Replaced whole by [`set_boards`](Self::set_boards); a request takes the map as it is.
    boards: RwLock<Arc<HashMap<u32, Served>>>,
    behind: Option<Box<dyn Resolver>>,
}

impl fmt::Debug for BoardResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoardResolver")
            .field("boards", &self.snapshot().len())
            .field("behind", &self.behind.is_some())
            .finish()
    }
}

/// A board and its image.
struct Served {
    board: Board,
    /// Shared by every board naming the same image and partition (a room of Pis booting one
    /// image): one copy of the FAT, one identity for the chunk cache.
    image: Arc<ImageSlot>,
}

/// An image as last opened, and when reading it again last failed.
struct ImageSlot {
    opened: RwLock<Arc<Opened>>,
    /// A changed image that could not be read (half copied, say) is tried again only after
    /// [`RETRY_AFTER`], not by every request of a storm.
    failed: Mutex<Option<(Instant, ImageError)>>,
}

/// How long a changed image that could not be read is left before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// An image, open, with its boot partition's filesystem read.
struct Opened {
    file: File,
    /// The image's identity when its filesystem was read: a request finding another (the
    /// image rewritten in place, or another file renamed over its path) reads it again.
    id: FileId,
    fat: Fat,
}

impl Opened {
    fn open(board: &Board) -> Result<Opened, ImageError> {
        // Only a file or a block device: opening a FIFO would wait for a writer.
        let meta = std::fs::metadata(&board.image).map_err(ImageError::Io)?;
        if !meta.is_file() && !meta.file_type().is_block_device() {
            return Err(ImageError::Corrupt("not an image file or a block device"));
        }
        let file = File::open(&board.image).map_err(ImageError::Io)?;
        let id = FileId::of(&file).map_err(ImageError::Io)?;
        // A block device's size is where its end is, not `st_size`.
        let len = (&file).seek(SeekFrom::End(0)).map_err(ImageError::Io)?;
        let part = image::partition(&file, len, board.partition)?;
        let fat = Fat::open(&file, &part)?;
        Ok(Opened { file, id, fat })
    }

    /// Whether the image at `path` is still the one open here, with the same bytes.
    fn still_matches(&self, path: &Path) -> bool {
        let same_file = std::fs::metadata(path)
            .map(|meta| (meta.dev(), meta.ino()) == (self.id.dev, self.id.ino))
            .unwrap_or(true);
        // A path that names nothing for now (between two renames): the open image stands.
        same_file && self.id.unchanged_in(&self.file).unwrap_or(false)
    }
}

impl BoardResolver {
    /// Opens every board's image and reads its boot partition; the first that cannot be
    /// served is the error. A serial given twice: the later board stands (as in nobodd, where
    /// `--board` comes after the configuration files).
    pub fn new(
        boards: impl IntoIterator<Item = Board>,
        behind: Option<Box<dyn Resolver>>,
    ) -> Result<BoardResolver, BoardError> {
        Ok(BoardResolver {
            boards: RwLock::new(Arc::new(open_all(boards)?)),
            behind,
        })
    }

    /// Serves `boards` from now on, in place of those served (nobodd's reload, after a board
    /// was added to its configuration): all of them are opened first, so on an error the
    /// boards served stay as they were. Running transfers keep the images they opened.
    pub fn set_boards(&self, boards: impl IntoIterator<Item = Board>) -> Result<(), BoardError> {
        let fresh = Arc::new(open_all(boards)?);
        *self.boards.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The boards served, by serial.
    pub fn boards(&self) -> Vec<Board> {
        let mut boards: Vec<Board> = self.snapshot().values().map(|s| s.board.clone()).collect();
        boards.sort_by_key(|b| b.serial);
        boards
    }

    /// The boards as they are now (a reload replaces the map, never changes it).
    fn snapshot(&self) -> Arc<HashMap<u32, Served>> {
        self.boards
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The image of `served` as it is now: read again if it changed since it was opened.
    fn image(&self, served: &Served) -> Result<Arc<Opened>, ResolveError> {
        let slot = &served.image;
        let opened = slot
            .opened
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if opened.still_matches(&served.board.image) {
            return Ok(opened);
        }
        let mut failed = slot.failed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, error)) = &*failed {
            if at.elapsed() < RETRY_AFTER {
                return Err(image_error(error.again()));
            }
        }
        let mut current = slot.opened.write().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&current, &opened) {
            // Another request read it again meanwhile.
            return Ok(current.clone());
        }
        let serial = format!("{:08x}", served.board.serial);
        let path = served.board.image.display();
        match Opened::open(&served.board) {
            Ok(fresh) => {
                tracing::info!(board = serial, image = %path, "board {serial}: its image changed; read again");
                *current = Arc::new(fresh);
                *failed = None;
                Ok(current.clone())
            }
            Err(error) => {
                // Serving from the filesystem read before would mix two versions.
                tracing::warn!(board = serial, image = %path, %error, "board {serial}: its image changed and cannot be read");
                let answer = image_error(error.again());
                *failed = Some((Instant::now(), error));
                Err(answer)
            }
        }
    }

    /// The board a name asks under, and the path within its partition: `..` climbs within
    /// the partition, never above its root (nothing outside a board's partition has a name
    /// here). `None` where the first component is no board's serial.
    fn split<'a>(
        boards: &'a HashMap<u32, Served>,
        name: &'a str,
    ) -> Option<(&'a Served, Vec<&'a str>)> {
        let mut parts = name.split('/').filter(|p| !p.is_empty() && *p != ".");
        let serial = parts.next().and_then(request_serial)?;
        let served = boards.get(&serial)?;
        let mut path = Vec::new();
        for part in parts {
            if part == ".." {
                path.pop();
            } else {
                path.push(part);
            }
        }
        Some((served, path))
    }
}

/// The serial a request's first component names, as nobodd's handler reads it: hexadecimal
/// (`int(part, 16)`), any case, an optional `0x`.
fn request_serial(part: &str) -> Option<u32> {
    let digits = part
        .strip_prefix("0x")
        .or_else(|| part.strip_prefix("0X"))
        .unwrap_or(part);
    // from_str_radix alone would take a sign.
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // Leading zeros are allowed (up to 32 digits in all).
    u32::try_from(u128::from_str_radix(digits, 16).ok()?).ok()
}

/// Opens every board's image, once per image and partition; a serial given twice: the later
/// board stands.
fn open_all(boards: impl IntoIterator<Item = Board>) -> Result<HashMap<u32, Served>, BoardError> {
    let mut served = HashMap::new();
    let mut images: HashMap<(PathBuf, u32), Arc<ImageSlot>> = HashMap::new();
    for board in boards {
        let key = (board.image.clone(), board.partition);
        let image = match images.get(&key) {
            Some(image) => image.clone(),
            None => {
                let opened = Opened::open(&board).map_err(|error| BoardError {
                    board: board.clone(),
                    error,
                })?;
                let image = Arc::new(ImageSlot {
                    opened: RwLock::new(Arc::new(opened)),
                    failed: Mutex::new(None),
                });
                images.insert(key, image.clone());
                image
            }
        };
        served.insert(board.serial, Served { board, image });
    }
    Ok(served)
}

impl Resolver for BoardResolver {
    fn resolve(&self, filename: &str, peer: SocketAddr) -> Result<Source, ResolveError> {
        let boards = self.snapshot();
        let name = filename.replace('\\', "/");
        let Some((served, path)) = Self::split(&boards, &name) else {
            return match &self.behind {
                Some(behind) => behind.resolve(filename, peer),
                None => Err(ResolveError::NotFound),
            };
        };
        if let Some(ip) = served.board.ip {
            if ip.to_canonical() != peer.ip().to_canonical() {
                return Err(ResolveError::Refused("IP does not match".into()));
            }
        }
        if path.is_empty() {
            return Err(ResolveError::NotAFile);
        }
        let opened = self.image(served)?;
        let entry = match opened.fat.find(&opened.file, &path.join("/")) {
            Ok(entry) => entry,
            Err(error) => {
                if let ImageError::Corrupt(_) = error {
                    let serial = format!("{:08x}", served.board.serial);
                    tracing::warn!(board = serial, file = filename, %error, "board {serial}: bad filesystem");
                }
                return Err(image_error(error));
            }
        };
        if entry.is_dir {
            return Err(ResolveError::NotAFile);
        }
        let file = opened.file.try_clone()?;
        Ok(Source::File(FileSource::in_image(
            file,
            opened.id,
            entry.extents,
            entry.len,
        )))
    }
}

/// What a client is told: nothing that names the image.
fn image_error(error: ImageError) -> ResolveError {
    match error {
        ImageError::NotFound => ResolveError::NotFound,
        ImageError::NotAFile => ResolveError::NotAFile,
        ImageError::Io(e) => ResolveError::Io(e),
        ImageError::NoSuchPartition(_) | ImageError::Corrupt(_) => {
            ResolveError::Other("Bad boot partition in the board's image".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boards_parse_as_nobodd_reads_them() {
        let board = Board::parse("1234ABCD,ubuntu.img").unwrap();
        assert_eq!(
            board,
            Board {
                serial: 0x1234abcd,
                image: "ubuntu.img".into(),
                partition: 1,
                ip: None
            }
        );
        let board = Board::parse("100000001234abcd,/srv/pi.img,2,192.0.2.5").unwrap();
        assert_eq!(board.serial, 0x1234abcd);
        assert_eq!(board.partition, 2);
        assert_eq!(board.ip, Some("192.0.2.5".parse().unwrap()));
        assert_eq!(
            Board::parse("abc,x.img,,").map(|b| b.partition),
            Err("invalid IP address \"\"".to_string())
        );
        assert_eq!(Board::parse("abc,x.img,").unwrap().partition, 1);
        for bad in [
            "1234abcd",
            "xyz,a.img",
            "123456789,a.img",
            "1,a.img,0",
            "1,a.img,one",
            "1,a.img,1,not-an-ip",
            "1,a.img,1,::1,extra",
        ] {
            assert!(Board::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_request_names_its_board_as_nobodd_reads_it() {
        for (part, serial) in [
            ("1234abcd", Some(0x1234abcd)),
            ("1234ABCD", Some(0x1234abcd)),
            ("01234abcd", Some(0x1234abcd)),
            ("0x1234abcd", Some(0x1234abcd)),
            ("00000000000000000000001234abcd", Some(0x1234abcd)),
            ("0", Some(0)),
            ("abc", Some(0xabc)),
            // Not hexadecimal, a sign, past 32 bits, empty: no board's.
            ("start4.elf", None),
            ("+1234abcd", None),
            ("-1", None),
            ("123456789", None),
            ("0x", None),
            ("", None),
        ] {
            assert_eq!(request_serial(part), serial, "{part:?}");
        }
    }
}
