/* cotaskmem.c - the COM task allocator (SPEC section 5) through the C ABI, rule by rule:
 * CoTaskMemAlloc / CoTaskMemRealloc / CoTaskMemFree, CoGetMalloc and the IMalloc vtable called
 * from C, napalloc's own entry points (stats, HeapMinimize, critical allocations, scopes), and
 * two threads allocating and freeing each other's blocks.
 *
 * This process is the only user of its napalloc, so the process-wide counters of
 * NapallocGetStats are checked exactly. */
#define _POSIX_C_SOURCE 200809L

#include "napalloc.h"

#include "check.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>

static NapallocStats stats(void) {
    NapallocStats s;
    memset(&s, 0xFF, sizeof s);
    CHECK_HR(NapallocGetStats(&s), S_OK);
    return s;
}

static int all_bytes(const void *p, size_t n, unsigned char b) {
    const unsigned char *c = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++) {
        if (c[i] != b) {
            return 0;
        }
    }
    return 1;
}

static void *filled(size_t n, unsigned char b) {
    void *p = CoTaskMemAlloc(n);
    CHECK(p != NULL);
    if (p != NULL) {
        memset(p, b, n);
    }
    return p;
}

static IMalloc *get_malloc(void) {
    IMalloc *m = NULL;
    CHECK_HR(CoGetMalloc(1, &m), S_OK);
    CHECK(m != NULL);
    return m;
}

/* ---- every block is 16-aligned; zero-size blocks are unique and not NULL ----------------- */

static void alignment_and_zero_size(void) {
    NapallocStats before = stats();
    void *blocks[300];
    for (size_t i = 0; i < 300; i++) {
        blocks[i] = CoTaskMemAlloc(i * 13);
        CHECK(blocks[i] != NULL);
        CHECK_EQ((uintptr_t)blocks[i] % 16, 0);
    }
    for (size_t i = 0; i < 300; i++) {
        CoTaskMemFree(blocks[i]);
    }
    for (size_t i = 0; i < 100; i++) {
        blocks[i] = CoTaskMemAlloc(0);
        CHECK(blocks[i] != NULL);
        for (size_t j = 0; j < i; j++) {
            CHECK(blocks[i] != blocks[j]);
        }
    }
    CHECK_EQ(stats().live_blocks, before.live_blocks + 100);
    for (size_t i = 0; i < 100; i++) {
        CoTaskMemFree(blocks[i]);
    }
    CHECK_EQ(stats().live_blocks, before.live_blocks);
    CHECK_EQ(stats().live_bytes, before.live_bytes);
}

/* ---- CoTaskMemRealloc --------------------------------------------------------------------- */

static void realloc_rules(void) {
    NapallocStats before = stats();
    IMalloc *m = get_malloc();

    /* NULL allocates */
    void *p = CoTaskMemRealloc(NULL, 40);
    CHECK(p != NULL);
    CHECK_EQ(m->lpVtbl->GetSize(m, p), 40);

    /* 0 frees and returns NULL */
    CHECK(CoTaskMemRealloc(p, 0) == NULL);
    CHECK_EQ(m->lpVtbl->DidAlloc(m, p), 0);
    CHECK_EQ(stats().live_blocks, before.live_blocks);

    /* a failed grow returns NULL and leaves the block untouched and valid */
    unsigned char *q = (unsigned char *)filled(100, 0x5A);
    NapallocStats failed0 = stats();
    CHECK(CoTaskMemRealloc(q, (SIZE_T)-1) == NULL);
    CHECK(CoTaskMemRealloc(q, (SIZE_T)-1 / 2) == NULL);
    CHECK(CoTaskMemRealloc(q, (SIZE_T)1 << 40) == NULL);
    CHECK_EQ(stats().failed_allocations, failed0.failed_allocations + 3);
    CHECK_EQ(m->lpVtbl->DidAlloc(m, q), 1);
    CHECK_EQ(m->lpVtbl->GetSize(m, q), 100);
    CHECK(all_bytes(q, 100, 0x5A));

    /* shrink keeps the contents up to the new size */
    q = (unsigned char *)CoTaskMemRealloc(q, 30);
    CHECK(q != NULL);
    CHECK_EQ(m->lpVtbl->GetSize(m, q), 30);
    CHECK(all_bytes(q, 30, 0x5A));

    /* grow keeps the contents up to the old size (and moves, with a block after it) */
    void *after = filled(16, 1);
    q = (unsigned char *)CoTaskMemRealloc(q, 200000);
    CHECK(q != NULL);
    CHECK_EQ((uintptr_t)q % 16, 0);
    CHECK_EQ(m->lpVtbl->GetSize(m, q), 200000);
    CHECK(all_bytes(q, 30, 0x5A));
    CoTaskMemFree(q);
    CoTaskMemFree(after);
    CHECK_EQ(stats().live_blocks, before.live_blocks);
    CHECK_EQ(stats().live_bytes, before.live_bytes);
    m->lpVtbl->Release(m);
}

/* ---- CoTaskMemFree: NULL, foreign, interior and double frees ------------------------------ */

static void free_rules(void) {
    unsigned char *keep = (unsigned char *)filled(64, 7);
    unsigned char *p = (unsigned char *)filled(48, 9);
    NapallocStats before = stats();

    CoTaskMemFree(NULL);
    NapallocStats s = stats();
    CHECK_EQ(s.live_blocks, before.live_blocks);
    CHECK_EQ(s.bad_pointer_reports, before.bad_pointer_reports);

    uint64_t local[4] = {0, 0, 0, 0};
    CoTaskMemFree(local);       /* foreign */
    CoTaskMemFree(p + 4);       /* interior */
    CoTaskMemFree(p + 16);      /* interior, 16-aligned */
    CoTaskMemFree((void *)1);   /* nonsense */
    s = stats();
    CHECK_EQ(s.live_blocks, before.live_blocks);
    CHECK_EQ(s.live_bytes, before.live_bytes);
    CHECK_EQ(s.bad_pointer_reports, before.bad_pointer_reports + 4);
    CHECK(all_bytes(p, 48, 9) && all_bytes(keep, 64, 7));
    CHECK(local[0] == 0 && local[3] == 0);

    CoTaskMemFree(p);
    CoTaskMemFree(p); /* double free */
    s = stats();
    CHECK_EQ(s.live_blocks, before.live_blocks - 1);
    CHECK_EQ(s.live_bytes, before.live_bytes - 48);
    CHECK_EQ(s.bad_pointer_reports, before.bad_pointer_reports + 5);
    CHECK(all_bytes(keep, 64, 7));

    /* a bad pointer given to realloc: NULL, nothing changed, reported */
    CHECK(CoTaskMemRealloc(keep + 4, 10) == NULL);
    CHECK_EQ(stats().bad_pointer_reports, before.bad_pointer_reports + 6);
    CHECK(all_bytes(keep, 64, 7));
    CoTaskMemFree(keep);
}

/* ---- sizes near SIZE_MAX ------------------------------------------------------------------ */

static void huge_sizes(void) {
    NapallocStats before = stats();
    CHECK(CoTaskMemAlloc((SIZE_T)-1) == NULL);
    CHECK(CoTaskMemAlloc((SIZE_T)-16) == NULL);
    CHECK(CoTaskMemAlloc((SIZE_T)-1 / 2 + 1) == NULL);
    CHECK_EQ(stats().failed_allocations, before.failed_allocations + 3);
    CHECK_EQ(stats().live_blocks, before.live_blocks);
}

/* ---- CoGetMalloc and the IMalloc vtable --------------------------------------------------- */

static void co_get_malloc(void) {
    IMalloc *m = (IMalloc *)&m;
    CHECK_HR(CoGetMalloc(1, &m), S_OK);
    CHECK(m != NULL && m->lpVtbl != NULL);
    IMalloc *again = NULL;
    CHECK_HR(CoGetMalloc(1, &again), S_OK);
    CHECK(again == m);
    again->lpVtbl->Release(again);

    static const DWORD contexts[] = {0, 2, 3, 4, 0xFFFFFFFFu};
    for (size_t i = 0; i < sizeof contexts / sizeof contexts[0]; i++) {
        IMalloc *x = (IMalloc *)&x;
        CHECK_HR(CoGetMalloc(contexts[i], &x), E_INVALIDARG);
        CHECK(x == NULL);
    }
    CHECK_HR(CoGetMalloc(1, NULL), E_INVALIDARG);

    /* QueryInterface */
    static const IID iid_unknown = NAPALLOC_IID_IUNKNOWN;
    static const IID iid_malloc = NAPALLOC_IID_IMALLOC;
    static const IID iid_other = NAPALLOC_IID_IHOSTMEMORYMANAGER;
    void *out = &out;
    CHECK_HR(m->lpVtbl->QueryInterface(m, &iid_unknown, &out), S_OK);
    CHECK(out == (void *)m);
    m->lpVtbl->Release(m);
    out = &out;
    CHECK_HR(m->lpVtbl->QueryInterface(m, &iid_malloc, &out), S_OK);
    CHECK(out == (void *)m);
    m->lpVtbl->Release(m);
    out = &out;
    CHECK_HR(m->lpVtbl->QueryInterface(m, &iid_other, &out), E_NOINTERFACE);
    CHECK(out == NULL);
    CHECK_HR(m->lpVtbl->QueryInterface(m, &iid_malloc, NULL), E_POINTER);

    /* AddRef/Release count (the object is static: it never goes away) */
    ULONG a = m->lpVtbl->AddRef(m);
    ULONG b = m->lpVtbl->AddRef(m);
    CHECK_EQ(b, a + 1);
    CHECK_EQ(m->lpVtbl->Release(m), a);
    m->lpVtbl->Release(m);

    /* the methods */
    void *p = m->lpVtbl->Alloc(m, 16);
    CHECK(p != NULL);
    CHECK_EQ((uintptr_t)p % 16, 0);
    CHECK_EQ(m->lpVtbl->GetSize(m, p), 16); /* Wine: the requested size, exactly */
    CHECK_EQ(m->lpVtbl->GetSize(m, NULL), (SIZE_T)-1);
    CHECK_EQ(m->lpVtbl->DidAlloc(m, p), 1);
    CHECK_EQ(m->lpVtbl->DidAlloc(m, NULL), -1);
    CHECK_EQ(m->lpVtbl->DidAlloc(m, (void *)1), 0);
    CHECK_EQ(m->lpVtbl->DidAlloc(m, (char *)p + 4), 0);
    for (SIZE_T n = 0; n < 3000; n += 37) {
        void *b2 = m->lpVtbl->Alloc(m, n);
        CHECK(b2 != NULL);
        CHECK_EQ(m->lpVtbl->GetSize(m, b2), n);
        m->lpVtbl->Free(m, b2);
        CHECK_EQ(m->lpVtbl->DidAlloc(m, b2), 0);
    }
    memset(p, 0x33, 16);
    p = m->lpVtbl->Realloc(m, p, 1000);
    CHECK(p != NULL);
    CHECK(all_bytes(p, 16, 0x33));
    CHECK_EQ(m->lpVtbl->GetSize(m, p), 1000);
    CHECK(m->lpVtbl->Realloc(m, p, 0) == NULL);
    CHECK_EQ(m->lpVtbl->DidAlloc(m, p), 0);
    m->lpVtbl->Free(m, NULL);
    m->lpVtbl->HeapMinimize(m);
    m->lpVtbl->Release(m);
}

/* ---- napalloc's own entry points ---------------------------------------------------------- */

static void own_entry_points(void) {
    CHECK_HR(NapallocGetStats(NULL), E_POINTER);
    CHECK_HR(NapallocHeapMinimize(), S_OK);
    NapallocStats before = stats();
    CHECK(before.reserved_bytes >= before.committed_bytes);

    void *a = NapallocAllocCritical(100, eTaskCritical);
    void *b = NapallocAllocCritical(0, eAppDomainCritical);
    void *c = NapallocAllocCritical(5000, eProcessCritical);
    CHECK(a != NULL && b != NULL && c != NULL);
    CHECK_EQ((uintptr_t)c % 16, 0);
    CHECK(NapallocAllocCritical(100, (EMemoryCriticalLevel)7) == NULL);
    CHECK_EQ(stats().live_blocks, before.live_blocks + 3);
    CHECK_EQ(stats().live_bytes, before.live_bytes + 5100);
    CoTaskMemFree(a);
    CoTaskMemFree(b);
    CoTaskMemFree(c);
    CHECK_EQ(stats().live_blocks, before.live_blocks);
}

/* ---- request scopes ----------------------------------------------------------------------- */

static void *leave_from_other_thread(void *scope) {
    return (void *)(intptr_t)NapallocScopeLeave((NapallocScope *)scope);
}

static void scopes(void) {
    NapallocStats before = stats();
    CHECK_HR(NapallocScopeEnter(NULL), E_POINTER);
    CHECK_HR(NapallocScopeLeave(NULL), E_INVALIDARG);

    NapallocScope *s1 = NULL, *s2 = NULL;
    CHECK_HR(NapallocScopeEnter(&s1), S_OK);
    CHECK(s1 != NULL);
    void *in1 = filled(100, 1);
    void *freed = filled(10, 2);
    CoTaskMemFree(freed);
    CHECK_HR(NapallocScopeEnter(&s2), S_OK);
    CHECK(s2 != NULL && s2 != s1);
    void *in2 = filled(200, 3);
    CHECK_EQ(stats().live_blocks, before.live_blocks + 2);

    CHECK_HR(NapallocScopeLeave(s1), E_INVALIDARG); /* not the innermost: nothing changes */
    CHECK_EQ(stats().live_blocks, before.live_blocks + 2);
    pthread_t t;
    void *hr = NULL;
    CHECK_EQ(pthread_create(&t, NULL, leave_from_other_thread, s2), 0);
    CHECK_EQ(pthread_join(t, &hr), 0);
    CHECK_HR((HRESULT)(intptr_t)hr, E_INVALIDARG); /* another thread's scope */
    CHECK_EQ(CoTaskMemAlloc(0) != NULL, 1);        /* leaked in s2 on purpose */

    CHECK_HR(NapallocScopeLeave(s2), S_OK);
    CHECK_EQ(stats().live_blocks, before.live_blocks + 1);
    CHECK_HR(NapallocScopeLeave(s2), E_INVALIDARG); /* already left */
    IMalloc *m = get_malloc();
    CHECK_EQ(m->lpVtbl->DidAlloc(m, in2), 0);
    CHECK_EQ(m->lpVtbl->DidAlloc(m, in1), 1);
    CHECK_HR(NapallocScopeLeave(s1), S_OK);
    CHECK_EQ(m->lpVtbl->DidAlloc(m, in1), 0);
    m->lpVtbl->Release(m);
    NapallocStats after = stats();
    CHECK_EQ(after.live_blocks, before.live_blocks);
    CHECK_EQ(after.live_bytes, before.live_bytes);
}

/* ---- two threads allocate and free each other's blocks ------------------------------------ */

#define ROUNDS 200
#define PER_ROUND 64

struct exchange {
    pthread_barrier_t barrier;
    void *blocks[2][PER_ROUND];
    unsigned sizes[2][PER_ROUND];
    int errors[2];
};

struct worker {
    struct exchange *x;
    int me;
};

static void *worker(void *arg) {
    struct worker *w = (struct worker *)arg;
    struct exchange *x = w->x;
    int me = w->me, other = 1 - w->me;
    unsigned seed = 12345u + (unsigned)me;
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < PER_ROUND; i++) {
            seed = seed * 1103515245u + 12345u;
            unsigned n = 16 + (seed >> 16) % 300;
            x->blocks[me][i] = CoTaskMemAlloc(n);
            x->sizes[me][i] = n;
            if (x->blocks[me][i] == NULL) {
                x->errors[me]++;
            } else {
                memset(x->blocks[me][i], 0xA0 + me, n);
            }
        }
        pthread_barrier_wait(&x->barrier);
        /* free the other thread's blocks (every other one through a realloc first) */
        for (int i = 0; i < PER_ROUND; i++) {
            void *p = x->blocks[other][i];
            if (p == NULL) {
                continue;
            }
            if (!all_bytes(p, x->sizes[other][i], (unsigned char)(0xA0 + other))) {
                x->errors[me]++;
            }
            if (i % 2 == 0) {
                p = CoTaskMemRealloc(p, x->sizes[other][i] + 100);
                if (p == NULL || !all_bytes(p, x->sizes[other][i], (unsigned char)(0xA0 + other))) {
                    x->errors[me]++;
                }
            }
            CoTaskMemFree(p);
        }
        pthread_barrier_wait(&x->barrier);
    }
    return NULL;
}

static void two_threads(void) {
    NapallocStats before = stats();
    static struct exchange x;
    memset(&x, 0, sizeof x);
    CHECK_EQ(pthread_barrier_init(&x.barrier, NULL, 2), 0);
    struct worker w[2] = {{&x, 0}, {&x, 1}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        CHECK_EQ(pthread_create(&t[i], NULL, worker, &w[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        CHECK_EQ(pthread_join(t[i], NULL), 0);
    }
    pthread_barrier_destroy(&x.barrier);
    CHECK_EQ(x.errors[0], 0);
    CHECK_EQ(x.errors[1], 0);
    NapallocStats after = stats();
    CHECK_EQ(after.live_blocks, before.live_blocks);
    CHECK_EQ(after.live_bytes, before.live_bytes);
    CHECK_EQ(after.bad_pointer_reports, before.bad_pointer_reports);
}

/* A double free across threads, in both orders: another thread frees first (and exits, which
 * delivers its free) and the owner frees again, or the owner frees first and another thread
 * frees again (and flushes). Either way the second free is refused and reported, and the
 * owner's next two allocations (made before anything else could do the delivered free) are two
 * different live blocks. */
static void *free_block(void *p) {
    CoTaskMemFree(p);
    CHECK_HR(NapallocFlushRemoteFrees(), S_OK);
    return NULL;
}

static void cross_thread_double_free(void) {
    static const size_t sizes[] = {64, 500, 5000};
    for (int order = 0; order < 2; ++order) {
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) {
            size_t n = sizes[i];
            NapallocStats before = stats();
            void *p = filled(n, 0x3C);
            pthread_t t;
            if (order == 1)
                CoTaskMemFree(p); /* the owner first */
            CHECK_EQ(pthread_create(&t, NULL, free_block, p), 0);
            CHECK_EQ(pthread_join(t, NULL), 0);
            if (order == 0)
                CoTaskMemFree(p); /* the owner second */
            void *a = CoTaskMemAlloc(n), *b = CoTaskMemAlloc(n);
            CHECK(a != NULL && b != NULL && a != b);
            memset(a, 1, n);
            memset(b, 2, n);
            IMalloc *m = get_malloc();
            CHECK_EQ(m->lpVtbl->DidAlloc(m, a), 1);
            CHECK_EQ(m->lpVtbl->DidAlloc(m, b), 1);
            m->lpVtbl->Release(m);
            CHECK(all_bytes(a, n, 1) && all_bytes(b, n, 2));
            NapallocStats mid = stats();
            CHECK_EQ(mid.live_blocks, before.live_blocks + 2);
            CHECK_EQ(mid.bad_pointer_reports, before.bad_pointer_reports + 1);
            CoTaskMemFree(a);
            CoTaskMemFree(b);
        }
    }
}

int main(void) {
    NapallocStats start = stats();
    alignment_and_zero_size();
    realloc_rules();
    free_rules();
    huge_sizes();
    co_get_malloc();
    own_entry_points();
    scopes();
    two_threads();
    cross_thread_double_free();
    NapallocStats end = stats();
    CHECK_EQ(end.live_blocks, start.live_blocks);
    CHECK_EQ(end.live_bytes, start.live_bytes);
    return CHECK_DONE();
}
