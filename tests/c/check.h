/* check.h - the smallest test framework: CHECK a condition, report, keep going, exit non-zero.
 *
 *   int main(void) {
 *       CHECK(p != NULL);
 *       CHECK_EQ(sizeof(SoH), 16);
 *       CHECK_HR(AllocConnections(NULL, 1), E_INVALIDARG);
 *       return CHECK_DONE();     // 0 if every check passed, 1 otherwise
 *   }
 *
 * Every failure prints file:line, the expression and (for CHECK_EQ/CHECK_HR) both values on
 * stderr. Works in C11 and C++17. */
#ifndef NAPALLOC_TEST_CHECK_H
#define NAPALLOC_TEST_CHECK_H

#include <stdint.h>
#include <stdio.h>

static inline int *check_failures(void) {
    static int failures;
    return &failures;
}

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
            ++*check_failures();                                                        \
        }                                                                               \
    } while (0)

/* Compares as unsigned long long (so signed values compare by their two's-complement bits). */
#define CHECK_EQ(actual, expected)                                                       \
    do {                                                                                 \
        unsigned long long check_a_ = (unsigned long long)(actual);                      \
        unsigned long long check_e_ = (unsigned long long)(expected);                    \
        if (check_a_ != check_e_) {                                                      \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (got %llu = 0x%llx, want %llu = 0x%llx)\n", \
                    __FILE__, __LINE__, #actual, #expected, check_a_, check_a_, check_e_, check_e_); \
            ++*check_failures();                                                         \
        }                                                                                \
    } while (0)

#define CHECK_HR(expr, expected)                                                         \
    do {                                                                                 \
        uint32_t check_h_ = (uint32_t)(expr);                                            \
        uint32_t check_w_ = (uint32_t)(expected);                                        \
        if (check_h_ != check_w_) {                                                      \
            fprintf(stderr, "%s:%d: CHECK_HR failed: %s returned 0x%08lx, want %s = 0x%08lx\n", \
                    __FILE__, __LINE__, #expr, (unsigned long)check_h_, #expected,        \
                    (unsigned long)check_w_);                                            \
            ++*check_failures();                                                         \
        }                                                                                \
    } while (0)

static inline int check_done(const char *file) {
    int n = *check_failures();
    if (n != 0) {
        fprintf(stderr, "%s: %d check(s) failed\n", file, n);
        return 1;
    }
    printf("%s: all checks passed\n", file);
    return 0;
}
#define CHECK_DONE() check_done(__FILE__)

#endif /* NAPALLOC_TEST_CHECK_H */
