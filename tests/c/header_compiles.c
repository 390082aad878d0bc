/* header_compiles.c - napalloc.h as a C11 client sees it.
 *
 * Compile-time: every prototype has exactly the type SPEC gives it (checked with _Generic, whose
 * operand is not evaluated, so nothing here needs the functions to exist at link time).
 * Run-time: sizes, offsets, values of the constants and enumerators, the signedness and width of
 * the base types, and that the COM vtables can be implemented and called from C. */
#include "napalloc.h"
#include "napalloc.h" /* the include guard works */

#include "check.h"

#include <stddef.h>
#include <string.h>

/* ---- prototypes ------------------------------------------------------------------------- */

#define HAS_TYPE(expr, T) _Generic((expr), T: 1, default: 0)
#define CHECK_PROTO(fn, T) NAPALLOC_STATIC_ASSERT(HAS_TYPE(&fn, T), #fn " has the wrong type")

CHECK_PROTO(CoTaskMemAlloc, void *(NAPALLOC_CALL *)(SIZE_T));
CHECK_PROTO(CoTaskMemRealloc, void *(NAPALLOC_CALL *)(void *, SIZE_T));
CHECK_PROTO(CoTaskMemFree, void (NAPALLOC_CALL *)(void *));
CHECK_PROTO(CoGetMalloc, HRESULT (NAPALLOC_CALL *)(DWORD, IMalloc **));

CHECK_PROTO(AllocConnections, HRESULT (NAPALLOC_CALL *)(Connections **, UINT16));
CHECK_PROTO(AllocCountedString, HRESULT (NAPALLOC_CALL *)(CountedString **, const WCHAR *));
CHECK_PROTO(AllocFixupInfo, HRESULT (NAPALLOC_CALL *)(FixupInfo **, UINT16));
CHECK_PROTO(FreeConnections, void (NAPALLOC_CALL *)(Connections *));
CHECK_PROTO(FreeCountedString, void (NAPALLOC_CALL *)(CountedString *));
CHECK_PROTO(FreeFixupInfo, void (NAPALLOC_CALL *)(FixupInfo *));
CHECK_PROTO(FreeIsolationInfo, void (NAPALLOC_CALL *)(IsolationInfo *));
CHECK_PROTO(FreeIsolationInfoEx, void (NAPALLOC_CALL *)(IsolationInfoEx *));
CHECK_PROTO(FreeSoH, void (NAPALLOC_CALL *)(SoH *));
CHECK_PROTO(FreeNetworkSoH, void (NAPALLOC_CALL *)(NetworkSoH *));
CHECK_PROTO(FreePrivateData, void (NAPALLOC_CALL *)(PrivateData *));
CHECK_PROTO(FreeSoHAttributeValue, void (NAPALLOC_CALL *)(SoHAttributeType, SoHAttributeValue *));
CHECK_PROTO(FreeNapComponentRegistrationInfoArray,
            void (NAPALLOC_CALL *)(UINT16, NapComponentRegistrationInfo **));
CHECK_PROTO(FreeSystemHealthAgentState, void (NAPALLOC_CALL *)(SystemHealthAgentState *));

CHECK_PROTO(NapallocSetHostMemoryManager, HRESULT (NAPALLOC_CALL *)(IHostMemoryManager *));
CHECK_PROTO(NapallocResetHostFailure, HRESULT (NAPALLOC_CALL *)(void));
CHECK_PROTO(NapallocGetLastHostError, HRESULT (NAPALLOC_CALL *)(void));
CHECK_PROTO(NapallocAllocCritical, void *(NAPALLOC_CALL *)(SIZE_T, EMemoryCriticalLevel));
CHECK_PROTO(NapallocSetBudget, HRESULT (NAPALLOC_CALL *)(SIZE_T, SIZE_T));
CHECK_PROTO(NapallocGetStats, HRESULT (NAPALLOC_CALL *)(NapallocStats *));
CHECK_PROTO(NapallocHeapMinimize, HRESULT (NAPALLOC_CALL *)(void));
CHECK_PROTO(NapallocFlushRemoteFrees, HRESULT (NAPALLOC_CALL *)(void));
CHECK_PROTO(NapallocScopeEnter, HRESULT (NAPALLOC_CALL *)(NapallocScope **));
CHECK_PROTO(NapallocScopeLeave, HRESULT (NAPALLOC_CALL *)(NapallocScope *));

/* The base types are the fixed-width types SPEC §1 names, not merely the same size. (With the
 * Windows SDK they are its own types: HRESULT is `long`, WCHAR is `wchar_t`, of the same sizes.) */
#if !NAPALLOC_WINDOWS_SDK
NAPALLOC_STATIC_ASSERT(HAS_TYPE((HRESULT)0, int32_t), "HRESULT is int32_t");
NAPALLOC_STATIC_ASSERT(HAS_TYPE((ULONG)0, uint32_t), "ULONG is uint32_t");
NAPALLOC_STATIC_ASSERT(HAS_TYPE((DWORD)0, uint32_t), "DWORD is uint32_t");
NAPALLOC_STATIC_ASSERT(HAS_TYPE((WCHAR)0, uint16_t), "WCHAR is uint16_t");
NAPALLOC_STATIC_ASSERT(HAS_TYPE((SIZE_T)0, size_t), "SIZE_T is size_t");
NAPALLOC_STATIC_ASSERT(HAS_TYPE((BOOL)0, int32_t), "BOOL is int32_t");
NAPALLOC_STATIC_ASSERT(HAS_TYPE((BYTE)0, uint8_t), "BYTE is uint8_t");
NAPALLOC_STATIC_ASSERT(HAS_TYPE((UINT16)0, uint16_t), "UINT16 is uint16_t");
#endif

/* ---- a COM object implemented in C: a fake IMalloc over a static buffer ------------------ */

typedef struct FakeMalloc {
    IMalloc iface; /* first: an IMalloc* is a FakeMalloc* */
    ULONG refs;
    unsigned char arena[256];
    size_t used;
} FakeMalloc;

static HRESULT STDMETHODCALLTYPE fm_query_interface(IMalloc *This, REFIID riid, void **ppv) {
    static const IID iid_malloc = NAPALLOC_IID_IMALLOC;
    if (memcmp(riid, &iid_malloc, sizeof(IID)) == 0) {
        *ppv = This;
        This->lpVtbl->AddRef(This);
        return S_OK;
    }
    *ppv = NULL;
    return E_NOINTERFACE;
}
static ULONG STDMETHODCALLTYPE fm_add_ref(IMalloc *This) { return ++((FakeMalloc *)This)->refs; }
static ULONG STDMETHODCALLTYPE fm_release(IMalloc *This) { return --((FakeMalloc *)This)->refs; }
static void *STDMETHODCALLTYPE fm_alloc(IMalloc *This, SIZE_T cb) {
    FakeMalloc *m = (FakeMalloc *)This;
    void *p;
    if (cb > sizeof m->arena - m->used) return NULL;
    p = m->arena + m->used;
    m->used += cb;
    return p;
}
static void *STDMETHODCALLTYPE fm_realloc(IMalloc *This, void *pv, SIZE_T cb) {
    (void)This; (void)pv; (void)cb;
    return NULL;
}
static void STDMETHODCALLTYPE fm_free(IMalloc *This, void *pv) { (void)This; (void)pv; }
static SIZE_T STDMETHODCALLTYPE fm_get_size(IMalloc *This, void *pv) {
    (void)This;
    return pv == NULL ? (SIZE_T)-1 : 0;
}
static int STDMETHODCALLTYPE fm_did_alloc(IMalloc *This, void *pv) {
    FakeMalloc *m = (FakeMalloc *)This;
    if (pv == NULL) return -1;
    return (unsigned char *)pv >= m->arena && (unsigned char *)pv < m->arena + sizeof m->arena;
}
static void STDMETHODCALLTYPE fm_heap_minimize(IMalloc *This) { ((FakeMalloc *)This)->used = 0; }

/* Not const: the Windows SDK's C vtable pointers are not const-qualified. */
static IMallocVtbl fake_malloc_vtbl = {
    fm_query_interface, fm_add_ref, fm_release, fm_alloc, fm_realloc,
    fm_free,            fm_get_size, fm_did_alloc, fm_heap_minimize,
};

/* ---- a host memory manager implemented in C (designated initialisers name every method) -- */

static DWORD host_last_type;
static unsigned char host_pages[4096];

static HRESULT STDMETHODCALLTYPE hm_query_interface(IHostMemoryManager *This, REFIID riid, void **ppv) {
    (void)This; (void)riid;
    *ppv = NULL;
    return E_NOINTERFACE;
}
static ULONG STDMETHODCALLTYPE hm_ref(IHostMemoryManager *This) { (void)This; return 1; }
static HRESULT STDMETHODCALLTYPE hm_virtual_alloc(IHostMemoryManager *This, void *addr, SIZE_T size,
                                                  DWORD type, DWORD protect,
                                                  EMemoryCriticalLevel level, void **mem) {
    (void)This; (void)addr; (void)protect;
    host_last_type = type;
    if (size > sizeof host_pages || level > eProcessCritical) {
        *mem = NULL;
        return E_OUTOFMEMORY;
    }
    *mem = host_pages;
    return S_OK;
}
static HRESULT STDMETHODCALLTYPE hm_virtual_free(IHostMemoryManager *This, LPVOID addr, SIZE_T size,
                                                 DWORD type) {
    (void)This; (void)size; (void)type;
    return addr == (LPVOID)host_pages ? S_OK : HOST_E_INVALIDOPERATION;
}
static HRESULT STDMETHODCALLTYPE hm_get_memory_load(IHostMemoryManager *This, DWORD *load,
                                                    SIZE_T *avail) {
    (void)This;
    *load = 42;
    *avail = sizeof host_pages;
    return S_OK;
}

static IHostMemoryManagerVtbl host_vtbl = {
    .QueryInterface = hm_query_interface,
    .AddRef = hm_ref,
    .Release = hm_ref,
    .CreateMalloc = NULL,
    .VirtualAlloc = hm_virtual_alloc,
    .VirtualFree = hm_virtual_free,
    .VirtualQuery = NULL,
    .VirtualProtect = NULL,
    .GetMemoryLoad = hm_get_memory_load,
    .RegisterMemoryNotificationCallback = NULL,
    .NeedsVirtualAddressSpace = NULL,
    .AcquiredVirtualAddressSpace = NULL,
    .ReleasedVirtualAddressSpace = NULL,
};

int main(void) {
    /* base types */
    CHECK_EQ(sizeof(HRESULT), 4);
    CHECK((HRESULT)-1 < 0);
    CHECK((DWORD)-1 > 0);
    CHECK_EQ((WCHAR)-1, 0xFFFF);
    CHECK_EQ(sizeof(GUID), 16);
    CHECK_EQ(sizeof(FILETIME), 8);
    CHECK_EQ(offsetof(FILETIME, dwHighDateTime), 4);

    /* HRESULTs (SPEC §2) */
    CHECK_HR(S_OK, 0x00000000u);
    CHECK_HR(S_FALSE, 0x00000001u);
    CHECK_HR(E_INVALIDARG, 0x80070057u);
    CHECK_HR(E_OUTOFMEMORY, 0x8007000Eu);
    CHECK_HR(E_FAIL, 0x80004005u);
    CHECK_HR(E_POINTER, 0x80004003u);
    CHECK_HR(E_NOINTERFACE, 0x80004002u);
    CHECK_HR(HOST_E_INVALIDOPERATION, 0x80131022u);
    CHECK_HR(HOST_E_CLRNOTAVAILABLE, 0x80131023u);
    CHECK_HR(HOST_E_TIMEOUT, 0x80131024u);
    CHECK_HR(HOST_E_NOT_OWNER, 0x80131025u);
    CHECK_HR(HOST_E_ABANDONED, 0x80131026u);
    CHECK(FAILED(E_OUTOFMEMORY) && !SUCCEEDED(E_FAIL));
    CHECK(SUCCEEDED(S_FALSE) && !FAILED(S_OK));

    /* NAP constants and enumerators */
    CHECK_EQ(maxConnectionCountPerEnforcer, 20);
    CHECK_EQ(maxStringLength, 1024);
    CHECK_EQ(maxSoHAttributeCount, 100);
    CHECK_EQ(maxSoHAttributeSize, 4000);
    CHECK_EQ(minNetworkSoHSize, 12);
    CHECK_EQ(maxNetworkSoHSize, 4000);
    CHECK_EQ(maxPrivateDataSize, 200);
    CHECK_EQ(maxDwordCountPerSoHAttribute, 1000);
    CHECK_EQ(percentageNotSupported, 101);
    CHECK_EQ(maxSystemHealthEntityCount, 20);
    CHECK_EQ(maxEnforcerCount, 20);
    CHECK_EQ(sohAttributeTypeSystemHealthId, 2);
    CHECK_EQ(sohAttributeTypeVendorSpecific, 7);
    CHECK_EQ(sohAttributeTypeIpv6FixupServers, 15);
    CHECK_EQ(sohAttributeTypeExtendedIsolationState, 16);
    CHECK_EQ(fixupStateCouldNotUpdate, 2);
    CHECK_EQ(isolationStateRestrictedAccess, 3);
    CHECK_EQ(failureCategoryServerCommunication, 5);
    CHECK_EQ(eTaskCritical, 0);
    CHECK_EQ(eAppDomainCritical, 1);
    CHECK_EQ(eProcessCritical, 2);
    CHECK_EQ(eMemoryAvailableLow, 1);
    CHECK_EQ(eMemoryAvailableHigh, 3);
    CHECK_EQ(MEM_COMMIT, 0x1000);
    CHECK_EQ(MEM_RESERVE, 0x2000);
    CHECK_EQ(MEM_DECOMMIT, 0x4000);
    CHECK_EQ(MEM_RELEASE, 0x8000);
    CHECK_EQ(PAGE_NOACCESS, 0x01);
    CHECK_EQ(PAGE_READWRITE, 0x04);

    /* layouts (SPEC §3, 64-bit) */
    if (sizeof(void *) == 8) {
        CHECK_EQ(sizeof(Connections), 16);
        CHECK_EQ(offsetof(Connections, connections), 8);
        CHECK_EQ(sizeof(CountedString), 16);
        CHECK_EQ(sizeof(FixupInfo), 32);
        CHECK_EQ(offsetof(FixupInfo, percentage), 4);
        CHECK_EQ(offsetof(FixupInfo, resultCodes), 8);
        CHECK_EQ(offsetof(FixupInfo, fixupMsgId), 24);
        CHECK_EQ(sizeof(SystemHealthAgentState), 64);
        CHECK_EQ(offsetof(SystemHealthAgentState, shaResultCodes), 8);
        CHECK_EQ(offsetof(SystemHealthAgentState, failureCategory), 24);
        CHECK_EQ(offsetof(SystemHealthAgentState, fixupInfo), 32);
        CHECK_EQ(sizeof(SoHAttribute), 16);
        CHECK_EQ(sizeof(SoH), 16);
        CHECK_EQ(sizeof(NetworkSoH), 16);
        CHECK_EQ(sizeof(PrivateData), 16);
        CHECK_EQ(sizeof(IsolationInfo), 32);
        CHECK_EQ(offsetof(IsolationInfo, failureUrl), 16);
        CHECK_EQ(sizeof(IsolationInfoEx), 32);
        CHECK_EQ(offsetof(IsolationInfoEx, failureUrl), 16);
        CHECK_EQ(sizeof(NapComponentRegistrationInfo), 120);
        CHECK_EQ(sizeof(SoHAttributeValue), 16);
        CHECK_EQ(offsetof(SoHAttributeValue, vendorSpecificVal.vendorSpecificData), 8);
        CHECK_EQ(sizeof(IMallocVtbl), 9 * sizeof(void *));
        CHECK_EQ(sizeof(IHostMemoryManagerVtbl), 13 * sizeof(void *));
        CHECK_EQ(offsetof(IHostMemoryManagerVtbl, ReleasedVirtualAddressSpace), 12 * sizeof(void *));
    }
    CHECK_EQ(sizeof(NapallocStats), 7 * 8);
    CHECK_EQ(offsetof(NapallocStats, bad_pointer_reports), 4 * 8);

    /* the union: every pointer member shares one slot */
    {
        SoHAttributeValue v;
        unsigned char byte = 0;
        memset(&v, 0, sizeof v);
        v.octetStringVal.data = &byte;
        CHECK(v.codesVal.results == (HRESULT *)(void *)&byte);
        CHECK(v.vendorSpecificVal.vendorSpecificData == &byte);
        v.idVal = 0x01020304u;
        CHECK_EQ(v.uint8Val, 0x04); /* little-endian x86-64 */
    }

    /* interface identifiers */
    {
        static const IID iid_malloc = NAPALLOC_IID_IMALLOC;
        static const IID iid_unknown = NAPALLOC_IID_IUNKNOWN;
        static const IID iid_host = NAPALLOC_IID_IHOSTMEMORYMANAGER;
        CHECK_EQ(iid_malloc.Data1, 2);
        CHECK_EQ(iid_malloc.Data4[0], 0xC0);
        CHECK_EQ(iid_malloc.Data4[7], 0x46);
        CHECK_EQ(iid_unknown.Data1, 0);
        CHECK_EQ(iid_host.Data1, 0x7BC698D1u);
        CHECK_EQ(iid_host.Data4[7], 0x25);
    }

    /* a C-implemented IMalloc, called through its vtable */
    {
        static const IID iid_malloc = NAPALLOC_IID_IMALLOC;
        static const IID iid_unknown = NAPALLOC_IID_IUNKNOWN;
        FakeMalloc fm;
        IMalloc *m = &fm.iface;
        void *out = m;
        void *p;
        memset(&fm, 0, sizeof fm);
        fm.iface.lpVtbl = &fake_malloc_vtbl;
        fm.refs = 1;
        CHECK_HR(m->lpVtbl->QueryInterface(m, &iid_malloc, &out), S_OK);
        CHECK(out == (void *)m);
        CHECK_EQ(fm.refs, 2);
        CHECK_HR(m->lpVtbl->QueryInterface(m, &iid_unknown, &out), E_NOINTERFACE);
        CHECK(out == NULL);
        p = m->lpVtbl->Alloc(m, 16);
        CHECK(p != NULL);
        CHECK_EQ(m->lpVtbl->DidAlloc(m, p), 1);
        CHECK_EQ(m->lpVtbl->DidAlloc(m, NULL), -1);
        CHECK_EQ(m->lpVtbl->DidAlloc(m, &fm), 0);
        CHECK_EQ(m->lpVtbl->GetSize(m, NULL), (SIZE_T)-1);
        m->lpVtbl->HeapMinimize(m);
        CHECK_EQ(fm.used, 0);
        CHECK_EQ(m->lpVtbl->Release(m), 1);
    }

    /* a C-implemented host memory manager, called through its vtable */
    {
        IHostMemoryManager host = { &host_vtbl };
        void *mem = &host;
        DWORD load = 0;
        SIZE_T avail = 0;
        CHECK_HR(host.lpVtbl->VirtualAlloc(&host, NULL, 4096, MEM_RESERVE, PAGE_NOACCESS,
                                           eTaskCritical, &mem),
                 S_OK);
        CHECK(mem == (void *)host_pages);
        CHECK_EQ(host_last_type, MEM_RESERVE);
        CHECK_HR(host.lpVtbl->VirtualAlloc(&host, NULL, 1 << 20, MEM_RESERVE, PAGE_NOACCESS,
                                           eProcessCritical, &mem),
                 E_OUTOFMEMORY);
        CHECK(mem == NULL);
        CHECK_HR(host.lpVtbl->VirtualFree(&host, &load, 0, MEM_RELEASE), HOST_E_INVALIDOPERATION);
        CHECK_HR(host.lpVtbl->GetMemoryLoad(&host, &load, &avail), S_OK);
        CHECK_EQ(load, 42);
        CHECK(host.lpVtbl->VirtualQuery == NULL);
    }

    return CHECK_DONE();
}
