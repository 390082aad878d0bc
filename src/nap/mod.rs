//! NAP: the structures of the NapUtil memory functions and of the COM/CLR-hosting interfaces the C
//! ABI uses, as Rust types.
//!
//! [`types`] is the Rust mirror of `include/napalloc.h`: `#[repr(C)]` structs and the
//! `SoHAttributeValue` union with the header's field names in snake_case, C enums as
//! `#[repr(transparent)]` newtypes, the NAP constants, and the vtables of `IUnknown`, `IMalloc`,
//! `IHostMemoryManager`, `IHostMalloc` and `ICLRMemoryNotificationCallback`. Sizes and offsets
//! are checked at compile time (SPEC §3, x86-64).
//!
//! The NapUtil functions themselves (`AllocConnections` ... `FreeSystemHealthAgentState`) free
//! every embedded pointer of what they free; their rules are written in the header.

pub mod types;

pub use types::{
    ComObject, Connections, CountedString, EMemoryAvailable, EMemoryCriticalLevel, ExtendedIsolationState,
    FailureCategory, FileTime, FixupInfo, FixupState, Guid, ICLRMemoryNotificationCallback,
    ICLRMemoryNotificationCallbackVtbl, IHostMalloc, IHostMallocVtbl, IHostMemoryManager, IHostMemoryManagerVtbl,
    IMalloc, IMallocVtbl, INapEnforcementClientConnection, IUnknownVtbl, Ipv4Address, Ipv4Addresses, Ipv6Address,
    Ipv6Addresses, IsolationInfo, IsolationInfoEx, IsolationState, NapComponentRegistrationInfo, NapallocScope,
    NapallocStats, NetworkSoH, OctetString, PrivateData, ResultCodes, SoH, SoHAttribute, SoHAttributeType,
    SoHAttributeValue, SoHValueMember, SystemHealthAgentState, VendorSpecific,
};
