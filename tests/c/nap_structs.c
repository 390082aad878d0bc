/* nap_structs.c - AllocFixupInfo and the Free* functions of the NAP structures that embed
 * pointers: FreeFixupInfo, FreeSoH (a hand-built SoH of 10 attributes, every block from
 * CoTaskMemAlloc), FreeSoHAttributeValue for every attribute type, FreeSystemHealthAgentState,
 * FreeNetworkSoH, FreePrivateData. Every Free* frees all embedded pointers: the task heap's
 * live-block count comes back to where it started, and nothing is reported as a bad pointer. */
#include "nap_common.h"

static void fixup_info(void) {
    FixupInfo *f = NULL;
    uint64_t live0 = live_blocks();
    UINT16 i;
    int zero = 1;
    CHECK_HR(AllocFixupInfo(&f, 3), S_OK);
    if (f == NULL) return;
    CHECK_EQ(f->state, 0);
    CHECK_EQ(f->percentage, 0);
    CHECK_EQ(f->fixupMsgId, 0);
    CHECK_EQ(f->resultCodes.count, 3);
    CHECK(f->resultCodes.results != NULL);
    for (i = 0; i < 3; i++) zero &= f->resultCodes.results[i] == 0;
    CHECK(zero);
    CHECK_EQ(live_blocks(), live0 + 2);
    /* A system health agent reports its progress. */
    f->state = fixupStateInProgress;
    f->percentage = 40;
    f->fixupMsgId = 0x2001;
    f->resultCodes.results[0] = S_OK;
    f->resultCodes.results[1] = E_FAIL;
    f->resultCodes.results[2] = (HRESULT)0xC0FF0001u;
    CHECK_EQ(f->resultCodes.results[1], E_FAIL);
    FreeFixupInfo(f);
    CHECK_EQ(live_blocks(), live0);

    CHECK_HR(AllocFixupInfo(&f, 0), S_OK);
    if (f != NULL) {
        CHECK(f->resultCodes.results == NULL);
        CHECK_EQ(f->resultCodes.count, 0);
        FreeFixupInfo(f);
    }
    CHECK_HR(AllocFixupInfo(&f, 1000), S_OK);
    if (f != NULL) FreeFixupInfo(f);
    f = (FixupInfo *)(uintptr_t)0x10;
    CHECK_HR(AllocFixupInfo(&f, 1001), E_INVALIDARG);
    CHECK(f == NULL);
    CHECK_HR(AllocFixupInfo(NULL, 1), E_INVALIDARG);
    CHECK_EQ(live_blocks(), live0);
}

static void hand_built_soh_of_ten_attributes(void) {
    uint64_t live0 = live_blocks(), bad0 = bad_reports();
    SoH *soh = (SoH *)task_block(sizeof(SoH), 0);
    UINT16 i;
    if (soh == NULL) return;
    soh->count = 10;
    soh->attributes = (SoHAttribute *)task_block(10 * sizeof(SoHAttribute), 0);
    if (soh->attributes == NULL) return;
    for (i = 0; i < 10; i++) {
        SoHAttribute *a = &soh->attributes[i];
        a->type = (UINT16)(i + 2);
        a->size = (UINT16)(4 * (i + 1));
        a->value = i == 6 ? NULL : (BYTE *)task_block(a->size, 0x30 + i); /* attribute 6: NULL */
        if (i == 6) a->size = 0;
    }
    CHECK_EQ(live_blocks(), live0 + 2 + 9);
    FreeSoH(soh);
    CHECK_EQ(live_blocks(), live0);
    CHECK_EQ(bad_reports(), bad0);

    /* No attributes at all. */
    soh = (SoH *)task_block(sizeof(SoH), 0);
    FreeSoH(soh);
    FreeSoH(NULL);
    CHECK_EQ(live_blocks(), live0);
}

/* FreeSoHAttributeValue(type, value) for every SoHAttributeType and some it does not name.
 * Every value block has a pointer to a live "sentinel" block at offset 8: a type whose member has
 * a pointer there must free it; a type without one must not even read it. */
static void soh_attribute_values_of_every_type(void) {
    static const int types[] = {2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 0, 1, 17, 255};
    size_t k;
    uint64_t live0 = live_blocks(), bad0 = bad_reports();
    for (k = 0; k < sizeof types / sizeof types[0]; k++) {
        int t = types[k];
        int has_pointer = !(t == 2 || t == 5 || t == 8 || t == 12 || t == 14 || t == 16);
        SoHAttributeValue *v = (SoHAttributeValue *)task_block(sizeof(SoHAttributeValue), 0);
        void *sentinel = task_block(40, 0x5A);
        if (v == NULL || sentinel == NULL) return;
        switch (t) {
        case 2: v->idVal = 0x13780; break;
        case 3: v->v4AddressesVal.count = 2; v->v4AddressesVal.addresses = (Ipv4Address *)sentinel; break;
        case 15: v->v6AddressesVal.count = 2; v->v6AddressesVal.addresses = (Ipv6Address *)sentinel; break;
        case 4:
        case 13: v->codesVal.count = 10; v->codesVal.results = (HRESULT *)sentinel; break;
        case 7:
            v->vendorSpecificVal.vendorId = 311;
            v->vendorSpecificVal.size = 40;
            v->vendorSpecificVal.vendorSpecificData = (BYTE *)sentinel;
            break;
        default: v->octetStringVal.size = 40; v->octetStringVal.data = (BYTE *)sentinel; break;
        }
        if (!has_pointer) {
            /* The member in use has no pointer; offset 8 still holds one, which must stay alive. */
            void **slot = (void **)((unsigned char *)v + 8);
            *slot = sentinel;
            if (t == 5 || t == 12) v->dateTimeVal.dwLowDateTime = 1;
            if (t == 8 || t == 14 || t == 16) v->uint8Val = 1;
        }
        FreeSoHAttributeValue((SoHAttributeType)t, v);
        if (has_pointer) {
            CHECK_EQ(live_blocks(), live0);
        } else {
            CHECK_EQ(live_blocks(), live0 + 1); /* the sentinel */
            CHECK(((unsigned char *)sentinel)[39] == 0x5A);
            CoTaskMemFree(sentinel);
        }
        if (live_blocks() != live0) fprintf(stderr, "  (attribute type %d)\n", t);
    }
    /* A value whose pointer member is NULL; a NULL value. */
    {
        SoHAttributeValue *v = (SoHAttributeValue *)task_block(sizeof(SoHAttributeValue), 0);
        FreeSoHAttributeValue((SoHAttributeType)9, v);
        FreeSoHAttributeValue((SoHAttributeType)7, NULL);
    }
    CHECK_EQ(live_blocks(), live0);
    CHECK_EQ(bad_reports(), bad0);
}

static void system_health_agent_state(void) {
    uint64_t live0 = live_blocks(), bad0 = bad_reports();
    SystemHealthAgentState *s = (SystemHealthAgentState *)task_block(sizeof *s, 0);
    FixupInfo *f = NULL;
    if (s == NULL) return;
    s->id = 0x13780;
    s->shaResultCodes.count = 2;
    s->shaResultCodes.results = (HRESULT *)task_block(2 * sizeof(HRESULT), 0);
    s->failureCategory = failureCategoryClientComponent;
    /* The fixup part comes from AllocFixupInfo, copied in; its structure freed alone. */
    CHECK_HR(AllocFixupInfo(&f, 4), S_OK);
    if (f == NULL) return;
    f->percentage = percentageNotSupported;
    s->fixupInfo = *f;
    CoTaskMemFree(f);
    CHECK_EQ(live_blocks(), live0 + 3);
    FreeSystemHealthAgentState(s);
    CHECK_EQ(live_blocks(), live0);

    /* NULL arrays. */
    s = (SystemHealthAgentState *)task_block(sizeof *s, 0);
    FreeSystemHealthAgentState(s);
    CHECK_EQ(live_blocks(), live0);
    CHECK_EQ(bad_reports(), bad0);
}

static void network_soh_and_private_data(void) {
    uint64_t live0 = live_blocks(), bad0 = bad_reports();
    NetworkSoH *n = (NetworkSoH *)task_block(sizeof *n, 0);
    PrivateData *p = (PrivateData *)task_block(sizeof *p, 0);
    if (n == NULL || p == NULL) return;
    n->size = maxNetworkSoHSize;
    n->data = (BYTE *)task_block(maxNetworkSoHSize, 1);
    p->size = maxPrivateDataSize;
    p->data = (BYTE *)task_block(maxPrivateDataSize, 2);
    CHECK_EQ(live_blocks(), live0 + 4);
    FreeNetworkSoH(n);
    FreePrivateData(p);
    FreeNetworkSoH(NULL);
    FreePrivateData(NULL);
    CHECK_EQ(live_blocks(), live0);
    CHECK_EQ(bad_reports(), bad0);
}

int main(void) {
    uint64_t live0 = live_blocks();
    fixup_info();
    hand_built_soh_of_ten_attributes();
    soh_attribute_values_of_every_type();
    system_health_agent_state();
    network_soh_and_private_data();
    CHECK_EQ(live_blocks(), live0);
    return CHECK_DONE();
}
