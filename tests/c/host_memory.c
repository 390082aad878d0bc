/* host_memory.c - a host that owns the memory (SPEC section 6): an IHostMemoryManager written in C,
 * in the vtable order of mscoree.h, handed to napalloc with NapallocSetHostMemoryManager before the
 * first allocation. napalloc then takes every page from it; the host fails at chosen points with
 * every host error, and the allocation entry points (CoTaskMemAlloc, NapallocAllocCritical,
 * AllocConnections, AllocCountedString) must answer with a clean NULL / E_OUTOFMEMORY and keep
 * serving afterwards. Also: E_FAIL's failed state, the memory-notification callback napalloc
 * registers, the budget's critical levels, and what NapallocSetHostMemoryManager promises when it
 * is called again mid-process (reservations made from then on come from the host installed then).
 *
 * The host: every MEM_RESERVE is its own anonymous PROT_NONE mapping (MAP_NORESERVE), MEM_COMMIT
 * makes pages read/write, MEM_DECOMMIT gives them back with MADV_DONTNEED; a bitmap per reservation
 * records which pages are committed, so the host knows exactly what it handed out and took back,
 * and refuses (HOST_E_INVALIDOPERATION, counted) any range it did not hand out.
 *
 * This process is the only user of its napalloc, so NapallocGetStats is checked exactly. */
#define _GNU_SOURCE

#include "napalloc.h"

#include "check.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096u
#define MAX_RES 64
#define MIB ((size_t)1 << 20)
#define E_NOTIMPL_HOST ((HRESULT)0x80004001L) /* E_NOTIMPL */

/* ---- the host ---------------------------------------------------------------------------- */

typedef struct {
    uint8_t *base;          /* NULL: free slot */
    size_t len;
    unsigned char *bitmap;  /* one bit per page: committed */
} Reservation;

typedef struct {
    IHostMemoryManager iface; /* first: the interface pointer is the object's address */
    pthread_mutex_t lock;     /* guards everything below */
    ULONG refs;
    Reservation res[MAX_RES];
    size_t committed;         /* bytes committed now */
    uint64_t reserves, commits, decommits, releases; /* calls that succeeded */
    uint64_t alloc_calls;     /* VirtualAlloc calls, failed ones included */
    uint64_t invalid_ops;     /* calls refused with HOST_E_INVALIDOPERATION */
    uint64_t needs, acquired, released_va;
    /* Fault injection: the next `fail_count` VirtualAlloc calls of kind `fail_kind` (MEM_COMMIT,
     * MEM_RESERVE, or 0 for both) fail with `fail_hr`; -1 = until disarmed. */
    HRESULT fail_hr;
    int fail_count;
    DWORD fail_kind;
    uint64_t injected;
    /* Tell the callback eMemoryAvailableLow from inside the next commit. */
    int notify_in_commit;
    HRESULT notify_in_commit_hr;
    ICLRMemoryNotificationCallback *callback; /* AddRef'd */
    uint64_t registrations;
} Host;

static Host host;

static Host *H(IHostMemoryManager *This) {
    return (Host *)(void *)This;
}

static Reservation *find_res(Host *h, const void *p, size_t len) {
    const uint8_t *b = (const uint8_t *)p;
    for (int i = 0; i < MAX_RES; i++) {
        Reservation *r = &h->res[i];
        if (r->base != NULL && b >= r->base && b < r->base + r->len && len <= (size_t)(r->base + r->len - b)) {
            return r;
        }
    }
    return NULL;
}

/* Set or clear the committed bits of [p, p + len); returns the bytes whose state changed. */
static size_t mark(Reservation *r, const uint8_t *p, size_t len, int on) {
    size_t changed = 0;
    for (size_t pg = (size_t)(p - r->base) / PAGE, end = pg + len / PAGE; pg < end; pg++) {
        unsigned char bit = (unsigned char)(1u << (pg % 8));
        int was = (r->bitmap[pg / 8] & bit) != 0;
        if (was != on) {
            r->bitmap[pg / 8] = (unsigned char)(on ? (r->bitmap[pg / 8] | bit) : (r->bitmap[pg / 8] & ~bit));
            changed += PAGE;
        }
    }
    return changed;
}

static HRESULT STDMETHODCALLTYPE host_qi(IHostMemoryManager *This, REFIID riid, void **ppv) {
    static const IID iid_unknown = NAPALLOC_IID_IUNKNOWN;
    static const IID iid_host = NAPALLOC_IID_IHOSTMEMORYMANAGER;
    if (ppv == NULL) {
        return E_POINTER;
    }
    *ppv = NULL;
    if (memcmp(riid, &iid_unknown, sizeof(IID)) != 0 && memcmp(riid, &iid_host, sizeof(IID)) != 0) {
        return E_NOINTERFACE;
    }
    This->lpVtbl->AddRef(This);
    *ppv = This;
    return S_OK;
}

static ULONG STDMETHODCALLTYPE host_add_ref(IHostMemoryManager *This) {
    Host *h = H(This);
    pthread_mutex_lock(&h->lock);
    ULONG n = ++h->refs;
    pthread_mutex_unlock(&h->lock);
    return n;
}

static ULONG STDMETHODCALLTYPE host_release(IHostMemoryManager *This) {
    Host *h = H(This);
    pthread_mutex_lock(&h->lock);
    ULONG n = --h->refs; /* a static object: never freed */
    pthread_mutex_unlock(&h->lock);
    return n;
}

static HRESULT STDMETHODCALLTYPE host_create_malloc(IHostMemoryManager *This, DWORD type, IHostMalloc **pp) {
    (void)This;
    (void)type;
    if (pp != NULL) {
        *pp = NULL;
    }
    return E_NOTIMPL_HOST;
}

static HRESULT STDMETHODCALLTYPE host_virtual_alloc(IHostMemoryManager *This, void *addr, SIZE_T size, DWORD type,
                                                    DWORD protect, EMemoryCriticalLevel level, void **ppMem) {
    Host *h = H(This);
    HRESULT hr = S_OK;
    ICLRMemoryNotificationCallback *tell = NULL;
    (void)level;
    *ppMem = NULL;
    pthread_mutex_lock(&h->lock);
    h->alloc_calls++;
    if (h->fail_count != 0 && (h->fail_kind == 0 || h->fail_kind == type)) {
        if (h->fail_count > 0) {
            h->fail_count--;
        }
        h->injected++;
        hr = h->fail_hr;
    } else if (type == MEM_RESERVE && addr == NULL && protect == PAGE_NOACCESS && size % PAGE == 0 && size > 0) {
        int slot = -1;
        for (int i = 0; i < MAX_RES && slot < 0; i++) {
            if (h->res[i].base == NULL) {
                slot = i;
            }
        }
        void *p = slot < 0 ? MAP_FAILED
                           : mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        unsigned char *bits = p == MAP_FAILED ? NULL : (unsigned char *)calloc(size / PAGE / 8 + 1, 1);
        if (bits == NULL) {
            if (p != MAP_FAILED) {
                munmap(p, size);
            }
            hr = E_OUTOFMEMORY;
        } else {
            h->res[slot].base = (uint8_t *)p;
            h->res[slot].len = size;
            h->res[slot].bitmap = bits;
            h->reserves++;
            *ppMem = p;
        }
    } else if (type == MEM_COMMIT && protect == PAGE_READWRITE && (uintptr_t)addr % PAGE == 0 && size % PAGE == 0) {
        Reservation *r = find_res(h, addr, size);
        if (r == NULL) {
            h->invalid_ops++;
            hr = HOST_E_INVALIDOPERATION;
        } else if (mprotect(addr, size, PROT_READ | PROT_WRITE) != 0) {
            hr = E_OUTOFMEMORY;
        } else {
            h->committed += mark(r, (const uint8_t *)addr, size, 1);
            h->commits++;
            *ppMem = addr;
            if (h->notify_in_commit && h->callback != NULL) {
                h->notify_in_commit = 0;
                tell = h->callback;
                tell->lpVtbl->AddRef(tell);
            }
        }
    } else {
        hr = E_INVALIDARG;
    }
    pthread_mutex_unlock(&h->lock);
    if (tell != NULL) {
        /* A host that runs low tells the runtime from inside the call that made it low: the
         * callback must neither block nor fail the allocation in progress. */
        h->notify_in_commit_hr = tell->lpVtbl->OnMemoryNotification(tell, eMemoryAvailableLow);
        tell->lpVtbl->Release(tell);
    }
    return hr;
}

static HRESULT STDMETHODCALLTYPE host_virtual_free(IHostMemoryManager *This, LPVOID addr, SIZE_T size, DWORD type) {
    Host *h = H(This);
    HRESULT hr = S_OK;
    pthread_mutex_lock(&h->lock);
    if (type == MEM_DECOMMIT) {
        Reservation *r = (uintptr_t)addr % PAGE == 0 && size % PAGE == 0 ? find_res(h, addr, size) : NULL;
        if (r == NULL) {
            h->invalid_ops++;
            hr = HOST_E_INVALIDOPERATION;
        } else {
            madvise(addr, size, MADV_DONTNEED);
            mprotect(addr, size, PROT_NONE);
            h->committed -= mark(r, (const uint8_t *)addr, size, 0);
            h->decommits++;
        }
    } else if (type == MEM_RELEASE && size == 0) {
        Reservation *r = find_res(h, addr, 1);
        if (r == NULL || r->base != (uint8_t *)addr) {
            h->invalid_ops++;
            hr = HOST_E_INVALIDOPERATION;
        } else {
            h->committed -= mark(r, r->base, r->len, 0);
            munmap(r->base, r->len);
            free(r->bitmap);
            memset(r, 0, sizeof *r);
            h->releases++;
        }
    } else {
        hr = E_INVALIDARG;
    }
    pthread_mutex_unlock(&h->lock);
    return hr;
}

static HRESULT STDMETHODCALLTYPE host_virtual_query(IHostMemoryManager *This, void *a, void *b, SIZE_T n, SIZE_T *r) {
    (void)This;
    (void)a;
    (void)b;
    (void)n;
    (void)r;
    return E_NOTIMPL_HOST;
}

static HRESULT STDMETHODCALLTYPE host_virtual_protect(IHostMemoryManager *This, void *a, SIZE_T n, DWORD p, DWORD *o) {
    (void)This;
    (void)a;
    (void)n;
    (void)p;
    (void)o;
    return E_NOTIMPL_HOST;
}

static HRESULT STDMETHODCALLTYPE host_get_memory_load(IHostMemoryManager *This, DWORD *load, SIZE_T *avail) {
    (void)This;
    *load = 42;
    *avail = 1u << 30;
    return S_OK;
}

static HRESULT STDMETHODCALLTYPE host_register_callback(IHostMemoryManager *This, ICLRMemoryNotificationCallback *cb) {
    Host *h = H(This);
    if (cb == NULL) {
        return E_POINTER;
    }
    cb->lpVtbl->AddRef(cb);
    pthread_mutex_lock(&h->lock);
    ICLRMemoryNotificationCallback *old = h->callback;
    h->callback = cb;
    h->registrations++;
    pthread_mutex_unlock(&h->lock);
    if (old != NULL) {
        old->lpVtbl->Release(old);
    }
    return S_OK;
}

static HRESULT STDMETHODCALLTYPE host_needs_va(IHostMemoryManager *This, LPVOID start, SIZE_T size) {
    (void)start;
    (void)size;
    pthread_mutex_lock(&H(This)->lock);
    H(This)->needs++;
    pthread_mutex_unlock(&H(This)->lock);
    return S_OK;
}

static HRESULT STDMETHODCALLTYPE host_acquired_va(IHostMemoryManager *This, LPVOID start, SIZE_T size) {
    (void)start;
    (void)size;
    pthread_mutex_lock(&H(This)->lock);
    H(This)->acquired++;
    pthread_mutex_unlock(&H(This)->lock);
    return S_OK;
}

static HRESULT STDMETHODCALLTYPE host_released_va(IHostMemoryManager *This, LPVOID start) {
    (void)start;
    pthread_mutex_lock(&H(This)->lock);
    H(This)->released_va++;
    pthread_mutex_unlock(&H(This)->lock);
    return S_OK;
}

static const IHostMemoryManagerVtbl host_vtbl = {
    host_qi,           host_add_ref,          host_release,         host_create_malloc,
    host_virtual_alloc, host_virtual_free,    host_virtual_query,   host_virtual_protect,
    host_get_memory_load, host_register_callback, host_needs_va,    host_acquired_va,
    host_released_va,
};

/* ---- helpers ----------------------------------------------------------------------------- */

static void arm(HRESULT hr, int count, DWORD kind) {
    pthread_mutex_lock(&host.lock);
    host.fail_hr = hr;
    host.fail_count = count;
    host.fail_kind = kind;
    pthread_mutex_unlock(&host.lock);
}

static size_t host_committed(void) {
    pthread_mutex_lock(&host.lock);
    size_t c = host.committed;
    pthread_mutex_unlock(&host.lock);
    return c;
}

static uint64_t host_alloc_calls(void) {
    pthread_mutex_lock(&host.lock);
    uint64_t n = host.alloc_calls;
    pthread_mutex_unlock(&host.lock);
    return n;
}

/* Whether every page of [p, p + n) is committed by the host. */
static int host_owns(const void *p, size_t n) {
    int ok = 1;
    pthread_mutex_lock(&host.lock);
    const uint8_t *b = (const uint8_t *)((uintptr_t)p & ~(uintptr_t)(PAGE - 1));
    const uint8_t *e = (const uint8_t *)p + (n == 0 ? 1 : n);
    Reservation *r = find_res(&host, b, (size_t)(e - b));
    if (r == NULL) {
        ok = 0;
    } else {
        for (size_t pg = (size_t)(b - r->base) / PAGE; r->base + pg * PAGE < e; pg++) {
            if ((r->bitmap[pg / 8] & (1u << (pg % 8))) == 0) {
                ok = 0;
            }
        }
    }
    pthread_mutex_unlock(&host.lock);
    return ok;
}

static NapallocStats stats(void) {
    NapallocStats s;
    memset(&s, 0xFF, sizeof s);
    CHECK_HR(NapallocGetStats(&s), S_OK);
    return s;
}

/* Every page napalloc has committed came from the host: its count equals the host's. */
static void check_books(const char *when) {
    NapallocStats s = stats();
    if (s.committed_bytes != host_committed()) {
        fprintf(stderr, "%s: ", when);
    }
    CHECK_EQ(s.committed_bytes, host_committed());
}

static int all_bytes(const unsigned char *p, size_t n, unsigned char b) {
    for (size_t i = 0; i < n; i++) {
        if (p[i] != b) {
            return 0;
        }
    }
    return 1;
}

/* ---- requests that need the host ---------------------------------------------------------- */

enum { CO_TASK_MEM, CRITICAL, CONNECTIONS, COUNTED_STRING, NKINDS };
static const char *const kind_name[NKINDS] = {"CoTaskMemAlloc", "NapallocAllocCritical", "AllocConnections",
                                              "AllocCountedString"};
static WCHAR long_string[1025]; /* the longest string NapUtil takes: 1024 characters */

/* One request of kind `k`: the block (NULL on failure, after checking the failure is clean). */
static void *request(int k) {
    switch (k) {
    case CO_TASK_MEM:
        return CoTaskMemAlloc(MIB);
    case CRITICAL:
        return NapallocAllocCritical(MIB, eProcessCritical);
    case CONNECTIONS: {
        Connections *c = (Connections *)(uintptr_t)1;
        HRESULT hr = AllocConnections(&c, 20);
        if (FAILED(hr)) {
            CHECK_HR(hr, E_OUTOFMEMORY);
            CHECK(c == NULL);
            return NULL;
        }
        CHECK(c != NULL && c->count == 20 && c->connections[19] == NULL);
        return c;
    }
    default: {
        CountedString *cs = (CountedString *)(uintptr_t)1;
        HRESULT hr = AllocCountedString(&cs, long_string);
        if (FAILED(hr)) {
            CHECK_HR(hr, E_OUTOFMEMORY);
            CHECK(cs == NULL);
            return NULL;
        }
        CHECK(cs != NULL && cs->length == 1024 && cs->string[1023] == 'x');
        return cs;
    }
    }
}

static void release(int k, void *p) {
    switch (k) {
    case CONNECTIONS:
        FreeConnections((Connections *)p);
        break;
    case COUNTED_STRING:
        FreeCountedString((CountedString *)p);
        break;
    default:
        CoTaskMemFree(p);
    }
}

/* Make requests of kind `k` until one is refused (at most 4096: megabytes of NapUtil structures,
 * more than the commit chunk napalloc can have left after NapallocHeapMinimize), then free those
 * served. Returns whether one was refused. */
#define MAX_REQUESTS 4096
static int until_refused(int k) {
    static void *held[MAX_REQUESTS];
    int n = 0, refused = 0;
    while (n < MAX_REQUESTS) {
        void *p = request(k);
        if (p == NULL) {
            refused = 1;
            break;
        }
        held[n++] = p;
    }
    while (n > 0) {
        release(k, held[--n]);
    }
    return refused;
}

/* ---- threads ----------------------------------------------------------------------------- */

typedef struct {
    size_t size;
    void *got;         /* what the thread's allocation returned */
    int owned;         /* it lay in host-committed pages */
    int freed_idle;    /* hold: allocate, free, then wait for `go` with the memory idle */
    pthread_mutex_t m;
    pthread_cond_t cv;
    int ready, go;
} Job;

static void *alloc_thread(void *arg) {
    Job *j = (Job *)arg;
    j->got = CoTaskMemAlloc(j->size);
    j->owned = j->got != NULL && host_owns(j->got, j->size);
    if (j->got != NULL) {
        memset(j->got, 0x5A, j->size);
    }
    if (j->freed_idle) {
        CoTaskMemFree(j->got);
        pthread_mutex_lock(&j->m);
        j->ready = 1;
        pthread_cond_broadcast(&j->cv);
        while (!j->go) {
            pthread_cond_wait(&j->cv, &j->m);
        }
        pthread_mutex_unlock(&j->m);
    } else {
        CoTaskMemFree(j->got);
    }
    return NULL;
}

static void job_init(Job *j, size_t size, int freed_idle) {
    memset(j, 0, sizeof *j);
    j->size = size;
    j->freed_idle = freed_idle;
    pthread_mutex_init(&j->m, NULL);
    pthread_cond_init(&j->cv, NULL);
}

static void run_thread(Job *j) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, alloc_thread, j) == 0);
    pthread_join(t, NULL);
}

/* ---- the test ---------------------------------------------------------------------------- */

static const HRESULT host_errors[] = {
    HOST_E_TIMEOUT, HOST_E_NOT_OWNER, HOST_E_ABANDONED, HOST_E_CLRNOTAVAILABLE, E_OUTOFMEMORY,
};

int main(void) {
    host.iface.lpVtbl = &host_vtbl;
    host.refs = 1;
    pthread_mutex_init(&host.lock, NULL);
    for (size_t i = 0; i < 1024; i++) {
        long_string[i] = 'x';
    }

    /* 1. Installed before the first allocation: every reservation of the task heap is the host's. */
    CHECK_HR(NapallocGetLastHostError(), S_OK); /* no host error yet */
    CHECK_HR(NapallocSetHostMemoryManager(&host.iface), S_OK);
    CHECK_EQ(host.refs, 2);           /* napalloc keeps a reference */
    CHECK_EQ(host.registrations, 1);  /* and registered its callback */
    CHECK(host.callback != NULL);

    void *keep[64];
    int nkeep = 0;
    for (size_t n = 1; n <= 4096; n *= 2) {
        unsigned char *p = (unsigned char *)CoTaskMemAlloc(n);
        CHECK(p != NULL);
        CHECK(host_owns(p, n));
        memset(p, (int)(n & 0xFF), n);
        keep[nkeep++] = p;
    }
    CHECK(host.reserves >= 1);
    CHECK(host.commits >= 1);
    CHECK_EQ(host.needs, 0); /* the host hands out the pages itself: no address-space notices */
    check_books("after the first allocations");

    /* 2. Every host error on a commit: a clean NULL / E_OUTOFMEMORY, nothing committed, and the
     *    next request is served. Each entry point allocates until it needs a commit (what is
     *    committed already is served without the host), which the host then refuses. */
    for (size_t i = 0; i < sizeof host_errors / sizeof host_errors[0]; i++) {
        for (int k = 0; k < NKINDS; k++) {
            CHECK_HR(NapallocHeapMinimize(), S_OK); /* little committed and unused is left */
            NapallocStats before = stats();
            uint64_t injected = host.injected;
            arm(host_errors[i], -1, MEM_COMMIT);
            int failed = until_refused(k);
            arm(S_OK, 0, 0);
            if (!failed) {
                fprintf(stderr, "%s: error 0x%08lx was never injected\n", kind_name[k], (unsigned long)host_errors[i]);
            }
            CHECK(failed);
            CHECK(host.injected > injected);               /* the host was asked, and said no */
            CHECK_HR(NapallocGetLastHostError(), host_errors[i]); /* and the cause is kept */
            CHECK(stats().failed_allocations > before.failed_allocations);
            check_books("after a host error");
        }
        unsigned char *p = (unsigned char *)CoTaskMemAlloc(MIB); /* served again */
        CHECK(p != NULL);
        CHECK(p == NULL || host_owns(p, MIB));
        if (p != NULL) {
            memset(p, 0xC3, MIB);
            CHECK(all_bytes(p, MIB, 0xC3));
        }
        CoTaskMemFree(p);
    }
    /* The blocks handed out before the failures are intact. */
    for (int i = 0; i < nkeep; i++) {
        size_t n = (size_t)1 << i;
        CHECK(all_bytes((const unsigned char *)keep[i], n, (unsigned char)(n & 0xFF)));
    }

    /* 3. A reservation the host refuses: a new thread, which needs a heap of its own, gets NULL
     *    (or a block of an existing heap, which is the host's too), and nothing is left behind. */
    {
        Job j;
        job_init(&j, 64, 0);
        arm(HOST_E_TIMEOUT, -1, MEM_RESERVE);
        uint64_t reserves = host.reserves;
        run_thread(&j);
        arm(S_OK, 0, 0);
        CHECK(j.got == NULL || j.owned);
        CHECK_EQ(host.reserves, reserves);
        CHECK(host.injected >= 1);
        check_books("after a refused reservation");
    }

    /* 4. The host runs low and says so from inside a commit: the callback napalloc registered
     *    answers S_OK without blocking, and the allocation in progress is served. */
    {
        ICLRMemoryNotificationCallback *cb = host.callback;
        static const IID iid_cb = NAPALLOC_IID_ICLRMEMORYNOTIFICATIONCALLBACK;
        static const IID iid_malloc = NAPALLOC_IID_IMALLOC;
        void *q = NULL;
        CHECK_HR(cb->lpVtbl->QueryInterface(cb, &iid_cb, &q), S_OK);
        CHECK(q == cb);
        cb->lpVtbl->Release(cb);
        CHECK_HR(cb->lpVtbl->QueryInterface(cb, &iid_malloc, &q), E_NOINTERFACE);
        CHECK(q == NULL);
        CHECK_HR(cb->lpVtbl->OnMemoryNotification(cb, eMemoryAvailableHigh), S_OK);
        CHECK_HR(cb->lpVtbl->OnMemoryNotification(cb, eMemoryAvailableNeutral), S_OK);
        CHECK_HR(cb->lpVtbl->OnMemoryNotification(cb, (EMemoryAvailable)7), E_INVALIDARG);
        CHECK_HR(cb->lpVtbl->OnMemoryNotification(cb, eMemoryAvailableLow), S_OK);

        CHECK_HR(NapallocHeapMinimize(), S_OK);
        host.notify_in_commit_hr = E_FAIL;
        host.notify_in_commit = 1;
        void *held[64];
        int n = 0;
        while (n < 64 && host.notify_in_commit) { /* until a request needs a commit */
            held[n] = CoTaskMemAlloc(64 * 1024);
            CHECK(held[n] != NULL);
            CHECK(held[n] == NULL || host_owns(held[n], 64 * 1024));
            n++;
        }
        CHECK_EQ(host.notify_in_commit, 0);            /* the host did notify, mid-commit */
        CHECK_HR(host.notify_in_commit_hr, S_OK);
        while (n > 0) {
            CoTaskMemFree(held[--n]);
        }
        check_books("after a notification");
    }

    /* 5. The budget's critical levels, through NapallocAllocCritical. Another thread's heap holds
     *    2 MiB of committed memory it no longer uses: an app-domain-critical request may take it
     *    back (a trim), a task-critical one may not. */
    {
        CHECK_HR(NapallocHeapMinimize(), S_OK); /* little committed and unused is left */
        Job idle;
        job_init(&idle, 2 * MIB, 1);
        pthread_t t;
        CHECK(pthread_create(&t, NULL, alloc_thread, &idle) == 0);
        pthread_mutex_lock(&idle.m);
        while (!idle.ready) {
            pthread_cond_wait(&idle.cv, &idle.m);
        }
        pthread_mutex_unlock(&idle.m);
        CHECK(idle.owned);

        size_t soft = (size_t)stats().committed_bytes + 256 * 1024;
        CHECK_HR(NapallocSetBudget(2 * soft, soft), E_INVALIDARG);
        CHECK_HR(NapallocSetBudget(soft, soft + 4 * MIB), S_OK);
        NapallocStats before = stats();
        uint64_t calls = host_alloc_calls();

        CHECK(CoTaskMemAlloc(MIB) == NULL);                          /* task-critical by default */
        CHECK(NapallocAllocCritical(MIB, eTaskCritical) == NULL);
        CHECK(NapallocAllocCritical(MIB, (EMemoryCriticalLevel)3) == NULL);
        CHECK(NapallocAllocCritical(MIB, (EMemoryCriticalLevel)-1) == NULL);
        CHECK_EQ(host_alloc_calls(), calls);                         /* refused before the host */
        CHECK_EQ(stats().trims, before.trims);                       /* and without a trim */
        CHECK(stats().failed_allocations >= before.failed_allocations + 2);

        unsigned char *a = (unsigned char *)NapallocAllocCritical(MIB, eAppDomainCritical);
        CHECK(stats().trims > before.trims);
        CHECK(a == NULL || host_owns(a, MIB));
        CHECK(stats().committed_bytes <= soft);
        if (a != NULL) {
            memset(a, 0x11, MIB);
        }

        /* Nothing idle is left: app-domain fails, process-critical uses the reserve. */
        unsigned char *b = (unsigned char *)NapallocAllocCritical(2 * MIB, eAppDomainCritical);
        CHECK(b == NULL);
        unsigned char *c = (unsigned char *)NapallocAllocCritical(2 * MIB, eProcessCritical);
        CHECK(c != NULL);
        CHECK(c == NULL || host_owns(c, 2 * MIB));
        CHECK(stats().committed_bytes > soft);
        CHECK(stats().committed_bytes <= soft + 4 * MIB);
        /* Not even process-critical requests pass the hard limit. */
        CHECK(NapallocAllocCritical(8 * MIB, eProcessCritical) == NULL);
        CHECK(a == NULL || all_bytes(a, MIB, 0x11));
        check_books("under the budget");

        CoTaskMemFree(a);
        CoTaskMemFree(c);
        CHECK_HR(NapallocSetBudget(0, 0), S_OK);
        pthread_mutex_lock(&idle.m);
        idle.go = 1;
        pthread_cond_broadcast(&idle.cv);
        pthread_mutex_unlock(&idle.m);
        pthread_join(t, NULL);
        void *again = CoTaskMemAlloc(MIB); /* served again */
        CHECK(again != NULL);
        CoTaskMemFree(again);
    }

    /* 6. The 4 MiB a thread used before it ended go back to the host (when its heap is abandoned
     *    empty, or at the latest with HeapMinimize), and only pages the host handed out. */
    {
        uint64_t decommits = host.decommits;
        size_t committed = host_committed();
        Job j;
        job_init(&j, 4 * MIB, 0);
        run_thread(&j);
        CHECK(j.owned);
        CHECK_HR(NapallocHeapMinimize(), S_OK);
        CHECK(host.decommits > decommits);
        CHECK(host_committed() <= committed);
        check_books("after HeapMinimize");
    }

    /* 7. E_FAIL: the host is in an unrecoverable state, as for the CLR. The request fails, and
     *    from then on napalloc no longer calls the host: requests that need pages fail at once,
     *    requests served from pages committed already go on. NapallocResetHostFailure, once the
     *    host has recovered, makes napalloc call it again. */
    {
        CoTaskMemFree(CoTaskMemAlloc(32 * 1024)); /* a committed, unused chunk for what follows */
        uint64_t injected = host.injected;
        arm(E_FAIL, 1, MEM_COMMIT);
        CHECK(CoTaskMemAlloc(64 * MIB) == NULL);
        CHECK_EQ(host.injected, injected + 1);
        CHECK_HR(NapallocGetLastHostError(), E_FAIL);
        arm(S_OK, 0, 0);
        uint64_t calls = host_alloc_calls();
        unsigned char *small = (unsigned char *)CoTaskMemAlloc(64);
        CHECK(small != NULL);
        CHECK(small == NULL || host_owns(small, 64));
        for (int k = 0; k < NKINDS; k++) {
            CHECK(until_refused(k));
        }
        CHECK(CoTaskMemAlloc(64 * MIB) == NULL);
        CHECK_EQ(host_alloc_calls(), calls); /* failed fast, without the host */
        CHECK_HR(NapallocGetLastHostError(), E_FAIL); /* still the cause */
        CoTaskMemFree(small);
        check_books("in the failed state");

        CHECK_HR(NapallocResetHostFailure(), S_OK);
        CHECK_HR(NapallocResetHostFailure(), S_FALSE);
        unsigned char *p = (unsigned char *)CoTaskMemAlloc(4 * MIB);
        CHECK(p != NULL);
        CHECK(host_alloc_calls() > calls); /* the host is called again */
        CHECK(p == NULL || host_owns(p, 4 * MIB));
        CoTaskMemFree(p);
        check_books("after the host recovered");
    }

    /* 8. Installing a host again mid-process does what NapallocSetHostMemoryManager promises:
     *    reservations made from then on come from the host installed then (a request scope takes
     *    a heap of its own, reserved now), and those made earlier stay with their source. */
    {
        uint64_t reserves = host.reserves;
        CHECK_HR(NapallocSetHostMemoryManager(&host.iface), S_OK);
        CHECK_EQ(host.registrations, 2);
        CHECK_EQ(host.refs, 3); /* one for the earlier installation, whose reservations remain */
        NapallocScope *scope = NULL;
        CHECK_HR(NapallocScopeEnter(&scope), S_OK);
        unsigned char *p = (unsigned char *)CoTaskMemAlloc(MIB);
        CHECK(p != NULL);
        CHECK(p == NULL || host_owns(p, MIB));
        CHECK(host.reserves > reserves);
        CHECK_HR(NapallocScopeLeave(scope), S_OK); /* frees `p` with the scope */
        check_books("after the host was installed again");
    }

    /* 9. A host without the methods napalloc calls is refused, and nothing changes. */
    {
        IHostMemoryManagerVtbl partial = host_vtbl;
        partial.VirtualFree = NULL;
        IHostMemoryManager bad = {&partial};
        CHECK_HR(NapallocSetHostMemoryManager(&bad), E_INVALIDARG);
    }

    CHECK_EQ(host.invalid_ops, 0); /* napalloc never handed the host a range it did not give out */
    for (int i = 0; i < nkeep; i++) {
        size_t n = (size_t)1 << i;
        CHECK(all_bytes((const unsigned char *)keep[i], n, (unsigned char)(n & 0xFF)));
        CoTaskMemFree(keep[i]);
    }
    check_books("at the end");
    return CHECK_DONE();
}
