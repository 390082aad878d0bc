#!/usr/bin/env bash
# Run every fuzz target for N seconds each (default 60) and fail on any crash, leak, timeout or
# out-of-memory. Usage:
#
#     fuzz/run.sh [seconds]
#
# Environment:
#   FUZZ_JOBS=n        run n fuzzing processes per target (libFuzzer -fork=n); default 1
#   FUZZ_TARGETS="a b" run only these targets (default: every target `cargo fuzz list` shows)
#   FUZZ_ARGS="..."    extra libFuzzer flags, e.g. "-max_len=8192"
#
# The committed seeds in fuzz/corpus/<target>/ are read but never written; what a run learns goes
# to fuzz/target/corpus/<target>/ (not committed), so a later run on the same machine starts from
# there. A crash leaves its input in fuzz/artifacts/<target>/; reproduce it with
#     cargo +nightly fuzz run -a <target> fuzz/artifacts/<target>/<file>
# (NAPALLOC_FUZZ_TRACE=1 prints the decoded program of region_ops) and minimize it with
#     cargo +nightly fuzz tmin -a <target> fuzz/artifacts/<target>/<file>
#
# Long runs: `fuzz/run.sh 3600` gives each target an hour; `FUZZ_JOBS=$(nproc) fuzz/run.sh 28800`
# a night on every core. Afterwards `cargo +nightly fuzz cmin -a <target> fuzz/target/corpus/<target>`
# shrinks the learned corpus; copy a few small, new inputs into fuzz/corpus/<target>/ as seeds.
#
# The targets are built with AddressSanitizer (cargo-fuzz's default) and with debug assertions
# (-a), so napalloc's internal invariant checks run too. Each target's libFuzzer log is kept in
# fuzz/target/logs/<target>.log; the number of executions is printed at the end.
set -euo pipefail

secs="${1:-60}"
jobs="${FUZZ_JOBS:-1}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install --locked cargo-fuzz" >&2
    exit 1
fi

targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
echo "== fuzz: building ${targets//$'\n'/ }"
cargo +nightly fuzz build -a

mkdir -p fuzz/target/logs
summary=()
failed=0
for t in $targets; do
    work="fuzz/target/corpus/$t"
    seeds="fuzz/corpus/$t"
    log="fuzz/target/logs/$t.log"
    mkdir -p "$work" "$seeds"
    echo "== fuzz: $t for ${secs}s (jobs: $jobs)"
    fork=()
    if [ "$jobs" -gt 1 ]; then
        fork=("-fork=$jobs" "-ignore_crashes=0")
    fi
    start=$SECONDS
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    if cargo +nightly fuzz run -a "$t" "$work" "$seeds" -- \
        -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
        ${fork[@]+"${fork[@]}"} ${FUZZ_ARGS:-} >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed=1
        tail -n 80 "$log" >&2
    fi
    # The last "#N" status line, or libFuzzer's final statistics, holds the executions.
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || true)"
    if [ -z "$execs" ]; then
        execs="$(grep -o '^#[0-9]*' "$log" | tail -n 1 | tr -d '#' || true)"
    fi
    line="$t: $status, ${execs:-?} executions in $((SECONDS - start))s"
    echo "== fuzz: $line"
    summary+=("$line")
done

echo "== fuzz summary"
printf '   %s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
    echo "== fuzz: a target FAILED; see fuzz/target/logs/ and fuzz/artifacts/" >&2
    exit 1
fi
