//! The C ABI's types, mirrored from `include/napalloc.h`, one for one.
//!
//! Everything here is `#[repr(C)]` (structs, the one union) or `#[repr(transparent)]` (enums) and
//! has the field names of the C header in snake_case (`resultCodes` → `result_codes`; the keyword
//! `type` is `r#type`). The sizes and offsets are checked at compile time against the x86-64
//! numbers of SPEC §3 on every 64-bit target (Windows x64 lays these types out the same way), and
//! `tests/c_abi.rs` checks them against what the C compiler computes from the header.
//!
//! # C enums are newtypes, not Rust enums
//! A C enum parameter can carry any 32-bit value (a caller may cast anything to `FixupState`), and
//! a Rust `enum` holding a value it does not list is undefined behaviour. So each C enum is a
//! `#[repr(transparent)] pub struct X(pub i32)` with its values as associated constants; code
//! that matches on one must handle the values it does not know.
//!
//! # Vtables
//! Vtables napalloc *implements* ([`IMallocVtbl`], [`ICLRMemoryNotificationCallbackVtbl`]) hold
//! plain `unsafe extern "system" fn` pointers. Vtables napalloc *receives from C*
//! ([`IUnknownVtbl`] behind a NAP connection, [`IHostMemoryManagerVtbl`], [`IHostMallocVtbl`])
//! hold `Option<unsafe extern "system" fn>`: same layout (a NULL entry is `None`), but a C caller
//! that leaves an entry NULL cannot make napalloc call address 0 or hold an invalid `fn` value.
//! `extern "system"` is the C convention on x86-64 and `__stdcall` on 32-bit Windows, which is
//! what `STDMETHODCALLTYPE` and `NAPALLOC_CALL` mean in the header.

#![allow(non_camel_case_types)]

use crate::host::CriticalLevel;
use core::ffi::{c_char, c_int, c_void};
use core::fmt;
use core::mem::{align_of, offset_of, size_of};

// ---------------------------------------------------------------------------------------------
// Base types (SPEC §1)
// ---------------------------------------------------------------------------------------------

pub use crate::hr::HRESULT;
pub type UINT8 = u8;
pub type UINT16 = u16;
pub type UINT32 = u32;
pub type ULONG = u32;
pub type DWORD = u32;
/// One UTF-16 code unit (not `wchar_t`).
pub type WCHAR = u16;
pub type SIZE_T = usize;
pub type BYTE = u8;
pub type BOOL = i32;
pub type LPVOID = *mut c_void;

/// `GUID` / `IID` / `CLSID`: 16 bytes, 4-aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Guid {
    pub data1: u32,
    pub data2: u16,
    pub data3: u16,
    pub data4: [u8; 8],
}
pub type GUID = Guid;
pub type IID = Guid;
pub type CLSID = Guid;

impl Guid {
    /// A GUID from its textual groups, `{data1-data2-data3-data4[0..2]-data4[2..8]}`.
    pub const fn new(data1: u32, data2: u16, data3: u16, data4: [u8; 8]) -> Guid {
        Guid { data1, data2, data3, data4 }
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.data4;
        write!(
            f,
            "{{{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}}}",
            self.data1, self.data2, self.data3, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]
        )
    }
}

/// `{00000000-0000-0000-C000-000000000046}`
pub const IID_IUNKNOWN: Guid = Guid::new(0, 0, 0, [0xC0, 0, 0, 0, 0, 0, 0, 0x46]);
/// `{00000002-0000-0000-C000-000000000046}`
pub const IID_IMALLOC: Guid = Guid::new(2, 0, 0, [0xC0, 0, 0, 0, 0, 0, 0, 0x46]);
/// `{7BC698D1-F9E3-4460-9CDE-D04248E9FA25}`
pub const IID_IHOST_MEMORY_MANAGER: Guid =
    Guid::new(0x7BC6_98D1, 0xF9E3, 0x4460, [0x9C, 0xDE, 0xD0, 0x42, 0x48, 0xE9, 0xFA, 0x25]);
/// `{1831991C-CC53-4A31-B218-04E910446479}`
pub const IID_IHOST_MALLOC: Guid =
    Guid::new(0x1831_991C, 0xCC53, 0x4A31, [0xB2, 0x18, 0x04, 0xE9, 0x10, 0x44, 0x64, 0x79]);
/// `{47EB8E57-0846-4546-AF76-6F42FCFC2649}`
pub const IID_ICLR_MEMORY_NOTIFICATION_CALLBACK: Guid =
    Guid::new(0x47EB_8E57, 0x0846, 0x4546, [0xAF, 0x76, 0x6F, 0x42, 0xFC, 0xFC, 0x26, 0x49]);

/// `FILETIME`: 100-ns intervals since 1601-01-01 UTC, in two 32-bit halves (4-aligned).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileTime {
    pub dw_low_date_time: u32,
    pub dw_high_date_time: u32,
}
pub type FILETIME = FileTime;

impl FileTime {
    /// The two halves as one 64-bit count.
    pub const fn as_u64(self) -> u64 {
        ((self.dw_high_date_time as u64) << 32) | self.dw_low_date_time as u64
    }
    /// Split a 64-bit count into the two halves.
    pub const fn from_u64(t: u64) -> FileTime {
        FileTime { dw_low_date_time: t as u32, dw_high_date_time: (t >> 32) as u32 }
    }
}

// ---------------------------------------------------------------------------------------------
// C enums
// ---------------------------------------------------------------------------------------------

/// Declares a C enum as a `#[repr(transparent)]` newtype over `i32`, its values as associated
/// constants, `c_name()` (the C enumerator of a value) and a `Debug` that shows it.
macro_rules! c_enum {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$cmeta:meta])* $konst:ident = $val:literal => $cname:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[repr(transparent)]
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub i32);

        impl $name {
            $( $(#[$cmeta])* pub const $konst: $name = $name($val); )*

            /// The C enumerator with this value, or `None` for a value the C enum does not name.
            pub const fn c_name(self) -> Option<&'static str> {
                match self.0 {
                    $( $val => Some($cname), )*
                    _ => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.c_name() {
                    Some(n) => write!(f, "{}({})", n, self.0),
                    None => write!(f, "{}({})", stringify!($name), self.0),
                }
            }
        }
    };
}

c_enum! {
    /// `IsolationState` (NapTypes.h).
    IsolationState {
        NOT_RESTRICTED = 1 => "isolationStateNotRestricted",
        IN_PROBATION = 2 => "isolationStateInProbation",
        RESTRICTED_ACCESS = 3 => "isolationStateRestrictedAccess",
    }
}

c_enum! {
    /// `ExtendedIsolationState` (NapTypes.h).
    ExtendedIsolationState {
        NO_DATA = 0 => "extendedIsolationStateNoData",
        TRANSITION = 1 => "extendedIsolationStateTransition",
        INFECTED = 2 => "extendedIsolationStateInfected",
        UNKNOWN = 3 => "extendedIsolationStateUnknown",
    }
}

c_enum! {
    /// `NapTracingLevel` (NapTypes.h).
    NapTracingLevel {
        UNDEFINED = 0 => "tracingLevelUndefined",
        BASIC = 1 => "tracingLevelBasic",
        ADVANCED = 2 => "tracingLevelAdvanced",
        DEBUG = 3 => "tracingLevelDebug",
    }
}

c_enum! {
    /// `FailureCategory` (NapTypes.h).
    FailureCategory {
        NONE = 0 => "failureCategoryNone",
        OTHER = 1 => "failureCategoryOther",
        CLIENT_COMPONENT = 2 => "failureCategoryClientComponent",
        CLIENT_COMMUNICATION = 3 => "failureCategoryClientCommunication",
        SERVER_COMPONENT = 4 => "failureCategoryServerComponent",
        SERVER_COMMUNICATION = 5 => "failureCategoryServerCommunication",
    }
}

c_enum! {
    /// `FixupState` (NapTypes.h).
    FixupState {
        SUCCESS = 0 => "fixupStateSuccess",
        IN_PROGRESS = 1 => "fixupStateInProgress",
        COULD_NOT_UPDATE = 2 => "fixupStateCouldNotUpdate",
    }
}

c_enum! {
    /// `NapNotifyType` (NapTypes.h).
    NapNotifyType {
        UNKNOWN = 0 => "napNotifyTypeUnknown",
        SERVICE_STATE = 1 => "napNotifyTypeServiceState",
        QUAR_STATE = 2 => "napNotifyTypeQuarState",
    }
}

c_enum! {
    /// `RemoteConfigurationType` (NapTypes.h).
    RemoteConfigurationType {
        MACHINE = 1 => "remoteConfigTypeMachine",
        CONFIG_BLOB = 2 => "remoteConfigTypeConfigBlob",
    }
}

c_enum! {
    /// `SoHAttributeType` (NapProtocol.h): which member of a [`SoHAttributeValue`] is in use.
    SoHAttributeType {
        SYSTEM_HEALTH_ID = 2 => "sohAttributeTypeSystemHealthId",
        IPV4_FIXUP_SERVERS = 3 => "sohAttributeTypeIpv4FixupServers",
        COMPLIANCE_RESULT_CODES = 4 => "sohAttributeTypeComplianceResultCodes",
        TIME_OF_LAST_UPDATE = 5 => "sohAttributeTypeTimeOfLastUpdate",
        CLIENT_ID = 6 => "sohAttributeTypeClientId",
        VENDOR_SPECIFIC = 7 => "sohAttributeTypeVendorSpecific",
        HEALTH_CLASS = 8 => "sohAttributeTypeHealthClass",
        SOFTWARE_VERSION = 9 => "sohAttributeTypeSoftwareVersion",
        PRODUCT_NAME = 10 => "sohAttributeTypeProductName",
        HEALTH_CLASS_STATUS = 11 => "sohAttributeTypeHealthClassStatus",
        SOH_GENERATION_TIME = 12 => "sohAttributeTypeSoHGenerationTime",
        ERROR_CODES = 13 => "sohAttributeTypeErrorCodes",
        FAILURE_CATEGORY = 14 => "sohAttributeTypeFailureCategory",
        IPV6_FIXUP_SERVERS = 15 => "sohAttributeTypeIpv6FixupServers",
        EXTENDED_ISOLATION_STATE = 16 => "sohAttributeTypeExtendedIsolationState",
    }
}

c_enum! {
    /// `HealthClassValue` (NapProtocol.h).
    HealthClassValue {
        FIREWALL = 0 => "healthClassFirewall",
        PATCH_LEVEL = 1 => "healthClassPatchLevel",
        ANTI_VIRUS = 2 => "healthClassAntiVirus",
        CRITICAL_UPDATE = 3 => "healthClassCriticalUpdate",
        RESERVED = 128 => "healthClassReserved",
    }
}

c_enum! {
    /// `EMemoryCriticalLevel` (mscoree.h): how bad a failed allocation would be.
    /// See [`CriticalLevel`] for what napalloc does at each level.
    EMemoryCriticalLevel {
        TASK_CRITICAL = 0 => "eTaskCritical",
        APP_DOMAIN_CRITICAL = 1 => "eAppDomainCritical",
        PROCESS_CRITICAL = 2 => "eProcessCritical",
    }
}

c_enum! {
    /// `EMemoryAvailable` (mscoree.h): the memory load a host reports through
    /// `ICLRMemoryNotificationCallback::OnMemoryNotification`.
    EMemoryAvailable {
        LOW = 1 => "eMemoryAvailableLow",
        NEUTRAL = 2 => "eMemoryAvailableNeutral",
        HIGH = 3 => "eMemoryAvailableHigh",
    }
}

c_enum! {
    /// `MALLOC_TYPE` (mscoree.h), the flags of `IHostMemoryManager::CreateMalloc`.
    MallocType {
        THREADSAFE = 1 => "MALLOC_THREADSAFE",
        EXECUTABLE = 2 => "MALLOC_EXECUTABLE",
    }
}
pub type MALLOC_TYPE = MallocType;

impl EMemoryCriticalLevel {
    /// The Rust critical level, or `None` for a value mscoree.h does not define (the C ABI
    /// answers those with `E_INVALIDARG`).
    pub const fn critical_level(self) -> Option<CriticalLevel> {
        match self {
            EMemoryCriticalLevel::TASK_CRITICAL => Some(CriticalLevel::Task),
            EMemoryCriticalLevel::APP_DOMAIN_CRITICAL => Some(CriticalLevel::AppDomain),
            EMemoryCriticalLevel::PROCESS_CRITICAL => Some(CriticalLevel::Process),
            _ => None,
        }
    }
}

impl From<CriticalLevel> for EMemoryCriticalLevel {
    fn from(level: CriticalLevel) -> Self {
        match level {
            CriticalLevel::Task => EMemoryCriticalLevel::TASK_CRITICAL,
            CriticalLevel::AppDomain => EMemoryCriticalLevel::APP_DOMAIN_CRITICAL,
            CriticalLevel::Process => EMemoryCriticalLevel::PROCESS_CRITICAL,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Constants (NapTypes.h, winnt.h)
// ---------------------------------------------------------------------------------------------

/// `maxConnectionCountPerEnforcer`: the most connections `AllocConnections` accepts.
pub const MAX_CONNECTION_COUNT_PER_ENFORCER: u16 = 20;
/// `maxStringLength`: the longest `CountedString`, in characters, excluding the NUL.
pub const MAX_STRING_LENGTH: u16 = 1024;
/// `maxStringLengthInBytes`: a longest string with its NUL, in bytes.
pub const MAX_STRING_LENGTH_IN_BYTES: usize = (MAX_STRING_LENGTH as usize + 1) * size_of::<WCHAR>();
/// `maxSoHAttributeCount`.
pub const MAX_SOH_ATTRIBUTE_COUNT: u16 = 100;
/// `maxSoHAttributeSize`, in bytes.
pub const MAX_SOH_ATTRIBUTE_SIZE: u16 = 4000;
/// `minNetworkSoHSize`, in bytes.
pub const MIN_NETWORK_SOH_SIZE: u16 = 12;
/// `maxNetworkSoHSize`, in bytes.
pub const MAX_NETWORK_SOH_SIZE: u16 = 4000;
/// `maxPrivateDataSize`, in bytes.
pub const MAX_PRIVATE_DATA_SIZE: u16 = 200;
/// `maxDwordCountPerSoHAttribute` (= `maxSoHAttributeSize / sizeof(DWORD)`): also the most result
/// codes `AllocFixupInfo` accepts.
pub const MAX_DWORD_COUNT_PER_SOH_ATTRIBUTE: u16 = MAX_SOH_ATTRIBUTE_SIZE / 4;
/// `maxIpv4CountPerSoHAttribute`.
pub const MAX_IPV4_COUNT_PER_SOH_ATTRIBUTE: u16 = MAX_SOH_ATTRIBUTE_SIZE / 4;
/// `maxIpv6CountPerSoHAttribute`.
pub const MAX_IPV6_COUNT_PER_SOH_ATTRIBUTE: u16 = MAX_SOH_ATTRIBUTE_SIZE / 16;
/// `percentageNotSupported`: a `FixupInfo::percentage` that means "unknown".
pub const PERCENTAGE_NOT_SUPPORTED: u8 = 101;
/// `maxSystemHealthEntityCount`.
pub const MAX_SYSTEM_HEALTH_ENTITY_COUNT: u16 = 20;
/// `maxEnforcerCount`.
pub const MAX_ENFORCER_COUNT: u16 = 20;
/// `maxCachedSoHCount`.
pub const MAX_CACHED_SOH_COUNT: u32 =
    MAX_SYSTEM_HEALTH_ENTITY_COUNT as u32 * MAX_ENFORCER_COUNT as u32 * MAX_CONNECTION_COUNT_PER_ENFORCER as u32;
/// `failureCategoryCount`.
pub const FAILURE_CATEGORY_COUNT: usize = 5;
/// `freshSoHRequest`.
pub const FRESH_SOH_REQUEST: u32 = 0x1;
/// `shaFixup`.
pub const SHA_FIXUP: u32 = 0x1;
/// `ComponentTypeEnforcementClientSoH`.
pub const COMPONENT_TYPE_ENFORCEMENT_CLIENT_SOH: u32 = 0x1;
/// `ComponentTypeEnforcementClientRp`.
pub const COMPONENT_TYPE_ENFORCEMENT_CLIENT_RP: u32 = 0x2;

/// `MEM_COMMIT`.
pub const MEM_COMMIT: DWORD = 0x0000_1000;
/// `MEM_RESERVE`.
pub const MEM_RESERVE: DWORD = 0x0000_2000;
/// `MEM_DECOMMIT`.
pub const MEM_DECOMMIT: DWORD = 0x0000_4000;
/// `MEM_RELEASE`.
pub const MEM_RELEASE: DWORD = 0x0000_8000;
/// `MEM_RESET` (lazy discard: `MADV_FREE`, not a decommit).
pub const MEM_RESET: DWORD = 0x0008_0000;
/// `PAGE_NOACCESS`.
pub const PAGE_NOACCESS: DWORD = 0x01;
/// `PAGE_READWRITE`.
pub const PAGE_READWRITE: DWORD = 0x04;

// ---------------------------------------------------------------------------------------------
// COM objects
// ---------------------------------------------------------------------------------------------

/// `QueryInterface(This, riid, ppvObject)`.
pub type QueryInterfaceFn<T> =
    unsafe extern "system" fn(this: *mut T, riid: *const Guid, ppv_object: *mut *mut c_void) -> HRESULT;
/// `AddRef(This)` / `Release(This)`: the new reference count (for diagnostics only).
pub type RefCountFn<T> = unsafe extern "system" fn(this: *mut T) -> ULONG;

/// The first three entries of every vtable, as napalloc reads them from objects it receives.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IUnknownVtbl {
    pub query_interface: Option<QueryInterfaceFn<ComObject>>,
    pub add_ref: Option<RefCountFn<ComObject>>,
    pub release: Option<RefCountFn<ComObject>>,
}

/// The header of any COM object: a pointer to a vtable that starts with [`IUnknownVtbl`].
/// A COM interface pointer is a `*mut ComObject`.
#[repr(C)]
#[derive(Debug)]
pub struct ComObject {
    pub vtbl: *const IUnknownVtbl,
}
pub type IUnknown = ComObject;
/// A NAP enforcement-client connection: to napalloc an opaque COM object it only `Release`s.
pub type INapEnforcementClientConnection = ComObject;

impl ComObject {
    /// Call `Release` on `this`; returns what it returned, or `None` (and calls nothing) if the
    /// object has a NULL vtable or a NULL `Release` entry.
    ///
    /// # Safety
    /// `this` is non-NULL and points to a live COM object whose vtable pointer is NULL or points
    /// to a readable vtable of at least three entries; the caller owns the reference it releases.
    pub unsafe fn release(this: *mut ComObject) -> Option<ULONG> {
        // SAFETY: `this` points to a live object (caller's guarantee); its vtable pointer is NULL
        // or points to a readable vtable.
        let vtbl = unsafe { (*this).vtbl.as_ref() }?;
        let release = vtbl.release?;
        // SAFETY: the entry is the object's own Release, called with the object, and the caller
        // gives up the reference it owns.
        Some(unsafe { release(this) })
    }

    /// Call `AddRef` on `this`; `None` (and nothing called) for a NULL vtable or entry.
    ///
    /// # Safety
    /// As for [`ComObject::release`], except that a reference is taken instead of given up.
    pub unsafe fn add_ref(this: *mut ComObject) -> Option<ULONG> {
        // SAFETY: as in `release`.
        let vtbl = unsafe { (*this).vtbl.as_ref() }?;
        let add_ref = vtbl.add_ref?;
        // SAFETY: the object's own AddRef, called with the object.
        Some(unsafe { add_ref(this) })
    }
}

/// `IMalloc` (objidl.h): the COM task allocator as an interface. napalloc implements it.
#[repr(C)]
#[derive(Debug)]
pub struct IMalloc {
    pub vtbl: *const IMallocVtbl,
}
pub type LPMALLOC = *mut IMalloc;

// SAFETY: an IMalloc is one pointer to an immutable vtable of `extern fn`s; nothing can be
// written through a shared `&IMalloc`, and napalloc's IMalloc methods are thread-safe (the task
// heap is). This lets the process-wide instance be a `static`.
unsafe impl Sync for IMalloc {}
// SAFETY: as above.
unsafe impl Send for IMalloc {}

/// The `IMalloc` vtable, in objidl.h order (SPEC §5).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IMallocVtbl {
    pub query_interface: QueryInterfaceFn<IMalloc>,
    pub add_ref: RefCountFn<IMalloc>,
    pub release: RefCountFn<IMalloc>,
    /// `void *Alloc(This, SIZE_T cb)`
    pub alloc: unsafe extern "system" fn(this: *mut IMalloc, cb: SIZE_T) -> *mut c_void,
    /// `void *Realloc(This, void *pv, SIZE_T cb)`
    pub realloc: unsafe extern "system" fn(this: *mut IMalloc, pv: *mut c_void, cb: SIZE_T) -> *mut c_void,
    /// `void Free(This, void *pv)`
    pub free: unsafe extern "system" fn(this: *mut IMalloc, pv: *mut c_void),
    /// `SIZE_T GetSize(This, void *pv)`: `(SIZE_T)-1` for NULL.
    pub get_size: unsafe extern "system" fn(this: *mut IMalloc, pv: *mut c_void) -> SIZE_T,
    /// `int DidAlloc(This, void *pv)`: 1 own block, 0 not, -1 for NULL.
    pub did_alloc: unsafe extern "system" fn(this: *mut IMalloc, pv: *mut c_void) -> c_int,
    /// `void HeapMinimize(This)`
    pub heap_minimize: unsafe extern "system" fn(this: *mut IMalloc),
}

// ---------------------------------------------------------------------------------------------
// CLR hosting (mscoree.h)
// ---------------------------------------------------------------------------------------------

/// `ICLRMemoryNotificationCallback`: napalloc implements it and registers it with a host.
#[repr(C)]
#[derive(Debug)]
pub struct ICLRMemoryNotificationCallback {
    pub vtbl: *const ICLRMemoryNotificationCallbackVtbl,
}

// SAFETY: one pointer to an immutable vtable; see `IMalloc`. napalloc's OnMemoryNotification only
// stores the level in an atomic.
unsafe impl Sync for ICLRMemoryNotificationCallback {}
// SAFETY: as above.
unsafe impl Send for ICLRMemoryNotificationCallback {}

/// The `ICLRMemoryNotificationCallback` vtable.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ICLRMemoryNotificationCallbackVtbl {
    pub query_interface: QueryInterfaceFn<ICLRMemoryNotificationCallback>,
    pub add_ref: RefCountFn<ICLRMemoryNotificationCallback>,
    pub release: RefCountFn<ICLRMemoryNotificationCallback>,
    /// `HRESULT OnMemoryNotification(This, EMemoryAvailable)`; must not block.
    pub on_memory_notification: unsafe extern "system" fn(
        this: *mut ICLRMemoryNotificationCallback,
        e_memory_available: EMemoryAvailable,
    ) -> HRESULT,
}

/// `IHostMalloc`: a heap of the host's. napalloc never calls it; declared for `CreateMalloc`.
#[repr(C)]
#[derive(Debug)]
pub struct IHostMalloc {
    pub vtbl: *const IHostMallocVtbl,
}

/// The `IHostMalloc` vtable (received from C: entries may be NULL).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IHostMallocVtbl {
    pub query_interface: Option<QueryInterfaceFn<IHostMalloc>>,
    pub add_ref: Option<RefCountFn<IHostMalloc>>,
    pub release: Option<RefCountFn<IHostMalloc>>,
    pub alloc: Option<
        unsafe extern "system" fn(
            this: *mut IHostMalloc,
            cb_size: SIZE_T,
            e_critical_level: EMemoryCriticalLevel,
            pp_mem: *mut *mut c_void,
        ) -> HRESULT,
    >,
    pub debug_alloc: Option<
        unsafe extern "system" fn(
            this: *mut IHostMalloc,
            cb_size: SIZE_T,
            e_critical_level: EMemoryCriticalLevel,
            psz_file_name: *mut c_char,
            i_line_no: c_int,
            pp_mem: *mut *mut c_void,
        ) -> HRESULT,
    >,
    pub free: Option<unsafe extern "system" fn(this: *mut IHostMalloc, p_mem: *mut c_void) -> HRESULT>,
}

/// `IHostMemoryManager`: a host's page source.
#[repr(C)]
#[derive(Debug)]
pub struct IHostMemoryManager {
    pub vtbl: *const IHostMemoryManagerVtbl,
}

/// The `IHostMemoryManager` vtable in mscoree.h order (received from C: entries may be NULL).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IHostMemoryManagerVtbl {
    pub query_interface: Option<QueryInterfaceFn<IHostMemoryManager>>,
    pub add_ref: Option<RefCountFn<IHostMemoryManager>>,
    pub release: Option<RefCountFn<IHostMemoryManager>>,
    /// `CreateMalloc(DWORD dwMallocType, IHostMalloc **ppMalloc)`
    pub create_malloc: Option<
        unsafe extern "system" fn(
            this: *mut IHostMemoryManager,
            dw_malloc_type: DWORD,
            pp_malloc: *mut *mut IHostMalloc,
        ) -> HRESULT,
    >,
    /// `VirtualAlloc(void *pAddress, SIZE_T dwSize, DWORD flAllocationType, DWORD flProtect,
    /// EMemoryCriticalLevel eCriticalLevel, void **ppMem)`; `*ppMem = NULL` on failure.
    pub virtual_alloc: Option<
        unsafe extern "system" fn(
            this: *mut IHostMemoryManager,
            p_address: *mut c_void,
            dw_size: SIZE_T,
            fl_allocation_type: DWORD,
            fl_protect: DWORD,
            e_critical_level: EMemoryCriticalLevel,
            pp_mem: *mut *mut c_void,
        ) -> HRESULT,
    >,
    /// `VirtualFree(LPVOID lpAddress, SIZE_T dwSize, DWORD dwFreeType)`
    pub virtual_free: Option<
        unsafe extern "system" fn(
            this: *mut IHostMemoryManager,
            lp_address: LPVOID,
            dw_size: SIZE_T,
            dw_free_type: DWORD,
        ) -> HRESULT,
    >,
    /// `VirtualQuery(void *lpAddress, void *lpBuffer, SIZE_T dwLength, SIZE_T *pResult)`
    pub virtual_query: Option<
        unsafe extern "system" fn(
            this: *mut IHostMemoryManager,
            lp_address: *mut c_void,
            lp_buffer: *mut c_void,
            dw_length: SIZE_T,
            p_result: *mut SIZE_T,
        ) -> HRESULT,
    >,
    /// `VirtualProtect(void *lpAddress, SIZE_T dwSize, DWORD flNewProtect, DWORD *pflOldProtect)`
    pub virtual_protect: Option<
        unsafe extern "system" fn(
            this: *mut IHostMemoryManager,
            lp_address: *mut c_void,
            dw_size: SIZE_T,
            fl_new_protect: DWORD,
            pfl_old_protect: *mut DWORD,
        ) -> HRESULT,
    >,
    /// `GetMemoryLoad(DWORD *pMemoryLoad, SIZE_T *pAvailableBytes)`
    pub get_memory_load: Option<
        unsafe extern "system" fn(
            this: *mut IHostMemoryManager,
            p_memory_load: *mut DWORD,
            p_available_bytes: *mut SIZE_T,
        ) -> HRESULT,
    >,
    /// `RegisterMemoryNotificationCallback(ICLRMemoryNotificationCallback *pCallback)`
    pub register_memory_notification_callback: Option<
        unsafe extern "system" fn(
            this: *mut IHostMemoryManager,
            p_callback: *mut ICLRMemoryNotificationCallback,
        ) -> HRESULT,
    >,
    /// `NeedsVirtualAddressSpace(LPVOID startAddress, SIZE_T size)`
    pub needs_virtual_address_space: Option<
        unsafe extern "system" fn(this: *mut IHostMemoryManager, start_address: LPVOID, size: SIZE_T) -> HRESULT,
    >,
    /// `AcquiredVirtualAddressSpace(LPVOID startAddress, SIZE_T size)`
    pub acquired_virtual_address_space: Option<
        unsafe extern "system" fn(this: *mut IHostMemoryManager, start_address: LPVOID, size: SIZE_T) -> HRESULT,
    >,
    /// `ReleasedVirtualAddressSpace(LPVOID startAddress)`
    pub released_virtual_address_space:
        Option<unsafe extern "system" fn(this: *mut IHostMemoryManager, start_address: LPVOID) -> HRESULT>,
}

// ---------------------------------------------------------------------------------------------
// NAP structures (SPEC §3)
// ---------------------------------------------------------------------------------------------

/// `Connections` (NapEnforcementClient.h).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Connections {
    /// `0..=MAX_CONNECTION_COUNT_PER_ENFORCER`.
    pub count: u16,
    /// `count` interface pointers (`size_is(count)`); each non-NULL one is an owned reference.
    pub connections: *mut *mut INapEnforcementClientConnection,
}

/// `CountedString`: `length` UTF-16 units before the NUL that `string` also holds.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CountedString {
    pub length: u16,
    pub string: *mut WCHAR,
}
pub type StringCorrelationId = CountedString;

/// `ResultCodes`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ResultCodes {
    pub count: u16,
    /// `count` HRESULTs (`size_is(count)`).
    pub results: *mut HRESULT,
}

/// `FixupInfo`: 32 bytes, fields at 0, 4, 8, 24.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FixupInfo {
    pub state: FixupState,
    /// 0..=100, or [`PERCENTAGE_NOT_SUPPORTED`].
    pub percentage: u8,
    pub result_codes: ResultCodes,
    pub fixup_msg_id: u32,
}

/// `SystemHealthAgentState`: 64 bytes, fields at 0, 8, 24, 32.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SystemHealthAgentState {
    pub id: u32,
    pub sha_result_codes: ResultCodes,
    pub failure_category: FailureCategory,
    pub fixup_info: FixupInfo,
}

/// `SoHAttribute`: one type-length-value attribute of a statement of health.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SoHAttribute {
    pub r#type: u16,
    pub size: u16,
    /// `size` bytes (`size_is(size)`).
    pub value: *mut u8,
}

/// `SoH` (also `SoHRequest`, `SoHResponse`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SoH {
    pub count: u16,
    /// `count` attributes, one block.
    pub attributes: *mut SoHAttribute,
}
pub type SoHRequest = SoH;
pub type SoHResponse = SoH;

/// `NetworkSoH` (also `NetworkSoHRequest`, `NetworkSoHResponse`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetworkSoH {
    pub size: u16,
    pub data: *mut u8,
}
pub type NetworkSoHRequest = NetworkSoH;
pub type NetworkSoHResponse = NetworkSoH;

/// `PrivateData`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PrivateData {
    pub size: u16,
    pub data: *mut u8,
}

/// `IsolationInfo`: 32 bytes, `failure_url` at 16.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IsolationInfo {
    pub isolation_state: IsolationState,
    /// `ProbationTime`.
    pub prob_end_time: FileTime,
    pub failure_url: CountedString,
}

/// `IsolationInfoEx`: 32 bytes, `failure_url` at 16.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IsolationInfoEx {
    pub isolation_state: IsolationState,
    pub extended_isolation_state: ExtendedIsolationState,
    pub prob_end_time: FileTime,
    pub failure_url: CountedString,
}

/// `NapComponentRegistrationInfo`: 120 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NapComponentRegistrationInfo {
    pub id: u32,
    pub friendly_name: CountedString,
    pub description: CountedString,
    pub version: CountedString,
    pub vendor_name: CountedString,
    pub info_clsid: Guid,
    pub config_clsid: Guid,
    pub registration_date: FileTime,
    pub component_type: u32,
}

/// `FailureCategoryMapping`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailureCategoryMapping {
    pub mapping_compliance: [BOOL; FAILURE_CATEGORY_COUNT],
}

/// `CorrelationId`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CorrelationId {
    pub conn_id: Guid,
    pub time_stamp: FileTime,
}

/// `Ipv4Address`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ipv4Address {
    pub addr: [u8; 4],
}

/// `Ipv6Address`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ipv6Address {
    pub addr: [u8; 16],
}

/// `struct tagIpv4Addresses`, the `v4AddressesVal` member of [`SoHAttributeValue`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Addresses {
    pub count: u16,
    pub addresses: *mut Ipv4Address,
}

/// `struct tagIpv6Addresses`, the `v6AddressesVal` member of [`SoHAttributeValue`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Ipv6Addresses {
    pub count: u16,
    pub addresses: *mut Ipv6Address,
}

/// `struct tagVendorSpecific`, the `vendorSpecificVal` member of [`SoHAttributeValue`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VendorSpecific {
    pub vendor_id: u32,
    pub size: u16,
    pub vendor_specific_data: *mut u8,
}

/// `struct tagOctetString`, the `octetStringVal` member of [`SoHAttributeValue`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OctetString {
    pub size: u16,
    pub data: *mut u8,
}

/// `SoHAttributeValue` (NapProtocol.h): 16 bytes, the member in use chosen by a
/// [`SoHAttributeType`] (see [`SoHAttributeType::value_member`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub union SoHAttributeValue {
    pub id_val: u32,
    pub v4_addresses_val: Ipv4Addresses,
    pub v6_addresses_val: Ipv6Addresses,
    pub codes_val: ResultCodes,
    pub date_time_val: FileTime,
    pub vendor_specific_val: VendorSpecific,
    pub uint8_val: u8,
    pub octet_string_val: OctetString,
}

impl fmt::Debug for SoHAttributeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Which member is live is not known here, and reading one would need `unsafe`.
        f.write_str("SoHAttributeValue { .. }")
    }
}

/// The member of a [`SoHAttributeValue`] that a [`SoHAttributeType`] selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SoHValueMember {
    /// `idVal` (no pointer).
    IdVal,
    /// `v4AddressesVal` (`addresses`).
    V4AddressesVal,
    /// `v6AddressesVal` (`addresses`).
    V6AddressesVal,
    /// `codesVal` (`results`).
    CodesVal,
    /// `dateTimeVal` (no pointer).
    DateTimeVal,
    /// `vendorSpecificVal` (`vendorSpecificData`).
    VendorSpecificVal,
    /// `uint8Val` (no pointer).
    Uint8Val,
    /// `octetStringVal` (`data`).
    OctetStringVal,
}

impl SoHValueMember {
    /// True if the member embeds a pointer (which `FreeSoHAttributeValue` frees).
    pub const fn has_pointer(self) -> bool {
        !matches!(self, SoHValueMember::IdVal | SoHValueMember::DateTimeVal | SoHValueMember::Uint8Val)
    }
}

impl SoHAttributeType {
    /// The member of [`SoHAttributeValue`] this type selects (SPEC §3). Every type the table does
    /// not list, including values NapProtocol.h does not define, selects the octet string.
    pub const fn value_member(self) -> SoHValueMember {
        match self {
            SoHAttributeType::SYSTEM_HEALTH_ID => SoHValueMember::IdVal,
            SoHAttributeType::IPV4_FIXUP_SERVERS => SoHValueMember::V4AddressesVal,
            SoHAttributeType::IPV6_FIXUP_SERVERS => SoHValueMember::V6AddressesVal,
            SoHAttributeType::COMPLIANCE_RESULT_CODES | SoHAttributeType::ERROR_CODES => SoHValueMember::CodesVal,
            SoHAttributeType::TIME_OF_LAST_UPDATE | SoHAttributeType::SOH_GENERATION_TIME => {
                SoHValueMember::DateTimeVal
            }
            SoHAttributeType::VENDOR_SPECIFIC => SoHValueMember::VendorSpecificVal,
            SoHAttributeType::HEALTH_CLASS
            | SoHAttributeType::FAILURE_CATEGORY
            | SoHAttributeType::EXTENDED_ISOLATION_STATE => SoHValueMember::Uint8Val,
            _ => SoHValueMember::OctetStringVal,
        }
    }
}

impl SoHAttributeValue {
    /// The embedded pointer of the member `ty` selects, or `None` if that member has none. For a
    /// member without a pointer nothing is read.
    ///
    /// # Safety
    /// If `ty` selects a member with a pointer, that member was initialised (its pointer field at
    /// offset 8 holds an initialised value, possibly NULL).
    pub unsafe fn embedded_pointer(&self, ty: SoHAttributeType) -> Option<*mut c_void> {
        // SAFETY: the caller guarantees the selected member is initialised; every member is
        // plain data, valid for any bit pattern.
        unsafe {
            Some(match ty.value_member() {
                SoHValueMember::IdVal | SoHValueMember::DateTimeVal | SoHValueMember::Uint8Val => return None,
                SoHValueMember::V4AddressesVal => self.v4_addresses_val.addresses.cast(),
                SoHValueMember::V6AddressesVal => self.v6_addresses_val.addresses.cast(),
                SoHValueMember::CodesVal => self.codes_val.results.cast(),
                SoHValueMember::VendorSpecificVal => self.vendor_specific_val.vendor_specific_data.cast(),
                SoHValueMember::OctetStringVal => self.octet_string_val.data.cast(),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// napalloc's own types
// ---------------------------------------------------------------------------------------------

/// `NapallocStats`: what `NapallocGetStats` fills in. All counters are process-wide.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NapallocStats {
    /// Blocks handed out and not yet freed.
    pub live_blocks: u64,
    /// Bytes requested for those blocks.
    pub live_bytes: u64,
    /// Memory committed from the OS or the host.
    pub committed_bytes: u64,
    /// Address space reserved.
    pub reserved_bytes: u64,
    /// Frees and reallocs of foreign, interior or already freed pointers.
    pub bad_pointer_reports: u64,
    /// Allocations that returned NULL or `E_OUTOFMEMORY`.
    pub failed_allocations: u64,
    /// Times unused committed memory was returned to the OS or the host.
    pub trims: u64,
}

impl From<crate::heap::HeapStats> for NapallocStats {
    fn from(s: crate::heap::HeapStats) -> Self {
        NapallocStats {
            live_blocks: s.live_blocks,
            live_bytes: s.live_bytes,
            committed_bytes: s.committed_bytes,
            reserved_bytes: s.reserved_bytes,
            bad_pointer_reports: s.bad_pointers,
            failed_allocations: s.failed_allocations,
            trims: s.trims,
        }
    }
}

/// `NapallocScope`: opaque to C. The task heap hands out pointers to its own scope type cast to
/// `*mut NapallocScope`; this type only names the pointee in signatures.
#[repr(C)]
#[derive(Debug)]
pub struct NapallocScope {
    _opaque: [u8; 0],
    _not_send_sync: core::marker::PhantomData<*mut u8>,
}

// ---------------------------------------------------------------------------------------------
// Layout checks: SPEC §3 numbers (x86-64, and every other 64-bit target)
// ---------------------------------------------------------------------------------------------

macro_rules! check_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(size_of::<$t>() == $n, concat!("size_of::<", stringify!($t), ">() != ", stringify!($n)));
    };
}
macro_rules! check_offset {
    ($t:ty, $f:ident, $n:expr) => {
        const _: () = assert!(
            offset_of!($t, $f) == $n,
            concat!("offset_of!(", stringify!($t), ", ", stringify!($f), ") != ", stringify!($n))
        );
    };
}

// Independent of the pointer width.
check_size!(Guid, 16);
check_size!(FileTime, 8);
check_offset!(FileTime, dw_high_date_time, 4);
check_size!(FixupState, 4);
check_size!(FailureCategory, 4);
check_size!(IsolationState, 4);
check_size!(ExtendedIsolationState, 4);
check_size!(SoHAttributeType, 4);
check_size!(EMemoryCriticalLevel, 4);
check_size!(EMemoryAvailable, 4);
check_size!(Ipv4Address, 4);
check_size!(Ipv6Address, 16);
check_size!(NapallocStats, 56);
check_offset!(NapallocStats, trims, 48);
const _: () = assert!(align_of::<FileTime>() == 4 && align_of::<Guid>() == 4);

#[cfg(target_pointer_width = "64")]
mod layout64 {
    use super::*;

    check_size!(Connections, 16);
    check_offset!(Connections, connections, 8);
    check_size!(CountedString, 16);
    check_offset!(CountedString, string, 8);
    check_size!(ResultCodes, 16);
    check_offset!(ResultCodes, results, 8);
    check_size!(FixupInfo, 32);
    check_offset!(FixupInfo, percentage, 4);
    check_offset!(FixupInfo, result_codes, 8);
    check_offset!(FixupInfo, fixup_msg_id, 24);
    check_size!(SystemHealthAgentState, 64);
    check_offset!(SystemHealthAgentState, sha_result_codes, 8);
    check_offset!(SystemHealthAgentState, failure_category, 24);
    check_offset!(SystemHealthAgentState, fixup_info, 32);
    check_size!(SoHAttribute, 16);
    check_offset!(SoHAttribute, size, 2);
    check_offset!(SoHAttribute, value, 8);
    check_size!(SoH, 16);
    check_offset!(SoH, attributes, 8);
    check_size!(NetworkSoH, 16);
    check_offset!(NetworkSoH, data, 8);
    check_size!(PrivateData, 16);
    check_offset!(PrivateData, data, 8);
    check_size!(IsolationInfo, 32);
    check_offset!(IsolationInfo, prob_end_time, 4);
    check_offset!(IsolationInfo, failure_url, 16);
    check_size!(IsolationInfoEx, 32);
    check_offset!(IsolationInfoEx, extended_isolation_state, 4);
    check_offset!(IsolationInfoEx, prob_end_time, 8);
    check_offset!(IsolationInfoEx, failure_url, 16);
    check_size!(NapComponentRegistrationInfo, 120);
    check_offset!(NapComponentRegistrationInfo, friendly_name, 8);
    check_offset!(NapComponentRegistrationInfo, description, 24);
    check_offset!(NapComponentRegistrationInfo, version, 40);
    check_offset!(NapComponentRegistrationInfo, vendor_name, 56);
    check_offset!(NapComponentRegistrationInfo, info_clsid, 72);
    check_offset!(NapComponentRegistrationInfo, config_clsid, 88);
    check_offset!(NapComponentRegistrationInfo, registration_date, 104);
    check_offset!(NapComponentRegistrationInfo, component_type, 112);
    check_size!(Ipv4Addresses, 16);
    check_offset!(Ipv4Addresses, addresses, 8);
    check_size!(Ipv6Addresses, 16);
    check_offset!(Ipv6Addresses, addresses, 8);
    check_size!(VendorSpecific, 16);
    check_offset!(VendorSpecific, size, 4);
    check_offset!(VendorSpecific, vendor_specific_data, 8);
    check_size!(OctetString, 16);
    check_offset!(OctetString, data, 8);
    check_size!(SoHAttributeValue, 16);
    check_offset!(SoHAttributeValue, codes_val, 0);
    check_offset!(SoHAttributeValue, octet_string_val, 0);
    const _: () = assert!(align_of::<SoHAttributeValue>() == 8);

    check_size!(ComObject, 8);
    check_size!(IUnknownVtbl, 3 * 8);
    check_offset!(IUnknownVtbl, release, 2 * 8);
    check_size!(IMallocVtbl, 9 * 8);
    check_offset!(IMallocVtbl, alloc, 3 * 8);
    check_offset!(IMallocVtbl, realloc, 4 * 8);
    check_offset!(IMallocVtbl, free, 5 * 8);
    check_offset!(IMallocVtbl, get_size, 6 * 8);
    check_offset!(IMallocVtbl, did_alloc, 7 * 8);
    check_offset!(IMallocVtbl, heap_minimize, 8 * 8);
    check_size!(ICLRMemoryNotificationCallbackVtbl, 4 * 8);
    check_offset!(ICLRMemoryNotificationCallbackVtbl, on_memory_notification, 3 * 8);
    check_size!(IHostMallocVtbl, 6 * 8);
    check_offset!(IHostMallocVtbl, free, 5 * 8);
    check_size!(IHostMemoryManagerVtbl, 13 * 8);
    check_offset!(IHostMemoryManagerVtbl, create_malloc, 3 * 8);
    check_offset!(IHostMemoryManagerVtbl, virtual_alloc, 4 * 8);
    check_offset!(IHostMemoryManagerVtbl, virtual_free, 5 * 8);
    check_offset!(IHostMemoryManagerVtbl, virtual_query, 6 * 8);
    check_offset!(IHostMemoryManagerVtbl, virtual_protect, 7 * 8);
    check_offset!(IHostMemoryManagerVtbl, get_memory_load, 8 * 8);
    check_offset!(IHostMemoryManagerVtbl, register_memory_notification_callback, 9 * 8);
    check_offset!(IHostMemoryManagerVtbl, needs_virtual_address_space, 10 * 8);
    check_offset!(IHostMemoryManagerVtbl, acquired_virtual_address_space, 11 * 8);
    check_offset!(IHostMemoryManagerVtbl, released_virtual_address_space, 12 * 8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU32, Ordering};

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn sizes_and_offsets_match_spec() {
        assert_eq!(size_of::<Connections>(), 16);
        assert_eq!(offset_of!(Connections, connections), 8);
        assert_eq!(size_of::<FixupInfo>(), 32);
        assert_eq!(
            [
                offset_of!(FixupInfo, state),
                offset_of!(FixupInfo, percentage),
                offset_of!(FixupInfo, result_codes),
                offset_of!(FixupInfo, fixup_msg_id)
            ],
            [0, 4, 8, 24]
        );
        assert_eq!(size_of::<SystemHealthAgentState>(), 64);
        assert_eq!(
            [
                offset_of!(SystemHealthAgentState, id),
                offset_of!(SystemHealthAgentState, sha_result_codes),
                offset_of!(SystemHealthAgentState, failure_category),
                offset_of!(SystemHealthAgentState, fixup_info),
            ],
            [0, 8, 24, 32]
        );
        assert_eq!((size_of::<IsolationInfo>(), offset_of!(IsolationInfo, failure_url)), (32, 16));
        assert_eq!((size_of::<IsolationInfoEx>(), offset_of!(IsolationInfoEx, failure_url)), (32, 16));
        assert_eq!(size_of::<NapComponentRegistrationInfo>(), 120);
        assert_eq!(size_of::<IHostMemoryManagerVtbl>(), 13 * size_of::<usize>());
        assert_eq!(size_of::<IMallocVtbl>(), 9 * size_of::<usize>());
        assert_eq!(size_of::<NapallocStats>(), 7 * 8);
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn soh_attribute_value_is_16_bytes_with_the_pointer_at_8() {
        assert_eq!(size_of::<SoHAttributeValue>(), 16);
        assert_eq!(align_of::<SoHAttributeValue>(), 8);
        let mut byte = 0u8;
        let p: *mut u8 = &mut byte;
        let v = SoHAttributeValue {
            vendor_specific_val: VendorSpecific { vendor_id: 7, size: 3, vendor_specific_data: p },
        };
        // SAFETY: every member is plain data; the bytes at offset 8 were written as a pointer
        // by the initialisation of `vendor_specific_val`, the union's largest member.
        let octets = unsafe { v.octet_string_val };
        assert_eq!(octets.data, p, "vendorSpecificData and octetStringVal.data share offset 8");
    }

    #[test]
    fn option_fn_pointers_are_pointer_sized() {
        // The reason the received vtables may use Option<fn>: NULL is None, same size.
        assert_eq!(size_of::<Option<RefCountFn<ComObject>>>(), size_of::<*const ()>());
        assert_eq!(size_of::<IUnknownVtbl>(), 3 * size_of::<*const ()>());
    }

    #[test]
    fn value_member_follows_the_spec_table() {
        use SoHValueMember as M;
        let expect = [
            (2, M::IdVal),
            (3, M::V4AddressesVal),
            (4, M::CodesVal),
            (5, M::DateTimeVal),
            (6, M::OctetStringVal),
            (7, M::VendorSpecificVal),
            (8, M::Uint8Val),
            (9, M::OctetStringVal),
            (10, M::OctetStringVal),
            (11, M::OctetStringVal),
            (12, M::DateTimeVal),
            (13, M::CodesVal),
            (14, M::Uint8Val),
            (15, M::V6AddressesVal),
            (16, M::Uint8Val),
            // Values NapProtocol.h does not define: octet string.
            (0, M::OctetStringVal),
            (1, M::OctetStringVal),
            (17, M::OctetStringVal),
            (-1, M::OctetStringVal),
        ];
        for (t, m) in expect {
            assert_eq!(SoHAttributeType(t).value_member(), m, "type {t}");
        }
        let no_pointer: Vec<i32> = (0..=17).filter(|&t| !SoHAttributeType(t).value_member().has_pointer()).collect();
        assert_eq!(no_pointer, [2, 5, 8, 12, 14, 16]);
    }

    #[test]
    fn embedded_pointer_reads_only_pointer_members() {
        let mut addr = Ipv4Address::default();
        let p: *mut Ipv4Address = &mut addr;
        let v = SoHAttributeValue { v4_addresses_val: Ipv4Addresses { count: 1, addresses: p } };
        // SAFETY: the v4AddressesVal member is initialised, so offset 8 holds a pointer.
        unsafe {
            assert_eq!(v.embedded_pointer(SoHAttributeType::IPV4_FIXUP_SERVERS), Some(p.cast()));
            assert_eq!(v.embedded_pointer(SoHAttributeType::ERROR_CODES), Some(p.cast()));
            assert_eq!(v.embedded_pointer(SoHAttributeType(99)), Some(p.cast()));
        }
        // Only the first 4 bytes are initialised: a type without a pointer must not read offset 8
        // (Miri would report the read of uninitialised memory).
        let id = SoHAttributeValue { id_val: 5 };
        for t in
            [SoHAttributeType::SYSTEM_HEALTH_ID, SoHAttributeType::TIME_OF_LAST_UPDATE, SoHAttributeType::HEALTH_CLASS]
        {
            // SAFETY: `t` selects a member without a pointer, so nothing past `id_val` is read.
            assert_eq!(unsafe { id.embedded_pointer(t) }, None, "{t:?}");
        }
    }

    #[test]
    fn enums_accept_any_value_and_name_the_known_ones() {
        assert_eq!(format!("{:?}", FixupState::IN_PROGRESS), "fixupStateInProgress(1)");
        assert_eq!(format!("{:?}", FixupState(77)), "FixupState(77)");
        assert_eq!(SoHAttributeType::EXTENDED_ISOLATION_STATE.0, 16);
        assert_eq!(SoHAttributeType(16).c_name(), Some("sohAttributeTypeExtendedIsolationState"));
        assert_eq!(IsolationState(0).c_name(), None);
        assert_eq!(HealthClassValue::RESERVED.0, 128);
        assert_eq!(EMemoryAvailable::HIGH.0, 3);
    }

    #[test]
    fn critical_levels_round_trip() {
        for level in [CriticalLevel::Task, CriticalLevel::AppDomain, CriticalLevel::Process] {
            let c = EMemoryCriticalLevel::from(level);
            assert_eq!(c.0, level as i32);
            assert_eq!(c.critical_level(), Some(level));
        }
        assert_eq!(EMemoryCriticalLevel(3).critical_level(), None);
        assert_eq!(EMemoryCriticalLevel(-1).critical_level(), None);
    }

    #[test]
    fn constants_match_naptypes() {
        assert_eq!(MAX_CONNECTION_COUNT_PER_ENFORCER, 20);
        assert_eq!(MAX_STRING_LENGTH, 1024);
        assert_eq!(MAX_STRING_LENGTH_IN_BYTES, 2050);
        assert_eq!(MAX_SOH_ATTRIBUTE_COUNT, 100);
        assert_eq!(MAX_SOH_ATTRIBUTE_SIZE, 4000);
        assert_eq!((MIN_NETWORK_SOH_SIZE, MAX_NETWORK_SOH_SIZE), (12, 4000));
        assert_eq!(MAX_PRIVATE_DATA_SIZE, 200);
        assert_eq!(MAX_DWORD_COUNT_PER_SOH_ATTRIBUTE, 1000);
        assert_eq!(PERCENTAGE_NOT_SUPPORTED, 101);
        assert_eq!((MAX_SYSTEM_HEALTH_ENTITY_COUNT, MAX_ENFORCER_COUNT), (20, 20));
        assert_eq!(MAX_CACHED_SOH_COUNT, 8000);
        assert_eq!((MEM_COMMIT, MEM_RESERVE, MEM_DECOMMIT, MEM_RELEASE), (0x1000, 0x2000, 0x4000, 0x8000));
        assert_eq!((PAGE_NOACCESS, PAGE_READWRITE), (1, 4));
    }

    #[test]
    fn guids_print_in_registry_form() {
        assert_eq!(IID_IMALLOC.to_string(), "{00000002-0000-0000-C000-000000000046}");
        assert_eq!(IID_IHOST_MEMORY_MANAGER.to_string(), "{7BC698D1-F9E3-4460-9CDE-D04248E9FA25}");
        assert_eq!(IID_ICLR_MEMORY_NOTIFICATION_CALLBACK.to_string(), "{47EB8E57-0846-4546-AF76-6F42FCFC2649}");
        assert_eq!(IID_IHOST_MALLOC.to_string(), "{1831991C-CC53-4A31-B218-04E910446479}");
        assert_eq!(IID_IUNKNOWN.to_string(), "{00000000-0000-0000-C000-000000000046}");
        assert_ne!(IID_IUNKNOWN, IID_IMALLOC);
    }

    #[test]
    fn stats_convert_field_by_field() {
        let h = crate::heap::HeapStats {
            live_blocks: 1,
            live_bytes: 2,
            committed_bytes: 3,
            reserved_bytes: 4,
            bad_pointers: 5,
            failed_allocations: 6,
            trims: 7,
        };
        let s = NapallocStats::from(h);
        assert_eq!(
            [
                s.live_blocks,
                s.live_bytes,
                s.committed_bytes,
                s.reserved_bytes,
                s.bad_pointer_reports,
                s.failed_allocations,
                s.trims
            ],
            [1, 2, 3, 4, 5, 6, 7]
        );
    }

    #[test]
    fn filetime_halves() {
        let t = FileTime::from_u64(0x0123_4567_89AB_CDEF);
        assert_eq!((t.dw_low_date_time, t.dw_high_date_time), (0x89AB_CDEF, 0x0123_4567));
        assert_eq!(t.as_u64(), 0x0123_4567_89AB_CDEF);
    }

    /// A COM object with a reference count, as C code would build one.
    #[repr(C)]
    struct Counted {
        base: ComObject,
        refs: AtomicU32,
    }

    unsafe extern "system" fn counted_add_ref(this: *mut ComObject) -> ULONG {
        // SAFETY: `this` is the `base` of a live `Counted` (repr(C), base first).
        let c = unsafe { &*this.cast::<Counted>() };
        c.refs.fetch_add(1, Ordering::Relaxed) + 1
    }

    unsafe extern "system" fn counted_release(this: *mut ComObject) -> ULONG {
        // SAFETY: as in `counted_add_ref`.
        let c = unsafe { &*this.cast::<Counted>() };
        c.refs.fetch_sub(1, Ordering::Relaxed) - 1
    }

    #[test]
    fn com_object_release_calls_the_vtable_and_tolerates_nulls() {
        static FULL: IUnknownVtbl =
            IUnknownVtbl { query_interface: None, add_ref: Some(counted_add_ref), release: Some(counted_release) };
        static NO_RELEASE: IUnknownVtbl = IUnknownVtbl { query_interface: None, add_ref: None, release: None };
        let mut obj = Counted { base: ComObject { vtbl: &FULL }, refs: AtomicU32::new(1) };
        // The pointer covers the whole object: the vtable functions read `refs` through it.
        let p: *mut ComObject = core::ptr::addr_of_mut!(obj).cast();
        // SAFETY: `p` points to a live object with a full vtable; we own the references.
        unsafe {
            assert_eq!(ComObject::add_ref(p), Some(2));
            assert_eq!(ComObject::release(p), Some(1));
            assert_eq!(ComObject::release(p), Some(0));
        }
        assert_eq!(obj.refs.load(Ordering::Relaxed), 0);

        let mut null_entry = Counted { base: ComObject { vtbl: &NO_RELEASE }, refs: AtomicU32::new(1) };
        let mut null_vtbl = Counted { base: ComObject { vtbl: core::ptr::null() }, refs: AtomicU32::new(1) };
        // SAFETY: live objects whose vtable is NULL or has NULL entries.
        unsafe {
            assert_eq!(ComObject::release(core::ptr::addr_of_mut!(null_entry).cast()), None);
            assert_eq!(ComObject::release(core::ptr::addr_of_mut!(null_vtbl).cast()), None);
        }
        assert_eq!(null_entry.refs.load(Ordering::Relaxed), 1);
    }
}
