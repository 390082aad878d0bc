//! The C exports of the 14 NapUtil functions, with the names and signatures of
//! `include/napalloc.h`.
//!
//! Each export forwards to the function of the same meaning in [`super::util`] and adds one thing:
//! no panic unwinds across the C ABI. An `Alloc*` that panics returns `E_FAIL` (its out pointer
//! was already set to NULL); a `Free*` that panics returns having done part of its work at most.
//! Neither is expected: nothing on these paths panics by design.
//!
//! The functions are `extern "system"`: the plain C convention on x86-64 (Windows and elsewhere)
//! and `__stdcall` on 32-bit Windows, which is what the header's `NAPALLOC_CALL` means.
//!
//! **`FreeConnections` calls `Release` once on every non-NULL `connections[i]`, `i < count`,
//! before freeing** (see [`super::util`]).

#![allow(non_snake_case)]

use super::types::{
    Connections, CountedString, FixupInfo, IsolationInfo, IsolationInfoEx, NapComponentRegistrationInfo, NetworkSoH,
    PrivateData, SoH, SoHAttributeType, SoHAttributeValue, SystemHealthAgentState, WCHAR,
};
use super::util;
use crate::hr::{E_FAIL, HRESULT};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run `f`; a panic becomes `E_FAIL` instead of unwinding into C.
#[inline]
fn guard_hr(f: impl FnOnce() -> HRESULT) -> HRESULT {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(E_FAIL)
}

/// Run `f`; a panic ends it instead of unwinding into C.
#[inline]
fn guard(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

/// `HRESULT AllocConnections(Connections **connections, UINT16 connectionsCount)`.
///
/// # Safety
/// As [`util::alloc_connections`].
#[no_mangle]
pub unsafe extern "system" fn AllocConnections(connections: *mut *mut Connections, connections_count: u16) -> HRESULT {
    guard_hr(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { util::alloc_connections(connections, connections_count) }
    })
}

/// `HRESULT AllocCountedString(CountedString **countedString, const WCHAR *string)`.
///
/// # Safety
/// As [`util::alloc_counted_string`].
#[no_mangle]
pub unsafe extern "system" fn AllocCountedString(
    counted_string: *mut *mut CountedString,
    string: *const WCHAR,
) -> HRESULT {
    guard_hr(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { util::alloc_counted_string(counted_string, string) }
    })
}

/// `HRESULT AllocFixupInfo(FixupInfo **fixupInfo, UINT16 countResultCodes)`.
///
/// # Safety
/// As [`util::alloc_fixup_info`].
#[no_mangle]
pub unsafe extern "system" fn AllocFixupInfo(fixup_info: *mut *mut FixupInfo, count_result_codes: u16) -> HRESULT {
    guard_hr(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { util::alloc_fixup_info(fixup_info, count_result_codes) }
    })
}

/// `void FreeConnections(Connections *connections)`: **`Release`s every non-NULL slot**, then
/// frees the slot array and the structure.
///
/// # Safety
/// As [`util::free_connections`].
#[no_mangle]
pub unsafe extern "system" fn FreeConnections(connections: *mut Connections) {
    guard(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { util::free_connections(connections) }
    })
}

/// `void FreeCountedString(CountedString *countedString)`.
///
/// # Safety
/// As [`util::free_counted_string`].
#[no_mangle]
pub unsafe extern "system" fn FreeCountedString(counted_string: *mut CountedString) {
    guard(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { util::free_counted_string(counted_string) }
    })
}

/// `void FreeFixupInfo(FixupInfo *fixupInfo)`.
///
/// # Safety
/// As [`util::free_fixup_info`].
#[no_mangle]
pub unsafe extern "system" fn FreeFixupInfo(fixup_info: *mut FixupInfo) {
    guard(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { util::free_fixup_info(fixup_info) }
    })
}

/// `void FreeIsolationInfo(IsolationInfo *isolationInfo)`.
///
/// # Safety
/// As [`util::free_isolation_info`].
#[no_mangle]
pub unsafe extern "system" fn FreeIsolationInfo(isolation_info: *mut IsolationInfo) {
    guard(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { util::free_isolation_info(isolation_info) }
    })
}

/// `void FreeIsolationInfoEx(IsolationInfoEx *isolationInfo)`.
///
/// # Safety
/// As [`util::free_isolation_info_ex`].
#[no_mangle]
pub unsafe extern "system" fn FreeIsolationInfoEx(isolation_info: *mut IsolationInfoEx) {
    guard(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { util::free_isolation_info_ex(isolation_info) }
    })
}

/// `void FreeSoH(SoH *soh)`.
///
/// # Safety
/// As [`util::free_soh`].
#[no_mangle]
pub unsafe extern "system" fn FreeSoH(soh: *mut SoH) {
    guard(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { util::free_soh(soh) }
    })
}

/// `void FreeNetworkSoH(NetworkSoH *networkSoh)`.
///
/// # Safety
/// As [`util::free_network_soh`].
#[no_mangle]
pub unsafe extern "system" fn FreeNetworkSoH(network_soh: *mut NetworkSoH) {
    guard(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { util::free_network_soh(network_soh) }
    })
}

/// `void FreePrivateData(PrivateData *privateData)`.
///
/// # Safety
/// As [`util::free_private_data`].
#[no_mangle]
pub unsafe extern "system" fn FreePrivateData(private_data: *mut PrivateData) {
    guard(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { util::free_private_data(private_data) }
    })
}

/// `void FreeSoHAttributeValue(SoHAttributeType type, SoHAttributeValue *value)`.
///
/// # Safety
/// As [`util::free_soh_attribute_value`].
#[no_mangle]
pub unsafe extern "system" fn FreeSoHAttributeValue(ty: SoHAttributeType, value: *mut SoHAttributeValue) {
    guard(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { util::free_soh_attribute_value(ty, value) }
    })
}

/// `void FreeNapComponentRegistrationInfoArray(UINT16 count, NapComponentRegistrationInfo **info)`.
///
/// # Safety
/// As [`util::free_nap_component_registration_info_array`].
#[no_mangle]
pub unsafe extern "system" fn FreeNapComponentRegistrationInfoArray(
    count: u16,
    info: *mut *mut NapComponentRegistrationInfo,
) {
    guard(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { util::free_nap_component_registration_info_array(count, info) }
    })
}

/// `void FreeSystemHealthAgentState(SystemHealthAgentState *state)`.
///
/// # Safety
/// As [`util::free_system_health_agent_state`].
#[no_mangle]
pub unsafe extern "system" fn FreeSystemHealthAgentState(state: *mut SystemHealthAgentState) {
    guard(|| {
        // SAFETY: forwarded caller guarantee.
        unsafe { util::free_system_health_agent_state(state) }
    })
}
