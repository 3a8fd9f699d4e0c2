//! Filename remapping with tftp-hpa's rule files (`in.tftpd -m FILE`, tftpd(8) "FILENAME
//! REMAPPING"), so an existing `/etc/tftpd.map` moves over unchanged.
//!
//! A rule file has one rule a line, `FLAGS REGEX [REPLACEMENT]`, fields separated by blanks; a
//! backslash keeps the next character (a blank, a `#`) in its field, and an unescaped `#` starts
//! a comment. Rules are tried in order on the name as the client sent it; each that matches acts
//! by its flags:
//!
//! | flag | meaning |
//! |------|---------|
//! | `r`  | rewrite the matched part to REPLACEMENT |
//! | `g`  | with `r`: rewrite again, from the start, until the rule no longer matches; `gg`: sed's `g`, going on after each replacement |
//! | `i`  | match case-insensitively |
//! | `e`  | end: stop after this rule if it matched |
//! | `s`  | start over at the first rule if this one matched |
//! | `a`  | abort: refuse the request (Access violation), with REPLACEMENT, if any, as the message |
//! | `~`  | the rule matches where REGEX does *not* |
//! | `4` `6` | only for IPv4 / IPv6 clients (an IPv4-mapped IPv6 client counts as IPv4) |
//! | `G` `P` | only for reads / writes: `P` rules never apply, as nothing is ever written |
//!
//! In REPLACEMENT, `\0` is the whole match, `\1`…`\9` its groups, `\i` the client's IP address
//! as text (`192.0.2.7`), `\x` the same in upper-case hex (`C0000207`, the spelling of pxelinux's
//! `pxelinux.cfg/C0A80001`), `\\` a backslash, `\U` `\L` `\E` upper-case, lower-case
//! and plain from there on; any other escaped character stands for itself.
//!
//! Differences from tftp-hpa, which uses POSIX extended regular expressions from the C library:
//! REGEX is compiled by the `regex` crate, byte-wise (as in the C locale) — the syntax of
//! everyday rules (`^`, `$`, `.`, `*`, `+`, `?`, `[...]`, `[[:alpha:]]`, `(...)`, `|`, `{m,n}`,
//! `\.`) is the same, but back-references inside a REGEX (a GNU extension) are refused, and an
//! alternation prefers its first branch that matches where POSIX prefers the longest. tftp-hpa
//! 5.3's jumps and labels (`j`, `:label`) and `E` are refused with the line named. As in
//! tftp-hpa, more than 1024 rule steps on one name (a `g` rule whose replacement matches
//! again) refuse the request.
//!
//! The result is a name like any other: the directory resolver turns `\` into `/`, strips
//! leading slashes and opens it confined beneath the root.

use std::fmt;
use std::net::IpAddr;

use regex::bytes::{Captures, Regex, RegexBuilder};

use super::ResolveError;

/// A parsed rule file: see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Remap {
    rules: Vec<Rule>,
}

/// Why a rule file was refused: the line (from 1) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemapError {
    /// The line of the rule file, counting from 1.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for RemapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for RemapError {}

#[derive(Debug, Clone)]
struct Rule {
    line: usize,
    regex: Regex,
    replacement: Vec<u8>,
    rewrite: bool,
    /// `g`: rewrite again from the start; `gg`: go on after the replacement.
    global: Global,
    exit: bool,
    restart: bool,
    abort: bool,
    inverse: bool,
    only: Option<Family>,
    /// `P`: a rule for write requests, which are never served.
    writes_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    Once,
    FromStart,
    Onwards,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Remap {
    /// Parses a rule file's text. An empty file (or one of comments) is no rules at all.
    pub fn parse(text: &str) -> Result<Remap, RemapError> {
        let mut rules = Vec::new();
        for (index, line) in text.split('\n').enumerate() {
            let line = line.replace(['\r', '\0'], "");
            if let Some(rule) = parse_line(&line, index + 1)? {
                rules.push(rule);
            }
        }
        Ok(Remap { rules })
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules (every name is kept).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Applies the rules to `name`, requested by the client at `client`: the name to serve, or
    /// the refusal of an `a` rule ([`ResolveError::Refused`], or
    /// [`AccessViolation`](ResolveError::AccessViolation) without a message) or of a runaway
    /// rule set.
    pub fn apply(&self, name: &str, client: IpAddr) -> Result<String, ResolveError> {
        let client = client.to_canonical();
        let family = if client.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        };
        let mut current = name.as_bytes().to_vec();
        let mut steps = MAX_STEPS;
        let mut step = || {
            steps -= 1;
            if steps == 0 {
                Err(ResolveError::Refused(RUNAWAY.to_owned()))
            } else {
                Ok(())
            }
        };
        let mut index = 0;
        while let Some(rule) = self.rules.get(index) {
            index += 1;
            if rule.writes_only || rule.only.is_some_and(|only| only != family) {
                continue;
            }
            step()?;
            let found = rule.regex.captures(&current).map(|c| groups_of(&c));
            if found.is_some() == rule.inverse {
                continue;
            }
            if rule.rewrite {
                let mut groups = found.unwrap_or_default();
                loop {
                    let (rewritten, after) = rewrite(&current, &groups, &rule.replacement, client);
                    current = rewritten;
                    let at = match rule.global {
                        Global::Once => break,
                        Global::FromStart => 0,
                        Global::Onwards if after >= current.len() => break,
                        Global::Onwards => after,
                    };
                    match rule.regex.captures_at(&current, at) {
                        Some(c) => groups = groups_of(&c),
                        None => break,
                    }
                    step()?;
                }
            }
            if rule.abort {
                tracing::debug!(line = rule.line, name, "a remap rule refused the request");
                let mut message = Vec::new();
                expand(&rule.replacement, &[], &current, client, &mut message);
                return Err(if message.is_empty() {
                    ResolveError::AccessViolation
                } else {
                    ResolveError::Refused(String::from_utf8_lossy(&message).into_owned())
                });
            }
            if rule.exit {
                break;
            }
            if rule.restart {
                index = 0;
            }
        }
        // Only a replacement can make the bytes invalid UTF-8, and no such name can be opened
        // through a &str API anyway.
        String::from_utf8(current).map_err(|_| ResolveError::NotFound)
    }
}

/// The byte ranges of `\0`…`\9` in the haystack.
type Groups = [Option<(usize, usize)>; 10];

fn groups_of(captures: &Captures<'_>) -> Groups {
    let mut groups = [None; 10];
    for (i, group) in groups.iter_mut().enumerate() {
        *group = captures.get(i).map(|m| (m.start(), m.end()));
    }
    groups
}

/// `input` with its match (`\0` of `groups`) replaced by the expansion of `replacement`, and
/// where the replacement ends in the result.
fn rewrite(input: &[u8], groups: &Groups, replacement: &[u8], client: IpAddr) -> (Vec<u8>, usize) {
    let (start, end) = groups[0].unwrap_or((0, 0));
    let mut out = input[..start].to_vec();
    expand(replacement, groups, input, client, &mut out);
    let after = out.len();
    out.extend_from_slice(&input[end..]);
    (out, after)
}

/// Appends `replacement` with its escapes expanded (see the module documentation).
fn expand(
    replacement: &[u8],
    groups: &[Option<(usize, usize)>],
    input: &[u8],
    client: IpAddr,
    out: &mut Vec<u8>,
) {
    let mut case = Case::Keep;
    let mut bytes = replacement.iter().copied();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(case.apply(b));
            continue;
        }
        match bytes.next() {
            Some(d @ b'0'..=b'9') => {
                if let Some(Some((s, e))) = groups.get(usize::from(d - b'0')) {
                    out.extend(input[*s..*e].iter().map(|&b| case.apply(b)));
                }
            }
            Some(b'i') => out.extend(client.to_string().bytes().map(|b| case.apply(b))),
            Some(b'x') => {
                let octets = match client {
                    IpAddr::V4(v4) => v4.octets().to_vec(),
                    IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                for octet in octets {
                    out.extend(format!("{octet:02X}").bytes().map(|b| case.apply(b)));
                }
            }
            Some(b'U') => case = Case::Upper,
            Some(b'L') => case = Case::Lower,
            Some(b'E') => case = Case::Keep,
            // `\\`, and a backslash at the very end, are a backslash.
            Some(b'\\') | None => out.push(b'\\'),
            Some(other) => out.push(case.apply(other)),
        }
    }
}

#[derive(Clone, Copy)]
enum Case {
    Keep,
    Upper,
    Lower,
}

impl Case {
    fn apply(self, b: u8) -> u8 {
        match self {
            Case::Keep => b,
            Case::Upper => b.to_ascii_uppercase(),
            Case::Lower => b.to_ascii_lowercase(),
        }
    }
}

/// One line of a rule file: a rule, nothing (blank or a comment), or what is wrong with it.
fn parse_line(line: &str, number: usize) -> Result<Option<Rule>, RemapError> {
    let error = |message: String| RemapError {
        line: number,
        message,
    };
    let mut rest = line;
    let Some(flags) = field(&mut rest) else {
        return Ok(None);
    };
    if flags.starts_with(':') {
        return Err(error(format!(
            "labels (\"{flags}\") and jumps are not supported"
        )));
    }
    let mut rule = Rule {
        line: number,
        regex: Regex::new("").expect("the empty regex compiles"),
        replacement: Vec::new(),
        rewrite: false,
        global: Global::Once,
        exit: false,
        restart: false,
        abort: false,
        inverse: false,
        only: None,
        writes_only: false,
    };
    let mut case_insensitive = false;
    let mut reads_only = false;
    for flag in flags.chars() {
        match flag {
            'r' => rule.rewrite = true,
            'g' if rule.global == Global::Once => rule.global = Global::FromStart,
            'g' => rule.global = Global::Onwards,
            'i' => case_insensitive = true,
            'e' => rule.exit = true,
            's' => rule.restart = true,
            'a' => rule.abort = true,
            '~' => rule.inverse = true,
            '4' => rule.only = Some(Family::V4),
            '6' => rule.only = Some(Family::V6),
            'G' => reads_only = true,
            'P' => rule.writes_only = true,
            'j' | 'E' => {
                return Err(error(format!(
                    "flag '{flag}' (tftp-hpa 5.3's jumps and file checks) is not supported"
                )))
            }
            _ => return Err(error(format!("invalid flag '{flag}' in \"{flags}\""))),
        }
    }
    for (a, b, both) in [
        (rule.rewrite, rule.inverse, "r~"),
        (rule.rewrite, rule.abort, "ra"),
        (rule.abort, rule.restart, "as"),
        (rule.abort, rule.exit, "ae"),
        (rule.exit, rule.restart, "es"),
        (reads_only, rule.writes_only, "GP"),
    ] {
        if a && b {
            let (a, b) = both.split_at(1);
            return Err(error(format!("flags '{a}' and '{b}' cannot be combined")));
        }
    }
    if rule.only.is_some() && flags.contains('4') && flags.contains('6') {
        return Err(error("flags '4' and '6' cannot be combined".to_owned()));
    }
    if !rule.rewrite {
        rule.global = Global::Once;
    }
    let Some(pattern) = field(&mut rest) else {
        return Err(error(format!(
            "flags \"{flags}\" without a regular expression"
        )));
    };
    rule.regex = RegexBuilder::new(pattern)
        .unicode(false)
        .case_insensitive(case_insensitive)
        .build()
        .map_err(|e| {
            error(format!(
                "bad regular expression \"{pattern}\": {}",
                one_line(&e)
            ))
        })?;
    rule.replacement = field(&mut rest).unwrap_or_default().as_bytes().to_vec();
    Ok(Some(rule))
}

/// The next blank-separated field of `rest`, if any, advancing past it: a backslash keeps the
/// next character in the field (the backslash stays too, for the regex or the replacement to
/// interpret), and an unescaped `#` ends the line.
fn field<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let text = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
    let mut escaped = false;
    let end = text
        .char_indices()
        .find(|&(_, c)| {
            let ends = !escaped && (c.is_ascii_whitespace() || c == '#');
            escaped = !escaped && c == '\\';
            ends
        })
        .map_or(text.len(), |(i, _)| i);
    let (field, after) = text.split_at(end);
    // A `#` right here comments out the rest of the line.
    *rest = if after.starts_with('#') { "" } else { after };
    (!field.is_empty()).then_some(field)
}

/// The regex crate's error, which draws a caret under the pattern on several lines, on one.
fn one_line(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find(|l| l.trim_start().starts_with("error:"))
        .map_or(text.clone(), |l| {
            l.trim().trim_start_matches("error:").trim().to_owned()
        })
}

/// Rule steps on one name before it is refused (tftp-hpa's "deadman").
const MAX_STEPS: u32 = 1024;
const RUNAWAY: &str = "Remap table failure";

#[cfg(test)]
mod tests;
