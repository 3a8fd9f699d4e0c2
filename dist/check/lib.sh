# Helpers for the packaging checks (sourced by deb.sh and container.sh).

# A free UDP port on 127.0.0.1.
free_udp_port() {
    python3 -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# A directory to serve holding `boot.img`: 3 MB of random bytes, readable by anyone (the
# daemon may run as nobody).
make_served_dir() {
    local dir
    dir="$(mktemp -d -t ringtftp-check.XXXXXX)"
    head -c 3000000 /dev/urandom >"$dir/boot.img"
    chmod 0755 "$dir"
    chmod 0644 "$dir/boot.img"
    echo "$dir"
}

# wait_for_line FILE PATTERN SECONDS: waits until FILE has a line matching PATTERN.
wait_for_line() {
    local file="$1" pattern="$2" deadline=$((SECONDS + $3))
    until grep -q -- "$pattern" "$file" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "no line matching '$pattern' in $file within $3 s:" >&2
            cat "$file" >&2
            return 1
        fi
        sleep 0.2
    done
}

# fetch_and_compare PORT DIR: fetches DIR/boot.img over TFTP from 127.0.0.1:PORT with curl
# (blksize 1428, a window of one, as PXE firmware does) and compares it byte for byte.
fetch_and_compare() {
    local port="$1" dir="$2" out
    out="$(mktemp -t ringtftp-fetch.XXXXXX)"
    if ! timeout 30 curl --silent --show-error --max-time 20 --tftp-blksize 1428 \
        -o "$out" "tftp://127.0.0.1:$port/boot.img"; then
        rm -f "$out"
        return 1
    fi
    if ! cmp "$dir/boot.img" "$out"; then
        rm -f "$out"
        return 1
    fi
    rm -f "$out"
}
