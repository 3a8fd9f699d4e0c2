//! Blocks that fit the path: on a veth pair with a 1400-byte MTU, a client asking for the
//! largest block (65464) is granted 1368 — a DATA datagram that fits the link unfragmented — and
//! fetches byte-exact; `--mtu` sets the cap by hand, and `--mtu 65536` turns it off. Loopback's 64 KiB MTU keeps large blocks
//! (covered by the client tests, which are granted 65464 there).
//!
//! Needs root, `ip` and `nft`, like the loss tests whose namespaces it reuses.

use std::fs;

use crate::faults::{client_failed, ip, must, served, supported, Path2, Server, BIG_NAME};
use crate::faults::{FETCH_TIMEOUT, PORT, SERVER_IP};
use crate::util::{self, run, TempDir};

/// The `blksize=` of every finished transfer of the big file in the server's log.
fn granted(server: &Server) -> Vec<String> {
    server
        .log()
        .lines()
        .filter(|l| l.contains("transfer complete") && l.contains(BIG_NAME))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("blksize="))
                .map(str::to_owned)
        })
        .collect()
}

fn fetch_largest_blocks(path: &Path2, sha: &str, server: &Server) {
    let scratch = TempDir::new("mtu-out");
    let out = scratch.join("big");
    let mut curl = path.in_client("curl");
    curl.args(["-sS", "--tftp-blksize", "65464", "-o"])
        .arg(&out)
        .arg(format!("tftp://{SERVER_IP}:{PORT}/{BIG_NAME}"));
    let mut atftp = path.in_client("atftp");
    atftp
        .args(["--get", "-r", BIG_NAME, "-l"])
        .arg(&out)
        .args(["--option", "blksize 65464", "--option", "windowsize 4"])
        .args([SERVER_IP, &PORT.to_string()]);
    for (name, cmd) in [("curl", curl), ("atftp", atftp)] {
        let _ = fs::remove_file(&out);
        let done = run(cmd, FETCH_TIMEOUT);
        assert!(
            done.status.is_some() && !client_failed(&done),
            "{name}:\n{}\nserver log:\n{}",
            done.describe(),
            server.log()
        );
        assert_eq!(util::sha256_file(&out), sha, "{name} byte-exact");
    }
}

fn ready() -> bool {
    supported() && util::client("curl").is_some() && util::client("atftp").is_some()
}

/// Serves the big file with `args` on a link whose MTU is `mtu` (the veth's own when `None`),
/// fetches it with the largest blocks, and returns the blksize each client was granted.
fn largest_blocks_on(mtu: Option<&str>, args: &[&str], what: &str) -> Vec<String> {
    let path = Path2::new();
    if let Some(mtu) = mtu {
        for ns in [&path.server, &path.client] {
            must(ip(&["-n", ns, "link", "set", "veth0", "mtu", mtu]));
        }
    }
    let (dir, sha) = served();
    let start = std::time::Instant::now();
    let server = Server::start(&path, dir.path(), args);
    fetch_largest_blocks(&path, &sha, &server);
    eprintln!("{what}: both fetched in {:?}", start.elapsed());
    let granted = granted(&server);
    eprintln!("log:\n{}", server.log());
    granted
}

#[test]
fn blocks_are_capped_to_the_interface_mtu() {
    if !ready() {
        return;
    }
    let _alone = util::exclusive();
    let granted = largest_blocks_on(Some("1400"), &[], "capped to the link");
    assert_eq!(granted, ["1368", "1368"]);
}

#[test]
fn the_mtu_can_be_set_by_hand() {
    if !ready() {
        return;
    }
    let _alone = util::exclusive();
    let granted = largest_blocks_on(None, &["--mtu", "1200"], "set by hand");
    assert_eq!(granted, ["1168", "1168"]);
}

/// `--mtu 65536` turns the cap off: on the same 1400-byte link a client asking for 65464 gets
/// 65464, its datagrams fragmented by IP, and still fetches byte-exact. For a clean network
/// where the client's lock-step rate is what limits a download (each block one round trip).
#[test]
fn the_mtu_cap_can_be_turned_off() {
    if !ready() {
        return;
    }
    let _alone = util::exclusive();
    let granted = largest_blocks_on(Some("1400"), &["--mtu", "65536"], "uncapped, fragmented");
    assert_eq!(granted, ["65464", "65464"]);
}
