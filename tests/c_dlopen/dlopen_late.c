/* libnapalloc.so loaded with dlopen() after start-up, not linked: the library keeps the calling
 * thread's heap pointer in initial-exec TLS (src/heap.rs, `cur`), which a late dlopen takes from
 * glibc's surplus of static TLS. This client checks that the load succeeds and that the task
 * allocator works from the main thread and from threads started before and after the load.
 * Built and run by tests/c_abi.rs (`a_late_dlopen_of_the_shared_library_works`), with the path
 * of libnapalloc.so as its argument. */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef void *(*alloc_fn)(size_t);
typedef void (*free_fn)(void *);

static alloc_fn co_alloc;
static free_fn co_free;
static int failures;

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "FAILED: %s (line %d)\n", #c, __LINE__);                               \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* Allocate, write and free a few hundred blocks; blocks are 16-aligned and distinct. */
static void work(int tag) {
    unsigned char *p[256];
    for (int i = 0; i < 256; i++) {
        p[i] = co_alloc((size_t)(16 + i));
        CHECK(p[i] != NULL);
        if (!p[i]) return;
        CHECK(((uintptr_t)p[i] & 15) == 0);
        memset(p[i], tag, (size_t)(16 + i));
    }
    for (int i = 1; i < 256; i++) CHECK(p[i] != p[i - 1]);
    for (int i = 0; i < 256; i++) CHECK(p[i][15 + i] == (unsigned char)tag);
    for (int i = 0; i < 256; i++) co_free(p[i]);
}

static pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;

/* Started before the library is loaded; waits for the gate, then uses it. */
static void *early(void *arg) {
    (void)arg;
    pthread_mutex_lock(&gate);
    pthread_mutex_unlock(&gate);
    work(2);
    return NULL;
}

static void *late(void *arg) {
    (void)arg;
    work(3);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: dlopen_late PATH/libnapalloc.so\n");
        return 2;
    }
    pthread_t e, l;
    pthread_mutex_lock(&gate);
    CHECK(pthread_create(&e, NULL, early, NULL) == 0);
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "FAILED: dlopen: %s\n", dlerror());
        return 1;
    }
    *(void **)(&co_alloc) = dlsym(lib, "CoTaskMemAlloc");
    *(void **)(&co_free) = dlsym(lib, "CoTaskMemFree");
    if (!co_alloc || !co_free) {
        fprintf(stderr, "FAILED: dlsym\n");
        return 1;
    }
    pthread_mutex_unlock(&gate);
    work(1);
    CHECK(pthread_create(&l, NULL, late, NULL) == 0);
    pthread_join(e, NULL);
    pthread_join(l, NULL);
    work(4);
    if (failures) return 1;
    printf("all checks passed\n");
    return 0;
}
