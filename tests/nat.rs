//! A server behind a destination-NAT address, as behind a load balancer's virtual address or a
//! Kubernetes Service: clients ask `VIP:69`, nftables in the server's namespace rewrites that to
//! the daemon's own address and port, and only replies from that same address and port are
//! rewritten back. In `--single-port` mode every reply is, and real clients fetch byte-exact
//! through the VIP; in the normal mode replies come from a transfer port with the server's own
//! address, which clients that insist on the address they asked (tftp-hpa) never accept.
//!
//! Needs root, `ip` and `nft`, like the loss tests whose namespaces it reuses.

use std::fs;
use std::process::Command;

use crate::faults::{
    client_failed, ip, must, served, supported, Path2, Server, BIG_NAME, FETCH_TIMEOUT, PORT,
    SERVER_IP,
};
use crate::util::{self, run, TempDir};

/// The virtual address (TEST-NET-2: documentation only, never routed).
const VIP: &str = "198.51.100.10";

/// Routes the VIP from the client namespace to the server namespace, where `VIP:69` is
/// rewritten to the daemon's `SERVER_IP:PORT`.
fn add_vip(path: &Path2, scratch: &TempDir) {
    must(ip(&[
        "-n",
        &path.client,
        "route",
        "add",
        &format!("{VIP}/32"),
        "via",
        SERVER_IP,
    ]));
    let rules = format!(
        "table ip ringtftp_nat {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority -100; policy accept;\n\
         \t\tip daddr {VIP} udp dport 69 dnat to {SERVER_IP}:{PORT}\n\
         \t}}\n\
         }}\n"
    );
    let file = scratch.join("nat.nft");
    fs::write(&file, rules).expect("write nft rules");
    let mut cmd = ip(&["netns", "exec", &path.server, "nft", "-f"]);
    cmd.arg(&file);
    must(cmd);
}

/// The three clients' fetches of the big file through the VIP, into `out`.
fn through_vip(path: &Path2, out: &std::path::Path) -> Vec<(&'static str, Command)> {
    let mut curl = path.in_client("curl");
    curl.args(["-sS", "--max-time", "20", "-o"])
        .arg(out)
        .arg(format!("tftp://{VIP}:69/{BIG_NAME}"));
    let mut hpa = path.in_client("tftp");
    hpa.args(["-4", "-v", "-m", "octet", VIP, "69", "-c", "get", BIG_NAME])
        .arg(out);
    let mut atftp = path.in_client("atftp");
    atftp.args(["--get", "-r", BIG_NAME, "-l"]).arg(out).args([
        "--option",
        "blksize 1468",
        "--option",
        "windowsize 8",
        VIP,
        "69",
    ]);
    vec![
        ("curl", curl),
        ("tftp-hpa", hpa),
        ("atftp windowsize 8", atftp),
    ]
}

fn ready() -> bool {
    supported()
        && ["curl", "atftp", "tftp"]
            .iter()
            .all(|program| util::client(program).is_some())
}

#[test]
fn single_port_serves_real_clients_through_a_dnat_address() {
    if !ready() {
        return;
    }
    let _alone = util::exclusive();
    let path = Path2::new();
    let scratch = TempDir::new("nat-rules");
    add_vip(&path, &scratch);
    let (dir, sha) = served();
    let server = Server::start(&path, dir.path(), &["--single-port"]);
    let out = scratch.join("big");
    for (name, cmd) in through_vip(&path, &out) {
        let _ = fs::remove_file(&out);
        let done = run(cmd, FETCH_TIMEOUT);
        assert!(
            done.status.is_some() && !client_failed(&done),
            "{name} through {VIP}:\n{}\nserver log:\n{}",
            done.describe(),
            server.log()
        );
        assert_eq!(util::sha256_file(&out), sha, "{name} through {VIP}");
    }
}

#[test]
fn without_single_port_a_client_that_checks_the_reply_address_fails_there() {
    if !ready() {
        return;
    }
    let _alone = util::exclusive();
    let path = Path2::new();
    let scratch = TempDir::new("nat-rules-normal");
    add_vip(&path, &scratch);
    let (dir, sha) = served();
    let _server = Server::start(&path, dir.path(), &[]);
    let out = scratch.join("big");
    let (_, hpa) = through_vip(&path, &out)
        .into_iter()
        .find(|(name, _)| *name == "tftp-hpa")
        .expect("the tftp-hpa fetch");
    // It would wait 25 s for replies from the VIP before giving up; 8 s tell as much.
    let done = run(hpa, std::time::Duration::from_secs(8));
    let whole = done.status.is_some()
        && !client_failed(&done)
        && out.exists()
        && util::sha256_file(&out) == sha;
    assert!(
        !whole,
        "tftp-hpa fetched through the VIP without --single-port: the replies' source is \
         not the VIP, so this should not work; if it now does, say so in the README:\n{}",
        done.describe()
    );
}
