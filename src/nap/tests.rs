//! The NapUtil functions over a private [`Region`] that can be told to fail an allocation, so
//! every failure path runs and the books (live blocks, refused pointers) are exact: these tests
//! share nothing with each other or with the process-wide task heap.
//!
//! Failure is injected two ways: [`TestMem::failing_at`] fails one chosen allocation (so every
//! step of every `Alloc*` fails once), and [`exhausted`] puts the region on a page budget and
//! fills it, so the page source itself refuses memory. (The process-wide task heap takes its
//! pages from the OS without a budget, so its allocations cannot be made to fail from here.)

use super::safe::{counted_string_in, NapError, SoHBuilder};
use super::types::*;
use super::util::*;
use crate::hr::{E_INVALIDARG, E_OUTOFMEMORY, S_OK};
use crate::region::Region;
use core::alloc::Layout;
use core::cell::Cell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU32, Ordering};

/// A task heap of its own: a region, an allocation counter that can fail one allocation, and a
/// count of the pointers reported through [`TaskMem::report_bad_pointer`].
struct TestMem {
    region: Region,
    fail_at: Cell<Option<usize>>,
    allocs: Cell<usize>,
    reported: Cell<u64>,
}

impl TestMem {
    fn over(region: Region) -> TestMem {
        TestMem { region, fail_at: Cell::new(None), allocs: Cell::new(0), reported: Cell::new(0) }
    }
    fn new() -> TestMem {
        TestMem {
            region: Region::builder().reserve(if cfg!(miri) { 1 << 20 } else { 16 << 20 }).build().unwrap(),
            fail_at: Cell::new(None),
            allocs: Cell::new(0),
            reported: Cell::new(0),
        }
    }
    /// Fail allocation number `n` (0-based) from now on, and only that one.
    fn failing_at(self, n: usize) -> TestMem {
        self.fail_at.set(Some(n));
        self.allocs.set(0);
        self
    }
    fn tick(&self) -> bool {
        let n = self.allocs.get();
        self.allocs.set(n + 1);
        self.fail_at.get() == Some(n)
    }
    /// Whether one of the next `k` allocations is the one told to fail.
    fn fails_within(&self, k: usize) -> bool {
        let n = self.allocs.get();
        self.fail_at.get().is_some_and(|f| (n..n + k).contains(&f))
    }
    fn live(&self) -> usize {
        self.region.stats().live_blocks
    }
    /// Pointers refused by the region (frees) plus those reported by the NapUtil functions.
    fn bad(&self) -> u64 {
        self.region.stats().bad_pointers + self.reported.get()
    }
    fn owns<T>(&self, p: *mut T) -> bool {
        NonNull::new(p.cast::<u8>()).is_some_and(|p| self.region.owns(p))
    }
    /// A root block of `size` bytes filled with `fill`, as a C caller's `CoTaskMemAlloc` gives.
    fn block<T>(&self, size: usize, fill: u8) -> *mut T {
        let p = self.region.alloc(Layout::from_size_align(size, 16).unwrap()).unwrap().as_ptr();
        // SAFETY: a fresh block of `size` bytes.
        unsafe { p.write_bytes(fill, size) };
        p.cast()
    }
    /// A root block holding `v`.
    fn boxed<T>(&self, v: T) -> *mut T {
        let p = self.block::<T>(core::mem::size_of::<T>(), 0);
        // SAFETY: a fresh, 16-aligned block of the size of T.
        unsafe { p.write(v) };
        p
    }
}

impl TaskMem for TestMem {
    fn alloc(&self, size: usize) -> Option<NonNull<u8>> {
        if self.tick() {
            return None;
        }
        self.region.alloc(Layout::from_size_align(size, 16).ok()?).ok()
    }
    fn alloc_child(&self, parent: NonNull<u8>, size: usize) -> Option<NonNull<u8>> {
        if self.tick() {
            return None;
        }
        self.region.alloc_child(parent, Layout::from_size_align(size, 16).ok()?).ok()
    }
    unsafe fn free(&self, p: *mut u8) -> bool {
        // SAFETY: forwarded caller guarantee.
        NonNull::new(p).is_some_and(|p| unsafe { self.region.free_one(p) }.is_ok())
    }
    unsafe fn free_tree(&self, p: *mut u8) -> bool {
        // SAFETY: forwarded caller guarantee.
        NonNull::new(p).is_some_and(|p| unsafe { self.region.free(p) }.is_ok())
    }
    fn size_of(&self, p: *const u8) -> Option<usize> {
        self.region.size_of(NonNull::new(p as *mut u8)?)
    }
    fn report_bad_pointer(&self, _what: &str, _p: *const u8) {
        self.reported.set(self.reported.get() + 1);
    }
    // The pending-tail shortcut of `FreeConnections`, as the task heap takes it.
    fn tail_pair(&self, p: *const u8) -> Option<(usize, *mut u8, usize, *const u8)> {
        self.region.tail_pair(p).map(|(size, q, q_size)| (size, q, q_size, self.region.tail_end()))
    }
    unsafe fn try_free_tail_to(&self, p: *const u8, end: *const u8) -> bool {
        // SAFETY: forwarded caller guarantee.
        unsafe { self.region.try_free_tail_to(p, end) }
    }
    // The pending pair of `AllocConnections`, as the task heap builds it; a failure to be
    // injected fails it before anything is allocated, and the general path then fails as well.
    fn try_alloc_pair(&self, size: usize, child: usize) -> Option<(NonNull<u8>, NonNull<u8>)> {
        if self.fails_within(2) {
            return None;
        }
        let pair = self.region.try_alloc_pair(size, child)?;
        self.tick();
        self.tick();
        Some(pair)
    }
}

/// A C-style COM object counting its references and its `Release` calls.
#[repr(C)]
struct Fake {
    base: ComObject,
    refs: AtomicU32,
    releases: AtomicU32,
}

unsafe extern "system" fn fake_add_ref(this: *mut ComObject) -> u32 {
    // SAFETY: `this` points to a live `Fake` (its first field).
    unsafe { (*this.cast::<Fake>()).refs.fetch_add(1, Ordering::Relaxed) + 1 }
}

unsafe extern "system" fn fake_release(this: *mut ComObject) -> u32 {
    // SAFETY: as in `fake_add_ref`.
    let f = unsafe { &*this.cast::<Fake>() };
    f.releases.fetch_add(1, Ordering::Relaxed);
    f.refs.fetch_sub(1, Ordering::Relaxed) - 1
}

static FAKE_VTBL: IUnknownVtbl =
    IUnknownVtbl { query_interface: None, add_ref: Some(fake_add_ref), release: Some(fake_release) };

fn fakes<const N: usize>() -> Box<[Fake; N]> {
    Box::new(core::array::from_fn(|_| Fake {
        base: ComObject { vtbl: &FAKE_VTBL },
        refs: AtomicU32::new(1),
        releases: AtomicU32::new(0),
    }))
}

fn obj(f: &Fake) -> *mut ComObject {
    f as *const Fake as *mut ComObject
}

fn utf16(s: &str) -> Vec<u16> {
    s.encode_utf16().chain([0]).collect()
}

// ---------------------------------------------------------------------------------------------
// AllocConnections
// ---------------------------------------------------------------------------------------------

#[test]
fn alloc_connections_builds_a_struct_and_a_separate_zeroed_child_array() {
    let m = TestMem::new();
    for count in 0..=MAX_CONNECTION_COUNT_PER_ENFORCER {
        // Dirty the memory the next blocks will reuse, so zero-filling is observable.
        let dirt = m.block::<u8>(16 + 20 * 8, 0xAB);
        // SAFETY: `dirt` is live and unused afterwards.
        unsafe { m.free_tree(dirt) };
        let mut p = NonNull::<Connections>::dangling().as_ptr();
        // SAFETY: `p` is a valid out pointer.
        assert_eq!(unsafe { alloc_connections_in(&m, &mut p, count) }, S_OK);
        assert!(m.owns(p));
        // SAFETY: `p` is the live structure just built.
        let c = unsafe { p.read() };
        assert_eq!(c.count, count);
        if count == 0 {
            assert!(c.connections.is_null());
            assert_eq!(m.live(), 1);
        } else {
            assert_ne!(c.connections.cast::<u8>(), p.cast::<u8>());
            assert_eq!(m.size_of(c.connections.cast()), Some(usize::from(count) * 8));
            // SAFETY: the array holds `count` slots.
            let slots = unsafe { core::slice::from_raw_parts(c.connections, usize::from(count)) };
            assert!(slots.iter().all(|s| s.is_null()), "count {count}: slots not zeroed");
            assert_eq!(m.live(), 2);
        }
        // The array is recorded under the structure: freeing the tree frees both.
        // SAFETY: `p` is live and unused afterwards.
        unsafe { m.free_tree(p.cast()) };
        assert_eq!(m.live(), 0, "count {count}");
    }
    assert_eq!(m.bad(), 0);
}

#[test]
fn alloc_connections_refuses_bad_arguments_and_leaves_out_null() {
    let m = TestMem::new();
    // SAFETY: a NULL out pointer is refused before anything is written.
    assert_eq!(unsafe { alloc_connections_in(&m, ptr::null_mut(), 1) }, E_INVALIDARG);
    for count in [21, 100, u16::MAX] {
        let mut p = NonNull::<Connections>::dangling().as_ptr();
        // SAFETY: `p` is a valid out pointer.
        let hr = unsafe { alloc_connections_in(&m, &mut p, count) };
        assert_eq!(hr, E_INVALIDARG, "count {count}");
        assert!(p.is_null());
    }
    assert_eq!((m.live(), m.allocs.get()), (0, 0));
}

#[test]
fn alloc_connections_out_of_memory_at_every_step_leaks_nothing() {
    for (count, steps) in [(0u16, 1usize), (1, 2), (8, 2), (20, 2)] {
        for k in 0..steps {
            let m = TestMem::new().failing_at(k);
            let mut p = NonNull::<Connections>::dangling().as_ptr();
            // SAFETY: `p` is a valid out pointer.
            let hr = unsafe { alloc_connections_in(&m, &mut p, count) };
            assert_eq!(hr, E_OUTOFMEMORY, "count {count}, step {k}");
            assert!(p.is_null());
            assert_eq!(m.live(), 0, "count {count}, step {k}: leaked");
        }
        // One more step than needed: nothing fails.
        let m = TestMem::new().failing_at(steps);
        let mut p = ptr::null_mut();
        // SAFETY: `p` is a valid out pointer.
        assert_eq!(unsafe { alloc_connections_in(&m, &mut p, count) }, S_OK);
        assert_eq!(m.allocs.get(), steps);
    }
}

// ---------------------------------------------------------------------------------------------
// AllocCountedString
// ---------------------------------------------------------------------------------------------

#[test]
fn alloc_counted_string_copies_into_a_separate_buffer_with_its_nul() {
    let m = TestMem::new();
    for s in ["", "a", "http://fixup/", &"x".repeat(1024)] {
        let w = utf16(s);
        let mut p = ptr::null_mut();
        // SAFETY: `w` is NUL-terminated; `p` is a valid out pointer.
        assert_eq!(unsafe { alloc_counted_string_in(&m, &mut p, w.as_ptr()) }, S_OK);
        // SAFETY: the live structure just built.
        let c = unsafe { p.read() };
        assert_eq!(usize::from(c.length), w.len() - 1);
        assert_ne!(c.string, w.as_ptr() as *mut u16);
        assert_eq!(m.size_of(c.string.cast()), Some(w.len() * 2));
        // SAFETY: the buffer holds length + 1 units.
        assert_eq!(unsafe { core::slice::from_raw_parts(c.string, w.len()) }, &w[..]);
        // SAFETY: live, unused afterwards.
        unsafe { m.free_tree(p.cast()) };
        assert_eq!(m.live(), 0, "{s:?}: the buffer is recorded under the structure");
    }
}

#[test]
fn alloc_counted_string_refuses_null_and_overlong_strings() {
    let m = TestMem::new();
    let w = utf16("ok");
    // SAFETY: NULL out pointer, refused.
    let hr = unsafe { alloc_counted_string_in(&m, ptr::null_mut(), w.as_ptr()) };
    assert_eq!(hr, E_INVALIDARG);
    let mut p = NonNull::<CountedString>::dangling().as_ptr();
    // SAFETY: NULL string, refused; `p` is a valid out pointer.
    let hr = unsafe { alloc_counted_string_in(&m, &mut p, ptr::null()) };
    assert_eq!(hr, E_INVALIDARG);
    assert!(p.is_null());
    for len in [1025, 1026, 5000] {
        let long = utf16(&"y".repeat(len));
        let mut p = NonNull::<CountedString>::dangling().as_ptr();
        // SAFETY: NUL-terminated; valid out pointer.
        let hr = unsafe { alloc_counted_string_in(&m, &mut p, long.as_ptr()) };
        assert_eq!(hr, E_INVALIDARG, "{len}");
        assert!(p.is_null());
    }
    assert_eq!((m.live(), m.allocs.get()), (0, 0));
}

#[test]
fn alloc_counted_string_out_of_memory_at_every_step_leaks_nothing() {
    let w = utf16("fixup server");
    for k in 0..2 {
        let m = TestMem::new().failing_at(k);
        let mut p = NonNull::<CountedString>::dangling().as_ptr();
        // SAFETY: NUL-terminated; valid out pointer.
        let hr = unsafe { alloc_counted_string_in(&m, &mut p, w.as_ptr()) };
        assert_eq!(hr, E_OUTOFMEMORY);
        assert!(p.is_null());
        assert_eq!(m.live(), 0, "step {k}");
    }
}

/// The length scan stops at unit 1025: a string without a NUL that ends right before an
/// inaccessible page is refused without touching that page, and so is one whose NUL is the last
/// readable unit (accepted if short enough).
#[test]
#[cfg(all(unix, not(miri)))]
fn alloc_counted_string_never_reads_past_what_it_needs() {
    let page = 4096usize;
    let len = 2 * page;
    // SAFETY: an anonymous private mapping of two pages; the second is made inaccessible.
    let base = unsafe {
        let p = libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        assert_eq!(libc::mprotect(p.cast::<u8>().add(page).cast(), page, libc::PROT_NONE), 0);
        p.cast::<u16>()
    };
    let end = page / 2; // units in the readable page
    let m = TestMem::new();
    // SAFETY: the first page is readable and writable; every read below stays in it if the scan
    // is bounded as documented (a read of the second page would kill the test with SIGSEGV).
    unsafe {
        // 1025 units without a NUL, the last one the last of the readable page.
        let s = base.add(end - 1025);
        for i in 0..1025 {
            s.add(i).write(u16::from(b'z'));
        }
        let mut p = ptr::null_mut();
        assert_eq!(alloc_counted_string_in(&m, &mut p, s), E_INVALIDARG);
        // 1024 units and the NUL, the NUL the last readable unit.
        let s = base.add(end - 1025);
        base.add(end - 1).write(0);
        assert_eq!(alloc_counted_string_in(&m, &mut p, s), S_OK);
        assert_eq!((*p).length, 1024);
        m.free_tree(p.cast());
        assert_eq!(libc::munmap(base.cast(), len), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// AllocFixupInfo
// ---------------------------------------------------------------------------------------------

#[test]
fn alloc_fixup_info_zero_fills_struct_and_child_results() {
    let m = TestMem::new();
    for count in [0u16, 1, 7, 1000] {
        let dirt = m.block::<u8>(32 + 4000, 0xCD);
        // SAFETY: live, unused afterwards.
        unsafe { m.free_tree(dirt) };
        let mut p = ptr::null_mut();
        // SAFETY: valid out pointer.
        assert_eq!(unsafe { alloc_fixup_info_in(&m, &mut p, count) }, S_OK);
        // SAFETY: the live structure just built.
        let f = unsafe { p.read() };
        assert_eq!((f.state, f.percentage, f.fixup_msg_id), (FixupState(0), 0, 0));
        assert_eq!(f.result_codes.count, count);
        if count == 0 {
            assert!(f.result_codes.results.is_null());
        } else {
            assert_eq!(m.size_of(f.result_codes.results.cast()), Some(usize::from(count) * 4));
            // SAFETY: `count` HRESULTs.
            let r = unsafe { core::slice::from_raw_parts(f.result_codes.results, usize::from(count)) };
            assert!(r.iter().all(|&h| h == 0));
        }
        // SAFETY: live, unused afterwards.
        unsafe { m.free_tree(p.cast()) };
        assert_eq!(m.live(), 0);
    }
}

#[test]
fn alloc_fixup_info_refuses_bad_arguments_and_survives_out_of_memory() {
    let m = TestMem::new();
    // SAFETY: NULL out pointer, refused.
    assert_eq!(unsafe { alloc_fixup_info_in(&m, ptr::null_mut(), 3) }, E_INVALIDARG);
    let mut p = NonNull::<FixupInfo>::dangling().as_ptr();
    // SAFETY: valid out pointer.
    assert_eq!(unsafe { alloc_fixup_info_in(&m, &mut p, 1001) }, E_INVALIDARG);
    assert!(p.is_null());
    for k in 0..2 {
        let m = TestMem::new().failing_at(k);
        let mut p = NonNull::<FixupInfo>::dangling().as_ptr();
        // SAFETY: valid out pointer.
        assert_eq!(unsafe { alloc_fixup_info_in(&m, &mut p, 12) }, E_OUTOFMEMORY);
        assert!(p.is_null());
        assert_eq!(m.live(), 0, "step {k}");
    }
}

// ---------------------------------------------------------------------------------------------
// Free*: what they free
// ---------------------------------------------------------------------------------------------

#[test]
fn free_connections_releases_each_non_null_slot_once_then_frees_everything() {
    let m = TestMem::new();
    let objs = fakes::<8>();
    let mut p = ptr::null_mut();
    // SAFETY: valid out pointer.
    assert_eq!(unsafe { alloc_connections_in(&m, &mut p, 8) }, S_OK);
    for (i, f) in objs.iter().enumerate() {
        if i % 3 != 1 {
            // SAFETY: `f` is live; the slot owns the reference taken.
            unsafe {
                ComObject::add_ref(obj(f));
                (*p).connections.add(i).write(obj(f));
            }
        }
    }
    // SAFETY: `p` is live; its slots hold owned references.
    unsafe { free_connections_in(&m, p) };
    for (i, f) in objs.iter().enumerate() {
        let want = u32::from(i % 3 != 1);
        assert_eq!(f.releases.load(Ordering::Relaxed), want, "slot {i}");
        assert_eq!(f.refs.load(Ordering::Relaxed), 1, "slot {i}");
    }
    assert_eq!((m.live(), m.bad()), (0, 0));
}

#[test]
fn free_connections_of_hand_built_blocks_and_null_members() {
    let m = TestMem::new();
    let objs = fakes::<3>();
    // Separate root blocks, no records between them.
    let slots = m.block::<*mut ComObject>(3 * 8, 0);
    // SAFETY: a 3-slot block.
    unsafe { slots.add(2).write(obj(&objs[2])) };
    let c = m.boxed(Connections { count: 3, connections: slots });
    let empty = m.boxed(Connections { count: 5, connections: ptr::null_mut() });
    assert_eq!(m.live(), 3);
    // SAFETY: both live, unused afterwards; slot 2 holds the caller's reference.
    unsafe {
        free_connections_in(&m, c);
        free_connections_in(&m, empty);
        free_connections_in(&m, ptr::null_mut());
    }
    assert_eq!(objs.iter().map(|f| f.releases.load(Ordering::Relaxed)).collect::<Vec<_>>(), [0, 0, 1]);
    assert_eq!((m.live(), m.bad()), (0, 0));
}

#[test]
fn free_connections_clamps_a_count_beyond_its_array_and_skips_a_foreign_array() {
    let m = TestMem::new();
    let objs = fakes::<4>();
    let slots = m.block::<*mut ComObject>(2 * 8, 0);
    // SAFETY: a 2-slot block.
    unsafe {
        slots.write(obj(&objs[0]));
        slots.add(1).write(obj(&objs[1]));
    }
    let c = m.boxed(Connections { count: 20, connections: slots });
    // SAFETY: live; the two slots hold references.
    unsafe { free_connections_in(&m, c) };
    assert_eq!(objs.iter().map(|f| f.releases.load(Ordering::Relaxed)).collect::<Vec<_>>(), [1, 1, 0, 0]);
    assert_eq!((m.live(), m.bad()), (0, 1), "clamped and reported");

    // An array the heap did not hand out is not read (no Release) and its free is refused.
    let mut foreign = [obj(&objs[2]), obj(&objs[3])];
    let c = m.boxed(Connections { count: 2, connections: foreign.as_mut_ptr() });
    // SAFETY: `c` is live; the foreign array is never read or freed.
    unsafe { free_connections_in(&m, c) };
    assert_eq!(objs[2].releases.load(Ordering::Relaxed), 0);
    assert_eq!((m.live(), m.bad()), (0, 2));

    // A structure that is its own array: nothing is released, the structure is freed once.
    let c = m.boxed(Connections { count: 2, connections: ptr::null_mut() });
    // SAFETY: `c` is live.
    unsafe {
        (*c).connections = c.cast();
        free_connections_in(&m, c);
    }
    assert_eq!((m.live(), m.bad()), (0, 3));
}

#[test]
fn free_counted_string_fixup_isolation_network_private_free_their_member_then_the_struct() {
    let m = TestMem::new();
    let s = m.block::<u16>(10, 1);
    let cs = m.boxed(CountedString { length: 4, string: s });
    let r = m.block::<i32>(12, 2);
    let fi = m.boxed(FixupInfo {
        state: FixupState::IN_PROGRESS,
        percentage: 50,
        result_codes: ResultCodes { count: 3, results: r },
        fixup_msg_id: 9,
    });
    let u1 = m.block::<u16>(40, 3);
    let ii = m.boxed(IsolationInfo {
        isolation_state: IsolationState::IN_PROBATION,
        prob_end_time: FileTime::from_u64(5),
        failure_url: CountedString { length: 19, string: u1 },
    });
    let u2 = m.block::<u16>(40, 3);
    let iix = m.boxed(IsolationInfoEx {
        isolation_state: IsolationState::RESTRICTED_ACCESS,
        extended_isolation_state: ExtendedIsolationState::INFECTED,
        prob_end_time: FileTime::from_u64(6),
        failure_url: CountedString { length: 19, string: u2 },
    });
    let d1 = m.block::<u8>(100, 4);
    let ns = m.boxed(NetworkSoH { size: 100, data: d1 });
    let d2 = m.block::<u8>(200, 5);
    let pd = m.boxed(PrivateData { size: 200, data: d2 });
    let keep = m.block::<u8>(64, 0x77);
    assert_eq!(m.live(), 13);
    // SAFETY: every structure is live and unused afterwards.
    unsafe {
        free_counted_string_in(&m, cs);
        free_fixup_info_in(&m, fi);
        free_isolation_info_in(&m, ii);
        free_isolation_info_ex_in(&m, iix);
        free_network_soh_in(&m, ns);
        free_private_data_in(&m, pd);
    }
    assert_eq!((m.live(), m.bad()), (1, 0));
    assert!(m.owns(keep));
    // SAFETY: `keep` holds 64 bytes.
    assert!(unsafe { core::slice::from_raw_parts(keep, 64) }.iter().all(|&b| b == 0x77));

    // NULL members: only the structures go.
    let cs = m.boxed(CountedString { length: 0, string: ptr::null_mut() });
    let ns = m.boxed(NetworkSoH { size: 0, data: ptr::null_mut() });
    // SAFETY: live, unused afterwards.
    unsafe {
        free_counted_string_in(&m, cs);
        free_network_soh_in(&m, ns);
    }
    assert_eq!((m.live(), m.bad()), (1, 0));
}

#[test]
fn the_sdk_pattern_free_the_struct_alone_then_the_string() {
    let m = TestMem::new();
    let w = utf16("Contoso SHA");
    let mut p = ptr::null_mut();
    // SAFETY: NUL-terminated; valid out pointer.
    assert_eq!(unsafe { alloc_counted_string_in(&m, &mut p, w.as_ptr()) }, S_OK);
    // SAFETY: live structure: copied out, then freed alone (CoTaskMemFree).
    let copy = unsafe { p.read() };
    // SAFETY: `p` is live and not used afterwards.
    assert!(unsafe { m.free(p.cast()) });
    assert!(m.owns(copy.string), "the string outlives its structure");
    // SAFETY: the buffer holds length + 1 units.
    assert_eq!(unsafe { core::slice::from_raw_parts(copy.string, w.len()) }, &w[..]);
    // SAFETY: the string is live, freed once.
    assert!(unsafe { m.free(copy.string.cast()) });
    assert_eq!((m.live(), m.bad()), (0, 0));
}

#[test]
fn free_soh_frees_every_value_the_array_and_the_struct() {
    let m = TestMem::new();
    let attrs = m.block::<SoHAttribute>(10 * 16, 0);
    for i in 0..10u16 {
        let value = if i == 4 { ptr::null_mut() } else { m.block::<u8>(usize::from(i) + 1, i as u8) };
        // SAFETY: 10 attributes.
        unsafe { attrs.add(usize::from(i)).write(SoHAttribute { r#type: i + 2, size: i + 1, value }) };
    }
    let soh = m.boxed(SoH { count: 10, attributes: attrs });
    assert_eq!(m.live(), 11);
    // SAFETY: live, unused afterwards.
    unsafe { free_soh_in(&m, soh) };
    assert_eq!((m.live(), m.bad()), (0, 0));

    // Count beyond the array: clamped (reported); the values past it are not read.
    let attrs = m.block::<SoHAttribute>(2 * 16, 0);
    let v = m.block::<u8>(4, 1);
    // SAFETY: 2 attributes.
    unsafe { attrs.write(SoHAttribute { r#type: 9, size: 4, value: v }) };
    let soh = m.boxed(SoH { count: 100, attributes: attrs });
    // SAFETY: live, unused afterwards.
    unsafe { free_soh_in(&m, soh) };
    assert_eq!((m.live(), m.bad()), (0, 1));

    // A value equal to the array is skipped (the array is freed once, after the loop).
    let attrs = m.block::<SoHAttribute>(2 * 16, 0);
    // SAFETY: 2 attributes.
    unsafe { attrs.write(SoHAttribute { r#type: 9, size: 4, value: attrs.cast() }) };
    let soh = m.boxed(SoH { count: 2, attributes: attrs });
    // SAFETY: live, unused afterwards.
    unsafe { free_soh_in(&m, soh) };
    assert_eq!((m.live(), m.bad()), (0, 1));
}

#[test]
fn free_soh_attribute_value_frees_exactly_the_member_its_type_selects() {
    let m = TestMem::new();
    for t in -1..=20 {
        let ty = SoHAttributeType(t);
        let inner = m.block::<u8>(24, 0x5A);
        let value = m.block::<SoHAttributeValue>(16, 0);
        // Offset 8 holds a pointer to a live block whatever the type: only a type whose member
        // has a pointer may free it.
        // SAFETY: a 16-byte block; every member with a pointer has it at offset 8.
        unsafe { value.write(SoHAttributeValue { octet_string_val: OctetString { size: 24, data: inner } }) };
        // SAFETY: live; the member `ty` selects is initialised (all 16 bytes are).
        unsafe { free_soh_attribute_value_in(&m, ty, value) };
        assert!(!m.owns(value), "type {t}: the value block is freed");
        let has_pointer = !matches!(t, 2 | 5 | 8 | 12 | 14 | 16);
        assert_eq!(!m.owns(inner), has_pointer, "type {t}: the embedded pointer");
        if !has_pointer {
            // SAFETY: still live, freed once.
            unsafe { m.free_tree(inner) };
        }
        assert_eq!((m.live(), m.bad()), (0, 0), "type {t}");
    }
    // A type without a pointer accepts a block as small as its member; NULL does nothing.
    let small = m.block::<SoHAttributeValue>(4, 0);
    // SAFETY: live; the type reads nothing.
    unsafe {
        free_soh_attribute_value_in(&m, SoHAttributeType::SYSTEM_HEALTH_ID, small);
        free_soh_attribute_value_in(&m, SoHAttributeType::VENDOR_SPECIFIC, ptr::null_mut());
    }
    assert_eq!((m.live(), m.bad()), (0, 0));
    // A type with a pointer needs the whole union: a 4-byte block is refused, not read.
    let small = m.block::<SoHAttributeValue>(4, 0);
    // SAFETY: nothing is read through a refused block.
    unsafe { free_soh_attribute_value_in(&m, SoHAttributeType::ERROR_CODES, small) };
    assert_eq!((m.live(), m.bad()), (1, 1));
}

fn registration(m: &TestMem, id: u32, with_strings: bool) -> NapComponentRegistrationInfo {
    let s = |n: u16| CountedString {
        length: n,
        string: if with_strings { m.block::<u16>(usize::from(n + 1) * 2, 0x41) } else { ptr::null_mut() },
    };
    NapComponentRegistrationInfo {
        id,
        friendly_name: s(3),
        description: s(10),
        version: s(3),
        vendor_name: s(7),
        info_clsid: Guid::default(),
        config_clsid: Guid::default(),
        registration_date: FileTime::default(),
        component_type: 1,
    }
}

#[test]
fn free_registration_info_array_frees_every_string_then_the_block_and_nulls_it() {
    let m = TestMem::new();
    let block = m.block::<NapComponentRegistrationInfo>(3 * 120, 0);
    for i in 0..3 {
        // SAFETY: 3 entries.
        unsafe { block.add(i).write(registration(&m, i as u32, i != 1)) };
    }
    assert_eq!(m.live(), 1 + 2 * 4);
    let mut info = block;
    // SAFETY: `info` is a valid pointer to the live block.
    unsafe { free_nap_component_registration_info_array_in(&m, 3, &mut info) };
    assert!(info.is_null());
    assert_eq!((m.live(), m.bad()), (0, 0));

    // NULL info, NULL *info: nothing.
    let mut null = ptr::null_mut();
    // SAFETY: nothing is done.
    unsafe {
        free_nap_component_registration_info_array_in(&m, 3, ptr::null_mut());
        free_nap_component_registration_info_array_in(&m, 3, &mut null);
    }
    assert_eq!((m.live(), m.bad()), (0, 0));

    // A count beyond the block is clamped (reported); the block of one entry is all freed.
    let block = m.block::<NapComponentRegistrationInfo>(120, 0);
    // SAFETY: one entry.
    unsafe { block.write(registration(&m, 7, true)) };
    let mut info = block;
    // SAFETY: as above.
    unsafe { free_nap_component_registration_info_array_in(&m, 50, &mut info) };
    assert!(info.is_null());
    assert_eq!((m.live(), m.bad()), (0, 1));

    // A block that is not a live block start is not read, and *info is left alone.
    let block = m.block::<NapComponentRegistrationInfo>(240, 0);
    let mut info = block.cast::<u8>().wrapping_add(16).cast::<NapComponentRegistrationInfo>();
    let before = info;
    // SAFETY: the interior pointer is refused without a read.
    unsafe { free_nap_component_registration_info_array_in(&m, 1, &mut info) };
    assert_eq!(info, before);
    assert_eq!((m.live(), m.bad()), (1, 2));
}

#[test]
fn free_system_health_agent_state_frees_both_result_arrays() {
    let m = TestMem::new();
    let a = m.block::<i32>(8, 0);
    let b = m.block::<i32>(12, 0);
    let state = |a, b| SystemHealthAgentState {
        id: 0x13780,
        sha_result_codes: ResultCodes { count: 2, results: a },
        failure_category: FailureCategory::NONE,
        fixup_info: FixupInfo {
            state: FixupState::SUCCESS,
            percentage: PERCENTAGE_NOT_SUPPORTED,
            result_codes: ResultCodes { count: 3, results: b },
            fixup_msg_id: 0,
        },
    };
    let s = m.boxed(state(a, b));
    // SAFETY: live, unused afterwards.
    unsafe { free_system_health_agent_state_in(&m, s) };
    assert_eq!((m.live(), m.bad()), (0, 0));
    // Both members the same block: freed once, the second free refused and reported.
    let a = m.block::<i32>(8, 0);
    let s = m.boxed(state(a, a));
    // SAFETY: live, unused afterwards.
    unsafe { free_system_health_agent_state_in(&m, s) };
    assert_eq!((m.live(), m.bad()), (0, 1));
}

// ---------------------------------------------------------------------------------------------
// Free*: bad top-level pointers
// ---------------------------------------------------------------------------------------------

/// Calls every `Free*` on `p`.
///
/// # Safety
/// `p` is NULL or a pointer the functions refuse (so nothing is read through it).
unsafe fn free_all_kinds(m: &TestMem, p: *mut u8) {
    // SAFETY: caller guarantee: each call refuses `p` without reading it.
    unsafe {
        free_connections_in(m, p.cast());
        free_counted_string_in(m, p.cast());
        free_fixup_info_in(m, p.cast());
        free_isolation_info_in(m, p.cast());
        free_isolation_info_ex_in(m, p.cast());
        free_soh_in(m, p.cast());
        free_network_soh_in(m, p.cast());
        free_private_data_in(m, p.cast());
        free_soh_attribute_value_in(m, SoHAttributeType::VENDOR_SPECIFIC, p.cast());
        free_soh_attribute_value_in(m, SoHAttributeType::SYSTEM_HEALTH_ID, p.cast());
        let mut info = p.cast::<NapComponentRegistrationInfo>();
        free_nap_component_registration_info_array_in(m, 1, &mut info);
        assert_eq!(info, p.cast(), "*info is left alone");
        free_system_health_agent_state_in(m, p.cast());
    }
}
const FREE_KINDS: u64 = 12;

#[test]
fn every_free_refuses_foreign_interior_freed_and_small_pointers_and_changes_nothing() {
    let m = TestMem::new();
    // Live blocks whose contents must survive, one of them a valid-looking structure.
    let keep = m.block::<u8>(256, 0x3C);
    let s = m.block::<u16>(8, 0x11);
    let cs = m.boxed(CountedString { length: 3, string: s });
    let freed = m.block::<u8>(64, 0);
    let small = m.block::<u8>(8, 0x22);
    // SAFETY: live, freed once; used below only as a refused pointer. Nothing is allocated
    // afterwards, so its place is not reused.
    unsafe { m.free_tree(freed) };
    let mut on_stack = [0x99u8; 128];

    let cases: [(&str, *mut u8); 5] = [
        ("foreign (stack)", on_stack.as_mut_ptr()),
        ("interior", keep.wrapping_add(16)),
        ("freed", freed),
        ("too small", small),
        ("interior of a struct", cs.cast::<u8>().wrapping_add(8)),
    ];
    for (what, p) in cases {
        let (bad, live) = (m.bad(), m.live());
        // SAFETY: `p` is refused by every function that would read through it.
        unsafe { free_all_kinds(&m, p) };
        if what == "too small" {
            // A live 8-byte block is too small for every structure, but FreeSoHAttributeValue
            // of a type without a pointer reads nothing and frees it; the two calls after that
            // see a freed pointer.
            assert_eq!((m.bad() - bad, live - m.live()), (FREE_KINDS - 1, 1), "{what}");
        } else {
            assert_eq!((m.bad() - bad, live - m.live()), (FREE_KINDS, 0), "{what}: every call reports, none frees");
        }
    }
    assert!(on_stack.iter().all(|&b| b == 0x99));
    // SAFETY: `keep` has 256 bytes.
    assert!(unsafe { core::slice::from_raw_parts(keep, 256) }.iter().all(|&b| b == 0x3C));
    assert!(m.owns(cs) && m.owns(s));
    // SAFETY: `cs` and its string are still intact and freed once.
    unsafe {
        assert_eq!((*cs).string, s);
        free_counted_string_in(&m, cs);
    }
    assert_eq!(m.live(), 1);

    // NULL: nothing, nothing reported.
    let before = m.bad();
    // SAFETY: NULL is a no-op for every function.
    unsafe { free_all_kinds(&m, ptr::null_mut()) };
    assert_eq!((m.live(), m.bad()), (1, before));
}

// ---------------------------------------------------------------------------------------------
// Safe layer: out of memory
// ---------------------------------------------------------------------------------------------

#[test]
fn soh_builder_out_of_memory_at_every_step_leaks_nothing() {
    let values: Vec<Vec<u8>> = (0..5).map(|i| vec![i as u8; i * 7]).collect();
    let mut b = SoHBuilder::new();
    for (i, v) in values.iter().enumerate() {
        b = b.attribute(i as u16 + 2, v);
    }
    // struct + array + 4 non-empty values
    let steps = 2 + 4;
    for k in 0..steps {
        let m = TestMem::new().failing_at(k);
        assert_eq!(b.build_in(&m).unwrap_err(), NapError::OutOfMemory, "step {k}");
        assert_eq!(m.live(), 0, "step {k}: leaked");
    }
    let m = TestMem::new().failing_at(steps);
    let soh = b.build_in(&m).unwrap();
    assert_eq!(m.live(), steps);
    // Recorded as a tree: the structure's tree holds the array and the values.
    // SAFETY: live, unused afterwards.
    unsafe { m.free_tree(soh.as_ptr().cast()) };
    assert_eq!(m.live(), 0);

    // Built here, freed by FreeSoH over the same memory.
    let m = TestMem::new();
    let soh = b.build_in(&m).unwrap();
    // SAFETY: live, unused afterwards.
    unsafe { free_soh_in(&m, soh.as_ptr()) };
    assert_eq!((m.live(), m.bad()), (0, 0));
}

#[test]
fn counted_string_builder_out_of_memory_leaks_nothing() {
    for k in 0..2 {
        let m = TestMem::new().failing_at(k);
        assert_eq!(counted_string_in(&m, 3, |u| u.fill(65)).unwrap_err(), NapError::OutOfMemory);
        assert_eq!(m.live(), 0);
    }
    let m = TestMem::new();
    assert_eq!(counted_string_in(&m, 1025, |_| {}).unwrap_err(), NapError::InvalidArg);
    assert_eq!(m.allocs.get(), 0);
}

/// A region whose page source is charged to a budget of 256 KiB (64 KiB under Miri), filled with 16-byte blocks until
/// the budget refuses more, then with one 16-byte block freed again: a structure fits (in the
/// dead slot), anything larger does not.
fn exhausted() -> (TestMem, usize) {
    let limit = if cfg!(miri) { 64 << 10 } else { 256 << 10 };
    let budget = crate::host::Budget::new(limit, limit).unwrap();
    let region = Region::builder()
        .reserve(if cfg!(miri) { 1 << 20 } else { 16 << 20 })
        .commit_chunk(4096)
        .source(crate::host::Source::os().with_budget(budget))
        .build()
        .unwrap();
    let m = TestMem::over(region);
    let mut last = None;
    while let Some(p) = m.alloc(16) {
        last = Some(p);
    }
    assert!(m.alloc(16).is_none() && m.alloc(100).is_none(), "the budget refuses more memory");
    // SAFETY: the newest filler is live and not used afterwards.
    assert!(unsafe { m.free(last.unwrap().as_ptr()) });
    let live = m.live();
    (m, live)
}

#[test]
fn allocation_failure_of_the_page_source_fails_each_alloc_and_leaks_nothing() {
    let (m, live) = exhausted();
    assert!(live > 100, "{live} blocks fit");
    let w = utf16("remediation server");
    let mut c = NonNull::<Connections>::dangling().as_ptr();
    let mut s = NonNull::<CountedString>::dangling().as_ptr();
    let mut f = NonNull::<FixupInfo>::dangling().as_ptr();
    // SAFETY: valid out pointers; `w` is NUL-terminated.
    let hrs = unsafe {
        [
            alloc_connections_in(&m, &mut c, 8),
            alloc_counted_string_in(&m, &mut s, w.as_ptr()),
            alloc_fixup_info_in(&m, &mut f, 100),
        ]
    };
    assert_eq!(hrs, [E_OUTOFMEMORY; 3]);
    assert!(c.is_null() && s.is_null() && f.is_null());
    let values = [[1u8; 40], [2u8; 40]];
    let soh = SoHBuilder::new().attribute(9, &values[0]).attribute(10, &values[1]).build_in(&m);
    assert_eq!(soh.unwrap_err(), NapError::OutOfMemory);
    assert_eq!(m.live(), live, "each structure that fit in the dead slot was freed again");
    // What fits in the one free slot still works: a Connections without slots.
    let mut c = ptr::null_mut();
    // SAFETY: valid out pointer.
    assert_eq!(unsafe { alloc_connections_in(&m, &mut c, 0) }, S_OK);
    assert_eq!(m.live(), live + 1);
}
