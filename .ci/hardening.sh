#!/usr/bin/env bash
# Hardening checks: fuzz smoke, Miri, AddressSanitizer, the C clients with AddressSanitizer and
# LeakSanitizer, and the cross-thread stress test. Every step runs (so one report shows every failure); the script fails
# if any step failed. Each step is timed.
#
#     .ci/hardening.sh                 # every step
#     .ci/hardening.sh miri asan       # only these steps (fuzz miri asan csan stress; valgrind)
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
# proc macros stay uninstrumented. tests/c_abi.rs is left out: its gcc-linked C clients cannot
# link the ASan-instrumented library without rustc's ASan runtime; `csan` checks them below.
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

# The C clients of tests/c_abi.rs compiled with gcc's AddressSanitizer (which brings
# LeakSanitizer): invalid accesses in the C code and leaks of the whole program fail them.
hardening_csan() {
    hardening_header "C clients with AddressSanitizer + LeakSanitizer (tests/c_abi.rs)"
    (
        cd "$HARDENING_ROOT"
        NAPALLOC_C_CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g" \
            ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" cargo test --test c_abi
    )
}

# The C clients under valgrind. Not a default step: rustix's raw Linux backend reads the vDSO's
# ELF header through the auxiliary vector to find the page size, and under valgrind that address
# is not mapped, so every client that reaches napalloc's page layer dies with SIGSEGV in
# `rustix::backend::param::auxv::check_elf_base` (rustix issue 1559), before any check of ours.
# So this step runs `csan` (the same clients with AddressSanitizer + LeakSanitizer) and says so;
# HARDENING_REAL_VALGRIND=1 runs valgrind anyway.
hardening_valgrind() {
    if [ "${HARDENING_REAL_VALGRIND:-0}" != 1 ]; then
        hardening_header "valgrind: not usable with rustix's vDSO lookup (rustix issue 1559); running csan instead"
        hardening_csan
        return
    fi
    hardening_header "valgrind: C clients (tests/c_abi.rs)"
    if ! command -v valgrind >/dev/null; then
        echo "valgrind is not installed (apt-get install valgrind)" >&2
        return 1
    fi
    (
        cd "$HARDENING_ROOT"
        NAPALLOC_C_RUNNER="valgrind -q --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect --error-exitcode=1" \
            cargo test --test c_abi
    )
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
        steps=(fuzz miri asan csan stress)
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
