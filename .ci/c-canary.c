/* c-canary.c - a C client of napalloc that is wrong on purpose, for the hardening script's `valgrind`
 * and `csan` steps: run under the step's checker it must FAIL, or the step's checks prove nothing.
 *
 *     c-canary [leak] [read-after-free] [unterminated-string]
 *
 * It goes through napalloc first (CoTaskMemAlloc commits arena pages, CoTaskMemFree returns the
 * block), so a checker that cannot run napalloc at all fails before the first wrong step, in a
 * way the step tells apart from the report it expects. Then, as the arguments ask:
 *   leak             loses the only pointer to a malloc'd block (definitely lost) whose first word
 *                    points to another (indirectly lost);
 *   read-after-free  reads a byte of a malloc'd block after freeing it (an invalid read);
 *   unterminated-string
 *                    hands AllocCountedString a malloc'd string of 4 WCHARs with no terminator,
 *                    so that napalloc's own code reads past the block: only a checker that sees
 *                    into the library (valgrind, or a library built with AddressSanitizer) fails.
 * It exits with status 0 either way: only the checker can make it fail. */
#include <napalloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *volatile sink;
static volatile char sink_byte;

int main(int argc, char **argv) {
    void *p = CoTaskMemAlloc(100);
    if (p == NULL) {
        fprintf(stderr, "c-canary.c: CoTaskMemAlloc(100) returned NULL\n");
        return 2;
    }
    memset(p, 0xAB, 100);
    CoTaskMemFree(p);
    printf("c-canary.c: napalloc ran\n");
    fflush(stdout);

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "leak") == 0) {
            void **outer = malloc(64);
            if (outer == NULL) {
                return 2;
            }
            outer[0] = malloc(32);
            sink = outer;
            sink = NULL; /* the only pointer to `outer` is gone */
            printf("c-canary.c: leaked 64 + 32 bytes\n");
        } else if (strcmp(argv[i], "read-after-free") == 0) {
            char *block = malloc(8);
            if (block == NULL) {
                return 2;
            }
            block[0] = 1;
            sink = block;
            free(block);
            sink_byte = ((char *)sink)[0]; /* through `sink`, so the compiler cannot see it */
            printf("c-canary.c: read a freed byte\n");
        } else if (strcmp(argv[i], "unterminated-string") == 0) {
            WCHAR *s = malloc(4 * sizeof(WCHAR));
            CountedString *cs = NULL;
            if (s == NULL) {
                return 2;
            }
            for (int k = 0; k < 4; k++) {
                s[k] = (WCHAR)('a' + k);
            }
            if (SUCCEEDED(AllocCountedString(&cs, s))) {
                FreeCountedString(cs);
            }
            free(s);
            printf("c-canary.c: passed an unterminated string\n");
        } else {
            fprintf(stderr, "c-canary.c: unknown argument %s (leak, read-after-free, unterminated-string)\n", argv[i]);
            return 2;
        }
        fflush(stdout);
    }
    return 0;
}
