#!/usr/bin/env bash
# Builds the Debian package of ringtftpd from this repository:
#
#   bash dist/deb/build.sh          -> prints the path of target/debian/ringtftpd_VERSION_ARCH.deb
#
# Needs only cargo, dpkg-dev (dpkg-deb, dpkg-shlibdeps), binutils and gzip: no cargo-deb. It
# reuses an existing `cargo build --release` and the dev-profile build of the man-page example.
# The package holds the daemon (/usr/sbin/ringtftpd), the systemd units (installed, neither
# enabled nor started), the man page and bash/zsh/fish completions generated from the CLI
# definition (examples/man.rs), /etc/default/ringtftpd, an empty /srv/tftp and the copyright.
set -euo pipefail
cd "$(dirname "$0")/../.."

target="${CARGO_TARGET_DIR:-$PWD/target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac

cargo build --quiet --release --locked --bin ringtftpd
bin="$target/release/ringtftpd"
version="$("$bin" --version | awk '{print $2}')"
arch="$(dpkg --print-architecture)"

work="$target/debian/work"
root="$work/root"
rm -rf "$work"
mkdir -p "$root/DEBIAN" "$work/gen"

# Built as `cargo test --workspace` builds it (same features), so CI reuses that build.
cargo build --quiet --locked --workspace --example man
"$target/debug/examples/man" "$work/gen" >/dev/null

# The binary, stripped of its line tables as dh_strip would.
install -D -m 0755 "$bin" "$root/usr/sbin/ringtftpd"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/sbin/ringtftpd"

install -D -m 0644 dist/systemd/ringtftpd.service "$root/usr/lib/systemd/system/ringtftpd.service"
install -D -m 0644 dist/systemd/ringtftpd.socket "$root/usr/lib/systemd/system/ringtftpd.socket"
install -D -m 0644 dist/deb/default "$root/etc/default/ringtftpd"

install -D -m 0644 "$work/gen/ringtftpd.8" "$root/usr/share/man/man8/ringtftpd.8"
gzip -9n "$root/usr/share/man/man8/ringtftpd.8"
install -D -m 0644 "$work/gen/ringtftpd.bash" "$root/usr/share/bash-completion/completions/ringtftpd"
install -D -m 0644 "$work/gen/_ringtftpd" "$root/usr/share/zsh/vendor-completions/_ringtftpd"
install -D -m 0644 "$work/gen/ringtftpd.fish" "$root/usr/share/fish/vendor_completions.d/ringtftpd.fish"

install -D -m 0644 dist/deb/copyright "$root/usr/share/doc/ringtftpd/copyright"
printf 'ringtftp (%s) unstable; urgency=medium\n\n  * Built from the ringtftp repository.\n\n -- ringtftp maintainers <ringtftp@example.invalid>  %s\n' \
    "$version" "$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" \
    | gzip -9n >"$root/usr/share/doc/ringtftpd/changelog.Debian.gz"
chmod 0644 "$root/usr/share/doc/ringtftpd/changelog.Debian.gz"

# The default served directory: created empty, read-only to the service (see the unit).
install -d -m 0755 "$root/srv/tftp"

# Depends: from the libraries the binary links (libc6, libgcc-s1), as dh_shlibdeps does.
mkdir -p "$work/src/debian"
printf 'Source: ringtftp\n\nPackage: ringtftpd\nArchitecture: any\n' >"$work/src/debian/control"
depends="$(cd "$work/src" && dpkg-shlibdeps -O -e "$root/usr/sbin/ringtftpd" 2>/dev/null \
    | sed -n 's/^shlibs:Depends=//p')"
[ -n "$depends" ] || { echo "dpkg-shlibdeps found no dependencies" >&2; exit 1; }

echo /etc/default/ringtftpd >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/control" <<CONTROL
Package: ringtftpd
Version: $version
Architecture: $arch
Maintainer: ringtftp maintainers <ringtftp@example.invalid>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: $depends
Suggests: systemd
Section: net
Priority: optional
Homepage: https://example.invalid/ringtftp
Description: TFTP server for boot storms, on io_uring
 ringtftpd serves a directory read-only over TFTP (RFC 1350 with the blksize,
 tsize, timeout and windowsize options), fast enough for a whole data hall
 PXE/iPXE/UEFI-booting at once: a shard per CPU with io_uring (epoll where
 io_uring is unavailable), window sends in one GSO datagram, and Prometheus
 metrics.
 .
 The package installs ringtftpd.socket and ringtftpd.service without enabling
 them; serve /srv/tftp on UDP 69 with: systemctl enable --now ringtftpd.socket
CONTROL

out="$target/debian/ringtftpd_${version}_${arch}.deb"
dpkg-deb --build --root-owner-group -Zxz "$root" "$out" >/dev/null
echo "$out"
