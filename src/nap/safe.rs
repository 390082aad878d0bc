//! Owned Rust handles over the NAP structures, in the same task-heap memory the C functions use.
//!
//! Each handle owns one structure built the way the NapUtil `Alloc*` functions build it (separate
//! blocks, recorded as embedded pointers) and frees it on `Drop` with the matching `Free*`
//! function. `into_raw` hands the structure to C (which frees it with `FreeConnections`,
//! `FreeSoH`, ...) and `from_raw` takes one from C after checking that its blocks are live task-heap
//! blocks large enough for their counts. Nothing here needs a raw pointer to use.
//!
//! | handle | structure | freed with |
//! | --- | --- | --- |
//! | [`Connections`] (slots hold [`ComPtr`]s) | `Connections` | `FreeConnections` (releases the slots) |
//! | [`CountedString`] | `CountedString` | `FreeCountedString` |
//! | [`FixupInfo`] | `FixupInfo` | `FreeFixupInfo` |
//! | [`SoH`], built by [`SoHBuilder`] | `SoH` | `FreeSoH` |
//!
//! ```
//! use napalloc::nap::{CountedString, FixupInfo, SoHBuilder};
//!
//! let url = CountedString::from_str("https://fixup.example/")?;
//! assert_eq!(url.len(), 22);
//! assert_eq!(url.to_string(), "https://fixup.example/");
//!
//! let mut fixup = FixupInfo::new(2)?;
//! fixup.set_percentage(40);
//! fixup.results_mut()[1] = napalloc::hr::E_FAIL;
//! assert_eq!(fixup.results(), &[0, napalloc::hr::E_FAIL]);
//!
//! let soh = SoHBuilder::new().attribute(2, &[0, 0, 1, 55]).attribute(9, b"1.0").build()?;
//! assert_eq!(soh.len(), 2);
//! assert_eq!(soh.attribute(1).map(|a| a.value), Some(&b"1.0"[..]));
//! # Ok::<(), napalloc::nap::NapError>(())
//! ```

use super::types::{
    self as raw, ComObject, FixupState, MAX_SOH_ATTRIBUTE_COUNT, MAX_SOH_ATTRIBUTE_SIZE, MAX_STRING_LENGTH,
};
use super::util::{self, TaskHeap, TaskMem};
use crate::hr::{self, HRESULT};
use core::fmt;
use core::mem::{self, size_of};
use core::ptr::{self, NonNull};

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a NAP structure could not be built or taken over: the HRESULTs of the NapUtil functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NapError {
    /// `E_INVALIDARG`: a count or length beyond the NAP limits, a NUL inside a string, or (for
    /// `from_raw`) a structure whose blocks are not live task-heap blocks of the right sizes.
    InvalidArg,
    /// `E_OUTOFMEMORY`: the task heap could not supply the blocks. Nothing was left allocated.
    OutOfMemory,
    /// Any other failing HRESULT.
    Failed(HRESULT),
}

impl NapError {
    /// The HRESULT the C functions return for this error.
    pub fn hresult(self) -> HRESULT {
        match self {
            NapError::InvalidArg => hr::E_INVALIDARG,
            NapError::OutOfMemory => hr::E_OUTOFMEMORY,
            NapError::Failed(h) => h,
        }
    }

    /// `Ok` for a success HRESULT (`S_OK`, `S_FALSE`, ...), else the error it means.
    pub fn check(h: HRESULT) -> Result<(), NapError> {
        match h {
            h if h >= 0 => Ok(()),
            hr::E_INVALIDARG => Err(NapError::InvalidArg),
            hr::E_OUTOFMEMORY => Err(NapError::OutOfMemory),
            h => Err(NapError::Failed(h)),
        }
    }
}

impl fmt::Display for NapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NapError::InvalidArg => f.write_str("invalid argument (E_INVALIDARG)"),
            NapError::OutOfMemory => f.write_str("out of memory (E_OUTOFMEMORY)"),
            NapError::Failed(h) => write!(f, "failed with HRESULT {:#010x}", *h as u32),
        }
    }
}

impl std::error::Error for NapError {}

impl From<NapError> for HRESULT {
    fn from(e: NapError) -> HRESULT {
        e.hresult()
    }
}

/// `Some(size)` if `p` is the start of a live task-heap block of at least `min` bytes.
fn live_block(p: *const u8, min: usize) -> Option<usize> {
    if p.is_null() {
        return None;
    }
    TaskHeap.size_of(p).filter(|&s| s >= min)
}

// ---------------------------------------------------------------------------------------------
// ComPtr
// ---------------------------------------------------------------------------------------------

/// One owned reference to a COM object: `Clone` is `AddRef`, `Drop` is `Release`.
///
/// A NULL vtable or NULL `AddRef`/`Release` entry is tolerated (nothing is called).
pub struct ComPtr {
    ptr: NonNull<ComObject>,
}

impl ComPtr {
    /// Take over one reference the caller owns; `None` for NULL (nothing happens then).
    ///
    /// # Safety
    /// `p` is NULL or a live COM object (its first field points to a vtable of at least
    /// `QueryInterface`, `AddRef`, `Release`, or is NULL) that stays alive while this reference
    /// exists; the caller owns the reference it hands over and does not release it.
    pub unsafe fn from_raw(p: *mut ComObject) -> Option<ComPtr> {
        NonNull::new(p).map(|ptr| ComPtr { ptr })
    }

    /// Take a new reference (`AddRef`) to an object the caller holds; `None` for NULL.
    ///
    /// # Safety
    /// As [`ComPtr::from_raw`], except that the caller keeps its own reference.
    pub unsafe fn from_borrowed(p: *mut ComObject) -> Option<ComPtr> {
        let ptr = NonNull::new(p)?;
        // SAFETY: a live COM object (caller); the reference taken is owned by the new ComPtr.
        unsafe { ComObject::add_ref(ptr.as_ptr()) };
        Some(ComPtr { ptr })
    }

    /// The interface pointer (the reference stays owned by `self`).
    pub fn as_ptr(&self) -> *mut ComObject {
        self.ptr.as_ptr()
    }

    /// Give the reference up to the caller, who must release it.
    pub fn into_raw(self) -> *mut ComObject {
        let p = self.ptr.as_ptr();
        mem::forget(self);
        p
    }
}

impl Clone for ComPtr {
    fn clone(&self) -> ComPtr {
        // SAFETY: `self` keeps the object alive; the new reference belongs to the clone.
        unsafe { ComObject::add_ref(self.ptr.as_ptr()) };
        ComPtr { ptr: self.ptr }
    }
}

impl Drop for ComPtr {
    fn drop(&mut self) {
        // SAFETY: `self` owns one reference to a live object and gives it up here.
        unsafe { ComObject::release(self.ptr.as_ptr()) };
    }
}

impl PartialEq for ComPtr {
    /// The same interface pointer (COM identity needs `QueryInterface(IID_IUnknown)`; not done).
    fn eq(&self, other: &ComPtr) -> bool {
        self.ptr == other.ptr
    }
}

impl Eq for ComPtr {}

impl fmt::Debug for ComPtr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ComPtr({:p})", self.ptr)
    }
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// An owned `Connections` (NapEnforcementClient.h): `len()` slots, each empty or holding one
/// reference to an `INapEnforcementClientConnection`. Dropping it calls `FreeConnections`, which
/// **releases every non-empty slot**.
///
/// ```
/// use napalloc::nap::types::{ComObject, IUnknownVtbl};
/// use napalloc::nap::{ComPtr, Connections};
/// use std::sync::atomic::{AtomicU32, Ordering};
///
/// // A COM object as C code would write one: a vtable pointer, then a reference count.
/// #[repr(C)]
/// struct Fake {
///     base: ComObject,
///     refs: AtomicU32,
/// }
/// unsafe extern "system" fn add_ref(this: *mut ComObject) -> u32 {
///     // SAFETY: `this` points to a live `Fake` (its first field).
///     unsafe { (*this.cast::<Fake>()).refs.fetch_add(1, Ordering::Relaxed) + 1 }
/// }
/// unsafe extern "system" fn release(this: *mut ComObject) -> u32 {
///     // SAFETY: as in `add_ref`.
///     unsafe { (*this.cast::<Fake>()).refs.fetch_sub(1, Ordering::Relaxed) - 1 }
/// }
/// static VTBL: IUnknownVtbl = IUnknownVtbl { query_interface: None, add_ref: Some(add_ref), release: Some(release) };
///
/// let fake = Fake { base: ComObject { vtbl: &VTBL }, refs: AtomicU32::new(1) };
/// let obj = &fake as *const Fake as *mut ComObject;
///
/// let mut conns = Connections::new(3)?;
/// // SAFETY: `fake` is a live COM object that outlives every reference taken here.
/// let conn = unsafe { ComPtr::from_borrowed(obj) }.unwrap();
/// assert_eq!(conns.set(1, conn), None);
/// assert_eq!(fake.refs.load(Ordering::Relaxed), 2);
/// assert_eq!(conns.len(), 3);
/// assert!(conns.get(0).is_none());
/// assert_eq!(conns.get(1).map(|c| c.as_ptr()), Some(obj)); // a clone, released at once
///
/// // To C and back: FreeConnections would release the slot just as Drop does.
/// let p = conns.into_raw();
/// // SAFETY: `p` came from `into_raw` and is given back once.
/// let conns = unsafe { Connections::from_raw(p) }?;
/// drop(conns);
/// assert_eq!(fake.refs.load(Ordering::Relaxed), 1);
/// # Ok::<(), napalloc::nap::NapError>(())
/// ```
pub struct Connections {
    /// A live `Connections` whose `connections` is NULL (then `count == 0`) or a live block of at
    /// least `count` slots, each NULL or an owned reference.
    raw: NonNull<raw::Connections>,
}

impl Connections {
    /// `count` empty slots (`AllocConnections`). More than 20 (`maxConnectionCountPerEnforcer`)
    /// → [`NapError::InvalidArg`].
    pub fn new(count: u16) -> Result<Connections, NapError> {
        let mut p = ptr::null_mut();
        // SAFETY: `p` is a valid out pointer.
        NapError::check(unsafe { util::alloc_connections(&mut p, count) })?;
        let raw = NonNull::new(p).ok_or(NapError::OutOfMemory)?;
        Ok(Connections { raw })
    }

    fn slots(&self) -> &[*mut ComObject] {
        // SAFETY: `raw` is live and its array holds `count` slots (type invariant).
        unsafe {
            let c = self.raw.as_ptr().read();
            if c.connections.is_null() {
                &[]
            } else {
                core::slice::from_raw_parts(c.connections, usize::from(c.count))
            }
        }
    }

    fn slots_mut(&mut self) -> &mut [*mut ComObject] {
        // SAFETY: as in `slots`; `&mut self` makes the access unique.
        unsafe {
            let c = self.raw.as_ptr().read();
            if c.connections.is_null() {
                &mut []
            } else {
                core::slice::from_raw_parts_mut(c.connections, usize::from(c.count))
            }
        }
    }

    /// The number of slots (`count`).
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    /// True if there are no slots.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new reference (`AddRef`) to the connection in slot `i`; `None` if the slot is empty or
    /// out of range.
    pub fn get(&self, i: usize) -> Option<ComPtr> {
        let p = *self.slots().get(i)?;
        // SAFETY: a non-NULL slot holds a reference to a live object (type invariant).
        unsafe { ComPtr::from_borrowed(p) }
    }

    /// Store `conn` in slot `i`; returns the reference the slot held before, if any.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn set(&mut self, i: usize, conn: ComPtr) -> Option<ComPtr> {
        let slots = self.slots_mut();
        let len = slots.len();
        let Some(slot) = slots.get_mut(i) else {
            panic!("Connections::set: slot {i} of {len}");
        };
        let old = mem::replace(slot, conn.into_raw());
        // SAFETY: the slot owned this reference; it is handed to the caller.
        unsafe { ComPtr::from_raw(old) }
    }

    /// Empty slot `i` and return what it held; `None` if it was empty or out of range.
    pub fn take(&mut self, i: usize) -> Option<ComPtr> {
        let old = mem::replace(self.slots_mut().get_mut(i)?, ptr::null_mut());
        // SAFETY: the slot owned this reference; it is handed to the caller.
        unsafe { ComPtr::from_raw(old) }
    }

    /// The structure, still owned by `self` (for a C function that reads it). Writes through it
    /// must keep `count` slots in the array, each NULL or an owned reference.
    pub fn as_ptr(&self) -> *mut raw::Connections {
        self.raw.as_ptr()
    }

    /// Give the structure to C, which frees it with `FreeConnections` (releasing the slots).
    pub fn into_raw(self) -> *mut raw::Connections {
        let p = self.raw.as_ptr();
        mem::forget(self);
        p
    }

    /// Take over a `Connections` from C: `AllocConnections`' result or one built by hand from
    /// task-heap blocks. Checked: the structure and (if `count > 0`) its slot array are live
    /// task-heap blocks, the array holding at least `count` slots. On `Err` the caller keeps it.
    ///
    /// # Safety
    /// Nothing else uses or frees `p` afterwards; each non-NULL slot holds one reference (given
    /// up by the caller) to a live COM object.
    pub unsafe fn from_raw(p: *mut raw::Connections) -> Result<Connections, NapError> {
        live_block(p.cast(), size_of::<raw::Connections>()).ok_or(NapError::InvalidArg)?;
        // SAFETY: a live block large enough for the structure.
        let c = unsafe { p.read() };
        if c.count > 0 {
            let need = usize::from(c.count) * size_of::<*mut ComObject>();
            live_block(c.connections.cast(), need).ok_or(NapError::InvalidArg)?;
        }
        Ok(Connections { raw: NonNull::new(p).ok_or(NapError::InvalidArg)? })
    }
}

impl Drop for Connections {
    fn drop(&mut self) {
        // SAFETY: `self` owns the structure, its array and the references in its slots.
        unsafe { util::free_connections(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for Connections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.slots()).finish()
    }
}

// ---------------------------------------------------------------------------------------------
// CountedString
// ---------------------------------------------------------------------------------------------

/// An owned `CountedString`: up to 1024 UTF-16 units and a NUL, in a buffer separate from the
/// structure. Dropping it calls `FreeCountedString`.
///
/// ```
/// use napalloc::nap::CountedString;
///
/// let s = CountedString::from_str("Zoë")?;
/// assert_eq!(s.as_utf16(), &[0x5A, 0x6F, 0xEB]);
/// assert_eq!(s.to_string(), "Zoë");
/// assert_eq!(CountedString::from_str(&"x".repeat(1025)).unwrap_err(), napalloc::nap::NapError::InvalidArg);
/// assert!(CountedString::from_str("nul\0inside").is_err());
/// # Ok::<(), napalloc::nap::NapError>(())
/// ```
pub struct CountedString {
    /// A live `CountedString` whose `string` is NULL (then `length == 0`) or a live block of at
    /// least `length` units.
    raw: NonNull<raw::CountedString>,
}

// SAFETY: the handle owns task-heap blocks only, and any thread may free them (SPEC §5); `&self`
// methods only read.
unsafe impl Send for CountedString {}
// SAFETY: as above.
unsafe impl Sync for CountedString {}

/// Build a `CountedString` of `len` units filled by `fill`, as `AllocCountedString` does.
pub(crate) fn counted_string_in<M: TaskMem + ?Sized>(
    m: &M,
    len: usize,
    fill: impl FnOnce(&mut [u16]),
) -> Result<NonNull<raw::CountedString>, NapError> {
    if len > usize::from(MAX_STRING_LENGTH) {
        return Err(NapError::InvalidArg);
    }
    let s = m.alloc(size_of::<raw::CountedString>()).ok_or(NapError::OutOfMemory)?;
    let Some(buf) = m.alloc_child(s, (len + 1) * 2) else {
        // SAFETY: `s` was allocated above and is not used afterwards.
        unsafe { m.free_tree(s.as_ptr()) };
        return Err(NapError::OutOfMemory);
    };
    let buf = buf.as_ptr().cast::<u16>();
    // SAFETY: `buf` is a fresh, 16-aligned block of `len + 1` units; `s` a fresh block of the
    // structure's size.
    unsafe {
        let units = core::slice::from_raw_parts_mut(buf, len + 1);
        units.fill(0);
        fill(&mut units[..len]);
        let c = s.as_ptr().cast::<raw::CountedString>();
        c.write_bytes(0, 1);
        (*c).length = len as u16;
        (*c).string = buf;
        Ok(NonNull::new_unchecked(c))
    }
}

impl CountedString {
    /// The UTF-16 form of `s`. A NUL inside `s`, or more than 1024 UTF-16 units, →
    /// [`NapError::InvalidArg`].
    #[allow(clippy::should_implement_trait)] // also implemented: `"..".parse::<CountedString>()`
    pub fn from_str(s: &str) -> Result<CountedString, NapError> {
        if s.contains('\0') {
            return Err(NapError::InvalidArg);
        }
        let len = s.encode_utf16().count();
        let raw = counted_string_in(&TaskHeap, len, |units| {
            for (d, u) in units.iter_mut().zip(s.encode_utf16()) {
                *d = u;
            }
        })?;
        Ok(CountedString { raw })
    }

    /// A copy of `units` (without a NUL). A NUL among them, or more than 1024, →
    /// [`NapError::InvalidArg`].
    pub fn from_utf16(units: &[u16]) -> Result<CountedString, NapError> {
        if units.contains(&0) {
            return Err(NapError::InvalidArg);
        }
        let raw = counted_string_in(&TaskHeap, units.len(), |d| d.copy_from_slice(units))?;
        Ok(CountedString { raw })
    }

    /// The length in UTF-16 units, without the NUL.
    pub fn len(&self) -> usize {
        self.as_utf16().len()
    }

    /// True for the empty string.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The units, without the NUL.
    pub fn as_utf16(&self) -> &[u16] {
        // SAFETY: `raw` is live and `string` holds `length` units or is NULL (type invariant).
        unsafe {
            let c = self.raw.as_ptr().read();
            if c.string.is_null() {
                &[]
            } else {
                core::slice::from_raw_parts(c.string, usize::from(c.length))
            }
        }
    }

    /// The structure, still owned by `self`.
    pub fn as_ptr(&self) -> *mut raw::CountedString {
        self.raw.as_ptr()
    }

    /// Give the structure to C, which frees it with `FreeCountedString`.
    pub fn into_raw(self) -> *mut raw::CountedString {
        let p = self.raw.as_ptr();
        mem::forget(self);
        p
    }

    /// Take over a `CountedString` from C. Checked: the structure is a live task-heap block, and
    /// `string` is a live block of at least `length` units (or NULL with `length == 0`). On `Err`
    /// the caller keeps it.
    ///
    /// # Safety
    /// Nothing else uses or frees `p` or its string afterwards.
    pub unsafe fn from_raw(p: *mut raw::CountedString) -> Result<CountedString, NapError> {
        live_block(p.cast(), size_of::<raw::CountedString>()).ok_or(NapError::InvalidArg)?;
        // SAFETY: a live block large enough for the structure.
        let c = unsafe { p.read() };
        if !(c.string.is_null() && c.length == 0) {
            live_block(c.string.cast(), usize::from(c.length) * 2).ok_or(NapError::InvalidArg)?;
        }
        Ok(CountedString { raw: NonNull::new(p).ok_or(NapError::InvalidArg)? })
    }
}

impl core::str::FromStr for CountedString {
    type Err = NapError;
    fn from_str(s: &str) -> Result<CountedString, NapError> {
        CountedString::from_str(s)
    }
}

impl fmt::Display for CountedString {
    /// The string, with unpaired surrogates shown as U+FFFD.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in char::decode_utf16(self.as_utf16().iter().copied()) {
            fmt::Write::write_char(f, c.unwrap_or(char::REPLACEMENT_CHARACTER))?;
        }
        Ok(())
    }
}

impl fmt::Debug for CountedString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountedString({:?})", self.to_string())
    }
}

impl Drop for CountedString {
    fn drop(&mut self) {
        // SAFETY: `self` owns the structure and its string.
        unsafe { util::free_counted_string(self.raw.as_ptr()) }
    }
}

// ---------------------------------------------------------------------------------------------
// FixupInfo
// ---------------------------------------------------------------------------------------------

/// An owned `FixupInfo` with its result codes. Dropping it calls `FreeFixupInfo`.
///
/// ```
/// use napalloc::nap::types::FixupState;
/// use napalloc::nap::FixupInfo;
///
/// let mut f = FixupInfo::new(3)?;
/// assert_eq!(f.results(), &[0, 0, 0]);
/// f.set_state(FixupState::IN_PROGRESS);
/// f.results_mut().copy_from_slice(&[0, 1, napalloc::hr::E_FAIL]);
/// assert_eq!(f.state(), FixupState::IN_PROGRESS);
/// assert!(FixupInfo::new(1001).is_err());
/// # Ok::<(), napalloc::nap::NapError>(())
/// ```
pub struct FixupInfo {
    /// A live `FixupInfo` whose `result_codes.results` is NULL (then `count == 0`) or a live block
    /// of at least `count` HRESULTs.
    raw: NonNull<raw::FixupInfo>,
}

// SAFETY: as for `CountedString`.
unsafe impl Send for FixupInfo {}
// SAFETY: as for `CountedString`.
unsafe impl Sync for FixupInfo {}

impl FixupInfo {
    /// A zero-filled `FixupInfo` with `count` zero result codes (`AllocFixupInfo`). More than
    /// 1000 (`maxDwordCountPerSoHAttribute`) → [`NapError::InvalidArg`].
    pub fn new(count: u16) -> Result<FixupInfo, NapError> {
        let mut p = ptr::null_mut();
        // SAFETY: `p` is a valid out pointer.
        NapError::check(unsafe { util::alloc_fixup_info(&mut p, count) })?;
        Ok(FixupInfo { raw: NonNull::new(p).ok_or(NapError::OutOfMemory)? })
    }

    fn get(&self) -> raw::FixupInfo {
        // SAFETY: `raw` is live (type invariant); any bit pattern is valid.
        unsafe { self.raw.as_ptr().read() }
    }

    /// `state`.
    pub fn state(&self) -> FixupState {
        self.get().state
    }
    /// Set `state`.
    pub fn set_state(&mut self, state: FixupState) {
        // SAFETY: `raw` is live and uniquely borrowed.
        unsafe { (*self.raw.as_ptr()).state = state }
    }
    /// `percentage`: 0..=100, or 101 (`percentageNotSupported`).
    pub fn percentage(&self) -> u8 {
        self.get().percentage
    }
    /// Set `percentage`.
    pub fn set_percentage(&mut self, percentage: u8) {
        // SAFETY: `raw` is live and uniquely borrowed.
        unsafe { (*self.raw.as_ptr()).percentage = percentage }
    }
    /// `fixupMsgId`.
    pub fn fixup_msg_id(&self) -> u32 {
        self.get().fixup_msg_id
    }
    /// Set `fixupMsgId`.
    pub fn set_fixup_msg_id(&mut self, id: u32) {
        // SAFETY: `raw` is live and uniquely borrowed.
        unsafe { (*self.raw.as_ptr()).fixup_msg_id = id }
    }

    /// The result codes.
    pub fn results(&self) -> &[HRESULT] {
        let rc = self.get().result_codes;
        if rc.results.is_null() {
            return &[];
        }
        // SAFETY: `results` holds `count` HRESULTs (type invariant).
        unsafe { core::slice::from_raw_parts(rc.results, usize::from(rc.count)) }
    }

    /// The result codes, to fill in.
    pub fn results_mut(&mut self) -> &mut [HRESULT] {
        let rc = self.get().result_codes;
        if rc.results.is_null() {
            return &mut [];
        }
        // SAFETY: as in `results`; `&mut self` makes the access unique.
        unsafe { core::slice::from_raw_parts_mut(rc.results, usize::from(rc.count)) }
    }

    /// The structure, still owned by `self`.
    pub fn as_ptr(&self) -> *mut raw::FixupInfo {
        self.raw.as_ptr()
    }

    /// Give the structure to C, which frees it with `FreeFixupInfo`.
    pub fn into_raw(self) -> *mut raw::FixupInfo {
        let p = self.raw.as_ptr();
        mem::forget(self);
        p
    }

    /// Take over a `FixupInfo` from C. Checked: the structure is a live task-heap block and
    /// `results` a live block of at least `count` HRESULTs (or NULL with `count == 0`). On `Err`
    /// the caller keeps it.
    ///
    /// # Safety
    /// Nothing else uses or frees `p` or its results afterwards.
    pub unsafe fn from_raw(p: *mut raw::FixupInfo) -> Result<FixupInfo, NapError> {
        live_block(p.cast(), size_of::<raw::FixupInfo>()).ok_or(NapError::InvalidArg)?;
        // SAFETY: a live block large enough for the structure.
        let rc = unsafe { p.read() }.result_codes;
        if !(rc.results.is_null() && rc.count == 0) {
            live_block(rc.results.cast(), usize::from(rc.count) * size_of::<HRESULT>()).ok_or(NapError::InvalidArg)?;
        }
        Ok(FixupInfo { raw: NonNull::new(p).ok_or(NapError::InvalidArg)? })
    }
}

impl fmt::Debug for FixupInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.get();
        f.debug_struct("FixupInfo")
            .field("state", &v.state)
            .field("percentage", &v.percentage)
            .field("results", &self.results())
            .field("fixup_msg_id", &v.fixup_msg_id)
            .finish()
    }
}

impl Drop for FixupInfo {
    fn drop(&mut self) {
        // SAFETY: `self` owns the structure and its results.
        unsafe { util::free_fixup_info(self.raw.as_ptr()) }
    }
}

// ---------------------------------------------------------------------------------------------
// SoH
// ---------------------------------------------------------------------------------------------

/// One attribute of a [`SoH`]: its type (`SoHAttributeType` value) and its value bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attribute<'a> {
    pub ty: u16,
    pub value: &'a [u8],
}

/// An owned statement of health: a `SoH`, its attribute array (recorded under it) and each
/// attribute's value (recorded under the array). Dropping it calls `FreeSoH`.
pub struct SoH {
    /// A live `SoH` whose `attributes` is NULL (then `count == 0`) or a live block of at least
    /// `count` attributes, each `value` NULL (then `size == 0`) or a live block of at least `size`
    /// bytes.
    raw: NonNull<raw::SoH>,
}

// SAFETY: as for `CountedString`.
unsafe impl Send for SoH {}
// SAFETY: as for `CountedString`.
unsafe impl Sync for SoH {}

impl SoH {
    fn attrs(&self) -> &[raw::SoHAttribute] {
        // SAFETY: `raw` is live and `attributes` holds `count` attributes (type invariant).
        unsafe {
            let s = self.raw.as_ptr().read();
            if s.attributes.is_null() {
                &[]
            } else {
                core::slice::from_raw_parts(s.attributes, usize::from(s.count))
            }
        }
    }

    /// The number of attributes.
    pub fn len(&self) -> usize {
        self.attrs().len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Attribute `i`.
    pub fn attribute(&self, i: usize) -> Option<Attribute<'_>> {
        self.attrs().get(i).map(Self::view)
    }

    /// The attributes in order.
    pub fn iter(&self) -> impl Iterator<Item = Attribute<'_>> + '_ {
        self.attrs().iter().map(Self::view)
    }

    fn view(a: &raw::SoHAttribute) -> Attribute<'_> {
        let value = if a.value.is_null() {
            &[][..]
        } else {
            // SAFETY: `value` holds `size` bytes (type invariant) and lives as long as `self`.
            unsafe { core::slice::from_raw_parts(a.value, usize::from(a.size)) }
        };
        Attribute { ty: a.r#type, value }
    }

    /// The structure, still owned by `self`.
    pub fn as_ptr(&self) -> *mut raw::SoH {
        self.raw.as_ptr()
    }

    /// Give the structure to C, which frees it with `FreeSoH`.
    pub fn into_raw(self) -> *mut raw::SoH {
        let p = self.raw.as_ptr();
        mem::forget(self);
        p
    }

    /// Take over a `SoH` from C (built by a callee or by hand from task-heap blocks). Checked: the
    /// structure, the attribute array (at least `count` attributes) and every non-NULL value (at
    /// least `size` bytes) are live task-heap blocks, and a NULL value has `size == 0`. On `Err`
    /// the caller keeps it.
    ///
    /// # Safety
    /// Nothing else uses or frees `p`, its array or its values afterwards.
    pub unsafe fn from_raw(p: *mut raw::SoH) -> Result<SoH, NapError> {
        live_block(p.cast(), size_of::<raw::SoH>()).ok_or(NapError::InvalidArg)?;
        // SAFETY: a live block large enough for the structure.
        let s = unsafe { p.read() };
        if !(s.attributes.is_null() && s.count == 0) {
            let need = usize::from(s.count) * size_of::<raw::SoHAttribute>();
            live_block(s.attributes.cast(), need).ok_or(NapError::InvalidArg)?;
            for i in 0..usize::from(s.count) {
                // SAFETY: the array is a live block of at least `count` attributes.
                let a = unsafe { s.attributes.add(i).read() };
                let ok =
                    if a.value.is_null() { a.size == 0 } else { live_block(a.value, usize::from(a.size)).is_some() };
                if !ok {
                    return Err(NapError::InvalidArg);
                }
            }
        }
        Ok(SoH { raw: NonNull::new(p).ok_or(NapError::InvalidArg)? })
    }
}

impl fmt::Debug for SoH {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Drop for SoH {
    fn drop(&mut self) {
        // SAFETY: `self` owns the structure, its array and the values.
        unsafe { util::free_soh(self.raw.as_ptr()) }
    }
}

/// Builds a [`SoH`]: attributes in order, each a type and its value bytes.
///
/// ```
/// use napalloc::nap::{NapError, SoHBuilder};
/// use napalloc::nap::types::SoHAttributeType;
///
/// let id = 0x0001_3780_u32.to_be_bytes();
/// let soh = SoHBuilder::new()
///     .attribute(SoHAttributeType::SYSTEM_HEALTH_ID.0 as u16, &id)
///     .attribute(SoHAttributeType::VENDOR_SPECIFIC.0 as u16, b"\x00\x00\x01\x37payload")
///     .build()?;
/// let types: Vec<u16> = soh.iter().map(|a| a.ty).collect();
/// assert_eq!(types, [2, 7]);
///
/// // A value over 4000 bytes (maxSoHAttributeSize) is refused.
/// let big = vec![0u8; 4001];
/// assert_eq!(SoHBuilder::new().attribute(9, &big).build().unwrap_err(), NapError::InvalidArg);
/// # Ok::<(), NapError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct SoHBuilder<'a> {
    attrs: Vec<(u16, &'a [u8])>,
}

impl<'a> SoHBuilder<'a> {
    /// No attributes yet.
    pub fn new() -> SoHBuilder<'a> {
        SoHBuilder { attrs: Vec::new() }
    }

    /// Append an attribute of type `ty` whose value is a copy of `value`.
    pub fn attribute(mut self, ty: u16, value: &'a [u8]) -> SoHBuilder<'a> {
        self.attrs.push((ty, value));
        self
    }

    /// Allocate the `SoH`. More than 100 attributes (`maxSoHAttributeCount`) or a value over
    /// 4000 bytes (`maxSoHAttributeSize`) → [`NapError::InvalidArg`]; memory short →
    /// [`NapError::OutOfMemory`] with nothing left allocated. An empty value is stored as NULL.
    pub fn build(&self) -> Result<SoH, NapError> {
        Ok(SoH { raw: self.build_in(&TaskHeap)? })
    }

    pub(crate) fn build_in<M: TaskMem + ?Sized>(&self, m: &M) -> Result<NonNull<raw::SoH>, NapError> {
        let n = self.attrs.len();
        if n > usize::from(MAX_SOH_ATTRIBUTE_COUNT)
            || self.attrs.iter().any(|(_, v)| v.len() > usize::from(MAX_SOH_ATTRIBUTE_SIZE))
        {
            return Err(NapError::InvalidArg);
        }
        let s = m.alloc(size_of::<raw::SoH>()).ok_or(NapError::OutOfMemory)?;
        let soh = s.as_ptr().cast::<raw::SoH>();
        // SAFETY: a fresh block of the structure's size; zero is a valid SoH.
        unsafe { soh.write_bytes(0, 1) };
        if n == 0 {
            // SAFETY: `s` is fresh and ours.
            return Ok(unsafe { NonNull::new_unchecked(soh) });
        }
        let built = (|| {
            let arr = m.alloc_child(s, n * size_of::<raw::SoHAttribute>())?;
            let attrs = arr.as_ptr().cast::<raw::SoHAttribute>();
            // SAFETY: a fresh block of `n` attributes; zero is a valid attribute.
            unsafe { attrs.write_bytes(0, n) };
            // SAFETY: `soh` is the fresh structure; the array is recorded under it.
            unsafe {
                (*soh).count = n as u16;
                (*soh).attributes = attrs;
            }
            for (i, &(ty, value)) in self.attrs.iter().enumerate() {
                let v = if value.is_empty() {
                    ptr::null_mut()
                } else {
                    let b = m.alloc_child(arr, value.len())?.as_ptr();
                    // SAFETY: a fresh block of `value.len()` bytes.
                    unsafe { ptr::copy_nonoverlapping(value.as_ptr(), b, value.len()) };
                    b
                };
                // SAFETY: i < n attributes of the fresh array.
                unsafe { attrs.add(i).write(raw::SoHAttribute { r#type: ty, size: value.len() as u16, value: v }) };
            }
            Some(())
        })();
        if built.is_none() {
            // The array and every value allocated so far are recorded under `s`.
            // SAFETY: `s` and its tree are ours and not used afterwards.
            unsafe { m.free_tree(s.as_ptr()) };
            return Err(NapError::OutOfMemory);
        }
        // SAFETY: non-null: a live block.
        Ok(unsafe { NonNull::new_unchecked(soh) })
    }
}
