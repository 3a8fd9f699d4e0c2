#!/usr/bin/env bash
# Builds the Debian package (dist/deb/build.sh), installs it with dpkg -i, runs what it
# installed (version, man page, completions, units neither enabled nor started, a real fetch
# with curl from /usr/sbin/ringtftpd on a loopback port), then removes and purges it, leaving
# the machine as it was. Run as root.
set -euo pipefail
cd "$(dirname "$0")/../.."
. dist/check/lib.sh

deb="$(bash dist/deb/build.sh)"
echo "built $deb ($(du -k "$deb" | cut -f1) KiB)"
dpkg-deb --field "$deb" Depends | sed 's/^/Depends: /'

dir=""
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    [ -n "$dir" ] && rm -rf "$dir"
    if dpkg-query -W ringtftpd >/dev/null 2>&1; then
        dpkg --purge ringtftpd >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

timeout 120 dpkg -i "$deb" >/dev/null
fail() { echo "deb check failed: $*" >&2; exit 1; }

version="$(timeout 10 /usr/sbin/ringtftpd --version)"
echo "installed: $version"
[ "$version" = "ringtftpd $(dpkg-deb --field "$deb" Version)" ] || fail "--version says '$version'"
if command -v man >/dev/null; then
    page="$(man -w ringtftpd)" || fail "man -w ringtftpd found no page"
else
    page=/usr/share/man/man8/ringtftpd.8.gz
fi
[ "$page" = /usr/share/man/man8/ringtftpd.8.gz ] && [ -s "$page" ] || fail "no man page ($page)"
zgrep -q -e 'single\\-port' "$page" || fail "the man page lacks the options"
for f in /usr/share/bash-completion/completions/ringtftpd \
    /usr/share/zsh/vendor-completions/_ringtftpd \
    /usr/share/fish/vendor_completions.d/ringtftpd.fish \
    /usr/lib/systemd/system/ringtftpd.service /usr/lib/systemd/system/ringtftpd.socket \
    /usr/share/doc/ringtftpd/copyright /etc/default/ringtftpd; do
    [ -s "$f" ] || fail "$f is missing or empty"
done
bash -c '. /usr/share/bash-completion/completions/ringtftpd && complete -p ringtftpd' >/dev/null \
    || fail "the bash completion does not load"
[ -d /srv/tftp ] || fail "/srv/tftp was not created"
grep -q '^ExecStart=/usr/sbin/ringtftpd ' /usr/lib/systemd/system/ringtftpd.service \
    || fail "the service does not start /usr/sbin/ringtftpd"
if ls /etc/systemd/system/*.wants/ringtftpd.* >/dev/null 2>&1; then
    fail "the package enabled a unit"
fi

# A real transfer from the installed binary.
dir="$(make_served_dir)"
port="$(free_udp_port)"
log="$(mktemp -t ringtftpd-deb.XXXXXX.log)"
/usr/sbin/ringtftpd "$port" --bind 127.0.0.1 --directory "$dir" >"$log" 2>&1 &
pid=$!
wait_for_line "$log" ' serving .* backend=' 10
fetch_and_compare "$port" "$dir" || { cat "$log" >&2; fail "fetch from the installed binary"; }
grep -o 'backend=[a-z_]*' "$log" | head -1 | sed 's/^/installed binary served: /'
kill "$pid"
wait "$pid" || true
pid=""
rm -f "$log"

timeout 120 dpkg -r ringtftpd >/dev/null
[ ! -e /usr/sbin/ringtftpd ] || fail "dpkg -r left /usr/sbin/ringtftpd"
timeout 120 dpkg --purge ringtftpd >/dev/null
[ ! -e /etc/default/ringtftpd ] || fail "dpkg --purge left /etc/default/ringtftpd"
echo "deb: installed, ran, served a file byte-exact, removed"
