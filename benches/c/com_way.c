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
 * Modes: floor, glibc, cotaskmem. Every run first does WARMUP requests, then N more.
 *
 *   target/com-way-c paired N [ROUNDS]
 *
 * times the three in interleaved rounds (each round times N requests of each, in an order that
 * rotates from round to round) and prints the median ns per request and the median over the
 * rounds of each one's ratio to glibc in the same round, so that a change of the machine's
 * speed that lasts longer than a round hits both sides of a ratio alike. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "napalloc.h"

#include "request.h"

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

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-quantile of v[0..n) (sorted here), nearest rank. */
static double quantile(double *v, int n, double q) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[(int)((n - 1) * q + 0.5)];
}

static void print_spread(double *v, int n) {
    double m = quantile(v, n, 0.5), lo = quantile(v, n, 0.1), hi = quantile(v, n, 0.9);
    char cell[64];
    snprintf(cell, sizeof cell, "%.2f (%.2f-%.2f)", m, lo, hi);
    printf(" %24s", cell);
}

static void loadavg(char *buf, size_t len) {
    double a = 0, b = 0, c = 0;
    FILE *f = fopen("/proc/loadavg", "r");
    snprintf(buf, len, "unknown");
    if (f) {
        if (fscanf(f, "%lf %lf %lf", &a, &b, &c) == 3) snprintf(buf, len, "%.2f %.2f %.2f", a, b, c);
        fclose(f);
    }
}

#define MAX_ROUNDS 1000

static int paired(uint64_t n, int rounds) {
    static void (*const runs[3])(uint64_t) = {run_floor, run_glibc, run_cotaskmem};
    static const char *const names[3] = {"floor", "glibc malloc/free", "CoTaskMemAlloc/Free (.so)"};
    static double ns[3][MAX_ROUNDS];
    char before[128], after[128];
    if (rounds < 1 || rounds > MAX_ROUNDS) return 2;
    loadavg(before, sizeof before);
    for (int i = 0; i < 3; i++) runs[i](WARMUP);
    for (int r = 0; r < rounds; r++)
        for (int j = 0; j < 3; j++) {
            int i = (r + j) % 3;
            double t = now_ns();
            runs[i](n);
            ns[i][r] = (now_ns() - t) / (double)n;
        }
    loadavg(after, sizeof after);
    printf("paired/com_way (C, libnapalloc.so): %d rounds of %llu requests per variant, interleaved "
           "(load average %s before, %s after)\n",
           rounds, (unsigned long long)n, before, after);
    printf("  median (p10-p90) over the rounds; ratios taken within each round\n");
    printf("  %-28s %24s %24s %24s\n", "variant", "ns/req", "/ glibc", "above floor / glibc's");
    for (int i = 0; i < 3; i++) {
        double a[MAX_ROUNDS], q[MAX_ROUNDS], f[MAX_ROUNDS];
        for (int r = 0; r < rounds; r++) {
            a[r] = ns[i][r];
            q[r] = ns[i][r] / ns[1][r];
            f[r] = (ns[i][r] - ns[0][r]) / (ns[1][r] - ns[0][r]);
        }
        printf("  %-28s", names[i]);
        print_spread(a, rounds);
        print_spread(q, rounds);
        print_spread(f, rounds);
        printf("\n");
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "paired"))
        return paired(strtoull(argv[2], NULL, 10), argc >= 4 ? atoi(argv[3]) : 40);
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
