/* nap_common.h - shared by the NapUtil C clients (nap_*.c): task-heap counters, UTF-16 strings and
 * a fake INapEnforcementClientConnection (a C struct with a vtable and a reference count). */
#ifndef NAPALLOC_TEST_NAP_COMMON_H
#define NAPALLOC_TEST_NAP_COMMON_H

#include "napalloc.h"

#include "check.h"

#include <stdint.h>
#include <string.h>

/* ---- the task heap's counters ----------------------------------------------------------- */

static inline NapallocStats nap_stats(void) {
    NapallocStats s;
    memset(&s, 0, sizeof s);
    CHECK_HR(NapallocGetStats(&s), S_OK);
    return s;
}
static inline uint64_t live_blocks(void) { return nap_stats().live_blocks; }
static inline uint64_t bad_reports(void) { return nap_stats().bad_pointer_reports; }

/* ---- UTF-16 ------------------------------------------------------------------------------ */

/* Copy the ASCII string `src` into `dst` as UTF-16 with its NUL. */
static inline WCHAR *widen(WCHAR *dst, const char *src) {
    size_t i = 0;
    do {
        dst[i] = (WCHAR)(unsigned char)src[i];
    } while (src[i++] != '\0');
    return dst;
}

/* 1 if the `length` units at `w` are the ASCII string `s` and a NUL follows them. */
static inline int wequals(const WCHAR *w, UINT16 length, const char *s) {
    size_t i;
    if (w == NULL || strlen(s) != length) return 0;
    for (i = 0; i < length; i++) {
        if (w[i] != (WCHAR)(unsigned char)s[i]) return 0;
    }
    return w[length] == 0;
}

/* A task-heap block of `cb` bytes filled with `fill` (as a C caller builds structures by hand). */
static inline void *task_block(size_t cb, int fill) {
    void *p = CoTaskMemAlloc(cb);
    CHECK(p != NULL);
    if (p != NULL) memset(p, fill, cb);
    return p;
}

/* ---- a fake connection ------------------------------------------------------------------- */

typedef struct FakeConnection {
    INapEnforcementClientConnection iface; /* first: the interface pointer is the object */
    ULONG refs;
    ULONG releases;
    int on_task_heap;                       /* frees itself with CoTaskMemFree at refs == 0 */
} FakeConnection;

/* Release calls of every fake, including those that freed themselves. */
static ULONG fake_releases_total;
static ULONG fake_self_frees;

static HRESULT STDMETHODCALLTYPE fake_query_interface(INapEnforcementClientConnection *This, REFIID riid,
                                                      void **ppv) {
    (void)This;
    (void)riid;
    *ppv = NULL;
    return E_NOINTERFACE;
}
static ULONG STDMETHODCALLTYPE fake_add_ref(INapEnforcementClientConnection *This) {
    return ++((FakeConnection *)This)->refs;
}
static ULONG STDMETHODCALLTYPE fake_release(INapEnforcementClientConnection *This) {
    FakeConnection *f = (FakeConnection *)This;
    ULONG left = --f->refs;
    f->releases++;
    fake_releases_total++;
    if (left == 0 && f->on_task_heap) {
        /* Re-enters the task allocator from inside FreeConnections. */
        fake_self_frees++;
        CoTaskMemFree(f);
    }
    return left;
}

/* Not const: the Windows SDK's C vtable pointers are not const-qualified. */
static INapEnforcementClientConnectionVtbl fake_vtbl = {fake_query_interface, fake_add_ref, fake_release};

static inline void fake_init(FakeConnection *f, int on_task_heap) {
    memset(f, 0, sizeof *f);
    f->iface.lpVtbl = &fake_vtbl;
    f->refs = 1;
    f->on_task_heap = on_task_heap;
}

/* A fake on the task heap with one reference (the creator's). */
static inline FakeConnection *fake_new(void) {
    FakeConnection *f = (FakeConnection *)CoTaskMemAlloc(sizeof *f);
    CHECK(f != NULL);
    if (f != NULL) fake_init(f, 1);
    return f;
}

#endif /* NAPALLOC_TEST_NAP_COMMON_H */
