/*
 * napalloc.h - the C ABI of napalloc.
 *
 * napalloc is a page-reserving arena/region allocator. This header declares what C and C++
 * code can call:
 *
 *   1. the COM task allocator: CoTaskMemAlloc, CoTaskMemRealloc, CoTaskMemFree, CoGetMalloc
 *      and the IMalloc it returns;
 *   2. the 14 NapUtil memory functions (AllocConnections ... FreeSystemHealthAgentState) with
 *      every NAP structure they take;
 *   3. napalloc's own entry points (Napalloc*): a host memory manager in the shape of the CLR's
 *      IHostMemoryManager (mscoree.h), critical allocations, a memory budget, statistics,
 *      HeapMinimize and request scopes.
 *
 * The header is self-contained: it needs only <stddef.h> and <stdint.h> on non-Windows systems.
 * It compiles as C11 (gcc -std=c11 -Wall -Wextra -Werror -pedantic) and as C++17.
 *
 * ---------------------------------------------------------------------------------------------
 * Windows types: where HRESULT, GUID, IUnknown, IMalloc ... come from
 * ---------------------------------------------------------------------------------------------
 * (a) On Windows (_WIN32 defined) this header includes <windows.h> and <objbase.h>, as every
 *     Windows SDK header does. The base types (HRESULT, DWORD, ULONG, UINT8/16/32, WCHAR, SIZE_T,
 *     BYTE, BOOL, LPVOID, GUID/IID, FILETIME), the HRESULT codes, IUnknown, IMalloc and the
 *     CoTaskMem* and CoGetMalloc prototypes then come from the SDK and are not repeated here.
 * (b) Elsewhere napalloc.h defines those names itself from <stdint.h>/<stddef.h>, at the sizes the
 *     SDK gives them on x86-64: HRESULT = int32_t, ULONG = DWORD = uint32_t, WCHAR = uint16_t
 *     (UTF-16, not wchar_t), SIZE_T = size_t, BOOL = int32_t. GUID and FILETIME keep the SDK's
 *     member names (Data1..Data4, dwLowDateTime/dwHighDateTime).
 * (c) Every other group is guarded by the include-guard macro that the SDK's own headers use for
 *     it, so that a group the SDK has already defined is taken from the SDK:
 *       NAP types            __naptypes_h__ / __NapTypes_h__
 *       SoHAttribute types   __napprotocol_h__ / __NapProtocol_h__
 *       Connections          __napenforcementclient_h__ / __NapEnforcementClient_h__
 *       COM interfaces       __<Interface>_FWD_DEFINED__ and __<Interface>_INTERFACE_DEFINED__
 *       CLR hosting          __IHostMemoryManager_INTERFACE_DEFINED__
 *       HRESULT and MEM_/PAGE_ constants: each one #ifndef'd by name.
 *     On Windows napalloc.h includes the SDK's NapTypes.h, NapProtocol.h and
 *     NapEnforcementClient.h itself when the SDK has them (__has_include), so their include order
 *     does not matter. For mscoree.h (and on other systems, for any Windows-compatible header set)
 *     the rule is: include it BEFORE napalloc.h; included after, it would define the same
 *     interfaces a second time.
 * (d) Where napalloc.h defines a COM interface itself, it uses the C form (a struct whose first
 *     member is `const XxxVtbl *lpVtbl`), in C and in C++ alike.
 *
 * Calling convention and linkage: every function and every interface method uses the Windows API
 * convention: NAPALLOC_CALL (functions) and STDMETHODCALLTYPE (methods) are __stdcall on Windows
 * (which is the plain C convention on x64) and empty elsewhere. The Rust side declares them
 * `extern "system"`, which is the same thing on every target. NAPALLOC_API is
 * __declspec(dllimport) on Windows unless NAPALLOC_STATIC is defined (linking libnapalloc.a /
 * napalloc.lib), and `extern` elsewhere. Define NAPALLOC_API yourself to override it.
 *
 * Ownership, the rule of every NAP interface: out parameters are allocated by the callee with the
 * COM task allocator (CoTaskMemAlloc) and freed by the caller with it. ALL NAP FUNCTIONS THAT FREE
 * MEMORY ALSO FREE ALL EMBEDDED POINTERS.
 */
#ifndef NAPALLOC_H
#define NAPALLOC_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  include <windows.h>
#  include <objbase.h>
   /* The SDK's NAP headers, where this SDK still ships them, so that including them after
    * napalloc.h cannot define the NAP structures a second time. */
#  if defined(__has_include)
#    if __has_include(<naptypes.h>) && __has_include(<napprotocol.h>) && \
        __has_include(<napenforcementclient.h>)
#      include <naptypes.h>
#      include <napprotocol.h>
#      include <napenforcementclient.h>
#    endif
#  endif
#  define NAPALLOC_WINDOWS_SDK 1
#else
#  define NAPALLOC_WINDOWS_SDK 0
#endif

/* ============================================================================================ */
/* Linkage and calling convention                                                               */
/* ============================================================================================ */

#ifndef NAPALLOC_API
#  if defined(_WIN32) && !defined(NAPALLOC_STATIC)
#    define NAPALLOC_API extern __declspec(dllimport)
#  else
#    define NAPALLOC_API extern
#  endif
#endif

#ifndef NAPALLOC_CALL
#  if defined(_WIN32)
#    define NAPALLOC_CALL __stdcall
#  else
#    define NAPALLOC_CALL
#  endif
#endif

#ifndef STDMETHODCALLTYPE
#  if defined(_WIN32)
#    define STDMETHODCALLTYPE __stdcall
#  else
#    define STDMETHODCALLTYPE
#  endif
#endif

#ifdef __cplusplus
#  define NAPALLOC_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#  define NAPALLOC_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ============================================================================================ */
/* 1. Base types (from the Windows SDK on Windows, see (a) and (b) above)                        */
/* ============================================================================================ */

#if !NAPALLOC_WINDOWS_SDK
typedef int32_t  HRESULT;
typedef uint8_t  UINT8;
typedef uint16_t UINT16;
typedef uint32_t UINT32;
typedef uint32_t ULONG;
typedef uint32_t DWORD;
typedef uint16_t WCHAR;   /* one UTF-16 code unit; NOT wchar_t (4 bytes on Linux) */
typedef size_t   SIZE_T;
typedef uint8_t  BYTE;
typedef int32_t  BOOL;
typedef void    *LPVOID;

#  ifndef GUID_DEFINED
#    define GUID_DEFINED
typedef struct _GUID {
    uint32_t Data1;
    uint16_t Data2;
    uint16_t Data3;
    uint8_t  Data4[8];
} GUID;
#  endif
typedef GUID IID;
typedef GUID CLSID;
#  ifndef REFIID
#    ifdef __cplusplus
#      define REFIID const IID &
#    else
#      define REFIID const IID *
#    endif
#  endif

#  ifndef _FILETIME_
#    define _FILETIME_
/* 100-ns intervals since 1601-01-01 UTC, split in two halves. */
typedef struct _FILETIME {
    DWORD dwLowDateTime;
    DWORD dwHighDateTime;
} FILETIME;
#  endif
#endif /* !NAPALLOC_WINDOWS_SDK */

/* ============================================================================================ */
/* 2. HRESULT values                                                                             */
/* ============================================================================================ */

#ifndef SUCCEEDED
#  define SUCCEEDED(hr) (((HRESULT)(hr)) >= 0)
#endif
#ifndef FAILED
#  define FAILED(hr) (((HRESULT)(hr)) < 0)
#endif
#ifndef S_OK
#  define S_OK ((HRESULT)0x00000000L)
#endif
#ifndef S_FALSE
#  define S_FALSE ((HRESULT)0x00000001L)
#endif
#ifndef E_INVALIDARG
#  define E_INVALIDARG ((HRESULT)0x80070057L)
#endif
#ifndef E_OUTOFMEMORY
#  define E_OUTOFMEMORY ((HRESULT)0x8007000EL)
#endif
#ifndef E_FAIL
#  define E_FAIL ((HRESULT)0x80004005L)
#endif
#ifndef E_POINTER
#  define E_POINTER ((HRESULT)0x80004003L)
#endif
#ifndef E_NOINTERFACE
#  define E_NOINTERFACE ((HRESULT)0x80004002L)
#endif
/* CLR hosting (corerror.h). Any method of a host memory manager may fail with these. */
#ifndef HOST_E_INVALIDOPERATION
#  define HOST_E_INVALIDOPERATION ((HRESULT)0x80131022L)
#endif
#ifndef HOST_E_CLRNOTAVAILABLE
#  define HOST_E_CLRNOTAVAILABLE ((HRESULT)0x80131023L)
#endif
#ifndef HOST_E_TIMEOUT
#  define HOST_E_TIMEOUT ((HRESULT)0x80131024L)
#endif
#ifndef HOST_E_NOT_OWNER
#  define HOST_E_NOT_OWNER ((HRESULT)0x80131025L)
#endif
#ifndef HOST_E_ABANDONED
#  define HOST_E_ABANDONED ((HRESULT)0x80131026L)
#endif

/* ============================================================================================ */
/* 3. COM: IUnknown, IMalloc, interface identifiers                                              */
/* ============================================================================================ */

/* Interface identifiers, as brace initialisers: `static const IID iid = NAPALLOC_IID_IMALLOC;`
 * (napalloc exports no data, only functions). */
#define NAPALLOC_IID_IUNKNOWN \
    { 0x00000000, 0x0000, 0x0000, { 0xC0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x46 } }
#define NAPALLOC_IID_IMALLOC \
    { 0x00000002, 0x0000, 0x0000, { 0xC0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x46 } }
#define NAPALLOC_IID_IHOSTMEMORYMANAGER \
    { 0x7BC698D1, 0xF9E3, 0x4460, { 0x9C, 0xDE, 0xD0, 0x42, 0x48, 0xE9, 0xFA, 0x25 } }
#define NAPALLOC_IID_IHOSTMALLOC \
    { 0x1831991C, 0xCC53, 0x4A31, { 0xB2, 0x18, 0x04, 0xE9, 0x10, 0x44, 0x64, 0x79 } }
#define NAPALLOC_IID_ICLRMEMORYNOTIFICATIONCALLBACK \
    { 0x47EB8E57, 0x0846, 0x4546, { 0xAF, 0x76, 0x6F, 0x42, 0xFC, 0xFC, 0x26, 0x49 } }

/* A COM interface pointer points to an object whose first member points to its vtable; every
 * vtable starts with QueryInterface, AddRef, Release. */
#ifndef __IUnknown_FWD_DEFINED__
#  define __IUnknown_FWD_DEFINED__
typedef struct IUnknown IUnknown;
#endif
#ifndef __IUnknown_INTERFACE_DEFINED__
#  define __IUnknown_INTERFACE_DEFINED__
typedef struct IUnknownVtbl {
    HRESULT (STDMETHODCALLTYPE *QueryInterface)(IUnknown *This, REFIID riid, void **ppvObject);
    ULONG   (STDMETHODCALLTYPE *AddRef)(IUnknown *This);
    ULONG   (STDMETHODCALLTYPE *Release)(IUnknown *This);
} IUnknownVtbl;
struct IUnknown {
    const IUnknownVtbl *lpVtbl;
};
#endif

/* The COM task allocator as an interface (objidl.h). CoGetMalloc(1, &p) returns napalloc's
 * process-wide instance; its methods behave as CoTaskMem* do.
 *   QueryInterface: IID_IUnknown and IID_IMalloc -> S_OK and an AddRef'd object; else
 *                   E_NOINTERFACE and *ppvObject = NULL.
 *   GetSize(NULL) == (SIZE_T)-1; GetSize(block) == the size requested for it, exactly.
 *   DidAlloc(block) == 1, DidAlloc(NULL) == -1, DidAlloc(anything else) == 0 (foreign, interior
 *   or freed pointers).
 *   HeapMinimize returns unused committed memory to the operating system (or the host). */
#ifndef __IMalloc_FWD_DEFINED__
#  define __IMalloc_FWD_DEFINED__
typedef struct IMalloc IMalloc;
#endif
#ifndef __IMalloc_INTERFACE_DEFINED__
#  define __IMalloc_INTERFACE_DEFINED__
typedef struct IMallocVtbl {
    HRESULT (STDMETHODCALLTYPE *QueryInterface)(IMalloc *This, REFIID riid, void **ppvObject);
    ULONG   (STDMETHODCALLTYPE *AddRef)(IMalloc *This);
    ULONG   (STDMETHODCALLTYPE *Release)(IMalloc *This);
    void   *(STDMETHODCALLTYPE *Alloc)(IMalloc *This, SIZE_T cb);
    void   *(STDMETHODCALLTYPE *Realloc)(IMalloc *This, void *pv, SIZE_T cb);
    void    (STDMETHODCALLTYPE *Free)(IMalloc *This, void *pv);
    SIZE_T  (STDMETHODCALLTYPE *GetSize)(IMalloc *This, void *pv);
    int     (STDMETHODCALLTYPE *DidAlloc)(IMalloc *This, void *pv);
    void    (STDMETHODCALLTYPE *HeapMinimize)(IMalloc *This);
} IMallocVtbl;
struct IMalloc {
    const IMallocVtbl *lpVtbl;
};
typedef IMalloc *LPMALLOC;
#endif

/* ============================================================================================ */
/* 4. NAP types (NapTypes.h, NapProtocol.h, NapEnforcementClient.h)                              */
/* ============================================================================================ */

/* INapEnforcementClientConnection is used here only as an opaque COM object: napalloc calls
 * nothing but Release on it (FreeConnections). The real interface has more methods after
 * Release; a test double needs a vtable only as long as the one below. */
#ifndef __INapEnforcementClientConnection_FWD_DEFINED__
#  define __INapEnforcementClientConnection_FWD_DEFINED__
typedef struct INapEnforcementClientConnection INapEnforcementClientConnection;
#endif
#ifndef __INapEnforcementClientConnection_INTERFACE_DEFINED__
#  define __INapEnforcementClientConnection_INTERFACE_DEFINED__
typedef struct INapEnforcementClientConnectionVtbl {
    HRESULT (STDMETHODCALLTYPE *QueryInterface)(INapEnforcementClientConnection *This, REFIID riid,
                                                void **ppvObject);
    ULONG   (STDMETHODCALLTYPE *AddRef)(INapEnforcementClientConnection *This);
    ULONG   (STDMETHODCALLTYPE *Release)(INapEnforcementClientConnection *This);
    /* ... the interface's own methods follow; napalloc never calls them. */
} INapEnforcementClientConnectionVtbl;
struct INapEnforcementClientConnection {
    const INapEnforcementClientConnectionVtbl *lpVtbl;
};
#endif

#if !defined(__naptypes_h__) && !defined(__NapTypes_h__)

#define freshSoHRequest               (0x1)
#define shaFixup                      (0x1)
#define percentageNotSupported        (101)
#define maxSoHAttributeCount          (100)
#define maxSoHAttributeSize           (4000)
#define minNetworkSoHSize             (12)
#define maxNetworkSoHSize             (4000)
#define maxDwordCountPerSoHAttribute  (1000)   /* maxSoHAttributeSize / sizeof(DWORD) */
#define maxIpv4CountPerSoHAttribute   (1000)   /* maxSoHAttributeSize / 4 */
#define maxIpv6CountPerSoHAttribute   (250)    /* maxSoHAttributeSize / 16 */
#define maxStringLength               (1024)
#define maxStringLengthInBytes        ((maxStringLength + 1) * 2)
#define maxSystemHealthEntityCount    (20)
#define maxEnforcerCount              (20)
#define maxPrivateDataSize            (200)
#define maxConnectionCountPerEnforcer (20)
#define maxCachedSoHCount             (maxSystemHealthEntityCount * maxEnforcerCount * maxConnectionCountPerEnforcer)
#define failureCategoryCount          (5)
#define ComponentTypeEnforcementClientSoH (0x1)
#define ComponentTypeEnforcementClientRp  (0x2)

typedef enum tagIsolationState {
    isolationStateNotRestricted   = 1,
    isolationStateInProbation     = 2,
    isolationStateRestrictedAccess = 3
} IsolationState;

typedef enum tagExtendedIsolationState {
    extendedIsolationStateNoData     = 0,
    extendedIsolationStateTransition = 1,
    extendedIsolationStateInfected   = 2,
    extendedIsolationStateUnknown    = 3
} ExtendedIsolationState;

typedef enum tagNapTracingLevel {
    tracingLevelUndefined = 0,
    tracingLevelBasic     = 1,
    tracingLevelAdvanced  = 2,
    tracingLevelDebug     = 3
} NapTracingLevel;

typedef enum tagFailureCategory {
    failureCategoryNone                = 0,
    failureCategoryOther               = 1,
    failureCategoryClientComponent     = 2,
    failureCategoryClientCommunication = 3,
    failureCategoryServerComponent     = 4,
    failureCategoryServerCommunication = 5
} FailureCategory;

typedef enum tagFixupState {
    fixupStateSuccess        = 0,
    fixupStateInProgress     = 1,
    fixupStateCouldNotUpdate = 2
} FixupState;

typedef enum tagNapNotifyType {
    napNotifyTypeUnknown      = 0,
    napNotifyTypeServiceState = 1,
    napNotifyTypeQuarState    = 2
} NapNotifyType;

typedef enum tagRemoteConfigurationType {
    remoteConfigTypeMachine    = 1,
    remoteConfigTypeConfigBlob = 2
} RemoteConfigurationType;

typedef FILETIME ProbationTime;
typedef UINT32   MessageId;
typedef UINT32   NapComponentId;
typedef NapComponentId SystemHealthEntityId;
typedef NapComponentId EnforcementEntityId;
typedef UINT16   SystemHealthEntityCount;
typedef UINT16   EnforcementEntityCount;
typedef UINT8    Percentage;
typedef GUID     ConnectionId;

/* A UTF-16 string: `length` characters before the terminating NUL (which `string` holds). */
typedef struct tagCountedString {
    UINT16 length;
    WCHAR *string;
} CountedString;
typedef CountedString StringCorrelationId;

typedef struct tagIsolationInfo {
    IsolationState isolationState;
    ProbationTime  probEndTime;
    CountedString  failureUrl;
} IsolationInfo;

typedef struct tagIsolationInfoEx {
    IsolationState         isolationState;
    ExtendedIsolationState extendedIsolationState;
    ProbationTime          probEndTime;
    CountedString          failureUrl;
} IsolationInfoEx;

typedef struct tagFailureCategoryMapping {
    BOOL mappingCompliance[failureCategoryCount];
} FailureCategoryMapping;

typedef struct tagCorrelationId {
    GUID     connId;
    FILETIME timeStamp;
} CorrelationId;

typedef struct tagResultCodes {
    UINT16   count;
    HRESULT *results;       /* size_is(count) */
} ResultCodes;

typedef struct tagIpv4Address {
    BYTE addr[4];
} Ipv4Address;

typedef struct tagIpv6Address {
    BYTE addr[16];
} Ipv6Address;

typedef struct tagFixupInfo {
    FixupState  state;
    Percentage  percentage;
    ResultCodes resultCodes;
    MessageId   fixupMsgId;
} FixupInfo;

typedef struct tagSystemHealthAgentState {
    SystemHealthEntityId id;
    ResultCodes          shaResultCodes;
    FailureCategory      failureCategory;
    FixupInfo            fixupInfo;
} SystemHealthAgentState;

typedef struct tagSoHAttribute {
    UINT16 type;
    UINT16 size;
    BYTE  *value;           /* size_is(size) */
} SoHAttribute;

typedef struct tagSoH {
    UINT16        count;
    SoHAttribute *attributes;   /* size_is(count) */
} SoH;
typedef struct tagSoH SoHRequest;
typedef struct tagSoH SoHResponse;

typedef struct tagNetworkSoH {
    UINT16 size;
    BYTE  *data;
} NetworkSoH;
typedef struct tagNetworkSoH NetworkSoHRequest;
typedef struct tagNetworkSoH NetworkSoHResponse;

typedef struct tagPrivateData {
    UINT16 size;
    BYTE  *data;
} PrivateData;

typedef struct tagNapComponentRegistrationInfo {
    NapComponentId id;
    CountedString  friendlyName;
    CountedString  description;
    CountedString  version;
    CountedString  vendorName;
    CLSID          infoClsid;
    CLSID          configClsid;
    FILETIME       registrationDate;
    UINT32         componentType;
} NapComponentRegistrationInfo;

#endif /* NapTypes */

#if !defined(__napenforcementclient_h__) && !defined(__NapEnforcementClient_h__)
typedef struct tagConnections {
    UINT16 count;           /* 0 .. maxConnectionCountPerEnforcer */
    INapEnforcementClientConnection **connections;   /* size_is(count) */
} Connections;
#endif

#if !defined(__napprotocol_h__) && !defined(__NapProtocol_h__)
typedef enum tagSoHAttributeType {
    sohAttributeTypeSystemHealthId         = 2,
    sohAttributeTypeIpv4FixupServers       = 3,
    sohAttributeTypeComplianceResultCodes  = 4,
    sohAttributeTypeTimeOfLastUpdate       = 5,
    sohAttributeTypeClientId               = 6,
    sohAttributeTypeVendorSpecific         = 7,
    sohAttributeTypeHealthClass            = 8,
    sohAttributeTypeSoftwareVersion        = 9,
    sohAttributeTypeProductName            = 10,
    sohAttributeTypeHealthClassStatus      = 11,
    sohAttributeTypeSoHGenerationTime      = 12,
    sohAttributeTypeErrorCodes             = 13,
    sohAttributeTypeFailureCategory        = 14,
    sohAttributeTypeIpv6FixupServers       = 15,
    sohAttributeTypeExtendedIsolationState = 16
} SoHAttributeType;

typedef enum tagHealthClassValue {
    healthClassFirewall       = 0,
    healthClassPatchLevel     = 1,
    healthClassAntiVirus      = 2,
    healthClassCriticalUpdate = 3,
    healthClassReserved       = 128
} HealthClassValue;

/* The value of one SoH attribute, switched by its SoHAttributeType:
 *   SystemHealthId                               idVal               (no pointer)
 *   Ipv4FixupServers                             v4AddressesVal      (addresses)
 *   Ipv6FixupServers                             v6AddressesVal      (addresses)
 *   ComplianceResultCodes, ErrorCodes            codesVal            (results)
 *   TimeOfLastUpdate, SoHGenerationTime          dateTimeVal         (no pointer)
 *   VendorSpecific                               vendorSpecificVal   (vendorSpecificData)
 *   HealthClass, FailureCategory,
 *   ExtendedIsolationState                       uint8Val            (no pointer)
 *   every other type                             octetStringVal      (data)
 */
typedef union tagSoHAttributeValue {
    SystemHealthEntityId idVal;
    struct tagIpv4Addresses {
        UINT16       count;
        Ipv4Address *addresses;
    } v4AddressesVal;
    struct tagIpv6Addresses {
        UINT16       count;
        Ipv6Address *addresses;
    } v6AddressesVal;
    ResultCodes codesVal;
    FILETIME    dateTimeVal;
    struct tagVendorSpecific {
        UINT32 vendorId;
        UINT16 size;
        BYTE  *vendorSpecificData;
    } vendorSpecificVal;
    UINT8 uint8Val;
    struct tagOctetString {
        UINT16 size;
        BYTE  *data;
    } octetStringVal;
} SoHAttributeValue;
#endif /* NapProtocol */

/* ============================================================================================ */
/* 5. CLR hosting: the host memory manager (mscoree.h)                                           */
/* ============================================================================================ */

#ifndef MEM_COMMIT
#  define MEM_COMMIT 0x00001000
#endif
#ifndef MEM_RESERVE
#  define MEM_RESERVE 0x00002000
#endif
#ifndef MEM_DECOMMIT
#  define MEM_DECOMMIT 0x00004000
#endif
#ifndef MEM_RELEASE
#  define MEM_RELEASE 0x00008000
#endif
#ifndef MEM_RESET
#  define MEM_RESET 0x00080000
#endif
#ifndef PAGE_NOACCESS
#  define PAGE_NOACCESS 0x01
#endif
#ifndef PAGE_READWRITE
#  define PAGE_READWRITE 0x04
#endif

#ifndef __ICLRMemoryNotificationCallback_FWD_DEFINED__
#  define __ICLRMemoryNotificationCallback_FWD_DEFINED__
typedef struct ICLRMemoryNotificationCallback ICLRMemoryNotificationCallback;
#endif
#ifndef __IHostMalloc_FWD_DEFINED__
#  define __IHostMalloc_FWD_DEFINED__
typedef struct IHostMalloc IHostMalloc;
#endif
#ifndef __IHostMemoryManager_FWD_DEFINED__
#  define __IHostMemoryManager_FWD_DEFINED__
typedef struct IHostMemoryManager IHostMemoryManager;
#endif

#ifndef __IHostMemoryManager_INTERFACE_DEFINED__
#  define __IHostMemoryManager_INTERFACE_DEFINED__

/* How bad a failure of an allocation would be:
 *   eTaskCritical      may fail at once (the level of CoTaskMemAlloc);
 *   eAppDomainCritical idle memory is trimmed and the request retried before it fails;
 *   eProcessCritical   after a trim it may also use the reserve between the soft and the hard
 *                      limit of NapallocSetBudget. */
typedef enum {
    eTaskCritical      = 0,
    eAppDomainCritical = 1,
    eProcessCritical   = 2
} EMemoryCriticalLevel;

typedef enum {
    eMemoryAvailableLow     = 1,
    eMemoryAvailableNeutral = 2,
    eMemoryAvailableHigh    = 3
} EMemoryAvailable;

typedef enum {
    MALLOC_THREADSAFE = 0x1,
    MALLOC_EXECUTABLE = 0x2
} MALLOC_TYPE;

/* Implemented by napalloc and handed to the host's RegisterMemoryNotificationCallback.
 * OnMemoryNotification never blocks: it records the level and returns S_OK. */
#  ifndef __ICLRMemoryNotificationCallback_INTERFACE_DEFINED__
#    define __ICLRMemoryNotificationCallback_INTERFACE_DEFINED__
typedef struct ICLRMemoryNotificationCallbackVtbl {
    HRESULT (STDMETHODCALLTYPE *QueryInterface)(ICLRMemoryNotificationCallback *This, REFIID riid,
                                                void **ppvObject);
    ULONG   (STDMETHODCALLTYPE *AddRef)(ICLRMemoryNotificationCallback *This);
    ULONG   (STDMETHODCALLTYPE *Release)(ICLRMemoryNotificationCallback *This);
    HRESULT (STDMETHODCALLTYPE *OnMemoryNotification)(ICLRMemoryNotificationCallback *This,
                                                      EMemoryAvailable eMemoryAvailable);
} ICLRMemoryNotificationCallbackVtbl;
struct ICLRMemoryNotificationCallback {
    const ICLRMemoryNotificationCallbackVtbl *lpVtbl;
};
#  endif

/* A heap of the host's (IHostMemoryManager::CreateMalloc). napalloc does not use it. */
#  ifndef __IHostMalloc_INTERFACE_DEFINED__
#    define __IHostMalloc_INTERFACE_DEFINED__
typedef struct IHostMallocVtbl {
    HRESULT (STDMETHODCALLTYPE *QueryInterface)(IHostMalloc *This, REFIID riid, void **ppvObject);
    ULONG   (STDMETHODCALLTYPE *AddRef)(IHostMalloc *This);
    ULONG   (STDMETHODCALLTYPE *Release)(IHostMalloc *This);
    HRESULT (STDMETHODCALLTYPE *Alloc)(IHostMalloc *This, SIZE_T cbSize,
                                       EMemoryCriticalLevel eCriticalLevel, void **ppMem);
    HRESULT (STDMETHODCALLTYPE *DebugAlloc)(IHostMalloc *This, SIZE_T cbSize,
                                            EMemoryCriticalLevel eCriticalLevel,
                                            char *pszFileName, int iLineNo, void **ppMem);
    HRESULT (STDMETHODCALLTYPE *Free)(IHostMalloc *This, void *pMem);
} IHostMallocVtbl;
struct IHostMalloc {
    const IHostMallocVtbl *lpVtbl;
};
#  endif

/* The host's page source, in the vtable order of mscoree.h. napalloc calls VirtualAlloc
 * (MEM_RESERVE with PAGE_NOACCESS, then MEM_COMMIT with PAGE_READWRITE), VirtualFree
 * (MEM_DECOMMIT, MEM_RELEASE), GetMemoryLoad, RegisterMemoryNotificationCallback, and the three
 * *VirtualAddressSpace notifications; it never calls CreateMalloc, VirtualQuery or
 * VirtualProtect. VirtualAlloc sets *ppMem = NULL on failure. Any method may fail with
 * HOST_E_TIMEOUT, HOST_E_NOT_OWNER, HOST_E_ABANDONED, E_OUTOFMEMORY or E_FAIL; VirtualFree of
 * memory the host did not hand out fails with HOST_E_INVALIDOPERATION. */
typedef struct IHostMemoryManagerVtbl {
    HRESULT (STDMETHODCALLTYPE *QueryInterface)(IHostMemoryManager *This, REFIID riid,
                                                void **ppvObject);
    ULONG   (STDMETHODCALLTYPE *AddRef)(IHostMemoryManager *This);
    ULONG   (STDMETHODCALLTYPE *Release)(IHostMemoryManager *This);
    HRESULT (STDMETHODCALLTYPE *CreateMalloc)(IHostMemoryManager *This, DWORD dwMallocType,
                                              IHostMalloc **ppMalloc);
    HRESULT (STDMETHODCALLTYPE *VirtualAlloc)(IHostMemoryManager *This, void *pAddress,
                                              SIZE_T dwSize, DWORD flAllocationType,
                                              DWORD flProtect, EMemoryCriticalLevel eCriticalLevel,
                                              void **ppMem);
    HRESULT (STDMETHODCALLTYPE *VirtualFree)(IHostMemoryManager *This, LPVOID lpAddress,
                                             SIZE_T dwSize, DWORD dwFreeType);
    HRESULT (STDMETHODCALLTYPE *VirtualQuery)(IHostMemoryManager *This, void *lpAddress,
                                              void *lpBuffer, SIZE_T dwLength, SIZE_T *pResult);
    HRESULT (STDMETHODCALLTYPE *VirtualProtect)(IHostMemoryManager *This, void *lpAddress,
                                                SIZE_T dwSize, DWORD flNewProtect,
                                                DWORD *pflOldProtect);
    HRESULT (STDMETHODCALLTYPE *GetMemoryLoad)(IHostMemoryManager *This, DWORD *pMemoryLoad,
                                               SIZE_T *pAvailableBytes);
    HRESULT (STDMETHODCALLTYPE *RegisterMemoryNotificationCallback)(
        IHostMemoryManager *This, ICLRMemoryNotificationCallback *pCallback);
    HRESULT (STDMETHODCALLTYPE *NeedsVirtualAddressSpace)(IHostMemoryManager *This,
                                                          LPVOID startAddress, SIZE_T size);
    HRESULT (STDMETHODCALLTYPE *AcquiredVirtualAddressSpace)(IHostMemoryManager *This,
                                                             LPVOID startAddress, SIZE_T size);
    HRESULT (STDMETHODCALLTYPE *ReleasedVirtualAddressSpace)(IHostMemoryManager *This,
                                                             LPVOID startAddress);
} IHostMemoryManagerVtbl;
struct IHostMemoryManager {
    const IHostMemoryManagerVtbl *lpVtbl;
};
#endif /* __IHostMemoryManager_INTERFACE_DEFINED__ */

/* ============================================================================================ */
/* 6. napalloc's own types                                                                       */
/* ============================================================================================ */

/* Process-wide counters, as of the call to NapallocGetStats. */
typedef struct NapallocStats {
    uint64_t live_blocks;          /* blocks handed out and not yet freed */
    uint64_t live_bytes;           /* bytes requested for those blocks */
    uint64_t committed_bytes;      /* memory committed from the OS or the host */
    uint64_t reserved_bytes;       /* address space reserved */
    uint64_t bad_pointer_reports;  /* frees/reallocs of foreign, interior or freed pointers */
    uint64_t failed_allocations;   /* allocations that returned NULL or E_OUTOFMEMORY */
    uint64_t trims;                /* times unused committed memory was returned */
} NapallocStats;

/* A request scope (opaque). */
typedef struct NapallocScope NapallocScope;

/* ============================================================================================ */
/* 7. Layout checks (x86-64 and every other 64-bit target)                                       */
/* ============================================================================================ */

#if UINTPTR_MAX == 0xFFFFFFFFFFFFFFFFu
#  define NAPALLOC_CHECK_SIZE(T, n) NAPALLOC_STATIC_ASSERT(sizeof(T) == (n), "sizeof(" #T ") != " #n)
#  define NAPALLOC_CHECK_OFFSET(T, f, n) \
    NAPALLOC_STATIC_ASSERT(offsetof(T, f) == (n), "offsetof(" #T ", " #f ") != " #n)
NAPALLOC_CHECK_SIZE(HRESULT, 4);
NAPALLOC_CHECK_SIZE(UINT8, 1);
NAPALLOC_CHECK_SIZE(UINT16, 2);
NAPALLOC_CHECK_SIZE(UINT32, 4);
NAPALLOC_CHECK_SIZE(ULONG, 4);
NAPALLOC_CHECK_SIZE(DWORD, 4);
NAPALLOC_CHECK_SIZE(WCHAR, 2);
NAPALLOC_CHECK_SIZE(SIZE_T, 8);
NAPALLOC_CHECK_SIZE(BYTE, 1);
NAPALLOC_CHECK_SIZE(BOOL, 4);
NAPALLOC_CHECK_SIZE(GUID, 16);
NAPALLOC_CHECK_SIZE(FILETIME, 8);
NAPALLOC_CHECK_OFFSET(FILETIME, dwHighDateTime, 4);
NAPALLOC_CHECK_SIZE(FixupState, 4);
NAPALLOC_CHECK_SIZE(FailureCategory, 4);
NAPALLOC_CHECK_SIZE(IsolationState, 4);
NAPALLOC_CHECK_SIZE(ExtendedIsolationState, 4);
NAPALLOC_CHECK_SIZE(SoHAttributeType, 4);
NAPALLOC_CHECK_SIZE(EMemoryCriticalLevel, 4);
NAPALLOC_CHECK_SIZE(EMemoryAvailable, 4);

NAPALLOC_CHECK_SIZE(Connections, 16);
NAPALLOC_CHECK_OFFSET(Connections, connections, 8);
NAPALLOC_CHECK_SIZE(CountedString, 16);
NAPALLOC_CHECK_OFFSET(CountedString, string, 8);
NAPALLOC_CHECK_SIZE(ResultCodes, 16);
NAPALLOC_CHECK_OFFSET(ResultCodes, results, 8);
NAPALLOC_CHECK_SIZE(FixupInfo, 32);
NAPALLOC_CHECK_OFFSET(FixupInfo, percentage, 4);
NAPALLOC_CHECK_OFFSET(FixupInfo, resultCodes, 8);
NAPALLOC_CHECK_OFFSET(FixupInfo, fixupMsgId, 24);
NAPALLOC_CHECK_SIZE(SystemHealthAgentState, 64);
NAPALLOC_CHECK_OFFSET(SystemHealthAgentState, shaResultCodes, 8);
NAPALLOC_CHECK_OFFSET(SystemHealthAgentState, failureCategory, 24);
NAPALLOC_CHECK_OFFSET(SystemHealthAgentState, fixupInfo, 32);
NAPALLOC_CHECK_SIZE(SoHAttribute, 16);
NAPALLOC_CHECK_OFFSET(SoHAttribute, size, 2);
NAPALLOC_CHECK_OFFSET(SoHAttribute, value, 8);
NAPALLOC_CHECK_SIZE(SoH, 16);
NAPALLOC_CHECK_OFFSET(SoH, attributes, 8);
NAPALLOC_CHECK_SIZE(NetworkSoH, 16);
NAPALLOC_CHECK_OFFSET(NetworkSoH, data, 8);
NAPALLOC_CHECK_SIZE(PrivateData, 16);
NAPALLOC_CHECK_OFFSET(PrivateData, data, 8);
NAPALLOC_CHECK_SIZE(IsolationInfo, 32);
NAPALLOC_CHECK_OFFSET(IsolationInfo, probEndTime, 4);
NAPALLOC_CHECK_OFFSET(IsolationInfo, failureUrl, 16);
NAPALLOC_CHECK_SIZE(IsolationInfoEx, 32);
NAPALLOC_CHECK_OFFSET(IsolationInfoEx, extendedIsolationState, 4);
NAPALLOC_CHECK_OFFSET(IsolationInfoEx, probEndTime, 8);
NAPALLOC_CHECK_OFFSET(IsolationInfoEx, failureUrl, 16);
NAPALLOC_CHECK_SIZE(NapComponentRegistrationInfo, 120);
NAPALLOC_CHECK_OFFSET(NapComponentRegistrationInfo, friendlyName, 8);
NAPALLOC_CHECK_OFFSET(NapComponentRegistrationInfo, description, 24);
NAPALLOC_CHECK_OFFSET(NapComponentRegistrationInfo, version, 40);
NAPALLOC_CHECK_OFFSET(NapComponentRegistrationInfo, vendorName, 56);
NAPALLOC_CHECK_OFFSET(NapComponentRegistrationInfo, infoClsid, 72);
NAPALLOC_CHECK_OFFSET(NapComponentRegistrationInfo, configClsid, 88);
NAPALLOC_CHECK_OFFSET(NapComponentRegistrationInfo, registrationDate, 104);
NAPALLOC_CHECK_OFFSET(NapComponentRegistrationInfo, componentType, 112);
NAPALLOC_CHECK_SIZE(Ipv4Address, 4);
NAPALLOC_CHECK_SIZE(Ipv6Address, 16);
NAPALLOC_CHECK_SIZE(SoHAttributeValue, 16);
NAPALLOC_CHECK_OFFSET(SoHAttributeValue, v4AddressesVal.addresses, 8);
NAPALLOC_CHECK_OFFSET(SoHAttributeValue, v6AddressesVal.addresses, 8);
NAPALLOC_CHECK_OFFSET(SoHAttributeValue, codesVal.results, 8);
NAPALLOC_CHECK_OFFSET(SoHAttributeValue, vendorSpecificVal.size, 4);
NAPALLOC_CHECK_OFFSET(SoHAttributeValue, vendorSpecificVal.vendorSpecificData, 8);
NAPALLOC_CHECK_OFFSET(SoHAttributeValue, octetStringVal.data, 8);

NAPALLOC_CHECK_SIZE(IMallocVtbl, 9 * 8);
NAPALLOC_CHECK_OFFSET(IMallocVtbl, Alloc, 3 * 8);
NAPALLOC_CHECK_OFFSET(IMallocVtbl, HeapMinimize, 8 * 8);
NAPALLOC_CHECK_SIZE(IHostMemoryManagerVtbl, 13 * 8);
NAPALLOC_CHECK_OFFSET(IHostMemoryManagerVtbl, VirtualAlloc, 4 * 8);
NAPALLOC_CHECK_OFFSET(IHostMemoryManagerVtbl, GetMemoryLoad, 8 * 8);
NAPALLOC_CHECK_OFFSET(IHostMemoryManagerVtbl, ReleasedVirtualAddressSpace, 12 * 8);
NAPALLOC_CHECK_SIZE(ICLRMemoryNotificationCallbackVtbl, 4 * 8);

NAPALLOC_CHECK_SIZE(NapallocStats, 56);
NAPALLOC_CHECK_OFFSET(NapallocStats, trims, 48);
#  undef NAPALLOC_CHECK_SIZE
#  undef NAPALLOC_CHECK_OFFSET
#endif /* 64-bit */

/* ============================================================================================ */
/* 8. Functions                                                                                  */
/* ============================================================================================ */

/* ---- The COM task allocator (declared by the SDK's objbase.h on Windows) --------------------
 * CoTaskMemAlloc(0) returns a unique non-NULL pointer; NULL only on failure. Blocks are 16-byte
 * aligned. CoTaskMemRealloc(NULL, cb) == CoTaskMemAlloc(cb); CoTaskMemRealloc(p, 0) frees p and
 * returns NULL; a failed grow returns NULL and leaves p valid. CoTaskMemFree(NULL) does nothing;
 * a foreign, interior or already freed pointer is ignored and reported (NapallocStats::
 * bad_pointer_reports). Any thread may free or reallocate a block another thread allocated.
 * A thread's frees of other threads' blocks are gathered (up to 255 blocks of one heap) and
 * delivered together: when the batch fills, when the thread frees a block of another heap,
 * calls NapallocGetStats, NapallocHeapMinimize or NapallocFlushRemoteFrees, queries or
 * reallocates another thread's block, allocates on a slow path, or exits; until then the owner
 * counts those blocks as live. A delivered free is done before the owner's next allocation,
 * free or query, so a double free across threads is refused and reported once the first free
 * is delivered, whichever thread freed first. One case is not caught: if the first free still
 * waits in a running thread's undelivered batch, and the owner frees the block again and
 * reuses it before that batch arrives, the late free then frees the block's new occupant.
 * CoGetMalloc(1, &p) -> S_OK and the process-wide IMalloc; any other context -> E_INVALIDARG
 * and *ppMalloc = NULL. */
#if !NAPALLOC_WINDOWS_SDK
NAPALLOC_API void *NAPALLOC_CALL CoTaskMemAlloc(SIZE_T cb);
NAPALLOC_API void *NAPALLOC_CALL CoTaskMemRealloc(void *pv, SIZE_T cb);
NAPALLOC_API void NAPALLOC_CALL CoTaskMemFree(void *pv);
NAPALLOC_API HRESULT NAPALLOC_CALL CoGetMalloc(DWORD dwMemContext, IMalloc **ppMalloc);
#endif

/* ---- NapUtil: the 14 NAP memory functions ---------------------------------------------------
 * Alloc*: on any failure *out is set to NULL (when out is not NULL) and nothing is leaked; a NULL
 * out pointer -> E_INVALIDARG.
 *   AllocConnections(&p, n): one Connections whose `connections` points to a separate,
 *     zero-filled block of n interface-pointer slots; count = n. n == 0 -> connections = NULL.
 *     n > maxConnectionCountPerEnforcer -> E_INVALIDARG.
 *   AllocCountedString(&p, s): the struct and the string buffer are SEPARATE blocks; length =
 *     characters before the NUL; the buffer holds length + 1 WCHARs. NULL s or length >
 *     maxStringLength -> E_INVALIDARG.
 *   AllocFixupInfo(&p, n): a zero-filled FixupInfo plus a separate zero-filled array of n
 *     HRESULTs in resultCodes.results; n > maxDwordCountPerSoHAttribute -> E_INVALIDARG;
 *     n == 0 -> results = NULL.
 * Free*: accept NULL (no effect), NULL embedded pointers, and structures assembled by hand from
 * separate CoTaskMemAlloc blocks. They free every embedded pointer, then the structure.
 *   FreeConnections calls Release ONCE on every non-NULL connections[i], i < count (the caller
 *     owns those references), then frees the array and the structure.
 *   FreeSoHAttributeValue(type, value) frees the member that `type` selects (see
 *     SoHAttributeValue), then the value block; for a type without a pointer it reads none.
 *   FreeSoH frees each attribute's value, the attribute array, then the structure.
 *   FreeNapComponentRegistrationInfoArray(count, info): *info is ONE block of count entries; it
 *     frees the four strings of each entry, then *info, and sets *info = NULL.
 *   A pointer napalloc did not hand out (foreign, interior, already freed) is not read through,
 *   nothing reachable from it is freed, and it is reported (NapallocStats::bad_pointer_reports).
 */
NAPALLOC_API HRESULT NAPALLOC_CALL AllocConnections(Connections **connections,
                                                    UINT16 connectionsCount);
NAPALLOC_API HRESULT NAPALLOC_CALL AllocCountedString(CountedString **countedString,
                                                      const WCHAR *string);
NAPALLOC_API HRESULT NAPALLOC_CALL AllocFixupInfo(FixupInfo **fixupInfo, UINT16 countResultCodes);
/* FreeConnections RELEASES THE INTERFACES IT HOLDS: it calls Release once on every non-NULL
 * connections[i], i < count, before freeing. Whoever hands out a Connections AddRefs each object
 * it stores; whoever frees one must not Release the slots itself. */
NAPALLOC_API void NAPALLOC_CALL FreeConnections(Connections *connections);
NAPALLOC_API void NAPALLOC_CALL FreeCountedString(CountedString *countedString);
NAPALLOC_API void NAPALLOC_CALL FreeFixupInfo(FixupInfo *fixupInfo);
NAPALLOC_API void NAPALLOC_CALL FreeIsolationInfo(IsolationInfo *isolationInfo);
NAPALLOC_API void NAPALLOC_CALL FreeIsolationInfoEx(IsolationInfoEx *isolationInfo);
NAPALLOC_API void NAPALLOC_CALL FreeSoH(SoH *soh);
NAPALLOC_API void NAPALLOC_CALL FreeNetworkSoH(NetworkSoH *networkSoh);
NAPALLOC_API void NAPALLOC_CALL FreePrivateData(PrivateData *privateData);
NAPALLOC_API void NAPALLOC_CALL FreeSoHAttributeValue(SoHAttributeType type,
                                                      SoHAttributeValue *value);
NAPALLOC_API void NAPALLOC_CALL FreeNapComponentRegistrationInfoArray(
    UINT16 count, NapComponentRegistrationInfo **info);
NAPALLOC_API void NAPALLOC_CALL FreeSystemHealthAgentState(SystemHealthAgentState *state);

/* ---- napalloc's own entry points ------------------------------------------------------------ */

/* Take the pages of every reservation made from now on from `host` (AddRef'd and kept; napalloc
 * registers its ICLRMemoryNotificationCallback with it). NULL restores the operating system.
 * On eMemoryAvailableLow napalloc gives idle pool memory back at once, through the host's
 * VirtualFree: notify without holding a lock that VirtualFree needs.
 * Reservations made earlier stay with the source they came from and are returned to it.
 * A host whose vtable lacks a method napalloc calls -> E_INVALIDARG, nothing changed. */
NAPALLOC_API HRESULT NAPALLOC_CALL NapallocSetHostMemoryManager(IHostMemoryManager *host);

/* A host that returns E_FAIL is in an unrecoverable state, as for the CLR: from then on napalloc
 * no longer calls it (requests that need pages from it fail at once; released reservations are
 * kept to be given back later). Once the host has recovered, NapallocResetHostFailure makes
 * napalloc call the installed host again and gives it back those reservations: S_OK if it was in
 * the failed state, S_FALSE if it was not or no host is installed. A host installed earlier and
 * replaced since stays failed for the reservations it served. */
NAPALLOC_API HRESULT NAPALLOC_CALL NapallocResetHostFailure(void);

/* The cause behind a NULL / E_OUTOFMEMORY that a host's refusal produced: the HRESULT of the most
 * recent failure a host returned to napalloc, on any thread (HOST_E_TIMEOUT, HOST_E_NOT_OWNER,
 * HOST_E_ABANDONED, HOST_E_CLRNOTAVAILABLE, E_OUTOFMEMORY, E_FAIL, ...); S_OK if there was none.
 * Requests refused while the host is in its failed state do not change it. */
NAPALLOC_API HRESULT NAPALLOC_CALL NapallocGetLastHostError(void);

/* CoTaskMemAlloc at a given critical level: the block is an ordinary task-allocator block (free it
 * with CoTaskMemFree). eTaskCritical may fail at once; eAppDomainCritical trims idle memory and
 * retries before it fails; eProcessCritical may also use the reserve between the soft and the hard
 * limit of NapallocSetBudget. NULL on failure, and for a level EMemoryCriticalLevel does not
 * define. cb == 0 behaves as CoTaskMemAlloc(0). */
NAPALLOC_API void *NAPALLOC_CALL NapallocAllocCritical(SIZE_T cb, EMemoryCriticalLevel level);

/* Budget for committed memory (NapallocStats::committed_bytes), in bytes. A commit that would pass
 * softLimit fails for eTaskCritical and eAppDomainCritical requests (the latter after a trim and a
 * retry); eProcessCritical requests may go on up to hardLimit. 0 means no limit. softLimit >
 * hardLimit with hardLimit != 0 -> E_INVALIDARG, nothing changed. Memory already committed beyond a
 * new limit is not taken back at once; trims return it as it falls idle. */
NAPALLOC_API HRESULT NAPALLOC_CALL NapallocSetBudget(SIZE_T softLimit, SIZE_T hardLimit);

/* Fill *out with the current counters. NULL out -> E_POINTER. */
NAPALLOC_API HRESULT NAPALLOC_CALL NapallocGetStats(NapallocStats *out);

/* Return unused committed memory to the operating system (or the host); the same as
 * IMalloc::HeapMinimize. A heap whose blocks are all freed is decommitted entirely; in one that
 * still holds blocks, every whole page that no live block overlaps is given back to the OS
 * (resident memory drops; the pages stay committed and are reused without a new commit). Pages
 * that came from a host are only decommitted, not given back piecemeal. */
NAPALLOC_API HRESULT NAPALLOC_CALL NapallocHeapMinimize(void);

/* Deliver the calling thread's pending frees of other threads' blocks now (see CoTaskMemFree):
 * call it before handing a thread the news that you freed its blocks, so that its counters and
 * DidAlloc see them freed and a double free of one of them is refused. Always S_OK. */
NAPALLOC_API HRESULT NAPALLOC_CALL NapallocFlushRemoteFrees(void);

/* Request scopes. NapallocScopeEnter starts a scope on the calling thread and returns its handle:
 * task-allocator blocks (CoTaskMem*, IMalloc, the NapUtil Alloc* functions) allocated by this
 * thread until the matching NapallocScopeLeave belong to the scope. NapallocScopeLeave resets the
 * scope: it frees whatever the request leaked (every block of the scope still live, embedded
 * blocks included) and ends it; a later CoTaskMemFree of such a block is a freed pointer (ignored,
 * reported). Scopes are left on the thread that entered them, innermost first.
 *   NapallocScopeEnter(NULL) -> E_POINTER.
 *   NapallocScopeLeave(NULL), or a scope that is not the calling thread's innermost -> E_INVALIDARG,
 *   nothing changed. */
NAPALLOC_API HRESULT NAPALLOC_CALL NapallocScopeEnter(NapallocScope **scope);
NAPALLOC_API HRESULT NAPALLOC_CALL NapallocScopeLeave(NapallocScope *scope);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* NAPALLOC_H */
