#!/usr/bin/env bash
# Builds the container image of dist/Containerfile: a static ringtftpd on an empty base.
#
#   bash dist/image.sh [IMAGE]      (default IMAGE: localhost/ringtftpd:VERSION; prints it)
#
# The binary is compiled here, statically against glibc (the gnu target with crt-static, which
# needs no other toolchain than the one that builds the daemon), so the image build itself
# needs no Rust toolchain. Without a user database in the image, --user takes numbers only
# (the image runs as 65534:65534). CONTAINER_ENGINE=docker builds with docker instead.
set -euo pipefail
cd "$(dirname "$0")/.."

engine="${CONTAINER_ENGINE:-podman}"
target="${CARGO_TARGET_DIR:-$PWD/target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
triple="$(rustc -vV | sed -n 's/^host: //p')"

RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --quiet --release --locked --bin ringtftpd --target "$triple"
bin="$target/$triple/release/ringtftpd"
if ldd "$bin" >/dev/null 2>&1 && ! ldd "$bin" 2>&1 | grep -q 'statically linked'; then
    echo "$bin is not static:" >&2
    ldd "$bin" >&2
    exit 1
fi
version="$("$bin" --version | awk '{print $2}')"
image="${1:-localhost/ringtftpd:$version}"

context="$(mktemp -d -t ringtftpd-image.XXXXXX)"
trap 'rm -rf "$context"' EXIT
install -m 0755 "$bin" "$context/ringtftpd"
strip --strip-unneeded "$context/ringtftpd"
cp dist/Containerfile "$context/"
"$engine" build --quiet --file "$context/Containerfile" --tag "$image" \
    --label "org.opencontainers.image.version=$version" "$context" >/dev/null
echo "$image"
