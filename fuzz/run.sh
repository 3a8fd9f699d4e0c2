#!/usr/bin/env bash
# Bounded fuzzing of ringtftp's protocol core: builds the cargo-fuzz targets, replays the
# committed crash regressions, then fuzzes each target for SECONDS (default 20).
#
#   fuzz/run.sh [SECONDS]
#
# Prints one line per target (executions, executions/s, corpus size, crashes) and exits 1 if
# any target crashed (or a regression crashes again, or the targets no longer compile). Exits 0
# with "fuzzing skipped: <reason>" when this machine cannot build fuzz targets at all, so CI can
# call it unconditionally.
#
# Works on the stable toolchain: without a sanitizer, cargo-fuzz passes only flags that stable
# rustc accepts (SanitizerCoverage through -C passes / -C llvm-args). Installs cargo-fuzz
# (pinned) if it is missing.
# The corpus grows in fuzz/corpus/<target> (ignored by git), seeded read-only from
# fuzz/seeds/<target>; crashes land in fuzz/artifacts/<target>.
set -uo pipefail
cd "$(dirname "$0")"

secs="${1:-20}"
case "$secs" in '' | *[!0-9]*) echo "usage: fuzz/run.sh [SECONDS]" >&2; exit 2 ;; esac
targets=(packet_parse options_negotiate netascii transfer_events image_read)
cargo_fuzz_version=0.13.2
# Per-input limit: an input that runs this long is reported as a hang (a crash).
input_timeout=25
# Ceilings so the script is bounded even if a step hangs.
install_limit=900
build_limit=1800

skip() {
    echo "fuzzing skipped: $*"
    exit 0
}

if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || skip "no cargo"
command -v c++ >/dev/null || command -v g++ >/dev/null || command -v clang++ >/dev/null ||
    skip "no C++ compiler for libFuzzer"
host="$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')"
[ -n "$host" ] || skip "no rustc"

log="$(mktemp -t ringtftp-fuzz.XXXXXX.log)"
trap 'rm -f "$log"' EXIT

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "--- cargo install cargo-fuzz $cargo_fuzz_version"
    start=$(date +%s)
    if ! timeout "$install_limit" cargo install cargo-fuzz --version "$cargo_fuzz_version" \
        --locked >"$log" 2>&1; then
        tail -n 5 "$log"
        skip "cannot install cargo-fuzz"
    fi
    echo "installed in $(($(date +%s) - start)) s"
fi

# Builds all targets with `$@` as extra flags; the log is in $log.
build() {
    timeout "$build_limit" cargo fuzz build "$@" >"$log" 2>&1
}

# The fuzzed core has no `unsafe`, so AddressSanitizer finds nothing there that a panic does not,
# and costs 2-5x the executions; debug assertions and overflow checks stay on either way.
# FUZZ_SANITIZER=address brings it back (stable needs RUSTC_BOOTSTRAP=1 for -Zsanitizer).
sanitizer="${FUZZ_SANITIZER:-none}"
[ "$sanitizer" = none ] || export RUSTC_BOOTSTRAP=1
echo "--- cargo fuzz build --sanitizer $sanitizer ($(cargo fuzz --version 2>/dev/null), $(rustc -V))"
start=$(date +%s)
if ! build --sanitizer "$sanitizer"; then
    # Our own code failing to compile is a failure, not a toolchain limit.
    if grep -qE '^error\[E[0-9]+\]' "$log"; then
        grep -E -A12 '^error' "$log" | head -n 60
        echo "fuzz targets do not compile" >&2
        exit 1
    fi
    reason=$(grep -m1 -E '^error' "$log")
    if [ "$sanitizer" = none ] || ! build --sanitizer none; then
        grep -E -A5 '^error' "$log" | head -n 20
        skip "this toolchain cannot build fuzz targets (${reason:-see above})"
    fi
    echo "--sanitizer $sanitizer failed (${reason:-?}); built without a sanitizer"
    sanitizer=none
fi
echo "built in $(($(date +%s) - start)) s"
bin_dir="${CARGO_TARGET_DIR:-target}/$host/release"
# As cargo-fuzz runs them: ASan's ODR check trips over Rust's duplicated symbols.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}"

# Minimizes a crashing input for at most 60 s and prints it, so the CI log alone reproduces it.
report_crash() {
    local target=$1 artifact=$2 minimized="$2.min"
    timeout 90 "$bin_dir/$target" -minimize_crash=1 -max_total_time=60 -runs=100000 \
        -exact_artifact_path="$minimized" "$artifact" >/dev/null 2>&1
    [ -s "$minimized" ] || minimized=$artifact
    echo "  input ($(wc -c <"$minimized") bytes, $minimized):"
    od -A d -t x1 -v "$minimized" | sed 's/^/    /' | head -n 40
    echo "  reproduce: (cd fuzz && $bin_dir/$target $minimized)"
    echo "  decode:    (cd fuzz && cargo fuzz fmt --sanitizer none $target $minimized)"
}

failed=0
for target in "${targets[@]}"; do
    bin="$bin_dir/$target"
    corpus="corpus/$target"
    artifacts="artifacts/$target"
    mkdir -p "$corpus" "$artifacts"
    # Committed regressions must stay fixed.
    for input in regressions/"$target"/*; do
        [ -f "$input" ] || continue
        if ! timeout 120 "$bin" -timeout="$input_timeout" -artifact_prefix="$artifacts/replay-" \
            "$input" >"$log" 2>&1; then
            echo "$target: regression $input crashes again:"
            grep -E -m1 -A1 'panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer' "$log" |
                sed 's/^/  /'
            failed=1
        fi
    done

    before=$(find "$artifacts" -type f ! -name 'slow-unit-*' ! -name '*.min' | sort)
    timeout $((secs * 2 + 120)) "$bin" \
        -max_total_time="$secs" -timeout="$input_timeout" -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "$corpus" "seeds/$target" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    # libFuzzer's last status line says `corp: UNITS/SIZE`.
    corp=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | grep -oE 'corp: [0-9]+/[0-9A-Za-z]+' |
        cut -d' ' -f2)
    units=${corp%%/*} size=${corp#*/}
    new=$(comm -13 <(echo "$before") \
        <(find "$artifacts" -type f ! -name 'slow-unit-*' ! -name '*.min' | sort) | grep -v '^$')
    if [ "$rc" -eq 0 ] && [ -z "$new" ]; then
        verdict="no crash"
    else
        verdict="CRASHED (exit $rc)"
        failed=1
    fi
    echo "$target: ${execs:-?} executions (${speed:-?}/s) in ${secs} s," \
        "corpus ${units:-?} inputs (${size:-?}, $(find "$corpus" -type f | wc -l) files kept)," \
        "$verdict"
    if [ "$verdict" != "no crash" ]; then
        grep -E -m1 -A3 'panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer|SUMMARY' "$log" |
            sed 's/^/  /'
        for artifact in $new; do
            report_crash "$target" "$artifact"
        done
        [ -n "$new" ] || tail -n 20 "$log" | sed 's/^/  /'
    fi
done
if [ "$failed" -ne 0 ]; then
    echo "fuzzing FAILED (inputs above; add each as fuzz/regressions/<target>/<name>)"
fi
exit "$failed"
