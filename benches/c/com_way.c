/* The canonical request (WORKLOAD.md) the COM way, in C, through napalloc's shared library: every
 * block allocated and freed on its own (blocks, then the array, then the header), with glibc's
 * malloc/free or with CoTaskMemAlloc/CoTaskMemFree of libnapalloc.so, the way a C program
 * linked against the library calls them (through the PLT, with the library's thread-local
 * access as a shared object has it). For callgrind, as examples/com_way.rs:
 *
 *   cargo build --release
 *   gcc -O2 -Iinclude -o target/com-way-c benches/c/com_way.c -Ltarget/release -lnapalloc \
 *       -Wl,-rpath,$PWD/target/release
 *   valgrind --tool=callgrind target/com-way-c MODE 0      # and MODE 10000: (Ir(N) - Ir(0)) / N
 *
 * Modes: floor, glibc, cotaskmem. Every run first does WARMUP requests, then N more. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "napalloc.h"

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

static unsigned char floor_buf[4096];

static void *floor_alloc(size_t n) { return floor_buf + (n & 0x7F0); }
static void floor_free(void *p) { OPAQUE(p); }
static void *co_alloc(size_t n) { return CoTaskMemAlloc(n); }
static void co_free(void *p) { CoTaskMemFree(p); }

/* One request with the allocator pair given (inlined into each run_* below). */
#define REQUEST(ALLOC, FREE)                                                                       \
    do {                                                                                           \
        unsigned char *blocks[BLOCKS];                                                             \
        unsigned char *h = ALLOC(16);                                                              \
        OPAQUE(h);                                                                                 \
        unsigned char **arr = ALLOC(64);                                                           \
        OPAQUE(arr);                                                                               \
        if (!h || !arr) abort();                                                                   \
        for (int i = 0; i < BLOCKS; i++) {                                                         \
            unsigned char *b = ALLOC(block_size(next()));                                          \
            OPAQUE(b);                                                                             \
            if (!b) abort();                                                                       \
            b[0] = (unsigned char)i;                                                               \
            arr[i & 7] = b;                                                                        \
            blocks[i] = b;                                                                         \
        }                                                                                          \
        for (int i = 0; i < BLOCKS; i++) FREE(blocks[i]);                                          \
        FREE(arr);                                                                                 \
        FREE(h);                                                                                   \
    } while (0)

static __attribute__((noinline)) void run_floor(uint64_t n) {
    for (uint64_t k = 0; k < n; k++) REQUEST(floor_alloc, floor_free);
}
static __attribute__((noinline)) void run_glibc(uint64_t n) {
    for (uint64_t k = 0; k < n; k++) REQUEST(malloc, free);
}
static __attribute__((noinline)) void run_cotaskmem(uint64_t n) {
    for (uint64_t k = 0; k < n; k++) REQUEST(co_alloc, co_free);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: com-way-c floor|glibc|cotaskmem N\n");
        return 2;
    }
    uint64_t n = strtoull(argv[2], NULL, 10);
    void (*run)(uint64_t);
    if (!strcmp(argv[1], "floor"))
        run = run_floor;
    else if (!strcmp(argv[1], "glibc"))
        run = run_glibc;
    else if (!strcmp(argv[1], "cotaskmem"))
        run = run_cotaskmem;
    else {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    run(WARMUP);
    run(n);
    return 0;
}
