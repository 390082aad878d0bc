/* The canonical request (WORKLOAD.md) in C, for the instruction-count harness
 * (benches/instructions.sh): the no-allocation floor, glibc malloc/free block by block (the COM
 * way), and a hand-written bump allocator over one mmap region (the limit).
 *
 *   gcc -O2 -o canonical-c benches/c/canonical.c && ./canonical-c MODE N
 *
 * Every run first does WARMUP requests, then N more, as examples/canonical.rs does. */
#define _DEFAULT_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "request.h"

static unsigned char floor_buf[4096];

static __attribute__((noinline)) void run_floor(uint64_t n) {
    for (uint64_t k = 0; k < n; k++) {
        unsigned char *h = floor_buf;
        OPAQUE(h);
        unsigned char **arr = (unsigned char **)(h + 16);
        OPAQUE(arr);
        for (int i = 0; i < BLOCKS; i++) {
            unsigned char *b = h + 128;
            size_t size = block_size(next());
            OPAQUE(size); /* consumed, as an allocator would */
            OPAQUE(b);
            b[0] = (unsigned char)i;
            arr[i & 7] = b;
        }
    }
}

static __attribute__((noinline)) void run_glibc(uint64_t n) {
    for (uint64_t k = 0; k < n; k++) {
        unsigned char *blocks[BLOCKS];
        unsigned char *h = malloc(16);
        OPAQUE(h);
        unsigned char **arr = malloc(64);
        OPAQUE(arr);
        for (int i = 0; i < BLOCKS; i++) {
            unsigned char *b = malloc(block_size(next()));
            OPAQUE(b);
            b[0] = (unsigned char)i;
            arr[i & 7] = b;
            blocks[i] = b;
        }
        for (int i = 0; i < BLOCKS; i++)
            free(blocks[i]);
        free(arr);
        free(h);
    }
}

static unsigned char *bump_base;
static size_t bump_pos;

static inline unsigned char *bump(size_t size) {
    size_t start = (bump_pos + 15) & ~(size_t)15;
    if (start + size > (1u << 20))
        abort();
    bump_pos = start + size;
    return bump_base + start;
}

static __attribute__((noinline)) void run_bump(uint64_t n) {
    for (uint64_t k = 0; k < n; k++) {
        unsigned char *h = bump(16);
        OPAQUE(h);
        unsigned char **arr = (unsigned char **)bump(64);
        OPAQUE(arr);
        for (int i = 0; i < BLOCKS; i++) {
            unsigned char *b = bump(block_size(next()));
            OPAQUE(b);
            b[0] = (unsigned char)i;
            arr[i & 7] = b;
        }
        bump_pos = 0;
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s floor|glibc|bump N\n", argv[0]);
        return 2;
    }
    uint64_t n = strtoull(argv[2], NULL, 10);
    void (*run)(uint64_t);
    if (!strcmp(argv[1], "floor")) {
        run = run_floor;
    } else if (!strcmp(argv[1], "glibc")) {
        run = run_glibc;
    } else if (!strcmp(argv[1], "bump")) {
        bump_base = mmap(NULL, 1u << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (bump_base == MAP_FAILED)
            return 1;
        run = run_bump;
    } else {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    run(WARMUP);
    run(n);
    printf("%llu\n", (unsigned long long)(rng & 1));
    return 0;
}
