//! `naputil`: the 14 NapUtil functions through their C exports, with arbitrary counts, strings,
//! hand-built structures and bad pointers.
//!
//! Every operation builds something and frees it again, so after every operation the task heap's
//! books (`NapallocGetStats`) must be back where the input started: nothing leaked, nothing freed
//! twice. On top of that:
//! * `AllocConnections` / `AllocCountedString` / `AllocFixupInfo` with any count or string (NULL,
//!   longer than `maxStringLength`) and a NULL out-pointer: the SPEC §4 result, `*out` NULL on
//!   failure, separate zero-filled blocks of the right sizes, the string copied with its NUL;
//! * `FreeConnections` calls `Release` exactly once on every non-NULL slot (fake COM objects count);
//! * hand-built structures from separate `CoTaskMemAlloc` blocks go to every `Free*` with each
//!   embedded pointer NULL, an own block, a foreign pointer, an interior pointer, or a pointer into
//!   a reserved page that is not readable: the own blocks are freed, every bad embedded pointer is
//!   reported, and nothing is read through one (the unreadable page would crash);
//! * a bad top-level pointer (foreign, interior, freed, unreadable) frees nothing and is reported;
//! * `FreeSoHAttributeValue` reads a pointer only for the types that have one: for the others an
//!   unreadable pointer sits where a pointer member would be, and must be left alone.
#![no_main]

#[path = "shared/mod.rs"]
mod shared;

use arbitrary::{Arbitrary, Unstructured};
use core::ffi::c_void;
use core::ptr::{self, addr_of_mut};
use core::sync::atomic::{AtomicU32, Ordering};
use libfuzzer_sys::fuzz_target;
use napalloc::ffi::{CoTaskMemAlloc, CoTaskMemFree};
use napalloc::hr::{E_INVALIDARG, S_OK};
use napalloc::nap::ffi::*;
use napalloc::nap::types::*;
use napalloc::os::Reservation;
use shared::stats;
use std::sync::OnceLock;

const MAX_STEPS: usize = 200;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Emb {
    Null,
    /// An own block of this many bytes (mod 512).
    Own(u16),
    /// A pointer onto the stack.
    Foreign(u8),
    /// Inside an own block (which the caller still owns and frees itself).
    Interior(u8),
    /// A reserved, unreadable page.
    Unreadable(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Top {
    Null,
    Foreign,
    Interior,
    Freed,
    Unreadable,
}

#[derive(Arbitrary, Debug)]
enum Op {
    AllocConnections { count: u8, null_out: bool, slots: u32, split: bool },
    AllocCountedString { chars: Vec<u16>, repeat: u8, null_string: bool, null_out: bool, split: bool },
    AllocFixupInfo { count: u16, null_out: bool },
    Connections { array: Emb, count: u8, slots: u32 },
    CountedString { string: Emb, length: u16 },
    FixupInfo { results: Emb, count: u16 },
    IsolationInfo { ex: bool, url: Emb },
    SoH { attributes: bool, values: Vec<Emb> },
    NetworkSoH { private: bool, data: Emb },
    SoHAttributeValue { ty: i32, member: Emb },
    Registrations { count: u8, strings: Vec<Emb>, null_info: bool },
    HealthAgentState { sha: Emb, fixup: Emb },
    BadTop { which: u8, top: Top },
}

// ---------------------------------------------------------------------------------------------
// Fake COM objects for Connections

#[repr(C)]
struct FakeConn {
    vtbl: *const IUnknownVtbl,
    refs: AtomicU32,
    releases: AtomicU32,
}

unsafe extern "system" fn fake_qi(_this: *mut ComObject, _riid: *const Guid, ppv: *mut *mut c_void) -> i32 {
    if !ppv.is_null() {
        // SAFETY: non-null out-pointer from the caller.
        unsafe { ppv.write(ptr::null_mut()) };
    }
    napalloc::hr::E_NOINTERFACE
}
unsafe extern "system" fn fake_add_ref(this: *mut ComObject) -> u32 {
    // SAFETY: `this` is a live FakeConn (only they are stored in the slots).
    unsafe { (*this.cast::<FakeConn>()).refs.fetch_add(1, Ordering::Relaxed) + 1 }
}
unsafe extern "system" fn fake_release(this: *mut ComObject) -> u32 {
    // SAFETY: as above.
    let f = unsafe { &*this.cast::<FakeConn>() };
    f.releases.fetch_add(1, Ordering::Relaxed);
    f.refs.fetch_sub(1, Ordering::Relaxed) - 1
}
static FAKE_VTBL: IUnknownVtbl =
    IUnknownVtbl { query_interface: Some(fake_qi), add_ref: Some(fake_add_ref), release: Some(fake_release) };

// ---------------------------------------------------------------------------------------------

/// A page that is reserved but never committed: reading it crashes.
fn unreadable() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        let r = Reservation::new(1 << 16).expect("reserve a page");
        let a = r.base().as_ptr() as usize;
        std::mem::forget(r); // lives for the process
        a
    })
}

fn alloc(size: usize) -> *mut u8 {
    let p = CoTaskMemAlloc(size).cast::<u8>();
    assert!(!p.is_null(), "CoTaskMemAlloc({size})");
    // SAFETY: a fresh block of `size` bytes.
    unsafe { p.write_bytes(0xA5, size) };
    p
}

/// Builds embedded pointers and remembers what the caller itself must free afterwards, and how
/// many reports the `Free*` call owes.
struct Build {
    stack: *const u8,
    /// Blocks the `Free*` must free (checked gone afterwards).
    owned: Vec<*mut u8>,
    /// Blocks the caller still owns after the `Free*` (the targets of interior pointers).
    keep: Vec<*mut u8>,
    /// Bad non-NULL embedded pointers: each must be reported.
    bad: u64,
}

impl Build {
    fn new(stack: *const u8) -> Build {
        Build { stack, owned: Vec::new(), keep: Vec::new(), bad: 0 }
    }

    fn emb(&mut self, e: Emb) -> *mut u8 {
        match e {
            Emb::Null => ptr::null_mut(),
            Emb::Own(n) => {
                let p = alloc(n as usize % 512);
                self.owned.push(p);
                p
            }
            Emb::Foreign(k) => {
                self.bad += 1;
                self.stack.wrapping_add(k as usize) as *mut u8
            }
            Emb::Interior(k) => {
                let p = alloc(64);
                self.keep.push(p);
                self.bad += 1;
                p.wrapping_add(1 + k as usize % 63)
            }
            Emb::Unreadable(k) => {
                self.bad += 1;
                ptr::without_provenance_mut(unreadable() + 16 * k as usize)
            }
        }
    }

    /// A top-level block of `size` bytes, zeroed, which the `Free*` must free.
    fn top(&mut self, size: usize) -> *mut u8 {
        let p = alloc(size);
        // SAFETY: fresh block.
        unsafe { p.write_bytes(0, size) };
        self.owned.push(p);
        p
    }

    /// After the `Free*`: the owned blocks are gone, at least `bad` reports were made; free
    /// what the caller kept.
    fn finish(self, bad_before: u64, what: &str) {
        for &p in &self.owned {
            // SAFETY: GetSize-like query of any pointer.
            assert_eq!(napalloc::heap::size_of(p), None, "{what}: block {p:p} was not freed");
        }
        let reported = stats().bad_pointer_reports - bad_before;
        assert!(reported >= self.bad, "{what}: {} bad embedded pointers, {reported} reported", self.bad);
        for p in self.keep {
            // SAFETY: still ours.
            unsafe { CoTaskMemFree(p.cast()) };
        }
    }
}

fn wstr_len(s: *const u16) -> usize {
    let mut n = 0;
    // SAFETY: a NUL-terminated string of ours.
    while unsafe { *s.add(n) } != 0 {
        n += 1;
    }
    n
}

struct Ctx {
    stack: *const u8,
}

impl Ctx {
    fn step(&self, op: Op) {
        let before = stats();
        match op {
            Op::AllocConnections { count, null_out, slots, split } => {
                let n = count % 24;
                if null_out {
                    // SAFETY: NULL out-pointer is refused.
                    assert_eq!(unsafe { AllocConnections(ptr::null_mut(), n as u16) }, E_INVALIDARG);
                    return;
                }
                let mut c: *mut Connections = 0x10 as *mut Connections;
                // SAFETY: `c` is writable.
                let hr = unsafe { AllocConnections(&mut c, n as u16) };
                if n as usize > MAX_CONNECTION_COUNT_PER_ENFORCER as usize {
                    assert_eq!((hr, c), (E_INVALIDARG, ptr::null_mut()), "AllocConnections({n})");
                    return;
                }
                assert_eq!(hr, S_OK);
                // SAFETY: a fresh Connections.
                let (cnt, arr) = unsafe { ((*c).count, (*c).connections) };
                assert_eq!(cnt as u8, n);
                if n == 0 {
                    assert!(arr.is_null());
                } else {
                    assert_eq!(napalloc::heap::size_of(arr.cast()), Some(8 * n as usize), "slot array size");
                    assert_ne!(arr.cast::<u8>(), c.cast::<u8>());
                }
                let fakes: Vec<Box<FakeConn>> = (0..n)
                    .map(|_| {
                        Box::new(FakeConn { vtbl: &FAKE_VTBL, refs: AtomicU32::new(1), releases: AtomicU32::new(0) })
                    })
                    .collect();
                for (i, f) in fakes.iter().enumerate() {
                    // SAFETY: slot i < n of a fresh, zero-filled array.
                    unsafe {
                        assert!((*arr.add(i)).is_null(), "slot {i} not zero-filled");
                        if slots >> i & 1 == 1 {
                            let o = (&**f as *const FakeConn).cast_mut().cast::<ComObject>();
                            fake_add_ref(o); // the Connections holds a reference
                            arr.add(i).write(o);
                        }
                    }
                }
                if split {
                    // The caller frees the blocks itself, holding on to its references.
                    // SAFETY: both blocks are ours.
                    unsafe {
                        CoTaskMemFree(c.cast());
                        CoTaskMemFree(arr.cast());
                    }
                    for f in &fakes {
                        assert_eq!(f.releases.load(Ordering::Relaxed), 0, "CoTaskMemFree released an interface");
                    }
                } else {
                    // SAFETY: ours, handed over.
                    unsafe { FreeConnections(c) };
                    for (i, f) in fakes.iter().enumerate() {
                        let want = slots >> i & 1;
                        assert_eq!(f.releases.load(Ordering::Relaxed), want, "slot {i} released");
                    }
                }
            }
            Op::AllocCountedString { chars, repeat, null_string, null_out, split } => {
                let mut s: Vec<u16> = chars.iter().map(|&c| if c == 0 { 0x41 } else { c }).collect();
                if !s.is_empty() && repeat > 200 {
                    while s.len() <= MAX_STRING_LENGTH as usize {
                        s.extend_from_within(..);
                    }
                    s.truncate(MAX_STRING_LENGTH as usize + (repeat as usize & 1));
                }
                s.push(0);
                let src = if null_string { ptr::null() } else { s.as_ptr() };
                if null_out {
                    // SAFETY: NULL out-pointer is refused.
                    assert_eq!(unsafe { AllocCountedString(ptr::null_mut(), src) }, E_INVALIDARG);
                    return;
                }
                let mut cs: *mut CountedString = 0x10 as *mut CountedString;
                // SAFETY: `cs` writable; `src` NULL or NUL-terminated.
                let hr = unsafe { AllocCountedString(&mut cs, src) };
                let len = s.len() - 1;
                if null_string || len > MAX_STRING_LENGTH as usize {
                    assert_eq!((hr, cs), (E_INVALIDARG, ptr::null_mut()), "AllocCountedString of {len} chars");
                    return;
                }
                assert_eq!(hr, S_OK);
                // SAFETY: a fresh CountedString.
                let (l, w) = unsafe { ((*cs).length, (*cs).string) };
                assert_eq!(l as usize, len);
                assert_eq!(napalloc::heap::size_of(w.cast()), Some(2 * (len + 1)), "string buffer size");
                assert_eq!(wstr_len(w), len);
                // SAFETY: len + 1 chars.
                assert_eq!(unsafe { std::slice::from_raw_parts(w, len + 1) }, &s[..], "string copied");
                if split {
                    // The SDK's way: free the struct, keep the string, free it later.
                    // SAFETY: ours.
                    unsafe { CoTaskMemFree(cs.cast()) };
                    assert_eq!(wstr_len(w), len, "the string outlives its struct");
                    // SAFETY: ours.
                    unsafe { CoTaskMemFree(w.cast()) };
                } else {
                    // SAFETY: ours, handed over.
                    unsafe { FreeCountedString(cs) };
                }
            }
            Op::AllocFixupInfo { count, null_out } => {
                let n = count % 1100;
                if null_out {
                    // SAFETY: NULL out-pointer is refused.
                    assert_eq!(unsafe { AllocFixupInfo(ptr::null_mut(), n) }, E_INVALIDARG);
                    return;
                }
                let mut f: *mut FixupInfo = 0x10 as *mut FixupInfo;
                // SAFETY: writable.
                let hr = unsafe { AllocFixupInfo(&mut f, n) };
                if n as usize > MAX_DWORD_COUNT_PER_SOH_ATTRIBUTE as usize {
                    assert_eq!((hr, f), (E_INVALIDARG, ptr::null_mut()), "AllocFixupInfo({n})");
                    return;
                }
                assert_eq!(hr, S_OK);
                // SAFETY: fresh.
                let rc = unsafe { (*f).result_codes };
                assert_eq!(rc.count, n);
                if n == 0 {
                    assert!(rc.results.is_null());
                } else {
                    assert_eq!(napalloc::heap::size_of(rc.results.cast()), Some(4 * n as usize));
                    // SAFETY: n results.
                    assert!(unsafe { std::slice::from_raw_parts(rc.results, n as usize) }.iter().all(|&r| r == 0));
                }
                // SAFETY: ours.
                unsafe { FreeFixupInfo(f) };
            }
            Op::Connections { array, count, slots } => {
                let mut b = Build::new(self.stack);
                let c = b.top(core::mem::size_of::<Connections>()).cast::<Connections>();
                let arr = b.emb(array).cast::<*mut ComObject>();
                let cap = match array {
                    Emb::Own(n) => (n as usize % 512) / 8,
                    _ => 0,
                };
                let n = (count as usize % 24).min(cap);
                let fakes: Vec<Box<FakeConn>> = (0..n)
                    .map(|_| {
                        Box::new(FakeConn { vtbl: &FAKE_VTBL, refs: AtomicU32::new(2), releases: AtomicU32::new(0) })
                    })
                    .collect();
                for i in 0..cap {
                    let o = match fakes.get(i) {
                        Some(f) if slots >> i & 1 == 1 => (&**f as *const FakeConn).cast_mut().cast::<ComObject>(),
                        _ => ptr::null_mut(),
                    };
                    // SAFETY: slot i < cap of an own block.
                    unsafe { arr.add(i).write(o) };
                }
                // SAFETY: c is a fresh block of the struct's size.
                unsafe {
                    (*c).count = n as u16;
                    (*c).connections = arr;
                    FreeConnections(c);
                }
                for (i, f) in fakes.iter().enumerate() {
                    assert_eq!(f.releases.load(Ordering::Relaxed), slots >> i & 1, "slot {i} released");
                }
                b.finish(before.bad_pointer_reports, "FreeConnections");
            }
            Op::CountedString { string, length } => {
                let mut b = Build::new(self.stack);
                let cs = b.top(core::mem::size_of::<CountedString>()).cast::<CountedString>();
                let w = b.emb(string).cast::<u16>();
                // SAFETY: fresh block.
                unsafe {
                    (*cs).length = length;
                    (*cs).string = w;
                    FreeCountedString(cs);
                }
                b.finish(before.bad_pointer_reports, "FreeCountedString");
            }
            Op::FixupInfo { results, count } => {
                let mut b = Build::new(self.stack);
                let f = b.top(core::mem::size_of::<FixupInfo>()).cast::<FixupInfo>();
                let r = b.emb(results).cast::<i32>();
                // SAFETY: fresh block.
                unsafe {
                    (*f).result_codes = ResultCodes { count, results: r };
                    FreeFixupInfo(f);
                }
                b.finish(before.bad_pointer_reports, "FreeFixupInfo");
            }
            Op::IsolationInfo { ex, url } => {
                let mut b = Build::new(self.stack);
                let url = b.emb(url).cast::<u16>();
                // SAFETY: fresh blocks of the structs' sizes.
                unsafe {
                    if ex {
                        let i = b.top(core::mem::size_of::<IsolationInfoEx>()).cast::<IsolationInfoEx>();
                        (*i).failure_url = CountedString { length: 3, string: url };
                        FreeIsolationInfoEx(i);
                    } else {
                        let i = b.top(core::mem::size_of::<IsolationInfo>()).cast::<IsolationInfo>();
                        (*i).failure_url = CountedString { length: 3, string: url };
                        FreeIsolationInfo(i);
                    }
                }
                b.finish(before.bad_pointer_reports, "FreeIsolationInfo");
            }
            Op::SoH { attributes, values } => {
                let mut b = Build::new(self.stack);
                let soh = b.top(core::mem::size_of::<SoH>()).cast::<SoH>();
                let values = &values[..values.len().min(16)];
                let arr = if attributes {
                    b.top(values.len().max(1) * core::mem::size_of::<SoHAttribute>()).cast::<SoHAttribute>()
                } else {
                    ptr::null_mut()
                };
                // SAFETY: fresh blocks; the array has a slot per value.
                unsafe {
                    if attributes {
                        for (i, &v) in values.iter().enumerate() {
                            let val = b.emb(v);
                            let a = arr.add(i);
                            addr_of_mut!((*a).size).write(4);
                            addr_of_mut!((*a).value).write(val);
                        }
                    }
                    (*soh).count = if attributes { values.len() as u16 } else { 0 };
                    (*soh).attributes = arr;
                    FreeSoH(soh);
                }
                b.finish(before.bad_pointer_reports, "FreeSoH");
            }
            Op::NetworkSoH { private, data } => {
                let mut b = Build::new(self.stack);
                let d = b.emb(data);
                // SAFETY: fresh blocks of the structs' sizes.
                unsafe {
                    if private {
                        let p = b.top(core::mem::size_of::<PrivateData>()).cast::<PrivateData>();
                        (*p).size = 7;
                        (*p).data = d;
                        FreePrivateData(p);
                    } else {
                        let p = b.top(core::mem::size_of::<NetworkSoH>()).cast::<NetworkSoH>();
                        (*p).size = 7;
                        (*p).data = d;
                        FreeNetworkSoH(p);
                    }
                }
                b.finish(before.bad_pointer_reports, "FreeNetworkSoH/FreePrivateData");
            }
            Op::SoHAttributeValue { ty, member } => {
                let ty = SoHAttributeType(ty);
                let mut b = Build::new(self.stack);
                let v = b.top(16);
                let has_pointer = ty.value_member().has_pointer();
                let inner = if has_pointer {
                    b.emb(member)
                } else {
                    // No pointer member: whatever sits there must be neither read nor freed.
                    ptr::without_provenance_mut(unreadable())
                };
                // SAFETY: a 16-byte block; every pointer member sits at offset 8 (SPEC §3).
                unsafe {
                    v.add(8).cast::<*mut u8>().write(inner);
                    FreeSoHAttributeValue(ty, v.cast());
                }
                if !has_pointer {
                    let reported = stats().bad_pointer_reports - before.bad_pointer_reports;
                    assert_eq!(reported, 0, "FreeSoHAttributeValue({ty:?}) touched a member it does not have");
                }
                b.finish(before.bad_pointer_reports, "FreeSoHAttributeValue");
            }
            Op::Registrations { count, strings, null_info } => {
                if null_info {
                    // SAFETY: NULL is no effect.
                    unsafe { FreeNapComponentRegistrationInfoArray(count as u16, ptr::null_mut()) };
                    let mut none: *mut NapComponentRegistrationInfo = ptr::null_mut();
                    // SAFETY: *info NULL is no effect.
                    unsafe { FreeNapComponentRegistrationInfoArray(count as u16, &mut none) };
                    return;
                }
                let mut b = Build::new(self.stack);
                let n = count as usize % 6;
                let entries = b
                    .top(n.max(1) * core::mem::size_of::<NapComponentRegistrationInfo>())
                    .cast::<NapComponentRegistrationInfo>();
                let mut it = strings.iter().copied().chain(std::iter::repeat(Emb::Null));
                for i in 0..n {
                    let mut s = || CountedString { length: 2, string: b.emb(it.next().unwrap()).cast() };
                    let (f, d, v, w) = (s(), s(), s(), s());
                    // SAFETY: entry i of the block.
                    unsafe {
                        let e = entries.add(i);
                        (*e).friendly_name = f;
                        (*e).description = d;
                        (*e).version = v;
                        (*e).vendor_name = w;
                    }
                }
                let mut info = entries;
                // SAFETY: ours, handed over.
                unsafe { FreeNapComponentRegistrationInfoArray(n as u16, &mut info) };
                assert!(info.is_null(), "*info is set to NULL");
                b.finish(before.bad_pointer_reports, "FreeNapComponentRegistrationInfoArray");
            }
            Op::HealthAgentState { sha, fixup } => {
                let mut b = Build::new(self.stack);
                let s = b.top(core::mem::size_of::<SystemHealthAgentState>()).cast::<SystemHealthAgentState>();
                let (r1, r2) = (b.emb(sha).cast::<i32>(), b.emb(fixup).cast::<i32>());
                // SAFETY: fresh block.
                unsafe {
                    (*s).sha_result_codes = ResultCodes { count: 1, results: r1 };
                    (*s).fixup_info.result_codes = ResultCodes { count: 1, results: r2 };
                    FreeSystemHealthAgentState(s);
                }
                b.finish(before.bad_pointer_reports, "FreeSystemHealthAgentState");
            }
            Op::BadTop { which, top } => {
                let own = alloc(128);
                let p: *mut u8 = match top {
                    Top::Null => ptr::null_mut(),
                    Top::Foreign => self.stack.cast_mut(),
                    Top::Interior => own.wrapping_add(16),
                    Top::Freed => {
                        let f = alloc(64);
                        // SAFETY: ours; freed to make a stale pointer (no allocation follows).
                        unsafe { CoTaskMemFree(f.cast()) };
                        f
                    }
                    Top::Unreadable => ptr::without_provenance_mut(unreadable()),
                };
                let bad_before = stats().bad_pointer_reports;
                // SAFETY: the Free* functions refuse, without reading, what is not a live block.
                unsafe {
                    match which % 11 {
                        0 => FreeConnections(p.cast()),
                        1 => FreeCountedString(p.cast()),
                        2 => FreeFixupInfo(p.cast()),
                        3 => FreeIsolationInfo(p.cast()),
                        4 => FreeIsolationInfoEx(p.cast()),
                        5 => FreeSoH(p.cast()),
                        6 => FreeNetworkSoH(p.cast()),
                        7 => FreePrivateData(p.cast()),
                        8 => FreeSoHAttributeValue(SoHAttributeType(which as i32 % 20), p.cast()),
                        9 => {
                            let mut info = p.cast::<NapComponentRegistrationInfo>();
                            FreeNapComponentRegistrationInfoArray(3, &mut info);
                        }
                        _ => FreeSystemHealthAgentState(p.cast()),
                    }
                }
                let reported = stats().bad_pointer_reports - bad_before;
                let want = u64::from(!matches!(top, Top::Null));
                assert_eq!(reported, want, "Free* #{} of a bad top-level pointer ({top:?})", which % 11);
                assert_eq!(napalloc::heap::size_of(own), Some(128), "a bad top-level pointer freed nothing");
                // SAFETY: ours.
                unsafe { CoTaskMemFree(own.cast()) };
            }
        }
        let after = stats();
        assert_eq!(
            (after.live_blocks, after.live_bytes),
            (before.live_blocks, before.live_bytes),
            "the books are back where they were: nothing leaked, nothing freed twice"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let stack = [0u8; 512];
    let ctx = Ctx { stack: stack.as_ptr() };
    shared::run_steps(&mut u, MAX_STEPS, |op: Op| ctx.step(op));
});
