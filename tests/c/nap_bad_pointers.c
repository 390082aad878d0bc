/* nap_bad_pointers.c - every Free* handed a top-level pointer the task allocator did not hand
 * out: foreign (stack, static, malloc), interior (inside a live block, inside a live NAP
 * structure) or already freed. Each call must read nothing through it, free nothing, and be
 * reported (NapallocStats::bad_pointer_reports); the live blocks around must be untouched. */
#include "nap_common.h"

#include <stdlib.h>

#define N_FREE 12 /* Free* calls per pointer in free_everything() */

/* Every Free* on `p`; checks that FreeNapComponentRegistrationInfoArray leaves *info alone. */
static void free_everything(void *p) {
    NapComponentRegistrationInfo *info = (NapComponentRegistrationInfo *)p;
    FreeConnections((Connections *)p);
    FreeCountedString((CountedString *)p);
    FreeFixupInfo((FixupInfo *)p);
    FreeIsolationInfo((IsolationInfo *)p);
    FreeIsolationInfoEx((IsolationInfoEx *)p);
    FreeSoH((SoH *)p);
    FreeNetworkSoH((NetworkSoH *)p);
    FreePrivateData((PrivateData *)p);
    FreeSoHAttributeValue((SoHAttributeType)13, (SoHAttributeValue *)p); /* codesVal: a pointer */
    FreeSoHAttributeValue((SoHAttributeType)2, (SoHAttributeValue *)p);  /* idVal: none */
    FreeNapComponentRegistrationInfoArray(2, &info);
    CHECK(info == (NapComponentRegistrationInfo *)p);
    FreeSystemHealthAgentState((SystemHealthAgentState *)p);
}

static unsigned char static_buffer[256];

static int all_bytes(const void *p, size_t n, unsigned char b) {
    const unsigned char *c = (const unsigned char *)p;
    size_t i;
    for (i = 0; i < n; i++) {
        if (c[i] != b) return 0;
    }
    return 1;
}

int main(void) {
    uint64_t live0 = live_blocks();
    unsigned char on_stack[256];
    unsigned char *from_malloc = (unsigned char *)malloc(256);
    unsigned char *keep = (unsigned char *)task_block(256, 0xA5);
    Connections *conn = NULL;
    FakeConnection fake;
    unsigned char *freed = (unsigned char *)task_block(64, 0);
    void *after = task_block(64, 0); /* so that the freed block's place is not handed out again */
    void *cases[6];
    const char *names[6] = {"stack", "static", "malloc", "interior", "interior of a structure", "freed"};
    uint64_t live1, bad1;
    size_t k;

    fake_init(&fake, 0);
    CHECK(from_malloc != NULL && keep != NULL && freed != NULL && after != NULL);
    if (from_malloc == NULL || keep == NULL || freed == NULL || after == NULL) return CHECK_DONE();
    memset(on_stack, 0x11, sizeof on_stack);
    memset(static_buffer, 0x22, sizeof static_buffer);
    memset(from_malloc, 0x33, 256);
    CHECK_HR(AllocConnections(&conn, 2), S_OK);
    if (conn == NULL) return CHECK_DONE();
    fake.refs++;
    conn->connections[1] = &fake.iface;
    CoTaskMemFree(freed);

    cases[0] = on_stack;
    cases[1] = static_buffer;
    cases[2] = from_malloc;
    cases[3] = keep + 32;
    cases[4] = (unsigned char *)conn + 8;
    cases[5] = freed;

    live1 = live_blocks();
    bad1 = bad_reports();
    for (k = 0; k < 6; k++) {
        uint64_t bad = bad_reports();
        free_everything(cases[k]);
        CHECK_EQ(bad_reports() - bad, N_FREE);
        CHECK_EQ(live_blocks(), live1);
        if (bad_reports() - bad != N_FREE || live_blocks() != live1) fprintf(stderr, "  (%s)\n", names[k]);
    }
    CHECK_EQ(bad_reports() - bad1, 6 * N_FREE);

    /* Nothing around was touched. */
    CHECK(all_bytes(on_stack, sizeof on_stack, 0x11));
    CHECK(all_bytes(static_buffer, sizeof static_buffer, 0x22));
    CHECK(all_bytes(from_malloc, 256, 0x33));
    CHECK(all_bytes(keep, 256, 0xA5));
    CHECK_EQ(fake.releases, 0);
    CHECK(conn->count == 2 && conn->connections[1] == &fake.iface);

    /* The real structure still frees normally afterwards. */
    FreeConnections(conn);
    CHECK_EQ(fake.releases, 1);
    CoTaskMemFree(keep);
    CoTaskMemFree(after);
    free(from_malloc);

    /* NULL: no effect, no report. */
    bad1 = bad_reports();
    free_everything(NULL);
    FreeNapComponentRegistrationInfoArray(1, NULL);
    CHECK_EQ(bad_reports(), bad1);

    CHECK_EQ(live_blocks(), live0);
    return CHECK_DONE();
}
