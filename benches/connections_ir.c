/* connections_ir.c - instructions per iteration of
 *     AllocConnections(&c, 8); fill the 8 slots with AddRef'd objects; FreeConnections(c)
 * (FreeConnections Releases the 8 objects) against the same done with glibc:
 *     malloc the structure, calloc the slot array, fill, Release each slot, free both.
 * Run each variant under callgrind twice, with N and with 0 iterations:
 *     per iteration = (Ir(N) - Ir(0)) / N
 * (the first iteration runs in both runs, so start-up and the first use of each heap cancel out).
 * `common` does only the work every variant shares (8 AddRef + 8 Release through the vtable,
 * a structure and an array on the stack), so a variant's allocator share is its figure minus
 * `common`'s. `cargo bench --bench connections_ir` builds this file and runs the comparison.
 *
 *     connections_ir napalloc|glibc|common N */
#include "napalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 8

typedef struct Fake {
    INapEnforcementClientConnection iface;
    ULONG refs;
} Fake;

static ULONG STDMETHODCALLTYPE fake_add_ref(INapEnforcementClientConnection *This) { return ++((Fake *)This)->refs; }
static ULONG STDMETHODCALLTYPE fake_release(INapEnforcementClientConnection *This) { return --((Fake *)This)->refs; }
static HRESULT STDMETHODCALLTYPE fake_qi(INapEnforcementClientConnection *This, REFIID riid, void **ppv) {
    (void)This;
    (void)riid;
    *ppv = NULL;
    return E_NOINTERFACE;
}
/* Not const, and the objects are set up at run time: the compiler cannot see through the calls. */
static INapEnforcementClientConnectionVtbl vtbl = {fake_qi, fake_add_ref, fake_release};
static Fake fakes[SLOTS];
static INapEnforcementClientConnection *objs[SLOTS];

__attribute__((noinline)) static void napalloc_iteration(void) {
    Connections *c = NULL;
    int i;
    if (AllocConnections(&c, SLOTS) != S_OK) abort();
    for (i = 0; i < SLOTS; i++) {
        objs[i]->lpVtbl->AddRef(objs[i]);
        c->connections[i] = objs[i];
    }
    FreeConnections(c);
}

__attribute__((noinline)) static void glibc_iteration(void) {
    Connections *c = (Connections *)malloc(sizeof *c);
    UINT16 i;
    if (c == NULL) abort();
    c->count = SLOTS;
    c->connections = (INapEnforcementClientConnection **)calloc(SLOTS, sizeof *c->connections);
    if (c->connections == NULL) abort();
    for (i = 0; i < SLOTS; i++) {
        objs[i]->lpVtbl->AddRef(objs[i]);
        c->connections[i] = objs[i];
    }
    for (i = 0; i < c->count; i++) {
        if (c->connections[i] != NULL) c->connections[i]->lpVtbl->Release(c->connections[i]);
    }
    free(c->connections);
    free(c);
}

__attribute__((noinline)) static void common_iteration(void) {
    INapEnforcementClientConnection *slots[SLOTS];
    Connections cs, *volatile cv = &cs;
    Connections *c = cv;
    UINT16 i;
    c->count = SLOTS;
    c->connections = slots;
    for (i = 0; i < SLOTS; i++) {
        objs[i]->lpVtbl->AddRef(objs[i]);
        c->connections[i] = objs[i];
    }
    for (i = 0; i < c->count; i++) {
        if (c->connections[i] != NULL) c->connections[i]->lpVtbl->Release(c->connections[i]);
    }
}

int main(int argc, char **argv) {
    void (*f)(void);
    long n, k;
    int i;
    if (argc != 3) {
        fprintf(stderr, "usage: %s napalloc|glibc|common N\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "napalloc") == 0) f = napalloc_iteration;
    else if (strcmp(argv[1], "glibc") == 0) f = glibc_iteration;
    else if (strcmp(argv[1], "common") == 0) f = common_iteration;
    else return 2;
    n = atol(argv[2]);
    for (i = 0; i < SLOTS; i++) {
        fakes[i].iface.lpVtbl = &vtbl;
        fakes[i].refs = 1;
        objs[i] = &fakes[i].iface;
    }
    f(); /* warm-up: first use of the heap */
    for (k = 0; k < n; k++) f();
    for (i = 0; i < SLOTS; i++) {
        if (fakes[i].refs != 1) {
            fprintf(stderr, "object %d: %lu references\n", i, (unsigned long)fakes[i].refs);
            return 1;
        }
    }
    return 0;
}
