//! The reader against images laid out here, in memory: FAT12, FAT16 and FAT32 with the same
//! tree of files, each in no table, an MBR, an extended partition and a GPT; then hostile
//! images, and random damage to valid ones.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::table::crc32;
use super::*;

/// An image in a temporary file, removed when dropped.
struct TempImage {
    path: PathBuf,
    file: File,
    len: u64,
}

impl TempImage {
    fn new(bytes: &[u8]) -> TempImage {
        TempImage::partial(bytes, bytes.len())
    }

    /// An image of which only the first `keep` bytes made it to the file.
    fn partial(bytes: &[u8], keep: usize) -> TempImage {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "ringtftp-image-{}-{}.img",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.set_len(keep as u64).unwrap();
        // Sparse: a FAT32 image is mostly zeros.
        for (i, chunk) in bytes[..keep].chunks(4096).enumerate() {
            if chunk.iter().any(|&b| b != 0) {
                file.write_all_at(chunk, i as u64 * 4096).unwrap();
            }
        }
        TempImage {
            path,
            file,
            len: keep as u64,
        }
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

// ---- FAT filesystems -------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Geometry {
    bytes_per_sector: u16,
    sectors_per_cluster: u8,
    reserved: u16,
    fats: u8,
    root_entries: u16,
    fat_sectors: u32,
    total_sectors: u32,
}

/// 1021 clusters of 2 KiB.
const FAT12: Geometry = Geometry {
    bytes_per_sector: 512,
    sectors_per_cluster: 4,
    reserved: 1,
    fats: 2,
    root_entries: 64,
    fat_sectors: 3,
    total_sectors: 4096,
};
/// 4174 clusters of 1 KiB, 1 KiB sectors, one FAT.
const FAT16: Geometry = Geometry {
    bytes_per_sector: 1024,
    sectors_per_cluster: 1,
    reserved: 1,
    fats: 1,
    root_entries: 512,
    fat_sectors: 9,
    total_sectors: 4200,
};
/// 65542 clusters of 512 bytes: about the smallest FAT32 there is.
const FAT32: Geometry = Geometry {
    bytes_per_sector: 512,
    sectors_per_cluster: 1,
    reserved: 32,
    fats: 2,
    root_entries: 0,
    fat_sectors: 513,
    total_sectors: 66600,
};

/// A FAT filesystem being laid out: its bytes, its FAT (in the kind's width) and what it holds.
struct Fs {
    g: Geometry,
    img: Vec<u8>,
    fat: Vec<u32>,
    clusters: u32,
    next: u32,
    /// Every file: its path, contents and clusters.
    files: Vec<(String, Vec<u8>, Vec<u32>)>,
    /// Every directory's clusters ("" is the FAT32 root).
    dirs: Vec<(String, Vec<u32>)>,
}

impl Fs {
    fn new(g: Geometry) -> Fs {
        let bps = usize::from(g.bytes_per_sector);
        let root_sectors = (u32::from(g.root_entries) * 32).div_ceil(bps as u32);
        let meta = u32::from(g.reserved) + u32::from(g.fats) * g.fat_sectors + root_sectors;
        let clusters = (g.total_sectors - meta) / u32::from(g.sectors_per_cluster);
        let mut fs = Fs {
            g,
            img: vec![0; g.total_sectors as usize * bps],
            fat: vec![0; clusters as usize + 2],
            clusters,
            next: 2,
            files: Vec::new(),
            dirs: Vec::new(),
        };
        let fat32 = fs.bits() == 32;
        let b = &mut fs.img;
        b[..11].copy_from_slice(b"\xEB\x3C\x90RINGTEST");
        put16(b, 11, g.bytes_per_sector);
        b[13] = g.sectors_per_cluster;
        put16(b, 14, g.reserved);
        b[16] = g.fats;
        put16(b, 17, g.root_entries);
        if g.total_sectors < 0x10000 && !fat32 {
            put16(b, 19, g.total_sectors as u16);
        } else {
            put32(b, 32, g.total_sectors);
        }
        b[21] = 0xF8;
        put16(b, 24, 32);
        put16(b, 26, 64);
        if fat32 {
            put32(b, 36, g.fat_sectors);
            put32(b, 44, 2); // the root directory
            put16(b, 48, 1);
            put16(b, 50, 6);
            b[66] = 0x29;
            b[82..90].copy_from_slice(b"FAT32   ");
        } else {
            put16(b, 22, g.fat_sectors as u16);
            b[38] = 0x29;
            b[54..62].copy_from_slice(b"FAT1?   ");
        }
        b[510] = 0x55;
        b[511] = 0xAA;
        fs.fat[0] = fs.eoc() - 7;
        fs.fat[1] = fs.eoc();
        fs
    }

    fn bits(&self) -> u32 {
        match self.clusters {
            ..4085 => 12,
            4085..65525 => 16,
            _ => 32,
        }
    }

    fn eoc(&self) -> u32 {
        match self.bits() {
            12 => 0xFFF,
            16 => 0xFFFF,
            _ => 0x0FFF_FFFF,
        }
    }

    fn bad(&self) -> u32 {
        self.eoc() - 8
    }

    fn cluster_size(&self) -> usize {
        usize::from(self.g.bytes_per_sector) * usize::from(self.g.sectors_per_cluster)
    }

    fn meta_bytes(&self) -> usize {
        let bps = usize::from(self.g.bytes_per_sector);
        let root = (usize::from(self.g.root_entries) * 32).div_ceil(bps) * bps;
        (usize::from(self.g.reserved) + usize::from(self.g.fats) * self.g.fat_sectors as usize)
            * bps
            + root
    }

    /// Where cluster `c` starts in the filesystem.
    fn cluster_at(&self, c: u32) -> usize {
        self.meta_bytes() + (c as usize - 2) * self.cluster_size()
    }

    fn alloc(&mut self, n: usize) -> Vec<u32> {
        let first = self.next;
        self.next += n as u32;
        (first..self.next).collect()
    }

    /// Links `chain` in the FAT and writes `data` to its clusters.
    fn write_chain(&mut self, chain: &[u32], data: &[u8]) {
        for pair in chain.windows(2) {
            self.fat[pair[0] as usize] = pair[1];
        }
        if let Some(&last) = chain.last() {
            self.fat[last as usize] = self.eoc();
        }
        let cs = self.cluster_size();
        for (i, chunk) in data.chunks(cs).enumerate() {
            let at = self.cluster_at(chain[i]);
            self.img[at..at + chunk.len()].copy_from_slice(chunk);
        }
    }

    /// Adds a file to `dir`: its contents in `chain`, its short entry (named `short` with the NT
    /// case `flags`), and its long name entries first if `long` is given.
    fn file(
        &mut self,
        dir: &mut Vec<[u8; 32]>,
        path: &str,
        (short, flags, long): (&[u8; 11], u8, Option<&str>),
        data: Vec<u8>,
        chain: Vec<u32>,
    ) {
        self.write_chain(&chain, &data);
        if let Some(long) = long {
            dir.extend(long_entries(long, short));
        }
        let first = chain.first().copied().unwrap_or(0);
        dir.push(short_entry(short, 0x20, flags, first, data.len() as u32));
        self.files.push((path.to_string(), data, chain));
    }

    fn chain(&self, path: &str) -> Vec<u32> {
        let found = self.files.iter().find(|f| f.0 == path);
        found.map(|f| f.2.clone()).unwrap_or_else(|| self.dir(path))
    }

    fn dir(&self, path: &str) -> Vec<u32> {
        self.dirs.iter().find(|d| d.0 == path).unwrap().1.clone()
    }

    /// The filesystem's bytes, with its FATs.
    fn finish(&self) -> Vec<u8> {
        let bps = usize::from(self.g.bytes_per_sector);
        let mut table = vec![0u8; self.g.fat_sectors as usize * bps];
        for (n, &v) in self.fat.iter().enumerate() {
            match self.bits() {
                12 => {
                    let at = n + n / 2;
                    if n % 2 == 0 {
                        table[at] = v as u8;
                        table[at + 1] = (table[at + 1] & 0xF0) | ((v >> 8) & 0x0F) as u8;
                    } else {
                        table[at] = (table[at] & 0x0F) | ((v & 0x0F) << 4) as u8;
                        table[at + 1] = (v >> 4) as u8;
                    }
                }
                16 => table[n * 2..n * 2 + 2].copy_from_slice(&(v as u16).to_le_bytes()),
                _ => table[n * 4..n * 4 + 4].copy_from_slice(&v.to_le_bytes()),
            }
        }
        let mut img = self.img.clone();
        for copy in 0..usize::from(self.g.fats) {
            let at = (usize::from(self.g.reserved) + copy * self.g.fat_sectors as usize) * bps;
            img[at..at + table.len()].copy_from_slice(&table);
        }
        img
    }
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn short_entry(name: &[u8; 11], attr: u8, flags: u8, cluster: u32, size: u32) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e[12] = flags;
    put16(&mut e, 20, (cluster >> 16) as u16);
    put16(&mut e, 26, cluster as u16);
    put32(&mut e, 28, size);
    e
}

/// The long name entries of `name` for the short entry `short`, in the order they are stored.
fn long_entries(name: &str, short: &[u8; 11]) -> Vec<[u8; 32]> {
    // Written out as the specification's §7.2 does, not as the reader does.
    let mut sum: u8 = 0;
    for &b in short {
        sum = (if sum & 1 != 0 { 0x80u8 } else { 0 })
            .wrapping_add(sum >> 1)
            .wrapping_add(b);
    }
    let mut units: Vec<u16> = name.encode_utf16().collect();
    let n = units.len().div_ceil(13);
    if units.len() % 13 != 0 {
        units.push(0);
    }
    units.resize(n * 13, 0xFFFF);
    const SLOTS: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
    (1..=n)
        .rev()
        .map(|seq| {
            let mut e = [0u8; 32];
            e[0] = seq as u8 | if seq == n { 0x40 } else { 0 };
            e[11] = 0x0F;
            e[13] = sum;
            for (u, at) in units[(seq - 1) * 13..seq * 13].iter().zip(SLOTS) {
                put16(&mut e, at, *u);
            }
            e
        })
        .collect()
}

/// Bytes that differ from cluster to cluster and file to file.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| {
            (i.wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(97))
                >> 13) as u8
        })
        .collect()
}

/// The tree every test filesystem holds:
///
/// ```text
/// TESTVOL        volume label
/// (long name entries with a wrong checksum)
/// README.TXT     100 bytes
/// big.bin        5 clusters and 123 bytes, contiguous (short name, lower-case flags)
/// frag.bin       3 clusters and 7 bytes in clusters b, b+3, b+4, b+1: three extents
/// Long File Name.txt  777 bytes, a long name in two entries
/// (GONE.TXT, deleted)
/// empty.TXT      0 bytes (base name lower case only)
/// SUBDIR/        in two or more clusters, not contiguous
///   start4.elf   3 clusters and 5 bytes
///   config.txt   a long name in one entry
///   F00.TXT .. F19.TXT
///   SELF/        only with `self_loop`: SUBDIR itself
/// (end marker, then STALE.TXT, never seen)
/// ```
fn tree(g: Geometry, self_loop: bool) -> Fs {
    let mut fs = Fs::new(g);
    let cs = fs.cluster_size();
    let root_chain = if fs.bits() == 32 {
        fs.alloc(1)
    } else {
        Vec::new()
    };
    let mut root = vec![short_entry(b"TESTVOL    ", 0x08, 0, 0, 0)];
    let mut orphan = long_entries("Not the readme", b"README  TXT");
    orphan.iter_mut().for_each(|e| e[13] ^= 0x55);
    root.extend(orphan);
    let c = fs.alloc(1);
    let readme = c[0];
    fs.file(
        &mut root,
        "README.TXT",
        (b"README  TXT", 0, None),
        pattern(100, 1),
        c,
    );
    let c = fs.alloc(6);
    let name = (b"BIG     BIN", 0x18, None);
    fs.file(&mut root, "big.bin", name, pattern(5 * cs + 123, 2), c);
    let b = fs.alloc(6);
    let frag = vec![b[0], b[3], b[4], b[1]];
    let name = (b"FRAG    BIN", 0x18, None);
    fs.file(&mut root, "frag.bin", name, pattern(3 * cs + 7, 3), frag);
    let c = fs.alloc(777usize.div_ceil(cs));
    let name = (b"LONGFI~1TXT", 0, Some("Long File Name.txt"));
    fs.file(&mut root, "Long File Name.txt", name, pattern(777, 4), c);
    let mut gone = short_entry(b"GONE    TXT", 0x20, 0, readme, 100);
    gone[0] = 0xE5;
    root.push(gone);
    let name = (b"EMPTY   TXT", 0x08, None);
    fs.file(&mut root, "empty.TXT", name, Vec::new(), Vec::new());

    let sub_first = fs.alloc(1)[0];
    let mut sub = vec![
        short_entry(b".          ", 0x10, 0, sub_first, 0),
        short_entry(b"..         ", 0x10, 0, 0, 0),
    ];
    let c = fs.alloc(4);
    let name = (b"START4  ELF", 0x18, None);
    fs.file(
        &mut sub,
        "SUBDIR/start4.elf",
        name,
        pattern(3 * cs + 5, 5),
        c,
    );
    let c = fs.alloc(1);
    let name = (b"CONFIG  TXT", 0, Some("config.txt"));
    fs.file(&mut sub, "SUBDIR/config.txt", name, pattern(50, 6), c);
    for i in 0..20u8 {
        let short = format!("F{i:02}     TXT");
        let short: &[u8; 11] = short.as_bytes().try_into().unwrap();
        let path = format!("SUBDIR/F{i:02}.TXT");
        let c = fs.alloc(1);
        let data = pattern(10, 10 + u32::from(i));
        fs.file(&mut sub, &path, (short, 0, None), data, c);
    }
    if self_loop {
        sub.push(short_entry(b"SELF       ", 0x10, 0, sub_first, 0));
    }
    // The directory's other clusters, each after a gap.
    let mut sub_chain = vec![sub_first];
    while sub_chain.len() * cs < sub.len() * 32 {
        sub_chain.push(fs.alloc(2)[1]);
    }
    fs.write_chain(&sub_chain, sub.as_flattened());
    fs.dirs.push(("SUBDIR".into(), sub_chain));
    root.push(short_entry(b"SUBDIR     ", 0x10, 0, sub_first, 0));

    root.push([0; 32]);
    root.push(short_entry(b"STALE   TXT", 0x20, 0, readme, 100));
    if root_chain.is_empty() {
        let at = fs.meta_bytes() - usize::from(g.root_entries) * 32;
        let bytes = root.as_flattened();
        fs.img[at..at + bytes.len()].copy_from_slice(bytes);
    } else {
        fs.write_chain(&root_chain, root.as_flattened());
        fs.dirs.push((String::new(), root_chain));
    }
    fs
}

/// What `list("")` gives for [`tree`].
fn root_listing(fs: &Fs) -> Vec<(String, bool, u64)> {
    let file = |path: &str| {
        let len = fs.files.iter().find(|f| f.0 == path).unwrap().1.len();
        (path.to_string(), false, len as u64)
    };
    vec![
        file("README.TXT"),
        file("big.bin"),
        file("frag.bin"),
        file("Long File Name.txt"),
        file("empty.TXT"),
        ("SUBDIR".to_string(), true, 0),
    ]
}

// ---- partition tables ------------------------------------------------------------------------

fn sectors(fs: &[u8]) -> u32 {
    (fs.len() / 512) as u32
}

fn mbr_entry(sector: &mut [u8], i: usize, kind: u8, first: u32, count: u32) {
    let at = 446 + 16 * i;
    sector[at + 4] = kind;
    put32(sector, at + 8, first);
    put32(sector, at + 12, count);
    sector[510] = 0x55;
    sector[511] = 0xAA;
}

/// Partition 1 (Linux) at LBA 8, 8 sectors; partition 2, bootable, the filesystem at LBA 16.
fn mbr(fs: &[u8]) -> Vec<u8> {
    let mut img = vec![0u8; 16 * 512 + fs.len()];
    mbr_entry(&mut img, 0, 0x83, 8, 8);
    mbr_entry(&mut img, 1, 0x0C, 16, sectors(fs));
    img[446 + 16] = 0x80;
    img[16 * 512..].copy_from_slice(fs);
    img
}

/// Partition 1 at LBA 8; an extended partition 2 from LBA 16 with logical partition 5 at LBA 18
/// (6 sectors) and logical partition 6, the filesystem, at LBA 32.
fn extended(fs: &[u8]) -> Vec<u8> {
    let n = sectors(fs);
    let mut img = vec![0u8; 32 * 512 + fs.len()];
    mbr_entry(&mut img, 0, 0x83, 8, 8);
    mbr_entry(&mut img, 1, 0x05, 16, 16 + n);
    let ebr = &mut img[16 * 512..17 * 512];
    mbr_entry(ebr, 0, 0x83, 2, 6);
    mbr_entry(ebr, 1, 0x05, 8, 8 + n);
    mbr_entry(&mut img[24 * 512..25 * 512], 0, 0x0C, 8, n);
    img[32 * 512..].copy_from_slice(fs);
    img
}

/// A protective MBR, the GPT header at LBA 1 and 128 entries from LBA 2: entry 1 (index 0) at
/// LBA 34 to 39, entry 2 unused, entry 3 the filesystem from LBA 40. Room for a backup GPT at
/// the end, which is not written.
fn gpt(fs: &[u8]) -> Vec<u8> {
    let total = 40 + u64::from(sectors(fs)) + 33;
    let mut img = vec![0u8; total as usize * 512];
    mbr_entry(&mut img, 0, 0xEE, 1, (total - 1) as u32);
    let entries = &mut img[2 * 512..34 * 512];
    entries[..16].copy_from_slice(&[
        0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D,
        0xE4,
    ]);
    entries[16] = 1;
    put64(entries, 32, 34);
    put64(entries, 40, 39);
    let third = &mut entries[256..384];
    third[..16].copy_from_slice(&[
        0xA2, 0xA0, 0xD0, 0xEB, 0xE5, 0xB9, 0x33, 0x44, 0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x99,
        0xC7,
    ]);
    third[16] = 3;
    put64(third, 32, 40);
    put64(third, 40, 40 + u64::from(sectors(fs)) - 1);
    let header = &mut img[512..1024];
    header[..8].copy_from_slice(b"EFI PART");
    put32(header, 8, 0x0001_0000);
    put32(header, 12, 92);
    put64(header, 24, 1);
    put64(header, 32, total - 1);
    put64(header, 40, 34);
    put64(header, 48, total - 34);
    header[56..72].copy_from_slice(b"ringtftp-disk-id");
    put64(header, 72, 2);
    put32(header, 80, 128);
    put32(header, 84, 128);
    reseal(&mut img);
    img[40 * 512..40 * 512 + fs.len()].copy_from_slice(fs);
    img
}

/// Recomputes the CRC32s of a GPT after a change.
fn reseal(img: &mut [u8]) {
    let (count, size) = (le32(img, 512 + 80) as usize, le32(img, 512 + 84) as usize);
    let array = count * size;
    let entries_crc = crc32(&img[1024..1024 + array.min(img.len() - 1024)]);
    put32(img, 512 + 88, entries_crc);
    put32(img, 512 + 16, 0);
    let header_size = (le32(img, 512 + 12) as usize).min(512);
    let header_crc = crc32(&img[512..512 + header_size]);
    put32(img, 512 + 16, header_crc);
}

// ---- valid images ----------------------------------------------------------------------------

#[test]
fn crc32_is_ieee() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
}

#[test]
fn locate_maps_offsets_through_extents() {
    let extent = |offset, len| Extent { offset, len };
    let extents = Extents::new(vec![extent(100, 10), extent(500, 5), extent(900, 1)]);
    assert_eq!(extents.locate(0), Some((100, 10)));
    assert_eq!(extents.locate(9), Some((109, 1)));
    assert_eq!(extents.locate(10), Some((500, 5)));
    assert_eq!(extents.locate(14), Some((504, 1)));
    assert_eq!(extents.locate(15), Some((900, 1)));
    assert_eq!(extents.locate(16), None);
    assert_eq!(Extents::default().locate(0), None);
    let huge = Extents::new(vec![extent(u64::MAX, u64::MAX); 2]);
    assert_eq!(huge.locate(1), None);
    assert_eq!(huge.locate(u64::MAX), None);
    // A file cut into a million pieces is still found at once.
    let pieces = Extents::new((0..1_000_000).map(|i| extent(i * 1024, 512)).collect());
    assert_eq!(
        pieces.locate(512 * 999_999 + 3),
        Some((1024 * 999_999 + 3, 509))
    );
}

/// Checks every file and directory of [`tree`] in partition `number` of `image`.
fn check_tree(image: &TempImage, number: u32, fs: &Fs) {
    let part = partition(&image.file, image.len, number).unwrap();
    assert!(part.len >= fs.img.len() as u64);
    let fat = Fat::open(&image.file, &part).unwrap();
    let f = &image.file;
    let listing = |path| -> Vec<(String, bool, u64)> {
        let entries = fat.list(f, path).unwrap();
        entries
            .into_iter()
            .map(|e| (e.name, e.is_dir, e.len))
            .collect()
    };
    assert_eq!(listing(""), root_listing(fs));
    let sub = listing("SUBDIR");
    assert_eq!(sub.len(), 22);
    assert_eq!(
        sub[0],
        ("start4.elf".into(), false, 3 * fs.cluster_size() as u64 + 5)
    );
    assert_eq!(sub[1], ("config.txt".into(), false, 50));
    assert_eq!(sub[21], ("F19.TXT".into(), false, 10));
    assert_eq!(listing("subdir"), sub);

    let cs = fs.cluster_size() as u64;
    for (path, data, _) in &fs.files {
        let entry = fat.find(f, path).unwrap();
        let len = data.len() as u64;
        assert_eq!((entry.len, entry.is_dir), (len, false), "{path}");
        assert_eq!(entry.extents.iter().map(|e| e.len).sum::<u64>(), len);
        for e in &entry.extents {
            assert!(e.offset >= part.offset && e.offset + e.len <= part.offset + part.len);
        }
        let mut all = vec![0u8; data.len() + 10];
        assert_eq!(
            read_extents(f, &entry.extents, 0, &mut all).unwrap(),
            data.len()
        );
        assert_eq!(&all[..data.len()], &data[..], "{path}");
        for at in [
            1,
            cs - 3,
            cs,
            2 * cs + 1,
            len.saturating_sub(1),
            len,
            len + 7,
        ] {
            let mut buf = vec![0u8; 2 * cs as usize];
            let n = read_extents(f, &entry.extents, at, &mut buf).unwrap();
            let want = data.get(at as usize..).unwrap_or(&[]);
            let want = &want[..want.len().min(buf.len())];
            assert_eq!(&buf[..n], want, "{path} at {at}");
        }
        assert_eq!(fat.find(f, &path.to_uppercase()).unwrap(), entry);
        assert_eq!(fat.find(f, &path.to_lowercase()).unwrap(), entry);
    }
    assert_eq!(fat.find(f, "big.bin").unwrap().extents.len(), 1);
    assert_eq!(fat.find(f, "frag.bin").unwrap().extents.len(), 3);
    // A long-named file is found by its short name too, as nobodd finds it.
    assert_eq!(
        fat.find(f, "longfi~1.txt").unwrap(),
        fat.find(f, "Long File Name.txt").unwrap()
    );
    assert!(fat.find(f, "empty.txt").unwrap().extents.is_empty());
    let dir = fat.find(f, "SubDir").unwrap();
    assert!(dir.is_dir && dir.extents.is_empty());
    for missing in [
        "",
        "/",
        "nope",
        "/README.TXT",
        "README.TXT/",
        "SUBDIR//start4.elf",
        "README.TXT/x",
        "STALE.TXT",
        "GONE.TXT",
        "TESTVOL",
        ".",
        "..",
        "SUBDIR/..",
        "Not the readme",
        "start4.elf",
    ] {
        assert!(
            matches!(fat.find(f, missing), Err(ImageError::NotFound)),
            "{missing:?}"
        );
    }
    assert!(matches!(
        fat.list(f, "README.TXT"),
        Err(ImageError::NotFound)
    ));
    assert!(matches!(fat.list(f, "nope"), Err(ImageError::NotFound)));
}

fn every_table(g: Geometry) {
    let fs = tree(g, false);
    let bytes = fs.finish();
    let whole = |len| Partition {
        number: 1,
        offset: 0,
        len,
    };

    let image = TempImage::new(&bytes);
    assert_eq!(
        partitions(&image.file, image.len).unwrap(),
        [whole(image.len)]
    );
    check_tree(&image, 1, &fs);

    let image = TempImage::new(&mbr(&bytes));
    let found = partitions(&image.file, image.len).unwrap();
    let second = Partition {
        number: 2,
        offset: 8192,
        len: bytes.len() as u64,
    };
    let first = Partition {
        number: 1,
        offset: 4096,
        len: 4096,
    };
    assert_eq!(found, [first, second]);
    check_tree(&image, 2, &fs);
    assert!(Fat::open(&image.file, &found[0]).is_err()); // zeros
    let missing = partition(&image.file, image.len, 3);
    assert!(matches!(missing, Err(ImageError::NoSuchPartition(3))));

    let image = TempImage::new(&extended(&bytes));
    let found = partitions(&image.file, image.len).unwrap();
    let numbers: Vec<_> = found.iter().map(|p| (p.number, p.offset / 512)).collect();
    assert_eq!(numbers, [(1, 8), (5, 18), (6, 32)]);
    check_tree(&image, 6, &fs);
    let missing = partition(&image.file, image.len, 2); // the extended container
    assert!(matches!(missing, Err(ImageError::NoSuchPartition(2))));

    let image = TempImage::new(&gpt(&bytes));
    let found = partitions(&image.file, image.len).unwrap();
    let numbers: Vec<_> = found
        .iter()
        .map(|p| (p.number, p.offset / 512, p.len))
        .collect();
    assert_eq!(numbers, [(1, 34, 6 * 512), (3, 40, bytes.len() as u64)]);
    check_tree(&image, 3, &fs);
}

#[test]
fn fat12_in_every_table() {
    every_table(FAT12);
}

#[test]
fn fat16_in_every_table() {
    every_table(FAT16);
}

#[test]
fn fat32_in_every_table() {
    every_table(FAT32);
}

#[test]
fn a_directory_containing_itself_is_descended_once_per_component() {
    let fs = tree(FAT16, true);
    let image = TempImage::new(&fs.finish());
    let part = partition(&image.file, image.len, 1).unwrap();
    let fat = Fat::open(&image.file, &part).unwrap();
    let deep = fat
        .find(&image.file, "SUBDIR/SELF/self/SELF/start4.elf")
        .unwrap();
    assert_eq!(deep, fat.find(&image.file, "SUBDIR/start4.elf").unwrap());
    let listing = fat.list(&image.file, "SUBDIR/SELF/SELF").unwrap();
    assert_eq!(listing, fat.list(&image.file, "SUBDIR").unwrap());
}

#[test]
fn a_chain_longer_than_the_file_is_cut() {
    let mut fs = tree(FAT12, false);
    let chain = fs.chain("big.bin");
    let spare = fs.alloc(1)[0];
    fs.fat[chain[5] as usize] = spare;
    fs.fat[spare as usize] = fs.eoc();
    let (fat, image) = open(&fs.finish());
    let entry = fat.find(&image.file, "big.bin").unwrap();
    assert_eq!(entry.extents.iter().map(|e| e.len).sum::<u64>(), entry.len);
}

// ---- hostile images --------------------------------------------------------------------------

/// `bytes` as an image without a table, and its filesystem opened.
fn open(bytes: &[u8]) -> (Fat, TempImage) {
    let image = TempImage::new(bytes);
    let part = partition(&image.file, image.len, 1).unwrap();
    (Fat::open(&image.file, &part).unwrap(), image)
}

/// What finding `path` in the filesystem gives after `damage`.
fn find_after(g: Geometry, path: &str, damage: impl FnOnce(&mut Fs)) -> Result<Entry, ImageError> {
    let mut fs = tree(g, false);
    damage(&mut fs);
    let (fat, image) = open(&fs.finish());
    fat.find(&image.file, path)
}

fn corrupt<T: std::fmt::Debug>(result: Result<T, ImageError>, what: &str) {
    match result {
        Err(ImageError::Corrupt(message)) if message == what => {}
        other => panic!("expected Corrupt({what:?}), got {other:?}"),
    }
}

#[test]
fn broken_cluster_chains_are_refused() {
    for g in [FAT12, FAT16, FAT32] {
        // Cluster `from` of big.bin's chain pointing to cluster `to` of it, or to the value.
        let link = |from: usize, to: Result<usize, u32>| {
            move |fs: &mut Fs| {
                let chain = fs.chain("big.bin");
                fs.fat[chain[from] as usize] = to.map_or_else(|v| v, |i| chain[i]);
            }
        };
        corrupt(
            find_after(g, "big.bin", link(2, Ok(1))),
            "cluster chain loops",
        );
        corrupt(
            find_after(g, "big.bin", link(4, Ok(0))),
            "cluster chain loops",
        );
        corrupt(
            find_after(g, "big.bin", link(1, Ok(1))),
            "cluster chain loops",
        ); // itself
        corrupt(
            find_after(g, "big.bin", link(1, Err(0))),
            "free cluster in a chain",
        );
        corrupt(
            find_after(g, "big.bin", link(1, Err(1))),
            "cluster out of range",
        );
        let past = |fs: &mut Fs| {
            let chain = fs.chain("big.bin");
            fs.fat[chain[1] as usize] = fs.clusters + 2;
        };
        corrupt(find_after(g, "big.bin", past), "cluster out of range");
        let bad = |fs: &mut Fs| {
            let chain = fs.chain("big.bin");
            fs.fat[chain[1] as usize] = fs.bad();
        };
        corrupt(find_after(g, "big.bin", bad), "bad cluster in a chain");
        let short = |fs: &mut Fs| {
            let chain = fs.chain("big.bin");
            fs.fat[chain[2] as usize] = fs.eoc();
        };
        corrupt(
            find_after(g, "big.bin", short),
            "chain shorter than the file",
        );
    }
}

#[test]
fn entries_pointing_nowhere_are_refused() {
    // README.TXT's entry, patched in place in the root directory.
    let mut fs = tree(FAT16, false);
    let root = fs.meta_bytes() - usize::from(FAT16.root_entries) * 32;
    let readme = root + 3 * 32;
    assert_eq!(&fs.img[readme..readme + 11], b"README  TXT");
    put32(&mut fs.img, readme + 28, u32::MAX); // 4 GiB in a 4 MiB filesystem
    let (fat, image) = open(&fs.finish());
    corrupt(
        fat.find(&image.file, "README.TXT"),
        "file larger than the filesystem",
    );

    put32(&mut fs.img, readme + 28, 100);
    put16(&mut fs.img, readme + 26, 0); // no cluster
    let (fat, image) = open(&fs.finish());
    corrupt(fat.find(&image.file, "README.TXT"), "cluster out of range");
    put16(&mut fs.img, readme + 26, 0xFFFF);
    let (fat, image) = open(&fs.finish());
    corrupt(fat.find(&image.file, "README.TXT"), "cluster out of range");
}

/// Takes the end marker out of a directory in `chain`: free entries become deleted ones.
fn unterminate(fs: &mut Fs, chain: &[u32]) {
    let cs = fs.cluster_size();
    for &c in chain {
        let at = fs.cluster_at(c);
        for slot in fs.img[at..at + cs].chunks_exact_mut(32) {
            if slot[0] == 0 {
                slot[0] = 0xE5;
            }
        }
    }
}

#[test]
fn broken_directories_are_refused() {
    for g in [FAT12, FAT16, FAT32] {
        // SUBDIR with no end marker, its chain looping back.
        let mut fs = tree(g, false);
        let chain = fs.dir("SUBDIR");
        unterminate(&mut fs, &chain);
        fs.fat[*chain.last().unwrap() as usize] = chain[0];
        let (fat, image) = open(&fs.finish());
        corrupt(
            fat.list(&image.file, "SUBDIR"),
            "directory cluster chain loops",
        );
        corrupt(
            fat.find(&image.file, "SUBDIR/nope"),
            "directory cluster chain loops",
        );
        // Found before the loop comes round: fine.
        assert!(fat.find(&image.file, "SUBDIR/start4.elf").is_ok());
        fs.fat[*chain.last().unwrap() as usize] = 1;
        let (fat, image) = open(&fs.finish());
        corrupt(fat.list(&image.file, "SUBDIR"), "cluster out of range");
    }

    // SUBDIR going on past 2 MiB without an end marker.
    let mut fs = tree(FAT16, false);
    let chain = fs.dir("SUBDIR");
    let last = *chain.last().unwrap();
    let cs = fs.cluster_size();
    let more = fs.alloc(2 * 1024 * 1024 / cs);
    unterminate(&mut fs, &chain);
    fs.write_chain(&more, &vec![0xE5; more.len() * cs]);
    fs.fat[last as usize] = more[0];
    let (fat, image) = open(&fs.finish());
    corrupt(
        fat.list(&image.file, "SUBDIR"),
        "directory larger than 2 MiB",
    );
    assert_eq!(fat.list(&image.file, "").unwrap().len(), 6);
}

#[test]
fn bad_boot_sectors_are_refused() {
    type Patch = fn(&mut [u8]);
    let cases: [(Patch, &str); 9] = [
        (|b| put16(b, 11, 0), "bad boot sector: bytes per sector"),
        (|b| put16(b, 11, 513), "bad boot sector: bytes per sector"),
        (|b| b[13] = 3, "bad boot sector: sectors per cluster"),
        (|b| b[13] = 0, "bad boot sector: sectors per cluster"),
        (
            |b| b[16] = 0,
            "bad boot sector: no reserved sectors or no FATs",
        ),
        (
            |b| put16(b, 14, 0),
            "bad boot sector: no reserved sectors or no FATs",
        ),
        (
            |b| put16(b, 19, 4201),
            "filesystem larger than its partition",
        ),
        (
            |b| put16(b, 22, 1),
            "FAT smaller than its cluster count needs",
        ),
        (|b| put16(b, 22, 5000), "bad boot sector: no data region"),
    ];
    for (patch, what) in cases {
        let mut bytes = tree(FAT16, false).finish();
        patch(&mut bytes);
        // In an MBR: a superfloppy that fails these is not recognised as one.
        let image = TempImage::new(&mbr(&bytes));
        let part = partition(&image.file, image.len, 2).unwrap();
        corrupt(Fat::open(&image.file, &part), what);
    }

    let mut bytes = tree(FAT32, false).finish();
    put32(&mut bytes, 44, 70000);
    let image = TempImage::new(&bytes);
    let part = partition(&image.file, image.len, 1).unwrap();
    corrupt(
        Fat::open(&image.file, &part),
        "FAT32 root directory out of range",
    );
    put32(&mut bytes, 44, 2);
    put16(&mut bytes, 17, 16);
    let image = TempImage::new(&bytes);
    let part = partition(&image.file, image.len, 1).unwrap();
    corrupt(
        Fat::open(&image.file, &part),
        "FAT32 with a fixed root directory",
    );

    // A FAT32 claiming 2³² sectors and two FATs of 16 GiB: refused before anything is allocated.
    let mut bytes = tree(FAT32, false).finish();
    put32(&mut bytes, 32, u32::MAX);
    put32(&mut bytes, 36, 1 << 25);
    let image = TempImage::new(&bytes);
    let part = Partition {
        number: 1,
        offset: 0,
        len: 1 << 42,
    };
    corrupt(Fat::open(&image.file, &part), "FAT larger than 64 MiB");

    // Garbage, with and without a table around it.
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    let garbage: Vec<u8> = (0..64 * 1024).map(|_| xorshift(&mut state) as u8).collect();
    let image = TempImage::new(&garbage);
    assert!(partitions(&image.file, image.len).is_err());
    let image = TempImage::new(&mbr(&garbage));
    let part = partition(&image.file, image.len, 2).unwrap();
    assert!(Fat::open(&image.file, &part).is_err());
    let image = TempImage::new(&[0u8; 100]);
    corrupt(
        partitions(&image.file, image.len),
        "image smaller than a sector",
    );
}

/// Checks that the partition table of `img` is refused as `what`.
fn refused(img: &[u8], what: &str) {
    let image = TempImage::new(img);
    corrupt(partitions(&image.file, image.len), what);
}

#[test]
fn bad_partition_tables_are_refused() {
    let bytes = tree(FAT12, false).finish();
    let n = sectors(&bytes);
    let past = "partition past the end of the image";
    for (first, count, what) in [
        (16, n + 1, past),
        (u32::MAX, u32::MAX, past),
        (12, n, "partitions overlap"),
        (0, n, "partition overlaps the partition table"),
    ] {
        let mut img = mbr(&bytes);
        mbr_entry(&mut img, 1, 0x0C, first, count);
        refused(&img, what);
    }

    // The table is whole but the file is cut short: the table is fine, the FAT is not.
    let img = mbr(&bytes);
    let image = TempImage::partial(&img, 16 * 512 + 1024);
    corrupt(partitions(&image.file, image.len), past);
    let part = partition(&image.file, img.len() as u64, 2).unwrap();
    corrupt(Fat::open(&image.file, &part), "truncated image");

    // EBR chains: looping back to the first EBR, to itself, out of the extended partition; a
    // logical partition past it; a bad signature.
    let second_ebr = 24 * 512..25 * 512;
    for (entry, first, count, what) in [
        (1, 0, 8, "EBR chain loops"),
        (1, 8, 8, "EBR chain loops"),
        (1, 16 + n, 8, "EBR outside its extended partition"),
        (
            0,
            8,
            n + 1,
            "logical partition outside its extended partition",
        ),
    ] {
        let mut img = extended(&bytes);
        let kind = if entry == 1 { 0x05 } else { 0x0C };
        mbr_entry(&mut img[second_ebr.clone()], entry, kind, first, count);
        refused(&img, what);
    }
    let mut img = extended(&bytes);
    img[second_ebr.end - 1] = 0;
    refused(&img, "bad EBR signature");

    // GPTs: a bad CRC in the header or the entries, no header, then bad fields with good CRCs.
    let sizes = "bad GPT entry count or size";
    let cases: [(usize, &[u8], bool, &str); 9] = [
        (512 + 60, b"x", false, "bad GPT header CRC"),
        (1024 + 300, b"x", false, "bad GPT entries CRC"),
        (
            512,
            b"NOT PART",
            false,
            "protective MBR without a GPT header",
        ),
        (512 + 12, &600u32.to_le_bytes(), true, "bad GPT header size"),
        (512 + 84, &100u32.to_le_bytes(), true, sizes),
        (512 + 84, &132u32.to_le_bytes(), true, sizes),
        (512 + 80, &5000u32.to_le_bytes(), true, sizes),
        (
            512 + 72,
            &(u64::MAX / 4).to_le_bytes(),
            true,
            "GPT entries past the end of the image",
        ),
        (1024 + 256 + 40, &(1u64 << 40).to_le_bytes(), true, past),
    ];
    for (at, patch, seal, what) in cases {
        let mut img = gpt(&bytes);
        img[at..at + patch.len()].copy_from_slice(patch);
        if seal {
            reseal(&mut img);
        }
        refused(&img, what);
    }
}

// ---- random damage ---------------------------------------------------------------------------

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Reads everything it can from a damaged image; nothing may panic, and every extent given
/// must lie within its partition and the image. Counts the errors and the files found.
fn exercise(image: &TempImage, tally: &mut [usize; 2]) {
    const PATHS: [&str; 8] = [
        "README.TXT",
        "big.bin",
        "frag.bin",
        "Long File Name.txt",
        "empty.TXT",
        "SUBDIR/start4.elf",
        "SUBDIR/config.txt",
        "SUBDIR/F07.TXT",
    ];
    let Ok(found) = partitions(&image.file, image.len) else {
        tally[0] += 1;
        return;
    };
    for part in found {
        assert!(part.offset + part.len <= image.len);
        let Ok(fat) = Fat::open(&image.file, &part) else {
            tally[0] += 1;
            continue;
        };
        let _ = fat.list(&image.file, "");
        let _ = fat.list(&image.file, "SUBDIR");
        for path in PATHS {
            let Ok(entry) = fat.find(&image.file, path) else {
                tally[0] += 1;
                continue;
            };
            tally[1] += 1;
            assert_eq!(entry.extents.iter().map(|e| e.len).sum::<u64>(), entry.len);
            for e in &entry.extents {
                assert!(e.offset >= part.offset);
                assert!(e.offset + e.len <= part.offset + part.len);
            }
            let mut buf = [0u8; 4096];
            let _ = read_extents(&image.file, &entry.extents, 0, &mut buf);
        }
    }
}

#[test]
fn random_damage_never_panics() {
    let images = [
        TempImage::new(&mbr(&tree(FAT12, false).finish())),
        TempImage::new(&extended(&tree(FAT16, true).finish())),
        TempImage::new(&gpt(&tree(FAT12, false).finish())),
        TempImage::new(&tree(FAT16, false).finish()),
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut tally = [0; 2];
    for round in 0..2000 {
        let image = &images[round % images.len()];
        let mut saved = Vec::new();
        for _ in 0..1 + xorshift(&mut state) % 8 {
            // Mostly where the tables, FATs and directories are.
            let span = if xorshift(&mut state) % 4 == 0 {
                image.len
            } else {
                image.len.min(64 * 1024)
            };
            let at = xorshift(&mut state) % span;
            let mut old = [0u8];
            image.file.read_exact_at(&mut old, at).unwrap();
            let r = xorshift(&mut state);
            let new = match r % 4 {
                0 => old[0] ^ (1 << ((r >> 8) % 8)),
                1 => [0x00, 0xFF, 0xE5, 0x0F, 0x10, 0x80][(r >> 8) as usize % 6],
                _ => (r >> 8) as u8,
            };
            image.file.write_all_at(&[new], at).unwrap();
            saved.push((at, old[0]));
        }
        exercise(image, &mut tally);
        for (at, old) in saved.into_iter().rev() {
            image.file.write_all_at(&[old], at).unwrap();
        }
    }
    // Both ways were taken, often: refusals, and files found in damaged images.
    assert!(tally[0] > 500 && tally[1] > 5000, "{tally:?}");
    // The images are whole again.
    check_tree(&images[3], 1, &tree(FAT16, false));
}
