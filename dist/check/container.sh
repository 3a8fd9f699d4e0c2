#!/usr/bin/env bash
# Builds the image of dist/Containerfile (dist/image.sh) and serves a file from it with podman
# on the host's network, fetched with curl from a loopback port and compared byte for byte:
# once under podman's default seccomp profile and once unconfined as root dropping to a
# numeric --user. Each run reports the backend the daemon chose from its start line; where it
# chose epoll, its one warning must say why. Run as root.
#
# Skips (exit 0, with the reason) only when podman itself cannot run a trivial container here;
# a failed image build, start or fetch fails. Some sandboxes need a different runtime or
# explicit limits: the first of a few known-good flag sets that runs the trivial container is
# used for the daemon too.
set -euo pipefail
cd "$(dirname "$0")/../.."
. dist/check/lib.sh

if ! command -v podman >/dev/null; then
    echo "SKIP container: podman is not installed" >&2
    exit 0
fi

work="$(mktemp -d -t ringtftp-container.XXXXXX)"
image="localhost/ringtftpd:check-$$"
smoke="localhost/ringtftpd-smoke:check-$$"
name="ringtftpd-check-$$"
cleanup() {
    timeout 30 podman rm -f "$name" >/dev/null 2>&1 || true
    timeout 30 podman rmi -f "$image" "$smoke" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# A trivial container: a static program that exits 0, imported as an image (nothing pulled).
printf 'int main(void) { return 0; }\n' >"$work/true.c"
cc -static -O2 -o "$work/true" "$work/true.c"
tar -C "$work" -cf "$work/true.tar" true
timeout 60 podman import --quiet "$work/true.tar" "$smoke" >/dev/null

# Flag sets to try, global flags | run flags: podman's defaults; then runc with explicit limits
# (where crun cannot set podman's default RLIMIT_NPROC, or refuses hybrid cgroups); then also
# without cgroups.
limits="--ulimit nofile=$(ulimit -Hn):$(ulimit -Hn) --ulimit nproc=4096:4096"
candidates=("|" "--runtime runc|$limits" "--runtime runc|--cgroups disabled $limits")
global=()
run_flags=()
found=""
for candidate in "${candidates[@]}"; do
    read -r -a global <<<"${candidate%%|*}"
    read -r -a run_flags <<<"${candidate#*|}"
    if timeout 60 podman "${global[@]}" run --rm --network host "${run_flags[@]}" "$smoke" /true \
        >"$work/smoke.log" 2>&1; then
        found=1
        break
    fi
    tried="${global[*]} ${run_flags[*]}"
    tried="${tried# }"
    tail -1 "$work/smoke.log" | sed "s|^|podman with ${tried:-its defaults}: |" >&2
done
if [ -z "$found" ]; then
    echo "SKIP container: podman cannot run a trivial container on this machine (see above)" >&2
    exit 0
fi
flags="${global[*]} ${run_flags[*]}"
flags="${flags# }"
echo "podman $(podman --version | awk '{print $3}') runs containers here with: ${flags:-its defaults}"

built="$(SECONDS=0; timeout 300 bash dist/image.sh "$image"; echo "image built in ${SECONDS}s" >&2)"
[ "$built" = "$image" ]

dir="$(make_served_dir)"
trap 'cleanup; rm -rf "$dir"' EXIT

# serve LABEL [podman run flags...] -- [daemon args...]
serve() {
    local label="$1" log="$work/$1.log" port pid backend
    shift
    local podman_args=() daemon_args=()
    while [ "$1" != -- ]; do podman_args+=("$1"); shift; done
    shift
    daemon_args=("$@")
    port="$(free_udp_port)"
    timeout 60 podman "${global[@]}" run --rm --network host "${run_flags[@]}" --name "$name" \
        -v "$dir:/srv/tftp:ro" "${podman_args[@]}" "$image" \
        "$port" --bind 127.0.0.1 "${daemon_args[@]}" >"$log" 2>&1 &
    pid=$!
    if ! wait_for_line "$log" ' serving .* backend=' 20; then
        kill "$pid" 2>/dev/null || true
        return 1
    fi
    if ! fetch_and_compare "$port" "$dir"; then
        cat "$log" >&2
        timeout 30 podman stop -t 5 "$name" >/dev/null 2>&1 || true
        return 1
    fi
    timeout 30 podman stop -t 5 "$name" >/dev/null
    wait "$pid" || true
    backend="$(grep -m1 ' serving .* backend=' "$log" | grep -o 'backend=[a-z_]*' | cut -d= -f2)"
    if [ "$backend" = epoll ] && [ "$(grep -c 'io_uring is unavailable' "$log")" != 1 ]; then
        echo "$label: served with epoll without exactly one warning saying why:" >&2
        cat "$log" >&2
        return 1
    fi
    echo "container ($label): served boot.img byte-exact with backend=$backend"
    [ "$backend" = epoll ] && grep -m1 'io_uring is unavailable' "$log" | sed 's/^.*WARN /  warning: /'
    cp "$log" "$work/last.log"
}

serve "default seccomp, user 65534" --
serve "seccomp unconfined, root dropping to --user 65534:65534" \
    --security-opt seccomp=unconfined --user 0:0 -- --user 65534:65534
grep -q 'running as 65534:65534' "$work/last.log" || {
    echo "--user 65534:65534 did not say it dropped:" >&2
    cat "$work/last.log" >&2
    exit 1
}
echo "container: image $image served in both runs"
