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

use arbitrary::{Arbitrary, Unstructured};
use core::ffi::c_void;
use libfuzzer_sys::fuzz_target;
use napalloc::ffi::{
    CoGetMalloc, CoTaskMemAlloc, CoTaskMemFree, CoTaskMemRealloc, NapallocGetStats, NapallocHeapMinimize,
};
use napalloc::heap::{self, ALIGN};
use napalloc::hr::{E_INVALIDARG, E_NOINTERFACE, S_OK};
use napalloc::nap::types::{Guid, IMalloc, NapallocStats, IID_IMALLOC, IID_IUNKNOWN};
use std::collections::{BTreeMap, BTreeSet, HashMap};

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

/// Largest size the heap is certain to refuse below: anything above `u32::MAX`.
const SERVED_MAX: usize = u32::MAX as usize;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Size {
    Tiny(u8),
    Small(u16),
    Edge(u8),
}

impl Size {
    fn get(self) -> usize {
        match self {
            Size::Tiny(n) => n as usize,
            Size::Small(n) => n as usize,
            Size::Edge(k) => EDGES[k as usize % EDGES.len()],
        }
    }
}

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

type Id = u64;

struct Block {
    addr: usize,
    size: usize,
    parent: Option<Id>,
    children: BTreeSet<Id>,
    tag: u8,
    ptr: *mut u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Null,
    Live(Id),
    Bad,
}

fn pattern(tag: u8, i: usize) -> u8 {
    tag ^ (i as u8) ^ ((i >> 8) as u8).rotate_left(3)
}

fn fill(p: *mut u8, from: usize, to: usize, tag: u8) {
    for i in from..to {
        // SAFETY: `p` is a live heap block of at least `to` bytes owned by this input.
        unsafe { p.add(i).write(pattern(tag, i)) };
    }
}

fn verify(p: *const u8, size: usize, tag: u8, what: &str) {
    for i in 0..size {
        // SAFETY: `p` is a live heap block of `size` bytes owned by this input.
        let got = unsafe { p.add(i).read() };
        assert_eq!(got, pattern(tag, i), "{what} {p:p} (size {size}): byte {i} was overwritten");
    }
}

struct Model {
    blocks: HashMap<Id, Block>,
    by_addr: BTreeMap<usize, Id>,
    freed: Vec<usize>,
    next_id: Id,
    next_tag: u8,
    live_bytes: u64,
    bad: u64,
    failed: u64,
    trims: u64,
    base: NapallocStats,
    /// The process-wide `IMalloc`, from `CoGetMalloc(1, ..)`.
    malloc: *mut IMalloc,
    stack: usize,
    heap: usize,
}

impl Model {
    fn nth_live(&self, n: u16) -> Option<(usize, Id)> {
        if self.by_addr.is_empty() {
            return None;
        }
        self.by_addr.iter().nth(n as usize % self.by_addr.len()).map(|(a, id)| (*a, *id))
    }

    fn resolve(&self, p: Ptr) -> (*mut u8, Target) {
        let addr = match p {
            Ptr::Null => 0,
            Ptr::Live(n) => self.nth_live(n).map_or(self.stack, |(a, _)| a),
            Ptr::Interior(n, k) => self.nth_live(n).map_or(self.heap + 1, |(a, _)| a + 1 + k as usize),
            Ptr::Freed(n) if !self.freed.is_empty() => self.freed[n as usize % self.freed.len()],
            Ptr::Freed(_) => self.heap,
            Ptr::Stack(k) => self.stack + k as usize,
            Ptr::Heap(k) => self.heap + k as usize,
            Ptr::Int(a) => a,
        };
        if addr == 0 {
            return (std::ptr::null_mut(), Target::Null);
        }
        match self.by_addr.get(&addr) {
            Some(id) => (self.blocks[id].ptr, Target::Live(*id)),
            // No provenance: the heap only compares such pointers.
            None => (std::ptr::without_provenance_mut(addr), Target::Bad),
        }
    }

    fn on_alloc(&mut self, p: *mut u8, size: usize, parent: Option<Id>) {
        let addr = p as usize;
        assert_ne!(addr, 0);
        assert_eq!(addr % ALIGN, 0, "block {p:p} is not {ALIGN}-aligned");
        assert!(!self.by_addr.contains_key(&addr), "block {p:p} handed out twice");
        if let Some((&a, id)) = self.by_addr.range(..addr).next_back() {
            assert!(a + self.blocks[id].size.max(1) <= addr, "new block {p:p} overlaps {a:#x}");
        }
        if let Some((&a, _)) = self.by_addr.range(addr..).next() {
            assert!(addr + size.max(1) <= a, "new block {p:p}+{size} overlaps {a:#x}");
        }
        assert_eq!(self.get_size(p), (Some(size), 1), "GetSize/DidAlloc of a new block");
        self.next_tag = self.next_tag.wrapping_add(1);
        let tag = self.next_tag;
        fill(p, 0, size, tag);
        let id = self.next_id;
        self.next_id += 1;
        self.blocks.insert(id, Block { addr, size, parent, children: BTreeSet::new(), tag, ptr: p });
        if let Some(pid) = parent {
            self.blocks.get_mut(&pid).unwrap().children.insert(id);
        }
        self.by_addr.insert(addr, id);
        self.live_bytes += size as u64;
    }

    fn forget(&mut self, id: Id) -> Block {
        let b = self.blocks.remove(&id).unwrap();
        self.by_addr.remove(&b.addr);
        self.live_bytes -= b.size as u64;
        if self.freed.len() < 64 {
            self.freed.push(b.addr);
        } else {
            self.freed[(self.next_id as usize) % 64] = b.addr;
        }
        if let Some(pid) = b.parent {
            if let Some(pb) = self.blocks.get_mut(&pid) {
                pb.children.remove(&id);
            }
        }
        b
    }

    fn free_one(&mut self, id: Id) {
        let b = self.forget(id);
        for c in &b.children {
            self.blocks.get_mut(c).unwrap().parent = None;
        }
        assert_gone(self, b.addr);
    }

    fn free_tree(&mut self, id: Id) {
        let mut stack = vec![id];
        while let Some(i) = stack.pop() {
            let b = self.forget(i);
            assert_gone(self, b.addr);
            stack.extend(b.children);
        }
    }

    /// A failed allocation: only for sizes the heap never serves.
    fn failed_alloc(&mut self, size: usize, what: &str) {
        assert!(size > SERVED_MAX, "{what}({size}) failed");
        self.failed += 1;
    }

    fn vtbl(&self) -> &napalloc::nap::types::IMallocVtbl {
        // SAFETY: `malloc` is the live process-wide IMalloc; its vtable is static.
        unsafe { &*(*self.malloc).vtbl }
    }

    /// `GetSize` and `DidAlloc` of `p` through the vtable (`None` for `(SIZE_T)-1`).
    fn get_size(&self, p: *mut u8) -> (Option<usize>, i32) {
        let v = self.vtbl();
        // SAFETY: the IMalloc methods take any pointer and refuse what is not a live block.
        let (size, did) = unsafe { ((v.get_size)(self.malloc, p.cast()), (v.did_alloc)(self.malloc, p.cast())) };
        ((size != usize::MAX).then_some(size), did)
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
                let size = size.get();
                let p = self.alloc(via, size);
                if p.is_null() {
                    self.failed_alloc(size, "alloc");
                } else {
                    assert!(size <= SERVED_MAX, "alloc({size}) succeeded");
                    self.on_alloc(p, size, None);
                }
            }
            Op::AllocChild(parent, size) => {
                let size = size.get();
                let (pp, target) = self.resolve(parent);
                let Some(pp) = std::ptr::NonNull::new(pp) else { return };
                let before = stats();
                let res = heap::alloc_child(pp, size);
                match (target, res) {
                    (Target::Live(pid), Some(p)) => {
                        assert!(size <= SERVED_MAX, "alloc_child({size}) succeeded");
                        self.on_alloc(p.as_ptr(), size, Some(pid));
                    }
                    (Target::Live(_), None) => self.failed_alloc(size, "alloc_child"),
                    (_, Some(p)) => panic!("alloc_child under non-block {pp:p} returned {p:p}"),
                    (_, None) if size > SERVED_MAX => {
                        // A bad parent and a size no block has: reported as either, once.
                        let now = stats();
                        let bad = now.bad_pointer_reports - before.bad_pointer_reports;
                        let failed = now.failed_allocations - before.failed_allocations;
                        assert_eq!(bad + failed, 1, "alloc_child({pp:p}, {size}): {bad} bad, {failed} failed");
                        self.bad += bad;
                        self.failed += failed;
                    }
                    (_, None) => self.bad += 1,
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
                match target {
                    Target::Null => {}
                    Target::Bad => self.bad += 1,
                    Target::Live(id) => self.free_one(id),
                }
            }
            Op::FreeTree(p) => {
                let (pp, target) = self.resolve(p);
                // SAFETY: a live block is forgotten by the model; anything else is refused.
                let freed = unsafe { heap::free_tree(pp) };
                assert_eq!(freed, matches!(target, Target::Live(_)), "free_tree({pp:p}) of {target:?}");
                match target {
                    Target::Null => {}
                    Target::Bad => self.bad += 1,
                    Target::Live(id) => self.free_tree(id),
                }
            }
            Op::Realloc(via, p, size) => {
                let size = size.get();
                let (pp, target) = self.resolve(p);
                let q: *mut u8 = match via {
                    // SAFETY: if the block moves or is freed the model forgets the old pointer.
                    Via::CoTaskMem => unsafe { CoTaskMemRealloc(pp.cast(), size) }.cast(),
                    // SAFETY: as above.
                    Via::IMalloc => unsafe { (self.vtbl().realloc)(self.malloc, pp.cast(), size) }.cast(),
                };
                match target {
                    Target::Null if q.is_null() => self.failed_alloc(size, "realloc(NULL)"),
                    Target::Null => self.on_alloc(q, size, None),
                    Target::Bad => {
                        assert!(q.is_null(), "realloc of non-block {pp:p} returned {q:p}");
                        self.bad += 1;
                    }
                    Target::Live(id) if size == 0 => {
                        assert!(q.is_null(), "realloc(p, 0) returns NULL");
                        self.free_one(id);
                    }
                    Target::Live(id) if q.is_null() => {
                        self.failed_alloc(size, "realloc");
                        let b = &self.blocks[&id];
                        assert_eq!(self.get_size(b.ptr), (Some(b.size), 1), "a failed realloc keeps the block");
                    }
                    Target::Live(id) => {
                        assert!(size <= SERVED_MAX, "realloc to {size} succeeded");
                        assert_eq!(q as usize % ALIGN, 0);
                        let b = self.blocks.get_mut(&id).unwrap();
                        let (old_addr, old_size, tag) = (b.addr, b.size, b.tag);
                        verify(q, old_size.min(size), tag, "realloc kept contents of");
                        fill(q, old_size.min(size), size, tag);
                        b.addr = q as usize;
                        b.size = size;
                        b.ptr = q;
                        self.live_bytes = self.live_bytes - old_size as u64 + size as u64;
                        self.by_addr.remove(&old_addr);
                        if old_addr != q as usize {
                            assert!(!self.by_addr.contains_key(&(q as usize)), "realloc returned a live block");
                            assert_gone(self, old_addr);
                        }
                        self.by_addr.insert(q as usize, id);
                        assert_eq!(self.get_size(q), (Some(size), 1));
                    }
                }
            }
            Op::SizeOf(p) => {
                let (pp, target) = self.resolve(p);
                let before = stats().bad_pointer_reports;
                let got = self.get_size(pp);
                match target {
                    Target::Null => assert_eq!(got, (None, -1), "GetSize/DidAlloc(NULL)"),
                    Target::Bad => assert_eq!(got, (None, 0), "GetSize/DidAlloc({pp:p})"),
                    Target::Live(id) => assert_eq!(got, (Some(self.blocks[&id].size), 1)),
                }
                // Whether size queries of bad pointers are counted is the heap's choice; at most
                // once each.
                let counted = stats().bad_pointer_reports - before;
                assert!(counted <= 2 && (target == Target::Bad || counted == 0), "{counted} bad pointers counted");
                self.bad += counted;
            }
            Op::HeapMinimize(via) => {
                match via {
                    Via::CoTaskMem => assert_eq!(NapallocHeapMinimize(), S_OK),
                    // SAFETY: a live IMalloc.
                    Via::IMalloc => unsafe { (self.vtbl().heap_minimize)(self.malloc) },
                }
                self.trims += 1;
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
        let s = stats();
        let b = &self.base;
        assert_eq!(s.live_blocks - b.live_blocks, self.blocks.len() as u64, "live_blocks ({s:?})");
        assert_eq!(s.live_bytes - b.live_bytes, self.live_bytes, "live_bytes ({s:?})");
        assert_eq!(s.bad_pointer_reports - b.bad_pointer_reports, self.bad, "bad_pointer_reports ({s:?})");
        assert_eq!(s.failed_allocations - b.failed_allocations, self.failed, "failed_allocations ({s:?})");
        assert_eq!(s.trims - b.trims, self.trims, "trims ({s:?})");
        for b in self.blocks.values() {
            verify(b.ptr, b.size, b.tag, "live block");
            assert_eq!(self.get_size(b.ptr), (Some(b.size), 1));
        }
    }
}

/// The heap's books through the C ABI.
fn stats() -> NapallocStats {
    let mut s = NapallocStats::default();
    // SAFETY: `s` is writable.
    assert_eq!(unsafe { NapallocGetStats(&mut s) }, S_OK);
    s
}

fn assert_gone(m: &Model, addr: usize) {
    let p = std::ptr::without_provenance_mut::<u8>(addr);
    assert_eq!(m.get_size(p), (None, 0), "freed block {p:p} still allocated");
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let trace = std::env::var_os("NAPALLOC_FUZZ_TRACE").is_some();
    let stack = [0u8; 256];
    let heap_buf = vec![0u8; 256];
    let mut malloc: *mut IMalloc = std::ptr::null_mut();
    // SAFETY: `malloc` is writable.
    assert_eq!(unsafe { CoGetMalloc(1, &mut malloc) }, S_OK);
    let mut m = Model {
        blocks: HashMap::new(),
        by_addr: BTreeMap::new(),
        freed: Vec::new(),
        next_id: 0,
        next_tag: 0,
        live_bytes: 0,
        bad: 0,
        failed: 0,
        trims: 0,
        base: stats(),
        malloc,
        stack: stack.as_ptr() as usize,
        heap: heap_buf.as_ptr() as usize,
    };
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        if trace {
            eprintln!("{op:?}");
        }
        m.step(op);
        m.check();
    }
    // Give back what this input allocated: the heap's books return to where they started.
    // Newest first (a deterministic order, so that a crash reproduces).
    let mut roots: Vec<Id> = m.blocks.iter().filter(|(_, b)| b.parent.is_none()).map(|(id, _)| *id).collect();
    roots.sort_unstable_by(|a, b| b.cmp(a));
    for id in roots {
        let p = m.blocks[&id].ptr;
        // SAFETY: a live root of this input; the model forgets it and its subtree.
        assert!(unsafe { heap::free_tree(p) });
        m.free_tree(id);
    }
    m.check();
    let s = stats();
    assert_eq!((s.live_blocks, s.live_bytes), (m.base.live_blocks, m.base.live_bytes));
    // SAFETY: the reference CoGetMalloc gave this input.
    unsafe { (m.vtbl().release)(malloc) };
});
