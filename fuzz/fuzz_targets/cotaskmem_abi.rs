//! `cotaskmem_abi`: arbitrary sequences of calls through the C ABI of the COM task allocator,
//! including bad pointers, checked against a model after every step.
//!
//! The calls are the `extern "C"` functions themselves: `CoTaskMemAlloc` / `CoTaskMemRealloc` /
//! `CoTaskMemFree`, `CoGetMalloc` with any context, and the `IMalloc` vtable it hands out
//! (`QueryInterface` with any IID, `AddRef`, `Release`, `Alloc`, `Realloc`, `Free`, `GetSize`,
//! `DidAlloc`, `HeapMinimize`), with `NapallocGetStats` for the books and `NapallocHeapMinimize`.
//! Embedded blocks (what the NapUtil `Alloc*` functions build) have no C entry point of their own:
//! they go through `napalloc::heap::{alloc_child, free_tree}`. SPEC §5:
//! * every block is 16-aligned, `alloc(0)` is a unique non-null block, `size_of` is the requested
//!   size exactly, `did_alloc` is 1 for a live block start, 0 for anything else, -1 for NULL;
//! * `realloc(NULL, n)` allocates, `realloc(p, 0)` frees and returns NULL, a failed grow returns
//!   NULL and leaves `p` valid, contents are kept up to the smaller size;
//! * `free(NULL)` does nothing; a foreign, interior or freed pointer changes nothing and is counted
//!   in `bad_pointers`; `free` releases one block (its embedded blocks become independent),
//!   `free_tree` releases the embedded blocks too.
//!
//! The heap is process-wide and outlives each input, so the model checks the *changes* of the
//! heap's counters since the input started, and every input frees what it allocated.
#![no_main]

#[path = "shared/mod.rs"]
mod shared;

use arbitrary::{Arbitrary, Unstructured};
use core::ffi::c_void;
use libfuzzer_sys::fuzz_target;
use napalloc::ffi::{CoGetMalloc, CoTaskMemAlloc, CoTaskMemFree, CoTaskMemRealloc, NapallocHeapMinimize};
use napalloc::hr::{E_INVALIDARG, E_NOINTERFACE, S_OK};
use napalloc::nap::types::{Guid, IMalloc, IMallocVtbl, IID_IMALLOC, IID_IUNKNOWN};
use shared::{stats, Child, Probe, Realloc, Size, Target, SERVED_MAX};

const MAX_STEPS: usize = 400;

/// Sizes the heap serves (up to 64 KiB), and sizes it must refuse (beyond `u32::MAX`: no region
/// block is that large, and a `Layout` cannot even describe the largest). Nothing in between: the
/// heap is never reset, so large blocks would eat its reservation for the rest of the run.
const EDGES: &[usize] = &[
    0,
    1,
    15,
    16,
    17,
    1023,
    1024,
    1025,
    4096,
    65536,
    u32::MAX as usize + 1,
    1 << 40,
    isize::MAX as usize - 15,
    isize::MAX as usize,
    usize::MAX - 15,
    usize::MAX,
];

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Ptr {
    Null,
    Live(u16),
    Interior(u16, u8),
    Freed(u16),
    Stack(u8),
    Heap(u8),
    Int(usize),
}

/// Through the `CoTaskMem*` functions or through the `IMalloc` vtable.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Via {
    CoTaskMem,
    IMalloc,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Iid {
    IUnknown,
    IMalloc,
    /// Any other IID.
    Other(u32, u16, u16, [u8; 8]),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// `CoTaskMemAlloc` / `IMalloc::Alloc`.
    Alloc(Via, Size),
    /// An embedded block (what the NapUtil `Alloc*` functions build).
    AllocChild(Ptr, Size),
    /// `CoTaskMemFree` / `IMalloc::Free`.
    Free(Via, Ptr),
    /// A NapUtil `Free*`: the block and its embedded blocks.
    FreeTree(Ptr),
    /// `CoTaskMemRealloc` / `IMalloc::Realloc`.
    Realloc(Via, Ptr, Size),
    /// `IMalloc::GetSize` and `IMalloc::DidAlloc`.
    SizeOf(Ptr),
    /// `IMalloc::HeapMinimize` / `NapallocHeapMinimize`.
    HeapMinimize(Via),
    /// `CoGetMalloc(context, &p)` (or with a NULL out-pointer), then `Release`.
    GetMalloc { context: u32, null_out: bool },
    /// `IMalloc::QueryInterface(iid, &p)` (or with a NULL out-pointer), then `Release`.
    QueryInterface { iid: Iid, null_out: bool },
    /// `AddRef` then `Release`.
    AddRefRelease,
}

/// The process-wide `IMalloc` (from `CoGetMalloc(1, ..)`): `GetSize` and `DidAlloc` through its
/// vtable answer what the model asks the heap.
#[derive(Clone, Copy)]
struct Malloc(*mut IMalloc);

impl Malloc {
    fn vtbl(self) -> &'static IMallocVtbl {
        // SAFETY: `self.0` is the live process-wide IMalloc; its vtable is static.
        unsafe { &*(*self.0).vtbl }
    }

    /// `GetSize` and `DidAlloc` of `p` through the vtable (`None` for `(SIZE_T)-1`).
    fn get_size(self, p: *mut u8) -> (Option<usize>, i32) {
        let v = self.vtbl();
        // SAFETY: the IMalloc methods take any pointer and refuse what is not a live block.
        let (size, did) = unsafe { ((v.get_size)(self.0, p.cast()), (v.did_alloc)(self.0, p.cast())) };
        ((size != usize::MAX).then_some(size), did)
    }
}

impl Probe for Malloc {
    fn expect(&self, p: *mut u8, size: Option<usize>, what: &str) {
        let did = if size.is_some() { 1 } else { 0 };
        assert_eq!(self.get_size(p), (size, did), "{what} {p:p}: GetSize/DidAlloc");
    }
}

struct Model {
    h: shared::Heap<(), Malloc>,
    /// The process-wide `IMalloc`, from `CoGetMalloc(1, ..)`.
    malloc: *mut IMalloc,
    stack: usize,
    heap: usize,
}

impl Model {
    fn resolve(&self, p: Ptr) -> (*mut u8, Target) {
        let h = &self.h;
        let addr = match p {
            Ptr::Null => 0,
            Ptr::Live(n) => h.nth_live(n).unwrap_or(self.stack),
            Ptr::Interior(n, k) => h.nth_live(n).map_or(self.heap + 1, |a| a + 1 + k as usize),
            Ptr::Freed(n) => h.nth_freed(n).unwrap_or(self.heap),
            Ptr::Stack(k) => self.stack + k as usize,
            Ptr::Heap(k) => self.heap + k as usize,
            Ptr::Int(a) => a,
        };
        h.lookup(addr)
    }

    fn on_alloc(&mut self, p: *mut u8, size: usize, parent: Option<shared::Id>, what: &str) {
        assert!(size <= SERVED_MAX, "{what}({size}) succeeded");
        self.h.on_alloc(p, size, parent, ());
    }

    /// A failed allocation: only for sizes the heap never serves.
    fn failed_alloc(&mut self, size: usize, what: &str) {
        assert!(size > SERVED_MAX, "{what}({size}) failed");
        self.h.failed += 1;
    }

    fn vtbl(&self) -> &'static IMallocVtbl {
        Malloc(self.malloc).vtbl()
    }

    fn get_size(&self, p: *mut u8) -> (Option<usize>, i32) {
        Malloc(self.malloc).get_size(p)
    }

    fn alloc(&self, via: Via, size: usize) -> *mut u8 {
        match via {
            Via::CoTaskMem => CoTaskMemAlloc(size).cast(),
            // SAFETY: a live IMalloc.
            Via::IMalloc => unsafe { (self.vtbl().alloc)(self.malloc, size) }.cast(),
        }
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Alloc(via, size) => {
                let size = size.get(EDGES);
                let p = self.alloc(via, size);
                if p.is_null() {
                    self.failed_alloc(size, "alloc");
                } else {
                    self.on_alloc(p, size, None, "alloc");
                }
            }
            Op::AllocChild(parent, size) => {
                let size = size.get(EDGES);
                let (pp, target) = self.resolve(parent);
                let Some(pp) = std::ptr::NonNull::new(pp) else { return };
                match self.h.alloc_child_at(pp, target, size) {
                    Child::New(p, pid) => self.on_alloc(p, size, Some(pid), "alloc_child"),
                    Child::Failed(_) => self.failed_alloc(size, "alloc_child"),
                    // A bad parent and a size no block has: reported as either, once; a bad parent
                    // and a served size: a bad pointer.
                    Child::Refused { as_failure } => {
                        assert!(size > SERVED_MAX || !as_failure, "alloc_child({pp:p}, {size}) counted as a failure")
                    }
                }
            }
            Op::Free(via, p) => {
                let (pp, target) = self.resolve(p);
                match via {
                    // SAFETY: a live block is forgotten by the model; anything else is refused.
                    Via::CoTaskMem => unsafe { CoTaskMemFree(pp.cast()) },
                    // SAFETY: as above.
                    Via::IMalloc => unsafe { (self.vtbl().free)(self.malloc, pp.cast()) },
                }
                self.h.on_free(target, false);
            }
            Op::FreeTree(p) => {
                let (pp, target) = self.resolve(p);
                self.h.free_tree_at(pp, target);
            }
            Op::Realloc(via, p, size) => {
                let size = size.get(EDGES);
                let (pp, target) = self.resolve(p);
                let q: *mut u8 = match via {
                    // SAFETY: if the block moves or is freed the model forgets the old pointer.
                    Via::CoTaskMem => unsafe { CoTaskMemRealloc(pp.cast(), size) }.cast(),
                    // SAFETY: as above.
                    Via::IMalloc => unsafe { (self.vtbl().realloc)(self.malloc, pp.cast(), size) }.cast(),
                };
                match self.h.on_realloc(pp, target, size, q) {
                    Realloc::New => self.on_alloc(q, size, None, "realloc(NULL)"),
                    Realloc::Failed(None) => self.failed_alloc(size, "realloc(NULL)"),
                    Realloc::Failed(Some(_)) => self.failed_alloc(size, "realloc"),
                    Realloc::Done => {}
                }
            }
            Op::SizeOf(p) => {
                let (pp, target) = self.resolve(p);
                let before = stats().bad_pointer_reports;
                let got = self.get_size(pp);
                match target {
                    Target::Null => assert_eq!(got, (None, -1), "GetSize/DidAlloc(NULL)"),
                    Target::Bad => assert_eq!(got, (None, 0), "GetSize/DidAlloc({pp:p})"),
                    Target::Live(id) => assert_eq!(got, (Some(self.h.blocks[&id].size), 1)),
                }
                // Whether size queries of bad pointers are counted is the heap's choice; at most
                // once each.
                let counted = stats().bad_pointer_reports - before;
                assert!(counted <= 2 && (target == Target::Bad || counted == 0), "{counted} bad pointers counted");
                self.h.bad += counted;
            }
            Op::HeapMinimize(via) => {
                match via {
                    Via::CoTaskMem => assert_eq!(NapallocHeapMinimize(), S_OK),
                    // SAFETY: a live IMalloc.
                    Via::IMalloc => unsafe { (self.vtbl().heap_minimize)(self.malloc) },
                }
                self.h.trims += 1;
            }
            Op::GetMalloc { context, null_out } => {
                if null_out {
                    // SAFETY: NULL is refused.
                    assert_eq!(unsafe { CoGetMalloc(context, std::ptr::null_mut()) }, E_INVALIDARG);
                    return;
                }
                let mut m: *mut IMalloc = 0x10 as *mut IMalloc;
                // SAFETY: `m` is writable.
                let hr = unsafe { CoGetMalloc(context, &mut m) };
                if context == 1 {
                    assert_eq!((hr, m), (S_OK, self.malloc), "CoGetMalloc(1) hands out the process-wide IMalloc");
                    // SAFETY: the reference just taken.
                    unsafe { (self.vtbl().release)(m) };
                } else {
                    assert_eq!((hr, m), (E_INVALIDARG, std::ptr::null_mut()), "CoGetMalloc({context})");
                }
            }
            Op::QueryInterface { iid, null_out } => {
                let (guid, known) = match iid {
                    Iid::IUnknown => (IID_IUNKNOWN, true),
                    Iid::IMalloc => (IID_IMALLOC, true),
                    Iid::Other(a, b, c, d) => {
                        let g = Guid { data1: a, data2: b, data3: c, data4: d };
                        (g, g == IID_IUNKNOWN || g == IID_IMALLOC)
                    }
                };
                let v = self.vtbl();
                if null_out {
                    // SAFETY: a NULL out-pointer is refused.
                    let hr = unsafe { (v.query_interface)(self.malloc, &guid, std::ptr::null_mut()) };
                    assert!(hr < 0, "QueryInterface with a NULL out-pointer: {hr:#x}");
                    return;
                }
                let mut out: *mut c_void = 0x10 as *mut c_void;
                // SAFETY: `guid` is readable and `out` writable.
                let hr = unsafe { (v.query_interface)(self.malloc, &guid, &mut out) };
                if known {
                    assert_eq!((hr, out), (S_OK, self.malloc.cast()), "QueryInterface({guid:?})");
                    // SAFETY: the reference just taken.
                    unsafe { (v.release)(self.malloc) };
                } else {
                    assert_eq!((hr, out), (E_NOINTERFACE, std::ptr::null_mut()), "QueryInterface({guid:?})");
                }
            }
            Op::AddRefRelease => {
                let v = self.vtbl();
                // SAFETY: a live IMalloc; the reference is given back at once.
                let (up, down) = unsafe { ((v.add_ref)(self.malloc), (v.release)(self.malloc)) };
                assert!(up >= 2 && down >= 1, "AddRef {up}, Release {down}: the object is held by this input");
            }
        }
    }

    fn check(&self) {
        let s = self.h.check();
        assert_eq!(s.trims - self.h.base.trims, self.h.trims, "trims ({s:?})");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let stack = [0u8; 256];
    let heap_buf = vec![0u8; 256];
    let mut malloc: *mut IMalloc = std::ptr::null_mut();
    // SAFETY: `malloc` is writable.
    assert_eq!(unsafe { CoGetMalloc(1, &mut malloc) }, S_OK);
    let mut m = Model {
        h: shared::Heap::new(Malloc(malloc)),
        malloc,
        stack: stack.as_ptr() as usize,
        heap: heap_buf.as_ptr() as usize,
    };
    shared::run_steps(&mut u, MAX_STEPS, |op: Op| {
        m.step(op);
        m.check();
    });
    // Give back what this input allocated: the heap's books return to where they started.
    m.h.free_all();
    m.check();
    // SAFETY: the reference CoGetMalloc gave this input.
    unsafe { (m.vtbl().release)(malloc) };
});
