//! The `loadgen` binary as a user runs it: its help, its exit codes and its JSON summary.
//!
//! Besides checking these, this test target makes `cargo test --workspace` build the `loadgen`
//! binary, which the server's integration tests (`tests/faults.rs`, `tests/resources.rs`) drive.

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

fn loadgen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
}

#[test]
fn help_documents_the_main_options() {
    let out = loadgen()
        .arg("--help")
        .output()
        .expect("run loadgen --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--clients",
        "--transfers",
        "--windowsize",
        "--sha256",
        "--sources",
        "--max-p99",
        "--json",
        "--no-gro",
    ] {
        assert!(help.contains(option), "--help does not mention {option}");
    }
}

#[test]
fn a_missed_threshold_exits_3_with_the_failures_in_json() {
    // A bound UDP port that never answers: every transfer times out.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("address");
    let out = loadgen()
        .arg(addr.to_string())
        .arg("nothing.bin")
        .args(["--clients", "2", "--transfers", "2"])
        .args(["--timeout", "100ms", "--retries", "1"])
        .args(["--max-failures", "0", "--json", "-"])
        .output()
        .expect("run loadgen");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.contains("\"ok\": 0"), "{json}");
    assert!(json.contains("\"failed\": 2"), "{json}");
    // Both RRQs reached the port, each from its own socket (a fresh TID per transfer).
    silent
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 600];
    let mut sources = std::collections::HashSet::new();
    while let Ok((n, from)) = silent.recv_from(&mut buf) {
        assert_eq!(&buf[..2], &[0, 1], "not an RRQ: {:?}", &buf[..n]);
        sources.insert(from);
    }
    assert_eq!(sources.len(), 2, "RRQs from {sources:?}");
}

#[test]
fn bad_arguments_are_a_clear_error() {
    let out = loadgen()
        .args(["127.0.0.1:69", "f", "--clients", "many"])
        .output()
        .expect("run loadgen");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--clients"));
}
