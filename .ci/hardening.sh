#!/usr/bin/env bash
# Hardening checks: fuzz smoke, Miri, AddressSanitizer, the C clients with AddressSanitizer and
# LeakSanitizer and under valgrind's memcheck, and the cross-thread stress test. Every step runs
# (so one report shows every failure); the script fails if any step failed. Each step is timed.
#
#     .ci/hardening.sh                 # every step
#     .ci/hardening.sh miri asan       # only these steps (fuzz miri asan csan valgrind stress)
#
# Sourcing the file (`. .ci/hardening.sh`) only defines the functions hardening_fuzz,
# hardening_miri, hardening_asan, hardening_csan, hardening_valgrind, hardening_stress and
# hardening_all, so that
# another CI script can call them one by one.
#
# Environment:
#   FUZZ_SECS=60                seconds per fuzz target (fuzz/run.sh; also FUZZ_JOBS, FUZZ_TARGETS)
#   NAPALLOC_STRESS_SECS=5      seconds of the stress test (release build)
#   MIRIFLAGS                   default: -Zmiri-strict-provenance
#
# Needs the nightly toolchain with the miri and rust-src components, gcc/g++ and valgrind.
# cargo-fuzz is installed from crates.io when it is missing.
set -euo pipefail

HARDENING_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARDENING_TARGET="x86_64-unknown-linux-gnu"

hardening_header() {
    echo
    echo "=================================================================================="
    echo "== hardening: $*"
    echo "=================================================================================="
}

# Fuzz every target for FUZZ_SECS seconds (with ASan and debug assertions); fail on any crash.
hardening_fuzz() {
    hardening_header "fuzz smoke (${FUZZ_SECS:-60}s per target)"
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "installing cargo-fuzz"
        cargo install --locked cargo-fuzz
    fi
    # The fuzz crate is a workspace of its own: lint it here, where it is built.
    cargo +nightly clippy --manifest-path "$HARDENING_ROOT/fuzz/Cargo.toml" --bins -- -D warnings
    "$HARDENING_ROOT/fuzz/run.sh" "${FUZZ_SECS:-60}"
}

# The library's unit tests under Miri, with strict provenance.
hardening_miri() {
    hardening_header "Miri: cargo +nightly miri test --lib"
    (cd "$HARDENING_ROOT" && MIRIFLAGS="${MIRIFLAGS:--Zmiri-strict-provenance}" cargo +nightly miri test --lib)
}

# Unit and integration tests with AddressSanitizer and LeakSanitizer (the arena's own pages are
# not instrumented; everything else is). Built for an explicit target so that build scripts and
# proc macros stay uninstrumented. tests/c_abi.rs is left out here: its C clients link gcc's ASan
# runtime, not rustc's; `csan` runs them with an instrumented library, `valgrind` under memcheck.
hardening_asan() {
    hardening_header "AddressSanitizer: unit and integration tests (except the C clients)"
    (
        cd "$HARDENING_ROOT"
        export RUSTFLAGS="-Zsanitizer=address" RUSTDOCFLAGS="-Zsanitizer=address"
        export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:detect_stack_use_after_return=1}"
        local tests=() t
        for t in tests/*.rs; do
            t="$(basename "$t" .rs)"
            [ "$t" = c_abi ] || tests+=(--test "$t")
        done
        cargo +nightly test --no-fail-fast --target "$HARDENING_TARGET" --lib "${tests[@]}"
    )
}

# The step functions run as `if hardening_STEP`, where bash ignores `set -e`: a step of several
# commands says `|| return 1` after each one that must stop it.

# Build .ci/c-canary.c (a C client that is wrong on purpose) as target/hardening/c-canary-TAG,
# against the libnapalloc.a in LIB_DIR, with the extra compiler flags given; print its path.
#     hardening_canary_build TAG LIB_DIR [CFLAGS...]
hardening_canary_build() {
    local exe="$HARDENING_ROOT/target/hardening/c-canary-$1" lib_dir="$2"
    shift 2
    mkdir -p "$HARDENING_ROOT/target/hardening" || return 1
    gcc -std=c11 -Wall -Wextra -Werror -pedantic -g "$@" -I "$HARDENING_ROOT/include" \
        "$HARDENING_ROOT/.ci/c-canary.c" -o "$exe" -L "$lib_dir" \
        -Wl,-Bstatic -lnapalloc -Wl,-Bdynamic -lpthread -ldl -lm || return 1
    echo "$exe"
}

# Run `canary_command...` and require that it fails with a report matching every pattern given
# after `--`: the checker of the step must catch a wrong client, or its passing proves nothing.
# `napalloc ran` is required too, so a checker that cannot run napalloc at all is not mistaken
# for one that caught the fault.
hardening_canary_expect_failure() {
    local cmd=() pattern out rc
    while [ "$1" != -- ]; do
        cmd+=("$1")
        shift
    done
    shift
    out="$("${cmd[@]}" 2>&1)" && rc=0 || rc=$?
    local ok=1
    [ "$rc" -ne 0 ] || ok=0
    for pattern in "c-canary.c: napalloc ran" "$@"; do
        grep -q -- "$pattern" <<<"$out" || ok=0
    done
    if [ "$ok" -ne 1 ]; then
        printf '%s\n' "$out" >&2
        echo "canary: '${cmd[*]}' exited with $rc, and did not fail with a report matching every one of: napalloc ran; $*" >&2
        return 1
    fi
    echo "canary caught as it should (exit status $rc): ${cmd[*]##*/}"
}

# The C clients of tests/c_abi.rs compiled with gcc's AddressSanitizer (which brings
# LeakSanitizer) and linked with a libnapalloc built with rustc's `-Zsanitizer=address`, so that
# invalid accesses in the C code and in napalloc's own code, and leaks of the whole program, fail
# them. Both instrumentations share gcc's ASan runtime, which the clients link. First the canary
# must fail under the same build, for a leak, a read after free in C, and a read past a C
# caller's string inside napalloc (which an uninstrumented library would not report).
hardening_csan() {
    hardening_header "C clients and libnapalloc with AddressSanitizer + LeakSanitizer (tests/c_abi.rs)"
    local cflags="-fsanitize=address -fno-omit-frame-pointer -g" exe
    local lib_dir="$HARDENING_ROOT/target/csan/$HARDENING_TARGET/debug"
    local -x ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
    (
        cd "$HARDENING_ROOT"
        RUSTFLAGS="-Zsanitizer=address" cargo +nightly build --lib --target "$HARDENING_TARGET" --target-dir target/csan
    ) || return 1
    # shellcheck disable=SC2086 # cflags is a list of flags
    exe="$(hardening_canary_build asan "$lib_dir" $cflags)" || return 1
    hardening_canary_expect_failure "$exe" leak -- \
        "LeakSanitizer: detected memory leaks" "96 byte(s) leaked in 2 allocation(s)" || return 1
    hardening_canary_expect_failure "$exe" read-after-free -- "AddressSanitizer: heap-use-after-free" || return 1
    hardening_canary_expect_failure "$exe" unterminated-string -- \
        "AddressSanitizer: heap-buffer-overflow" "in .*napalloc" || return 1
    (
        cd "$HARDENING_ROOT"
        NAPALLOC_C_LIB_DIR="$lib_dir" NAPALLOC_C_CFLAGS="$cflags" cargo test --test c_abi
    )
}

# valgrind's memcheck over every C client of tests/c_abi.rs (statically linked, so napalloc's
# own code runs under memcheck too): any memcheck error, and any definitely or indirectly lost
# block, fails the client and so the step. First the canary must fail under the same command,
# with its two invalid reads (one in C, one inside napalloc) and both its leaks reported. Every
# client writes its own valgrind log (target/hardening/valgrind/<pid>.log); the step requires at
# least one per C client, so a harness that stopped honouring NAPALLOC_C_RUNNER cannot pass
# unchecked, and prints the logs that are not empty.
HARDENING_VALGRIND="valgrind -q --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect --error-exitcode=86"

hardening_valgrind() {
    hardening_header "valgrind memcheck: C clients (tests/c_abi.rs)"
    if ! command -v valgrind >/dev/null; then
        echo "valgrind is not installed (apt-get install valgrind)" >&2
        return 1
    fi
    local exe logs="$HARDENING_ROOT/target/hardening/valgrind" status=0 clients n log
    (cd "$HARDENING_ROOT" && cargo build --lib) || return 1
    exe="$(hardening_canary_build plain "$HARDENING_ROOT/target/debug")" || return 1
    # shellcheck disable=SC2086 # HARDENING_VALGRIND is a command and its flags
    hardening_canary_expect_failure $HARDENING_VALGRIND "$exe" leak read-after-free unterminated-string -- \
        "Invalid read of size 1" "Invalid read of size 2" "by .*napalloc::" \
        "definitely lost" "indirectly lost" || return 1
    rm -rf "$logs" && mkdir -p "$logs" || return 1
    (
        cd "$HARDENING_ROOT"
        NAPALLOC_C_RUNNER="$HARDENING_VALGRIND --log-file=$logs/%p.log" cargo test --test c_abi
    ) || status=1
    for log in "$logs"/*.log; do
        if [ -s "$log" ]; then
            echo "--- $log" >&2
            cat "$log" >&2
        fi
    done
    clients="$(find "$HARDENING_ROOT/tests/c" -maxdepth 1 \( -name '*.c' -o -name '*.cpp' \) | wc -l)"
    n="$(find "$logs" -name '*.log' | wc -l)"
    echo "valgrind: $n client runs logged, for $clients C clients"
    if [ "$n" -lt "$clients" ]; then
        echo "valgrind: only $n client runs were logged for $clients C clients: NAPALLOC_C_RUNNER was not used" >&2
        status=1
    fi
    return "$status"
}

# Threads passing task-heap blocks to each other (optimized build, NAPALLOC_STRESS_SECS seconds).
hardening_stress() {
    hardening_header "stress: cross-thread heap test (${NAPALLOC_STRESS_SECS:-5}s)"
    (
        cd "$HARDENING_ROOT"
        NAPALLOC_STRESS_SECS="${NAPALLOC_STRESS_SECS:-5}" cargo test --release --test stress -- --nocapture
    )
}

# Run the given steps (default: all), time each, report, fail if any failed.
hardening_all() {
    local steps=("$@")
    if [ "${#steps[@]}" -eq 0 ]; then
        steps=(fuzz miri asan csan valgrind stress)
    fi
    local report=() failed=0 step start status
    for step in "${steps[@]}"; do
        if ! declare -F "hardening_$step" >/dev/null; then
            echo "unknown step: $step (fuzz miri asan csan valgrind stress)" >&2
            return 2
        fi
        start=$SECONDS
        if "hardening_$step"; then status=ok; else status=FAILED; failed=1; fi
        report+=("$(printf '%-9s %-6s %5ds' "$step" "$status" $((SECONDS - start)))")
    done
    hardening_header "summary"
    printf '   %s\n' "${report[@]}"
    if [ "$failed" -ne 0 ]; then
        echo "== hardening: FAILED" >&2
        return 1
    fi
    echo "== hardening: all passed"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    hardening_all "$@"
fi
