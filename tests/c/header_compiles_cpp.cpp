// header_compiles_cpp.cpp - napalloc.h as a C++17 client sees it.
//
// Compile-time: every prototype has exactly the type SPEC gives it (decltype does not odr-use the
// function, so nothing needs to exist at link time); layouts are standard-layout and match §3.
// Run-time: a COM object implemented in C++ against the C-form vtable, REFIID as a reference.
#include "napalloc.h"
#include "napalloc.h"  // the include guard works

#include "check.h"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#ifndef NAPALLOC_H
#error "include guard macro missing"
#endif

#define CHECK_PROTO(fn, T) \
    static_assert(std::is_same<decltype(&fn), T>::value, #fn " has the wrong type")

typedef void *(NAPALLOC_CALL *AllocFn)(SIZE_T);
CHECK_PROTO(CoTaskMemAlloc, AllocFn);
CHECK_PROTO(CoTaskMemRealloc, void *(NAPALLOC_CALL *)(void *, SIZE_T));
CHECK_PROTO(CoTaskMemFree, void(NAPALLOC_CALL *)(void *));
CHECK_PROTO(CoGetMalloc, HRESULT(NAPALLOC_CALL *)(DWORD, IMalloc **));

CHECK_PROTO(AllocConnections, HRESULT(NAPALLOC_CALL *)(Connections **, UINT16));
CHECK_PROTO(AllocCountedString, HRESULT(NAPALLOC_CALL *)(CountedString **, const WCHAR *));
CHECK_PROTO(AllocFixupInfo, HRESULT(NAPALLOC_CALL *)(FixupInfo **, UINT16));
CHECK_PROTO(FreeConnections, void(NAPALLOC_CALL *)(Connections *));
CHECK_PROTO(FreeCountedString, void(NAPALLOC_CALL *)(CountedString *));
CHECK_PROTO(FreeFixupInfo, void(NAPALLOC_CALL *)(FixupInfo *));
CHECK_PROTO(FreeIsolationInfo, void(NAPALLOC_CALL *)(IsolationInfo *));
CHECK_PROTO(FreeIsolationInfoEx, void(NAPALLOC_CALL *)(IsolationInfoEx *));
CHECK_PROTO(FreeSoH, void(NAPALLOC_CALL *)(SoH *));
CHECK_PROTO(FreeNetworkSoH, void(NAPALLOC_CALL *)(NetworkSoH *));
CHECK_PROTO(FreePrivateData, void(NAPALLOC_CALL *)(PrivateData *));
CHECK_PROTO(FreeSoHAttributeValue, void(NAPALLOC_CALL *)(SoHAttributeType, SoHAttributeValue *));
CHECK_PROTO(FreeNapComponentRegistrationInfoArray,
            void(NAPALLOC_CALL *)(UINT16, NapComponentRegistrationInfo **));
CHECK_PROTO(FreeSystemHealthAgentState, void(NAPALLOC_CALL *)(SystemHealthAgentState *));

CHECK_PROTO(NapallocSetHostMemoryManager, HRESULT(NAPALLOC_CALL *)(IHostMemoryManager *));
CHECK_PROTO(NapallocResetHostFailure, HRESULT(NAPALLOC_CALL *)(void));
CHECK_PROTO(NapallocGetLastHostError, HRESULT(NAPALLOC_CALL *)(void));
CHECK_PROTO(NapallocAllocCritical, void *(NAPALLOC_CALL *)(SIZE_T, EMemoryCriticalLevel));
CHECK_PROTO(NapallocSetBudget, HRESULT(NAPALLOC_CALL *)(SIZE_T, SIZE_T));
CHECK_PROTO(NapallocGetStats, HRESULT(NAPALLOC_CALL *)(NapallocStats *));
CHECK_PROTO(NapallocHeapMinimize, HRESULT(NAPALLOC_CALL *)(void));
CHECK_PROTO(NapallocScopeEnter, HRESULT(NAPALLOC_CALL *)(NapallocScope **));
CHECK_PROTO(NapallocScopeLeave, HRESULT(NAPALLOC_CALL *)(NapallocScope *));

#if !NAPALLOC_WINDOWS_SDK
static_assert(std::is_same<HRESULT, std::int32_t>::value, "HRESULT is int32_t");
static_assert(std::is_same<ULONG, std::uint32_t>::value, "ULONG is uint32_t");
static_assert(std::is_same<DWORD, std::uint32_t>::value, "DWORD is uint32_t");
static_assert(std::is_same<WCHAR, std::uint16_t>::value, "WCHAR is uint16_t, not wchar_t");
static_assert(std::is_same<SIZE_T, std::size_t>::value, "SIZE_T is size_t");
static_assert(std::is_same<BOOL, std::int32_t>::value, "BOOL is int32_t");
#endif

// The C structures must stay plain data in C++: standard layout and trivially copyable, so that
// offsetof is defined and memcpy/CoTaskMemAlloc'd storage is a valid object.
template <typename T>
constexpr bool plain() {
    return std::is_standard_layout<T>::value && std::is_trivially_copyable<T>::value;
}
static_assert(plain<Connections>() && plain<CountedString>() && plain<ResultCodes>(), "plain");
static_assert(plain<FixupInfo>() && plain<SystemHealthAgentState>() && plain<SoHAttribute>(), "plain");
static_assert(plain<SoH>() && plain<NetworkSoH>() && plain<PrivateData>(), "plain");
static_assert(plain<IsolationInfo>() && plain<IsolationInfoEx>(), "plain");
static_assert(plain<NapComponentRegistrationInfo>() && plain<SoHAttributeValue>(), "plain");
static_assert(plain<NapallocStats>() && plain<IMalloc>() && plain<IHostMemoryManager>(), "plain");
static_assert(sizeof(EMemoryCriticalLevel) == 4 && sizeof(SoHAttributeType) == 4, "4-byte enums");

#if UINTPTR_MAX == 0xFFFFFFFFFFFFFFFFu
static_assert(sizeof(SoHAttributeValue) == 16, "SoHAttributeValue");
static_assert(offsetof(SystemHealthAgentState, fixupInfo) == 32, "SystemHealthAgentState");
static_assert(offsetof(IMallocVtbl, HeapMinimize) == 8 * sizeof(void *), "IMallocVtbl");
static_assert(offsetof(IHostMemoryManagerVtbl, RegisterMemoryNotificationCallback) == 9 * sizeof(void *),
              "IHostMemoryManagerVtbl");
#endif

// REFIID is a reference in C++, as in the Windows SDK.
static_assert(std::is_reference<REFIID>::value, "REFIID is const IID & in C++");

namespace {

// ICLRMemoryNotificationCallback implemented in C++ with the C-form vtable.
struct Callback {
    ICLRMemoryNotificationCallback iface;  // first
    ULONG refs;
    EMemoryAvailable last;
};

HRESULT STDMETHODCALLTYPE cb_query_interface(ICLRMemoryNotificationCallback *self, REFIID riid,
                                             void **ppv) {
    static const IID iid_unknown = NAPALLOC_IID_IUNKNOWN;
    static const IID iid_callback = NAPALLOC_IID_ICLRMEMORYNOTIFICATIONCALLBACK;
    if (std::memcmp(&riid, &iid_unknown, sizeof(IID)) == 0 ||
        std::memcmp(&riid, &iid_callback, sizeof(IID)) == 0) {
        *ppv = self;
        self->lpVtbl->AddRef(self);
        return S_OK;
    }
    *ppv = nullptr;
    return E_NOINTERFACE;
}
ULONG STDMETHODCALLTYPE cb_add_ref(ICLRMemoryNotificationCallback *self) {
    return ++reinterpret_cast<Callback *>(self)->refs;
}
ULONG STDMETHODCALLTYPE cb_release(ICLRMemoryNotificationCallback *self) {
    return --reinterpret_cast<Callback *>(self)->refs;
}
HRESULT STDMETHODCALLTYPE cb_notify(ICLRMemoryNotificationCallback *self, EMemoryAvailable level) {
    reinterpret_cast<Callback *>(self)->last = level;
    return S_OK;
}

ICLRMemoryNotificationCallbackVtbl callback_vtbl = {cb_query_interface, cb_add_ref, cb_release,
                                                    cb_notify};

}  // namespace

int main() {
    CHECK_EQ(sizeof(NapallocStats), 56);
    CHECK_EQ(offsetof(NapallocStats, trims), 48);
    CHECK_HR(E_OUTOFMEMORY, 0x8007000Eu);
    CHECK_HR(HOST_E_TIMEOUT, 0x80131024u);
    CHECK_EQ(maxConnectionCountPerEnforcer, 20);
    CHECK_EQ(sohAttributeTypeErrorCodes, 13);
    CHECK_EQ(eProcessCritical, 2);

    Callback cb{};
    cb.iface.lpVtbl = &callback_vtbl;
    cb.refs = 1;
    ICLRMemoryNotificationCallback *p = &cb.iface;
    const IID iid_callback = NAPALLOC_IID_ICLRMEMORYNOTIFICATIONCALLBACK;
    const IID iid_malloc = NAPALLOC_IID_IMALLOC;
    void *out = nullptr;
    CHECK_HR(p->lpVtbl->QueryInterface(p, iid_callback, &out), S_OK);
    CHECK(out == static_cast<void *>(p));
    CHECK_EQ(cb.refs, 2);
    CHECK_HR(p->lpVtbl->QueryInterface(p, iid_malloc, &out), E_NOINTERFACE);
    CHECK(out == nullptr);
    CHECK_HR(p->lpVtbl->OnMemoryNotification(p, eMemoryAvailableLow), S_OK);
    CHECK_EQ(cb.last, eMemoryAvailableLow);
    CHECK_EQ(p->lpVtbl->Release(p), 1);

    Connections c{};
    CHECK(c.count == 0 && c.connections == nullptr);
    SoHAttributeValue v{};
    v.octetStringVal.size = 3;
    CHECK_EQ(v.octetStringVal.size, 3);

    return CHECK_DONE();
}
