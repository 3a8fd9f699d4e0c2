//! nobodd's configuration files, read as `nobodd-tftpd` reads them, so that a nobodd user's
//! boards move to ringtftpd by changing the command alone.
//!
//! The files, later ones overriding earlier ones key by key: `/etc/nobodd/nobodd.conf`,
//! `/usr/local/etc/nobodd/nobodd.conf`, `$XDG_CONFIG_HOME/nobodd/nobodd.conf` (`~/.config` by
//! default), then every `*.conf` in the `[tftp]` section's `includedir` (`/etc/nobodd/conf.d`
//! by default) in sorted order. They are INI files as nobodd's `configparser` reads them:
//! `[section]` headers, `key = value`, `#` and `;` comment lines, keys in any case, indented
//! lines going on with the value above. What ringtftpd takes from them (`--nobodd-config`):
//!
//! - `[board:SERIAL]` sections: `image` (relative to the file that names it), `partition`
//!   (default 1) and `ip`, as `--board SERIAL,IMAGE,PARTITION,IP` would give them; any other
//!   key is an error (nobodd refuses them too), so `partiton = 2` is not silently partition 1;
//! - `[tftp]` `listen` (an address, or `systemd`: the socket systemd passes) and `port`, where
//!   the command line gives neither.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ringtftp::resolve::boards::{parse_ip, parse_partition, parse_serial, Board};

/// What the files say.
#[derive(Debug, Default)]
pub struct Settings {
    pub boards: Vec<Board>,
    pub listen: Option<String>,
    pub port: Option<String>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

/// Each section: the file whose header last named it, where it first appeared (boards are
/// taken in that order, so a later section for the same serial wins), and its keys, each value
/// with the file it came from (relative paths are relative to it).
type Sections = BTreeMap<String, Section>;

struct Section {
    file: PathBuf,
    order: usize,
    keys: Keys,
}

type Keys = BTreeMap<String, (String, PathBuf)>;

/// Reads nobodd's files where they exist; a file that exists but cannot be read or parsed, or a
/// board section that is wrong, is an error naming it.
pub fn read() -> Result<Settings> {
    let mut sections = Sections::new();
    let mut files = Vec::new();
    for file in locations() {
        if file.exists() {
            parse_file(&file, &mut sections)?;
            files.push(file);
        }
    }
    let include = match sections.get("tftp").and_then(|s| s.keys.get("includedir")) {
        Some((dir, from)) => relative_to(from, dir),
        None => PathBuf::from("/etc/nobodd/conf.d"),
    };
    if let Ok(entries) = std::fs::read_dir(&include) {
        let mut included: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        included.sort();
        for file in included {
            parse_file(&file, &mut sections)?;
            files.push(file);
        }
    }
    let mut settings = Settings {
        files,
        ..Settings::default()
    };
    if let Some(tftp) = sections.get("tftp") {
        settings.listen = tftp.keys.get("listen").map(|(v, _)| v.clone());
        settings.port = tftp.keys.get("port").map(|(v, _)| v.clone());
    }
    let mut boards: Vec<(&String, &Section)> = sections
        .iter()
        .filter(|(name, _)| name.starts_with("board:"))
        .collect();
    boards.sort_by_key(|(_, section)| section.order);
    for (name, section) in boards {
        let serial = &name["board:".len()..];
        settings.boards.push(
            board(serial, &section.keys)
                .with_context(|| format!("section [{name}] of {}", section.file.display()))?,
        );
    }
    Ok(settings)
}

/// The address `[tftp] listen` names: `None` for `systemd` (or inetd's `stdin`), where a
/// socket was passed; an error for anything else that is not an IP address (nobodd fails
/// there too), rather than listening everywhere.
pub fn listen_address(listen: &str, passed: bool) -> Result<Option<IpAddr>> {
    match listen.trim() {
        "systemd" | "stdin" if passed => Ok(None),
        "systemd" | "stdin" => {
            bail!("nobodd's configuration says listen = {listen}, but no socket was passed (LISTEN_FDS)")
        }
        address => match address.parse() {
            Ok(ip) => Ok(Some(ip)),
            Err(_) => bail!("nobodd's configuration says listen = {address}: not an IP address"),
        },
    }
}

/// Where nobodd looks, in its order.
fn locations() -> Vec<PathBuf> {
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")));
    let mut files = vec![
        PathBuf::from("/etc/nobodd/nobodd.conf"),
        PathBuf::from("/usr/local/etc/nobodd/nobodd.conf"),
    ];
    files.extend(config_home.map(|dir| dir.join("nobodd/nobodd.conf")));
    files
}

fn board(serial: &str, keys: &Keys) -> Result<Board> {
    let serial = parse_serial(serial).map_err(anyhow::Error::msg)?;
    if let Some(key) = keys
        .keys()
        .find(|k| !["image", "partition", "ip"].contains(&k.as_str()))
    {
        bail!("unknown key {key:?} (a board takes image, partition and ip)");
    }
    let Some((image, from)) = keys.get("image") else {
        bail!("no image = line");
    };
    let partition = match keys.get("partition") {
        Some((p, _)) => parse_partition(p).map_err(anyhow::Error::msg)?,
        None => 1,
    };
    let ip = match keys.get("ip") {
        Some((ip, _)) => Some(parse_ip(ip).map_err(anyhow::Error::msg)?),
        None => None,
    };
    Ok(Board {
        serial,
        image: relative_to(from, image),
        partition,
        ip,
    })
}

/// `path` as written in `file`: relative to the file's directory.
fn relative_to(file: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    match file.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// Adds `file`'s sections to `sections`, its keys replacing those already there.
fn parse_file(file: &Path, sections: &mut Sections) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    parse(&text, file, sections)
        .with_context(|| format!("bad configuration file {}", file.display()))
}

fn parse(text: &str, file: &Path, sections: &mut Sections) -> Result<()> {
    let mut section: Option<String> = None;
    let mut last_key: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        // An indented line goes on with the value above, as configparser reads it.
        if line.starts_with([' ', '\t']) {
            if let (Some(s), Some(k)) = (&section, &last_key) {
                if let Some((value, _)) = sections.get_mut(s).and_then(|s| s.keys.get_mut(k)) {
                    value.push('\n');
                    value.push_str(trimmed);
                    continue;
                }
            }
        }
        if let Some(name) = trimmed.strip_prefix('[') {
            let Some(name) = name.strip_suffix(']') else {
                bail!("line {n}: a section header without its closing ]");
            };
            let name = name.trim().to_string();
            let order = sections.len();
            sections
                .entry(name.clone())
                .or_insert_with(|| Section {
                    file: file.to_path_buf(),
                    order,
                    keys: Keys::new(),
                })
                .file = file.to_path_buf();
            section = Some(name);
            last_key = None;
            continue;
        }
        let Some(at) = trimmed.find('=') else {
            bail!("line {n}: expected KEY = VALUE");
        };
        let Some(current) = &section else {
            bail!("line {n}: a setting before any [section]");
        };
        let key = trimmed[..at].trim().to_lowercase();
        let value = trimmed[at + 1..].trim().to_string();
        if let Some(section) = sections.get_mut(current) {
            section
                .keys
                .insert(key.clone(), (value, file.to_path_buf()));
        }
        last_key = Some(key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_merge_and_image_paths_are_relative_to_their_file() {
        let mut sections = Sections::new();
        let text = "[tftp]\nlisten = ::\nport = 69\n\n# a board\n[board:0123ABCD]\nimage = pi.img\nPartition = 2\n";
        parse(text, Path::new("/etc/nobodd/nobodd.conf"), &mut sections).unwrap();
        parse(
            "[board:0123abcd]\nip = 192.0.2.9\n",
            Path::new("/etc/nobodd/conf.d/a.conf"),
            &mut sections,
        )
        .unwrap();
        let b = board("0123ABCD", &sections["board:0123ABCD"].keys).unwrap();
        assert_eq!(b.serial, 0x0123abcd);
        assert_eq!(b.image, Path::new("/etc/nobodd/pi.img"));
        assert_eq!(b.partition, 2);
        assert!(
            board("0123abcd", &sections["board:0123abcd"].keys).is_err(),
            "no image"
        );
        assert_eq!(sections["tftp"].keys["port"].0, "69");
        assert_eq!(
            sections["board:0123abcd"].file,
            Path::new("/etc/nobodd/conf.d/a.conf")
        );
        let mut typo = Keys::new();
        typo.insert("image".into(), ("a.img".into(), "/x.conf".into()));
        typo.insert("partiton".into(), ("2".into(), "/x.conf".into()));
        assert!(board("1", &typo).is_err(), "an unknown key");
        assert_eq!(
            listen_address("::1", false).unwrap(),
            Some("::1".parse().unwrap())
        );
        assert_eq!(listen_address("systemd", true).unwrap(), None);
        assert!(listen_address("systemd", false).is_err());
        assert!(listen_address("localhost", false).is_err());
        let mut bad = Sections::new();
        assert!(parse("image = x\n", Path::new("a"), &mut bad).is_err());
        assert!(parse("[tftp\n", Path::new("a"), &mut bad).is_err());
        assert!(parse("[tftp]\njunk\n", Path::new("a"), &mut bad).is_err());
    }
}
