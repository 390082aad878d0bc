//! Test page sources: a tracker that hands out OS pages and checks every call against what it
//! handed out, a fault-injecting `PageSource` over it, and a fake C-style `IHostMemoryManager`
//! COM object over it.
#![allow(dead_code)]

use core::ffi::c_void;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use napalloc::host::com::{
    Guid, ICLRMemoryNotificationCallback, IHostMemoryManager, IHostMemoryManagerVtbl, E_NOTIMPL,
    IID_IHOST_MEMORY_MANAGER, IID_IUNKNOWN, MEM_COMMIT, MEM_DECOMMIT, MEM_RELEASE, MEM_RESERVE, PAGE_NOACCESS,
    PAGE_READWRITE,
};
use napalloc::host::PageSource;
use napalloc::hr::{self, HRESULT};
use napalloc::os::{page_size, Reservation};
use napalloc::{CriticalLevel, Error};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

/// A small deterministic generator (xorshift64*), so that failures reproduce from the seed.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug)]
struct Entry {
    res: Reservation,
    /// Indices of the committed pages.
    committed: BTreeSet<usize>,
}

#[derive(Debug, Default)]
struct TrackerState {
    /// Reservations handed out and not released, by base address.
    live: BTreeMap<usize, Entry>,
    violations: Vec<String>,
}

/// Hands out OS reservations and records every page napalloc commits, decommits and releases,
/// refusing (and recording as a violation) anything that was not handed out.
#[derive(Debug, Default)]
pub struct Tracker {
    state: Mutex<TrackerState>,
    pub reserves: AtomicUsize,
    pub commits: AtomicUsize,
    pub decommits: AtomicUsize,
    pub releases: AtomicUsize,
}

impl Tracker {
    fn state(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn reserve(&self, len: usize) -> Result<NonNull<u8>, HRESULT> {
        self.reserves.fetch_add(1, Ordering::Relaxed);
        let res = Reservation::new(len).map_err(|_| hr::E_OUTOFMEMORY)?;
        let base = res.base();
        self.state().live.insert(base.as_ptr() as usize, Entry { res, committed: BTreeSet::new() });
        Ok(base)
    }

    /// The reservation containing `[addr, addr + len)`, the page range, or a violation.
    fn locate(st: &mut TrackerState, what: &str, addr: usize, len: usize) -> Result<(usize, usize, usize), HRESULT> {
        let page = page_size();
        let found = st.live.range(..=addr).next_back().map(|(&b, e)| (b, e.res.len()));
        match found {
            Some((base, rlen)) if addr % page == 0 && len % page == 0 && len > 0 && addr + len <= base + rlen => {
                Ok((base, (addr - base) / page, len / page))
            }
            _ => {
                st.violations
                    .push(format!("{what} of {len:#x} bytes at {addr:#x}: not inside a reservation handed out"));
                Err(hr::HOST_E_INVALIDOPERATION)
            }
        }
    }

    pub fn commit(&self, addr: usize, len: usize) -> Result<(), HRESULT> {
        self.commits.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state();
        let (base, first, n) = Self::locate(&mut st, "commit", addr, len)?;
        let e = st.live.get_mut(&base).unwrap();
        // SAFETY: the range is page-aligned and inside the reservation (checked just above).
        unsafe { e.res.commit(addr - base, len) }.map_err(|_| hr::E_OUTOFMEMORY)?;
        let again: Vec<usize> = (first..first + n).filter(|p| !e.committed.insert(*p)).collect();
        if !again.is_empty() {
            st.violations.push(format!("commit at {addr:#x}: pages {again:?} were already committed"));
        }
        Ok(())
    }

    pub fn decommit(&self, addr: usize, len: usize) -> Result<(), HRESULT> {
        self.decommits.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state();
        let (base, first, n) = Self::locate(&mut st, "decommit", addr, len)?;
        let e = st.live.get_mut(&base).unwrap();
        if let Some(p) = (first..first + n).find(|p| !e.committed.contains(p)) {
            st.violations.push(format!("decommit at {addr:#x}: page {p} was never committed"));
            return Err(hr::HOST_E_INVALIDOPERATION);
        }
        // SAFETY: the range is committed, inside the reservation, and napalloc gave it up.
        unsafe { e.res.decommit(addr - base, len) }.map_err(|_| hr::E_FAIL)?;
        for p in first..first + n {
            e.committed.remove(&p);
        }
        Ok(())
    }

    /// Release the reservation at exactly `base`; `len`, if given, must be its length.
    pub fn release(&self, base: usize, len: Option<usize>) -> Result<(), HRESULT> {
        self.releases.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state();
        match st.live.get(&base).map(|e| e.res.len()) {
            Some(l) if len.is_none_or(|len| len == l) => {
                st.live.remove(&base);
                Ok(())
            }
            other => {
                st.violations.push(format!("release of {len:?} bytes at {base:#x}: handed out {other:?}"));
                Err(hr::HOST_E_INVALIDOPERATION)
            }
        }
    }

    /// Bytes committed in reservations not yet released.
    pub fn committed_bytes(&self) -> usize {
        self.state().live.values().map(|e| e.committed.len()).sum::<usize>() * page_size()
    }

    pub fn live_reservations(&self) -> usize {
        self.state().live.len()
    }

    /// Whether `[p, p + len)` lies in committed pages of one reservation handed out.
    pub fn owns_committed(&self, p: *const u8, len: usize) -> bool {
        let page = page_size();
        let (addr, st) = (p as usize, self.state());
        let Some((&base, e)) = st.live.range(..=addr).next_back() else {
            return false;
        };
        let last = addr + len.max(1) - 1;
        last < base + e.res.len() && ((addr - base) / page..=(last - base) / page).all(|pg| e.committed.contains(&pg))
    }

    pub fn violations(&self) -> Vec<String> {
        self.state().violations.clone()
    }
}

/// One call a [`FaultySource`] saw: what (or "step", a marker the test pushes), address, length,
/// result.
pub type HostEvent = (&'static str, usize, usize, Result<(), Error>);

/// A `PageSource` over a [`Tracker`] that fails, at seeded random points, with each of the
/// HRESULTs a host may return.
#[derive(Debug)]
pub struct FaultySource {
    pub tracker: Tracker,
    rng: Mutex<Rng>,
    /// One call in `rate` fails while `enabled`.
    rate: u64,
    pub enabled: AtomicBool,
    /// Calls that reached this source.
    pub calls: AtomicU64,
    /// Faults injected, by HRESULT.
    injected: Mutex<HashMap<HRESULT, u64>>,
    /// Every call, as (what, address, length, result), while `trace` is on.
    pub trace: AtomicBool,
    pub events: Mutex<Vec<HostEvent>>,
}

pub const HOST_HRESULTS: [HRESULT; 6] = [
    hr::HOST_E_TIMEOUT,
    hr::HOST_E_NOT_OWNER,
    hr::HOST_E_ABANDONED,
    hr::HOST_E_CLRNOTAVAILABLE,
    hr::E_OUTOFMEMORY,
    hr::E_FAIL,
];

impl FaultySource {
    pub fn new(seed: u64, rate: u64) -> FaultySource {
        FaultySource {
            tracker: Tracker::default(),
            rng: Mutex::new(Rng::new(seed)),
            rate,
            enabled: AtomicBool::new(true),
            calls: AtomicU64::new(0),
            injected: Mutex::new(HashMap::new()),
            trace: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
        }
    }

    fn fault(&self) -> Result<(), Error> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.enabled.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut rng = self.rng.lock().unwrap();
        if rng.below(self.rate) != 0 {
            return Ok(());
        }
        // E_FAIL disables the source until reset: make it rarer than the transient errors.
        let pick = rng.below(HOST_HRESULTS.len() as u64 * 3);
        let hr = if pick < 5 * 3 {
            HOST_HRESULTS[(pick % 5) as usize]
        } else if pick % 3 == 0 {
            hr::E_FAIL
        } else {
            hr::E_OUTOFMEMORY
        };
        *self.injected.lock().unwrap().entry(hr).or_default() += 1;
        Err(Error::Host(hr))
    }

    pub fn injected(&self, hr: HRESULT) -> u64 {
        self.injected.lock().unwrap().get(&hr).copied().unwrap_or(0)
    }

    pub fn injected_total(&self) -> u64 {
        self.injected.lock().unwrap().values().sum()
    }
}

impl FaultySource {
    fn traced<T>(&self, what: &'static str, addr: usize, len: usize, r: Result<T, Error>) -> Result<T, Error> {
        if self.trace.load(Ordering::Relaxed) {
            self.events.lock().unwrap().push((what, addr, len, r.as_ref().map(|_| ()).map_err(|e| *e)));
        }
        r
    }
}

impl PageSource for FaultySource {
    fn reserve(&self, len: usize, _level: CriticalLevel) -> Result<NonNull<u8>, Error> {
        let r = self.fault().and_then(|()| self.tracker.reserve(len).map_err(Error::Host));
        let addr = r.as_ref().map_or(0, |p| p.as_ptr() as usize);
        self.traced("reserve", addr, len, r)
    }
    fn commit(&self, addr: NonNull<u8>, len: usize, _level: CriticalLevel) -> Result<(), Error> {
        let r = self.fault().and_then(|()| self.tracker.commit(addr.as_ptr() as usize, len).map_err(Error::Host));
        self.traced("commit", addr.as_ptr() as usize, len, r)
    }
    fn decommit(&self, addr: NonNull<u8>, len: usize) -> Result<(), Error> {
        let r = self.fault().and_then(|()| self.tracker.decommit(addr.as_ptr() as usize, len).map_err(Error::Host));
        self.traced("decommit", addr.as_ptr() as usize, len, r)
    }
    fn release(&self, base: NonNull<u8>, len: usize) -> Result<(), Error> {
        let r =
            self.fault().and_then(|()| self.tracker.release(base.as_ptr() as usize, Some(len)).map_err(Error::Host));
        self.traced("release", base.as_ptr() as usize, len, r)
    }
}

// ---------------------------------------------------------------------------------------------
// A fake C host: an `IHostMemoryManager` COM object laid out as C would lay it out.

/// The fake host object. `iface` must stay first: the interface pointer is the object's address.
#[repr(C)]
pub struct FakeHost {
    iface: IHostMemoryManager,
    /// COM references; the object frees itself when they reach 0.
    refs: AtomicU32,
    pub tracker: Tracker,
    /// HRESULTs the next `VirtualAlloc` calls fail with, in order.
    fail_next: Mutex<VecDeque<HRESULT>>,
    /// The registered notification callback (the host holds a reference), or null.
    callback: AtomicPtr<ICLRMemoryNotificationCallback>,
    /// Critical levels seen by `VirtualAlloc`, by value.
    pub levels: [AtomicUsize; 3],
    pub memory_loads: AtomicUsize,
    pub registrations: AtomicUsize,
    pub unexpected_calls: AtomicUsize,
    pub needs: AtomicUsize,
    pub acquired: AtomicUsize,
    pub released: AtomicUsize,
}

pub static FAKE_VTBL: IHostMemoryManagerVtbl = IHostMemoryManagerVtbl {
    query_interface: Some(fake_query_interface),
    add_ref: Some(fake_add_ref),
    release: Some(fake_release),
    create_malloc: Some(fake_create_malloc),
    virtual_alloc: Some(fake_virtual_alloc),
    virtual_free: Some(fake_virtual_free),
    virtual_query: Some(fake_virtual_query),
    virtual_protect: Some(fake_virtual_protect),
    get_memory_load: Some(fake_get_memory_load),
    register_memory_notification_callback: Some(fake_register),
    needs_virtual_address_space: Some(fake_needs),
    acquired_virtual_address_space: Some(fake_acquired),
    released_virtual_address_space: Some(fake_released),
};

/// The fake's vtable without `VirtualFree`, a method napalloc needs.
pub static FAKE_VTBL_NO_FREE: IHostMemoryManagerVtbl = IHostMemoryManagerVtbl { virtual_free: None, ..FAKE_VTBL };

/// The fake's vtable without the three methods napalloc never calls.
pub static FAKE_VTBL_MINIMAL: IHostMemoryManagerVtbl =
    IHostMemoryManagerVtbl { create_malloc: None, virtual_query: None, virtual_protect: None, ..FAKE_VTBL };

/// What the fake's `GetMemoryLoad` reports.
pub const FAKE_LOAD: (u32, usize) = (42, 123_456_789);

impl FakeHost {
    /// A new fake host with one reference, owned by the caller.
    pub fn create() -> *mut FakeHost {
        FakeHost::with_vtbl(&FAKE_VTBL)
    }

    /// A new fake host with this vtable (one reference, owned by the caller).
    pub fn with_vtbl(vtbl: &'static IHostMemoryManagerVtbl) -> *mut FakeHost {
        Box::into_raw(Box::new(FakeHost {
            iface: IHostMemoryManager { vtbl },
            refs: AtomicU32::new(1),
            tracker: Tracker::default(),
            fail_next: Mutex::new(VecDeque::new()),
            callback: AtomicPtr::new(ptr::null_mut()),
            levels: Default::default(),
            memory_loads: AtomicUsize::new(0),
            registrations: AtomicUsize::new(0),
            unexpected_calls: AtomicUsize::new(0),
            needs: AtomicUsize::new(0),
            acquired: AtomicUsize::new(0),
            released: AtomicUsize::new(0),
        }))
    }

    pub fn refs(&self) -> u32 {
        self.refs.load(Ordering::Acquire)
    }

    /// Give up the caller's reference from `create` (the fake frees itself at zero).
    ///
    /// # Safety
    /// `this` came from `create`/`with_vtbl` and the caller still holds that reference.
    pub unsafe fn release(this: *mut FakeHost) -> u32 {
        // SAFETY: caller's guarantee.
        unsafe { fake_release(this.cast()) }
    }

    pub fn fail_next(&self, hr: HRESULT) {
        self.fail_next.lock().unwrap().push_back(hr);
    }

    pub fn has_callback(&self) -> bool {
        !self.callback.load(Ordering::Acquire).is_null()
    }

    /// Tell the registered callback `OnMemoryNotification(available)`, as a host does.
    pub fn notify(&self, available: i32) -> HRESULT {
        let cb = self.callback.load(Ordering::Acquire);
        if cb.is_null() {
            return hr::E_POINTER;
        }
        // SAFETY: the host holds a reference on the registered callback.
        unsafe { ((*(*cb).vtbl).on_memory_notification)(cb, available) }
    }
}

/// Run a fake method, turning a panic into `E_FAIL` (no panic may cross an `extern` fn).
fn guard(f: impl FnOnce() -> HRESULT) -> HRESULT {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(hr::E_FAIL)
}

/// # Safety
/// `this` is a live fake host.
unsafe fn fake<'a>(this: *mut IHostMemoryManager) -> &'a FakeHost {
    // SAFETY: caller's guarantee; `iface` is the first field of the `repr(C)` object.
    unsafe { &*this.cast::<FakeHost>() }
}

unsafe extern "system" fn fake_query_interface(
    this: *mut IHostMemoryManager,
    riid: *const Guid,
    ppv: *mut *mut c_void,
) -> HRESULT {
    guard(|| {
        if ppv.is_null() || riid.is_null() {
            return hr::E_POINTER;
        }
        // SAFETY: non-null COM arguments.
        let iid = unsafe { riid.read() };
        if iid == IID_IUNKNOWN || iid == IID_IHOST_MEMORY_MANAGER {
            // SAFETY: live object; writable out-pointer.
            unsafe {
                fake_add_ref(this);
                ppv.write(this.cast());
            }
            hr::S_OK
        } else {
            // SAFETY: writable out-pointer.
            unsafe { ppv.write(ptr::null_mut()) };
            hr::E_NOINTERFACE
        }
    })
}

unsafe extern "system" fn fake_add_ref(this: *mut IHostMemoryManager) -> u32 {
    // SAFETY: the caller holds a reference.
    unsafe { fake(this) }.refs.fetch_add(1, Ordering::AcqRel) + 1
}

unsafe extern "system" fn fake_release(this: *mut IHostMemoryManager) -> u32 {
    // SAFETY: the caller gives up a reference it holds.
    let prev = unsafe { fake(this) }.refs.fetch_sub(1, Ordering::AcqRel);
    if prev == 1 {
        // SAFETY: last reference: the object came from `Box::into_raw` in `create`.
        let obj = unsafe { Box::from_raw(this.cast::<FakeHost>()) };
        let cb = obj.callback.swap(ptr::null_mut(), Ordering::AcqRel);
        if !cb.is_null() {
            // SAFETY: the host held a reference on the callback.
            unsafe { ((*(*cb).vtbl).release)(cb) };
        }
        drop(obj);
    }
    prev - 1
}

unsafe extern "system" fn fake_create_malloc(this: *mut IHostMemoryManager, _t: u32, _pp: *mut *mut c_void) -> HRESULT {
    // SAFETY: live object.
    unsafe { fake(this) }.unexpected_calls.fetch_add(1, Ordering::Relaxed);
    E_NOTIMPL
}

unsafe extern "system" fn fake_virtual_alloc(
    this: *mut IHostMemoryManager,
    address: *mut c_void,
    size: usize,
    allocation_type: u32,
    protect: u32,
    level: i32,
    pp_mem: *mut *mut c_void,
) -> HRESULT {
    guard(|| {
        // SAFETY: live object.
        let host = unsafe { fake(this) };
        if pp_mem.is_null() {
            return hr::E_POINTER;
        }
        // SAFETY: writable out-pointer (checked non-null).
        unsafe { pp_mem.write(ptr::null_mut()) };
        match CriticalLevel::from_raw(level) {
            Some(l) => host.levels[l as usize].fetch_add(1, Ordering::Relaxed),
            None => return hr::E_INVALIDARG,
        };
        if let Some(h) = host.fail_next.lock().unwrap().pop_front() {
            return h;
        }
        let r = match (address.is_null(), allocation_type, protect) {
            (true, MEM_RESERVE, PAGE_NOACCESS) => host.tracker.reserve(size).map(|p| p.as_ptr().cast()),
            (false, MEM_COMMIT, PAGE_READWRITE) => host.tracker.commit(address as usize, size).map(|()| address),
            _ => Err(hr::E_INVALIDARG),
        };
        match r {
            Ok(p) => {
                // SAFETY: as above.
                unsafe { pp_mem.write(p) };
                hr::S_OK
            }
            Err(h) => h,
        }
    })
}

unsafe extern "system" fn fake_virtual_free(
    this: *mut IHostMemoryManager,
    address: *mut c_void,
    size: usize,
    free_type: u32,
) -> HRESULT {
    guard(|| {
        // SAFETY: live object.
        let host = unsafe { fake(this) };
        let r = match free_type {
            MEM_DECOMMIT => host.tracker.decommit(address as usize, size),
            // Win32: MEM_RELEASE takes size 0 and the base the reserve returned.
            MEM_RELEASE if size == 0 => host.tracker.release(address as usize, None),
            _ => Err(hr::E_INVALIDARG),
        };
        r.err().unwrap_or(hr::S_OK)
    })
}

unsafe extern "system" fn fake_virtual_query(
    this: *mut IHostMemoryManager,
    _a: *mut c_void,
    _b: *mut c_void,
    _l: usize,
    _r: *mut usize,
) -> HRESULT {
    // SAFETY: live object.
    unsafe { fake(this) }.unexpected_calls.fetch_add(1, Ordering::Relaxed);
    E_NOTIMPL
}

unsafe extern "system" fn fake_virtual_protect(
    this: *mut IHostMemoryManager,
    _a: *mut c_void,
    _s: usize,
    _n: u32,
    _o: *mut u32,
) -> HRESULT {
    // SAFETY: live object.
    unsafe { fake(this) }.unexpected_calls.fetch_add(1, Ordering::Relaxed);
    E_NOTIMPL
}

unsafe extern "system" fn fake_get_memory_load(
    this: *mut IHostMemoryManager,
    load: *mut u32,
    avail: *mut usize,
) -> HRESULT {
    guard(|| {
        if load.is_null() || avail.is_null() {
            return hr::E_POINTER;
        }
        // SAFETY: live object; non-null out-pointers.
        unsafe {
            fake(this).memory_loads.fetch_add(1, Ordering::Relaxed);
            load.write(FAKE_LOAD.0);
            avail.write(FAKE_LOAD.1);
        }
        hr::S_OK
    })
}

unsafe extern "system" fn fake_register(
    this: *mut IHostMemoryManager,
    cb: *mut ICLRMemoryNotificationCallback,
) -> HRESULT {
    guard(|| {
        // SAFETY: live object.
        let host = unsafe { fake(this) };
        if cb.is_null() {
            return hr::E_POINTER;
        }
        host.registrations.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `cb` is a live callback; the host keeps a reference, as COM requires.
        unsafe { ((*(*cb).vtbl).add_ref)(cb) };
        let old = host.callback.swap(cb, Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: the host held a reference on the old callback.
            unsafe { ((*(*old).vtbl).release)(old) };
        }
        hr::S_OK
    })
}

unsafe extern "system" fn fake_needs(this: *mut IHostMemoryManager, _s: *mut c_void, _n: usize) -> HRESULT {
    // SAFETY: live object.
    unsafe { fake(this) }.needs.fetch_add(1, Ordering::Relaxed);
    hr::S_OK
}

unsafe extern "system" fn fake_acquired(this: *mut IHostMemoryManager, _s: *mut c_void, _n: usize) -> HRESULT {
    // SAFETY: live object.
    unsafe { fake(this) }.acquired.fetch_add(1, Ordering::Relaxed);
    hr::S_OK
}

unsafe extern "system" fn fake_released(this: *mut IHostMemoryManager, _s: *mut c_void) -> HRESULT {
    // SAFETY: live object.
    unsafe { fake(this) }.released.fetch_add(1, Ordering::Relaxed);
    hr::S_OK
}
