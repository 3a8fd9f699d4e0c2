//! Every firmware profile against the real server library, checked on the wire; a scenario run
//! end to end with its reports; the exit code of a baseline comparison.
//!
//! The `loadgen` binary talks to the server through a relay that logs every datagram both ways
//! (which client port sent what), so the tests see what a capture on the wire would show: the
//! edk2 probe, its ERROR 8, the download from a new port and how often each client ACKs.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The file served: 20 000 bytes, so 14 blocks at edk2's 1468 and at iPXE's 1432.
const SIZE: usize = 20_000;

/// 2 MiB for the lossy runs: enough blocks (1429 of 1468 bytes) for loss to be counted.
fn big() -> Vec<u8> {
    (0..2u32 << 20).map(|i| (i * 13 + i / 1024) as u8).collect()
}

fn content() -> Vec<u8> {
    (0..SIZE as u32).map(|i| (i * 7 + i / 256) as u8).collect()
}

/// The real server library on 127.0.0.1:0 serving a scratch directory; stops on drop.
struct Served {
    handle: Option<ringtftp::server::Handle>,
    dir: PathBuf,
}

impl Served {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("loadgen-wire-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("boot.efi"), content()).unwrap();
        std::fs::write(dir.join("small.cfg"), b"set timeout=0\n").unwrap();
        std::fs::write(dir.join("big.img"), big()).unwrap();
        let mut config = ringtftp::server::Config::default();
        config.shards = 1;
        let handle =
            ringtftp::server::serve_directory("127.0.0.1:0".parse().unwrap(), &dir, config)
                .unwrap();
        Self {
            handle: Some(handle),
            dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.handle.as_ref().unwrap().local_addr()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stopper().stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One datagram through the relay.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    /// The client's port.
    client: u16,
    /// Sent by the client (else by the server).
    from_client: bool,
    bytes: Vec<u8>,
}

/// A UDP relay between loadgen and the server that logs every datagram. Each client port gets
/// its own upstream socket, which also stands in for the server's TID towards the client.
struct Relay {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the relay does to the datagrams it passes, each way, from a fixed seed.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    /// The chance a datagram is dropped.
    loss: f64,
    /// The chance a datagram is held back by `held` (the ones after it overtake it).
    reorder: f64,
    held: Duration,
}

impl Relay {
    fn new(server: SocketAddr) -> Self {
        Self::with_faults(server, Faults::default())
    }

    fn with_faults(server: SocketAddr, faults: Faults) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        front.set_nonblocking(true).unwrap();
        let addr = front.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || relay(front, server, faults, &l, &s));
        Self {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay(
    front: UdpSocket,
    server: SocketAddr,
    faults: Faults,
    log: &Mutex<Vec<Seen>>,
    stop: &AtomicBool,
) {
    // Per client: its upstream socket and the server's TID once known.
    let mut ups: HashMap<SocketAddr, (UdpSocket, Option<SocketAddr>)> = HashMap::new();
    // Datagrams held back: when, through which client's upstream socket, to where.
    let mut held: Vec<(Instant, SocketAddr, SocketAddr, Vec<u8>)> = Vec::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut chance = |p: f64| {
        // xorshift64: the same faults every run.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        p > 0.0 && ((rng >> 11) as f64 / (1u64 << 53) as f64) < p
    };
    let mut buf = [0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut busy = false;
        while let Ok((n, client)) = front.recv_from(&mut buf) {
            busy = true;
            let up = ups.entry(client).or_insert_with(|| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_nonblocking(true).unwrap();
                (s, None)
            });
            log_it(log, client, true, &buf[..n]);
            let _ = up.0.send_to(&buf[..n], server);
        }
        let mut out: Vec<(SocketAddr, SocketAddr, Vec<u8>)> = Vec::new();
        for (client, (up, tid)) in ups.iter_mut() {
            while let Ok((n, from)) = up.recv_from(&mut buf) {
                busy = true;
                if from == *client {
                    log_it(log, *client, true, &buf[..n]);
                    if let Some(tid) = tid {
                        out.push((*client, *tid, buf[..n].to_vec()));
                    }
                } else {
                    *tid = Some(from);
                    log_it(log, *client, false, &buf[..n]);
                    out.push((*client, *client, buf[..n].to_vec()));
                }
            }
        }
        let now = Instant::now();
        for (client, to, bytes) in out {
            if chance(faults.loss) {
                continue;
            }
            if chance(faults.reorder) {
                held.push((now + faults.held, client, to, bytes));
                continue;
            }
            let _ = ups[&client].0.send_to(&bytes, to);
        }
        held.retain(|(at, client, to, bytes)| {
            if *at > now {
                return true;
            }
            let _ = ups[client].0.send_to(bytes, *to);
            false
        });
        if !busy {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn log_it(log: &Mutex<Vec<Seen>>, client: SocketAddr, from_client: bool, bytes: &[u8]) {
    log.lock().unwrap().push(Seen {
        at: Instant::now(),
        client: client.port(),
        from_client,
        bytes: bytes.to_vec(),
    });
}

fn opcode(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// An RRQ's options as `name=value` words, sorted.
fn rrq_options(b: &[u8]) -> Vec<String> {
    let fields: Vec<&[u8]> = b[2..].split(|&c| c == 0).collect();
    let mut out: Vec<String> = fields[2..]
        .chunks(2)
        .filter(|kv| kv.len() == 2 && !kv[0].is_empty())
        .map(|kv| {
            format!(
                "{}={}",
                String::from_utf8_lossy(kv[0]),
                String::from_utf8_lossy(kv[1])
            )
        })
        .collect();
    out.sort();
    out
}

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("run loadgen")
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs one machine of `profile` through the relay; returns what crossed it. (No `--timeout`:
/// U-Boot sends its timer as the `timeout` option, and `--timeout` would replace it.)
fn one_boot(profile: &str) -> Vec<Seen> {
    let served = Served::new(profile);
    let relay = Relay::new(served.addr());
    let hash = sha256_hex(&content());
    let out = loadgen(&[
        &relay.addr.to_string(),
        "boot.efi",
        "--profile",
        profile,
        "--sha256",
        &hash,
        "--quiet",
    ]);
    assert!(out.status.success(), "{profile}: {out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("1 ok, 0 failed"), "{table}");
    // Let the server's last datagrams (none are expected) reach the log.
    std::thread::sleep(Duration::from_millis(50));
    relay.seen()
}

#[test]
fn edk2_probes_refuses_with_error_8_and_downloads_in_windows_of_4_from_a_new_port() {
    let seen = one_boot("edk2");
    let rrqs: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.from_client && opcode(&s.bytes) == 1)
        .collect();
    assert_eq!(rrqs.len(), 2, "{seen:#?}");
    let (probe, fetch) = (rrqs[0], rrqs[1]);
    assert_ne!(
        probe.client, fetch.client,
        "the download comes from a new port"
    );
    assert_eq!(
        rrq_options(&probe.bytes),
        ["blksize=1468", "tsize=0", "windowsize=4"]
    );
    assert_eq!(rrq_options(&fetch.bytes), ["blksize=1468", "windowsize=4"]);

    // The probe: the server's OACK with the size, answered by ERROR 8 and nothing else.
    let on_probe: Vec<&Seen> = seen.iter().filter(|s| s.client == probe.client).collect();
    let oack = on_probe
        .iter()
        .find(|s| !s.from_client)
        .expect("an answer to the probe");
    assert_eq!(opcode(&oack.bytes), 6, "OACK");
    assert!(oack.bytes.windows(6).any(|w| w == b"tsize\0"));
    let answers: Vec<&&Seen> = on_probe.iter().filter(|s| s.from_client).skip(1).collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(&answers[0].bytes[..4], &[0, 5, 0, 8], "ERROR 8");
    assert!(fetch.at.duration_since(answers[0].at) < Duration::from_millis(100));

    // The download: ACK 0, then an ACK per window of 4 blocks and one for the last (14).
    let acks: Vec<u16> = seen
        .iter()
        .filter(|s| s.client == fetch.client && s.from_client && opcode(&s.bytes) == 4)
        .map(|s| u16::from_be_bytes([s.bytes[2], s.bytes[3]]))
        .collect();
    assert_eq!(acks, [0, 4, 8, 12, 14]);
    let blocks = seen
        .iter()
        .filter(|s| s.client == fetch.client && !s.from_client && opcode(&s.bytes) == 3)
        .count();
    assert_eq!(blocks, 14);
}

/// WDS's variable window on the wire: `msftwindow` 31416 asked, 27182 granted, every ACK one
/// byte longer with the next window (4, then doubling after each whole window), and the
/// server sending exactly that many blocks before the client's next ACK.
#[test]
fn wds_asks_each_window_in_its_acks_and_the_server_sends_it() {
    let seen = one_boot("wds");
    let rrq = seen
        .iter()
        .find(|s| s.from_client && opcode(&s.bytes) == 1)
        .expect("an RRQ");
    assert_eq!(
        rrq_options(&rrq.bytes),
        [
            "blksize=1456",
            "msftwindow=31416",
            "tsize=0",
            "windowsize=4"
        ]
    );
    let oack = seen
        .iter()
        .find(|s| !s.from_client && opcode(&s.bytes) == 6)
        .expect("an OACK");
    assert!(
        oack.bytes
            .windows(17)
            .any(|w| w == b"msftwindow\x0027182\x00"),
        "{:?}",
        String::from_utf8_lossy(&oack.bytes)
    );
    // (ACK, the window it asks for); and the blocks the server sent after each ACK.
    let mut acks: Vec<(u16, u8)> = Vec::new();
    let mut sent_after: Vec<usize> = Vec::new();
    for s in &seen {
        match (s.from_client, opcode(&s.bytes)) {
            (true, 4) => {
                assert_eq!(s.bytes.len(), 5, "an ACK without its window byte");
                acks.push((u16::from_be_bytes([s.bytes[2], s.bytes[3]]), s.bytes[4]));
                sent_after.push(0);
            }
            (false, 3) => *sent_after.last_mut().expect("DATA before ACK 0") += 1,
            _ => {}
        }
    }
    // 14 blocks of 1456: windows of 4 and 8, then the last 2 (the final ACK asks no more).
    assert_eq!(acks, [(0, 4), (4, 8), (12, 16), (14, 16)]);
    assert_eq!(sent_after, [4, 8, 2, 0]);
}

/// Windows under loss never multiply traffic, on the wire: through a relay that drops 1 % of
/// datagrams each way and holds 1 % back by 2 ms (the next ones overtake them), loadgen's edk2
/// profile (an ACK for every block out of sequence, as edk2's Mtftp4) and an RFC 7440 client
/// (one ACK per burst) fetch 2 MiB in windows of 4, 8 and 16; the DATA the server sends stays
/// within 25 % of the unavoidable cost (each loss or reordering costs about (windowsize + 1)
/// / 2 blocks: about 1.03x, 1.06x and 1.11x the file).
#[test]
fn windows_through_loss_and_reordering_cost_what_they_must() {
    let served = Served::new("lossy");
    let hash = sha256_hex(&big());
    let blocks = (2u64 << 20) / 1468 + 1;
    let faults = Faults {
        loss: 0.01,
        reorder: 0.01,
        held: Duration::from_millis(2),
    };
    let mut lines = Vec::new();
    for (windowsize, unavoidable) in [("4", 1.03), ("8", 1.06), ("16", 1.11)] {
        for profile in [&["--profile", "edk2"][..], &["--blksize", "1468"][..]] {
            let relay = Relay::with_faults(served.addr(), faults);
            let mut args = vec![relay.addr.to_string(), "big.img".into()];
            args.extend(profile.iter().map(|a| a.to_string()));
            args.extend(
                ["--windowsize", windowsize, "--sha256", &hash, "--quiet"].map(String::from),
            );
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = loadgen(&args);
            let table = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && table.contains("1 ok, 0 failed"),
                "{args:?}: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
            let data = relay
                .seen()
                .iter()
                .filter(|s| !s.from_client && opcode(&s.bytes) == 3)
                .count();
            let ratio = data as f64 / blocks as f64;
            lines.push(format!(
                "{profile:?} window {windowsize}: {ratio:.3}x the file"
            ));
            assert!(ratio <= unavoidable * 1.25, "{}", lines.join("\n"));
        }
    }
    println!("{}", lines.join("\n"));
}

/// A Raspberry Pi: the size asked and the OACK refused, then the download from a new port,
/// lock-step in 1024-byte blocks, never a window.
#[test]
fn raspberrypi_probes_then_downloads_lock_step_in_1024_byte_blocks() {
    let seen = one_boot("raspberrypi");
    let rrqs: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.from_client && opcode(&s.bytes) == 1)
        .collect();
    assert_eq!(rrqs.len(), 2, "{seen:#?}");
    assert_ne!(rrqs[0].client, rrqs[1].client);
    for rrq in &rrqs {
        assert_eq!(rrq_options(&rrq.bytes), ["blksize=1024", "tsize=0"]);
    }
    let acks: Vec<u16> = seen
        .iter()
        .filter(|s| s.client == rrqs[1].client && s.from_client && opcode(&s.bytes) == 4)
        .map(|s| u16::from_be_bytes([s.bytes[2], s.bytes[3]]))
        .collect();
    // 20 000 bytes: 20 blocks of 1024, the last short.
    assert_eq!(acks, (0..=20).collect::<Vec<u16>>());
}

#[test]
fn lock_step_profiles_ask_what_their_firmware_asks() {
    for (profile, options, blocks) in [
        ("ipxe", &["blksize=1432", "tsize=0"][..], 14),
        ("pxelinux", &["blksize=1408", "tsize=0"][..], 15),
        ("uboot", &["blksize=1468", "timeout=5"][..], 14),
        ("grub", &["blksize=1024", "tsize=0"][..], 20),
    ] {
        let seen = one_boot(profile);
        let rrqs: Vec<&Seen> = seen
            .iter()
            .filter(|s| s.from_client && opcode(&s.bytes) == 1)
            .collect();
        assert_eq!(rrqs.len(), 1, "{profile}");
        assert_eq!(rrq_options(&rrqs[0].bytes), options, "{profile}");
        // Lock-step: ACK 0 for the OACK, then every block.
        let acks: Vec<u16> = seen
            .iter()
            .filter(|s| s.from_client && opcode(&s.bytes) == 4)
            .map(|s| u16::from_be_bytes([s.bytes[2], s.bytes[3]]))
            .collect();
        let want: Vec<u16> = (0..=blocks).collect();
        assert_eq!(acks, want, "{profile}");
    }
}

#[test]
fn options_on_the_command_line_override_the_profile() {
    let served = Served::new("override");
    let relay = Relay::new(served.addr());
    let out = loadgen(&[
        &relay.addr.to_string(),
        "boot.efi",
        "--profile",
        "ipxe",
        "--blksize",
        "1000",
        "--windowsize",
        "2",
        "--quiet",
    ]);
    assert!(out.status.success(), "{out:?}");
    let seen = relay.seen();
    let rrq = seen.iter().find(|s| opcode(&s.bytes) == 1).unwrap();
    assert_eq!(
        rrq_options(&rrq.bytes),
        ["blksize=1000", "tsize=0", "windowsize=2"]
    );
}

/// A scratch directory for a test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadgen-files-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_scenario_boots_a_wave_with_reports_and_a_baseline_sets_the_exit_code() {
    let served = Served::new("scenario");
    let dir = scratch("scenario");
    let scenario = dir.join("hall.toml");
    std::fs::write(
        &scenario,
        format!(
            "[[step]]\nfile = \"boot.efi\"\nprofile = \"edk2\"\nsha256 = \"{}\"\n\n\
             [[step]]\nfile = \"small.cfg\"\nprofile = \"grub\"\nthink = \"10ms\"\n",
            sha256_hex(&content())
        ),
    )
    .unwrap();
    let (json, hlog, html) = (
        dir.join("run.json"),
        dir.join("run.hlog"),
        dir.join("run.html"),
    );
    let server = served.addr().to_string();
    let run = |extra: &[&str]| {
        let mut args = vec![
            server.as_str(),
            "--scenario",
            scenario.to_str().unwrap(),
            "--power-on",
            "8",
            "--over",
            "80ms",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        loadgen(&args)
    };
    let out = run(&[
        "--json",
        json.to_str().unwrap(),
        "--hlog",
        hlog.to_str().unwrap(),
        "--report",
        html.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("8 booted, 0 failed"), "{table}");
    assert!(table.contains("time to boot"), "{table}");
    let text = std::fs::read_to_string(&json).unwrap();
    let summary: serde_json::Value = serde_json::from_str(&text).expect("the summary is JSON");
    assert_eq!(summary["schema"], 2, "{text}");
    assert_eq!(summary["machines"]["booted"], 8, "{text}");
    assert_eq!(summary["machines"]["failed"], 0, "{text}");
    assert_eq!(summary["probes"], 8, "{text}");
    assert_eq!(summary["ok"], 16, "{text}");
    assert_eq!(summary["steps"].as_array().map(Vec::len), Some(2), "{text}");
    let log = std::fs::read_to_string(&hlog).unwrap();
    assert!(
        log.contains("#[StartTime: ") && log.contains("Tag=transfer,"),
        "{log}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("<svg").count(), 3);
    // Each plot is an SVG a browser draws: well-formed XML, with its axes labelled.
    for svg in page.split("<svg").skip(1) {
        let svg = format!("<svg{}", &svg[..svg.find("</svg>").unwrap() + 6]);
        let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{e}: {svg}"));
        assert!(doc
            .descendants()
            .any(|n| n.text() == Some("time (s)") || n.text() == Some("time since the start (s)")));
    }

    // Against itself with room to spare: no regression.
    let out = run(&[
        "--baseline",
        json.to_str().unwrap(),
        "--max-regression",
        "100000%",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("hall booted (s)"));

    // Against a baseline a million times faster: a regression, exit 3, the comparison printed.
    let mut fast = summary.clone();
    fast["transfers_per_s"] = serde_json::json!(1_000_000.0);
    let fast = serde_json::to_string_pretty(&fast).unwrap();
    let fast_path = dir.join("fast.json");
    std::fs::write(&fast_path, fast).unwrap();
    let out = run(&["--baseline", fast_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("REGRESSED"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("transfers/s"));
    let _ = std::fs::remove_dir_all(&dir);
}
