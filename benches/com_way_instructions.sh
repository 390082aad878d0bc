#!/usr/bin/env bash
# Instructions per canonical request done the COM way (WORKLOAD.md: every block allocated and
# freed on its own), counted by callgrind: deterministic, unlike nanoseconds.
#
#   benches/com_way_instructions.sh [N]        (default N = 10000)
#
# Every mode runs twice, with 0 and with N requests after the same start-up and warm-up, so
# (Ir(N) - Ir(0)) / N is the cost of one request. Rust modes: examples/com_way.rs (napalloc
# linked statically: `heap::alloc/free` inlined into the loop, the C exports called as
# functions). C modes: benches/c/com_way.c linked against libnapalloc.so, the way a C program
# calls the library (PLT, the shared object's thread-local access). "above floor" subtracts
# the no-allocation floor of the same harness; "÷ glibc" divides that by glibc's.
#
# Needs valgrind, gcc and cargo. Callgrind output stays in target/instr-com/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${1:-10000}
OUT=target/instr-com
mkdir -p "$OUT"

cargo build --quiet --release --lib --example com_way
RUST_BIN=target/release/examples/com_way
C_BIN=$OUT/com-way-c
gcc -O2 -Iinclude -o "$C_BIN" benches/c/com_way.c -Ltarget/release -lnapalloc -Wl,-rpath,"$PWD/target/release"

# shellcheck source=benches/ir.sh
. benches/ir.sh

declare -A PER
measure() { # lang mode binary
    local a b
    a=$(ir "$OUT/$1-$2-0.out" "$3" "$2" 0)
    b=$(ir "$OUT/$1-$2-$N.out" "$3" "$2" "$N")
    PER[$1/$2]=$(awk -v a="$a" -v b="$b" -v n="$N" 'BEGIN { printf "%.1f", (b - a) / n }')
}

for m in floor system heap cotaskmem; do measure rust "$m" "$RUST_BIN"; done
for m in floor glibc cotaskmem; do measure c "$m" "$C_BIN"; done

row() { # key label floor-key glibc-key
    awk -v x="${PER[$1]}" -v f="${PER[$3]}" -v g="${PER[$4]}" -v l="$2" \
        'BEGIN { printf "| %s | %.1f | %.1f | %.2f |\n", l, x, x - f, (x - f) / (g - f) }'
}
echo "instructions per canonical request, the COM way, N = $N (callgrind, (Ir(N) - Ir(0)) / N)"
echo
echo "| mode | instr/req | above floor | ÷ glibc |"
echo "| --- | ---: | ---: | ---: |"
row rust/floor "Rust floor (no allocation)" rust/floor rust/system
row rust/system "Rust System allocator (glibc malloc/free)" rust/floor rust/system
row rust/heap "napalloc heap::alloc / heap::free (inlined)" rust/floor rust/system
row rust/cotaskmem "napalloc CoTaskMemAlloc / CoTaskMemFree, static link" rust/floor rust/system
row c/floor "C floor (no allocation)" c/floor c/glibc
row c/glibc "C glibc malloc/free" c/floor c/glibc
row c/cotaskmem "C CoTaskMemAlloc / CoTaskMemFree of libnapalloc.so" c/floor c/glibc
