//! NAP: the structures of the NapUtil memory functions and of the COM/CLR-hosting interfaces the C
//! ABI uses, the 14 NapUtil functions, and owned Rust handles over the same memory.
//!
//! * [`types`] is the Rust mirror of `include/napalloc.h`: `#[repr(C)]` structs and the
//!   `SoHAttributeValue` union with the header's field names in snake_case, C enums as
//!   `#[repr(transparent)]` newtypes, the NAP constants, and the vtables of `IUnknown`, `IMalloc`,
//!   `IHostMemoryManager`, `IHostMalloc` and `ICLRMemoryNotificationCallback`. Sizes and offsets
//!   are checked at compile time (SPEC §3, x86-64).
//! * [`util`] holds the NapUtil functions (`AllocConnections` ... `FreeSystemHealthAgentState`) as
//!   Rust functions over the task heap; [`ffi`] exports them to C under their NapUtil names. Every
//!   `Free*` frees all embedded pointers, and **`FreeConnections` releases the interfaces it
//!   holds**.
//! * [`safe`] (re-exported here) has owned handles that free on `Drop`: [`Connections`] of
//!   [`ComPtr`]s, [`CountedString`], [`FixupInfo`], [`SoH`] built by [`SoHBuilder`]. They convert
//!   to and from the raw structures, so Rust and C can hand them to each other.
//!
//! The raw structures that share a name with a handle are at `nap::types::{Connections,
//! CountedString, FixupInfo, SoH}`.

pub mod ffi;
pub mod safe;
pub mod types;
pub mod util;

#[cfg(test)]
mod tests;

pub use safe::{Attribute, ComPtr, Connections, CountedString, FixupInfo, NapError, SoH, SoHBuilder};
pub use types::{
    ComObject, EMemoryAvailable, EMemoryCriticalLevel, ExtendedIsolationState, FailureCategory, FileTime, FixupState,
    Guid, ICLRMemoryNotificationCallback, ICLRMemoryNotificationCallbackVtbl, IHostMalloc, IHostMallocVtbl,
    IHostMemoryManager, IHostMemoryManagerVtbl, IMalloc, IMallocVtbl, INapEnforcementClientConnection, IUnknownVtbl,
    Ipv4Address, Ipv4Addresses, Ipv6Address, Ipv6Addresses, IsolationInfo, IsolationInfoEx, IsolationState,
    NapComponentRegistrationInfo, NapallocScope, NapallocStats, NetworkSoH, OctetString, PrivateData, ResultCodes,
    SoHAttribute, SoHAttributeType, SoHAttributeValue, SoHValueMember, SystemHealthAgentState, VendorSpecific,
};
