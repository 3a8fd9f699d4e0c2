//! The `ringtftpd` command line: clear errors and a non-zero exit for a port in use, a
//! privileged port without the capability, a missing directory or a file given as one, an
//! unknown backend; `--help`.

use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::{run, write_file, Finished, TempDir};

/// Long enough for a daemon that fails at start to have done so; one that does not fail is
/// killed then (and the test fails on its `None` status).
const START_TIMEOUT: Duration = Duration::from_secs(10);

fn ringtftpd(args: &[&str], dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringtftpd"));
    cmd.args(args)
        .arg("--directory")
        .arg(dir)
        .env("NO_COLOR", "1");
    cmd
}

/// Asserts the daemon exited on its own with a failure status and `stderr` containing every
/// one of `needles` (case-insensitively).
fn assert_fails_saying(done: &Finished, needles: &[&str]) {
    let status = done.status.unwrap_or_else(|| {
        panic!(
            "still running after {START_TIMEOUT:?}:\n{}",
            done.describe()
        )
    });
    assert!(
        !status.success(),
        "exit status {status}:\n{}",
        done.describe()
    );
    let stderr = done.stderr.to_ascii_lowercase();
    for needle in needles {
        assert!(
            stderr.contains(&needle.to_ascii_lowercase()),
            "stderr should mention {needle:?}:\n{}",
            done.describe()
        );
    }
}

tftptest!(a_port_in_use_is_a_clear_error, |dir| {
    // std binds without SO_REUSEPORT, so the daemon's SO_REUSEPORT bind fails (EADDRINUSE).
    let holder = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = holder.local_addr().expect("local_addr").port().to_string();
    let done = run(
        ringtftpd(&[&port, "--bind", "127.0.0.1"], dir.path()),
        START_TIMEOUT,
    );
    assert_fails_saying(&done, &["in use", &port]);
});

tftptest!(a_missing_directory_is_a_clear_error, |dir| {
    let missing = dir.join("no-such-dir");
    let done = run(
        ringtftpd(&["0", "--bind", "127.0.0.1"], &missing),
        START_TIMEOUT,
    );
    assert_fails_saying(&done, &["does not exist", &missing.to_string_lossy()]);
});

tftptest!(a_file_given_as_the_directory_is_a_clear_error, |dir| {
    let file = write_file(dir.path(), "plain-file", b"not a directory\n");
    let done = run(
        ringtftpd(&["0", "--bind", "127.0.0.1"], &file),
        START_TIMEOUT,
    );
    assert_fails_saying(&done, &["not a directory", &file.to_string_lossy()]);
});

/// Port 69 as an unprivileged user (nobody, through `setpriv` when the tests run as root) must
/// say which capability is missing.
#[test]
fn a_privileged_port_without_the_capability_names_it() {
    let unprivileged_start =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok())
            .unwrap_or(1024);
    if unprivileged_start <= 69 {
        crate::util::skip::unsupported(&format!(
            "net.ipv4.ip_unprivileged_port_start is {unprivileged_start}, so anyone may bind \
             port 69 here"
        ));
        return;
    }
    let dir = TempDir::new("a_privileged_port_without_the_capability_names_it");
    let daemon = ringtftpd(&["69", "--bind", "127.0.0.1"], dir.path());
    // /proc/self belongs to the effective user of the process reading it.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let cmd = if root {
        let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .find(|p| Path::new(p).exists())
        else {
            crate::util::skip::missing(
                "setpriv, to drop root's privileges",
                "apt-get install util-linux",
            );
            return;
        };
        let mut cmd = Command::new(setpriv);
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(daemon.get_program())
        .args(daemon.get_args())
        .env("NO_COLOR", "1");
        cmd
    } else {
        daemon
    };
    let done = run(cmd, START_TIMEOUT);
    if done.stderr.contains("setpriv:") {
        crate::util::skip::unsupported(&format!(
            "setpriv cannot drop privileges here:\n{}",
            done.describe()
        ));
        return;
    }
    assert_fails_saying(&done, &["CAP_NET_BIND_SERVICE", "69"]);
}

// An unknown backend, by flag or by RINGTFTP_BACKEND, is a usage error (clap's exit 2) that
// names the value and lists the ones there are, before anything is bound.
tftptest!(an_unknown_backend_is_a_clear_error, |dir| {
    let mut by_flag = ringtftpd(
        &["0", "--bind", "127.0.0.1", "--backend", "uring"],
        dir.path(),
    );
    by_flag.env_remove("RINGTFTP_BACKEND");
    let mut by_env = ringtftpd(&["0", "--bind", "127.0.0.1"], dir.path());
    by_env.env("RINGTFTP_BACKEND", "uring");
    for cmd in [by_flag, by_env] {
        let done = run(cmd, START_TIMEOUT);
        assert_fails_saying(
            &done,
            &[
                "invalid value 'uring'",
                "--backend",
                "possible values: auto, io-uring, tokio-uring, epoll",
            ],
        );
        assert_eq!(
            done.status.and_then(|s| s.code()),
            Some(2),
            "a usage error:\n{}",
            done.describe()
        );
    }
});

#[test]
fn help_exits_0_and_documents_the_main_options() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringtftpd"));
    cmd.arg("--help");
    let done = run(cmd, START_TIMEOUT);
    assert!(done.success(), "{}", done.describe());
    for option in ["--directory", "--bind", "--port-range", "--shards", "PORT"] {
        assert!(
            done.stdout.contains(option),
            "--help does not mention {option}:\n{}",
            done.stdout
        );
    }
}
