//! `--user USER[:GROUP]`: give up root once the ports are bound, the rings created, their
//! buffers registered and the limits raised, the way tftp-hpa's `-u` and dnsmasq's `-u` do.
//!
//! Linux keeps credentials per thread; glibc's `setgroups`, `setresgid` and `setresuid` change
//! them for every thread of the process (it signals each one to make the system call), so the
//! shards already running drop with the main thread. The result is then checked task by task in
//! `/proc/self/task`, io_uring's worker threads included: if any task kept another identity or
//! a capability, the daemon refuses to serve rather than serve half-privileged.

use std::ffi::CString;

use anyhow::{bail, Context, Result};

/// The identity to run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// As the operator wrote it, for messages.
    pub spec: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

impl Identity {
    /// Looks up `USER[:GROUP]`, names or numbers. Without a group, the user's own group from
    /// the password database; a numeric user unknown there needs one (`65534:65534`).
    pub fn lookup(spec: &str) -> Result<Identity> {
        let (user, group) = match spec.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (spec, None),
        };
        if user.is_empty() || group.is_some_and(str::is_empty) {
            bail!("--user {spec}: expected USER or USER:GROUP");
        }
        let entry = passwd(user)?;
        let uid = match (user.parse::<libc::uid_t>(), &entry) {
            (Ok(uid), _) => uid,
            (Err(_), Some((uid, _))) => *uid,
            (Err(_), None) => bail!("--user {spec}: no user named {user}"),
        };
        let gid = match group {
            Some(group) => match group.parse::<libc::gid_t>() {
                Ok(gid) => gid,
                Err(_) => {
                    group_id(group)?.with_context(|| format!("--user {spec}: no group named {group}"))?
                }
            },
            None => match entry {
                Some((_, gid)) => gid,
                None => bail!("--user {spec}: user {user} has no entry in the password database; name a group too (USER:GROUP)"),
            },
        };
        Ok(Identity {
            spec: spec.to_owned(),
            uid,
            gid,
        })
    }

    /// Becomes this identity in every thread, keeping no supplementary group but `gid` and no
    /// capability, and checks that every task did. An error means the daemon must not serve.
    pub fn assume(&self) -> Result<()> {
        let (uid, gid) = (self.uid, self.gid);
        // SAFETY: plain identity queries.
        let current = unsafe {
            (
                libc::getuid(),
                libc::geteuid(),
                libc::getgid(),
                libc::getegid(),
            )
        };
        if current != (uid, uid, gid, gid) {
            let groups = [gid];
            // SAFETY: setgroups reads `groups.len()` ids from a live array; setresgid and
            // setresuid take plain ids. glibc applies all three to every thread.
            let failed = unsafe {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                    Some("setgroups")
                } else if libc::setresgid(gid, gid, gid) != 0 {
                    Some("setresgid")
                } else if libc::setresuid(uid, uid, uid) != 0 {
                    Some("setresuid")
                } else {
                    None
                }
            };
            if let Some(call) = failed {
                let e = std::io::Error::last_os_error();
                bail!(
                    "cannot become {} (uid {uid}, gid {gid}): {call}: {e}; start ringtftpd as \
                     root to use --user, or leave --user out",
                    self.spec
                );
            }
        }
        self.verify()
    }

    /// Checks every task of the process: real, effective, saved and filesystem ids, the groups,
    /// and (for anyone but root) empty permitted and effective capability sets.
    fn verify(&self) -> Result<()> {
        let tasks = std::fs::read_dir("/proc/self/task").context("cannot list /proc/self/task")?;
        let mut checked = 0;
        for task in tasks {
            let path = task?.path().join("status");
            let Ok(status) = std::fs::read_to_string(&path) else {
                // The task ended between the listing and the read.
                continue;
            };
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .unwrap_or("")
                    .to_owned()
            };
            let all = |line: String, id: u32| {
                let ids: Vec<&str> = line.split_whitespace().collect();
                !ids.is_empty() && ids.iter().all(|v| v.parse() == Ok(id))
            };
            let no_caps = |line: String| u64::from_str_radix(&line, 16) == Ok(0);
            let ok = all(field("Uid:"), self.uid)
                && all(field("Gid:"), self.gid)
                && all(field("Groups:"), self.gid)
                && (self.uid == 0 || (no_caps(field("CapEff:")) && no_caps(field("CapPrm:"))));
            if !ok {
                bail!(
                    "after switching to {} (uid {}, gid {}), {} still shows Uid {}, Gid {}, \
                     Groups {}, CapPrm {}, CapEff {}; refusing to serve",
                    self.spec,
                    self.uid,
                    self.gid,
                    path.display(),
                    field("Uid:"),
                    field("Gid:"),
                    field("Groups:"),
                    field("CapPrm:"),
                    field("CapEff:"),
                );
            }
            checked += 1;
        }
        if checked == 0 {
            bail!(
                "cannot read any task of /proc/self/task to check the switch to {}",
                self.spec
            );
        }
        Ok(())
    }
}

/// The uid and primary gid of user `name` (a name, or a number looked up as a uid), if known.
fn passwd(name: &str) -> Result<Option<(libc::uid_t, libc::gid_t)>> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: a zeroed passwd is a valid out-parameter; `buf` outlives the call and the
        // returned entry points into it only while we read the two ids.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = match name.parse::<libc::uid_t>() {
            // SAFETY: as above.
            Ok(uid) => unsafe {
                libc::getpwuid_r(
                    uid,
                    &mut entry,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut found,
                )
            },
            Err(_) => {
                let c = CString::new(name).context("a user name cannot hold a NUL")?;
                // SAFETY: as above, with a NUL-terminated name.
                unsafe {
                    libc::getpwnam_r(
                        c.as_ptr(),
                        &mut entry,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        &mut found,
                    )
                }
            }
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if found.is_null() {
            return Ok(None);
        }
        return Ok(Some((entry.pw_uid, entry.pw_gid)));
    }
}

/// The gid of group `name`, if known.
fn group_id(name: &str) -> Result<Option<libc::gid_t>> {
    let c = CString::new(name).context("a group name cannot hold a NUL")?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: a zeroed group is a valid out-parameter; `buf` outlives the call.
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as above, with a NUL-terminated name.
        let rc = unsafe {
            libc::getgrnam_r(
                c.as_ptr(),
                &mut entry,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return Ok((!found.is_null()).then_some(entry.gr_gid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_need_no_database() {
        let id = Identity::lookup("65534:65533").unwrap();
        assert_eq!((id.uid, id.gid), (65534, 65533));
    }

    #[test]
    fn root_is_found_by_name_with_its_group() {
        let id = Identity::lookup("root").unwrap();
        assert_eq!((id.uid, id.gid), (0, 0));
    }

    #[test]
    fn unknown_names_and_empty_parts_are_errors() {
        for spec in [
            "no-such-user-ringtftp",
            "root:no-such-group-ringtftp",
            ":0",
            "0:",
            "",
        ] {
            assert!(
                Identity::lookup(spec).is_err(),
                "{spec:?} should be refused"
            );
        }
    }
}
