//! Partition tables: the MBR with its extended partitions, the GPT, or none.
//!
//! The MBR is the classic PC layout: the signature 0x55 0xAA at byte 510 and four 16-byte
//! entries from byte 446 (boot flag, CHS, type, CHS, first LBA, sector count). An extended
//! partition (type 0x05, 0x0F or 0x85) holds a chain of EBRs, each an MBR-shaped sector whose
//! first entry is a logical partition (relative to that EBR) and whose second links the next EBR
//! (relative to the extended partition's start). The GPT is that of the UEFI specification
//! (§5.3): a protective MBR entry of type 0xEE, the header at LBA 1 ("EFI PART", its size, its
//! CRC32, where the partition entry array is, how many entries of what size, their CRC32), and
//! the entries (type GUID, first and last LBA, inclusive).

use std::collections::HashSet;
use std::fs::File;

use super::{fat, le32, le64, read_at, ImageError};

/// The sector size partition tables are read with.
const SECTOR: u64 = 512;
/// The most GPT entries read (128 is what every tool writes).
const MAX_GPT_ENTRIES: u32 = 1024;
/// The largest GPT entry accepted (the specification's sizes are 128 × 2ⁿ; 4096 is plenty).
const MAX_GPT_ENTRY_SIZE: u32 = 4096;
/// The most EBRs followed across all extended partitions (Linux allows 256 partitions).
const MAX_EBRS: usize = 256;

/// A partition of an image: its 1-based number as nobodd and fdisk count them and its byte
/// range in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// 1 to 4 for MBR primaries, 5 on for logical partitions, the entry's index + 1 in a GPT,
    /// 1 for an image without a partition table.
    pub number: u32,
    /// Where it starts in the image, in bytes.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// Reads the partition table of the image (`file`, of `image_len` bytes).
///
/// A GPT if the MBR holds a protective 0xEE entry (an error if its header or entries fail a
/// check), else the MBR's primary and logical partitions, else, for a FAT boot sector at
/// offset 0, one partition numbered 1 covering the whole image. Every partition must lie within
/// `image_len` and not overlap another or the table.
pub fn partitions(file: &File, image_len: u64) -> Result<Vec<Partition>, ImageError> {
    if image_len < SECTOR {
        return Err(ImageError::Corrupt("image smaller than a sector"));
    }
    let mut mbr = [0u8; SECTOR as usize];
    read_at(file, 0, &mut mbr)?;
    let signed = mbr[510] == 0x55 && mbr[511] == 0xAA;
    let entries = primary_entries(&mbr);
    let mut found = if signed && entries.iter().any(|e| e.kind == 0xEE) {
        gpt(file, image_len)?
    } else if signed
        && entries.iter().all(|e| e.boot == 0 || e.boot == 0x80)
        && entries.iter().any(|e| !e.is_empty())
    {
        mbr_partitions(file, image_len, &entries)?
    } else if fat::looks_like_boot_sector(&mbr) {
        vec![Partition {
            number: 1,
            offset: 0,
            len: image_len,
        }]
    } else if signed && entries.iter().all(|e| e.boot == 0 || e.boot == 0x80) {
        Vec::new() // an empty MBR
    } else {
        return Err(ImageError::Corrupt(
            "no partition table and no FAT boot sector",
        ));
    };
    check_layout(&mut found)?;
    Ok(found)
}

/// The partition numbered `number` of the image (see [`partitions`]).
pub fn partition(file: &File, image_len: u64, number: u32) -> Result<Partition, ImageError> {
    partitions(file, image_len)?
        .into_iter()
        .find(|p| p.number == number)
        .ok_or(ImageError::NoSuchPartition(number))
}

/// Refuses overlapping partitions; leaves them in order of their numbers.
fn check_layout(found: &mut [Partition]) -> Result<(), ImageError> {
    found.sort_by_key(|p| p.offset);
    for pair in found.windows(2) {
        if pair[0].offset.saturating_add(pair[0].len) > pair[1].offset {
            return Err(ImageError::Corrupt("partitions overlap"));
        }
    }
    found.sort_by_key(|p| p.number);
    Ok(())
}

/// One 16-byte MBR or EBR entry.
#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    boot: u8,
    kind: u8,
    first_lba: u32,
    sectors: u32,
}

impl MbrEntry {
    fn is_empty(&self) -> bool {
        self.kind == 0 || self.sectors == 0
    }

    fn is_extended(&self) -> bool {
        matches!(self.kind, 0x05 | 0x0F | 0x85)
    }
}

fn primary_entries(sector: &[u8; SECTOR as usize]) -> [MbrEntry; 4] {
    std::array::from_fn(|i| {
        let at = 446 + 16 * i;
        MbrEntry {
            boot: sector[at],
            kind: sector[at + 4],
            first_lba: le32(sector, at + 8),
            sectors: le32(sector, at + 12),
        }
    })
}

/// The byte range of `sectors` sectors from `first_lba`, which must lie within the image and
/// leave sector 0 (the table) alone.
fn span(first_lba: u64, sectors: u64, image_len: u64) -> Result<(u64, u64), ImageError> {
    if first_lba == 0 {
        return Err(ImageError::Corrupt(
            "partition overlaps the partition table",
        ));
    }
    let offset = first_lba.checked_mul(SECTOR);
    let len = sectors.checked_mul(SECTOR);
    match (offset, len) {
        (Some(offset), Some(len)) if offset.checked_add(len).is_some_and(|e| e <= image_len) => {
            Ok((offset, len))
        }
        _ => Err(ImageError::Corrupt("partition past the end of the image")),
    }
}

fn mbr_partitions(
    file: &File,
    image_len: u64,
    entries: &[MbrEntry; 4],
) -> Result<Vec<Partition>, ImageError> {
    let mut found = Vec::new();
    let mut next_logical = 5;
    let mut ebrs = 0;
    for (number, entry) in (1..).zip(entries) {
        if entry.is_empty() {
            continue;
        }
        let (offset, len) = span(entry.first_lba.into(), entry.sectors.into(), image_len)?;
        if entry.is_extended() {
            logical(
                file,
                image_len,
                entry,
                &mut next_logical,
                &mut ebrs,
                &mut found,
            )?;
        } else {
            found.push(Partition {
                number,
                offset,
                len,
            });
        }
    }
    Ok(found)
}

/// Follows the EBR chain of the extended partition `ext`, numbering its logical partitions from
/// `next`. `ebrs` counts the EBRs read across all extended partitions, to bound the work.
fn logical(
    file: &File,
    image_len: u64,
    ext: &MbrEntry,
    next: &mut u32,
    ebrs: &mut usize,
    found: &mut Vec<Partition>,
) -> Result<(), ImageError> {
    let ext_start = u64::from(ext.first_lba);
    let ext_end = ext_start + u64::from(ext.sectors); // both u32: no overflow
    let mut seen = HashSet::new();
    let mut ebr_lba = ext_start;
    loop {
        *ebrs += 1;
        if *ebrs > MAX_EBRS {
            return Err(ImageError::Corrupt("EBR chain too long"));
        }
        if !seen.insert(ebr_lba) {
            return Err(ImageError::Corrupt("EBR chain loops"));
        }
        if ebr_lba >= ext_end {
            return Err(ImageError::Corrupt("EBR outside its extended partition"));
        }
        let mut sector = [0u8; SECTOR as usize];
        read_at(file, ebr_lba * SECTOR, &mut sector)?; // within the extended partition, checked
        if sector[510] != 0x55 || sector[511] != 0xAA {
            return Err(ImageError::Corrupt("bad EBR signature"));
        }
        let [part, link, ..] = primary_entries(&sector);
        if !part.is_empty() {
            let first = ebr_lba + u64::from(part.first_lba);
            if first <= ebr_lba || first + u64::from(part.sectors) > ext_end {
                return Err(ImageError::Corrupt(
                    "logical partition outside its extended partition",
                ));
            }
            let (offset, len) = span(first, part.sectors.into(), image_len)?;
            found.push(Partition {
                number: *next,
                offset,
                len,
            });
            *next += 1;
        }
        if link.kind == 0 || !link.is_extended() {
            return Ok(());
        }
        ebr_lba = ext_start + u64::from(link.first_lba);
    }
}

/// Reads the primary GPT: the header at LBA 1 and its partition entry array.
fn gpt(file: &File, image_len: u64) -> Result<Vec<Partition>, ImageError> {
    let mut header = [0u8; SECTOR as usize];
    if image_len < 2 * SECTOR {
        return Err(ImageError::Corrupt("truncated image"));
    }
    read_at(file, SECTOR, &mut header)?;
    if &header[..8] != b"EFI PART" {
        return Err(ImageError::Corrupt("protective MBR without a GPT header"));
    }
    let header_size = le32(&header, 12);
    if !(92..=SECTOR as u32).contains(&header_size) {
        return Err(ImageError::Corrupt("bad GPT header size"));
    }
    let mut zeroed = header;
    zeroed[16..20].fill(0);
    if crc32(&zeroed[..header_size as usize]) != le32(&header, 16) {
        return Err(ImageError::Corrupt("bad GPT header CRC"));
    }
    if le64(&header, 24) != 1 {
        return Err(ImageError::Corrupt("GPT header not at LBA 1"));
    }
    let entries_lba = le64(&header, 72);
    let count = le32(&header, 80);
    let size = le32(&header, 84);
    if count > MAX_GPT_ENTRIES || !(128..=MAX_GPT_ENTRY_SIZE).contains(&size) || size % 8 != 0 {
        return Err(ImageError::Corrupt("bad GPT entry count or size"));
    }
    let array_len = count as usize * size as usize; // at most 4 MiB
    let start = entries_lba.checked_mul(SECTOR);
    if entries_lba < 2 || start.is_none_or(|s| s.saturating_add(array_len as u64) > image_len) {
        return Err(ImageError::Corrupt("GPT entries past the end of the image"));
    }
    let mut array = vec![0u8; array_len];
    read_at(file, entries_lba * SECTOR, &mut array)?;
    if crc32(&array) != le32(&header, 88) {
        return Err(ImageError::Corrupt("bad GPT entries CRC"));
    }
    let mut found = Vec::new();
    for (number, entry) in (1..).zip(array.chunks_exact(size as usize)) {
        if entry[..16].iter().all(|&b| b == 0) {
            continue; // an unused entry: a zero type GUID
        }
        let (first, last) = (le64(entry, 32), le64(entry, 40));
        if last < first {
            return Err(ImageError::Corrupt("GPT partition ends before it starts"));
        }
        let count = (last - first).checked_add(1).ok_or(ImageError::Corrupt(
            "GPT partition past the end of the image",
        ))?;
        let (offset, len) = span(first, count, image_len)?;
        found.push(Partition {
            number,
            offset,
            len,
        });
    }
    Ok(found)
}

/// The CRC32 of IEEE 802.3 (reflected, polynomial 0xEDB88320) that the GPT uses.
pub(super) fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |crc, &b| {
        TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8)
    })
}
