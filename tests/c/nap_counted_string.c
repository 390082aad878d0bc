/* nap_counted_string.c - AllocCountedString the way the Windows SDK NAP samples use it: their
 * FillCountedString helper copies the allocated structure into a CountedString the caller owns
 * and CoTaskMemFree's only the structure; the string buffer lives on in the copy and is freed
 * later, on its own (EmptyCountedString) or with the structure that embeds the copy
 * (FreeIsolationInfo, FreeNapComponentRegistrationInfoArray). */
#include "nap_common.h"

/* ---- the SDK sample's helpers ------------------------------------------------------------- */

static HRESULT FillCountedString(const WCHAR *src, CountedString *dest) {
    CountedString *temp = NULL;
    HRESULT hr = AllocCountedString(&temp, src);
    if (FAILED(hr)) return hr;
    *dest = *temp;       /* copy the structure: dest->string is the separate buffer */
    CoTaskMemFree(temp); /* free only the structure */
    return S_OK;
}

static void EmptyCountedString(CountedString *s) {
    CoTaskMemFree(s->string);
    s->string = NULL;
    s->length = 0;
}

/* ------------------------------------------------------------------------------------------ */

static void fill_and_empty(void) {
    WCHAR w[64];
    CountedString s;
    uint64_t live0 = live_blocks(), bad0 = bad_reports();
    CHECK_HR(FillCountedString(widen(w, "Contoso System Health Agent"), &s), S_OK);
    CHECK_EQ(s.length, 27);
    CHECK(wequals(s.string, s.length, "Contoso System Health Agent"));
    CHECK(s.string != w);
    CHECK_EQ(live_blocks(), live0 + 1); /* the buffer survived its structure */
    EmptyCountedString(&s);
    CHECK_EQ(live_blocks(), live0);
    CHECK_EQ(bad_reports(), bad0);
}

static void alloc_and_free(void) {
    WCHAR w[1100];
    CountedString *s = NULL;
    uint64_t live0 = live_blocks();
    int i;
    CHECK_HR(AllocCountedString(&s, widen(w, "")), S_OK);
    if (s != NULL) {
        CHECK_EQ(s->length, 0);
        CHECK(s->string != NULL && s->string[0] == 0);
        FreeCountedString(s);
    }
    for (i = 0; i < 1100; i++) w[i] = 'x';
    w[1024] = 0; /* 1024 units: the longest allowed */
    CHECK_HR(AllocCountedString(&s, w), S_OK);
    if (s != NULL) {
        CHECK_EQ(s->length, 1024);
        CHECK(s->string[1023] == 'x' && s->string[1024] == 0);
        FreeCountedString(s);
    }
    w[1024] = 'x';
    w[1025] = 0; /* 1025 units: too long */
    s = (CountedString *)(uintptr_t)0x10;
    CHECK_HR(AllocCountedString(&s, w), E_INVALIDARG);
    CHECK(s == NULL);
    s = (CountedString *)(uintptr_t)0x10;
    CHECK_HR(AllocCountedString(&s, NULL), E_INVALIDARG);
    CHECK(s == NULL);
    CHECK_HR(AllocCountedString(NULL, w), E_INVALIDARG);
    CHECK_EQ(live_blocks(), live0);
}

/* An IsolationInfo built by hand whose failureUrl was filled by FillCountedString. */
static void isolation_info_with_a_filled_url(void) {
    WCHAR w[64];
    uint64_t live0 = live_blocks();
    IsolationInfo *ii = (IsolationInfo *)task_block(sizeof(IsolationInfo), 0);
    IsolationInfoEx *iix = (IsolationInfoEx *)task_block(sizeof(IsolationInfoEx), 0);
    if (ii == NULL || iix == NULL) return;
    ii->isolationState = isolationStateInProbation;
    CHECK_HR(FillCountedString(widen(w, "http://remediation/"), &ii->failureUrl), S_OK);
    iix->isolationState = isolationStateRestrictedAccess;
    iix->extendedIsolationState = extendedIsolationStateInfected;
    CHECK_HR(FillCountedString(widen(w, "http://quarantine/"), &iix->failureUrl), S_OK);
    CHECK_EQ(live_blocks(), live0 + 4);
    FreeIsolationInfo(ii);
    FreeIsolationInfoEx(iix);
    CHECK_EQ(live_blocks(), live0);
}

/* What GetRegisteredSystemHealthAgents returns: ONE block of `count` entries whose strings were
 * filled by FillCountedString. */
static HRESULT get_registered_agents(UINT16 count, NapComponentRegistrationInfo **out) {
    WCHAR w[64];
    UINT16 i;
    NapComponentRegistrationInfo *info =
        (NapComponentRegistrationInfo *)task_block(count * sizeof(NapComponentRegistrationInfo), 0);
    if (info == NULL) return E_OUTOFMEMORY;
    for (i = 0; i < count; i++) {
        info[i].id = 0x13780u + i;
        FillCountedString(widen(w, "Friendly"), &info[i].friendlyName);
        FillCountedString(widen(w, "A health agent"), &info[i].description);
        FillCountedString(widen(w, "1.0"), &info[i].version);
        if (i != 1) FillCountedString(widen(w, "Contoso"), &info[i].vendorName); /* entry 1: NULL */
        info[i].componentType = ComponentTypeEnforcementClientSoH;
    }
    *out = info;
    return S_OK;
}

static void registration_info_array(void) {
    NapComponentRegistrationInfo *info = NULL;
    uint64_t live0 = live_blocks(), bad0 = bad_reports();
    CHECK_HR(get_registered_agents(3, &info), S_OK);
    CHECK_EQ(live_blocks(), live0 + 1 + 3 * 4 - 1);
    CHECK(wequals(info[2].description.string, info[2].description.length, "A health agent"));
    FreeNapComponentRegistrationInfoArray(3, &info);
    CHECK(info == NULL);
    FreeNapComponentRegistrationInfoArray(3, &info); /* *info NULL: nothing */
    FreeNapComponentRegistrationInfoArray(3, NULL);
    CHECK_EQ(live_blocks(), live0);
    CHECK_EQ(bad_reports(), bad0);
}

int main(void) {
    uint64_t live0 = live_blocks();
    fill_and_empty();
    alloc_and_free();
    isolation_info_with_a_filled_url();
    registration_info_array();
    CHECK_EQ(live_blocks(), live0);
    return CHECK_DONE();
}
