//! FAT12, FAT16 and FAT32, read-only, after Microsoft's *FAT32 File System Specification*.
//!
//! The boot sector's BPB (§3) gives the layout: reserved sectors, then `NumFATs` copies of the
//! FAT, then (FAT12/16 only) the fixed root directory, then the data region of clusters
//! numbered from 2. The FAT type follows from the count of clusters and nothing else (§3.5).
//! A file is a chain of clusters through the FAT (§4); a directory is an array of 32-byte
//! entries (§6), each long name a run of entries before its short entry, last part first, tied
//! to it by a checksum of the short name (§7).

use std::collections::HashSet;
use std::fmt;
use std::fs::File;

use super::{le16, le32, read_at, DirEntry, Entry, Extent, Extents, ImageError, Partition};

/// The largest FAT read into memory: 16 Mi clusters of FAT32, 64 GiB of 4 KiB clusters.
const MAX_FAT_BYTES: u64 = 64 << 20;
/// The largest directory: 65536 entries of 32 bytes (§6).
const MAX_DIR_BYTES: u64 = 65536 * 32;
/// The most extents a file may have: a bound on memory for a hostile, shredded chain.
const MAX_EXTENTS: usize = 1 << 20;
/// FAT entries as kept in memory: FAT12/16 marks are widened to these FAT32 values.
const END_OF_CHAIN: u32 = 0x0FFF_FFF8;
const BAD_CLUSTER: u32 = 0x0FFF_FFF7;
/// Directory entry attributes (§6).
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LONG_NAME: u8 = 0x0F;
/// NT's flags in byte 12 of a short entry: the base name or the extension is lower case.
const LOWER_BASE: u8 = 0x08;
const LOWER_EXT: u8 = 0x10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fat12,
    Fat16,
    Fat32,
}

/// Where a directory's entries are.
#[derive(Debug, Clone, Copy)]
enum Dir {
    /// The fixed root directory of FAT12/16: `len` bytes at `offset` in the image.
    Fixed { offset: u64, len: u64 },
    /// A cluster chain from this cluster.
    Chain(u32),
}

/// A FAT filesystem in a partition of an image: its layout and its whole FAT, in memory.
pub struct Fat {
    kind: Kind,
    /// The partition's byte range in the image: no read leaves it.
    start: u64,
    end: u64,
    cluster_size: u64,
    /// Where cluster 2 starts in the image.
    data_start: u64,
    clusters: u32,
    root: Dir,
    /// Entry `n` is the cluster after `n` in its chain (or a widened mark), for all
    /// `clusters + 2` entries.
    table: Vec<u32>,
}

impl fmt::Debug for Fat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the table: megabytes of numbers in a log line.
        f.debug_struct("Fat")
            .field("kind", &self.kind)
            .field("start", &self.start)
            .field("end", &self.end)
            .field("cluster_size", &self.cluster_size)
            .field("clusters", &self.clusters)
            .finish_non_exhaustive()
    }
}

/// Whether `sector` looks like a FAT boot sector: how an image without a partition table is
/// told from garbage. A jump instruction (§3.1), a valid sector size and cluster size, reserved
/// sectors, FATs, a valid media byte and the signature; [`Fat::open`] checks the rest.
pub(super) fn looks_like_boot_sector(sector: &[u8]) -> bool {
    let jump = matches!(sector, [0xE9, ..] | [0xEB, _, 0x90, ..]);
    let media = sector.get(21).copied().unwrap_or(0);
    jump && matches!(le16(sector, 11), 512 | 1024 | 2048 | 4096)
        && sector.get(13).is_some_and(|s| s.is_power_of_two())
        && le16(sector, 14) != 0
        && sector.get(16).is_some_and(|&n| n != 0)
        && (media == 0xF0 || media >= 0xF8)
        && le16(sector, 510) == 0xAA55
}

impl Fat {
    /// Parses the boot sector of `part` and loads its active FAT (the first unless a FAT32
    /// volume turned mirroring off, §3.3 `BPB_ExtFlags`).
    ///
    /// Refuses anything inconsistent: a sector size other than 512, 1024, 2048 or 4096, a
    /// cluster size not a power of two of sectors up to 128, no reserved sectors, no FATs,
    /// regions past the partition's end, a FAT too small for the cluster count or larger than
    /// 64 MiB, a FAT32 root directory outside the clusters.
    pub fn open(file: &File, part: &Partition) -> Result<Fat, ImageError> {
        let bad = ImageError::Corrupt;
        let end = part
            .offset
            .checked_add(part.len)
            .ok_or(bad("partition past the end of the image"))?;
        if part.len < 512 {
            return Err(bad("partition smaller than a boot sector"));
        }
        let mut bs = [0u8; 512];
        read_at(file, part.offset, &mut bs)?;
        let bytes_per_sector = u64::from(le16(&bs, 11));
        if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
            return Err(bad("bad boot sector: bytes per sector"));
        }
        let sectors_per_cluster = bs[13];
        if !sectors_per_cluster.is_power_of_two() {
            return Err(bad("bad boot sector: sectors per cluster"));
        }
        let reserved = u64::from(le16(&bs, 14));
        let fats = u64::from(bs[16]);
        if reserved == 0 || fats == 0 {
            return Err(bad("bad boot sector: no reserved sectors or no FATs"));
        }
        let root_entries = u64::from(le16(&bs, 17));
        let total = match le16(&bs, 19) {
            0 => u64::from(le32(&bs, 32)),
            n => u64::from(n),
        };
        let fat_sectors = match le16(&bs, 22) {
            0 => u64::from(le32(&bs, 36)),
            n => u64::from(n),
        };
        if total == 0 || fat_sectors == 0 {
            return Err(bad("bad boot sector: no sectors or an empty FAT"));
        }
        // §3.5. All terms are below 2⁴⁰: no overflow in u64.
        let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
        let meta = reserved + fats * fat_sectors + root_sectors;
        if total.saturating_mul(bytes_per_sector) > part.len {
            return Err(bad("filesystem larger than its partition"));
        }
        let clusters = total
            .checked_sub(meta)
            .map(|data| data / u64::from(sectors_per_cluster))
            .filter(|&c| c > 0)
            .ok_or(bad("bad boot sector: no data region"))?;
        let kind = match clusters {
            ..4085 => Kind::Fat12,
            4085..65525 => Kind::Fat16,
            _ => Kind::Fat32,
        };
        // The table's entries: `clusters + 2`, as bytes in the kind's packing.
        let entries = clusters + 2;
        let fat_bytes = match kind {
            Kind::Fat12 => (entries * 3).div_ceil(2),
            Kind::Fat16 => entries * 2,
            Kind::Fat32 => entries * 4,
        };
        if fat_bytes > fat_sectors * bytes_per_sector {
            return Err(bad("FAT smaller than its cluster count needs"));
        }
        if fat_bytes > MAX_FAT_BYTES {
            return Err(bad("FAT larger than 64 MiB"));
        }
        let ext_flags = le16(&bs, 40);
        let active = match kind {
            Kind::Fat32 if ext_flags & 0x80 != 0 => u64::from(ext_flags & 0x0F),
            _ => 0,
        };
        if active >= fats {
            return Err(bad("bad boot sector: active FAT out of range"));
        }
        let sector = |n: u64| part.offset + n * bytes_per_sector; // n < total: within the partition
        let root = match kind {
            // §3.1: FAT32 has no fixed root directory and its FAT size is BPB_FATSz32 alone;
            // without these its extended fields (active FAT, root cluster) are something else.
            Kind::Fat32 if root_entries != 0 || le16(&bs, 22) != 0 => {
                return Err(bad("FAT32 with a fixed root directory"));
            }
            Kind::Fat32 => match le32(&bs, 44) {
                root if (2..clusters + 2).contains(&u64::from(root)) => Dir::Chain(root),
                _ => return Err(bad("FAT32 root directory out of range")),
            },
            _ => Dir::Fixed {
                offset: sector(reserved + fats * fat_sectors),
                len: root_entries * 32,
            },
        };
        let mut raw = vec![0u8; fat_bytes as usize + 1]; // + 1: FAT12 reads entries in pairs of bytes
        read_at(
            file,
            sector(reserved + active * fat_sectors),
            &mut raw[..fat_bytes as usize],
        )?;
        let table = (0..entries as usize)
            .map(|n| widen(kind, &raw, n))
            .collect();
        Ok(Fat {
            kind,
            start: part.offset,
            end,
            cluster_size: u64::from(sectors_per_cluster) * bytes_per_sector,
            data_start: sector(meta),
            clusters: clusters as u32, // below 2²⁴ by the FAT's bound
            root,
            table,
        })
    }

    /// Finds a file or directory by a '/'-separated path relative to the root directory.
    ///
    /// Names compare case-insensitively (Unicode lower case) with the long name of an entry if
    /// it has one, and with its short name as `NAME.EXT` (`LONGFI~1.TXT`), as nobodd finds
    /// them. An empty component (a leading,
    /// doubled or trailing '/', or an empty path) is [`ImageError::NotFound`], as is a
    /// component below a file. A directory is an [`Entry`] with `is_dir` and no extents.
    pub fn find(&self, file: &File, path: &str) -> Result<Entry, ImageError> {
        let raw = self.lookup(file, path)?;
        if raw.is_dir() {
            return Ok(Entry {
                len: 0,
                is_dir: true,
                extents: Extents::default(),
            });
        }
        Ok(Entry {
            len: raw.size.into(),
            is_dir: false,
            extents: Extents::new(self.extents(raw.cluster, raw.size.into())?),
        })
    }

    /// The entries of the directory at `path` ("" is the root), without "." and "..", in the
    /// order they are stored. A path naming a file is [`ImageError::NotFound`].
    pub fn list(&self, file: &File, path: &str) -> Result<Vec<DirEntry>, ImageError> {
        let dir = match path {
            "" => self.root,
            _ => match self.lookup(file, path)? {
                raw if raw.is_dir() => Dir::Chain(raw.cluster),
                _ => return Err(ImageError::NotFound),
            },
        };
        let mut out = Vec::new();
        self.scan(file, dir, |raw| {
            let is_dir = raw.is_dir();
            out.push(DirEntry {
                len: if is_dir { 0 } else { raw.size.into() },
                name: raw.name,
                is_dir,
            });
            true
        })?;
        Ok(out)
    }

    /// The entry at `path`, descending one directory per component: a directory that contains
    /// itself cannot make this loop.
    fn lookup(&self, file: &File, path: &str) -> Result<Raw, ImageError> {
        let mut dir = self.root;
        let mut components = path.split('/').peekable();
        while let Some(component) = components.next() {
            if component.is_empty() {
                return Err(ImageError::NotFound);
            }
            let want = component.to_lowercase();
            let mut hit = None;
            self.scan(file, dir, |raw| {
                let alias = raw.alias.as_ref().map(|a| a.to_lowercase());
                if raw.name.to_lowercase() != want && alias.as_deref() != Some(want.as_str()) {
                    return true;
                }
                hit = Some(raw);
                false
            })?;
            let raw = hit.ok_or(ImageError::NotFound)?;
            if components.peek().is_none() {
                return Ok(raw);
            }
            if !raw.is_dir() {
                return Err(ImageError::NotFound);
            }
            dir = Dir::Chain(raw.cluster);
        }
        Err(ImageError::NotFound) // split always yields a component: not reached
    }

    /// The extents of a file of `len` bytes from cluster `first`. The chain must cover `len`
    /// and is cut there; a chain that comes back to a cluster it used is refused.
    fn extents(&self, first: u32, len: u64) -> Result<Vec<Extent>, ImageError> {
        let mut extents: Vec<Extent> = Vec::new();
        if len == 0 {
            return Ok(extents);
        }
        if len.div_ceil(self.cluster_size) > u64::from(self.clusters) {
            return Err(ImageError::Corrupt("file larger than the filesystem"));
        }
        let mut left = len;
        self.walk(first, |cluster| {
            let offset = self.cluster_offset(cluster);
            let take = left.min(self.cluster_size);
            if offset.saturating_add(take) > self.end {
                return Err(ImageError::Corrupt("cluster past the end of the partition"));
            }
            let full = extents.len() >= MAX_EXTENTS;
            match extents.last_mut() {
                Some(last) if last.offset + last.len == offset => last.len += take,
                _ if full => return Err(ImageError::Corrupt("file in too many fragments")),
                _ => extents.push(Extent { offset, len: take }),
            }
            left -= take;
            Ok(left > 0)
        })?;
        if left > 0 {
            return Err(ImageError::Corrupt("chain shorter than the file"));
        }
        // A chain cut at the file's size may still loop before it: then two extents share a
        // cluster (one extent is increasing clusters, so a repeat starts another).
        let mut sorted = extents.clone();
        sorted.sort_unstable_by_key(|e| e.offset);
        if sorted
            .windows(2)
            .any(|w| w[0].offset + w[0].len > w[1].offset)
        {
            return Err(ImageError::Corrupt("cluster chain loops"));
        }
        Ok(extents)
    }

    /// Where `cluster` (checked to be in range) starts in the image.
    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_start + u64::from(cluster - 2) * self.cluster_size
    }

    /// Follows the chain from `first`, calling `each` with every cluster until it returns false
    /// or the chain ends. Every cluster must be in range; more steps than there are clusters
    /// means the chain loops.
    fn walk(
        &self,
        first: u32,
        mut each: impl FnMut(u32) -> Result<bool, ImageError>,
    ) -> Result<(), ImageError> {
        let mut cluster = first;
        for _ in 0..self.clusters {
            if cluster < 2 || u64::from(cluster) >= u64::from(self.clusters) + 2 {
                return Err(ImageError::Corrupt("cluster out of range"));
            }
            if !each(cluster)? {
                return Ok(());
            }
            cluster = match self.table.get(cluster as usize).copied() {
                Some(END_OF_CHAIN..) => return Ok(()),
                Some(BAD_CLUSTER) => return Err(ImageError::Corrupt("bad cluster in a chain")),
                Some(0) => return Err(ImageError::Corrupt("free cluster in a chain")),
                Some(next) => next,
                None => return Err(ImageError::Corrupt("cluster out of range")),
            };
        }
        Err(ImageError::Corrupt("cluster chain loops"))
    }

    /// Calls `each` with the entries of `dir` in order, until it returns false or the end
    /// marker (an entry starting with 0x00).
    fn scan(
        &self,
        file: &File,
        dir: Dir,
        mut each: impl FnMut(Raw) -> bool,
    ) -> Result<(), ImageError> {
        let mut parser = Parser::new(self.kind);
        match dir {
            Dir::Fixed { offset, len } => {
                // Within the partition: Fat::open checked the root directory lies before the data.
                let mut buf = vec![0u8; len as usize]; // at most 65535 × 32 bytes
                read_at(file, offset, &mut buf)?;
                parser.feed(&buf, &mut each);
            }
            Dir::Chain(first) => {
                let mut buf = vec![0u8; self.cluster_size as usize]; // at most 512 KiB
                let mut seen = HashSet::new();
                let mut read = 0u64;
                self.walk(first, |cluster| {
                    read += self.cluster_size;
                    if read > MAX_DIR_BYTES {
                        return Err(ImageError::Corrupt("directory larger than 2 MiB"));
                    }
                    if !seen.insert(cluster) {
                        return Err(ImageError::Corrupt("directory cluster chain loops"));
                    }
                    read_at(file, self.cluster_offset(cluster), &mut buf)?;
                    Ok(parser.feed(&buf, &mut each))
                })?;
            }
        }
        Ok(())
    }
}

/// A directory entry as read: the name it goes by and its short entry's fields.
struct Raw {
    name: String,
    /// The short name, where the entry goes by a long one: nobodd (and Windows) find a file
    /// by either.
    alias: Option<String>,
    attr: u8,
    cluster: u32,
    size: u32,
}

impl Raw {
    fn is_dir(&self) -> bool {
        self.attr & ATTR_DIRECTORY != 0
    }
}

/// Reads 32-byte directory entries, gathering the long name entries before a short one (§7).
struct Parser {
    kind: Kind,
    /// The long name's UTF-16 units, 13 per entry, while one is being read.
    units: Vec<u16>,
    /// The sequence number of the long name entry expected next; 0 once the name is whole.
    expect: u8,
    checksum: u8,
    done: bool,
}

impl Parser {
    fn new(kind: Kind) -> Parser {
        Parser {
            kind,
            units: Vec::new(),
            expect: 0,
            checksum: 0,
            done: false,
        }
    }

    /// Feeds the entries of `buf`; returns whether to read on (no end marker, `each` wants
    /// more).
    fn feed(&mut self, buf: &[u8], each: &mut impl FnMut(Raw) -> bool) -> bool {
        for e in buf.chunks_exact(32) {
            if self.done {
                break;
            }
            match self.entry(e) {
                Step::End => self.done = true,
                Step::Skip => {}
                Step::Entry(raw) => self.done = !each(raw),
            }
        }
        !self.done
    }

    fn entry(&mut self, e: &[u8]) -> Step {
        let attr = e[11];
        match e[0] {
            0x00 => return Step::End,
            0xE5 => {
                self.units.clear();
                return Step::Skip;
            }
            _ if attr & 0x3F == ATTR_LONG_NAME => {
                self.long(e);
                return Step::Skip;
            }
            _ => {}
        }
        let short: &[u8; 11] = e[..11].try_into().unwrap_or(&[b' '; 11]);
        let long = self.take_long(checksum(short));
        if attr & ATTR_VOLUME_ID != 0 || short == b".          " || short == b"..         " {
            return Step::Skip;
        }
        let high = match self.kind {
            Kind::Fat32 => u32::from(le16(e, 20)) << 16,
            _ => 0, // reserved in FAT12/16
        };
        let short = short_name(short, e[12]);
        let (name, alias) = match long {
            Some(long) => (long, Some(short)),
            None => (short, None),
        };
        Step::Entry(Raw {
            name,
            alias,
            attr,
            cluster: high | u32::from(le16(e, 26)),
            size: le32(e, 28),
        })
    }

    /// Takes in a long name entry: the last part (flag 0x40) starts a name, the others must
    /// follow in descending order with the same checksum, or the name is dropped.
    fn long(&mut self, e: &[u8]) {
        let seq = e[0] & 0x1F;
        if e[0] & 0x40 != 0 {
            if seq == 0 || seq > 20 {
                self.units.clear();
                return;
            }
            self.units = vec![0xFFFF; usize::from(seq) * 13];
            self.expect = seq;
            self.checksum = e[13];
        } else if self.units.is_empty() || seq == 0 || seq != self.expect || e[13] != self.checksum
        {
            self.units.clear();
            return;
        }
        let at = usize::from(seq - 1) * 13;
        let parts = (1..11)
            .step_by(2)
            .chain((14..26).step_by(2))
            .chain((28..32).step_by(2));
        for (slot, offset) in self.units[at..at + 13].iter_mut().zip(parts) {
            *slot = le16(e, offset);
        }
        self.expect = seq - 1;
    }

    /// The long name gathered for the short entry with this checksum, if it is whole and
    /// matches; forgets it either way.
    fn take_long(&mut self, checksum: u8) -> Option<String> {
        let units = std::mem::take(&mut self.units);
        if units.is_empty() || self.expect != 0 || self.checksum != checksum {
            return None;
        }
        let len = units.iter().position(|&u| u == 0).unwrap_or(units.len());
        let name = String::from_utf16_lossy(&units[..len]);
        (!name.is_empty()).then_some(name)
    }
}

enum Step {
    End,
    Skip,
    Entry(Raw),
}

/// The checksum of a short name that its long name entries carry (§7.2).
fn checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// A short name as `NAME.EXT`, lowered where NT's flags say so.
fn short_name(short: &[u8; 11], flags: u8) -> String {
    let part = |bytes: &[u8], lower: bool| -> String {
        let trimmed = bytes
            .iter()
            .rposition(|&b| b != b' ')
            .map_or(&[][..], |end| &bytes[..=end]);
        trimmed
            .iter()
            .map(|&b| {
                let c = char::from(b); // Latin-1: the OEM code page is unknown
                if lower {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
            .collect()
    };
    let mut base = short[..8].to_vec();
    if base[0] == 0x05 {
        base[0] = 0xE5; // §6.1: 0x05 stands for a leading 0xE5
    }
    let mut name = part(&base, flags & LOWER_BASE != 0);
    let ext = part(&short[8..], flags & LOWER_EXT != 0);
    if !ext.is_empty() {
        name.push('.');
        name.push_str(&ext);
    }
    name
}

/// Widens FAT entry `n` of a table read as bytes to its in-memory value (§4).
fn widen(kind: Kind, raw: &[u8], n: usize) -> u32 {
    let (value, bad, eoc) = match kind {
        Kind::Fat12 => {
            let pair = le16(raw, n + n / 2);
            let v = if n % 2 == 0 { pair & 0x0FFF } else { pair >> 4 };
            (u32::from(v), 0xFF7, 0xFF8)
        }
        Kind::Fat16 => (u32::from(le16(raw, n * 2)), 0xFFF7, 0xFFF8),
        Kind::Fat32 => (le32(raw, n * 4) & 0x0FFF_FFFF, BAD_CLUSTER, END_OF_CHAIN),
    };
    match value {
        v if v >= eoc => END_OF_CHAIN,
        v if v == bad => BAD_CLUSTER,
        v => v,
    }
}
