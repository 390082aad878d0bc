//! The C host adapter: a [`PageSource`] over a C/C++ host's `IHostMemoryManager*` COM object,
//! and the `ICLRMemoryNotificationCallback` object napalloc registers with that host.
//!
//! A COM interface pointer points to an object whose first field points to its vtable
//! (SPEC §3); the vtables below reproduce mscoree.h's method order exactly (IUnknown's three,
//! then the interface's own, in declaration order). `extern "system"` is the C convention on
//! x86-64 and `__stdcall` (`STDMETHODCALLTYPE`) on 32-bit Windows. C enums
//! (`EMemoryCriticalLevel`, `EMemoryAvailable`) are 4-byte `int`s.
//!
//! The host object must be free-threaded (callable from any thread at any time, as the CLR
//! requires of its hosts). Vtables napalloc receives from C hold `Option<fn>` slots (a NULL slot
//! is `None`) and are checked once, when the object is adopted; vtables napalloc implements hold
//! plain `fn`s (the convention of `crate::nap::types`).
//!
//! # References
//! * mscoree.h (`IHostMemoryManagerVtbl`, `ICLRMemoryNotificationCallbackVtbl`,
//!   `IID_ICLRMemoryNotificationCallback`); the CLR hosting docs for `IHostMemoryManager`.

use super::{CriticalLevel, MemoryAvailable, MemoryNotify, PageSource};
use crate::hr::{self, HRESULT};
use crate::Error;
use core::ffi::c_void;
use core::fmt;
use core::ptr::{self, NonNull};
use core::sync::atomic::{fence, AtomicPtr, AtomicU32, Ordering};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// `VirtualAlloc` allocation type: commit pages.
pub const MEM_COMMIT: u32 = 0x1000;
/// `VirtualAlloc` allocation type: reserve address space.
pub const MEM_RESERVE: u32 = 0x2000;
/// `VirtualFree` free type: decommit pages.
pub const MEM_DECOMMIT: u32 = 0x4000;
/// `VirtualFree` free type: release a reservation (size 0, base as returned by the reserve).
pub const MEM_RELEASE: u32 = 0x8000;
/// Page protection: no access (reservations).
pub const PAGE_NOACCESS: u32 = 0x01;
/// Page protection: read/write (commits).
pub const PAGE_READWRITE: u32 = 0x04;
/// `E_NOTIMPL`: what a host returns for a method it does not implement.
pub const E_NOTIMPL: HRESULT = 0x8000_4001_u32 as i32;

/// A COM `GUID`/`IID` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Guid {
    pub data1: u32,
    pub data2: u16,
    pub data3: u16,
    pub data4: [u8; 8],
}

/// `IID_IUnknown` {00000000-0000-0000-C000-000000000046}.
pub const IID_IUNKNOWN: Guid = Guid { data1: 0, data2: 0, data3: 0, data4: [0xC0, 0, 0, 0, 0, 0, 0, 0x46] };
/// `IID_IHostMemoryManager` {7BC698D1-F9E3-4460-9CDE-D04248E9FA25}.
pub const IID_IHOST_MEMORY_MANAGER: Guid =
    Guid { data1: 0x7BC6_98D1, data2: 0xF9E3, data3: 0x4460, data4: [0x9C, 0xDE, 0xD0, 0x42, 0x48, 0xE9, 0xFA, 0x25] };
/// `IID_ICLRMemoryNotificationCallback` {47EB8E57-0846-4546-AF76-6F42FCFC2649}.
pub const IID_ICLR_MEMORY_NOTIFICATION_CALLBACK: Guid =
    Guid { data1: 0x47EB_8E57, data2: 0x0846, data3: 0x4546, data4: [0xAF, 0x76, 0x6F, 0x42, 0xFC, 0xFC, 0x26, 0x49] };

/// An `IHostMemoryManager` object: its first field points to its vtable.
#[repr(C)]
#[derive(Debug)]
pub struct IHostMemoryManager {
    pub vtbl: *const IHostMemoryManagerVtbl,
}

/// `QueryInterface(REFIID riid, void **ppvObject)` of `IHostMemoryManager`.
pub type HostQueryInterfaceFn =
    unsafe extern "system" fn(this: *mut IHostMemoryManager, riid: *const Guid, ppv: *mut *mut c_void) -> HRESULT;
/// `AddRef()` / `Release()` of `IHostMemoryManager`.
pub type HostRefCountFn = unsafe extern "system" fn(this: *mut IHostMemoryManager) -> u32;
/// `CreateMalloc(DWORD dwMallocType, IHostMalloc **ppMalloc)`.
pub type CreateMallocFn =
    unsafe extern "system" fn(this: *mut IHostMemoryManager, malloc_type: u32, pp_malloc: *mut *mut c_void) -> HRESULT;
/// `VirtualAlloc(void *pAddress, SIZE_T dwSize, DWORD flAllocationType, DWORD flProtect,
/// EMemoryCriticalLevel eCriticalLevel, void **ppMem)`.
pub type VirtualAllocFn = unsafe extern "system" fn(
    this: *mut IHostMemoryManager,
    address: *mut c_void,
    size: usize,
    allocation_type: u32,
    protect: u32,
    critical_level: i32,
    pp_mem: *mut *mut c_void,
) -> HRESULT;
/// `VirtualFree(LPVOID lpAddress, SIZE_T dwSize, DWORD dwFreeType)`.
pub type VirtualFreeFn = unsafe extern "system" fn(
    this: *mut IHostMemoryManager,
    address: *mut c_void,
    size: usize,
    free_type: u32,
) -> HRESULT;
/// `VirtualQuery(void *lpAddress, void *lpBuffer, SIZE_T dwLength, SIZE_T *pResult)`.
pub type VirtualQueryFn = unsafe extern "system" fn(
    this: *mut IHostMemoryManager,
    address: *mut c_void,
    buffer: *mut c_void,
    length: usize,
    result: *mut usize,
) -> HRESULT;
/// `VirtualProtect(void *lpAddress, SIZE_T dwSize, DWORD flNewProtect, DWORD *pflOldProtect)`.
pub type VirtualProtectFn = unsafe extern "system" fn(
    this: *mut IHostMemoryManager,
    address: *mut c_void,
    size: usize,
    new_protect: u32,
    old_protect: *mut u32,
) -> HRESULT;
/// `GetMemoryLoad(DWORD *pMemoryLoad, SIZE_T *pAvailableBytes)`.
pub type GetMemoryLoadFn =
    unsafe extern "system" fn(this: *mut IHostMemoryManager, memory_load: *mut u32, available: *mut usize) -> HRESULT;
/// `RegisterMemoryNotificationCallback(ICLRMemoryNotificationCallback *pCallback)`.
pub type RegisterCallbackFn =
    unsafe extern "system" fn(this: *mut IHostMemoryManager, callback: *mut ICLRMemoryNotificationCallback) -> HRESULT;
/// `NeedsVirtualAddressSpace` / `AcquiredVirtualAddressSpace(LPVOID startAddress, SIZE_T size)`.
pub type AddressSpaceFn =
    unsafe extern "system" fn(this: *mut IHostMemoryManager, start: *mut c_void, size: usize) -> HRESULT;
/// `ReleasedVirtualAddressSpace(LPVOID startAddress)`.
pub type ReleasedAddressSpaceFn =
    unsafe extern "system" fn(this: *mut IHostMemoryManager, start: *mut c_void) -> HRESULT;

/// `IHostMemoryManagerVtbl`, in mscoree.h order. It comes from C, so every slot is an `Option`
/// (same layout: a NULL slot is `None`); [`ComHostMemoryManager::adopt`] refuses a vtable that
/// lacks a method napalloc calls.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IHostMemoryManagerVtbl {
    pub query_interface: Option<HostQueryInterfaceFn>,
    pub add_ref: Option<HostRefCountFn>,
    pub release: Option<HostRefCountFn>,
    /// Not used by napalloc.
    pub create_malloc: Option<CreateMallocFn>,
    pub virtual_alloc: Option<VirtualAllocFn>,
    pub virtual_free: Option<VirtualFreeFn>,
    /// Not used by napalloc.
    pub virtual_query: Option<VirtualQueryFn>,
    /// Not used by napalloc.
    pub virtual_protect: Option<VirtualProtectFn>,
    pub get_memory_load: Option<GetMemoryLoadFn>,
    pub register_memory_notification_callback: Option<RegisterCallbackFn>,
    pub needs_virtual_address_space: Option<AddressSpaceFn>,
    pub acquired_virtual_address_space: Option<AddressSpaceFn>,
    pub released_virtual_address_space: Option<ReleasedAddressSpaceFn>,
}

/// The methods napalloc calls, copied out of a validated vtable (COM vtables never change), so
/// that every call is a plain, non-null function pointer.
#[derive(Clone, Copy)]
struct Methods {
    add_ref: HostRefCountFn,
    release: HostRefCountFn,
    virtual_alloc: VirtualAllocFn,
    virtual_free: VirtualFreeFn,
    get_memory_load: GetMemoryLoadFn,
    register_memory_notification_callback: RegisterCallbackFn,
    needs_virtual_address_space: AddressSpaceFn,
    acquired_virtual_address_space: AddressSpaceFn,
    released_virtual_address_space: ReleasedAddressSpaceFn,
}

impl Methods {
    /// `None` if any method napalloc calls is missing.
    fn from_vtbl(v: &IHostMemoryManagerVtbl) -> Option<Methods> {
        Some(Methods {
            add_ref: v.add_ref?,
            release: v.release?,
            virtual_alloc: v.virtual_alloc?,
            virtual_free: v.virtual_free?,
            get_memory_load: v.get_memory_load?,
            register_memory_notification_callback: v.register_memory_notification_callback?,
            needs_virtual_address_space: v.needs_virtual_address_space?,
            acquired_virtual_address_space: v.acquired_virtual_address_space?,
            released_virtual_address_space: v.released_virtual_address_space?,
        })
    }
}

impl fmt::Debug for IHostMemoryManagerVtbl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IHostMemoryManagerVtbl")
    }
}

/// An `ICLRMemoryNotificationCallback` object: its first field points to its vtable.
#[repr(C)]
#[derive(Debug)]
pub struct ICLRMemoryNotificationCallback {
    pub vtbl: *const ICLRMemoryNotificationCallbackVtbl,
}

/// `ICLRMemoryNotificationCallbackVtbl`, in mscoree.h order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ICLRMemoryNotificationCallbackVtbl {
    pub query_interface: unsafe extern "system" fn(
        this: *mut ICLRMemoryNotificationCallback,
        riid: *const Guid,
        ppv: *mut *mut c_void,
    ) -> HRESULT,
    pub add_ref: unsafe extern "system" fn(this: *mut ICLRMemoryNotificationCallback) -> u32,
    pub release: unsafe extern "system" fn(this: *mut ICLRMemoryNotificationCallback) -> u32,
    /// `OnMemoryNotification(EMemoryAvailable eMemoryAvailable)`: must never block.
    pub on_memory_notification:
        unsafe extern "system" fn(this: *mut ICLRMemoryNotificationCallback, available: i32) -> HRESULT,
}

impl fmt::Debug for ICLRMemoryNotificationCallbackVtbl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ICLRMemoryNotificationCallbackVtbl")
    }
}

/// Turn a host's HRESULT into a result: failure codes (negative) become [`Error::Host`].
#[inline]
fn check(h: HRESULT) -> Result<(), Error> {
    if h < 0 {
        Err(Error::Host(h))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The notification callback object napalloc hands to the host.

/// napalloc's `ICLRMemoryNotificationCallback`: a reference-counted heap object whose
/// `OnMemoryNotification` calls a [`MemoryNotify`] hook. Created with one reference (the
/// creator's), freed when the last reference is released.
#[repr(C)]
struct NotificationCallback {
    /// Must stay the first field: the interface pointer is a pointer to the whole object.
    iface: ICLRMemoryNotificationCallback,
    /// References held (by napalloc and by the host). `AddRef`/`Release` from any thread; the
    /// thread that takes it to 0 frees the object.
    refs: AtomicU32,
    notify: MemoryNotify,
}

static CALLBACK_VTBL: ICLRMemoryNotificationCallbackVtbl = ICLRMemoryNotificationCallbackVtbl {
    query_interface: callback_query_interface,
    add_ref: callback_add_ref,
    release: callback_release,
    on_memory_notification: callback_on_memory_notification,
};

/// Create napalloc's `ICLRMemoryNotificationCallback` around `notify`, holding one reference
/// that the caller owns (give it up with the vtable's `Release`).
///
/// `OnMemoryNotification(e)` calls `notify` for `e` = 1, 2 or 3 (`E_INVALIDARG` otherwise) and
/// returns `S_OK`; a panic in `notify` is caught and reported as `E_FAIL`.
/// `QueryInterface` answers `IID_IUnknown` and `IID_ICLRMemoryNotificationCallback`.
pub fn new_memory_notification_callback(notify: MemoryNotify) -> NonNull<ICLRMemoryNotificationCallback> {
    let obj = Box::new(NotificationCallback {
        iface: ICLRMemoryNotificationCallback { vtbl: &CALLBACK_VTBL },
        refs: AtomicU32::new(1),
        notify,
    });
    // `iface` is the first field of a `repr(C)` struct: the object's address is the interface's.
    NonNull::from(Box::leak(obj)).cast()
}

unsafe extern "system" fn callback_query_interface(
    this: *mut ICLRMemoryNotificationCallback,
    riid: *const Guid,
    ppv: *mut *mut c_void,
) -> HRESULT {
    if ppv.is_null() {
        return hr::E_POINTER;
    }
    // SAFETY: `ppv` is non-null and, by the COM contract, points to a writable pointer slot.
    unsafe { ppv.write(ptr::null_mut()) };
    if riid.is_null() {
        return hr::E_INVALIDARG;
    }
    // SAFETY: `riid` is non-null and, by the COM contract, points to an IID.
    let iid = unsafe { riid.read_unaligned() };
    if iid != IID_IUNKNOWN && iid != IID_ICLR_MEMORY_NOTIFICATION_CALLBACK {
        return hr::E_NOINTERFACE;
    }
    // SAFETY: `this` is a live callback object (the caller holds a reference) and `ppv` is
    // writable (above).
    unsafe {
        callback_add_ref(this);
        ppv.write(this.cast());
    }
    hr::S_OK
}

unsafe extern "system" fn callback_add_ref(this: *mut ICLRMemoryNotificationCallback) -> u32 {
    // SAFETY: `this` points to a live `NotificationCallback` (the caller holds a reference).
    let obj = unsafe { &*this.cast::<NotificationCallback>() };
    obj.refs.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
}

unsafe extern "system" fn callback_release(this: *mut ICLRMemoryNotificationCallback) -> u32 {
    // SAFETY: `this` points to a live `NotificationCallback` (the caller gives up a reference).
    let obj = unsafe { &*this.cast::<NotificationCallback>() };
    let prev = obj.refs.fetch_sub(1, Ordering::Release);
    if prev != 1 {
        return prev.wrapping_sub(1);
    }
    // The last reference: synchronize with every earlier Release, then free.
    fence(Ordering::Acquire);
    // SAFETY: the object came from `Box::leak` in `new_memory_notification_callback`, and this
    // was the last reference, so nobody else can reach it.
    let owned = unsafe { Box::from_raw(this.cast::<NotificationCallback>()) };
    // Dropping the hook runs arbitrary destructors: keep a panic from crossing the C boundary.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(owned)));
    0
}

unsafe extern "system" fn callback_on_memory_notification(
    this: *mut ICLRMemoryNotificationCallback,
    available: i32,
) -> HRESULT {
    let Some(m) = MemoryAvailable::from_raw(available) else {
        return hr::E_INVALIDARG;
    };
    // SAFETY: `this` points to a live `NotificationCallback` (the caller holds a reference).
    let obj = unsafe { &*this.cast::<NotificationCallback>() };
    match catch_unwind(AssertUnwindSafe(|| (obj.notify)(m))) {
        Ok(()) => hr::S_OK,
        Err(_) => hr::E_FAIL,
    }
}

/// Give up one reference on a callback object.
///
/// # Safety
/// `cb` is a live `ICLRMemoryNotificationCallback` on which the caller owns a reference.
unsafe fn release_callback(cb: NonNull<ICLRMemoryNotificationCallback>) {
    // SAFETY: caller's guarantee; the vtable is the object's own.
    unsafe { ((*cb.as_ref().vtbl).release)(cb.as_ptr()) };
}

// ---------------------------------------------------------------------------------------------
// The host adapter.

/// A [`PageSource`] over a C host's `IHostMemoryManager*`.
///
/// * reserve: `VirtualAlloc(NULL, len, MEM_RESERVE, PAGE_NOACCESS, level, &p)`
/// * commit: `VirtualAlloc(addr, len, MEM_COMMIT, PAGE_READWRITE, level, &p)` (`p` must be
///   `addr`)
/// * decommit: `VirtualFree(addr, len, MEM_DECOMMIT)`
/// * release: `VirtualFree(base, 0, MEM_RELEASE)` (size 0, as Win32 requires)
/// * memory load, notification registration and the three address-space notifications are
///   forwarded as they are.
///
/// A failing HRESULT becomes [`Error::Host`]; a success with a NULL (or, for a commit, a
/// different) address is a broken contract, reported as `Error::Host(E_OUTOFMEMORY)` (reserve)
/// or `Error::Host(HOST_E_INVALIDOPERATION)` (commit). Takes a reference (`AddRef`) on adopt and
/// gives it up (`Release`) on drop, after releasing its own reference on the notification
/// callback it registered.
pub struct ComHostMemoryManager {
    /// The host object; we own one reference on it.
    this: NonNull<IHostMemoryManager>,
    /// Its methods, from its vtable, checked once in `adopt`.
    methods: Methods,
    /// The notification callback we registered (we own one reference on it), or null. Swapped by
    /// `register_memory_notify` (which releases the one it replaces); taken by `Drop`.
    callback: AtomicPtr<ICLRMemoryNotificationCallback>,
}

// SAFETY: `adopt` requires a free-threaded COM object, callable from any thread; our own state
// is one atomic pointer.
unsafe impl Send for ComHostMemoryManager {}
// SAFETY: as above.
unsafe impl Sync for ComHostMemoryManager {}

impl fmt::Debug for ComHostMemoryManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComHostMemoryManager").field("this", &self.this).finish_non_exhaustive()
    }
}

impl ComHostMemoryManager {
    /// Adopt a host's `IHostMemoryManager*`, taking a reference on it (`AddRef`).
    ///
    /// NULL fails with `Error::Host(E_POINTER)`; a NULL vtable, or one without a method napalloc
    /// calls (AddRef, Release, VirtualAlloc, VirtualFree, GetMemoryLoad,
    /// RegisterMemoryNotificationCallback and the three address-space notifications), fails with
    /// `Error::Host(E_INVALIDARG)` and takes no reference.
    ///
    /// # Safety
    /// `host` is NULL or a live `IHostMemoryManager` COM object which is free-threaded (callable
    /// from any thread, concurrently) and whose methods keep the contracts of mscoree.h and
    /// SPEC §6.
    pub unsafe fn adopt(host: *mut c_void) -> Result<ComHostMemoryManager, Error> {
        let this = NonNull::new(host.cast::<IHostMemoryManager>()).ok_or(Error::Host(hr::E_POINTER))?;
        // SAFETY: `this` is a live COM object (caller's guarantee): its first field is readable.
        let vtbl = unsafe { this.as_ref().vtbl };
        // SAFETY: a non-null vtable pointer of a live COM object points to its vtable.
        let methods = unsafe { vtbl.as_ref() }.and_then(Methods::from_vtbl).ok_or(Error::Host(hr::E_INVALIDARG))?;
        // SAFETY: `this` is live; AddRef has no preconditions.
        unsafe { (methods.add_ref)(this.as_ptr()) };
        Ok(ComHostMemoryManager { this, methods, callback: AtomicPtr::new(ptr::null_mut()) })
    }

    /// The adopted interface pointer (still owned by `self`).
    pub fn as_raw(&self) -> *mut IHostMemoryManager {
        self.this.as_ptr()
    }
}

impl Drop for ComHostMemoryManager {
    fn drop(&mut self) {
        if let Some(cb) = NonNull::new(self.callback.swap(ptr::null_mut(), Ordering::AcqRel)) {
            // SAFETY: we owned one reference on `cb` (taken in `register_memory_notify`).
            unsafe { release_callback(cb) };
        }
        // SAFETY: we own one reference on the host object, given up exactly once, here.
        unsafe { (self.methods.release)(self.this.as_ptr()) };
    }
}

impl PageSource for ComHostMemoryManager {
    fn reserve(&self, len: usize, level: CriticalLevel) -> Result<NonNull<u8>, Error> {
        let mut p: *mut c_void = ptr::null_mut();
        // SAFETY: `this` is live (we hold a reference); the out-pointer is a local.
        let h = unsafe {
            (self.methods.virtual_alloc)(
                self.as_raw(),
                ptr::null_mut(),
                len,
                MEM_RESERVE,
                PAGE_NOACCESS,
                level as i32,
                &mut p,
            )
        };
        check(h)?;
        NonNull::new(p.cast::<u8>()).ok_or(Error::Host(hr::E_OUTOFMEMORY))
    }

    fn commit(&self, addr: NonNull<u8>, len: usize, level: CriticalLevel) -> Result<(), Error> {
        let mut p: *mut c_void = ptr::null_mut();
        // SAFETY: as in `reserve`; `addr` is inside a reservation of this host (trait contract).
        let h = unsafe {
            (self.methods.virtual_alloc)(
                self.as_raw(),
                addr.as_ptr().cast(),
                len,
                MEM_COMMIT,
                PAGE_READWRITE,
                level as i32,
                &mut p,
            )
        };
        check(h)?;
        if p.cast::<u8>() != addr.as_ptr() {
            log::error!("host committed {len} bytes at {p:p} instead of {addr:p}");
            return Err(Error::Host(hr::HOST_E_INVALIDOPERATION));
        }
        Ok(())
    }

    fn decommit(&self, addr: NonNull<u8>, len: usize) -> Result<(), Error> {
        // SAFETY: `this` is live; the range is inside a reservation of this host (trait contract).
        check(unsafe { (self.methods.virtual_free)(self.as_raw(), addr.as_ptr().cast(), len, MEM_DECOMMIT) })
    }

    fn release(&self, base: NonNull<u8>, _len: usize) -> Result<(), Error> {
        // SAFETY: `this` is live; `base` is the base of a reservation of this host.
        check(unsafe { (self.methods.virtual_free)(self.as_raw(), base.as_ptr().cast(), 0, MEM_RELEASE) })
    }

    fn memory_load(&self) -> Result<(u32, usize), Error> {
        let (mut load, mut avail) = (0u32, 0usize);
        // SAFETY: `this` is live; both out-pointers are locals.
        check(unsafe { (self.methods.get_memory_load)(self.as_raw(), &mut load, &mut avail) })?;
        Ok((load.min(100), avail))
    }

    /// Creates napalloc's callback object around `notify` and registers it; the host takes its
    /// own reference (COM), and we keep ours until the next registration or drop.
    fn register_memory_notify(&self, notify: MemoryNotify) -> Result<(), Error> {
        let cb = new_memory_notification_callback(notify);
        // SAFETY: `this` is live; `cb` is a live callback object on which we hold a reference.
        let h = unsafe { (self.methods.register_memory_notification_callback)(self.as_raw(), cb.as_ptr()) };
        if let Err(e) = check(h) {
            // SAFETY: we own the only reference napalloc took on `cb` (the host refused it).
            unsafe { release_callback(cb) };
            return Err(e);
        }
        if let Some(old) = NonNull::new(self.callback.swap(cb.as_ptr(), Ordering::AcqRel)) {
            // SAFETY: we owned one reference on the replaced callback.
            unsafe { release_callback(old) };
        }
        Ok(())
    }

    fn needs_virtual_address_space(&self, addr: NonNull<u8>, len: usize) -> Result<(), Error> {
        // SAFETY: `this` is live; the call only informs the host.
        check(unsafe { (self.methods.needs_virtual_address_space)(self.as_raw(), addr.as_ptr().cast(), len) })
    }

    fn acquired_virtual_address_space(&self, addr: NonNull<u8>, len: usize) -> Result<(), Error> {
        // SAFETY: `this` is live; the call only informs the host.
        check(unsafe { (self.methods.acquired_virtual_address_space)(self.as_raw(), addr.as_ptr().cast(), len) })
    }

    fn released_virtual_address_space(&self, addr: NonNull<u8>) -> Result<(), Error> {
        // SAFETY: `this` is live; the call only informs the host.
        check(unsafe { (self.methods.released_virtual_address_space)(self.as_raw(), addr.as_ptr().cast()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Mutex};

    /// Drops count themselves, so that the test sees when the callback object is freed.
    struct DropCounter(Arc<AtomicUsize>);
    impl Drop for DropCounter {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn vtable_layouts_match_mscoree() {
        let slot = core::mem::size_of::<usize>();
        assert_eq!(core::mem::size_of::<IHostMemoryManagerVtbl>(), 13 * slot);
        assert_eq!(core::mem::offset_of!(IHostMemoryManagerVtbl, virtual_alloc), 4 * slot);
        assert_eq!(core::mem::offset_of!(IHostMemoryManagerVtbl, get_memory_load), 8 * slot);
        assert_eq!(core::mem::offset_of!(IHostMemoryManagerVtbl, released_virtual_address_space), 12 * slot);
        assert_eq!(core::mem::size_of::<ICLRMemoryNotificationCallbackVtbl>(), 4 * slot);
        assert_eq!(core::mem::size_of::<Guid>(), 16);
    }

    #[test]
    fn callback_object_counts_references_and_forwards() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let drops = Arc::new(AtomicUsize::new(0));
        let (s, guard) = (Arc::clone(&seen), DropCounter(Arc::clone(&drops)));
        let cb = new_memory_notification_callback(Box::new(move |m| {
            let _keep = &guard;
            s.lock().unwrap().push(m);
        }));
        let p = cb.as_ptr();
        // SAFETY: `cb` is live and we hold its one reference for the whole block, plus the ones
        // QueryInterface and AddRef hand out, which are released below.
        unsafe {
            let vt = &*(*p).vtbl;
            assert_eq!((vt.on_memory_notification)(p, 1), hr::S_OK);
            assert_eq!((vt.on_memory_notification)(p, 3), hr::S_OK);
            assert_eq!((vt.on_memory_notification)(p, 0), hr::E_INVALIDARG);
            assert_eq!((vt.on_memory_notification)(p, 4), hr::E_INVALIDARG);
            assert_eq!(*seen.lock().unwrap(), [MemoryAvailable::Low, MemoryAvailable::High]);

            let mut out: *mut c_void = p.cast();
            let imalloc = Guid { data1: 2, data2: 0, data3: 0, data4: [0xC0, 0, 0, 0, 0, 0, 0, 0x46] };
            assert_eq!((vt.query_interface)(p, &imalloc, &mut out), hr::E_NOINTERFACE);
            assert!(out.is_null(), "a refused QueryInterface clears *ppv");
            assert_eq!((vt.query_interface)(p, &IID_IUNKNOWN, ptr::null_mut()), hr::E_POINTER);
            assert_eq!((vt.query_interface)(p, &IID_ICLR_MEMORY_NOTIFICATION_CALLBACK, &mut out), hr::S_OK);
            assert_eq!(out, p.cast());
            assert_eq!((vt.query_interface)(p, &IID_IUNKNOWN, &mut out), hr::S_OK);
            assert_eq!((vt.add_ref)(p), 4);
            assert_eq!((vt.release)(p), 3);
            assert_eq!((vt.release)(p), 2);
            assert_eq!((vt.release)(p), 1);
            assert_eq!(drops.load(Ordering::Relaxed), 0, "still referenced");
            assert_eq!((vt.release)(p), 0);
        }
        assert_eq!(drops.load(Ordering::Relaxed), 1, "the last Release frees the object and its hook");
    }

    #[test]
    fn a_panicking_hook_does_not_cross_the_c_boundary() {
        let cb = new_memory_notification_callback(Box::new(|_| panic!("hook failure")));
        let p = cb.as_ptr();
        // SAFETY: `cb` is live; we give up our only reference at the end.
        unsafe {
            let vt = &*(*p).vtbl;
            assert_eq!((vt.on_memory_notification)(p, 1), hr::E_FAIL);
            assert_eq!((vt.release)(p), 0);
        }
    }

    #[test]
    fn received_vtable_slots_are_nullable_pointers() {
        assert_eq!(core::mem::size_of::<Option<VirtualAllocFn>>(), core::mem::size_of::<usize>());
    }

    #[test]
    fn adopting_null_fails() {
        // SAFETY: NULL is allowed.
        let e = unsafe { ComHostMemoryManager::adopt(ptr::null_mut()) }.unwrap_err();
        assert_eq!(e, Error::Host(hr::E_POINTER));
    }
}
