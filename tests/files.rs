//! Which file a request gets: per-client directories (`--client-dirs`) by address from two
//! loopback addresses and by MAC across a veth pair, tftp-hpa rule files (`--map-file`) with
//! tftp-hpa and curl, a file rewritten in place with its size and mtime put back (the new
//! bytes, not cached ones), a FIFO (refused at once, never opened), and a tree replaced as
//! operators deploy one: renamed into place or by a symlink flip, and `--map-file` re-read on
//! SIGHUP.

use std::fs;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::faults::{self, ip, must, Path2, Server, CLIENT_IP, FETCH_TIMEOUT, PORT, SERVER_IP};
use crate::util::raw::{self, Peer};
use crate::util::{self, client, fetch_curl, fetch_tftp_hpa, run, Daemon, Mode, TempDir};
use crate::util::{CURL, TFTP_HPA};

/// curl fetching `name` from `server` with the request sent from `source` (`--interface`).
fn curl_from(source: &str, server: SocketAddr, name: &str) -> Result<Vec<u8>, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--interface", source])
        .arg(format!("tftp://{server}/{name}"));
    let done = run(cmd, FETCH_TIMEOUT);
    if !done.success() {
        return Err(done.describe());
    }
    Ok(done.stdout.into_bytes())
}

#[test]
fn clients_get_their_own_files_by_address() {
    let Some(_) = client(CURL) else { return };
    let root = TempDir::new("client-dirs");
    util::write_file(root.path(), "boot.cfg", b"shared\n");
    util::write_file(root.path(), "127.0.0.2/boot.cfg", b"for 127.0.0.2\n");
    util::write_file(root.path(), "127.0.0.3/boot.cfg", b"for 127.0.0.3\n");
    util::write_file(root.path(), "kernel", b"one kernel for all\n");
    let daemon = Daemon::start(root.path(), &["--client-dirs"]);
    let got = |source: &str, name: &str| {
        curl_from(source, daemon.addr(), name).unwrap_or_else(|e| panic!("{source}: {e}"))
    };
    assert_eq!(got("127.0.0.2", "boot.cfg"), b"for 127.0.0.2\n");
    assert_eq!(got("127.0.0.3", "boot.cfg"), b"for 127.0.0.3\n");
    assert_eq!(got("127.0.0.1", "boot.cfg"), b"shared\n");
    assert_eq!(got("127.0.0.2", "kernel"), b"one kernel for all\n");
    // Without the flag everyone gets the shared file.
    drop(daemon);
    let daemon = Daemon::start(root.path(), &[]);
    let shared = curl_from("127.0.0.2", daemon.addr(), "boot.cfg").unwrap();
    assert_eq!(shared, b"shared\n");
}

/// The MAC address of `veth0` in namespace `ns`, as `ip link` prints it (aa:bb:...).
fn mac_of(ns: &str) -> String {
    let done = must(ip(&["-n", ns, "link", "show", "veth0"]));
    let mut words = done.stdout.split_whitespace();
    words
        .find(|w| *w == "link/ether")
        .and_then(|_| words.next())
        .unwrap_or_else(|| panic!("no MAC in:\n{}", done.stdout))
        .to_owned()
}

#[test]
fn clients_on_the_link_get_their_own_files_by_mac() {
    if !faults::supported() || client(CURL).is_none() {
        return;
    }
    let _alone = util::exclusive();
    let path = Path2::new();
    let mac_dir = format!("01-{}", mac_of(&path.client).replace(':', "-"));
    let root = TempDir::new("mac-dirs");
    util::write_file(root.path(), "boot.cfg", b"shared\n");
    util::write_file(
        root.path(),
        &format!("{CLIENT_IP}/boot.cfg"),
        b"by address\n",
    );
    util::write_file(root.path(), &format!("{CLIENT_IP}/ip.cfg"), b"by address\n");
    util::write_file(root.path(), &format!("{mac_dir}/boot.cfg"), b"by MAC\n");
    let server = Server::start(&path, root.path(), &["--client-dirs"]);
    let fetch = |name: &str| {
        let mut curl = path.in_client("curl");
        curl.args(["-sS", "--max-time", "20"])
            .arg(format!("tftp://{SERVER_IP}:{PORT}/{name}"));
        let done = run(curl, FETCH_TIMEOUT);
        assert!(
            done.success(),
            "{name}: {}\n{}",
            done.describe(),
            server.log()
        );
        done.stdout
    };
    // The server learnt the client's MAC from its ARP request (the probe's).
    assert_eq!(fetch("boot.cfg"), "by MAC\n", "MAC dir {mac_dir}");
    assert_eq!(fetch("ip.cfg"), "by address\n");
    // Without a MAC dir, the address dir serves. (A client missing from the neighbour table,
    // as on loopback, is the address test's case.)
    fs::rename(root.join(&mac_dir), root.join("elsewhere")).unwrap();
    assert_eq!(fetch("boot.cfg"), "by address\n");
}

const MAP: &str = r"
# as an /etc/tftpd.map for Windows boot managers and pxelinux
rg  \\                 /              # backslashes become slashes
ri  ^/?boot/(.*)$      boot/\L\1      # the boot tree is stored lower-case
r   ^/?pxelinux\.cfg/default$  pxelinux.cfg/\x
a   ^/?private/        No\ access\ for\ \i
r   ^/?escape$         ../outside
";

#[test]
fn map_files_rewrite_names_for_real_clients() {
    let outer = TempDir::new("map-file");
    let root = outer.join("root");
    util::write_file(&root, "boot/bcd", b"the BCD store\n");
    util::write_file(&root, "pxelinux.cfg/7F000001", b"config for 127.0.0.1\n");
    util::write_file(&root, "private/key", b"secret\n");
    util::write_file(outer.path(), "outside", b"outside the root\n");
    let map = outer.join("tftpd.map");
    fs::write(&map, MAP).unwrap();
    let daemon = Daemon::start(&root, &["--map-file", map.to_str().unwrap()]);
    let out = outer.join("out");
    if client(TFTP_HPA).is_some() {
        fetch_tftp_hpa(daemon.addr(), r"\Boot\BCD", &out, Mode::Octet).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"the BCD store\n");
    }
    if client(CURL).is_some() {
        fetch_curl(daemon.addr(), "pxelinux.cfg/default", &out, None).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"config for 127.0.0.1\n");
    }
    let peer = Peer::new(daemon.addr());
    let (code, message, _) =
        peer.expect_error(&raw::rrq("private/key", Mode::Octet, &[]), daemon.addr());
    assert_eq!((code, message.as_str()), (2, "No access for 127.0.0.1"));
    let (code, message, _) =
        peer.expect_error(&raw::rrq("escape", Mode::Octet, &[]), daemon.addr());
    assert_eq!(code, 2, "{message}");
    assert!(!message.contains("outside"), "{message}");
}

#[test]
fn a_bad_map_file_is_a_start_up_error_naming_the_line() {
    let dir = TempDir::new("bad-map");
    let map = dir.join("tftpd.map");
    fs::write(&map, "rg \\\\ /\n# fine so far\nr (unclosed x\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringtftpd"));
    cmd.args(["0", "--bind", "127.0.0.1", "--directory"])
        .arg(dir.path())
        .arg("--map-file")
        .arg(&map);
    let done = run(cmd, Duration::from_secs(10));
    assert_eq!(
        done.status.and_then(|s| s.code()),
        Some(1),
        "{}",
        done.describe()
    );
    assert!(
        done.stderr
            .contains("tftpd.map: line 3: bad regular expression"),
        "{}",
        done.describe()
    );
}

#[test]
fn a_file_rewritten_in_place_with_its_times_put_back_is_served_anew() {
    let Some(_) = client(CURL) else { return };
    let root = TempDir::new("rewrite-in-place");
    let old = util::pattern(300 * 1024, 1);
    let new = util::pattern(300 * 1024, 2);
    let file = util::write_file(root.path(), "initrd", &old);
    // One shard, so both requests meet the same chunk cache.
    let daemon = Daemon::start(root.path(), &["--shards", "1"]);
    let out = root.join("out");
    fetch_curl(daemon.addr(), "initrd", &out, Some(1468)).unwrap();
    assert_eq!(fs::read(&out).unwrap(), old);
    // What `cp -p` over it or `rsync --inplace -t` do: same inode and size, mtime put back.
    let before = fs::metadata(&file).unwrap();
    thread::sleep(Duration::from_millis(20));
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(&new, 0).unwrap();
        f.set_modified(before.modified().unwrap()).unwrap();
    }
    let after = fs::metadata(&file).unwrap();
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());
    assert_eq!(after.len(), before.len());
    fetch_curl(daemon.addr(), "initrd", &out, Some(1468)).unwrap();
    assert!(
        fs::read(&out).unwrap() == new,
        "the rewritten bytes, not cached ones"
    );
}

#[test]
fn fifos_are_refused_at_once_and_never_opened() {
    let root = TempDir::new("fifo");
    let fifo = root.join("fifo");
    let status = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(status.success());
    // A writer's open blocks until someone opens the FIFO for reading (fifo(7)).
    let (opened, witness) = mpsc::channel();
    let writer = {
        let fifo = fifo.clone();
        thread::spawn(move || {
            let _writer = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let _ = opened.send(());
        })
    };
    let daemon = Daemon::start(root.path(), &[]);
    let peer = Peer::new(daemon.addr());
    // expect_error panics unless the ERROR comes within 2 s.
    let (code, message, _) = peer.expect_error(&raw::rrq("fifo", Mode::Octet, &[]), daemon.addr());
    assert_eq!((code, message.as_str()), (2, "Not a regular file"));
    let (code, _, _) = peer.expect_error(&raw::rrq("fifo", Mode::Netascii, &[]), daemon.addr());
    assert_eq!(code, 2);
    assert!(
        witness.recv_timeout(Duration::from_millis(200)).is_err(),
        "the server opened the FIFO for reading"
    );
    // Release the writer with a reader of our own (non-blocking: it must not wait either).
    let _reader = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap()
    };
    witness
        .recv_timeout(Duration::from_secs(10))
        .expect("our reader releases the writer");
    writer.join().unwrap();
}

/// `name` fetched by the library's own reader, or the error.
fn fetch(daemon: &Daemon, name: &str) -> Result<Vec<u8>, String> {
    raw::download(daemon.addr(), name, Mode::Octet, &[], |_| {}).map(|d| d.data)
}

/// Fetches `name` until it holds `want`, for at most `within`; how long that took.
fn served_within(daemon: &Daemon, name: &str, want: &[u8], within: Duration) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let got = fetch(daemon, name);
        if got.as_deref() == Ok(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{name} still not the new one after {within:?}: {:?}\n{}",
            got.map(|g| g.len()),
            daemon.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A new tree renamed into place (`mv tftp tftp.old; mv tftp.new tftp`) is served within a
/// second; a transfer running across the swap finishes with the old tree's bytes, whole.
#[test]
fn a_tree_renamed_into_place_is_served_within_a_second() {
    let outer = TempDir::new("renamed-tree");
    let (tree, new, old) = (
        outer.join("tftp"),
        outer.join("tftp.new"),
        outer.join("tftp.old"),
    );
    let v1 = util::pattern(600_000, 1);
    let v2 = util::pattern(600_000, 2);
    util::write_file(&tree, "kernel", &v1);
    util::write_file(&tree, "only-old", b"old\n");
    util::write_file(&new, "kernel", &v2);
    let daemon = Daemon::start(&tree, &[]);
    assert_eq!(fetch(&daemon, "kernel").unwrap(), v1);

    // A transfer that holds at its first block while the tree is swapped.
    let (at_first, swapped) = (mpsc::channel(), mpsc::channel::<()>());
    let addr = daemon.addr();
    let running = thread::spawn(move || {
        let (tx, rx) = (at_first.0, swapped.1);
        raw::download(addr, "kernel", Mode::Octet, &[], move |block| {
            if block == 1 {
                tx.send(()).unwrap();
                rx.recv_timeout(Duration::from_secs(10)).unwrap();
            }
        })
    });
    at_first.1.recv_timeout(Duration::from_secs(10)).unwrap();
    fs::rename(&tree, &old).unwrap();
    fs::rename(&new, &tree).unwrap();
    swapped.0.send(()).unwrap();
    let took = served_within(&daemon, "kernel", &v2, Duration::from_millis(1500));
    eprintln!("the new tree served {took:?} after the swap");
    let old_bytes = running.join().unwrap().expect("the running transfer");
    assert_eq!(old_bytes.data, v1, "the running transfer mixed two trees");
    // Gone with the old tree, though the old directory still exists.
    let peer = Peer::new(daemon.addr());
    let (code, _, _) = peer.expect_error(&raw::rrq("only-old", Mode::Octet, &[]), daemon.addr());
    assert_eq!(code, 1);
    assert!(
        daemon.log().contains("names a new directory"),
        "{}",
        daemon.log()
    );
}

/// `--directory` names a symlink, flipped to a new release (`ln -s` then a rename over it):
/// new requests are served from the new release within a second.
#[test]
fn a_flipped_symlink_root_is_followed_within_a_second() {
    let outer = TempDir::new("flipped-root");
    let (r1, r2) = (outer.join("release-1"), outer.join("release-2"));
    util::write_file(&r1, "initrd", b"release one\n");
    util::write_file(&r2, "initrd", b"release two\n");
    let current = outer.join("current");
    std::os::unix::fs::symlink("release-1", &current).unwrap();
    let daemon = Daemon::start(&current, &[]);
    assert_eq!(fetch(&daemon, "initrd").unwrap(), b"release one\n");
    let next = outer.join("current.next");
    std::os::unix::fs::symlink("release-2", &next).unwrap();
    fs::rename(&next, &current).unwrap();
    served_within(
        &daemon,
        "initrd",
        b"release two\n",
        Duration::from_millis(1500),
    );
    // And back.
    let next = outer.join("current.next");
    std::os::unix::fs::symlink("release-1", &next).unwrap();
    fs::rename(&next, &current).unwrap();
    served_within(
        &daemon,
        "initrd",
        b"release one\n",
        Duration::from_millis(1500),
    );
}

/// SIGHUP reads `--map-file` again: new rules apply to the next request; a bad file is an
/// error in the log and the rules in force stay.
#[test]
fn sighup_rereads_the_map_file_and_keeps_the_rules_when_the_new_file_is_bad() {
    let outer = TempDir::new("sighup-map");
    let root = outer.join("root");
    util::write_file(&root, "one", b"first target\n");
    util::write_file(&root, "two", b"second target\n");
    let map = outer.join("tftpd.map");
    fs::write(&map, "r ^alias$ one\n").unwrap();
    let daemon = Daemon::start(&root, &["--map-file", map.to_str().unwrap()]);
    assert_eq!(fetch(&daemon, "alias").unwrap(), b"first target\n");
    let hangup = |daemon: &Daemon| {
        // SAFETY: kill takes no pointers; the pid is our own child's.
        let sent = unsafe { libc::kill(daemon.pid() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(sent, 0, "kill -HUP failed");
    };

    fs::write(&map, "r ^alias$ two\n").unwrap();
    hangup(&daemon);
    daemon
        .wait_for_log(&["rules now"], Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no reload logged:\n{}", daemon.log()));
    assert_eq!(fetch(&daemon, "alias").unwrap(), b"second target\n");

    fs::write(&map, "r (unclosed x\n").unwrap();
    hangup(&daemon);
    daemon
        .wait_for_log(&["the rules in force stay"], Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no error logged:\n{}", daemon.log()));
    assert!(daemon.log().contains("line 1"), "{}", daemon.log());
    assert_eq!(fetch(&daemon, "alias").unwrap(), b"second target\n");
}

/// A Raspberry Pi 4 (its MAC in the Pi 4's address block, learnt from the neighbour table)
/// asking at its 1024-byte blocks for a file past 65535 of them gets ERROR 3 before any DATA,
/// naming why: its bootloader would boot the file silently cut at 64 MiB. A file that fits is
/// served to it as to anyone.
#[test]
fn a_raspberry_pi_is_refused_a_file_past_its_last_block_number() {
    if !faults::supported() || client(CURL).is_none() {
        return;
    }
    let _alone = util::exclusive();
    let path = Path2::new();
    must(ip(&[
        "-n",
        &path.client,
        "link",
        "set",
        "veth0",
        "address",
        "dc:a6:32:12:34:56",
    ]));
    let root = TempDir::new("pi-rollover");
    // Sparse: 65535 blocks of 1024 bytes and the empty last one; and one block fewer.
    let big = fs::File::create(root.join("initrd.big")).unwrap();
    big.set_len(65_535 * 1024).unwrap();
    util::write_file(root.path(), "cmdline.txt", b"console=tty1 root=/dev/nfs\n");
    let server = Server::start(&path, root.path(), &[]);
    let fetch = |name: &str| {
        let mut curl = path.in_client("curl");
        curl.args([
            "-sS",
            "--max-time",
            "20",
            "--tftp-blksize",
            "1024",
            "-o",
            "/dev/null",
        ])
        .arg(format!("tftp://{SERVER_IP}:{PORT}/{name}"));
        run(curl, FETCH_TIMEOUT)
    };
    let small = fetch("cmdline.txt");
    assert!(small.success(), "{}\n{}", small.describe(), server.log());
    let refused = fetch("initrd.big");
    assert!(!refused.success(), "{}", refused.describe());
    let log = server.log();
    assert!(
        log.contains("File too large for this Raspberry Pi bootloader: 65536 blocks of 1024 bytes"),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("transfer") && l.contains("initrd.big")),
        "a transfer started:\n{log}"
    );
}
