//! The real TFTP clients Debian ships, driven non-interactively to download one file.
//!
//! Each `fetch_*` returns `Err` with the command line, exit status and output when the client
//! reported a failure; how each client reports one was measured against tftpd-hpa 5.2 on
//! Debian 12 (see the function docs). None of them needs brackets around an IPv6 address except
//! curl's URL; the functions take care of that.

use std::env;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{run, Finished};

/// tftp-hpa's client (Debian package `tftp-hpa`).
pub const TFTP_HPA: &str = "tftp";
/// Debian package `atftp`.
pub const ATFTP: &str = "atftp";
pub const CURL: &str = "curl";
/// `busybox tftp` (Debian package `busybox`).
pub const BUSYBOX: &str = "busybox";

/// A client still running after this long is killed and the download fails. The clients' own
/// give-up times on a silent server: busybox ~13 s, tftp-hpa 25 s, atftp 30 s, curl 300 s.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of client program `name` (one of [`TFTP_HPA`], [`ATFTP`], [`CURL`], [`BUSYBOX`]),
/// or `None` after recording the skip ([`super::skip::missing`]) — unless
/// `RINGTFTP_REQUIRE_CLIENTS` is set, in which case a missing client panics.
///
/// A test that needs a client starts with `let Some(_) = client(CURL) else { return };`.
pub fn client(name: &str) -> Option<PathBuf> {
    if let Some(path) = find_program(name) {
        return Some(path);
    }
    let package = match name {
        TFTP_HPA => "tftp-hpa",
        other => other,
    };
    super::skip::missing(
        &format!("client {name} not installed"),
        &format!("apt-get install {package}"),
    );
    None
}

/// The transfer mode of an RRQ (RFC 1350 §5): the library's own.
pub use ringtftp::packet::Mode;

/// tftp-hpa: `tftp -4|-6 -v -m octet|netascii HOST PORT -c get REMOTE LOCAL`.
///
/// tftp-hpa sends no options at all (no blksize, tsize, windowsize) and decodes netascii.
/// Its default mode is netascii, so the mode is always given.
///
/// Failure: tftp-hpa **exits 0 on an ERROR packet** (it prints `Error code N: MESSAGE` on
/// stdout) and on a local file it cannot create (`tftp: PATH: REASON` on stderr); it exits 69
/// with `Transfer timed out.` on stdout after 25 s of silence. So failure is: a non-zero exit,
/// a line starting `Error code ` or `Transfer timed out`, or anything on stderr (a success
/// writes nothing there). It leaves an empty or partial LOCAL behind on failure. A REMOTE
/// containing ':' would be read as HOST:FILE.
pub fn fetch_tftp_hpa(
    addr: SocketAddr,
    remote: &str,
    local: &Path,
    mode: Mode,
) -> Result<(), String> {
    let program = installed(TFTP_HPA)?;
    let mut cmd = Command::new(program);
    cmd.arg(if addr.is_ipv6() { "-6" } else { "-4" })
        .args(["-v", "-m", mode.as_str()])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(["-c", "get", remote])
        .arg(local);
    let done = run(cmd, CLIENT_TIMEOUT);
    let reported_error = done
        .stdout
        .lines()
        .any(|l| l.starts_with("Error code ") || l.starts_with("Transfer timed out"));
    if !done.success() || reported_error || !done.stderr.trim().is_empty() {
        return Err(done.describe());
    }
    Ok(())
}

/// atftp: `atftp --get -r REMOTE -l LOCAL [--option "NAME VALUE"]... HOST PORT`.
///
/// `options` become `--option "NAME VALUE"` (just `"NAME"` when VALUE is empty): e.g.
/// `("blksize", "1428")`, `("windowsize", "16")` (RFC 7440, supported by Debian's atftp 0.8),
/// `("timeout", "1")`, `("tsize", "")` (sends `tsize 0`; note `("tsize", "enable")` sends the
/// literal value `enable`). Without options atftp's RRQ carries none. atftp prints each
/// requested option (`Option blksize = 1428`) on stderr even on success.
///
/// Failure: exit status 255, with `tftp: error received from server <MESSAGE>` and
/// `tftp: aborting` on stderr (after 30 s of silence: `timeout: retrying ...` lines). It leaves
/// an empty LOCAL behind. atftp does not accept a bracketed IPv6 host, so none is given.
pub fn fetch_atftp(
    addr: SocketAddr,
    remote: &str,
    local: &Path,
    options: &[(&str, &str)],
) -> Result<(), String> {
    let program = installed(ATFTP)?;
    let mut cmd = Command::new(program);
    cmd.args(["--get", "-r", remote, "-l"]).arg(local);
    for (name, value) in options {
        let option = if value.is_empty() {
            name.to_string()
        } else {
            format!("{name} {value}")
        };
        cmd.arg("--option").arg(option);
    }
    cmd.arg(addr.ip().to_string()).arg(addr.port().to_string());
    let done = run(cmd, CLIENT_TIMEOUT);
    check_exit(done)
}

/// What to ask curl for, beyond the URL.
#[derive(Clone, Copy, Debug, Default)]
pub struct CurlOptions {
    /// `--tftp-blksize N`. Without it curl still sends `blksize 512` (plus `tsize 0` and
    /// `timeout 6`).
    pub blksize: Option<u16>,
    /// `--tftp-no-options`: a plain RFC 1350 RRQ.
    pub no_options: bool,
    /// `;mode=netascii` on the URL. curl writes netascii bytes as they come off the wire (CR LF,
    /// CR NUL): it does not decode them.
    pub netascii: bool,
}

/// curl: `curl -sS [--tftp-blksize N] -o LOCAL tftp://127.0.0.1:PORT/REMOTE` (see
/// [`fetch_curl_with`]).
pub fn fetch_curl(
    addr: SocketAddr,
    remote: &str,
    local: &Path,
    blksize: Option<u16>,
) -> Result<(), String> {
    let options = CurlOptions {
        blksize,
        ..CurlOptions::default()
    };
    fetch_curl_with(addr, remote, local, options)
}

/// curl: `curl -sS [--tftp-blksize N] [--tftp-no-options] -o LOCAL
/// 'tftp://HOST:PORT/REMOTE[;mode=netascii]'`, REMOTE percent-encoded and an IPv6 HOST in
/// brackets.
///
/// Failure: a non-zero exit, e.g. 68 for ERROR 1 (file not found), 69 for ERROR 2 (access
/// violation), 42 for ERROR 8 (options refused), 71 when curl itself rejects an OACK, 28 on a
/// timeout (300 s by default). Debian's curl 7.88 replaces the real error message on stderr with
/// `getpeername() failed with errno 107: Transport endpoint is not connected` (fixed upstream in
/// curl/curl#11332), so trust the exit code, not the text. It also rejects an OACK carrying
/// `tsize 0` (exit 71): an empty file fetched with options only works if the server leaves
/// tsize out of the OACK. No LOCAL is left behind when nothing was received.
pub fn fetch_curl_with(
    addr: SocketAddr,
    remote: &str,
    local: &Path,
    options: CurlOptions,
) -> Result<(), String> {
    let program = installed(CURL)?;
    let mut cmd = Command::new(program);
    cmd.arg("-sS");
    if let Some(blksize) = options.blksize {
        cmd.arg("--tftp-blksize").arg(blksize.to_string());
    }
    if options.no_options {
        cmd.arg("--tftp-no-options");
    }
    let mut url = format!("tftp://{addr}/{}", percent_encode(remote));
    if options.netascii {
        url.push_str(";mode=netascii");
    }
    cmd.arg("-o").arg(local).arg(url);
    let done = run(cmd, CLIENT_TIMEOUT);
    check_exit(done)
}

/// busybox: `busybox tftp -g -r REMOTE -l LOCAL [-b BLKSIZE] HOST PORT`.
///
/// busybox always sends `tsize 0`, plus `blksize N` with `-b` (supported by Debian's build);
/// octet mode only. It draws a progress bar on stderr even when that is not a terminal.
///
/// Failure: exit status 1 with `tftp: server error: (CODE) MESSAGE` (or `tftp: timeout`, after
/// ~13 s of silence) on stderr; it deletes LOCAL.
pub fn fetch_busybox(
    addr: SocketAddr,
    remote: &str,
    local: &Path,
    blksize: Option<u16>,
) -> Result<(), String> {
    let program = installed(BUSYBOX)?;
    let mut cmd = Command::new(program);
    cmd.args(["tftp", "-g", "-r", remote, "-l"]).arg(local);
    if let Some(blksize) = blksize {
        cmd.arg("-b").arg(blksize.to_string());
    }
    cmd.arg(addr.ip().to_string()).arg(addr.port().to_string());
    let done = run(cmd, CLIENT_TIMEOUT);
    check_exit(done)
}

/// For the clients whose exit status is truthful.
fn check_exit(done: Finished) -> Result<(), String> {
    if done.success() {
        Ok(())
    } else {
        Err(done.describe())
    }
}

fn installed(name: &str) -> Result<PathBuf, String> {
    find_program(name).ok_or_else(|| format!("{name} is not installed"))
}

/// `name` on `PATH`, or in /usr/bin or /bin, if it is an executable file.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Percent-encodes everything in a URL path but unreserved characters and '/' (RFC 3986
/// §2.3); curl decodes it back before putting the name in the RRQ.
fn percent_encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[test]
fn percent_encode_keeps_slashes_and_unreserved() {
    assert_eq!(percent_encode("a/b-c_d.e~f"), "a/b-c_d.e~f");
    assert_eq!(
        percent_encode("sub dir/x;y%z?#"),
        "sub%20dir/x%3By%25z%3F%23"
    );
    assert_eq!(percent_encode("é"), "%C3%A9");
}
