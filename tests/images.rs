//! Raspberry Pi boot partitions served from inside OS images (`--board`, nobodd's job), on
//! images built with the real tools: `mkfs.fat` (dosfstools), mtools (`mmd`, `mcopy`, `mdel`,
//! `mshowfat`) and `sfdisk` (fdisk). FAT12, FAT16 and FAT32, in MBR primary and logical
//! partitions, in a GPT and without a partition table, each holding a long name, a nested
//! directory, an empty file and a fragmented one; fetched byte-exact by the real clients; a board
//! limited to one address; boards beside `--directory`; names confined to the partition and
//! never written; bad boards refused at start-up; corrupt cluster chains answered with an ERROR
//! at once while the other files are still served; an image rewritten in place or renamed over
//! read again, and never served as a mix when it changes mid-transfer; nobodd's configuration
//! files; and `nobodd-tftpd` itself as the reference (`RINGTFTP_NOBODD` names it).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use ringtftp::image::{self, Fat};
use ringtftp::packet::Mode as WireMode;

use crate::util::raw::{self, Peer};
use crate::util::{
    client, fetch_atftp, fetch_busybox, fetch_curl, fetch_tftp_hpa, pattern, run, sha256,
    sha256_file, skip, Backend, Daemon, Finished, Mode, TempDir, ATFTP, BUSYBOX, CURL, TFTP_HPA,
};

/// The board most tests serve: a serial as a Pi's OTP gives it, hexadecimal with a leading zero.
const SERIAL: &str = "0c0ffee5";
/// Long enough for a daemon that fails at start to have done so.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How soon a bad board must have stopped the daemon.
const FAILS_WITHIN: Duration = Duration::from_secs(5);
/// How soon a request for a file with a corrupt cluster chain must be answered.
const ERROR_WITHIN: Duration = Duration::from_secs(1);
/// No image-building tool may take longer.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// What a client is told about a file whose cluster chain is corrupt (ERROR 0).
const BAD_PARTITION: &str = "Bad boot partition in the board's image";
const SECTOR: u64 = 512;

// --- Building images with the real tools -------------------------------------------------------

/// `name` on `PATH` or in the sbin directories a non-root `PATH` lacks.
fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Whether dosfstools, mtools and sfdisk are installed; records the skip if not.
fn tools() -> bool {
    for (tool, package) in [
        ("mkfs.fat", "dosfstools"),
        ("mmd", "mtools"),
        ("mcopy", "mtools"),
        ("mdel", "mtools"),
        ("mshowfat", "mtools"),
        ("sfdisk", "fdisk"),
    ] {
        if program(tool).is_none() {
            skip::missing(
                &format!("{tool}, to build disk images"),
                &format!("apt-get install {package}"),
            );
            return false;
        }
    }
    true
}

fn tool(name: &str) -> Command {
    Command::new(program(name).unwrap_or_else(|| panic!("{name} is not installed")))
}

/// Runs `cmd`; panics with its output unless it succeeds.
fn must(cmd: Command) -> Finished {
    let done = run(cmd, TOOL_TIMEOUT);
    assert!(done.success(), "{}", done.describe());
    done
}

/// An mtools command on the filesystem image `part`, its geometry checks off.
fn mtools(name: &str, part: &Path, args: &[&OsStr]) -> Finished {
    let mut cmd = tool(name);
    cmd.arg("-i")
        .arg(part)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1");
    must(cmd)
}

/// The clusters of `name` in the filesystem image `part`, in chain order, as mtools' `mshowfat`
/// prints them (`::/name <9-14> <21-54>`).
fn clusters_of(part: &Path, name: &str) -> Vec<u32> {
    let done = mtools("mshowfat", part, &[OsStr::new(&format!("::/{name}"))]);
    let mut clusters = Vec::new();
    for run in done.stdout.split('<').skip(1) {
        let run = run.split('>').next().unwrap_or_default();
        let (first, last) = run.split_once('-').unwrap_or((run, run));
        let parse = |n: &str| -> u32 {
            n.trim()
                .parse()
                .unwrap_or_else(|_| panic!("mshowfat: {:?}", done.stdout))
        };
        clusters.extend(parse(first)..=parse(last));
    }
    assert!(!clusters.is_empty(), "mshowfat {name}: {:?}", done.stdout);
    clusters
}

/// How many contiguous runs of clusters a chain is made of.
fn runs(clusters: &[u32]) -> usize {
    1 + clusters.windows(2).filter(|w| w[1] != w[0] + 1).count()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fs {
    Fat12,
    Fat16,
    Fat32,
}

impl Fs {
    /// mkfs.fat's options and the filesystem's size in KiB: the type forced, at a size whose
    /// cluster count really makes it that type (a FAT32 needs 65525 clusters: 512-byte ones in
    /// 34 MiB), with room for the files.
    fn mkfs(self) -> (&'static [&'static str], u64) {
        match self {
            Fs::Fat12 => (&["-F", "12"], 8 * 1024),
            Fs::Fat16 => (&["-F", "16"], 16 * 1024),
            Fs::Fat32 => (&["-F", "32", "-s", "1"], 34 * 1024),
        }
    }

    /// Its MBR partition type.
    fn mbr_type(self) -> &'static str {
        match self {
            Fs::Fat12 => "1",
            Fs::Fat16 => "e",
            Fs::Fat32 => "c",
        }
    }
}

/// Where the FAT filesystem goes in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    /// `label: dos`, the filesystem in primary partition 1.
    Mbr,
    /// `label: gpt`: a Linux partition 1, the filesystem in partition 2 (an EFI system one).
    Gpt,
    /// `label: dos`: a Linux primary 1, an extended 2, the filesystem in logical partition 5.
    Logical,
    /// No partition table: the filesystem is the image (a "superfloppy"), partition 1.
    Bare,
}

impl Table {
    /// The filesystem's partition number.
    fn partition(self) -> u32 {
        match self {
            Table::Mbr | Table::Bare => 1,
            Table::Gpt => 2,
            Table::Logical => 5,
        }
    }
}

/// What to build.
#[derive(Clone, Debug)]
struct Spec {
    fs: Fs,
    table: Table,
    /// Makes every file's bytes this image's own.
    seed: u64,
    /// Bytes of a `pad.bin` copied first, moving every other file's clusters (0: none).
    pad: usize,
    /// Files copied after the boot files and the fragmented one.
    extra: Vec<(String, Vec<u8>)>,
}

impl Spec {
    fn new(fs: Fs, table: Table, seed: u64) -> Spec {
        Spec {
            fs,
            table,
            seed,
            pad: 0,
            extra: Vec::new(),
        }
    }
}

/// A disk image built by [`build`].
#[derive(Debug)]
struct Image {
    path: PathBuf,
    fs: Fs,
    table: Table,
    /// Where the FAT filesystem starts in the image, in bytes.
    offset: u64,
    /// Every file copied in, by its path in the filesystem, with its bytes.
    files: Vec<(String, Vec<u8>)>,
    /// The chains mshowfat gave for the files the tests corrupt or check: (name, clusters).
    chains: Vec<(String, Vec<u32>)>,
}

impl Image {
    /// `SERIAL,FILENAME,PART` for `--board`.
    fn board(&self, serial: &str) -> String {
        format!(
            "{serial},{},{}",
            self.path.display(),
            self.table.partition()
        )
    }

    fn bytes(&self, name: &str) -> &[u8] {
        &self
            .files
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} is not in the image"))
            .1
    }

    fn chain(&self, name: &str) -> &[u32] {
        &self
            .chains
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no chain recorded for {name}"))
            .1
    }
}

/// What a Pi's boot partition holds, in copy order: the firmware, text files, a long name, a
/// nested directory and an empty file.
fn boot_files(seed: u64) -> Vec<(String, Vec<u8>)> {
    let text = |s: String| s.into_bytes();
    vec![
        ("start4.elf".into(), pattern(2_500_000, seed)),
        ("fixup4.dat".into(), pattern(5_446, seed + 1)),
        (
            "cmdline.txt".into(),
            text(format!(
                "console=serial0,115200 root=/dev/nbd0p2 rootwait image={seed}\n"
            )),
        ),
        (
            "config.txt".into(),
            text(format!(
                "[all]\narm_64bit=1\nkernel=kernel8.img\n# {seed}\n"
            )),
        ),
        (
            "overlays/Some Long Overlay Name.dtbo".into(),
            pattern(3_011, seed + 2),
        ),
        ("overlays/README".into(), text(format!("overlays {seed}\n"))),
        (
            "firmware/deep/nested/kernel8.img".into(),
            pattern(150_001, seed + 3),
        ),
        ("empty.txt".into(), Vec::new()),
    ]
}

/// Builds `dir/NAME.img` as `spec` says: a filesystem made by mkfs.fat, filled by mtools, put
/// into a partition table written by sfdisk.
///
/// Besides [`boot_files`] it holds `a.bin` and `c.bin`, with `fragmented.bin` copied after a
/// `b.bin` between them was deleted, so its clusters fill b's hole and go on after c's: mshowfat
/// must show it in more than one run.
fn build(dir: &Path, name: &str, spec: Spec) -> Image {
    let part = dir.join(format!("{name}.part"));
    let src = dir.join(format!("{name}.src"));
    let _ = fs::remove_file(&part);
    let (options, kib) = spec.fs.mkfs();
    let mut mkfs = tool("mkfs.fat");
    mkfs.arg("-C")
        .args(options)
        .args(["-n", "BOOT"])
        .arg(&part)
        .arg(kib.to_string());
    must(mkfs);

    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    if spec.pad > 0 {
        files.push(("pad.bin".into(), pattern(spec.pad, spec.seed + 90)));
    }
    files.extend(boot_files(spec.seed));
    make_dirs(&part, &files);
    copy_in(&part, &src, &files);

    // The fragmented file: a, b, c, then b deleted and the big one copied over its hole.
    let trio: Vec<(String, Vec<u8>)> = ["a.bin", "b.bin", "c.bin"]
        .iter()
        .zip(10..)
        .map(|(n, s)| (n.to_string(), pattern(3_000, spec.seed + s)))
        .collect();
    copy_in(&part, &src, &trio);
    mtools("mdel", &part, &[OsStr::new("::/b.bin")]);
    if spec.fs == Fs::Fat32 {
        forget_next_free(&part);
    }
    let fragmented = vec![(
        "fragmented.bin".to_string(),
        pattern(200_003, spec.seed + 20),
    )];
    copy_in(&part, &src, &fragmented);
    let chain = clusters_of(&part, "fragmented.bin");
    assert!(
        runs(&chain) > 1,
        "fragmented.bin is not fragmented: {chain:?}"
    );
    files.push(trio[0].clone());
    files.push(trio[2].clone());
    files.extend(fragmented);
    make_dirs(&part, &spec.extra);
    copy_in(&part, &src, &spec.extra);
    let mut chains = vec![("fragmented.bin".to_string(), chain)];
    for (path, bytes) in &spec.extra {
        if !bytes.is_empty() {
            chains.push((path.clone(), clusters_of(&part, path)));
        }
    }
    files.extend(spec.extra.iter().cloned());
    let _ = fs::remove_dir_all(&src);

    let path = dir.join(format!("{name}.img"));
    let fs_bytes = fs::read(&part).expect("read the filesystem image");
    fs::remove_file(&part).expect("remove the filesystem image");
    let offset = partitioned(&path, spec.table, spec.fs, fs_bytes.len() as u64);
    File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.write_all_at(&fs_bytes, offset))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    Image {
        path,
        fs: spec.fs,
        table: spec.table,
        offset,
        files,
        chains,
    }
}

/// `mmd`s every directory the files' paths name, parents first.
fn make_dirs(part: &Path, files: &[(String, Vec<u8>)]) {
    let mut dirs = BTreeSet::new();
    for (path, _) in files {
        let mut at = Path::new(path).parent();
        while let Some(parent) = at.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(parent.to_string_lossy().into_owned());
            at = parent.parent();
        }
    }
    // A BTreeSet orders "a" before "a/b". mmd fails on a directory that exists, and mdir on a
    // root with nothing in it.
    let mut mdir = tool("mdir");
    mdir.arg("-i")
        .arg(part)
        .args(["-/", "-b", "::/"])
        .env("MTOOLS_SKIP_CHECK", "1");
    let existing = run(mdir, TOOL_TIMEOUT).stdout;
    for d in dirs {
        let target = format!("::/{d}");
        if existing.lines().any(|l| l.trim_end_matches('/') == target) {
            continue;
        }
        mtools("mmd", part, &[OsStr::new(&target)]);
    }
}

/// `mcopy`s each file in, through a copy of its bytes under `src`.
fn copy_in(part: &Path, src: &Path, files: &[(String, Vec<u8>)]) {
    for (path, bytes) in files {
        let local = crate::util::write_file(src, path, bytes);
        mtools(
            "mcopy",
            part,
            &[local.as_os_str(), OsStr::new(&format!("::/{path}"))],
        );
    }
}

/// Sets a FAT32 filesystem's FSInfo next-free hint to "unknown", so mtools allocates the next
/// file from the first free cluster (a hole) rather than after the last one it handed out.
fn forget_next_free(part: &Path) {
    let file = File::options().read(true).write(true).open(part).unwrap();
    let mut bs = [0u8; 512];
    file.read_exact_at(&mut bs, 0).unwrap();
    let sector = u64::from(u16::from_le_bytes([bs[11], bs[12]]));
    let fsinfo = u64::from(u16::from_le_bytes([bs[48], bs[49]]));
    file.write_all_at(&[0xFF; 4], fsinfo * sector + 0x1EC)
        .unwrap();
}

/// Creates `path` with `table`'s partition table (by sfdisk) and room for a filesystem of
/// `len` bytes; returns where the filesystem goes. A bare image is just the room.
fn partitioned(path: &Path, table: Table, fs: Fs, len: u64) -> u64 {
    let sectors = len / SECTOR;
    let t = fs.mbr_type();
    let (script, offset_sectors, total_sectors) = match table {
        Table::Bare => (None, 0, sectors),
        Table::Mbr => (
            Some(format!(
                "label: dos\nstart=2048, size={sectors}, type={t}\n"
            )),
            2048,
            2048 + sectors,
        ),
        // The backup GPT takes the last 33 sectors.
        Table::Gpt => (
            Some(format!(
                "label: gpt\n\
                 start=2048, size=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n\
                 start=4096, size={sectors}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n"
            )),
            4096,
            4096 + sectors + 2048,
        ),
        Table::Logical => (
            Some(format!(
                "label: dos\n\
                 start=2048, size=2048, type=83\n\
                 start=4096, size={}, type=5\n\
                 start=6144, size={sectors}, type={t}\n",
                sectors + 2048
            )),
            6144,
            6144 + sectors,
        ),
    };
    let _ = fs::remove_file(path);
    File::create(path)
        .and_then(|f| f.set_len(total_sectors * SECTOR))
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    if let Some(script) = script {
        let script_path = path.with_extension("sfdisk");
        fs::write(&script_path, script).unwrap();
        let mut sh = Command::new("sh");
        sh.args([
            "-c",
            r#"exec "$1" -q --no-reread --no-tell-kernel "$2" < "$3""#,
            "sh",
        ])
        .arg(program("sfdisk").expect("sfdisk"))
        .arg(path)
        .arg(&script_path);
        must(sh);
        let _ = fs::remove_file(&script_path);
    }
    offset_sectors * SECTOR
}

/// The layout of a FAT filesystem, from its boot sector.
#[derive(Debug)]
struct Geometry {
    sector: u64,
    reserved: u64,
    fats: u64,
    fat_sectors: u64,
    /// Clusters 2 to `clusters + 1` exist.
    clusters: u64,
}

fn geometry(image: &Image) -> Geometry {
    let file = File::open(&image.path).unwrap();
    let mut bs = [0u8; 512];
    file.read_exact_at(&mut bs, image.offset).unwrap();
    let le16 = |at: usize| u64::from(u16::from_le_bytes([bs[at], bs[at + 1]]));
    let le32 = |at: usize| u64::from(u32::from_le_bytes(bs[at..at + 4].try_into().unwrap()));
    let sector = le16(11);
    let cluster_sectors = u64::from(bs[13]);
    let reserved = le16(14);
    let fats = u64::from(bs[16]);
    let root_entries = le16(17);
    let total = if le16(19) != 0 { le16(19) } else { le32(32) };
    let fat_sectors = if le16(22) != 0 { le16(22) } else { le32(36) };
    let root_sectors = (root_entries * 32).div_ceil(sector);
    let data = reserved + fats * fat_sectors + root_sectors;
    Geometry {
        sector,
        reserved,
        fats,
        fat_sectors,
        clusters: (total - data) / cluster_sectors,
    }
}

/// Writes `value` as the FAT entry of `cluster`, in every copy of the FAT.
fn set_fat_entry(image: &Image, cluster: u32, value: u32) {
    let g = geometry(image);
    let file = File::options()
        .read(true)
        .write(true)
        .open(&image.path)
        .unwrap();
    for copy in 0..g.fats {
        let fat = image.offset + (g.reserved + copy * g.fat_sectors) * g.sector;
        let c = u64::from(cluster);
        match image.fs {
            Fs::Fat12 => {
                let at = fat + c + c / 2;
                let mut b = [0u8; 2];
                file.read_exact_at(&mut b, at).unwrap();
                let old = u16::from_le_bytes(b);
                let v = (value & 0xFFF) as u16;
                let new = if cluster % 2 == 0 {
                    (old & 0xF000) | v
                } else {
                    (old & 0x000F) | (v << 4)
                };
                file.write_all_at(&new.to_le_bytes(), at).unwrap();
            }
            Fs::Fat16 => {
                file.write_all_at(&(value as u16).to_le_bytes(), fat + 2 * c)
                    .unwrap();
            }
            Fs::Fat32 => {
                let at = fat + 4 * c;
                let mut b = [0u8; 4];
                file.read_exact_at(&mut b, at).unwrap();
                let new = (u32::from_le_bytes(b) & 0xF000_0000) | (value & 0x0FFF_FFFF);
                file.write_all_at(&new.to_le_bytes(), at).unwrap();
            }
        }
    }
}

/// Asserts, with the library's own reader, that `fragmented.bin` lies in more than one extent
/// and reads back whole: so a download of it took the fragmented path.
fn assert_fragmented(image: &Image) {
    let file = File::open(&image.path).unwrap();
    let len = file.metadata().unwrap().len();
    let part = image::partition(&file, len, image.table.partition())
        .unwrap_or_else(|e| panic!("{}: {e}", image.path.display()));
    assert_eq!(part.offset, image.offset, "{part:?}");
    let fat = Fat::open(&file, &part).unwrap_or_else(|e| panic!("{e}"));
    let entry = fat
        .find(&file, "fragmented.bin")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        entry.extents.len() > 1,
        "one extent for a file mshowfat shows in {} runs: {:?}",
        runs(image.chain("fragmented.bin")),
        entry.extents
    );
    let want = image.bytes("fragmented.bin");
    let mut got = vec![0; want.len()];
    let n = image::read_extents(&file, &entry.extents, 0, &mut got).unwrap();
    assert_eq!(n, want.len());
    assert!(got == want, "the library reads fragmented.bin wrong");
}

// --- Running the daemon ------------------------------------------------------------------------

/// An empty directory `name` in `dir`.
fn empty_dir(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.join(name);
    fs::create_dir_all(&path).unwrap();
    path
}

/// `ringtftpd PORT --bind 127.0.0.1 ARGS...` on a free port, once it answers: without
/// `--directory` unless `args` give one. nobodd's per-user configuration comes from `home`
/// only (`XDG_CONFIG_HOME` and `HOME` name it), never the host's; the daemon runs in `home`, so
/// one that served its current directory when it should serve boards only would be caught.
fn serve(args: &[String], home: &Path) -> Daemon {
    serve_with(args, |cmd| {
        cmd.env("XDG_CONFIG_HOME", home)
            .env("HOME", home)
            .current_dir(home);
    })
}

fn serve_with(args: &[String], env: impl Fn(&mut Command)) -> Daemon {
    Daemon::spawn(IpAddr::V4(Ipv4Addr::LOCALHOST), |port| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringtftpd"));
        cmd.arg(port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1");
        env(&mut cmd);
        cmd
    })
}

/// `ringtftpd 0 --bind 127.0.0.1 ARGS...` expected to fail at start: what it left.
fn start(args: &[String], home: &Path) -> Finished {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringtftpd"));
    cmd.args(["0", "--bind", "127.0.0.1"])
        .args(args)
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", home)
        .env("HOME", home)
        .current_dir(home);
    run(cmd, START_TIMEOUT)
}

/// Asserts the daemon exited on its own, soon, with a failure status and `stderr` containing
/// every one of `needles` (case-insensitively).
fn assert_fails_saying(what: &str, done: &Finished, needles: &[&str]) {
    let status = done
        .status
        .unwrap_or_else(|| panic!("{what}: still running:\n{}", done.describe()));
    assert!(
        !status.success(),
        "{what}: exit status {status}:\n{}",
        done.describe()
    );
    assert!(
        done.elapsed < FAILS_WITHIN,
        "{what}: took {:?} to fail:\n{}",
        done.elapsed,
        done.describe()
    );
    let stderr = done.stderr.to_lowercase();
    for needle in needles {
        assert!(
            stderr.contains(&needle.to_lowercase()),
            "{what}: stderr should mention {needle:?}:\n{}",
            done.describe()
        );
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// `name` downloaded by the library's reader in 1468-byte blocks, or the error.
fn fetch(addr: SocketAddr, name: &str) -> Result<Vec<u8>, String> {
    let options = [("blksize", "1468"), ("tsize", "0")];
    raw::download(addr, name, WireMode::Octet, &options, |_| {}).map(|d| d.data)
}

/// Fetches each of `files` (path in the image, bytes) under `serial/` with the library's
/// reader; one line per failure.
fn fetch_every_file(addr: SocketAddr, serial: &str, files: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, bytes) in files {
        let remote = format!("{serial}/{name}");
        match fetch(addr, &remote) {
            Ok(got) if got == *bytes => {}
            Ok(got) => failures.push(format!(
                "{remote}: {} bytes, sha256 {} instead of {} bytes, sha256 {}",
                got.len(),
                sha256(&got),
                bytes.len(),
                sha256(bytes)
            )),
            Err(e) => failures.push(format!("{remote}: {e}")),
        }
    }
    failures
}

/// The ERROR `server` answers an RRQ for `name` from `peer` with (code, message), and how long
/// it took; panics on silence (2 s) or another reply.
fn error_for(
    peer: &Peer,
    server: SocketAddr,
    name: &str,
    options: &[(&str, &str)],
) -> (u16, String, Duration) {
    let start = Instant::now();
    let (code, message, _) = peer.expect_error(&raw::rrq(name, WireMode::Octet, options), server);
    (code, message, start.elapsed())
}

/// One real client, fetching in octet mode with the options it is most used with.
fn fetch_with(program: &str, addr: SocketAddr, remote: &str, local: &Path) -> Result<(), String> {
    match program {
        TFTP_HPA => fetch_tftp_hpa(addr, remote, local, Mode::Octet),
        ATFTP => fetch_atftp(
            addr,
            remote,
            local,
            &[("tsize", ""), ("blksize", "1468"), ("windowsize", "16")],
        ),
        CURL => fetch_curl(addr, remote, local, Some(1468)),
        BUSYBOX => fetch_busybox(addr, remote, local, None),
        other => unreachable!("{other}"),
    }
}

/// Whether `local` holds exactly `want`; else a line saying how it differs.
fn compare(label: &str, local: &Path, want: &[u8]) -> Option<String> {
    let got = sha256_file(local);
    (got != sha256(want)).then(|| {
        format!(
            "{label}: {} bytes, sha256 {got}, instead of {} bytes, sha256 {}",
            fs::metadata(local).map(|m| m.len()).unwrap_or(0),
            want.len(),
            sha256(want)
        )
    })
}

// --- The tests ---------------------------------------------------------------------------------

backends!(every_file_of_a_fat32_image_reaches_every_client_byte_exact);

/// Every file of a FAT32 boot partition in MBR partition 1 — 2.5 MB of firmware, a long name,
/// a nested directory, an empty file, a fragmented one — fetched by tftp-hpa, atftp (16-block
/// windows), curl and busybox under `SERIAL/`; then the serial in upper case and without its
/// leading zero, a leading '/', and a file name in another case (FAT's names are not
/// case-sensitive), by tftp-hpa and the library's reader.
fn every_file_of_a_fat32_image_reaches_every_client_byte_exact(backend: Backend) {
    if !tools() {
        return;
    }
    let dir = TempDir::new(&format!("images-every-client-{backend}"));
    let image = build(dir.path(), "pi", Spec::new(Fs::Fat32, Table::Mbr, 1));
    assert_fragmented(&image);
    let home = empty_dir(&dir, "home");
    let mut args = strings(&backend.args());
    args.extend(["--board".to_string(), image.board(SERIAL)]);
    let daemon = serve(&args, &home);
    backend.assert_serving(&daemon.log());
    let local = dir.join("out");
    let mut failures = Vec::new();
    let mut tried = 0;
    for program in [TFTP_HPA, ATFTP, CURL, BUSYBOX] {
        if client(program).is_none() {
            continue;
        }
        for (name, bytes) in &image.files {
            let remote = format!("{SERIAL}/{name}");
            let _ = fs::remove_file(&local);
            tried += 1;
            match fetch_with(program, daemon.addr(), &remote, &local) {
                Ok(()) => failures.extend(compare(&format!("{program} {remote}"), &local, bytes)),
                Err(e) => failures.push(format!("{program} {remote}: {e}")),
            }
        }
    }
    let upper = SERIAL.to_uppercase();
    let short = SERIAL.trim_start_matches('0');
    let variants = [
        (format!("{upper}/start4.elf"), "start4.elf"),
        (format!("{short}/cmdline.txt"), "cmdline.txt"),
        (format!("/{SERIAL}/config.txt"), "config.txt"),
        (
            format!("{upper}/OVERLAYS/some long overlay name.DTBO"),
            "overlays/Some Long Overlay Name.dtbo",
        ),
    ];
    for (remote, name) in &variants {
        let want = image.bytes(name);
        tried += 1;
        match fetch(daemon.addr(), remote) {
            Ok(got) if got == want => {}
            Ok(got) => failures.push(format!(
                "raw {remote}: {} bytes, not {name}'s {}",
                got.len(),
                want.len()
            )),
            Err(e) => failures.push(format!("raw {remote}: {e}")),
        }
        if client(TFTP_HPA).is_some() {
            let _ = fs::remove_file(&local);
            tried += 1;
            match fetch_tftp_hpa(daemon.addr(), remote, &local, Mode::Octet) {
                Ok(()) => failures.extend(compare(&format!("tftp-hpa {remote}"), &local, want)),
                Err(e) => failures.push(format!("tftp-hpa {remote}: {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {tried} downloads on {backend} failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        daemon.log()
    );
}

// FAT12 and FAT16, a GPT, a logical partition and an image without a table: one daemon, five
// boards, each image's bytes its own, so a board answered from another's image shows.
tftptest!(
    every_filesystem_type_and_partition_table_is_served_byte_exact,
    |dir| {
        if !tools() {
            return;
        }
        let boards = [
            ("00000f12", Spec::new(Fs::Fat12, Table::Mbr, 10)),
            ("00000f16", Spec::new(Fs::Fat16, Table::Mbr, 20)),
            ("0000a932", Spec::new(Fs::Fat32, Table::Gpt, 30)),
            ("00000105", Spec::new(Fs::Fat16, Table::Logical, 40)),
            ("00bae12e", Spec::new(Fs::Fat12, Table::Bare, 50)),
        ];
        let images: Vec<(&str, Image)> = boards
            .iter()
            .map(|(serial, spec)| (*serial, build(dir.path(), serial, spec.clone())))
            .collect();
        let mut args = Vec::new();
        for (serial, image) in &images {
            assert_fragmented(image);
            args.extend(["--board".to_string(), image.board(serial)]);
        }
        let home = empty_dir(&dir, "home");
        let daemon = serve(&args, &home);
        let mut failures = Vec::new();
        for (serial, image) in &images {
            failures.extend(
                fetch_every_file(daemon.addr(), serial, &image.files)
                    .into_iter()
                    .map(|f| format!("{:?} in {:?}: {f}", image.fs, image.table)),
            );
        }
        if client(TFTP_HPA).is_some() {
            let local = dir.join("out");
            for (serial, image) in &images {
                for name in ["start4.elf", "fragmented.bin"] {
                    let remote = format!("{serial}/{name}");
                    let _ = fs::remove_file(&local);
                    match fetch_tftp_hpa(daemon.addr(), &remote, &local, Mode::Octet) {
                        Ok(()) => failures.extend(compare(
                            &format!("tftp-hpa {remote}"),
                            &local,
                            image.bytes(name),
                        )),
                        Err(e) => failures.push(format!("tftp-hpa {remote}: {e}")),
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{}\n{}",
            failures.join("\n"),
            daemon.log()
        );
    }
);

/// curl fetching `name` into `local` with its request sent from `source`.
fn curl_from(source: &str, server: SocketAddr, name: &str, local: &Path) -> Result<(), String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--interface", source])
        .args(["--tftp-blksize", "1468", "-o"])
        .arg(local)
        .arg(format!("tftp://{server}/{name}"));
    let done = run(cmd, Duration::from_secs(30));
    if done.success() {
        Ok(())
    } else {
        Err(done.describe())
    }
}

// `--board SERIAL,IMAGE,1,127.0.0.2`: 127.0.0.1 and 127.0.0.3 get an access violation (ERROR
// 2) naming no path; 127.0.0.2 gets DATA, and curl from there the whole file.
tftptest!(
    a_board_with_an_address_is_served_to_that_address_only,
    |dir| {
        if !tools() {
            return;
        }
        let image = build(dir.path(), "pi", Spec::new(Fs::Fat16, Table::Mbr, 3));
        let home = empty_dir(&dir, "home");
        let board = format!("{},127.0.0.2", image.board(SERIAL));
        let daemon = serve(&strings(&["--board", &board]), &home);
        let name = format!("{SERIAL}/start4.elf");
        for stranger in ["127.0.0.1", "127.0.0.3"] {
            let peer = Peer::bind(stranger.parse().unwrap());
            let (code, message, _) = error_for(&peer, daemon.addr(), &name, &[]);
            assert_eq!(code, 2, "{stranger}: {message}");
            assert!(!message.contains(".img"), "{stranger}: {message}");
            let (code, message, _) =
                error_for(&peer, daemon.addr(), &format!("{SERIAL}/no-such"), &[]);
            assert_eq!(code, 2, "{stranger}, a missing file: {message}");
        }
        let peer = Peer::bind("127.0.0.2".parse().unwrap());
        peer.send_to(&raw::rrq(&name, WireMode::Octet, &[]), daemon.addr());
        let (reply, _) = peer
            .recv(Duration::from_secs(2))
            .unwrap_or_else(|| panic!("no answer to 127.0.0.2\n{}", daemon.log()));
        assert_eq!(
            reply.get(..4),
            Some(&[0, 3, 0, 1][..]),
            "127.0.0.2 should get DATA 1: {}",
            raw::describe(&reply)
        );
        assert!(reply[4..] == image.bytes("start4.elf")[..512]);
        if client(CURL).is_some() {
            let local = dir.join("out");
            curl_from("127.0.0.2", daemon.addr(), &name, &local)
                .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
            assert_eq!(compare(&name, &local, image.bytes("start4.elf")), None);
        }
    }
);

// Boards beside `--directory`: a board's serial is its image's, even where the directory has a
// folder of that name; other names, an unknown serial's included, are the directory's. Without
// `--directory` only boards are served, not the current directory.
tftptest!(boards_beside_a_directory_take_their_serials_only, |dir| {
    if !tools() {
        return;
    }
    let image = build(dir.path(), "pi", Spec::new(Fs::Fat16, Table::Mbr, 4));
    let home = empty_dir(&dir, "home");
    let root = empty_dir(&dir, "root");
    crate::util::write_file(&root, "other.txt", b"from the directory\n");
    crate::util::write_file(&root, &format!("{SERIAL}/start4.elf"), b"shadowed\n");
    crate::util::write_file(&root, &format!("{SERIAL}/only-in-dir.txt"), b"shadowed\n");
    crate::util::write_file(&root, "deadbeef/x.txt", b"an unknown serial's\n");
    let board = image.board(SERIAL);
    let daemon = serve(
        &strings(&["--board", &board, "--directory", root.to_str().unwrap()]),
        &home,
    );
    let addr = daemon.addr();
    let start4 = fetch(addr, &format!("{SERIAL}/start4.elf")).unwrap();
    assert!(
        start4 == image.bytes("start4.elf"),
        "start4.elf not the image's"
    );
    assert_eq!(fetch(addr, "other.txt").unwrap(), b"from the directory\n");
    assert_eq!(
        fetch(addr, "deadbeef/x.txt").unwrap(),
        b"an unknown serial's\n"
    );
    let peer = Peer::new(addr);
    for missing in [
        "deadbeef/start4.elf".to_string(),
        format!("{SERIAL}/only-in-dir.txt"),
        format!("{SERIAL}/no-such-file"),
    ] {
        let (code, message, _) = error_for(&peer, addr, &missing, &[]);
        assert_eq!(code, 1, "{missing}: {message}");
    }
    drop(daemon);

    // Boards only, run where other.txt lies.
    crate::util::write_file(&home, "other.txt", b"the current directory\n");
    let daemon = serve(&strings(&["--board", &board]), &home);
    let peer = Peer::new(daemon.addr());
    for missing in ["other.txt", "deadbeef/start4.elf"] {
        let (code, message, _) = error_for(&peer, daemon.addr(), missing, &[]);
        assert_eq!(code, 1, "{missing}: {message}");
    }
    assert!(
        fetch(daemon.addr(), &format!("{SERIAL}/cmdline.txt")).unwrap()
            == image.bytes("cmdline.txt")
    );
});

// What is not a file in an image: a directory, the serial alone (ERROR 2, "Not a regular
// file"); `..` climbs inside the partition, never out of it; a WRQ is refused as read-only and the
// image is not written; netascii text fetched by tftp-hpa comes back as copied in.
tftptest!(names_in_an_image_are_confined_and_never_written, |dir| {
    if !tools() {
        return;
    }
    let image = build(dir.path(), "pi", Spec::new(Fs::Fat32, Table::Mbr, 9));
    let home = empty_dir(&dir, "home");
    crate::util::write_file(&home, "secret.txt", b"beside the image\n");
    let before = sha256_file(&image.path);
    let daemon = serve(&strings(&["--board", &image.board(SERIAL)]), &home);
    let addr = daemon.addr();
    let peer = Peer::new(addr);
    for name in [
        format!("{SERIAL}/overlays"),
        format!("{SERIAL}/firmware/deep/"),
        SERIAL.to_string(),
        format!("{SERIAL}/"),
    ] {
        let (code, message, _) = error_for(&peer, addr, &name, &[]);
        assert_eq!(
            (code, message.as_str()),
            (2, "Not a regular file"),
            "{name}"
        );
    }
    for (name, want) in [
        (format!("{SERIAL}/overlays/../config.txt"), "config.txt"),
        (
            format!("{SERIAL}/../../firmware/./deep/nested/kernel8.img"),
            "firmware/deep/nested/kernel8.img",
        ),
    ] {
        let got = fetch(addr, &name).unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
        assert!(got == image.bytes(want), "{name} is not {want}");
    }
    for name in [
        format!("{SERIAL}/../secret.txt"),
        format!("{SERIAL}/../../../../{}", home.join("secret.txt").display()),
    ] {
        let (code, message, _) = error_for(&peer, addr, &name, &[]);
        assert_eq!(code, 1, "{name}: {message}");
    }
    for mode in [WireMode::Octet, WireMode::Netascii] {
        let name = format!("{SERIAL}/cmdline.txt");
        let (code, message, _) = peer.expect_error(&raw::wrq(&name, mode, &[]), addr);
        assert_eq!(code, 2, "WRQ {name}: {message}");
        assert!(message.to_lowercase().contains("read-only"), "{message}");
    }
    if client(TFTP_HPA).is_some() {
        let local = dir.join("out");
        fetch_tftp_hpa(
            addr,
            &format!("{SERIAL}/config.txt"),
            &local,
            Mode::Netascii,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
        assert_eq!(
            compare("netascii config.txt", &local, image.bytes("config.txt")),
            None
        );
    }
    drop(daemon);
    assert_eq!(sha256_file(&image.path), before, "the image was written");
});

// A board that cannot be served stops the daemon at start, within seconds, its message naming
// the serial and the image: a missing image, a directory, a partition the table lacks, an image
// cut inside its partition (with and without a table), an MBR entry past the image's end, random
// bytes where the FAT should be, and random bytes with no table at all.
tftptest!(
    a_bad_board_is_a_start_up_error_naming_its_serial_and_image,
    |dir| {
        if !tools() {
            return;
        }
        let home = empty_dir(&dir, "home");
        let good = build(dir.path(), "good", Spec::new(Fs::Fat12, Table::Mbr, 5));
        let bare = build(dir.path(), "bare", Spec::new(Fs::Fat12, Table::Bare, 6));
        let image_len = fs::metadata(&good.path).unwrap().len();
        let part_len = image_len - good.offset;
        let copy_of = |image: &Image, name: &str| {
            let path = dir.join(name);
            fs::copy(&image.path, &path).unwrap();
            path
        };

        let cut = copy_of(&good, "cut.img");
        File::options()
            .write(true)
            .open(&cut)
            .and_then(|f| f.set_len(good.offset + part_len / 2))
            .unwrap();
        let bare_cut = copy_of(&bare, "bare-cut.img");
        let bare_len = fs::metadata(&bare_cut).unwrap().len();
        File::options()
            .write(true)
            .open(&bare_cut)
            .and_then(|f| f.set_len(bare_len / 2))
            .unwrap();
        // The first MBR entry's sector count (bytes 12-15 of the entry at 446), four times too big.
        let past_end = copy_of(&good, "past-end.img");
        {
            let f = File::options()
                .read(true)
                .write(true)
                .open(&past_end)
                .unwrap();
            let mut count = [0u8; 4];
            f.read_exact_at(&mut count, 446 + 12).unwrap();
            let count = u32::from_le_bytes(count) * 4;
            f.write_all_at(&count.to_le_bytes(), 446 + 12).unwrap();
        }
        let garbage = dir.join("garbage.img");
        let offset = partitioned(&garbage, Table::Mbr, Fs::Fat12, part_len);
        File::options()
            .write(true)
            .open(&garbage)
            .and_then(|f| f.write_all_at(&pattern(part_len as usize, 99), offset))
            .unwrap();
        let noise = crate::util::write_file(dir.path(), "noise.img", &pattern(4 << 20, 98));
        let a_dir = empty_dir(&dir, "a-directory.img");

        let missing = dir.join("missing.img");
        let cases: [(&str, &Path, u32); 8] = [
            ("a missing image", &missing, 1),
            ("a directory as the image", &a_dir, 1),
            ("partition 3 of a table with one", &good.path, 3),
            ("an image cut in its partition", &cut, 1),
            ("a bare filesystem cut in half", &bare_cut, 1),
            ("an MBR entry past the image's end", &past_end, 1),
            ("random bytes in the partition", &garbage, 1),
            ("random bytes and no table", &noise, 1),
        ];
        for (what, path, part) in cases {
            let board = format!("{SERIAL},{},{part}", path.display());
            let done = start(&strings(&["--board", &board]), &home);
            let file_name = path.file_name().unwrap().to_string_lossy();
            assert_fails_saying(what, &done, &[SERIAL, &file_name]);
            eprintln!("{what}: {}", done.stderr.trim());
        }
        // The good image still starts, so the failures above are the boards'.
        let daemon = serve(&strings(&["--board", &good.board(SERIAL)]), &home);
        assert!(
            fetch(daemon.addr(), &format!("{SERIAL}/config.txt")).unwrap()
                == good.bytes("config.txt")
        );
    }
);

/// Builds an image with three hostile files and corrupts their chains in the FAT: one whose
/// first cluster points to itself, one whose third points back to its first, one whose second
/// points past the last cluster. Each is answered ERROR 0 at once, with or without options;
/// every other file is still served byte-exact, and the hostile ones still refused, after.
fn corrupt_chains_are_refused_at_once(dir: &TempDir, fs: Fs) {
    let hostile = ["self-loop.bin", "loop.bin", "past-the-end.bin"];
    let mut spec = Spec::new(fs, Table::Mbr, 7);
    spec.extra = hostile
        .iter()
        .zip(60..)
        .map(|(name, seed)| (name.to_string(), pattern(40_000, seed)))
        .collect();
    let image = build(dir.path(), &format!("{fs:?}"), spec);
    let g = geometry(&image);
    let (selfie, looped, past) = (
        image.chain("self-loop.bin"),
        image.chain("loop.bin"),
        image.chain("past-the-end.bin"),
    );
    assert!(looped.len() >= 3 && past.len() >= 2, "{looped:?} {past:?}");
    set_fat_entry(&image, selfie[0], selfie[0]);
    set_fat_entry(&image, looped[2], looped[0]);
    let beyond = u32::try_from(g.clusters + 2 + 5).unwrap();
    set_fat_entry(&image, past[1], beyond);
    // The good files are untouched: the library reads them as before.
    let home = empty_dir(dir, &format!("home-{fs:?}"));
    let daemon = serve(&strings(&["--board", &image.board(SERIAL)]), &home);
    let peer = Peer::new(daemon.addr());
    let refused = |round: &str| {
        for name in hostile {
            for options in [&[][..], &[("blksize", "1468"), ("tsize", "0")][..]] {
                let remote = format!("{SERIAL}/{name}");
                let (code, message, took) = error_for(&peer, daemon.addr(), &remote, options);
                assert_eq!(
                    (code, message.as_str()),
                    (0, BAD_PARTITION),
                    "{fs:?} {round} {remote} {options:?}"
                );
                assert!(
                    took < ERROR_WITHIN,
                    "{fs:?} {round} {remote}: ERROR after {took:?}"
                );
            }
        }
    };
    refused("first");
    let good: Vec<(String, Vec<u8>)> = image
        .files
        .iter()
        .filter(|(n, _)| !hostile.contains(&n.as_str()))
        .cloned()
        .collect();
    let failures = fetch_every_file(daemon.addr(), SERIAL, &good);
    assert!(
        failures.is_empty(),
        "{fs:?}: {}\n{}",
        failures.join("\n"),
        daemon.log()
    );
    refused("again");
}

// A FAT32 and a FAT12 (its 12-bit entries packed in pairs) with corrupt chains.
tftptest!(
    corrupt_cluster_chains_get_an_error_and_other_files_are_served,
    |dir| {
        if !tools() {
            return;
        }
        corrupt_chains_are_refused_at_once(&dir, Fs::Fat32);
        corrupt_chains_are_refused_at_once(&dir, Fs::Fat12);
    }
);

// One shard, so every request meets the same chunk cache. The image is rewritten in place with
// another whose files lie elsewhere (a padding file first), its mtime put back: the next
// request gets the new bytes. Then a third is renamed over it: served within 1.5 s, and every
// download meanwhile is one image's file whole or an error, never a mix.
tftptest!(
    an_image_rewritten_in_place_or_renamed_over_is_read_again,
    |dir| {
        if !tools() {
            return;
        }
        let one = build(dir.path(), "one", Spec::new(Fs::Fat32, Table::Mbr, 1));
        let two = build(
            dir.path(),
            "two",
            Spec {
                pad: 100_000,
                ..Spec::new(Fs::Fat32, Table::Mbr, 2)
            },
        );
        let three = build(
            dir.path(),
            "three",
            Spec {
                pad: 300_000,
                ..Spec::new(Fs::Fat32, Table::Mbr, 3)
            },
        );
        let len = fs::metadata(&one.path).unwrap().len();
        assert_eq!(fs::metadata(&two.path).unwrap().len(), len);
        assert_ne!(
            one.chain("fragmented.bin")[0],
            two.chain("fragmented.bin")[0]
        );
        let disk = dir.join("disk.img");
        fs::copy(&one.path, &disk).unwrap();
        let home = empty_dir(&dir, "home");
        let board = format!("{SERIAL},{}", disk.display());
        let daemon = serve(&strings(&["--board", &board, "--shards", "1"]), &home);
        let addr = daemon.addr();
        let start4 = format!("{SERIAL}/start4.elf");
        assert!(fetch(addr, &start4).unwrap() == one.bytes("start4.elf"));
        assert!(
            fetch(addr, &format!("{SERIAL}/fragmented.bin")).unwrap()
                == one.bytes("fragmented.bin")
        );

        let before = fs::metadata(&disk).unwrap();
        thread::sleep(Duration::from_millis(20));
        {
            let f = File::options().write(true).open(&disk).unwrap();
            f.write_all_at(&fs::read(&two.path).unwrap(), 0).unwrap();
            f.set_modified(before.modified().unwrap()).unwrap();
        }
        let after = fs::metadata(&disk).unwrap();
        assert_eq!(after.len(), before.len());
        assert_eq!(after.modified().unwrap(), before.modified().unwrap());
        for name in ["start4.elf", "fragmented.bin", "cmdline.txt"] {
            let got = fetch(addr, &format!("{SERIAL}/{name}"))
                .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
            assert!(
                got == two.bytes(name),
                "{name} after the rewrite in place: {} bytes, {}; the old one is {}",
                got.len(),
                sha256(&got),
                sha256(one.bytes(name))
            );
        }

        let new = dir.join("new.img");
        fs::copy(&three.path, &new).unwrap();
        fs::rename(&new, &disk).unwrap();
        let renamed = Instant::now();
        loop {
            match fetch(addr, &start4) {
                Ok(got) if got == three.bytes("start4.elf") => break,
                Ok(got) => assert!(
                    got == two.bytes("start4.elf"),
                    "neither image's start4.elf: {} bytes, {}",
                    got.len(),
                    sha256(&got)
                ),
                Err(e) => eprintln!("during the rename: {e}"),
            }
            assert!(
                renamed.elapsed() < Duration::from_millis(1500),
                "the renamed image not served after 1.5 s\n{}",
                daemon.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "the renamed image served {:?} after the rename",
            renamed.elapsed()
        );
        let failures = fetch_every_file(addr, SERIAL, &three.files);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
);

backends!(an_image_changed_mid_transfer_is_never_served_as_a_mix);

/// A download of start4.elf paused at block 50 (of 4883 at 512 bytes) while the image changes.
/// Renamed over: the transfer finishes with the old image's bytes, whole, and the next one gets
/// the new. Rewritten in place (same size, its files elsewhere): the transfer ends with "File
/// changed while being served", as for a plain file, never as a success with a mix; the next one
/// gets the new bytes.
fn an_image_changed_mid_transfer_is_never_served_as_a_mix(backend: Backend) {
    if !tools() {
        return;
    }
    let dir = TempDir::new(&format!("images-changed-mid-transfer-{backend}"));
    let one = build(dir.path(), "one", Spec::new(Fs::Fat32, Table::Mbr, 1));
    let two = build(
        dir.path(),
        "two",
        Spec {
            pad: 100_000,
            ..Spec::new(Fs::Fat32, Table::Mbr, 2)
        },
    );
    let disk = dir.join("disk.img");
    fs::copy(&one.path, &disk).unwrap();
    let home = empty_dir(&dir, "home");
    let mut args = strings(&backend.args());
    args.extend([
        "--board".to_string(),
        format!("{SERIAL},{}", disk.display()),
    ]);
    let daemon = serve(&args, &home);
    backend.assert_serving(&daemon.log());
    let addr = daemon.addr();
    let start4 = format!("{SERIAL}/start4.elf");
    let paused = |change: &mut dyn FnMut()| {
        let mut change = Some(change);
        raw::download(addr, &start4, WireMode::Octet, &[], |block| {
            if block == 50 {
                if let Some(change) = change.take() {
                    change();
                }
            }
        })
    };

    let got = paused(&mut || {
        let new = dir.join("new.img");
        fs::copy(&two.path, &new).unwrap();
        fs::rename(&new, &disk).unwrap();
    })
    .unwrap_or_else(|e| panic!("renamed over on {backend}: {e}\n{}", daemon.log()));
    assert!(
        got.data == one.bytes("start4.elf"),
        "renamed over on {backend}: not the old image's start4.elf ({} bytes, {})",
        got.data.len(),
        sha256(&got.data)
    );
    assert!(fetch(addr, &start4).unwrap() == two.bytes("start4.elf"));

    let result = paused(&mut || {
        let f = File::options().write(true).open(&disk).unwrap();
        f.write_all_at(&fs::read(&one.path).unwrap(), 0).unwrap();
    });
    match result {
        Err(e) => assert!(
            e.contains("File changed while being served"),
            "rewritten in place on {backend}: {e}"
        ),
        Ok(got) => panic!(
            "rewritten in place on {backend}: served as a success ({} bytes, {}; {})",
            got.data.len(),
            sha256(&got.data),
            if got.data == two.bytes("start4.elf") {
                "the old bytes"
            } else {
                "a mix"
            }
        ),
    }
    assert!(fetch(addr, &start4).unwrap() == one.bytes("start4.elf"));
}

// nobodd's configuration (`--nobodd-config`): `$XDG_CONFIG_HOME/nobodd/nobodd.conf` with a
// board whose image is relative to it, and an includedir whose file adds a board limited to
// 127.0.0.2; served with no --board at all. Without the flag the files are not read. A
// `[board:...]` section without an image, with a bad ip or partition, or with an unknown key
// stops the start naming the file.
tftptest!(boards_in_nobodd_configuration_files_are_served, |dir| {
    if !tools() {
        return;
    }
    let home = empty_dir(&dir, "home");
    let conf_dir = empty_dir(&dir, "home/nobodd");
    let include = empty_dir(&dir, "conf.d");
    let image = build(&conf_dir, "disk", Spec::new(Fs::Fat16, Table::Logical, 8));
    let conf = conf_dir.join("nobodd.conf");
    fs::write(
        &conf,
        format!(
            "# as nobodd-prep writes one\n[tftp]\nincludedir = {}\n\n\
             [board:{SERIAL}]\nimage = disk.img\npartition = 5\n",
            include.display()
        ),
    )
    .unwrap();
    fs::write(
        include.join("limited.conf"),
        "[board:00b0a7d5]\nimage = ../home/nobodd/disk.img\npartition = 5\nip = 127.0.0.2\n",
    )
    .unwrap();
    let plain = serve(&[], &home);
    let (code, _, _) = error_for(
        &Peer::new(plain.addr()),
        plain.addr(),
        &format!("{SERIAL}/config.txt"),
        &[],
    );
    assert_eq!(code, 1, "nobodd's files are read only when asked");
    drop(plain);
    let nobodd_config = strings(&["--nobodd-config"]);
    let daemon = serve(&nobodd_config, &home);
    let failures = fetch_every_file(daemon.addr(), SERIAL, &image.files);
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        daemon.log()
    );
    let peer = Peer::new(daemon.addr());
    let (code, message, _) = error_for(&peer, daemon.addr(), "00b0a7d5/cmdline.txt", &[]);
    assert_eq!(
        code, 2,
        "the included board is for 127.0.0.2 only: {message}"
    );
    let peer2 = Peer::bind("127.0.0.2".parse().unwrap());
    peer2.send_to(
        &raw::rrq("00b0a7d5/cmdline.txt", WireMode::Octet, &[]),
        daemon.addr(),
    );
    let (reply, _) = peer2
        .recv(Duration::from_secs(2))
        .expect("an answer to 127.0.0.2");
    assert_eq!(
        reply.get(..4),
        Some(&[0, 3, 0, 1][..]),
        "{}",
        raw::describe(&reply)
    );
    drop(daemon);

    // $HOME/.config when XDG_CONFIG_HOME is unset.
    let other_home = empty_dir(&dir, "other-home");
    let dot_config = empty_dir(&dir, "other-home/.config/nobodd");
    fs::write(
        dot_config.join("nobodd.conf"),
        format!(
            "[board:{SERIAL}]\nimage = {}\npartition = 5\n",
            image.path.display()
        ),
    )
    .unwrap();
    let daemon = serve_with(&nobodd_config, |cmd| {
        cmd.env_remove("XDG_CONFIG_HOME")
            .env("HOME", &other_home)
            .current_dir(&other_home);
    });
    assert!(
        fetch(daemon.addr(), &format!("{SERIAL}/config.txt")).unwrap() == image.bytes("config.txt")
    );
    drop(daemon);

    fs::remove_file(include.join("limited.conf")).unwrap();
    for (what, section) in [
        ("no image line", "[board:1234]\npartition = 2\n"),
        (
            "a bad ip",
            "[board:1234]\nimage = disk.img\nip = 127.0.0.300\n",
        ),
        (
            "a bad partition",
            "[board:1234]\nimage = disk.img\npartition = first\n",
        ),
        // Not a key to tell which file it came from.
        ("an empty section", "[board:1234]\n"),
        (
            "an unknown key",
            "[board:1234]\nimage = disk.img\npartiton = 5\n",
        ),
    ] {
        fs::write(&conf, section).unwrap();
        let done = start(&nobodd_config, &home);
        eprintln!("{what}: {}", done.stderr.trim());
        assert_fails_saying(what, &done, &[&conf.to_string_lossy()]);
    }
});

/// nobodd-tftpd (`program`) serving `boards` on a free port of 127.0.0.1, once it answers; its
/// configuration from the empty `home`. A [`Daemon`]: dropped, it is killed by its PID, even
/// when the test fails.
fn nobodd(program: &OsStr, boards: &[String], home: &Path) -> Daemon {
    Daemon::spawn(IpAddr::V4(Ipv4Addr::LOCALHOST), |port| {
        let mut cmd = Command::new(program);
        cmd.args(["--listen", "127.0.0.1", "--port", &port.to_string()]);
        for board in boards {
            cmd.arg("--board").arg(board);
        }
        cmd.env("XDG_CONFIG_HOME", home)
            .env("HOME", home)
            .current_dir(home);
        cmd
    })
}

// nobodd-tftpd (RINGTFTP_NOBODD names it) and ringtftpd serve the same boards: every file of
// a FAT32 in MBR partition 1, a FAT32 in GPT partition 2, a FAT16 in logical partition 5 and a
// FAT12 fetched from both by tftp-hpa, SHA-256 for SHA-256 (and equal to what was copied in); a
// missing file is ERROR 1 from both.
tftptest!(every_file_matches_nobodd_tftpd_byte_for_byte, |dir| {
    let Some(program) = std::env::var_os("RINGTFTP_NOBODD").filter(|p| !p.is_empty()) else {
        skip::missing(
            "nobodd-tftpd (RINGTFTP_NOBODD names it)",
            "python3 -m venv target/nobodd-venv && target/nobodd-venv/bin/pip install nobodd; \
             RINGTFTP_NOBODD=$PWD/target/nobodd-venv/bin/nobodd-tftpd",
        );
        return;
    };
    if !tools() || client(TFTP_HPA).is_none() {
        return;
    }
    let boards = [
        ("1234abcd", Spec::new(Fs::Fat32, Table::Mbr, 70)),
        ("2234abcd", Spec::new(Fs::Fat32, Table::Gpt, 71)),
        ("3234abcd", Spec::new(Fs::Fat16, Table::Logical, 72)),
        ("4234abcd", Spec::new(Fs::Fat12, Table::Mbr, 73)),
    ];
    let images: Vec<(&str, Image)> = boards
        .iter()
        .map(|(serial, spec)| (*serial, build(dir.path(), serial, spec.clone())))
        .collect();
    let args: Vec<String> = images
        .iter()
        .flat_map(|(serial, image)| ["--board".to_string(), image.board(serial)])
        .collect();
    let nobodd_boards: Vec<String> = images.iter().map(|(s, i)| i.board(s)).collect();
    let home = empty_dir(&dir, "home");
    let reference = nobodd(&program, &nobodd_boards, &home);
    let ours = serve(&args, &home);
    let local = dir.join("out");
    let mut failures = Vec::new();
    let mut compared = 0;
    for (serial, image) in &images {
        for (name, bytes) in &image.files {
            let remote = format!("{serial}/{name}");
            let mut sums = Vec::new();
            for (server, daemon) in [("nobodd", &reference), ("ringtftpd", &ours)] {
                let _ = fs::remove_file(&local);
                match fetch_tftp_hpa(daemon.addr(), &remote, &local, Mode::Octet) {
                    Ok(()) => sums.push(sha256_file(&local)),
                    Err(e) => {
                        failures.push(format!("{server} {remote}: {e}"));
                        sums.push(format!("(failed: {server})"));
                    }
                }
            }
            compared += 1;
            if sums[0] != sums[1] || sums[1] != sha256(bytes) {
                failures.push(format!(
                    "{remote}: nobodd {}, ringtftpd {}, copied in {}",
                    sums[0],
                    sums[1],
                    sha256(bytes)
                ));
            }
        }
    }
    for (server, daemon) in [("nobodd", &reference), ("ringtftpd", &ours)] {
        let peer = Peer::new(daemon.addr());
        let (code, message, _) = error_for(&peer, daemon.addr(), "1234abcd/no-such-file", &[]);
        if code != 1 {
            failures.push(format!(
                "{server}: a missing file got ERROR {code} {message:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {compared} files differ or failed:\n{}\n--- nobodd's log ---\n{}",
        failures.len(),
        failures.join("\n"),
        reference.log()
    );
});

/// A room of Raspberry Pi 4s booting from one image: loadgen's `raspberrypi` profile (a `tsize`
/// probe abandoned after the OACK, then the download lock-step in 1024-byte blocks) runs a
/// boot sequence like `examples/pi-room.toml` on 40 machines powered on over a second, every
/// file under the board's serial and checked against its SHA-256: every machine boots.
#[test]
fn a_room_of_pis_boots_from_one_image_with_loadgen() {
    if !tools() {
        return;
    }
    let Some(loadgen) = crate::util::loadgen() else {
        return;
    };
    let dir = TempDir::new("images-room");
    let mut spec = Spec::new(Fs::Fat32, Table::Mbr, 61);
    spec.extra = vec![
        ("bcm2711-rpi-4-b.dtb".into(), pattern(52_000, 62)),
        ("vmlinuz".into(), pattern(1 << 20, 63)),
        ("initrd.img".into(), pattern(2 << 20, 64)),
    ];
    let image = build(dir.path(), "room", spec);
    let steps = [
        "start4.elf",
        "fixup4.dat",
        "config.txt",
        "bcm2711-rpi-4-b.dtb",
        "cmdline.txt",
        "vmlinuz",
        "initrd.img",
    ];
    let mut scenario = String::from("profile = \"raspberrypi\"\n");
    for step in steps {
        scenario += &format!(
            "\n[[step]]\nfile = \"{SERIAL}/{step}\"\nsha256 = \"{}\"\n",
            sha256(image.bytes(step))
        );
    }
    let scenario_file = dir.join("room.toml");
    fs::write(&scenario_file, scenario).expect("write the scenario");
    let home = empty_dir(&dir, "home");
    let daemon = serve(&strings(&["--board", &image.board(SERIAL)]), &home);
    let mut cmd = Command::new(loadgen);
    cmd.arg(daemon.addr().to_string())
        .arg("--scenario")
        .arg(&scenario_file)
        .args(["--power-on", "40", "--over", "1s", "--quiet"]);
    let done = run(cmd, Duration::from_secs(120));
    assert!(done.success(), "{}\n{}", done.describe(), daemon.log());
    println!("{}", done.stdout);
    assert!(
        done.stdout.contains("40 booted, 0 failed"),
        "{}",
        done.stdout
    );
}

/// A loop device made read-only from an image, detached on drop.
struct Loop(String);

impl Loop {
    /// `losetup --find --show --read-only IMAGE`; `None` where this host cannot (not root, no
    /// loop driver).
    fn attach(image: &Path) -> Option<Loop> {
        let mut cmd = Command::new(program("losetup")?);
        cmd.args(["--find", "--show", "--read-only"]).arg(image);
        let done = run(cmd, TOOL_TIMEOUT);
        done.success().then(|| Loop(done.stdout.trim().to_string()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(losetup) = program("losetup") {
            let mut cmd = Command::new(losetup);
            cmd.args(["--detach", &self.0]);
            run(cmd, TOOL_TIMEOUT);
        }
    }
}

/// A board's image may be a block device (an SD card in a reader, a disk, here a loop device
/// over the image): its size is found by seeking to its end, and every file is served
/// byte-exact through the same fixed reads.
#[test]
fn a_block_device_is_served_like_an_image_file() {
    if !tools() {
        return;
    }
    if !crate::util::is_root() {
        skip::missing("a loop device needs root", "run the tests as root");
        return;
    }
    let dir = TempDir::new("images-block-device");
    let image = build(dir.path(), "dev", Spec::new(Fs::Fat32, Table::Mbr, 71));
    let Some(device) = Loop::attach(&image.path) else {
        skip::unsupported("losetup cannot attach a loop device here");
        return;
    };
    let home = empty_dir(&dir, "home");
    let board = format!("{SERIAL},{},1", device.0);
    let daemon = serve(&strings(&["--board", &board]), &home);
    let failures = fetch_every_file(daemon.addr(), SERIAL, &image.files);
    assert!(failures.is_empty(), "{failures:#?}\n{}", daemon.log());
}

/// `--client-dirs` and `--map-file` shape the directory's names: given with boards and no
/// `--directory`, they would silently do nothing, so the start fails and says why.
#[test]
fn directory_options_without_a_directory_are_refused_beside_boards() {
    if !tools() {
        return;
    }
    let dir = TempDir::new("images-directory-options");
    let image = build(dir.path(), "opts", Spec::new(Fs::Fat12, Table::Bare, 81));
    let home = empty_dir(&dir, "home");
    let map = dir.join("tftpd.map");
    fs::write(&map, "rg \\\\ /\n").expect("write the map file");
    let board = image.board(SERIAL);
    for extra in [
        vec!["--client-dirs".to_string()],
        vec!["--map-file".to_string(), map.display().to_string()],
    ] {
        let mut args = strings(&["--board", &board]);
        args.extend(extra);
        let done = start(&args, &home);
        assert_fails_saying(
            "a directory option without --directory",
            &done,
            &["--directory"],
        );
    }
}

/// nobodd-tftpd's own spelling of the address and port (`--listen ADDR --port PORT`) works
/// unchanged, so a unit's `ExecStart=` moves over by changing the program's name.
#[test]
fn nobodd_tftpd_s_command_line_works_unchanged() {
    if !tools() {
        return;
    }
    let dir = TempDir::new("images-nobodd-command-line");
    let image = build(dir.path(), "cmd", Spec::new(Fs::Fat16, Table::Mbr, 91));
    let home = empty_dir(&dir, "home");
    let board = image.board(SERIAL);
    let daemon = Daemon::spawn(IpAddr::V4(Ipv4Addr::LOCALHOST), |port| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringtftpd"));
        cmd.args(["--listen", "127.0.0.1", "--port", &port.to_string()])
            .args(["--board", &board])
            .env("NO_COLOR", "1")
            .env("XDG_CONFIG_HOME", &home)
            .current_dir(&home);
        cmd
    });
    let name = format!("{SERIAL}/config.txt");
    assert!(fetch(daemon.addr(), &name).unwrap() == image.bytes("config.txt"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringtftpd"));
    cmd.args(["--listen", "systemd", "--board", &board])
        .env("NO_COLOR", "1")
        .env_remove("LISTEN_FDS")
        .env("XDG_CONFIG_HOME", &home)
        .current_dir(&home);
    let done = run(cmd, START_TIMEOUT);
    assert_fails_saying("--listen systemd without a socket", &done, &["LISTEN_FDS"]);
}
