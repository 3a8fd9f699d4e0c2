//! Downloads with Debian's real clients (tftp-hpa, atftp, curl, busybox), compared by SHA-256
//! with the served files: block boundaries, options, windows, rollover, netascii and IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use ringtftp::packet::Mode as WireMode;

use crate::util::raw;
use crate::util::{
    client, fetch_atftp, fetch_busybox, fetch_curl, fetch_curl_with, fetch_tftp_hpa, pattern,
    sha256, sha256_file, write_file, Backend, CurlOptions, Daemon, Mode, TempDir, ATFTP, BUSYBOX,
    CURL, TFTP_HPA,
};

/// Sizes around the 512-byte block: an empty file is one empty DATA; 512 needs a second, empty,
/// block; 511 and 513 sit either side; 2936 is two blocks of 1468 (the clients that ask for
/// it), then an empty third; 1 MiB is 2048 blocks of 512.
const SIZES: [usize; 7] = [0, 1, 511, 512, 513, 2 * 1468, 1 << 20];

/// One way to run one real client.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// No options at all (tftp-hpa never sends any).
    TftpHpa,
    Atftp(&'static [(&'static str, &'static str)]),
    Curl(CurlOptions),
    Busybox(Option<u16>),
}

impl Client {
    fn program(self) -> &'static str {
        match self {
            Client::TftpHpa => TFTP_HPA,
            Client::Atftp(_) => ATFTP,
            Client::Curl(_) => CURL,
            Client::Busybox(_) => BUSYBOX,
        }
    }

    fn fetch(self, addr: SocketAddr, remote: &str, local: &Path) -> Result<(), String> {
        match self {
            Client::TftpHpa => fetch_tftp_hpa(addr, remote, local, Mode::Octet),
            Client::Atftp(options) => fetch_atftp(addr, remote, local, options),
            Client::Curl(options) => fetch_curl_with(addr, remote, local, options),
            Client::Busybox(blksize) => fetch_busybox(addr, remote, local, blksize),
        }
    }
}

/// Every client in its plain form and with the options it supports.
const CLIENTS: [(&str, Client); 9] = [
    ("tftp-hpa", Client::TftpHpa),
    ("atftp", Client::Atftp(&[])),
    (
        "atftp-tsize-blksize1428",
        Client::Atftp(&[("tsize", ""), ("blksize", "1428")]),
    ),
    (
        // curl's default RRQ: tsize 0, blksize 512, timeout 6.
        "curl",
        Client::Curl(CurlOptions {
            blksize: None,
            no_options: false,
            netascii: false,
        }),
    ),
    (
        "curl-blksize1468",
        Client::Curl(CurlOptions {
            blksize: Some(1468),
            no_options: false,
            netascii: false,
        }),
    ),
    (
        "curl-no-options",
        Client::Curl(CurlOptions {
            blksize: None,
            no_options: true,
            netascii: false,
        }),
    ),
    // busybox always sends tsize 0.
    ("busybox", Client::Busybox(None)),
    ("busybox-blksize1468", Client::Busybox(Some(1468))),
    // RFC 7440 windows of every size, the empty file and exact multiples included.
    (
        "atftp-windowsize16-blksize1468",
        Client::Atftp(&[("tsize", ""), ("blksize", "1468"), ("windowsize", "16")]),
    ),
];

/// Writes one file per size into `root`; returns `(name, sha256)` for each.
fn serve_sizes(root: &Path) -> Vec<(String, String)> {
    SIZES
        .iter()
        .enumerate()
        .map(|(seed, &len)| {
            let name = format!("size-{len}");
            let bytes = pattern(len, seed as u64);
            write_file(root, &name, &bytes);
            (name, sha256(&bytes))
        })
        .collect()
}

/// Fetches every file with every installed client in `clients`; returns the failures, one
/// line each, and how many downloads were tried.
fn fetch_all(
    addr: SocketAddr,
    files: &[(String, String)],
    clients: &[(&str, Client)],
    out: &TempDir,
) -> (Vec<String>, usize) {
    let mut failures = Vec::new();
    let mut tried = 0;
    for (label, how) in clients {
        if client(how.program()).is_none() {
            continue;
        }
        for (name, expected) in files {
            tried += 1;
            let local = out.join(format!("{label}-{}-{name}", addr.ip()).replace(':', "_"));
            match how.fetch(addr, name, &local) {
                Err(e) => failures.push(format!("{label} {name}: {e}")),
                Ok(()) if !local.exists() => {
                    failures.push(format!("{label} {name}: no local file written"))
                }
                Ok(()) => {
                    let got = sha256_file(&local);
                    if &got != expected {
                        let len = local.metadata().map(|m| m.len()).unwrap_or(0);
                        failures.push(format!(
                            "{label} {name}: SHA-256 {got} ({len} bytes), expected {expected}"
                        ));
                    }
                }
            }
        }
    }
    (failures, tried)
}

backends!(
    every_client_fetches_every_size,
    atftp_windows_fetch_one_mib,
    wds_variable_window_fetches_one_mib,
    atftp_window_larger_than_its_socket_buffer_completes,
    forty_mib_at_512_byte_blocks_rolls_over,
);

fn every_client_fetches_every_size(backend: Backend) {
    let root = TempDir::new(&format!("every_client_fetches_every_size-{backend}"));
    let out = TempDir::new(&format!("every_client_fetches_every_size-{backend}-out"));
    let files = serve_sizes(root.path());
    let daemon = Daemon::start_backend(backend, root.path(), &[]);
    let (failures, tried) = fetch_all(daemon.addr(), &files, &CLIENTS, &out);
    assert!(
        failures.is_empty(),
        "{} of {tried} downloads on {backend} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// WDS's variable window (`msftwindow`): the OACK grants it, and a client whose ACKs ask for
/// windows of 4 up to 64 blocks (doubling after each whole window) fetches 1 MiB byte-exact; the
/// server's log line tells it was windowed.
fn wds_variable_window_fetches_one_mib(backend: Backend) {
    let root = TempDir::new(&format!("wds_variable_window-{backend}"));
    let bytes = pattern(1 << 20, 43);
    write_file(root.path(), "boot.wim", &bytes);
    let daemon = Daemon::start_backend(backend, root.path(), &[]);
    let options = [
        ("blksize", "1456"),
        ("tsize", "0"),
        ("windowsize", "4"),
        ("msftwindow", "31416"),
    ];
    let got = raw::download(daemon.addr(), "boot.wim", WireMode::Octet, &options, |_| {})
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
    assert_eq!(sha256(&got.data), sha256(&bytes));
    assert!(
        got.oack.contains(&("msftwindow".into(), "27182".into())),
        "{:?}",
        got.oack
    );
    let line = daemon
        .wait_for_log(&["transfer complete", "boot.wim"], Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no log line:\n{}", daemon.log()));
    assert!(line.contains("msftwindow=31416"), "{line}");
}

fn atftp_windows_fetch_one_mib(backend: Backend) {
    if client(ATFTP).is_none() {
        return;
    }
    let root = TempDir::new(&format!("atftp_windows_fetch_one_mib-{backend}"));
    let out = TempDir::new(&format!("atftp_windows_fetch_one_mib-{backend}-out"));
    let bytes = pattern(1 << 20, 42);
    let expected = sha256(&bytes);
    let mut cases = Vec::new();
    for blksize in ["1468", "8192"] {
        for windowsize in ["4", "16", "64"] {
            // One name per case, so each case's log line can be found.
            let name = format!("mib-{blksize}-{windowsize}");
            write_file(root.path(), &name, &bytes);
            cases.push((name, blksize, windowsize));
        }
    }
    let daemon = Daemon::start_backend(backend, root.path(), &[]);
    let mut failures = Vec::new();
    for (name, blksize, windowsize) in &cases {
        let local = out.join(name);
        let options = [
            ("blksize", *blksize),
            ("windowsize", *windowsize),
            ("tsize", ""),
        ];
        if let Err(e) = fetch_atftp(daemon.addr(), name, &local, &options) {
            failures.push(format!("{name}: {e}"));
            continue;
        }
        let got = sha256_file(&local);
        if got != expected {
            failures.push(format!("{name}: SHA-256 {got}, expected {expected}"));
            continue;
        }
        // The window was granted, not silently refused (atftp then falls back to lock-step),
        // shrunk only to the server's 96 KiB cap on a window's bytes.
        let asked: usize = windowsize.parse().expect("window");
        let block: usize = blksize.parse().expect("blksize");
        let granted = asked.min(96 * 1024 / block).max(1);
        let needles = [
            "transfer complete",
            &format!("file={name} "),
            &format!("blksize={blksize} "),
            &format!("windowsize={granted} "),
        ];
        if daemon
            .wait_for_log(&needles, Duration::from_secs(2))
            .is_none()
        {
            failures.push(format!("{name}: no log line with {needles:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} windowed downloads on {backend} failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// A window larger than the client's receive buffer (64 x 8 KiB = 512 KiB against Linux's
/// default 208 KiB `rmem_default`) loses its tail on every send, even on loopback. atftp acknowledges
/// only a complete window, or the last in-order block when it sees a gap, so the server must
/// recover from those losses without waiting out a backed-off timeout each time. Done right,
/// this download takes about a second. A transfer stuck at one round per timeout (about 20
/// blocks every 4 s) would need minutes. The harness then kills atftp at its usual 60 s
/// deadline; that deadline is meant to catch a livelock, not to measure speed.
fn atftp_window_larger_than_its_socket_buffer_completes(backend: Backend) {
    if client(ATFTP).is_none() {
        return;
    }
    const LEN: usize = 40 << 20;
    let root = TempDir::new(&format!(
        "atftp_window_larger_than_its_socket_buffer-{backend}"
    ));
    let out = TempDir::new(&format!(
        "atftp_window_larger_than_its_socket_buffer-{backend}-out"
    ));
    let bytes = pattern(LEN, 864);
    write_file(root.path(), "big", &bytes);
    let daemon = Daemon::start_backend(backend, root.path(), &[]);
    let local = out.join("big");
    let start = Instant::now();
    let options = [("blksize", "8192"), ("windowsize", "64"), ("tsize", "")];
    fetch_atftp(daemon.addr(), "big", &local, &options).unwrap_or_else(|e| {
        let size = local.metadata().map(|m| m.len()).unwrap_or(0);
        panic!(
            "{e}\n({size} of {LEN} bytes after {:.1?}; server log below)",
            start.elapsed()
        )
    });
    eprintln!(
        "40 MiB with atftp, blksize 8192, windowsize 64, on {backend} in {:.1?}",
        start.elapsed()
    );
    let got = std::fs::read(&local).expect("read the download");
    assert!(
        got == bytes,
        "40 MiB windowed download on {backend} differs"
    );
}

/// 40 MiB at 512-byte blocks is 81920 full blocks and an empty 81921st: the block number wraps
/// past 65535 back to 0 (as tftp-hpa and every PXE ROM expect).
fn forty_mib_at_512_byte_blocks_rolls_over(backend: Backend) {
    if client(CURL).is_none() {
        return;
    }
    const LEN: usize = 40 << 20;
    let root = TempDir::new(&format!(
        "forty_mib_at_512_byte_blocks_rolls_over-{backend}"
    ));
    let out = TempDir::new(&format!(
        "forty_mib_at_512_byte_blocks_rolls_over-{backend}-out"
    ));
    let bytes = pattern(LEN, 40);
    write_file(root.path(), "big", &bytes);
    let daemon = Daemon::start_backend(backend, root.path(), &[]);
    let local = out.join("big");
    let start = Instant::now();
    // curl asks `blksize 512` (and tsize) by default: the OACK path, 512-byte blocks.
    fetch_curl(daemon.addr(), "big", &local, None).unwrap_or_else(|e| panic!("{backend}: {e}"));
    eprintln!(
        "40 MiB at 512-byte blocks on {backend} in {:.1?}",
        start.elapsed()
    );
    let got = std::fs::read(&local).expect("read the download");
    assert_eq!(got.len(), LEN, "length of the download on {backend}");
    assert!(
        got == bytes,
        "40 MiB download on {backend} differs from the served file"
    );
    let line = daemon.wait_for_log(
        &[
            "transfer complete",
            "file=big ",
            "bytes=41943040 ",
            "blocks=81921 ",
        ],
        Duration::from_secs(2),
    );
    assert!(
        line.is_some(),
        "no log line for 81921 blocks; log:\n{}",
        daemon.log()
    );
}

/// A text with every line end netascii cares about. The first LF falls at encoded offset 511
/// (its CR LF straddles blocks 1 and 2) and a bare CR at 1023 (its CR NUL straddles 2 and 3).
fn netascii_text() -> Vec<u8> {
    let mut text = vec![b'a'; 511];
    text.push(b'\n');
    text.extend(std::iter::repeat_n(b'b', 510));
    text.push(b'\r');
    text.extend_from_slice(b"after a bare CR\n");
    for i in 0..40 {
        text.extend_from_slice(format!("unix line {i}\n").as_bytes());
        text.extend_from_slice(format!("dos line {i}\r\n").as_bytes());
        text.extend_from_slice(format!("old mac line {i}\r").as_bytes());
    }
    text.extend_from_slice(b"\r\r\n\n\r\0tab\there, ends without a newline");
    text
}

/// RFC 1350 netascii as the reference servers write it, computed independently of the
/// library: every LF becomes CR LF and every CR becomes CR NUL.
fn netascii_encode(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() * 2);
    for &b in raw {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            _ => out.push(b),
        }
    }
    out
}

// A netascii transfer is served from its encoding in memory, not read from the file, and IPv6
// transfer sockets are each executor's too.
backends!(
    netascii_text_round_trips_through_tftp_hpa,
    curl_receives_netascii_wire_bytes,
    every_client_fetches_over_ipv6_loopback,
);

fn netascii_text_round_trips_through_tftp_hpa(backend: Backend) {
    if client(TFTP_HPA).is_none() {
        return;
    }
    let root = TempDir::new(&format!("netascii_round_trips-{backend}"));
    let out = TempDir::new(&format!("netascii_round_trips-{backend}-out"));
    let text = netascii_text();
    write_file(root.path(), "notes.txt", &text);
    let daemon = Daemon::start_backend(backend, root.path(), &[]);
    let local = out.join("notes.txt");
    fetch_tftp_hpa(daemon.addr(), "notes.txt", &local, Mode::Netascii)
        .unwrap_or_else(|e| panic!("{backend}: {e}"));
    // tftp-hpa decodes CR LF -> LF and CR NUL -> CR, so it gets the original back.
    assert_eq!(
        sha256_file(&local),
        sha256(&text),
        "decoded netascii text on {backend}"
    );
}

fn curl_receives_netascii_wire_bytes(backend: Backend) {
    if client(CURL).is_none() {
        return;
    }
    let root = TempDir::new(&format!("curl_netascii_wire_bytes-{backend}"));
    let out = TempDir::new(&format!("curl_netascii_wire_bytes-{backend}-out"));
    let text = netascii_text();
    write_file(root.path(), "notes.txt", &text);
    let expected = sha256(&netascii_encode(&text));
    let daemon = Daemon::start_backend(backend, root.path(), &[]);
    for no_options in [false, true] {
        let local = out.join(format!("notes-{no_options}.txt"));
        let options = CurlOptions {
            blksize: None,
            no_options,
            netascii: true,
        };
        fetch_curl_with(daemon.addr(), "notes.txt", &local, options)
            .unwrap_or_else(|e| panic!("{backend}: {e}"));
        // curl does not decode: it writes what came off the wire.
        assert_eq!(
            sha256_file(&local),
            expected,
            "netascii wire bytes on {backend} (curl, no_options={no_options})"
        );
    }
}

// RFC 2349: the tsize of a netascii transfer is the length on the wire, not on disk.
tftptest!(netascii_tsize_is_the_encoded_length, |root| {
    let text = netascii_text();
    let encoded = netascii_encode(&text);
    assert_ne!(encoded.len(), text.len());
    write_file(root.path(), "notes.txt", &text);
    let daemon = Daemon::start(root.path(), &[]);
    for (mode, expected) in [(WireMode::Netascii, &encoded), (WireMode::Octet, &text)] {
        let got = raw::download(daemon.addr(), "notes.txt", mode, &[("tsize", "0")], |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        let tsize = got.oack.iter().find(|(name, _)| name == "tsize");
        assert_eq!(
            tsize.map(|(_, v)| v.as_str()),
            Some(expected.len().to_string().as_str()),
            "tsize in the OACK of a {} transfer; OACK {:?}",
            mode.as_str(),
            got.oack
        );
        assert!(
            &got.data == expected,
            "{} bytes on the wire differ from the expected {} bytes",
            mode.as_str(),
            expected.len()
        );
    }
});

/// Whether this host has an IPv6 loopback (a container may not).
fn ipv6_loopback() -> bool {
    UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

fn every_client_fetches_over_ipv6_loopback(backend: Backend) {
    if !ipv6_loopback() {
        crate::util::skip::unsupported("no IPv6 loopback (::1) on this host");
        return;
    }
    let root = TempDir::new(&format!(
        "every_client_fetches_over_ipv6_loopback-{backend}"
    ));
    let out = TempDir::new(&format!(
        "every_client_fetches_over_ipv6_loopback-{backend}-out"
    ));
    let files: Vec<(String, String)> = serve_sizes(root.path())
        .into_iter()
        .filter(|(name, _)| ["size-513", "size-2936", "size-1048576"].contains(&name.as_str()))
        .collect();
    let daemon = Daemon::start_on(
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        root.path(),
        &backend.args(),
    );
    backend.assert_serving(&daemon.log());
    assert!(daemon.addr().is_ipv6());
    let clients = [CLIENTS[0], CLIENTS[2], CLIENTS[4], CLIENTS[7]];
    let (failures, tried) = fetch_all(daemon.addr(), &files, &clients, &out);
    assert!(
        failures.is_empty(),
        "{} of {tried} downloads over ::1 on {backend} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The log names the IPv6 address it serves on.
    let log = daemon.log();
    assert!(
        log.contains("on [::1]:"),
        "startup line names [::1]:\n{log}"
    );
    // Not reachable over IPv4: it was bound to ::1 only.
    let v4 = raw::Peer::bind(IpAddr::V4(Ipv4Addr::LOCALHOST));
    v4.send_to(
        &raw::rrq("size-513", WireMode::Octet, &[]),
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), daemon.port()),
    );
    assert!(
        v4.recv(Duration::from_millis(300)).is_none(),
        "a server bound to ::1 answered on 127.0.0.1"
    );
}
