//! Rule files as operators write them, against the names PXE ROMs, iPXE, Windows boot managers
//! and pxelinux really send.

use super::*;
use crate::packet::ErrorCode;

const CLIENT: &str = "192.168.0.1";

fn remap(rules: &str) -> Remap {
    Remap::parse(rules).unwrap_or_else(|e| panic!("{e}"))
}

#[track_caller]
fn maps(rules: &Remap, name: &str, expected: &str) {
    maps_from(rules, name, CLIENT, expected);
}

#[track_caller]
fn maps_from(rules: &Remap, name: &str, client: &str, expected: &str) {
    match rules.apply(name, client.parse().unwrap()) {
        Ok(mapped) => assert_eq!(mapped, expected, "{name:?} from {client}"),
        Err(e) => panic!("{name:?} from {client}: {e:?}"),
    }
}

#[track_caller]
fn refuses(rules: &Remap, name: &str) -> ResolveError {
    match rules.apply(name, CLIENT.parse().unwrap()) {
        Ok(mapped) => panic!("{name:?} became {mapped:?}"),
        Err(e) => e,
    }
}

#[track_caller]
fn bad(rules: &str) -> RemapError {
    match Remap::parse(rules) {
        Ok(remap) => panic!("{rules:?} parsed as {remap:?}"),
        Err(e) => e,
    }
}

/// The example of tftpd(8) and what WDS set-ups put beside it.
const WINDOWS: &str = r"
# Windows boot managers ask for \Boot\BCD, \boot\x64\wdsnbp.com, ...
rg   \\            /          # backslashes become slashes
r    ^[^/]         /\0        # relative names are made absolute
r    ^/tftpboot/   /          # an old prefix goes
ri   ^/boot/(.*)$  /boot/\L\1 # the boot tree is stored lower-case
";

#[test]
fn windows_names_lose_their_backslashes_and_case() {
    let rules = remap(WINDOWS);
    assert_eq!(rules.len(), 4);
    maps(&rules, r"\Boot\BCD", "/boot/bcd");
    maps(&rules, r"\boot\x64\wdsnbp.com", "/boot/x64/wdsnbp.com");
    maps(
        &rules,
        r"Boot\Fonts\wgl4_boot.ttf",
        "/boot/fonts/wgl4_boot.ttf",
    );
    maps(&rules, "/tftpboot/pxelinux.0", "/pxelinux.0");
    maps(&rules, "pxelinux.0", "/pxelinux.0");
    maps(&rules, "/BOOT/BCD", "/boot/bcd");
}

#[test]
fn pxelinux_config_names_by_mac_and_hex_address() {
    let rules = remap(
        r"
        # MAC files live in one directory per vendor prefix, any case the ROM sends
        rie ^pxelinux\.cfg/01-(([0-9a-f]{2}-){2}[0-9a-f]{2})-(.*)$ cfg/\L\1\E/\3
        re ^pxelinux\.cfg/([0-9A-F]{1,8})$ cfg/ip/\1
        # the catch-all names the client: a generated file per address
        r  ^pxelinux\.cfg/default$ cfg/ip/\x
        ",
    );
    maps(
        &rules,
        "pxelinux.cfg/01-52-54-00-ab-cd-ef",
        "cfg/52-54-00/ab-cd-ef",
    );
    maps(
        &rules,
        "pxelinux.cfg/01-52-54-0A-AB-CD-EF",
        "cfg/52-54-0a/AB-CD-EF",
    );
    // pxelinux tries C0A80001, then C0A8000, C0A800, ... and finally "default".
    maps(&rules, "pxelinux.cfg/C0A80001", "cfg/ip/C0A80001");
    maps(&rules, "pxelinux.cfg/C0A8", "cfg/ip/C0A8");
    maps(&rules, "pxelinux.cfg/default", "cfg/ip/C0A80001");
    maps_from(
        &rules,
        "pxelinux.cfg/default",
        "10.1.2.254",
        "cfg/ip/0A0102FE",
    );
    maps(&rules, "pxelinux.0", "pxelinux.0");
}

#[test]
fn ipxe_and_pxe_names_by_client_address() {
    let rules = remap(
        r"
        r ^/?boot\.ipxe$        ipxe/\i.ipxe   # one script per client
        r ^/?(undionly\.kpxe)$  bin/\1
        r ^/                    # the slash PXE ROMs put in front goes
        ",
    );
    maps(&rules, "boot.ipxe", "ipxe/192.168.0.1.ipxe");
    maps(&rules, "/boot.ipxe", "ipxe/192.168.0.1.ipxe");
    maps(&rules, "undionly.kpxe", "bin/undionly.kpxe");
    maps(&rules, "/pxelinux.0", "pxelinux.0");
    maps(&rules, "/efi/grubx64.efi", "efi/grubx64.efi");
    maps_from(&rules, "boot.ipxe", "2001:db8::7", "ipxe/2001:db8::7.ipxe");
    // A client on a dual-stack socket arrives IPv4-mapped: it is an IPv4 client.
    maps_from(
        &rules,
        "boot.ipxe",
        "::ffff:192.0.2.7",
        "ipxe/192.0.2.7.ipxe",
    );
}

#[test]
fn client_address_escapes() {
    let rules = remap(r"r ^.*$ \i=\x");
    maps_from(&rules, "x", "192.0.2.7", "192.0.2.7=C0000207");
    maps_from(
        &rules,
        "x",
        "2001:db8::1",
        "2001:db8::1=20010DB8000000000000000000000001",
    );
    maps_from(&rules, "x", "::ffff:10.0.0.1", "10.0.0.1=0A000001");
}

#[test]
fn global_rewrites_repeat_and_runaways_are_refused() {
    maps(&remap(r"rg a b"), "banana", "bbnbnb");
    // Without g, only the first match.
    maps(&remap(r"r a b"), "banana", "bbnana");
    // g starts over from the beginning each time; gg goes on after the replacement.
    maps(&remap(r"rgg a aa"), "banana", "baanaanaa");
    let e = refuses(&remap(r"rg a aa"), "banana");
    assert!(
        matches!(e, ResolveError::Refused(ref m) if m == RUNAWAY),
        "{e:?}"
    );
    // A restart loop is a runaway too.
    let e = refuses(&remap("rs ^x xx"), "x");
    assert_eq!(e.code(), ErrorCode::AccessViolation);
}

#[test]
fn end_and_restart() {
    let rules = remap(
        r"
        re ^old/ new/
        r  ^new/ newer/
        ",
    );
    maps(&rules, "old/f", "new/f");
    maps(&rules, "new/f", "newer/f");
    // s goes back to the first rule after a match; e ends there.
    let rules = remap(
        r"
        r  ^c$  done
        rs ^b$  c
        r  ^a$  b
        s  ^b$
        ",
    );
    maps(&rules, "a", "done");
    // Matching rules without r keep the name.
    maps(&remap("e ^a\nr a b"), "a", "a");
    maps(&remap("e ^x\nr a b"), "a", "b");
}

#[test]
fn abort_refuses_with_or_without_a_message() {
    let rules = remap(
        r"
        a  \.\.           # no climbing
        a  ^secret/  Not\ for\ \i
        a~ ^(pxelinux|boot|efi)  # nothing else exists
        ",
    );
    let e = refuses(&rules, "boot/../x");
    assert!(matches!(e, ResolveError::AccessViolation), "{e:?}");
    let e = refuses(&rules, "secret/key");
    assert_eq!(e.code(), ErrorCode::AccessViolation);
    assert_eq!(e.message(), "Not for 192.168.0.1");
    assert!(matches!(
        refuses(&rules, "etc/passwd"),
        ResolveError::AccessViolation
    ));
    maps(&rules, "pxelinux.0", "pxelinux.0");
    maps(&rules, "efi/boot.efi", "efi/boot.efi");
}

#[test]
fn family_and_direction_flags() {
    let rules = remap(
        r"
        r4 ^ v4/
        r6 ^ v6/
        rP ^ written/
        rG ^ read/
        ",
    );
    maps_from(&rules, "f", "192.0.2.1", "read/v4/f");
    maps_from(&rules, "f", "::ffff:192.0.2.1", "read/v4/f");
    maps_from(&rules, "f", "2001:db8::1", "read/v6/f");
}

#[test]
fn case_insensitive_matching_and_case_escapes() {
    maps(
        &remap(r"ri ^pxelinux\.0$ lpxelinux.0"),
        "PXELinux.0",
        "lpxelinux.0",
    );
    maps(
        &remap(r"r ^pxelinux\.0$ lpxelinux.0"),
        "PXELinux.0",
        "PXELinux.0",
    );
    maps(
        &remap(r"r ^(.*)/(.*)$ \U\1\E/\2"),
        "efi/boot.efi",
        "EFI/boot.efi",
    );
    maps(
        &remap(r"r ^.*$ \L\0"),
        "EFI/BOOT/BOOTX64.EFI",
        "efi/boot/bootx64.efi",
    );
}

#[test]
fn replacement_escapes() {
    // `\\` is a backslash, a trailing one too; other escapes stand for themselves.
    maps(&remap(r"r ^ a\\b"), "", r"a\b");
    maps(&remap(r"r ^ a\"), "", r"a\");
    maps(&remap(r"r ^ \q\#\ x"), "", "q# x");
    // A group that did not take part is empty; so is one the regex does not have.
    maps(&remap(r"r ^(a)?b$ [\1][\5]"), "b", "[][]");
    // `\0` is the match; the rest of the name is kept around it.
    maps(&remap(r"r n+ <\0>"), "bannnana", "ba<nnn>ana");
}

#[test]
fn fields_comments_and_escaped_blanks() {
    let rules = remap(
        "# a comment line\n\
         \n\
         \t   \n\
         r\tfoo\\ bar\tfoo_bar   # trailing comment\n\
         r hash\\#tag hashtag#comment right after\r\n\
         r ^x y extra fields are ignored, as tftp-hpa does\n",
    );
    assert_eq!(rules.len(), 3);
    maps(&rules, "foo bar", "foo_bar");
    maps(&rules, "hash#tag", "hashtag");
    maps(&rules, "x", "y");
    assert!(remap("").is_empty());
    assert!(remap("# only\n  # comments\n").is_empty());
}

#[test]
fn bad_rule_files_name_the_line() {
    let e = bad("r a b\n\nrq c d\n");
    assert_eq!(e.line, 3);
    assert!(e.message.contains("invalid flag 'q'"), "{e}");
    assert_eq!(e.to_string(), format!("line 3: {}", e.message));

    let e = bad("# fine\nr\n");
    assert_eq!(e.line, 2);
    assert!(e.message.contains("without a regular expression"), "{e}");

    let e = bad("r ok ok\nr (unclosed x\n");
    assert_eq!(e.line, 2);
    assert!(e.message.contains("bad regular expression"), "{e}");
    assert!(!e.message.contains('\n'), "one line: {e}");

    for (rules, flags) in [
        ("ra x", "'r' and 'a'"),
        ("r~ x", "'r' and '~'"),
        ("as x", "'a' and 's'"),
        ("ae x", "'a' and 'e'"),
        ("es x", "'e' and 's'"),
        ("GP x", "'G' and 'P'"),
        ("r46 x", "'4' and '6'"),
    ] {
        let e = bad(rules);
        assert!(e.message.contains(flags), "{rules:?}: {e}");
        assert_eq!(e.line, 1);
    }
    assert!(bad("j x label").message.contains("not supported"));
    assert!(bad("rE x y").message.contains("not supported"));
    assert!(bad(":label").message.contains("not supported"));
    // Back-references inside the regex are a GNU extension the regex crate refuses.
    assert_eq!(bad(r"r (a)\1 x").line, 1);
}

#[test]
fn names_that_do_not_match_are_kept() {
    let rules = remap(WINDOWS);
    maps(&rules, "/already/fine", "/already/fine");
    maps(&remap(""), r"\Boot\BCD", r"\Boot\BCD");
}
