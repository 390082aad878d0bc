//! `cotaskmem_abi`: arbitrary sequences of task-heap calls, including bad pointers, checked
//! against a model after every step.
//!
//! This target drives `napalloc::heap`, the Rust side of `CoTaskMemAlloc` / `CoTaskMemRealloc` /
//! `CoTaskMemFree` and of `IMalloc::Alloc/Realloc/Free/GetSize/DidAlloc/HeapMinimize`, with the same
//! semantics as the C ABI (SPEC §5):
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
use libfuzzer_sys::fuzz_target;
use napalloc::heap::{self, HeapStats, ALIGN};
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

#[derive(Arbitrary, Debug)]
enum Op {
    /// `CoTaskMemAlloc` / `IMalloc::Alloc`.
    Alloc(Size),
    /// An embedded block (what the NapUtil `Alloc*` functions build).
    AllocChild(Ptr, Size),
    /// `CoTaskMemFree` / `IMalloc::Free`.
    Free(Ptr),
    /// A NapUtil `Free*`: the block and its embedded blocks.
    FreeTree(Ptr),
    /// `CoTaskMemRealloc` / `IMalloc::Realloc`.
    Realloc(Ptr, Size),
    /// `IMalloc::GetSize`.
    SizeOf(Ptr),
    /// `IMalloc::DidAlloc`.
    DidAlloc(Ptr),
    /// `IMalloc::HeapMinimize`.
    HeapMinimize,
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
    base: HeapStats,
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
        assert_eq!(heap::size_of(p), Some(size), "GetSize of a new block");
        assert_eq!(heap::did_alloc(p), 1, "DidAlloc of a new block");
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
        assert_gone(b.addr);
    }

    fn free_tree(&mut self, id: Id) {
        let mut stack = vec![id];
        while let Some(i) = stack.pop() {
            let b = self.forget(i);
            assert_gone(b.addr);
            stack.extend(b.children);
        }
    }

    /// A failed allocation: only for sizes the heap never serves.
    fn failed_alloc(&mut self, size: usize, what: &str) {
        assert!(size > SERVED_MAX, "{what}({size}) failed");
        self.failed += 1;
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Alloc(size) => {
                let size = size.get();
                match heap::alloc(size) {
                    Some(p) => {
                        assert!(size <= SERVED_MAX, "alloc({size}) succeeded");
                        self.on_alloc(p.as_ptr(), size, None);
                    }
                    None => self.failed_alloc(size, "alloc"),
                }
            }
            Op::AllocChild(parent, size) => {
                let size = size.get();
                let (pp, target) = self.resolve(parent);
                let Some(pp) = std::ptr::NonNull::new(pp) else { return };
                let res = heap::alloc_child(pp, size);
                match (target, res) {
                    (Target::Live(pid), Some(p)) => {
                        assert!(size <= SERVED_MAX, "alloc_child({size}) succeeded");
                        self.on_alloc(p.as_ptr(), size, Some(pid));
                    }
                    (Target::Live(_), None) => self.failed_alloc(size, "alloc_child"),
                    (_, Some(p)) => panic!("alloc_child under non-block {pp:p} returned {p:p}"),
                    (_, None) if size > SERVED_MAX => self.failed += 1,
                    (_, None) => self.bad += 1,
                }
            }
            Op::Free(p) | Op::FreeTree(p) => {
                let tree = matches!(op, Op::FreeTree(_));
                let (pp, target) = self.resolve(p);
                // SAFETY: a live block is forgotten by the model; anything else is refused.
                let freed = unsafe {
                    if tree {
                        heap::free_tree(pp)
                    } else {
                        heap::free(pp)
                    }
                };
                assert_eq!(freed, matches!(target, Target::Live(_)), "free({pp:p}) of {target:?}");
                match target {
                    Target::Null => {}
                    Target::Bad => self.bad += 1,
                    Target::Live(id) if tree => self.free_tree(id),
                    Target::Live(id) => self.free_one(id),
                }
            }
            Op::Realloc(p, size) => {
                let size = size.get();
                let (pp, target) = self.resolve(p);
                // SAFETY: if the block moves or is freed the model forgets the old pointer.
                let q = unsafe { heap::realloc(pp, size) };
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
                        assert_eq!(heap::size_of(b.ptr), Some(b.size), "a failed realloc keeps the block");
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
                            assert_gone(old_addr);
                        }
                        self.by_addr.insert(q as usize, id);
                        assert_eq!(heap::size_of(q), Some(size));
                    }
                }
            }
            Op::SizeOf(p) | Op::DidAlloc(p) => {
                let (pp, target) = self.resolve(p);
                let before = heap::stats().bad_pointers;
                let size = heap::size_of(pp);
                let did = heap::did_alloc(pp);
                match target {
                    Target::Null => assert_eq!((size, did), (None, -1), "GetSize/DidAlloc(NULL)"),
                    Target::Bad => assert_eq!((size, did), (None, 0), "GetSize/DidAlloc({pp:p})"),
                    Target::Live(id) => assert_eq!((size, did), (Some(self.blocks[&id].size), 1)),
                }
                // Whether size queries of bad pointers are counted is the heap's choice; at most once each.
                let counted = heap::stats().bad_pointers - before;
                assert!(counted <= 2 && (target == Target::Bad || counted == 0), "{counted} bad pointers counted");
                self.bad += counted;
            }
            Op::HeapMinimize => {
                heap::heap_minimize();
                self.trims += 1;
            }
        }
    }

    fn check(&self) {
        let s = heap::stats();
        let b = &self.base;
        assert_eq!(s.live_blocks - b.live_blocks, self.blocks.len() as u64, "live_blocks ({s:?})");
        assert_eq!(s.live_bytes - b.live_bytes, self.live_bytes, "live_bytes ({s:?})");
        assert_eq!(s.bad_pointers - b.bad_pointers, self.bad, "bad_pointers ({s:?})");
        assert_eq!(s.failed_allocations - b.failed_allocations, self.failed, "failed_allocations ({s:?})");
        assert_eq!(s.trims - b.trims, self.trims, "trims ({s:?})");
        for b in self.blocks.values() {
            verify(b.ptr, b.size, b.tag, "live block");
            assert_eq!(heap::size_of(b.ptr), Some(b.size));
        }
    }
}

fn assert_gone(addr: usize) {
    let p = std::ptr::without_provenance::<u8>(addr);
    assert_eq!(heap::did_alloc(p), 0, "freed block {p:p} still allocated");
    assert_eq!(heap::size_of(p), None, "freed block {p:p} still has a size");
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let stack = [0u8; 256];
    let heap_buf = vec![0u8; 256];
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
        base: heap::stats(),
        stack: stack.as_ptr() as usize,
        heap: heap_buf.as_ptr() as usize,
    };
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else { break };
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
    let s = heap::stats();
    assert_eq!((s.live_blocks, s.live_bytes), (m.base.live_blocks, m.base.live_bytes));
});
