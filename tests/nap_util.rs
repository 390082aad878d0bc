//! The NapUtil functions through their C exports and the safe handles, over the process-wide
//! task heap. The tests of this binary take one lock each, so the heap's counters (live blocks,
//! refused pointers) move only by what the test running does, and are checked exactly.

use napalloc::heap;
use napalloc::hr::{E_INVALIDARG, S_OK};
use napalloc::nap::ffi::*;
use napalloc::nap::types::{self as raw, ComObject, IUnknownVtbl, SoHAttributeType};
use napalloc::nap::{ComPtr, Connections, CountedString, FixupInfo, NapError, SoH, SoHBuilder};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn live() -> u64 {
    heap::stats().live_blocks
}

fn bad() -> u64 {
    heap::stats().bad_pointers
}

/// A COM object living in a task-heap block, as a C server would allocate it: it frees its own
/// block (through the task heap) when its last reference goes.
#[repr(C)]
struct HeapObject {
    base: ComObject,
    refs: AtomicU32,
    /// Counts the `Release` calls of every object, shared.
    releases: *const AtomicU32,
}

unsafe extern "system" fn heap_add_ref(this: *mut ComObject) -> u32 {
    // SAFETY: `this` is a live HeapObject.
    unsafe { (*this.cast::<HeapObject>()).refs.fetch_add(1, Ordering::Relaxed) + 1 }
}

unsafe extern "system" fn heap_release(this: *mut ComObject) -> u32 {
    let o = this.cast::<HeapObject>();
    // SAFETY: `this` is a live HeapObject; `releases` outlives it.
    let left = unsafe {
        (*(*o).releases).fetch_add(1, Ordering::Relaxed);
        (*o).refs.fetch_sub(1, Ordering::Relaxed) - 1
    };
    if left == 0 {
        // Re-enters the task heap from inside FreeConnections: this only works if no heap lock is
        // held while Release runs.
        // SAFETY: the last reference is gone; nothing uses the object afterwards.
        assert!(unsafe { heap::free(o.cast()) });
    }
    left
}

static HEAP_VTBL: IUnknownVtbl =
    IUnknownVtbl { query_interface: None, add_ref: Some(heap_add_ref), release: Some(heap_release) };

fn new_heap_object(releases: &AtomicU32) -> *mut ComObject {
    let p = heap::alloc(std::mem::size_of::<HeapObject>()).unwrap().as_ptr().cast::<HeapObject>();
    // SAFETY: a fresh block of the object's size, 16-aligned.
    unsafe {
        p.write(HeapObject { base: ComObject { vtbl: &HEAP_VTBL }, refs: AtomicU32::new(1), releases });
    }
    p.cast()
}

#[test]
fn an_enforcement_client_hands_out_connections_and_the_consumer_frees_them() {
    let _g = serial();
    let (live0, bad0) = (live(), bad());
    let releases = AtomicU32::new(0);
    let objects: Vec<*mut ComObject> = (0..5).map(|_| new_heap_object(&releases)).collect();

    // The client: one reference per slot, taken with AddRef (slot 3 stays empty).
    let mut c = ptr::null_mut();
    // SAFETY: valid out pointer.
    assert_eq!(unsafe { AllocConnections(&mut c, 5) }, S_OK);
    for (i, &o) in objects.iter().enumerate().filter(|(i, _)| *i != 3) {
        // SAFETY: `o` is live; the slot owns the reference taken.
        unsafe {
            ComObject::add_ref(o);
            (*c).connections.add(i).write(o);
        }
    }
    assert_eq!(live(), live0 + 2 + 5);

    // The client drops its own references: the objects live on through the slots (except 3).
    for &o in &objects {
        // SAFETY: the client owns one reference to each.
        unsafe { ComObject::release(o) };
    }
    assert_eq!(live(), live0 + 2 + 4, "object 3 freed itself");

    // The consumer: FreeConnections releases each slot once; each object frees itself.
    // SAFETY: `c` is live; its slots hold owned references.
    unsafe { FreeConnections(c) };
    assert_eq!(releases.load(Ordering::Relaxed), 5 + 4);
    assert_eq!((live(), bad()), (live0, bad0));
}

#[test]
fn alloc_functions_refuse_bad_input_through_the_c_abi() {
    let _g = serial();
    let live0 = live();
    let mut c = NonNull::<raw::Connections>::dangling().as_ptr();
    let mut s = NonNull::<raw::CountedString>::dangling().as_ptr();
    let mut f = NonNull::<raw::FixupInfo>::dangling().as_ptr();
    let long: Vec<u16> = std::iter::repeat_n(u16::from(b'w'), 1025).chain([0]).collect();
    // SAFETY: every out pointer is valid or NULL; `long` is NUL-terminated.
    unsafe {
        assert_eq!(AllocConnections(&mut c, 21), E_INVALIDARG);
        assert_eq!(AllocConnections(ptr::null_mut(), 1), E_INVALIDARG);
        assert_eq!(AllocCountedString(&mut s, long.as_ptr()), E_INVALIDARG);
        assert_eq!(AllocCountedString(ptr::null_mut(), long.as_ptr()), E_INVALIDARG);
        assert_eq!(AllocFixupInfo(&mut f, 1001), E_INVALIDARG);
        assert_eq!(AllocFixupInfo(ptr::null_mut(), 0), E_INVALIDARG);
    }
    assert!(c.is_null() && s.is_null() && f.is_null());
    assert_eq!(live(), live0);
}

#[test]
fn every_c_free_refuses_bad_top_level_pointers_and_reports_each() {
    let _g = serial();
    let keep = heap::alloc(96).unwrap().as_ptr();
    // SAFETY: 96 fresh bytes.
    unsafe { keep.write_bytes(0xA5, 96) };
    let freed = heap::alloc(32).unwrap().as_ptr();
    let other = heap::alloc(32).unwrap().as_ptr();
    // SAFETY: live, freed once; `other` keeps its place from being reused by the next alloc.
    unsafe { heap::free(freed) };
    let mut foreign = [0u64; 16];
    let (live0, bad0) = (live(), bad());
    for p in [foreign.as_mut_ptr().cast::<u8>(), keep.wrapping_add(32), freed] {
        let mut info = p.cast::<raw::NapComponentRegistrationInfo>();
        // SAFETY: each pointer is refused without being read.
        unsafe {
            FreeConnections(p.cast());
            FreeCountedString(p.cast());
            FreeFixupInfo(p.cast());
            FreeIsolationInfo(p.cast());
            FreeIsolationInfoEx(p.cast());
            FreeSoH(p.cast());
            FreeNetworkSoH(p.cast());
            FreePrivateData(p.cast());
            FreeSoHAttributeValue(SoHAttributeType::ERROR_CODES, p.cast());
            FreeSoHAttributeValue(SoHAttributeType::HEALTH_CLASS, p.cast());
            FreeNapComponentRegistrationInfoArray(2, &mut info);
            FreeSystemHealthAgentState(p.cast());
        }
        assert_eq!(info, p.cast());
    }
    assert_eq!((live(), bad()), (live0, bad0 + 3 * 12));
    assert!(foreign.iter().all(|&x| x == 0));
    // SAFETY: `keep` holds 96 bytes.
    assert!(unsafe { std::slice::from_raw_parts(keep, 96) }.iter().all(|&b| b == 0xA5));
    // SAFETY: both live, freed once.
    unsafe { assert!(heap::free(keep) && heap::free(other)) };

    // NULL everywhere: nothing at all.
    let (live0, bad0) = (live(), bad());
    // SAFETY: NULL is a no-op.
    unsafe {
        FreeConnections(ptr::null_mut());
        FreeSoH(ptr::null_mut());
        FreeSoHAttributeValue(SoHAttributeType(6), ptr::null_mut());
        FreeNapComponentRegistrationInfoArray(1, ptr::null_mut());
    }
    assert_eq!((live(), bad()), (live0, bad0));
}

#[test]
fn safe_handles_go_to_c_and_come_back() -> Result<(), NapError> {
    let _g = serial();
    let live0 = live();

    // Rust builds, C frees.
    let s = CountedString::from_str("https://remediation.example/")?;
    let f = FixupInfo::new(4)?;
    let soh = SoHBuilder::new().attribute(2, &[0, 1, 0x37, 0x80]).attribute(11, &[]).attribute(9, b"v1").build()?;
    assert_eq!(live(), live0 + 2 + 2 + 1 + 1 + 2);
    // SAFETY: each structure came from `into_raw` and is freed once.
    unsafe {
        FreeCountedString(s.into_raw());
        FreeFixupInfo(f.into_raw());
        FreeSoH(soh.into_raw());
    }
    assert_eq!(live(), live0);

    // C builds (by hand, from task-heap blocks), Rust reads and frees.
    let attrs = heap::alloc(2 * 16).unwrap().as_ptr().cast::<raw::SoHAttribute>();
    let v = heap::alloc(3).unwrap().as_ptr();
    let sp = heap::alloc(16).unwrap().as_ptr().cast::<raw::SoH>();
    // SAFETY: fresh blocks of the sizes written.
    unsafe {
        v.copy_from_nonoverlapping(b"abc".as_ptr(), 3);
        attrs.write(raw::SoHAttribute { r#type: 10, size: 3, value: v });
        attrs.add(1).write(raw::SoHAttribute { r#type: 2, size: 0, value: ptr::null_mut() });
        sp.write(raw::SoH { count: 2, attributes: attrs });
    }
    // SAFETY: `sp` is handed over once.
    let soh = unsafe { SoH::from_raw(sp) }?;
    let read: Vec<(u16, Vec<u8>)> = soh.iter().map(|a| (a.ty, a.value.to_vec())).collect();
    assert_eq!(read, [(10, b"abc".to_vec()), (2, vec![])]);
    drop(soh);
    assert_eq!(live(), live0);

    // from_raw refuses what does not check out, and leaves it with the caller.
    let sp = heap::alloc(16).unwrap().as_ptr().cast::<raw::SoH>();
    let attrs = heap::alloc(16).unwrap().as_ptr().cast::<raw::SoHAttribute>();
    // SAFETY: fresh blocks; two attributes claimed, one fits.
    unsafe {
        attrs.write(raw::SoHAttribute { r#type: 10, size: 0, value: ptr::null_mut() });
        sp.write(raw::SoH { count: 2, attributes: attrs });
    }
    // SAFETY: refused, so nothing is taken over.
    assert_eq!(unsafe { SoH::from_raw(sp) }.unwrap_err(), NapError::InvalidArg);
    let mut on_stack = raw::CountedString { length: 0, string: ptr::null_mut() };
    // SAFETY: refused without a read.
    let r = unsafe { CountedString::from_raw(&mut on_stack) }.unwrap_err();
    assert_eq!(r, NapError::InvalidArg);
    assert_eq!(live(), live0 + 2);
    // SAFETY: still ours; `FreeSoH` clamps the count to the one attribute the array holds.
    unsafe { FreeSoH(sp) };
    assert_eq!(live(), live0);
    Ok(())
}

#[test]
fn connections_handle_counts_references_exactly() -> Result<(), NapError> {
    let _g = serial();
    let live0 = live();
    let releases = AtomicU32::new(0);
    let a = new_heap_object(&releases);
    let b = new_heap_object(&releases);
    {
        let mut conns = Connections::new(4)?;
        // SAFETY: `a` and `b` are live; the ComPtrs take over the creator's references.
        let (pa, pb) = unsafe { (ComPtr::from_raw(a).unwrap(), ComPtr::from_raw(b).unwrap()) };
        assert!(conns.set(0, pa.clone()).is_none());
        assert!(conns.set(2, pb).is_none());
        // Replacing a slot hands back the old reference.
        let old = conns.set(0, pa.clone()).unwrap();
        drop(old);
        assert_eq!(conns.get(2).map(|p| p.as_ptr()), Some(b));
        let taken = conns.take(0).unwrap();
        assert!(conns.get(0).is_none() && conns.take(0).is_none() && conns.get(9).is_none());
        drop(taken);
        drop(pa); // `a` now has no references left: it freed itself
        assert_eq!(live(), live0 + 2 + 1);
        assert_eq!(conns.len(), 4);
    } // FreeConnections releases `b`, which frees itself.
    assert_eq!(live(), live0);
    // from_raw(a)/from_raw(b) own 1 each; clone +1 twice; get +1 -1: a: 3 releases, b: 2.
    assert_eq!(releases.load(Ordering::Relaxed), 3 + 2);
    Ok(())
}

#[test]
fn handles_may_be_freed_on_another_thread() -> Result<(), NapError> {
    let _g = serial();
    let live0 = live();
    let s = CountedString::from_str("κόσμε")?;
    let f = FixupInfo::new(2)?;
    let soh = SoHBuilder::new().attribute(4, &[0, 0, 0, 0]).build()?;
    let t = std::thread::spawn(move || {
        assert_eq!(s.to_string(), "κόσμε");
        assert_eq!(f.results(), &[0, 0]);
        assert_eq!(soh.len(), 1);
    });
    t.join().unwrap();
    assert_eq!(live(), live0);
    Ok(())
}

/// A COM object whose `Release` runs a task-heap action of the test's choosing while
/// `FreeConnections` is between validating the structure and freeing it.
#[repr(C)]
struct Meddler {
    base: ComObject,
    action: fn(*mut raw::Connections),
    target: *mut raw::Connections,
    releases: AtomicU32,
}

unsafe extern "system" fn meddler_add_ref(_this: *mut ComObject) -> u32 {
    2
}

unsafe extern "system" fn meddler_release(this: *mut ComObject) -> u32 {
    // SAFETY: `this` is a live Meddler (on the test's stack).
    let m = unsafe { &*this.cast::<Meddler>() };
    if m.releases.fetch_add(1, Ordering::Relaxed) == 0 {
        (m.action)(m.target);
    }
    1
}

static MEDDLER_VTBL: IUnknownVtbl =
    IUnknownVtbl { query_interface: None, add_ref: Some(meddler_add_ref), release: Some(meddler_release) };

/// `FreeConnections` of a fresh structure whose first `Release` runs `action(structure)`;
/// returns the number of `Release` calls.
fn free_meddled(action: fn(*mut raw::Connections)) -> u32 {
    let mut c = ptr::null_mut();
    // SAFETY: valid out pointer.
    assert_eq!(unsafe { AllocConnections(&mut c, 4) }, S_OK);
    let mut m = Meddler { base: ComObject { vtbl: &MEDDLER_VTBL }, action, target: c, releases: AtomicU32::new(0) };
    let o: *mut ComObject = (&mut m as *mut Meddler).cast();
    // SAFETY: `c` is live with 4 slots; the object outlives the call.
    unsafe {
        (*c).connections.write(o);
        (*c).connections.add(2).write(o);
        FreeConnections(c);
    }
    m.releases.load(Ordering::Relaxed)
}

#[test]
fn free_connections_survives_a_release_that_uses_the_heap_meanwhile() {
    let _g = serial();
    static KEPT: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    let (live0, bad0) = (live(), bad());
    // 1. Release allocates: the structure and its array are no longer the newest blocks, so
    //    they are freed each on its own, exactly once.
    let n = free_meddled(|_| {
        let p = heap::alloc(40).expect("a block");
        KEPT.lock().unwrap().push(p.as_ptr() as usize);
    });
    assert_eq!(n, 2);
    assert_eq!((live(), bad()), (live0 + 1, bad0), "only the block Release made is left");
    for p in KEPT.lock().unwrap().drain(..) {
        // SAFETY: live, unused.
        assert!(unsafe { heap::free(p as *mut u8) });
    }
    // 2. Release allocates and frees a whole Connections of its own (the heap's tail moves and
    //    comes back to where it was).
    let n = free_meddled(|_| {
        let mut other = ptr::null_mut();
        // SAFETY: valid out pointer; `other` is live and its slots are NULL.
        unsafe {
            assert_eq!(AllocConnections(&mut other, 8), S_OK);
            FreeConnections(other);
        }
    });
    assert_eq!(n, 2);
    assert_eq!((live(), bad()), (live0, bad0));
    // 3. Release frees the structure itself (a caller's double free): nothing is freed twice,
    //    nothing crashes, and the second free is refused and reported.
    let n = free_meddled(|c| {
        // SAFETY: `c` is live here; the outer FreeConnections frees it again (the bug tested).
        unsafe { FreeConnections(c) };
    });
    assert!(n >= 2, "both slots released at least once ({n})");
    assert_eq!(live(), live0, "structure and array freed once");
    assert!(bad() > bad0, "the second free of the structure is reported");
    // 4. Release records a block of its own under the structure (through the Rust API): the
    //    tail has grown, so the pair is freed as any structure, and the new block, an embedded
    //    pointer of the structure now, goes with it.
    let bad1 = bad();
    let n = free_meddled(|c| {
        // SAFETY: `c` is live here.
        let s = unsafe { NonNull::new_unchecked(c.cast::<u8>()) };
        heap::alloc_child(s, 24).expect("a child of the structure");
    });
    assert_eq!(n, 2);
    assert_eq!((live(), bad()), (live0, bad1), "the structure went with everything recorded under it");
}
