#!/usr/bin/env bash
# Instructions per canonical request (WORKLOAD.md), counted by callgrind: deterministic, unlike
# the nanoseconds of the criterion benches.
#
#   benches/instructions.sh [N]        (default N = 10000)
#
# For every mode, the harness (examples/canonical.rs for Rust, benches/c/canonical.c for C,
# built with gcc -O2) runs under `valgrind --tool=callgrind` twice, with 0 and with N requests;
# both runs do the same start-up and warm-up, so (Ir(N) - Ir(0)) / N is the cost of one request
# and nothing is subtracted by hand. "above floor" subtracts the no-allocation floor of the same
# language measured in the same run (the loop, the random sizes, the writes); the ratios compare
# instructions above the floor with bumpalo, the Rust system allocator and glibc of this run.
#
# Needs valgrind, gcc and cargo. Callgrind output stays in target/instr/ for callgrind_annotate.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${1:-10000}
OUT=target/instr
mkdir -p "$OUT"

cargo build --quiet --release --example canonical
RUST_BIN=target/release/examples/canonical
C_BIN=$OUT/canonical-c
gcc -O2 -o "$C_BIN" benches/c/canonical.c

RUST_MODES=(floor hand-bump bumpalo system mimalloc untracked cursor tracked-free tracked-reset tracked-cursor com com-scope)
C_MODES=(floor glibc bump)

# `ir FILE CMD...`: the total instructions of one run under callgrind.
# shellcheck source=benches/ir.sh
. benches/ir.sh

declare -A PER
measure() { # lang mode binary
    local lang=$1 mode=$2 bin=$3
    local a b
    a=$(ir "$OUT/$lang-$mode-0.out" "$bin" "$mode" 0)
    b=$(ir "$OUT/$lang-$mode-$N.out" "$bin" "$mode" "$N")
    PER[$lang/$mode]=$(awk -v a="$a" -v b="$b" -v n="$N" 'BEGIN { printf "%.1f", (b - a) / n }')
}

for m in "${RUST_MODES[@]}"; do measure rust "$m" "$RUST_BIN"; done
for m in "${C_MODES[@]}"; do measure c "$m" "$C_BIN"; done

rfloor=${PER[rust/floor]}
cfloor=${PER[c/floor]}
above() { # lang/mode
    local floor=$rfloor
    [[ $1 == c/* ]] && floor=$cfloor
    awk -v x="${PER[$1]}" -v f="$floor" 'BEGIN { printf "%.1f", x - f }'
}
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { if (y > 0) printf "%.2f", x / y; else print "-" }'; }

bump_above=$(above rust/bumpalo)
sys_above=$(above rust/system)
glibc_above=$(above c/glibc)

echo "instructions per canonical request, N = $N (callgrind, (Ir(N) - Ir(0)) / N)"
echo
echo "| mode | instr/req | above floor | ÷ bumpalo | ÷ system (Rust) | ÷ glibc |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
row() {
    local key=$1 label=$2 ab
    ab=$(above "$key")
    printf '| %s | %s | %s | %s | %s | %s |\n' "$label" "${PER[$key]}" "$ab" \
        "$(ratio "$ab" "$bump_above")" "$(ratio "$ab" "$sys_above")" "$(ratio "$ab" "$glibc_above")"
}
row c/floor "C floor (no allocation)"
row c/glibc "C glibc malloc/free, each block"
row c/bump "C hand-written bump over mmap"
row rust/floor "Rust floor (no allocation)"
row rust/hand-bump "Rust hand-written bump"
row rust/bumpalo "bumpalo alloc_layout + reset"
row rust/system "Rust system allocator (GlobalAlloc), each block"
row rust/mimalloc "mimalloc (GlobalAlloc), each block"
row rust/untracked "napalloc untracked + reset"
row rust/cursor "napalloc PageArena cursor + reset"
row rust/tracked-free "napalloc tracked children + free(header)"
row rust/tracked-reset "napalloc tracked children + reset"
row rust/tracked-cursor "napalloc tracked children via child cursor + reset"
row rust/com "napalloc COM way (heap::alloc/free each block)"
