//! `region_ops`: arbitrary programs of `Region` operations, checked against a plain model after
//! every step.
//!
//! The input is a [`Config`] (reservation, commit limit and chunk, scrubbing) and then a stream of
//! [`Op`]s: alloc / alloc_child / alloc_untracked / free / free_one / realloc / reset / size_of /
//! owns / trim / rewrite. Sizes cover the whole `usize` range with extra weight on the edges of the
//! allocator's paths (granule, the 1 KiB fast path, the log's 2^30 size field, `u32::MAX`,
//! `isize::MAX`, `usize::MAX`); alignments are powers of two up to 64 KiB; pointers are live block
//! starts, interior pointers, freed ones, pointers into another region, into the untracked arena,
//! onto the stack and the heap, and arbitrary integers. The target never dereferences a pointer
//! the region did not hand out as live.
//!
//! The model keeps every live block (address, requested size, alignment, parent, children and a
//! tag from which its fill pattern follows) and after every step checks:
//! * `stats()`: `live_blocks`, `live_bytes` and `bad_pointers` equal the model's;
//! * every live block: `owns` is true, `size_of` is its size, its address keeps its alignment and
//!   its bytes still hold its pattern (sampled for large blocks; every byte at the end);
//! * every answer of the operation itself: which pointers are refused, with which error, that a
//!   refused call changes nothing, that a failed allocation happened only near the reservation or
//!   the limit, that a new block overlaps no live block, that realloc keeps contents, alignment,
//!   parent and children, that a cascading free takes exactly the subtree.
#![no_main]

#[path = "shared/mod.rs"]
mod shared;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use napalloc::{Error, Region, Scrub};
use std::alloc::Layout;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ptr::NonNull;

/// The region's minimum alignment and allocation unit.
const GRANULE: usize = 16;
/// Operations per input at most (keeps every input fast).
const MAX_STEPS: usize = 600;
/// Blocks larger than this are checked by sampling after each step (every byte at the end).
const FULL_CHECK_MAX: usize = 4096;

#[derive(Arbitrary, Debug)]
enum Reserve {
    Small,
    Medium,
    Large,
    /// The default reservation (4 GiB); always run with a commit limit.
    Default,
}

#[derive(Arbitrary, Debug)]
struct Config {
    reserve: Reserve,
    /// Commit limit in 64 KiB units (`None`: no limit).
    limit: Option<u8>,
    /// Commit chunk in 4 KiB pages.
    chunk_pages: u8,
    scrub_on_free: bool,
    scrub_on_reset: bool,
}

/// The sizes the allocator's paths switch on, and the ends of the ranges its arithmetic handles.
const EDGES: &[usize] = &[
    0,
    1,
    15,
    16,
    17,
    31,
    32,
    33,
    1023,
    1024,
    1025,
    4095,
    4096,
    4097,
    65535,
    65536,
    65537,
    (1 << 30) - 2,
    (1 << 30) - 1,
    1 << 30,
    (1 << 30) + 1,
    u32::MAX as usize - 16,
    u32::MAX as usize - 1,
    u32::MAX as usize,
    u32::MAX as usize + 1,
    (1 << 32) + 16,
    isize::MAX as usize - 131_072,
    isize::MAX as usize - 4096,
    isize::MAX as usize - 15,
    isize::MAX as usize,
    isize::MAX as usize + 1,
    usize::MAX - 65535,
    usize::MAX - 15,
    usize::MAX - 1,
    usize::MAX,
];

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Size {
    Tiny(u8),
    Small(u16),
    /// Up to 4 MiB.
    Large(u32),
    Edge(u8),
    Any(usize),
}

impl Size {
    fn get(self) -> usize {
        match self {
            Size::Tiny(n) => n as usize,
            Size::Small(n) => n as usize,
            Size::Large(n) => n as usize & ((4 << 20) - 1),
            Size::Edge(k) => EDGES[k as usize % EDGES.len()],
            Size::Any(n) => n,
        }
    }
}

/// Alignments: powers of two up to 64 KiB.
fn align_of(a: u8) -> usize {
    1 << (a % 17)
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Ptr {
    /// The `n`th live block by address.
    Live(u16),
    /// Inside (or just past) the `n`th live block.
    Interior(u16, u16),
    /// Near the `n`th live block, on either side.
    Near(u16, i16),
    /// A block freed earlier (or live again if its address was reused).
    Freed(u16),
    Stack(u8),
    Heap(u8),
    /// A live block of another region.
    OtherRegion,
    /// An untracked block of this region (a separate reservation).
    Untracked(u16),
    /// Any address.
    Int(usize),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc {
        size: Size,
        align: u8,
    },
    AllocChild {
        parent: Ptr,
        size: Size,
        align: u8,
    },
    AllocUntracked {
        size: u16,
        align: u8,
    },
    Free(Ptr),
    FreeOne(Ptr),
    Realloc(Ptr, Size),
    Reset,
    SizeOf(Ptr),
    Owns(Ptr),
    Trim(u32),
    /// Give a live block a new tag and rewrite its pattern.
    Rewrite(u16),
}

type Id = u64;

#[derive(Debug)]
struct Block {
    addr: usize,
    size: usize,
    /// The alignment asked for (realloc must keep it).
    align: usize,
    parent: Option<Id>,
    children: BTreeSet<Id>,
    tag: u32,
}

/// What the region must answer for a pointer that is not a live block start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bad {
    /// Certainly inside the tracked reservation: `NotABlock`.
    Inside,
    /// Certainly outside it: `ForeignPointer`.
    Outside,
    /// Either, depending on where the reservation is.
    Unknown,
}

#[derive(Clone, Copy, Debug)]
enum Target {
    Live(Id),
    Bad(Bad),
}

/// Fill `[from, to)` of the block at `addr` (`p`) with the pattern of `tag`.
fn fill(addr: usize, from: usize, to: usize, tag: u32, p: *mut u8) {
    debug_assert_eq!(p as usize, addr);
    shared::fill(p, from, to, tag);
}

/// Check the pattern of `[0, size)` at `p`: every byte, or a sample.
fn verify(p: *const u8, size: usize, tag: u32, full: bool, what: &str) {
    if full || size <= FULL_CHECK_MAX {
        shared::verify(p, size, tag, what);
    } else {
        let sample = (0..256).chain(size - 256..size).chain((256..size - 256).step_by(509));
        shared::verify_at(p, size, tag, what, sample);
    }
}

struct Env {
    stack: *const u8,
    heap: *const u8,
    other: NonNull<u8>,
}

#[derive(Default)]
struct Model {
    blocks: HashMap<Id, Block>,
    by_addr: BTreeMap<usize, Id>,
    untracked: Vec<(usize, usize, u32)>,
    /// Recently freed addresses (a ring).
    freed: Vec<usize>,
    freed_next: usize,
    next_id: Id,
    next_tag: u32,
    live_bytes: usize,
    bad_pointers: u64,
    /// min(arena reservation, commit limit): allocations may fail only near it.
    cap: usize,
}

impl Model {
    fn tag(&mut self) -> u32 {
        self.next_tag = self.next_tag.wrapping_add(1);
        self.next_tag
    }

    fn nth_live(&self, n: u16) -> Option<(usize, Id)> {
        if self.by_addr.is_empty() {
            return None;
        }
        self.by_addr.iter().nth(n as usize % self.by_addr.len()).map(|(a, id)| (*a, *id))
    }

    fn note_freed(&mut self, addr: usize) {
        if self.freed.len() < 64 {
            self.freed.push(addr);
        } else {
            self.freed[self.freed_next % 64] = addr;
        }
        self.freed_next += 1;
    }
}

/// The region under test, its model and the pointers it handed out (with their provenance).
struct Runner {
    r: Region,
    m: Model,
    /// Address -> the pointer the region returned for it.
    ptrs: HashMap<usize, NonNull<u8>>,
    untracked_ptrs: Vec<NonNull<u8>>,
}

impl Runner {
    fn expected_error(&self, p: NonNull<u8>, bad: Bad) -> Error {
        match bad {
            Bad::Inside => Error::NotABlock,
            Bad::Outside => Error::ForeignPointer,
            Bad::Unknown if self.r.contains(p.as_ptr()) => Error::NotABlock,
            Bad::Unknown => Error::ForeignPointer,
        }
    }

    fn resolve(&self, p: Ptr, env: &Env) -> Option<(NonNull<u8>, Target)> {
        let (ptr, target) = self.m.resolve_addr(p, env)?;
        match target {
            // A live block is named through the pointer the region handed out (its provenance).
            Target::Live(_) => Some((self.ptrs[&ptr], target)),
            // Anything else becomes a pointer without provenance: the region only compares it.
            Target::Bad(_) => NonNull::new(std::ptr::without_provenance_mut::<u8>(ptr)).map(|q| (q, target)),
        }
    }

    /// A failed allocation of `size` bytes aligned to `align` is allowed only near the end of
    /// the reservation or the limit (or for sizes the region never serves).
    fn check_failure(&self, e: Error, size: usize, align: usize, what: &str) {
        assert!(e.is_out_of_memory(), "{what}: {size} bytes aligned {align}: unexpected {e:?}");
        if size > u32::MAX as usize {
            return;
        }
        let s = self.r.stats();
        let need = s.high_water + 2 * size + 2 * align.max(GRANULE) + 4 * GRANULE;
        assert!(
            need > self.m.cap,
            "{what}: {size} bytes aligned {align} failed with {e:?} although only {} of {} bytes are used ({s:?})",
            s.high_water,
            self.m.cap
        );
    }

    /// The new block `[p, p + size)` overlaps no live block.
    fn check_disjoint(&self, p: usize, size: usize) {
        let end = p + size.max(1);
        if let Some((&a, id)) = self.m.by_addr.range(..=p).next_back() {
            let b = &self.m.blocks[id];
            assert!(a + b.size.max(1) <= p, "new block {p:#x}+{size} overlaps live block {a:#x}+{}", b.size);
        }
        if let Some((&a, _)) = self.m.by_addr.range(p..).next() {
            assert!(end <= a, "new block {p:#x}+{size} overlaps live block at {a:#x}");
        }
    }

    fn on_alloc(&mut self, p: NonNull<u8>, size: usize, align: usize, parent: Option<Id>) {
        let addr = p.as_ptr() as usize;
        assert_eq!(addr % align.max(GRANULE), 0, "block {addr:#x} not aligned to {align}");
        assert!(self.r.contains(p.as_ptr()), "block {addr:#x} outside the reservation");
        self.check_disjoint(addr, size);
        let tag = self.m.tag();
        fill(addr, 0, size, tag, p.as_ptr());
        let id = self.m.next_id;
        self.m.next_id += 1;
        self.m.blocks.insert(id, Block { addr, size, align, parent, children: BTreeSet::new(), tag });
        if let Some(pid) = parent {
            self.m.blocks.get_mut(&pid).unwrap().children.insert(id);
        }
        self.m.by_addr.insert(addr, id);
        self.ptrs.insert(addr, p);
        self.m.live_bytes += size;
    }

    /// Forget block `id` (not its children).
    fn forget(&mut self, id: Id) -> Block {
        let b = self.m.blocks.remove(&id).unwrap();
        self.m.by_addr.remove(&b.addr);
        self.ptrs.remove(&b.addr);
        self.m.live_bytes -= b.size;
        self.m.note_freed(b.addr);
        if let Some(pid) = b.parent {
            if let Some(pb) = self.m.blocks.get_mut(&pid) {
                pb.children.remove(&id);
            }
        }
        b
    }

    fn free_subtree(&mut self, id: Id) -> Vec<usize> {
        let mut stack = vec![id];
        let mut addrs = vec![];
        while let Some(i) = stack.pop() {
            let b = self.forget(i);
            addrs.push(b.addr);
            stack.extend(b.children);
        }
        addrs
    }

    fn free_one(&mut self, id: Id) -> Vec<usize> {
        let b = self.forget(id);
        for c in &b.children {
            self.m.blocks.get_mut(c).unwrap().parent = None;
        }
        vec![b.addr]
    }

    fn assert_gone(&self, addrs: &[usize]) {
        for &a in addrs {
            let p = NonNull::new(std::ptr::without_provenance_mut::<u8>(a)).unwrap();
            assert!(!self.r.owns(p), "freed block {a:#x} still owned");
            assert_eq!(self.r.size_of(p), None, "freed block {a:#x} still has a size");
        }
    }

    fn step(&mut self, op: Op, env: &Env) {
        match op {
            Op::Alloc { size, align } => {
                let (size, align) = (size.get(), align_of(align));
                let Ok(layout) = Layout::from_size_align(size, align) else { return };
                match self.r.alloc(layout) {
                    Ok(p) => self.on_alloc(p, size, align, None),
                    Err(e) => self.check_failure(e, size, align, "alloc"),
                }
            }
            Op::AllocChild { parent, size, align } => {
                let (size, align) = (size.get(), align_of(align));
                let Ok(layout) = Layout::from_size_align(size, align) else { return };
                let Some((pp, target)) = self.resolve(parent, env) else { return };
                let res = self.r.alloc_child(pp, layout);
                match (target, res) {
                    (Target::Live(pid), Ok(p)) => self.on_alloc(p, size, align, Some(pid)),
                    (Target::Live(_), Err(e)) => self.check_failure(e, size, align, "alloc_child"),
                    (Target::Bad(bad), Err(e)) => {
                        if size <= u32::MAX as usize {
                            assert_eq!(e, self.expected_error(pp, bad), "alloc_child under {pp:p} ({bad:?})");
                        }
                    }
                    (Target::Bad(bad), Ok(p)) => panic!("alloc_child under non-block {pp:p} ({bad:?}) returned {p:p}"),
                }
            }
            Op::AllocUntracked { size, align } => {
                let (size, align) = (size as usize, align_of(align % 13));
                let layout = Layout::from_size_align(size, align).unwrap();
                match self.r.alloc_untracked(layout) {
                    Ok(p) => {
                        let addr = p.as_ptr() as usize;
                        assert_eq!(addr % align, 0);
                        assert!(!self.r.owns(p) || size == usize::MAX, "untracked block {p:p} is owned");
                        let tag = self.m.tag();
                        fill(addr, 0, size, tag, p.as_ptr());
                        self.m.untracked.push((addr, size, tag));
                        self.untracked_ptrs.push(p);
                    }
                    Err(e) => assert!(e.is_out_of_memory(), "alloc_untracked: {e:?}"),
                }
            }
            Op::Free(p) | Op::FreeOne(p) => {
                let cascade = matches!(op, Op::Free(_));
                let Some((pp, target)) = self.resolve(p, env) else { return };
                // SAFETY: a live block is forgotten by the model and never used again; a bad
                // pointer is refused without being dereferenced (the contract under test).
                let res = unsafe {
                    if cascade {
                        self.r.free(pp)
                    } else {
                        self.r.free_one(pp)
                    }
                };
                match target {
                    Target::Live(id) => {
                        assert_eq!(res, Ok(()), "free of live block {pp:p}");
                        let gone = if cascade { self.free_subtree(id) } else { self.free_one(id) };
                        self.assert_gone(&gone);
                    }
                    Target::Bad(bad) => {
                        assert_eq!(res, Err(self.expected_error(pp, bad)), "free of {pp:p} ({bad:?})");
                        self.m.bad_pointers += 1;
                    }
                }
            }
            Op::Realloc(p, size) => {
                let size = size.get();
                let Some((pp, target)) = self.resolve(p, env) else { return };
                // SAFETY: if the block moves the model forgets the old pointer; a bad pointer is
                // refused without being dereferenced.
                let res = unsafe { self.r.realloc(pp, size) };
                match target {
                    Target::Live(id) => match res {
                        Ok(q) => self.on_realloc(id, q, size),
                        Err(e) => {
                            if size > u32::MAX as usize {
                                assert_eq!(e, Error::TooLarge, "realloc to {size}");
                            }
                            let align = self.m.blocks[&id].align;
                            self.check_failure(e, size, align, "realloc");
                        }
                    },
                    Target::Bad(bad) => {
                        assert_eq!(res, Err(self.expected_error(pp, bad)), "realloc of {pp:p} ({bad:?}) to {size}");
                        self.m.bad_pointers += 1;
                    }
                }
            }
            Op::Reset => {
                self.r.reset();
                let addrs: Vec<usize> = self.m.by_addr.keys().copied().collect();
                for a in &addrs {
                    self.m.note_freed(*a);
                }
                self.m.blocks.clear();
                self.m.by_addr.clear();
                self.ptrs.clear();
                self.m.untracked.clear();
                self.untracked_ptrs.clear();
                self.m.live_bytes = 0;
                self.assert_gone(&addrs);
            }
            Op::SizeOf(p) | Op::Owns(p) => {
                let Some((pp, target)) = self.resolve(p, env) else { return };
                let want = match target {
                    Target::Live(id) => Some(self.m.blocks[&id].size),
                    Target::Bad(_) => None,
                };
                assert_eq!(self.r.size_of(pp), want, "size_of({pp:p})");
                assert_eq!(self.r.owns(pp), want.is_some(), "owns({pp:p})");
            }
            Op::Trim(retain) => {
                let before = self.r.stats().committed;
                let freed = self.r.trim(retain as usize).expect("trim");
                let after = self.r.stats().committed;
                assert_eq!(before - after, freed, "trim reports what it gave back");
            }
            Op::Rewrite(n) => {
                if let Some((addr, id)) = self.m.nth_live(n) {
                    let tag = self.m.tag();
                    let b = self.m.blocks.get_mut(&id).unwrap();
                    b.tag = tag;
                    fill(addr, 0, b.size, tag, self.ptrs[&addr].as_ptr());
                }
            }
        }
    }

    fn on_realloc(&mut self, id: Id, q: NonNull<u8>, size: usize) {
        let (old_addr, old_size, align, tag) = {
            let b = &self.m.blocks[&id];
            (b.addr, b.size, b.align, b.tag)
        };
        let addr = q.as_ptr() as usize;
        assert_eq!(addr % align.max(GRANULE), 0, "realloc lost the alignment {align}");
        verify(q.as_ptr(), old_size.min(size), tag, true, "realloc kept contents");
        self.m.by_addr.remove(&old_addr);
        self.ptrs.remove(&old_addr);
        if addr != old_addr {
            self.m.note_freed(old_addr);
            // The old address is no block any more (the new one cannot be there: it was live).
            let p = NonNull::new(std::ptr::without_provenance_mut::<u8>(old_addr)).unwrap();
            assert!(!self.r.owns(p), "realloc left the old block {old_addr:#x} live");
        }
        self.check_disjoint(addr, size);
        fill(addr, old_size.min(size), size, tag, q.as_ptr());
        let b = self.m.blocks.get_mut(&id).unwrap();
        b.addr = addr;
        b.size = size;
        self.m.live_bytes = self.m.live_bytes - old_size + size;
        self.m.by_addr.insert(addr, id);
        self.ptrs.insert(addr, q);
    }

    /// The books, and every live block.
    fn check(&self, full: bool) {
        let s = self.r.stats();
        assert_eq!(s.live_blocks, self.m.blocks.len(), "live_blocks ({s:?})");
        assert_eq!(s.live_bytes, self.m.live_bytes, "live_bytes ({s:?})");
        assert_eq!(s.bad_pointers, self.m.bad_pointers, "bad_pointers ({s:?})");
        assert!(s.committed <= s.reserved, "{s:?}");
        assert!(s.table_committed <= s.committed, "{s:?}");
        for b in self.m.blocks.values() {
            let p = self.ptrs[&b.addr];
            assert!(self.r.owns(p), "live block {:#x} not owned", b.addr);
            assert_eq!(self.r.size_of(p), Some(b.size), "size_of live block {:#x}", b.addr);
            assert_eq!(b.addr % b.align.max(GRANULE), 0);
            verify(p.as_ptr(), b.size, b.tag, full, "live block");
            if let Some(pid) = b.parent {
                assert!(self.m.blocks[&pid].children.contains(&self.m.by_addr[&b.addr]));
            }
        }
        for (&(_, size, tag), p) in self.m.untracked.iter().zip(&self.untracked_ptrs) {
            verify(p.as_ptr(), size, tag, full, "untracked block");
        }
    }
}

impl Model {
    /// The address `p` names and its target (see [`Runner::resolve`]).
    fn resolve_addr(&self, p: Ptr, env: &Env) -> Option<(usize, Target)> {
        let (addr, bad) = match p {
            Ptr::Live(n) => match self.nth_live(n) {
                Some((a, _)) => (a, Bad::Unknown),
                None => (env.stack as usize, Bad::Outside),
            },
            Ptr::Interior(n, k) => match self.nth_live(n) {
                Some((a, id)) => {
                    let size = self.blocks[&id].size;
                    let k = 1 + k as usize % (size.max(1) + GRANULE);
                    (a + k, if k < size { Bad::Inside } else { Bad::Unknown })
                }
                None => (env.heap as usize + 3, Bad::Outside),
            },
            Ptr::Near(n, d) => match self.nth_live(n) {
                Some((a, _)) => (a.wrapping_add_signed(d as isize), Bad::Unknown),
                None => (env.stack as usize + 1, Bad::Outside),
            },
            Ptr::Freed(n) if !self.freed.is_empty() => (self.freed[n as usize % self.freed.len()], Bad::Inside),
            Ptr::Freed(_) => (env.heap as usize, Bad::Outside),
            Ptr::Stack(k) => (env.stack as usize + k as usize, Bad::Outside),
            Ptr::Heap(k) => (env.heap as usize + k as usize, Bad::Outside),
            Ptr::OtherRegion => (env.other.as_ptr() as usize, Bad::Outside),
            Ptr::Untracked(n) if !self.untracked.is_empty() => {
                (self.untracked[n as usize % self.untracked.len()].0, Bad::Outside)
            }
            Ptr::Untracked(_) => (env.stack as usize + 8, Bad::Outside),
            Ptr::Int(a) => (a, Bad::Unknown),
        };
        if addr == 0 {
            return None;
        }
        let target = match self.by_addr.get(&addr) {
            Some(id) => Target::Live(*id),
            None => Target::Bad(bad),
        };
        Some((addr, target))
    }
}

fn build(cfg: &Config) -> Option<(Region, usize)> {
    let (reserve, default_limit) = match cfg.reserve {
        Reserve::Small => (256 << 10, None),
        Reserve::Medium => (2 << 20, None),
        Reserve::Large => (32 << 20, None),
        Reserve::Default => (4 << 30, Some(16 << 20)),
    };
    let limit = cfg.limit.map(|l| (l as usize + 1) << 16).or(default_limit);
    let mut b = Region::builder()
        .reserve(reserve)
        .commit_chunk((cfg.chunk_pages as usize + 1) * 4096)
        .scrub(Scrub { on_free: cfg.scrub_on_free, on_reset: cfg.scrub_on_reset });
    if let Some(l) = limit {
        b = b.limit(l);
    }
    let r = b.build().expect("a region of at most 4 GiB can be reserved");
    Some((r, limit.map_or(reserve, |l| l.min(reserve))))
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(cfg) = Config::arbitrary(&mut u) else { return };
    if shared::trace() {
        eprintln!("{cfg:?}");
    }
    let Some((r, cap)) = build(&cfg) else { return };
    let other = Region::builder().reserve(1 << 20).build().expect("second region");
    let other_block = other.alloc(Layout::from_size_align(16, 16).unwrap()).expect("block of the second region");
    let stack = [0u8; 256];
    let heap = vec![0u8; 256];
    let env = Env { stack: stack.as_ptr(), heap: heap.as_ptr(), other: other_block };
    let mut run = Runner { r, m: Model { cap, ..Model::default() }, ptrs: HashMap::new(), untracked_ptrs: Vec::new() };
    shared::run_steps(&mut u, MAX_STEPS, |op: Op| {
        run.step(op, &env);
        run.check(false);
    });
    run.check(true);
    // Free every root: the books must read zero.
    // Newest first (a deterministic order, so that a crash reproduces).
    let mut roots: Vec<Id> = run.m.blocks.iter().filter(|(_, b)| b.parent.is_none()).map(|(id, _)| *id).collect();
    roots.sort_unstable_by(|a, b| b.cmp(a));
    for id in roots {
        let p = run.ptrs[&run.m.blocks[&id].addr];
        // SAFETY: a live root; the model forgets it and its subtree.
        unsafe { run.r.free(p).expect("free of a live root") };
        let gone = run.free_subtree(id);
        run.assert_gone(&gone);
    }
    let s = run.r.stats();
    assert_eq!((s.live_blocks, s.live_bytes), (0, 0), "{s:?}");
    drop(other);
});
