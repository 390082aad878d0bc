/* What every C bench program shares about the canonical request (WORKLOAD.md): the warm-up, the
 * number of blocks, the deterministic xorshift64 generator (shifts 13, 7, 17, seed
 * 0x243F6A8885A308D3) and the block size it draws (16..=256 bytes), and the optimizer barrier
 * that stands for Rust's black_box. Included by benches/c/canonical.c and benches/c/com_way.c,
 * so both draw exactly the sizes examples/canonical.rs and examples/com_way.rs draw. */
#ifndef NAPALLOC_BENCH_REQUEST_H
#define NAPALLOC_BENCH_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#define WARMUP 64
#define BLOCKS 16

/* Keep a pointer opaque to the optimizer (Rust's black_box). */
#define OPAQUE(p) __asm__ volatile("" : "+r"(p) : : "memory")

static uint64_t rng = 0x243F6A8885A308D3ull;

static inline uint64_t next(void) {
    uint64_t x = rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng = x;
    return x;
}

static inline size_t block_size(uint64_t r) { return 16 + (size_t)(((r >> 32) * 241) >> 32); }

#endif
