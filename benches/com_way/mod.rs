//! The canonical request of WORKLOAD.md, "the COM way": every block allocated and freed on its
//! own (blocks, then the array, then the header), shared by `benches/com.rs` (nanoseconds) and
//! `examples/com_way.rs` (instructions, under callgrind).
//!
//! Per request: a 16-byte header, an array of 8 pointers (64 bytes), 16 blocks of
//! `16 + ((r >> 32) * 241 >> 32)` bytes (xorshift64 13/7/17, seed 0x243F6A8885A308D3), one byte
//! written into each and `array[i & 7] = block`; then every block is freed, then the array, then
//! the header. Pointers pass through `black_box` so that no allocation can be optimized away.
#![allow(dead_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::hint::black_box;
use core::ptr::null_mut;

pub const SEED: u64 = 0x243F_6A88_85A3_08D3;
const BLOCKS: usize = 16;

/// xorshift64 (13, 7, 17).
#[inline(always)]
pub fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// An allocator as the COM way uses it: allocate by size, free by pointer (the size is passed
/// too, for the allocators that need it).
pub trait Com {
    fn alloc(&mut self, size: usize) -> *mut u8;
    fn free(&mut self, p: *mut u8, size: usize);
}

/// One canonical request, the COM way.
#[inline(always)]
pub fn request<A: Com>(a: &mut A, x: &mut u64) {
    let h = black_box(a.alloc(16));
    let arr = black_box(a.alloc(64)).cast::<*mut u8>();
    let mut blocks = [(null_mut::<u8>(), 0usize); BLOCKS];
    for (i, slot) in blocks.iter_mut().enumerate() {
        let size = 16 + (((next(x) >> 32) * 241) >> 32) as usize;
        let b = black_box(a.alloc(size));
        // SAFETY: `b` has at least 16 bytes and `arr` 8 pointer slots, both fresh.
        unsafe {
            b.write(i as u8);
            arr.add(i & 7).write(b);
        }
        *slot = (b, size);
    }
    for &(b, size) in &blocks {
        a.free(b, size);
    }
    a.free(arr.cast(), 64);
    a.free(h, 16);
}

/// `n` requests.
#[inline(never)]
pub fn run<A: Com>(a: &mut A, x: &mut u64, n: u64) {
    for _ in 0..n {
        request(a, x);
    }
}

/// The same loop without an allocator: the no-allocation floor.
#[derive(Clone)]
pub struct Floor(pub Box<[u8; 4096]>);
impl Com for Floor {
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> *mut u8 {
        self.0.as_mut_ptr().wrapping_add(size & 0x7F0)
    }
    #[inline(always)]
    fn free(&mut self, p: *mut u8, _size: usize) {
        black_box(p);
    }
}

/// napalloc's task heap: `heap::alloc` / `heap::free` (what `CoTaskMemAlloc` / `CoTaskMemFree`
/// do, without the C call).
#[derive(Clone, Copy)]
pub struct TaskHeap;
impl Com for TaskHeap {
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> *mut u8 {
        match napalloc::heap::alloc(size) {
            Some(p) => p.as_ptr(),
            None => oom(),
        }
    }
    #[inline(always)]
    fn free(&mut self, p: *mut u8, _size: usize) {
        // SAFETY: `p` came from `alloc` and is freed once.
        unsafe { napalloc::heap::free(p) };
    }
}

/// The C exports themselves (`CoTaskMemAlloc` / `CoTaskMemFree`), called from Rust.
pub struct CoTaskMem;
impl Com for CoTaskMem {
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> *mut u8 {
        let p = napalloc::ffi::CoTaskMemAlloc(size).cast::<u8>();
        if p.is_null() {
            oom();
        }
        p
    }
    #[inline(always)]
    fn free(&mut self, p: *mut u8, _size: usize) {
        // SAFETY: `p` came from `alloc` and is freed once.
        unsafe { napalloc::ffi::CoTaskMemFree(p.cast()) };
    }
}

/// Any `GlobalAlloc` (the system allocator: glibc malloc/free on Linux), 16-aligned blocks.
#[derive(Clone, Copy)]
pub struct Global<G: GlobalAlloc>(pub G);
impl<G: GlobalAlloc> Com for Global<G> {
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> *mut u8 {
        // SAFETY: a non-zero size, alignment 16: a valid layout.
        let p = unsafe { self.0.alloc(Layout::from_size_align_unchecked(size, 16)) };
        if p.is_null() {
            oom();
        }
        p
    }
    #[inline(always)]
    fn free(&mut self, p: *mut u8, size: usize) {
        // SAFETY: `p` came from `alloc` with this layout and is freed once.
        unsafe { self.0.dealloc(p, Layout::from_size_align_unchecked(size, 16)) };
    }
}

#[cold]
#[inline(never)]
fn oom() -> ! {
    panic!("allocation failed in the benchmark")
}

/// A bare `Region` (no task heap around it): `try_alloc` / `free_one`, for comparison.
pub struct BareRegion(pub napalloc::Region);
impl Com for BareRegion {
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> *mut u8 {
        match self.0.try_alloc(size) {
            Some(p) => p.as_ptr(),
            None => self.0.alloc(core::alloc::Layout::from_size_align(size, 16).unwrap()).unwrap().as_ptr(),
        }
    }
    #[inline(always)]
    fn free(&mut self, p: *mut u8, _size: usize) {
        // SAFETY: `p` came from `alloc` and is freed once.
        unsafe { self.0.free_one(core::ptr::NonNull::new_unchecked(p)).unwrap() };
    }
}

/// The pointers of one request (16 blocks, the array, the header), in the order the COM way frees
/// them, handed from the thread that allocated them to the thread that frees them.
pub struct Batch(pub [*mut u8; BLOCKS + 2]);
// SAFETY: the pointers are plain addresses of task-heap blocks that any thread may free; the
// batch is owned by one thread at a time (moved through a channel).
unsafe impl Send for Batch {}

/// The allocating half of a request: what [`request`] allocates and writes, returned as a batch.
#[inline(always)]
pub fn request_alloc<A: Com>(a: &mut A, x: &mut u64) -> Batch {
    let mut out = [null_mut::<u8>(); BLOCKS + 2];
    let h = black_box(a.alloc(16));
    let arr = black_box(a.alloc(64)).cast::<*mut u8>();
    for (i, slot) in out.iter_mut().take(BLOCKS).enumerate() {
        let size = 16 + (((next(x) >> 32) * 241) >> 32) as usize;
        let b = black_box(a.alloc(size));
        // SAFETY: `b` has at least 16 bytes and `arr` 8 pointer slots, both fresh.
        unsafe {
            b.write(i as u8);
            arr.add(i & 7).write(b);
        }
        *slot = b;
    }
    out[BLOCKS] = arr.cast();
    out[BLOCKS + 1] = h;
    Batch(out)
}

/// The freeing half: every block of `b`, then the array, then the header (sizes are not kept:
/// only for allocators that free by pointer alone).
#[inline(always)]
pub fn request_free<A: Com>(a: &mut A, b: Batch) {
    for p in b.0 {
        a.free(p, 0);
    }
}
