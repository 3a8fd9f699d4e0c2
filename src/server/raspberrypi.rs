//! Raspberry Pi bootloaders whose TFTP block number does not roll over past 65535 (RFC 1350
//! leaves rollover unspecified; ringtftpd, tftp-hpa and dnsmasq go on with block 0).
//!
//! The bootloaders' source is closed; their maintainers' answers say what happens. A Pi 3's
//! `bootcode.bin` and a Pi 4's bootloader stop at block 65535 (512- and 1024-byte blocks: 32 and
//! 64 MiB) and boot what they have, a file silently cut (rpi-eeprom issue 375); a Pi 5 hangs
//! there until its `TFTP_FILE_TIMEOUT` (issue 720), fixed in its bootloader of 2025-09-23 (pull
//! 755). A request does not say which bootloader sent it, but the client's MAC address (from the
//! kernel's neighbour table: a Pi netboots on the link) says which maker, and for the makers'
//! address blocks that only boards without the fix carry, an ERROR before the transfer is the
//! least bad answer: the Pi's log says why, and it retries or falls back rather than boot a
//! truncated kernel or initramfs. Pi 5 address blocks are left out (an updated Pi 5 takes the
//! file), as are blocks shared by several models.

use std::net::IpAddr;

use super::ending::Refusal;
use crate::resolve::neighbour;

/// Raspberry Pi address blocks (OUIs) on boards whose bootloader never rolls over: the
/// Raspberry Pi Foundation's (Pi 1 to 3) and the first Pi 4 blocks.
const NO_ROLLOVER: [[u8; 3]; 3] = [[0xb8, 0x27, 0xeb], [0xdc, 0xa6, 0x32], [0xe4, 0x5f, 0x01]];

/// The refusal for a file of `len` bytes at `blksize` from `client`, if its blocks go past
/// 65535 and the client is a Raspberry Pi that cannot follow. Looks the MAC up only then.
pub(crate) fn refusal(client: IpAddr, len: u64, blksize: u16) -> Option<Refusal> {
    // The last block is the first shorter than blksize (an exact multiple ends with an empty
    // one), so a file of n full blocks takes n + 1.
    let blocks = len / u64::from(blksize) + 1;
    if blocks <= u64::from(u16::MAX) {
        return None;
    }
    let mac = neighbour::mac(client.to_canonical())?;
    NO_ROLLOVER
        .iter()
        .any(|oui| mac[..3] == *oui)
        .then_some(Refusal::TooManyBlocks { blocks, blksize })
}
