//! Firmware profiles: what each boot firmware asks for on the wire, so that every client of a
//! run can speak like one.
//!
//! Each profile is what the firmware's own source sends (cited beside it) or, for iPXE and
//! edk2, what was captured from it booting in QEMU (`loadgen/FIRMWARE.md`). The order
//! of the options in the RRQ is the core's (`blksize`, `tsize`, `timeout`, `windowsize`), not
//! necessarily the firmware's; no server may depend on it (RFC 2347).
//!
//! Options given on the command line (or in a scenario step) override the profile's, one by
//! one: [`Overrides`].

use std::fmt;
use std::time::Duration;

/// A firmware whose requests a client copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// UEFI edk2 (OVMF, PxeBcDxe / Mtftp4): a size probe answered with ERROR 8, then the
    /// download from a new port in windows of 4.
    Edk2,
    /// iPXE (BIOS option ROM and `ipxe.efi`): `blksize=1432 tsize=0`, lock-step.
    Ipxe,
    /// PXELINUX (syslinux): `tsize=0 blksize=1408`, lock-step.
    Pxelinux,
    /// U-Boot's `tftpboot` with its default configuration: `timeout=5 blksize=1468`, lock-step.
    Uboot,
    /// GRUB 2's `tftp` module: `blksize=1024 tsize=0`, lock-step.
    Grub,
    /// The Raspberry Pi 4 and 5 network bootloader (EEPROM): a size probe, then the download,
    /// lock-step in 1024-byte blocks.
    Raspberrypi,
    /// Windows Deployment Services' boot client (`wdsnbp.com`, `bootmgr`): `blksize=1456
    /// tsize=0 windowsize=4 msftwindow=31416`, each ACK saying the next window.
    Wds,
}

/// What a profile asks for: the options of its download RRQ and, for edk2, of the probe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ask {
    /// `blksize` (RFC 2348).
    pub blksize: Option<u16>,
    /// `windowsize` (RFC 7440).
    pub windowsize: Option<u16>,
    /// `tsize` 0 on the download RRQ (RFC 2349).
    pub tsize: bool,
    /// The retransmission timer, also sent as the `timeout` option (RFC 2349) when `Some`.
    pub timeout_option: Option<Duration>,
    /// A size probe first (`tsize=0` with the same options), answered with ERROR 8, then the
    /// download from a new port after `probe_gap`.
    pub probe: bool,
    /// WDS's variable window (`msftwindow`): each ACK carries the next window's size.
    pub msftwindow: bool,
    /// An ACK for every block out of sequence, not one per burst (edk2's Mtftp4).
    pub reack_every_stray: bool,
}

/// Options from the command line or a scenario step, each replacing the profile's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Overrides {
    /// `--blksize`.
    pub blksize: Option<u16>,
    /// `--windowsize`.
    pub windowsize: Option<u16>,
    /// `--tsize` (only ever turns it on).
    pub tsize: bool,
}

/// How long edk2 waits between the probe's ERROR 8 and the download's RRQ. Captured: "within
/// 100 ms" (`loadgen/FIRMWARE.md`); edk2 sends the second RRQ as soon as the first
/// Mtftp4 instance is torn down, so a few milliseconds.
pub const PROBE_GAP: Duration = Duration::from_millis(5);

impl Profile {
    /// Every profile, for `--help` and errors.
    pub const ALL: [Profile; 7] = [
        Profile::Edk2,
        Profile::Ipxe,
        Profile::Pxelinux,
        Profile::Uboot,
        Profile::Grub,
        Profile::Raspberrypi,
        Profile::Wds,
    ];

    /// The profile's name, as on the command line and in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Edk2 => "edk2",
            Self::Ipxe => "ipxe",
            Self::Pxelinux => "pxelinux",
            Self::Uboot => "uboot",
            Self::Grub => "grub",
            Self::Raspberrypi => "raspberrypi",
            Self::Wds => "wds",
        }
    }

    /// The profile called `name`.
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
                format!("unknown profile {name:?} (one of {})", names.join(", "))
            })
    }

    /// What the firmware asks for.
    pub fn ask(self) -> Ask {
        match self {
            // Captured from OVMF 2022.11 (firmware.md); in edk2's source the probe is
            // PxeBcTftpGetFileSize and the download PxeBcTftpReadFile
            // (NetworkPkg/UefiPxeBcDxe/PxeBcMtftp.c), both with the same blksize and window.
            Self::Edk2 => Ask {
                blksize: Some(1468),
                windowsize: Some(4),
                tsize: false,
                timeout_option: None,
                probe: true,
                msftwindow: false,
                // Mtftp4RrqHandleData (NetworkPkg/Mtftp4Dxe/Mtftp4Rrq.c) ACKs the last block in
                // sequence for every block that is not the expected one.
                reack_every_stray: true,
            },
            // Captured from ipxe-qemu (firmware.md); iPXE's src/net/udp/tftp.c asks for
            // blksize (its MTU-derived 1432) and tsize, and acknowledges every block.
            Self::Ipxe => Ask {
                blksize: Some(1432),
                tsize: true,
                ..Ask::default()
            },
            // syslinux core/fs/pxe/tftp.c, tftp_open: the RRQ tail is
            // "octet\0tsize\0" "0\0blksize\0" "1408"; tftp_get_packet ACKs every block.
            Self::Pxelinux => Ask {
                blksize: Some(1408),
                tsize: true,
                ..Ask::default()
            },
            // u-boot net/tftp.c, tftp_send (STATE_SEND_RRQ): "timeout" = TIMEOUT (5000 ms)
            // / 1000, "tsize" only with CONFIG_TFTP_TSIZE (off by default), "blksize" =
            // CONFIG_TFTP_BLOCKSIZE (net/Kconfig: default 1468), "windowsize" only when
            // CONFIG_TFTP_WINDOWSIZE > 1 (default 1). Its timer is the same 5 s.
            Self::Uboot => Ask {
                blksize: Some(1468),
                timeout_option: Some(Duration::from_secs(5)),
                ..Ask::default()
            },
            // grub-core/net/tftp.c, tftp_open: "blksize" "1024" then "tsize" "0";
            // tftp_receive ACKs every DATA as it comes.
            Self::Grub => Ask {
                blksize: Some(1024),
                tsize: true,
                ..Ask::default()
            },
            // The bootloader's TFTP client is closed source; from its maintainers' answers:
            // blksize 1024 (rpi-eeprom issue 25, "implemented"; issue 375: TFTP_MAX_BLOCKSIZE
            // is 1024, so 65535 x 1024 bytes at most), no windowsize; nobodd's users describe a
            // `tsize` request abandoned after the OACK and asked again, modelled as edk2's
            // probe. Its block number does not roll over past 65535: a Pi 4 stops there (issue
            // 375, files silently cut at 64 MiB), a Pi 5 hangs until TFTP_FILE_TIMEOUT (issue
            // 720), fixed for the Pi 5 only in pieeprom-2025-09-23 (pull 755).
            Self::Raspberrypi => Ask {
                blksize: Some(1024),
                tsize: true,
                probe: true,
                ..Ask::default()
            },
            // Wireshark's TFTP dissector (epan/dissectors/packet-tftp.c, from WDS traffic):
            // "msftwindow" 31416 in the RRQ, 27182 in the OACK, then every ACK one byte
            // longer with the next window. blksize 1456 and a first window of 4 are assumed
            // (values WDS setups commonly use; not captured from a Windows client here).
            Self::Wds => Ask {
                blksize: Some(1456),
                windowsize: Some(4),
                tsize: true,
                msftwindow: true,
                ..Ask::default()
            },
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Ask {
    /// The profile's options with the overrides applied.
    pub fn with(mut self, o: &Overrides) -> Self {
        if o.blksize.is_some() {
            self.blksize = o.blksize;
        }
        if o.windowsize.is_some() {
            self.windowsize = o.windowsize;
        }
        self.tsize |= o.tsize;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_ask_what_their_firmware_asks() {
        let edk2 = Profile::Edk2.ask();
        assert_eq!((edk2.blksize, edk2.windowsize), (Some(1468), Some(4)));
        assert!(edk2.probe && !edk2.tsize);
        let ipxe = Profile::Ipxe.ask();
        assert_eq!(
            (ipxe.blksize, ipxe.windowsize, ipxe.tsize),
            (Some(1432), None, true)
        );
        assert_eq!(Profile::Pxelinux.ask().blksize, Some(1408));
        assert_eq!(
            Profile::Uboot.ask().timeout_option,
            Some(Duration::from_secs(5))
        );
        assert!(!Profile::Uboot.ask().tsize);
        assert_eq!(Profile::Grub.ask().blksize, Some(1024));
        let pi = Profile::Raspberrypi.ask();
        assert_eq!(
            (pi.blksize, pi.windowsize, pi.tsize),
            (Some(1024), None, true)
        );
        assert!(Profile::Wds.ask().msftwindow);
        assert!(Profile::ALL
            .iter()
            .all(|p| p.ask().probe == matches!(p, Profile::Edk2 | Profile::Raspberrypi)));
    }

    #[test]
    fn names_round_trip_and_overrides_win() {
        for p in Profile::ALL {
            assert_eq!(Profile::parse(p.name()), Ok(p));
        }
        assert_eq!(Profile::parse("EDK2"), Ok(Profile::Edk2));
        assert!(Profile::parse("ofw").unwrap_err().contains("edk2, ipxe"));
        let o = Overrides {
            blksize: Some(512),
            windowsize: None,
            tsize: true,
        };
        let a = Profile::Edk2.ask().with(&o);
        assert_eq!(
            (a.blksize, a.windowsize, a.tsize),
            (Some(512), Some(4), true)
        );
    }
}
