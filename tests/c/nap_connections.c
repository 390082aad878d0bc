/* nap_connections.c - AllocConnections / FreeConnections as an enforcement client and its
 * consumer use them: the client hands out a Connections whose slots hold AddRef'd connection
 * objects; the consumer frees it with FreeConnections, which Releases every non-NULL slot once.
 * The task heap's live-block count must come back to where it started. */
#include "nap_common.h"

#include <stdlib.h>

#define N_CONN 6

/* ---- the enforcement client ---------------------------------------------------------------- */

typedef struct EnforcementClient {
    FakeConnection *conns[N_CONN]; /* the client's own references */
} EnforcementClient;

/* Hands out the client's connections: slot i holds a new reference to conns[i], or NULL where
 * the connection is gone (every third). The caller owns the result and its references. */
static HRESULT client_get_connections(EnforcementClient *ec, Connections **out) {
    Connections *c = NULL;
    UINT16 i;
    HRESULT hr = AllocConnections(&c, N_CONN);
    if (FAILED(hr)) return hr;
    for (i = 0; i < c->count; i++) {
        if (i % 3 == 2) continue;
        ec->conns[i]->iface.lpVtbl->AddRef(&ec->conns[i]->iface);
        c->connections[i] = &ec->conns[i]->iface;
    }
    *out = c;
    return S_OK;
}

static void enforcement_client_and_consumer(void) {
    EnforcementClient ec;
    Connections *c = NULL;
    uint64_t live0 = live_blocks(), bad0 = bad_reports();
    ULONG releases0 = fake_releases_total, frees0 = fake_self_frees;
    int i;
    for (i = 0; i < N_CONN; i++) ec.conns[i] = fake_new();

    CHECK_HR(client_get_connections(&ec, &c), S_OK);
    CHECK(c != NULL);
    if (c == NULL) return;
    CHECK_EQ(c->count, N_CONN);
    CHECK_EQ(live_blocks(), live0 + N_CONN + 2); /* the objects, the struct, the slot array */
    for (i = 0; i < N_CONN; i++) CHECK_EQ(ec.conns[i]->refs, i % 3 == 2 ? 1 : 2);

    /* The consumer looks at the connections, then frees the structure. */
    CHECK(c->connections[0] == &ec.conns[0]->iface);
    CHECK(c->connections[2] == NULL);
    FreeConnections(c);
    for (i = 0; i < N_CONN; i++) {
        CHECK_EQ(ec.conns[i]->refs, 1);
        CHECK_EQ(ec.conns[i]->releases, i % 3 == 2 ? 0 : 1);
    }
    CHECK_EQ(live_blocks(), live0 + N_CONN);

    /* The client goes away: its last references free the objects. */
    for (i = 0; i < N_CONN; i++) ec.conns[i]->iface.lpVtbl->Release(&ec.conns[i]->iface);
    CHECK_EQ(fake_self_frees - frees0, N_CONN);
    CHECK_EQ(fake_releases_total - releases0, 4 + N_CONN);
    CHECK_EQ(live_blocks(), live0);
    CHECK_EQ(bad_reports(), bad0);
}

/* The slots hold the only references: FreeConnections' Release calls free the objects, from
 * inside FreeConnections (re-entering the task allocator). */
static void release_frees_objects_from_inside_free_connections(void) {
    Connections *c = NULL;
    uint64_t live0 = live_blocks();
    ULONG frees0 = fake_self_frees;
    UINT16 i;
    CHECK_HR(AllocConnections(&c, 20), S_OK);
    if (c == NULL) return;
    for (i = 0; i < c->count; i++) c->connections[i] = &fake_new()->iface; /* reference handed over */
    CHECK_EQ(live_blocks(), live0 + 22);
    FreeConnections(c);
    CHECK_EQ(fake_self_frees - frees0, 20);
    CHECK_EQ(live_blocks(), live0);
}

/* Stack objects, a hand-built structure (separate CoTaskMemAlloc blocks), NULL slots. */
static void hand_built_connections(void) {
    FakeConnection a, b;
    Connections *c;
    uint64_t live0 = live_blocks(), bad0 = bad_reports();
    fake_init(&a, 0);
    fake_init(&b, 0);
    c = (Connections *)task_block(sizeof *c, 0);
    if (c == NULL) return;
    c->count = 4;
    c->connections = (INapEnforcementClientConnection **)task_block(4 * sizeof *c->connections, 0);
    if (c->connections == NULL) return;
    a.refs++;
    c->connections[1] = &a.iface;
    b.refs++;
    c->connections[3] = &b.iface;
    FreeConnections(c);
    CHECK_EQ(a.refs, 1);
    CHECK_EQ(a.releases, 1);
    CHECK_EQ(b.releases, 1);
    CHECK_EQ(live_blocks(), live0);
    CHECK_EQ(bad_reports(), bad0);

    /* A count beyond the slot block: only the slots the block holds are read (reported). */
    c = (Connections *)task_block(sizeof *c, 0);
    if (c == NULL) return;
    c->count = 20;
    c->connections = (INapEnforcementClientConnection **)task_block(2 * sizeof *c->connections, 0);
    if (c->connections == NULL) return;
    c->connections[0] = &a.iface;
    a.refs++;
    c->connections[1] = &b.iface;
    b.refs++;
    FreeConnections(c);
    CHECK_EQ(a.releases, 2);
    CHECK_EQ(b.releases, 2);
    CHECK_EQ(live_blocks(), live0);
    CHECK_EQ(bad_reports(), bad0 + 1);
}

static void alloc_connections_arguments(void) {
    Connections *c = (Connections *)(uintptr_t)0x10;
    uint64_t live0 = live_blocks();
    CHECK_HR(AllocConnections(&c, 0), S_OK);
    CHECK(c != NULL);
    if (c != NULL) {
        CHECK_EQ(c->count, 0);
        CHECK(c->connections == NULL);
        FreeConnections(c);
    }
    c = (Connections *)(uintptr_t)0x10;
    CHECK_HR(AllocConnections(&c, 21), E_INVALIDARG);
    CHECK(c == NULL);
    c = (Connections *)(uintptr_t)0x10;
    CHECK_HR(AllocConnections(&c, 0xFFFF), E_INVALIDARG);
    CHECK(c == NULL);
    CHECK_HR(AllocConnections(NULL, 1), E_INVALIDARG);
    CHECK_HR(AllocConnections(&c, 20), S_OK);
    if (c != NULL) {
        UINT16 i;
        int zero = 1;
        for (i = 0; i < 20; i++) zero &= c->connections[i] == NULL;
        CHECK(zero);
        FreeConnections(c);
    }
    FreeConnections(NULL);
    CHECK_EQ(live_blocks(), live0);
}

int main(void) {
    uint64_t live0 = live_blocks();
    enforcement_client_and_consumer();
    release_frees_objects_from_inside_free_connections();
    hand_built_connections();
    alloc_connections_arguments();
    CHECK_EQ(live_blocks(), live0);
    return CHECK_DONE();
}
