//! The canonical request (WORKLOAD.md), shared by the criterion benches and the instruction-count
//! harness (`examples/canonical.rs`), in every mode napalloc offers and for the baselines.
//!
//! Per request: a 16-byte header; an array of 8 pointers (64 bytes), a child of the header; 16
//! blocks of `16 + ((r >> 32) * 241 >> 32)` bytes (16..=256), children of the header, one byte
//! written into each and `array[i & 7] = block`; then everything is released, either block by
//! block (blocks, then array, then header) or all at once. Random numbers: xorshift64 (13, 7, 17),
//! seed `SEED`, thread `t` adds `t * THREAD_STEP`.
//!
//! Every mode runs the same loop ([`request`]); only the four allocator hooks differ. Pointers go
//! through `black_box` so that no compiler can see through an allocation and drop it.
#![allow(dead_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::hint::black_box;
use core::ptr::{null_mut, NonNull};

/// The seed of thread 0.
pub const SEED: u64 = 0x243F_6A88_85A3_08D3;
/// What thread `t` adds to the seed, `t` times.
pub const THREAD_STEP: u64 = 0x9E37_79B9_7F4A_7C15;
/// Blocks per request.
pub const BLOCKS: usize = 16;

/// xorshift64 with shifts 13, 7, 17.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The generator of thread `t`.
    pub fn for_thread(t: u64) -> Rng {
        Rng(SEED.wrapping_add(t.wrapping_mul(THREAD_STEP)))
    }
    #[inline(always)]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The size of a block from one random number: 16..=256.
#[inline(always)]
pub fn block_size(r: u64) -> usize {
    16 + (((r >> 32) * 241) >> 32) as usize
}

const HEADER: Layout = match Layout::from_size_align(16, 16) {
    Ok(l) => l,
    Err(_) => panic!(),
};
const ARRAY: Layout = match Layout::from_size_align(64, 8) {
    Ok(l) => l,
    Err(_) => panic!(),
};
#[inline(always)]
fn block_layout(size: usize) -> Layout {
    // SAFETY: 16..=256 bytes, alignment 8: always a valid layout.
    unsafe { Layout::from_size_align_unchecked(size, 8) }
}

/// The blocks of a request and their sizes, kept only by the modes that free block by block.
pub type Blocks = [(*mut u8, usize); BLOCKS];

/// The four hooks a mode provides. `release` gets every block when `KEEP_BLOCKS` is set (the COM
/// way frees each one); otherwise the bulk modes free the header or reset.
pub trait Mode {
    const KEEP_BLOCKS: bool;
    fn header(&mut self) -> *mut u8;
    fn array(&mut self, header: *mut u8) -> *mut u8;
    fn block(&mut self, header: *mut u8, size: usize) -> *mut u8;
    fn release(&mut self, header: *mut u8, array: *mut u8, blocks: &Blocks);
}

/// One canonical request.
#[inline(always)]
pub fn request<M: Mode>(m: &mut M, rng: &mut Rng) {
    let h = black_box(m.header());
    let arr = black_box(m.array(h)).cast::<*mut u8>();
    let mut blocks: Blocks = [(null_mut(), 0); BLOCKS];
    for (i, slot) in blocks.iter_mut().enumerate() {
        let size = block_size(rng.next());
        let b = black_box(m.block(h, size));
        // SAFETY: `b` has at least 16 bytes and `arr` 8 pointer slots, both fresh.
        unsafe {
            b.write(i as u8);
            arr.add(i & 7).write(b);
        }
        if M::KEEP_BLOCKS {
            *slot = (b, size);
        }
    }
    m.release(h, arr.cast(), &blocks);
}

/// `n` requests.
#[inline(never)]
pub fn run<M: Mode>(m: &mut M, rng: &mut Rng, n: u64) {
    for _ in 0..n {
        request(m, rng);
    }
}

/// The same loop without allocation: every "block" is a fixed slot of one static buffer.
pub struct Floor {
    buf: Box<[u8; 4096]>,
}
impl Floor {
    pub fn new() -> Floor {
        Floor { buf: Box::new([0; 4096]) }
    }
}
impl Mode for Floor {
    const KEEP_BLOCKS: bool = false;
    #[inline(always)]
    fn header(&mut self) -> *mut u8 {
        self.buf.as_mut_ptr()
    }
    #[inline(always)]
    fn array(&mut self, h: *mut u8) -> *mut u8 {
        h.wrapping_add(16)
    }
    #[inline(always)]
    fn block(&mut self, h: *mut u8, size: usize) -> *mut u8 {
        // The size is consumed as an allocator would consume it, so that computing it stays in
        // the floor (otherwise the compiler drops it as dead code).
        black_box(size);
        h.wrapping_add(128)
    }
    #[inline(always)]
    fn release(&mut self, _: *mut u8, _: *mut u8, _: &Blocks) {}
}

/// A hand-written bump allocator over one buffer, reset after each request: the limit.
pub struct HandBump {
    buf: Vec<u8>,
    pos: usize,
}
impl HandBump {
    pub fn new() -> HandBump {
        HandBump { buf: vec![0; 1 << 16], pos: 0 }
    }
    #[inline(always)]
    fn bump(&mut self, size: usize) -> *mut u8 {
        let start = (self.pos + 15) & !15;
        let end = start + size;
        if end > self.buf.len() {
            bump_overflow();
        }
        self.pos = end;
        self.buf.as_mut_ptr().wrapping_add(start)
    }
}
#[cold]
#[inline(never)]
fn bump_overflow() -> ! {
    panic!("hand-written bump: buffer exhausted")
}
impl Mode for HandBump {
    const KEEP_BLOCKS: bool = false;
    #[inline(always)]
    fn header(&mut self) -> *mut u8 {
        self.bump(16)
    }
    #[inline(always)]
    fn array(&mut self, _: *mut u8) -> *mut u8 {
        self.bump(64)
    }
    #[inline(always)]
    fn block(&mut self, _: *mut u8, size: usize) -> *mut u8 {
        self.bump(size)
    }
    #[inline(always)]
    fn release(&mut self, _: *mut u8, _: *mut u8, _: &Blocks) {
        self.pos = 0;
    }
}

/// napalloc (1): untracked bump allocation in a region, then `reset`.
pub struct Untracked(pub napalloc::Region);
impl Mode for Untracked {
    const KEEP_BLOCKS: bool = false;
    #[inline(always)]
    fn header(&mut self) -> *mut u8 {
        self.0.alloc_untracked(HEADER).unwrap().as_ptr()
    }
    #[inline(always)]
    fn array(&mut self, _: *mut u8) -> *mut u8 {
        self.0.alloc_untracked(ARRAY).unwrap().as_ptr()
    }
    #[inline(always)]
    fn block(&mut self, _: *mut u8, size: usize) -> *mut u8 {
        self.0.alloc_untracked(block_layout(size)).unwrap().as_ptr()
    }
    #[inline(always)]
    fn release(&mut self, _: *mut u8, _: *mut u8, _: &Blocks) {
        self.0.reset();
    }
}

/// napalloc (1b): a `PageArena` bump cursor (the position stays in a register), then `reset`.
pub struct ArenaCursor(pub napalloc::PageArena);
/// `n` requests through a cursor (the cursor borrows the arena, so it has its own loop).
#[inline(never)]
pub fn run_cursor(a: &mut ArenaCursor, rng: &mut Rng, n: u64) {
    for _ in 0..n {
        cursor_request(&mut a.0, rng);
    }
}

/// One request through a `PageArena` cursor. Like [`request`], a function of its own that takes
/// the generator by `&mut` and is inlined into the loop: every mode's loop has the same shape, so
/// the compiler knows the same things about the generator in each (that no call of the request
/// touches it, so its state stays in a register).
#[inline(always)]
fn cursor_request(a: &mut napalloc::PageArena, rng: &mut Rng) {
    {
        let mut c = a.cursor();
        let h = black_box(c.alloc_layout(HEADER).unwrap().as_ptr());
        let _ = h;
        let arr = black_box(c.alloc_layout(ARRAY).unwrap().as_ptr()).cast::<*mut u8>();
        for i in 0..BLOCKS {
            let b = black_box(c.alloc_layout(block_layout(block_size(rng.next()))).unwrap().as_ptr());
            // SAFETY: fresh blocks of at least 16 bytes; `arr` has 8 slots.
            unsafe {
                b.write(i as u8);
                arr.add(i & 7).write(b);
            }
        }
    }
    a.reset();
}

/// napalloc (2): tracked blocks, children of the header; one `free(header)` releases the request.
pub struct TrackedFree(pub napalloc::Region);
/// napalloc (3): tracked blocks, children of the header; `reset` releases the request.
pub struct TrackedReset(pub napalloc::Region);

macro_rules! tracked_hooks {
    () => {
        const KEEP_BLOCKS: bool = false;
        #[inline(always)]
        fn header(&mut self) -> *mut u8 {
            self.0.alloc(HEADER).unwrap().as_ptr()
        }
        #[inline(always)]
        fn array(&mut self, h: *mut u8) -> *mut u8 {
            // SAFETY: h came from alloc: non-null.
            let h = unsafe { NonNull::new_unchecked(h) };
            self.0.alloc_child(h, ARRAY).unwrap().as_ptr()
        }
        #[inline(always)]
        fn block(&mut self, h: *mut u8, size: usize) -> *mut u8 {
            // SAFETY: h came from alloc: non-null.
            let h = unsafe { NonNull::new_unchecked(h) };
            self.0.alloc_child(h, block_layout(size)).unwrap().as_ptr()
        }
    };
}
impl Mode for TrackedFree {
    tracked_hooks!();
    #[inline(always)]
    fn release(&mut self, h: *mut u8, _: *mut u8, _: &Blocks) {
        // SAFETY: h is the live header; nothing of the request is used afterwards.
        unsafe { self.0.free(NonNull::new_unchecked(h)).unwrap() };
    }
}
impl Mode for TrackedReset {
    tracked_hooks!();
    #[inline(always)]
    fn release(&mut self, _: *mut u8, _: *mut u8, _: &Blocks) {
        self.0.reset();
    }
}

/// napalloc (3b): tracked blocks, children of the header, allocated through a
/// [`napalloc::ChildCursor`] (the tail's bump state stays in registers); `reset` releases the
/// request. Every block is a tracked child, as with `alloc_child`.
pub struct TrackedCursor(pub napalloc::Region);
/// `n` requests through a child cursor (the cursor borrows the region, so it has its own loop).
#[inline(never)]
pub fn run_child_cursor(t: &mut TrackedCursor, rng: &mut Rng, n: u64) {
    for _ in 0..n {
        child_cursor_request(&mut t.0, rng);
    }
}

/// One request through a child cursor, shaped like [`request`] (see [`cursor_request`]).
#[inline(always)]
fn child_cursor_request(r: &mut napalloc::Region, rng: &mut Rng) {
    {
        let mut c = r.alloc_with_cursor(HEADER).unwrap();
        black_box(c.parent());
        let arr = black_box(c.alloc(ARRAY).unwrap().as_ptr()).cast::<*mut u8>();
        for i in 0..BLOCKS {
            let b = black_box(c.alloc(block_layout(block_size(rng.next()))).unwrap().as_ptr());
            // SAFETY: fresh blocks of at least 16 bytes; `arr` has 8 slots.
            unsafe {
                b.write(i as u8);
                arr.add(i & 7).write(b);
            }
        }
    }
    r.reset();
}

/// napalloc (4): the COM way through the task heap: `CoTaskMemAlloc` / `CoTaskMemFree` per block.
/// The COM way inside a request scope: every block from `heap::alloc` (as `CoTaskMemAlloc` inside
/// `NapallocScopeEnter`/`Leave`), and the whole request released by leaving the scope (one reset).
pub struct ComScope(pub Option<napalloc::heap::ScopeGuard>);
impl Mode for ComScope {
    const KEEP_BLOCKS: bool = false;
    #[inline(always)]
    fn header(&mut self) -> *mut u8 {
        self.0 = Some(napalloc::heap::enter_scope().expect("a request scope"));
        napalloc::heap::alloc(16).unwrap().as_ptr()
    }
    #[inline(always)]
    fn array(&mut self, _: *mut u8) -> *mut u8 {
        napalloc::heap::alloc(64).unwrap().as_ptr()
    }
    #[inline(always)]
    fn block(&mut self, _: *mut u8, size: usize) -> *mut u8 {
        napalloc::heap::alloc(size).unwrap().as_ptr()
    }
    #[inline(always)]
    fn release(&mut self, _: *mut u8, _: *mut u8, _: &Blocks) {
        // leaving the scope resets its region: every block of the request goes at once
        self.0 = None;
    }
}

pub struct Com;
impl Mode for Com {
    const KEEP_BLOCKS: bool = true;
    #[inline(always)]
    fn header(&mut self) -> *mut u8 {
        napalloc::heap::alloc(16).unwrap().as_ptr()
    }
    #[inline(always)]
    fn array(&mut self, _: *mut u8) -> *mut u8 {
        napalloc::heap::alloc(64).unwrap().as_ptr()
    }
    #[inline(always)]
    fn block(&mut self, _: *mut u8, size: usize) -> *mut u8 {
        napalloc::heap::alloc(size).unwrap().as_ptr()
    }
    #[inline(always)]
    fn release(&mut self, h: *mut u8, arr: *mut u8, blocks: &Blocks) {
        // SAFETY: each pointer is a live task-heap block, freed once and not used again.
        unsafe {
            for &(b, _) in blocks {
                napalloc::heap::free(b);
            }
            napalloc::heap::free(arr);
            napalloc::heap::free(h);
        }
    }
}

/// A `GlobalAlloc` used block by block (what `Box`/`Vec` do): the system allocator or mimalloc.
pub struct Global<A: GlobalAlloc>(pub A);
impl<A: GlobalAlloc> Mode for Global<A> {
    const KEEP_BLOCKS: bool = true;
    #[inline(always)]
    fn header(&mut self) -> *mut u8 {
        // SAFETY: non-zero size.
        unsafe { self.0.alloc(HEADER) }
    }
    #[inline(always)]
    fn array(&mut self, _: *mut u8) -> *mut u8 {
        // SAFETY: non-zero size.
        unsafe { self.0.alloc(ARRAY) }
    }
    #[inline(always)]
    fn block(&mut self, _: *mut u8, size: usize) -> *mut u8 {
        // SAFETY: non-zero size.
        unsafe { self.0.alloc(block_layout(size)) }
    }
    #[inline(always)]
    fn release(&mut self, h: *mut u8, arr: *mut u8, blocks: &Blocks) {
        // SAFETY: each block was allocated above with this layout and is freed once.
        unsafe {
            for &(b, size) in blocks {
                self.0.dealloc(b, block_layout(size));
            }
            self.0.dealloc(arr, ARRAY);
            self.0.dealloc(h, HEADER);
        }
    }
}

/// bumpalo: `alloc_layout`, then `reset`.
pub struct Bumpalo(pub bumpalo::Bump);
impl Mode for Bumpalo {
    const KEEP_BLOCKS: bool = false;
    #[inline(always)]
    fn header(&mut self) -> *mut u8 {
        self.0.alloc_layout(HEADER).as_ptr()
    }
    #[inline(always)]
    fn array(&mut self, _: *mut u8) -> *mut u8 {
        self.0.alloc_layout(ARRAY).as_ptr()
    }
    #[inline(always)]
    fn block(&mut self, _: *mut u8, size: usize) -> *mut u8 {
        self.0.alloc_layout(block_layout(size)).as_ptr()
    }
    #[inline(always)]
    fn release(&mut self, _: *mut u8, _: *mut u8, _: &Blocks) {
        self.0.reset();
    }
}
