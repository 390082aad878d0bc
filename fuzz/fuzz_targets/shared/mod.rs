//! What the fuzz targets share: the fill pattern that catches overwritten bytes, the step loop
//! (with `NAPALLOC_FUZZ_TRACE`), and, for the targets that drive the task heap through its C ABI
//! (`cotaskmem_abi`, `scope_host_abi`), the size enum and the model of the heap's blocks.
//!
//! Each target includes this file as `#[path = "shared/mod.rs"] mod shared;` (it is no target of
//! its own: `Cargo.toml` lists the targets) and uses the part it needs.
#![allow(dead_code)]

use arbitrary::{Arbitrary, Unstructured};
use napalloc::ffi::NapallocGetStats;
use napalloc::heap::ALIGN;
use napalloc::hr::S_OK;
use napalloc::nap::types::NapallocStats;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::ptr::NonNull;
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// The canary

/// Byte `i` of the pattern of a block tagged `tag`: it depends on the offset and on the tag, so
/// that a byte written with anything else (zeros, another offset's byte, another block's) is
/// caught, as a rule, by [`verify`].
#[inline]
pub fn pattern(tag: u32, i: usize) -> u8 {
    (tag as u8) ^ (i as u8) ^ ((i >> 8) as u8).rotate_left(3) ^ ((i >> 16) as u8).rotate_left(5) ^ ((tag >> 8) as u8)
}

/// Write the pattern of `tag` to bytes `[from, to)` of `p`.
pub fn fill(p: *mut u8, from: usize, to: usize, tag: u32) {
    for i in from..to {
        // SAFETY: `p` is a live block of at least `to` bytes that the model owns; nothing else
        // refers to it.
        unsafe { p.add(i).write(pattern(tag, i)) };
    }
}

/// Check that every byte of `[0, size)` at `p` still holds the pattern of `tag`.
pub fn verify(p: *const u8, size: usize, tag: u32, what: &str) {
    verify_at(p, size, tag, what, 0..size);
}

/// Check the bytes `at` (each below `size`) of the block `p` of `size` bytes.
pub fn verify_at(p: *const u8, size: usize, tag: u32, what: &str, at: impl IntoIterator<Item = usize>) {
    for i in at {
        assert!(i < size, "byte {i} of a block of {size}");
        // SAFETY: `p` is a live block of `size` bytes that the model owns, and `i < size`.
        let got = unsafe { p.add(i).read() };
        assert_eq!(got, pattern(tag, i), "{what} {p:p} (size {size}, tag {tag}): byte {i} was overwritten");
    }
}

// ---------------------------------------------------------------------------------------------
// The step loop

/// `NAPALLOC_FUZZ_TRACE` is set: print the decoded program.
pub fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("NAPALLOC_FUZZ_TRACE").is_some())
}

/// Decode up to `max_steps` operations from `u` and hand each to `step`, until the input is used
/// up or does not decode; with [`trace`] each is printed first.
pub fn run_steps<'a, Op: Arbitrary<'a> + Debug>(u: &mut Unstructured<'a>, max_steps: usize, mut step: impl FnMut(Op)) {
    for _ in 0..max_steps {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(u) else { break };
        if trace() {
            eprintln!("{op:?}");
        }
        step(op);
    }
}

// ---------------------------------------------------------------------------------------------
// The task heap through its C ABI

/// Largest size the task heap serves: anything above `u32::MAX` must fail.
pub const SERVED_MAX: usize = u32::MAX as usize;

/// A size: small ones, or one of the target's edges.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Size {
    Tiny(u8),
    Small(u16),
    Edge(u8),
}

impl Size {
    pub fn get(self, edges: &[usize]) -> usize {
        match self {
            Size::Tiny(n) => n as usize,
            Size::Small(n) => n as usize,
            Size::Edge(k) => edges[k as usize % edges.len()],
        }
    }
}

/// The task heap's books through the C ABI.
pub fn stats() -> NapallocStats {
    let mut s = NapallocStats::default();
    // SAFETY: `s` is writable.
    assert_eq!(unsafe { NapallocGetStats(&mut s) }, S_OK);
    s
}

/// How a target asks the heap about a pointer.
pub trait Probe {
    /// Assert that the heap takes `p` for a live block of `size` bytes (`Some`) or for no block
    /// at all (`None`).
    fn expect(&self, p: *mut u8, size: Option<usize>, what: &str);
}

pub type Id = u64;

/// A live block of the model; `extra` is what a target adds (e.g. the heap it lives in).
pub struct Block<X> {
    pub addr: usize,
    pub size: usize,
    pub parent: Option<Id>,
    pub children: BTreeSet<Id>,
    pub tag: u32,
    pub ptr: *mut u8,
    pub extra: X,
}

/// What a pointer given to the heap is, in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Null,
    Live(Id),
    Bad,
}

/// What [`Heap::alloc_child_at`] leaves to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Child {
    /// A new block under live block `parent`: the target takes it with [`Heap::on_alloc`].
    New(*mut u8, Id),
    /// The allocation under live block `parent` failed.
    Failed(Id),
    /// The parent is no block: refused, counted as a failed allocation or as a bad pointer.
    Refused { as_failure: bool },
}

/// What [`Heap::on_realloc`] leaves to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Realloc {
    /// `realloc(NULL, n)` returned a new block.
    New,
    /// The allocation failed: a new one (`None`), or the growth of live block `id`, which is kept.
    Failed(Option<Id>),
    /// The model has it all.
    Done,
}

/// The blocks this input holds in the process-wide task heap, and the changes of the heap's
/// counters it caused (the heap outlives each input: `base` is where its books stood at the
/// start).
pub struct Heap<X, P> {
    pub blocks: HashMap<Id, Block<X>>,
    pub by_addr: BTreeMap<usize, Id>,
    /// Addresses of freed blocks (the last 64).
    pub freed: Vec<usize>,
    pub next_id: Id,
    pub next_tag: u32,
    pub live_bytes: u64,
    pub bad: u64,
    pub failed: u64,
    pub trims: u64,
    pub base: NapallocStats,
    pub probe: P,
}

impl<X, P: Probe> Heap<X, P> {
    pub fn new(probe: P) -> Self {
        Heap {
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
            probe,
        }
    }

    /// The address of live block number `n` (counted in address order, modulo their number).
    pub fn nth_live(&self, n: u16) -> Option<usize> {
        if self.by_addr.is_empty() {
            return None;
        }
        self.by_addr.keys().nth(n as usize % self.by_addr.len()).copied()
    }

    /// A freed address (`None` if none was freed yet).
    pub fn nth_freed(&self, n: u16) -> Option<usize> {
        (!self.freed.is_empty()).then(|| self.freed[n as usize % self.freed.len()])
    }

    /// The pointer to hand the heap for `addr`, and what it is.
    pub fn lookup(&self, addr: usize) -> (*mut u8, Target) {
        if addr == 0 {
            return (std::ptr::null_mut(), Target::Null);
        }
        match self.by_addr.get(&addr) {
            Some(id) => (self.blocks[id].ptr, Target::Live(*id)),
            // No provenance: the heap only compares such pointers.
            None => (std::ptr::without_provenance_mut(addr), Target::Bad),
        }
    }

    /// The heap handed out `p` of `size` bytes (embedded under `parent`): check it is new,
    /// aligned, overlaps no live block and has the size asked for, fill it, remember it.
    pub fn on_alloc(&mut self, p: *mut u8, size: usize, parent: Option<Id>, extra: X) {
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
        self.probe.expect(p, Some(size), "a new block");
        self.next_tag = self.next_tag.wrapping_add(1);
        let tag = self.next_tag;
        fill(p, 0, size, tag);
        let id = self.next_id;
        self.next_id += 1;
        self.blocks.insert(id, Block { addr, size, parent, children: BTreeSet::new(), tag, ptr: p, extra });
        if let Some(pid) = parent {
            self.blocks.get_mut(&pid).unwrap().children.insert(id);
        }
        self.by_addr.insert(addr, id);
        self.live_bytes += size as u64;
    }

    /// Drop block `id` from the model (the heap freed it, or a scope reset took it).
    pub fn forget(&mut self, id: Id) -> Block<X> {
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

    fn assert_gone(&self, addr: usize) {
        self.probe.expect(std::ptr::without_provenance_mut(addr), None, "freed block still allocated:");
    }

    /// The heap freed block `id` alone: its embedded blocks become independent.
    pub fn free_one(&mut self, id: Id) {
        let b = self.forget(id);
        for c in &b.children {
            self.blocks.get_mut(c).unwrap().parent = None;
        }
        self.assert_gone(b.addr);
    }

    /// The heap freed block `id` and its embedded blocks.
    pub fn free_tree(&mut self, id: Id) {
        let mut stack = vec![id];
        while let Some(i) = stack.pop() {
            let b = self.forget(i);
            self.assert_gone(b.addr);
            stack.extend(b.children);
        }
    }

    /// `free(pp)` (one block) or `free_tree(pp)` (`tree`) was called for `target`.
    pub fn on_free(&mut self, target: Target, tree: bool) {
        match target {
            Target::Null => {}
            Target::Bad => self.bad += 1,
            Target::Live(id) if tree => self.free_tree(id),
            Target::Live(id) => self.free_one(id),
        }
    }

    /// `heap::alloc_child(pp, size)` (what the NapUtil `Alloc*` functions do) under `target`: a
    /// block under a live parent, or a failure the target judges; under anything else, refused and
    /// reported once, as a bad pointer or as a failed allocation.
    pub fn alloc_child_at(&mut self, pp: NonNull<u8>, target: Target, size: usize) -> Child {
        let before = stats();
        let res = napalloc::heap::alloc_child(pp, size);
        match (target, res) {
            (Target::Live(pid), Some(p)) => Child::New(p.as_ptr(), pid),
            (Target::Live(pid), None) => Child::Failed(pid),
            (_, Some(p)) => panic!("alloc_child under non-block {pp:p} returned {p:p}"),
            (_, None) => {
                let now = stats();
                let bad = now.bad_pointer_reports - before.bad_pointer_reports;
                let failed = now.failed_allocations - before.failed_allocations;
                assert_eq!(bad + failed, 1, "alloc_child({pp:p}, {size}): {bad} bad, {failed} failed");
                self.bad += bad;
                self.failed += failed;
                Child::Refused { as_failure: failed == 1 }
            }
        }
    }

    /// `free_tree(pp)` (what a NapUtil `Free*` does) of `target`: a live block is freed with its
    /// embedded blocks, anything else is refused.
    pub fn free_tree_at(&mut self, pp: *mut u8, target: Target) {
        // SAFETY: a live block is forgotten by the model; anything else is refused.
        let freed = unsafe { napalloc::heap::free_tree(pp) };
        assert_eq!(freed, matches!(target, Target::Live(_)), "free_tree({pp:p}) of {target:?}");
        self.on_free(target, true);
    }

    /// A realloc of `pp` (which is `target`) to `size` bytes returned `q`. SPEC §5: NULL
    /// allocates, a bad pointer is refused, size 0 frees and returns NULL, a failed grow keeps
    /// the block; what is left to the target is the new block or the failure.
    pub fn on_realloc(&mut self, pp: *mut u8, target: Target, size: usize, q: *mut u8) -> Realloc {
        match target {
            Target::Null if q.is_null() => Realloc::Failed(None),
            Target::Null => Realloc::New,
            Target::Bad => {
                assert!(q.is_null(), "realloc of non-block {pp:p} returned {q:p}");
                self.bad += 1;
                Realloc::Done
            }
            Target::Live(id) if size == 0 => {
                assert!(q.is_null(), "realloc(p, 0) returns NULL");
                self.free_one(id);
                Realloc::Done
            }
            Target::Live(id) if q.is_null() => {
                let b = &self.blocks[&id];
                self.probe.expect(b.ptr, Some(b.size), "a failed realloc keeps the block");
                Realloc::Failed(Some(id))
            }
            Target::Live(id) => {
                assert!(size <= SERVED_MAX, "realloc to {size} succeeded");
                self.on_moved(id, q, size);
                Realloc::Done
            }
        }
    }

    /// A realloc of live block `id` to `size` bytes returned `q`: the contents are kept up to the
    /// smaller size, the block is `q` now, and the old address (if it moved) is no block.
    fn on_moved(&mut self, id: Id, q: *mut u8, size: usize) {
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
            self.assert_gone(old_addr);
        }
        self.by_addr.insert(q as usize, id);
        self.probe.expect(q, Some(size), "a reallocated block");
    }

    /// The heap's counters moved by what the model says; every live block is intact and has its
    /// size. Returns the counters, for the target's own checks.
    pub fn check(&self) -> NapallocStats {
        let s = stats();
        let b = &self.base;
        assert_eq!(s.live_blocks - b.live_blocks, self.blocks.len() as u64, "live_blocks ({s:?})");
        assert_eq!(s.live_bytes - b.live_bytes, self.live_bytes, "live_bytes ({s:?})");
        assert_eq!(s.bad_pointer_reports - b.bad_pointer_reports, self.bad, "bad_pointer_reports ({s:?})");
        assert_eq!(s.failed_allocations - b.failed_allocations, self.failed, "failed_allocations ({s:?})");
        for b in self.blocks.values() {
            verify(b.ptr, b.size, b.tag, "live block");
            self.probe.expect(b.ptr, Some(b.size), "a live block");
        }
        s
    }

    /// Free every block this input still holds with `free_tree` (roots newest first, a
    /// deterministic order, so that a crash reproduces): the heap's live blocks and bytes are back
    /// where they started.
    pub fn free_all(&mut self) {
        let mut roots: Vec<Id> = self.blocks.iter().filter(|(_, b)| b.parent.is_none()).map(|(id, _)| *id).collect();
        roots.sort_unstable_by(|a, b| b.cmp(a));
        for id in roots {
            let p = self.blocks[&id].ptr;
            // SAFETY: a live root of this input; the model forgets it and its subtree.
            assert!(unsafe { napalloc::heap::free_tree(p) });
            self.free_tree(id);
        }
        self.check();
        let s = stats();
        assert_eq!((s.live_blocks, s.live_bytes), (self.base.live_blocks, self.base.live_bytes));
    }
}
