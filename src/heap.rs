//! The process-wide task heap behind `CoTaskMemAlloc`, `IMalloc` and the NapUtil functions.
//!
//! # Semantics (SPEC §5), shared by the C ABI and Rust callers
//! * every block is 16-aligned; `alloc(0)` returns a unique non-null block;
//! * `free(NULL)` does nothing; a foreign, interior or already freed pointer changes nothing and
//!   is reported (a `log` warning and [`HeapStats::bad_pointers`]);
//! * `free` releases one block: blocks recorded as its embedded pointers become independent
//!   (the SDK samples free a struct and later its string); [`free_tree`] releases a block with
//!   all its embedded pointers (what the NapUtil `Free*` functions do);
//! * any thread may free, reallocate or query a block another thread allocated.
//!
//! # Structure
//! Every thread that allocates gets a *heap*: a [`Region`] it owns, reached through a
//! `thread_local!` pointer (const-initialized and never null, so reading it is one TLS load with
//! no test: a thread without a heap points at a static `NO_HEAP` whose `attention` is never 0).
//! Allocation and freeing of the thread's own blocks take no lock and perform no atomic
//! read-modify-write: two plain stores of the owner's `busy` flag, one load of the heap's
//! `attention` word, and the fast paths of the small arena (`Small::try_alloc`,
//! `Small::try_free`) or the region (`Region::try_alloc`, `Region::try_alloc_child`,
//! `Region::try_free_leaf_plain`, `Region::size_of`), which never call out.
//!
//! * **Small blocks.** A thread heap also has a small-block arena (`small.rs`): requests of up
//!   to `SMALL_MAX` (1024) bytes made through [`alloc`] (`CoTaskMemAlloc`, `IMalloc::Alloc`)
//!   come from free lists per 16-byte class, with sizes and links in an out-of-line granule map.
//!   Blocks that get recorded children are the region's business: the NapUtil functions
//!   allocate their structures in the region ([`alloc_child`] of a small block still works: the
//!   block gets a zero-size proxy in the region that carries the children). Scope heaps and the
//!   shared heap have no small arena (a scope's reset stays O(1)). The arena is part of the
//!   heap's protected state: every rule below for "the region" holds for it too.
//!
//! Heaps live in a process-wide registry: a fixed array of `&'static Heap` ([`MAX_HEAPS`]). A heap
//! is leaked on creation and **never freed** (nor is its region dropped), so a pointer to one can
//! never lead us into freed metadata, and the address range of its arena never changes. The owner
//! of a pointer is found by checking the calling thread's own heaps (`Heap::contains`, two
//! compares), then scanning the registry's ranges (fine for the few hundred heaps a process has).
//! A thread that cannot have a heap of its own (the registry is full, or it is past its exit
//! handler) allocates from one shared heap, always under its lock.
//!
//! * **Remote free.** `free` of a block owned by another heap goes into the freeing thread's
//!   `Outbox`, a batch of up to `BATCH` (256) frees for one heap (snmalloc's remote cache),
//!   written straight into the node that will carry it; the
//!   outbox remembers the heap of its last batch, so the next free into that heap needs no
//!   search of the registry. A full batch (or one cut short: see [`flush_remote_frees`]) is
//!   pushed on the owner's `remote` stack (lock-free, push-only and taken
//!   whole; the pointers are not touched, so a bad one cannot corrupt anything), and `REMOTE` is
//!   set in its `attention` word unless it is set already. The owner's next operation of any
//!   kind (allocation, free, query) then sees `attention != 0` and takes the slow path, which
//!   takes every queued batch at once and frees them oldest first straight into the free
//!   lists, validating each pointer as if it had been freed locally (a leaf by the region's
//!   inline free), before it does what was asked. So a delivered free is always done before
//!   the owner frees or reuses anything: a double free across threads whose first free has
//!   arrived is refused and reported, whichever thread's free came first, and never frees the
//!   slot's next block. The emptied
//!   nodes go on the heap's `spare` stack, where freeing threads take them for their next
//!   batches, so a batch allocates and copies nothing in steady state. So a
//!   producer/consumer pair costs one push, one fence and one drain per batch rather than per
//!   free, the `attention` line is written once per batch instead of bouncing between cores, the
//!   fields a remote freer reads are on lines the owner does not write, and freed memory is
//!   reused while it is still in cache. Measured in `benches/com.rs` (`cross_thread`, see the
//!   README for the figures).
//!
//!   The price: until its batch is delivered, a block freed by another thread still counts as
//!   live for its owner (`did_alloc`, `size_of`, the statistics). And a double free across
//!   threads whose first free still waits in a *running* thread's undelivered batch (that
//!   thread has not exited, flushed, filled the batch or done any of the things that deliver
//!   it, [`flush_remote_frees`]) cannot be seen by the owner: if the owner frees the block again
//!   and reuses the slot before the batch arrives, the late free takes the slot's next block.
//!   A double free on one thread, or across threads once the first free was delivered, is
//!   refused at once.
//! * **Foreign access.** `realloc`, `size_of`, `did_alloc` and `alloc_child` of another heap's
//!   block need that heap's region itself. The caller takes the heap's `lock`, sets `HELD` in
//!   `attention`, issues the heavy side of an asymmetric barrier (`os::barrier`:
//!   `membarrier(2)` / `FlushProcessWriteBuffers`) and waits until the owner's `busy` is false.
//!   From then until it clears `HELD` and unlocks, it has the region to itself: the owner, whose
//!   next operation reads `attention != 0`, falls back to its slow path, which takes the lock.
//!   The owner's side of this Dekker handshake (store `busy`, read `attention`) needs only a
//!   compiler barrier, because the heavy barrier serializes the owner's CPU; where no such
//!   barrier exists (Miri, unknown platforms, a kernel without `membarrier`), every heap carries
//!   `FENCED` in its `attention`, so the owner always runs the slow path's variant of the fast
//!   path with a full `fence(SeqCst)` between the store and the load. The heavy barrier costs
//!   microseconds, which is why only these rare cross-thread operations pay it; a remote `free`
//!   does not (it only queues).
//!
//!   A foreign `realloc` reallocates *in the block's own region* (under foreign access) rather
//!   than copying into the caller's heap: the block keeps its embedded-pointer records and its
//!   place in its parent's tree, and a block that fits in place does not move at all.
//! * **Thread exit.** A TLS destructor *abandons* the thread's heap: its blocks stay valid and
//!   can be freed by anyone. A remote free into an abandoned heap is processed by the freeing
//!   thread itself, under the heap's lock (try-lock; whoever holds the lock re-checks the queue
//!   after unlocking, so no pushed block is stranded). An abandoned heap whose last block is freed
//!   is reset and trimmed (its pages are decommitted). A thread that needs a heap first *adopts*
//!   an abandoned one, so thread churn does not reserve more and more address space.
//! * **Request scopes.** [`scope`] / [`enter_scope`] make the calling thread allocate from a
//!   heap of its own for a while. Leaving the scope resets that heap in O(1): **every pointer into
//!   a finished scope is dead**. A later free of one is refused if it does not hit a live block,
//!   and cannot be told apart from a live block if the scope's heap was reused since. Scope heaps
//!   are registered like thread heaps (other threads can free into them) and are reused: the
//!   thread keeps the heap of its last scope (its pages still resident), and a process-wide
//!   `ArrayQueue` holds the others, so entering a scope does not map memory.
//! * **Reentrancy.** A host page source (user code) may call back into the task heap while a
//!   region commits pages, and so may a logger while a bad pointer is reported. Region methods
//!   that can call out run only in the slow path, with `HELD` set and the thread-local `IN_SLOW`
//!   flag raised: a nested call sees `attention != 0`, goes to the slow path, finds `IN_SLOW` and
//!   fails cleanly (NULL; a nested free is queued on the heap and done later) instead of aliasing.
//! * **Critical levels.** [`alloc_critical`] makes the region's commits at the given level (the
//!   host budget's policy: `Process` may use the reserve), and for `AppDomain` and `Process`
//!   gives idle memory back ([`heap_minimize`]) and retries once before it fails.
//!
//! # The protocol, field by field
//! For each `Heap`:
//!
//! | field | written by | values |
//! | --- | --- | --- |
//! | `busy` | the owner only, around each fast operation | `true` while the owner may touch the region without the lock |
//! | `attention` | bits set/cleared with RMWs by anyone (see below); read by the owner on every operation | `0`: the fast path may run |
//! | `attention & HELD` | the `lock` holder, after locking and before unlocking | someone holds the region through the lock |
//! | `attention & REMOTE` | remote freers set it after pushing (if clear); whoever drains clears it before draining | `remote` may hold pointers: the owner's next operation drains first |
//! | `attention & FENCED` | set at creation, never cleared | no asymmetric barrier: the owner must fence |
//! | `attention & NOT_A_HEAP` | `NO_HEAP` only, for good | the thread has no heap yet |
//! | `lock` | any thread (spin, then yield); every operation `SeqCst` | serializes everything but the owner's fast path |
//! | `state` | the `lock` holder | `OWNED` by a thread (its heap or an active scope); `ABANDONED` (its thread exited; adoptable); `IDLE` (a reset scope heap, free to claim); `SHARED` (the fallback heap, owned by nobody) |
//! | `remote` | pushed by anyone; taken whole by whoever holds the region (the owner in its slow path, or a lock holder) | pending frees, in batches: pointers and whether each free cascades |
//! | `spare` | pushed by whoever drained `remote`; taken whole by freeing threads | empty batch nodes |
//!
//! The invariant: **the region is touched by exactly one thread at a time**: by the owner while
//! its `busy` is true and it read `attention == 0` after setting it, or by the holder of `lock`
//! (for an `OWNED` heap only after it set `HELD`, issued the heavy barrier and saw `busy` false).
//! Two owners never exist: a heap changes hands only under its lock (adoption, scope entry).
//!
//! A free routed to another heap returns `true` ("done or queued"): its validation happens when
//! the owner drains the queue, and a bad pointer is counted then.
//!
//! # Cost
//! The canonical request of WORKLOAD.md done the COM way (18 blocks, each allocated and freed on
//! its own) costs about 780 instructions above the no-allocation floor through [`alloc`] and
//! [`free`] (0.33× glibc's malloc/free in the same harness) and about 930 through the C exports
//! (0.39×), `examples/com_way.rs` under callgrind; a C program calling `libnapalloc.so` pays
//! about 910 (0.38× glibc, `benches/c/com_way.c`). Per block that is a pop off the small arena's
//! free list of its class and, on free, one range compare, one load of the block's map entry
//! and a push back: 24 instructions each for `CoTaskMemAlloc` and `CoTaskMemFree`, the heap
//! protocol (the initial-exec thread-local load of the current heap, `busy`, `attention`)
//! included. A free of another thread's small block costs the freeing thread about 53 (the
//! failed fast paths, the outbox hint and a push into its batch), and the owner's drain about
//! 24 per block.
//!
//! The NapUtil functions ride the same fast path: `alloc_with_child` gives `AllocConnections`
//! its structure and slot array in one pass of the protocol (a child of the pending tail's root
//! is a bump; a child under a recorded parent a dead slot), `size_of_pair` validates a
//! structure and the array it points to with one lookup each, and `free_then_tree` frees both
//! in one pass (`benches/connections_ir.rs`).

use crate::host::CriticalLevel;
use crate::nap::types::NapallocScope;
use crate::os::barrier;
use crate::region::Region;
use crate::small::{Kind, Small, SMALL_MAX};
use crate::Error;
use core::alloc::Layout;
use core::cell::{Cell, UnsafeCell};
use core::marker::PhantomData;
use core::mem::{self, MaybeUninit};
use core::ptr::{self, NonNull};
use core::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use std::sync::OnceLock;

/// Alignment of every task-heap block (MEMORY_ALLOCATION_ALIGNMENT on 64-bit Windows).
pub const ALIGN: usize = 16;

/// Counters of the task heap, summed over every heap of the process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    pub live_blocks: u64,
    pub live_bytes: u64,
    pub committed_bytes: u64,
    pub reserved_bytes: u64,
    /// Pointers handed to free/realloc/size queries that were not live block starts.
    pub bad_pointers: u64,
    /// Allocation requests that returned NULL.
    pub failed_allocations: u64,
    /// Times idle memory was given back to the OS.
    pub trims: u64,
}

/// Most heaps (thread heaps, scope heaps and the shared fallback) a process can have. A thread
/// that cannot get a heap of its own uses the shared heap, under its lock.
pub const MAX_HEAPS: usize = 1024;
/// Idle scope heaps kept for reuse.
const SCOPE_CACHE: usize = 64;

/// `attention`: a lock holder has the region.
const HELD: u32 = 1;
/// `attention`: the remote-free queue may be non-empty.
const REMOTE: u32 = 2;
/// `attention`: no asymmetric barrier on this platform; the owner fences (set for good).
const FENCED: u32 = 4;
/// `attention` of [`NO_HEAP`] only: not a heap (set for good).
const NOT_A_HEAP: u32 = 8;
/// `attention`: the small arena has proxies (region blocks that only the heap knows of, module
/// doc of `small`). A proxy may sit at the address of a block a caller freed before, so while
/// any exists every operation takes the slow path, where a pointer that names a proxy is refused
/// as freed (`Small::is_proxy`); the fast paths need no check of their own. Set and cleared by
/// the lock holder on release (`Drop for Held`), the only one who creates or frees proxies.
const PROXIED: u32 = 16;

/// `state`: owned by a thread (its heap, or a scope it entered).
const OWNED: u8 = 0;
/// `state`: its thread exited; live blocks stay valid; a new thread may adopt it.
const ABANDONED: u8 = 1;
/// `state`: a reset scope heap waiting in the cache.
const IDLE: u8 = 2;
/// `state`: the shared fallback heap; never owned, always used under the lock.
const SHARED: u8 = 3;

/// A spin-then-yield lock. Every operation is `SeqCst`: the no-stranding argument of
/// [`try_drain`] orders a failed `try_lock` against an `unlock` and a later load of `attention`.
struct RawLock {
    /// `true` while held. Set by the thread that acquires it, cleared by the same thread.
    locked: AtomicBool,
}

impl RawLock {
    const fn new() -> RawLock {
        RawLock { locked: AtomicBool::new(false) }
    }

    fn try_lock(&self) -> bool {
        !self.locked.load(Ordering::SeqCst)
            && self.locked.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    fn lock(&self) {
        let mut spins = 0u32;
        while !self.try_lock() {
            if spins < 100 {
                spins += 1;
                core::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    fn unlock(&self) {
        self.locked.store(false, Ordering::SeqCst);
    }
}

/// Most frees one [`RemoteBatch`] carries: a node of 2 KiB.
///
/// Large because every node costs the owner's drain a dependent cache miss on a line the
/// freeing thread wrote (the walk of the taken list), however few frees it carries; the items
/// themselves are read in address order and prefetched ([`prefetch`]). Measured with the
/// producer/consumer pair of `benches/com.rs` on a 2-vCPU VM whose cores are ~145 ns apart
/// one way: 32 → 256 frees per node took the pair from 4.2 to 5.5 M requests/s (see the
/// README). The price is at most `BATCH - 1` freed blocks per freeing thread waiting in its
/// outbox (see [`flush_remote_frees`]).
const BATCH: usize = 256;

/// The tag of an item of a [`RemoteBatch`] that is freed with its embedded blocks (as
/// [`free_tree`] does): the low bit of the pointer, free because only [`ALIGN`]-aligned pointers
/// are ever queued (a misaligned one is refused at once: it cannot be a block of any task heap).
const TREE: usize = 1;

/// A queued free: `p` (aligned to [`ALIGN`]), tagged [`TREE`] if it frees a tree. The tag is
/// added to the pointer (not through an integer) so that the pointer keeps its provenance.
#[inline(always)]
fn tag(p: *mut u8, tree: bool) -> *mut u8 {
    debug_assert!(p as usize % ALIGN == 0);
    p.wrapping_add(tree as usize * TREE)
}

/// The pointer and tree flag of a queued free ([`tag`]'s inverse).
#[inline(always)]
fn untag(item: *mut u8) -> (*mut u8, bool) {
    let bit = item as usize & TREE;
    (item.wrapping_sub(bit), bit != 0)
}

/// How far ahead of the item it frees the drain prefetches a node's items, and the bytes it
/// prefetches of a node before it starts on it: a few lines, not the whole node at once (which
/// stalls on the CPU's miss buffers).
const AHEAD: usize = 64;
const LINE_ITEMS: usize = 64 / mem::size_of::<*mut u8>();
const AHEAD_LINES: usize = AHEAD / LINE_ITEMS;
const AHEAD_BYTES: usize = mem::size_of::<*mut u8>() * (AHEAD + 2);

/// Ask the CPU to start loading the cache lines of `[p, p + len)` (a hint: no effect on memory
/// or on the program's meaning, whatever the addresses). On x86-64 only, and not under Miri;
/// elsewhere nothing.
#[inline(always)]
fn prefetch(p: *const u8, len: usize) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut a = p as usize & !63;
        let end = (p as usize).saturating_add(len);
        while a < end {
            // SAFETY: a prefetch never faults and changes nothing but the cache, for any address.
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(a as *const i8)
            };
            a += 64;
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = (p, len);
}

/// Frees sent to a heap together, by one thread (see [`Outbox`]): a node of the heap's `remote`
/// stack while it waits, of a `spare` list (a heap's or an outbox's) once it is empty again.
///
/// Invariant: `items[..len]` are the frees: [`ALIGN`]-aligned pointers, tagged [`TREE`] if freed
/// with their embedded blocks ([`tag`]), that are not dereferenced until the heap's region
/// validates them; `gen` is the heap's `gen` when the first of them was queued. A batch
/// whose `gen` is no longer the heap's is dropped unprocessed: the heap was reset since (a scope
/// was left), and every block it named died with that reset. `next` links the node in the one
/// list that holds it; a node not in a list belongs to the one thread that took it out. Nodes
/// are boxed and never freed while in a heap's list (heaps are never freed either), only by an
/// exiting thread's outbox from its own `spare` list.
#[repr(C)] // the header first: the walk of a taken list then brings in the first items too
struct RemoteBatch {
    next: *mut RemoteBatch,
    gen: u32,
    len: u32,
    items: [*mut u8; BATCH],
}

impl RemoteBatch {
    /// A new, empty node, owned by the caller.
    fn boxed() -> *mut RemoteBatch {
        Box::into_raw(Box::new(RemoteBatch { next: ptr::null_mut(), gen: 0, len: 0, items: [ptr::null_mut(); BATCH] }))
    }
}

/// A lock-free stack of [`RemoteBatch`] nodes that is only ever pushed onto and taken whole
/// (no single pop, so no ABA: a push's compare-exchange that succeeds links its node to the
/// node that is the top at that moment, whatever happened to it in between).
///
/// Invariant: the pointer is null or the newest node of a `next`-linked, null-terminated list
/// of nodes that nobody else holds. Pushes are `Release` and `take` is `Acquire` (every push is
/// a read-modify-write, so the taker synchronizes with all of them): the taker sees each node's
/// contents as its pusher wrote them.
struct BatchStack(AtomicPtr<RemoteBatch>);

impl BatchStack {
    const fn new() -> BatchStack {
        BatchStack(AtomicPtr::new(ptr::null_mut()))
    }

    /// Push the list `first ..= last` (linked by `next`, the caller's own) as the newest nodes.
    ///
    /// # Safety
    /// `first` to `last` is a list of nodes the caller owns; it gives them up.
    unsafe fn push(&self, first: *mut RemoteBatch, last: *mut RemoteBatch) {
        let mut top = self.0.load(Ordering::Relaxed);
        loop {
            // SAFETY: `last` is the caller's until the exchange below publishes it.
            unsafe { (*last).next = top };
            match self.0.compare_exchange_weak(top, first, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => top = now,
            }
        }
    }

    /// Take every node (newest first; null if none): the caller owns them from now on.
    fn take(&self) -> *mut RemoteBatch {
        if self.0.load(Ordering::Relaxed).is_null() {
            return ptr::null_mut(); // no read-modify-write of a line another core may write
        }
        self.0.swap(ptr::null_mut(), Ordering::Acquire)
    }
}

/// A node for one free of `p` (aligned to [`ALIGN`]) of `h` (a batch of one), owned by the caller.
fn one_free(h: &'static Heap, p: *mut u8, tree: bool) -> *mut RemoteBatch {
    let node = OUTBOX.try_with(|o| o.node(h)).unwrap_or_else(|_| RemoteBatch::boxed());
    // SAFETY: the node is ours (taken out of every list) until it is sent.
    unsafe {
        (*node).gen = h.gen.load(Ordering::Relaxed);
        (*node).len = 1;
        (*node).items[0] = tag(p, tree);
    }
    node
}

/// One task heap: a region and the protocol around it (see the module doc).
///
/// What the owner writes on every operation (`busy`, the region with its inline side-table
/// fields) and what other threads touch on every remote free (`base`, `len`, `gen`, `state`:
/// read; `remote`, `spare`: pushed and taken per batch) are on separate cache lines (the
/// `CachePadded` fields): a thread freeing another's blocks must not pull the owner's lines
/// away on every free (measured: the owner's `busy` shared a line with `gen` and `state`, and
/// the pair's every free cost the owner a coherence miss on its next operation).
struct Heap {
    /// Written only by the owning thread: `true` while it is inside a fast operation on
    /// `region` (set before it reads `attention`, cleared with `Release` after the operation).
    /// Read by a lock holder of an `OWNED` heap, who waits for `false` after setting `HELD`.
    busy: CachePadded<AtomicBool>,
    /// Touched only as the protocol allows (see the module doc). Initialized in every heap but
    /// [`NO_HEAP`], whose region is never touched (its `attention` is never 0).
    region: CachePadded<UnsafeCell<MaybeUninit<Region>>>,
    /// The small-block allocator (`small.rs`): touched under the same rule as `region`, so it
    /// needs no protocol of its own. Disabled in scope heaps (a scope's reset must stay O(1),
    /// and its blocks die with the scope anyway), in the shared heap and in [`NO_HEAP`]. On a
    /// line of its own, as `region`: the owner writes it on every small operation.
    small: CachePadded<UnsafeCell<Small>>,
    /// Start of the region's tracked arena. Immutable after creation.
    base: usize,
    /// Length of the region's tracked arena. Immutable after creation.
    len: usize,
    /// Start and length of the small arena's data reservation (length 0 when disabled).
    /// Immutable after creation.
    small_base: usize,
    small_len: usize,
    /// Owner-only (the thread that owns the heap as a scope): the heap that was current when
    /// the scope was entered.
    outer: Cell<*const Heap>,
    /// Read by the owner on every operation; bits are set and cleared with RMWs: `HELD` by the
    /// lock holder, `REMOTE` by remote freers (set) and drainers (cleared), `FENCED` at creation.
    attention: CachePadded<AtomicU32>,
    /// Pending remote frees, in batches: pushed by any thread, taken by whoever holds the region.
    remote: CachePadded<BatchStack>,
    /// Empty batch nodes, pushed back by whoever drained them and taken whole by freeing threads
    /// for their next batches (so that sending a batch allocates nothing in steady state).
    spare: CachePadded<BatchStack>,
    /// Incremented (by the `lock` holder) each time a scope heap is reset on leaving, before its
    /// queue is emptied: batches stamped with an older value are dropped unprocessed.
    gen: AtomicU32,
    lock: CachePadded<RawLock>,
    /// `OWNED`, `ABANDONED`, `IDLE` or `SHARED`; written only by the `lock` holder.
    state: AtomicU8,
    /// Whether the heap serves scopes (never adopted as a thread heap).
    scope: bool,
}

// SAFETY: the region (which is `Send` but not `Sync`) is touched by one thread at a time, as the
// protocol of the module doc guarantees; `outer` is touched only by the owning thread; everything
// else is atomic or immutable.
unsafe impl Sync for Heap {}
// SAFETY: as above; a heap is never moved after it is leaked.
unsafe impl Send for Heap {}

impl core::fmt::Debug for Heap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Heap")
            .field("base", &(self.base as *const u8))
            .field("len", &self.len)
            .field("state", &self.state.load(Ordering::Relaxed))
            .field("scope", &self.scope)
            .finish()
    }
}

impl Heap {
    #[inline(always)]
    fn contains(&self, p: *const u8) -> bool {
        (p as usize).wrapping_sub(self.base) < self.len || (p as usize).wrapping_sub(self.small_base) < self.small_len
    }

    /// The small-block allocator, under the same rule as [`Heap::region_ptr`].
    #[inline(always)]
    fn small_ptr(&self) -> *mut Small {
        self.small.get()
    }

    /// The region. Dereferencing it is allowed only as the protocol allows, and never for
    /// [`NO_HEAP`].
    #[inline(always)]
    fn region_ptr(&self) -> *mut Region {
        // `MaybeUninit<Region>` has the layout of `Region`.
        self.region.get().cast()
    }
}

/// What `CUR` points to while the thread has no heap: its `attention` is never 0, so the fast
/// path needs no null check and falls through to the slow path, which gets the thread a heap.
/// Not registered; its region is uninitialized and never touched; the fast path's stores to its
/// `busy` flag are harmless (nobody reads it).
static NO_HEAP: Heap = Heap {
    busy: CachePadded::new(AtomicBool::new(false)),
    region: CachePadded::new(UnsafeCell::new(MaybeUninit::uninit())),
    small: CachePadded::new(UnsafeCell::new(Small::disabled())),
    base: 0,
    len: 0,
    small_base: 0,
    small_len: 0,
    outer: Cell::new(ptr::null()),
    attention: CachePadded::new(AtomicU32::new(NOT_A_HEAP)),
    remote: CachePadded::new(BatchStack::new()),
    spare: CachePadded::new(BatchStack::new()),
    gen: AtomicU32::new(0),
    lock: CachePadded::new(RawLock::new()),
    state: AtomicU8::new(SHARED),
    scope: false,
};

/// A heap pointer of `CUR` (or a handle), unless it is [`NO_HEAP`] or null.
#[inline]
fn real(h: *const Heap) -> Option<&'static Heap> {
    if h.is_null() || ptr::eq(h, &NO_HEAP) {
        return None;
    }
    // SAFETY: every other heap pointer we hold is a leaked, registered heap: never freed.
    Some(unsafe { &*h })
}

// ---------------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------------

/// Registered heaps: slots `0..HEAPS.min(MAX_HEAPS)`; each is written once (null to a leaked
/// heap, `Release`) by the thread that registered the heap and never changes again.
static SLOTS: [AtomicPtr<Heap>; MAX_HEAPS] = [const { AtomicPtr::new(ptr::null_mut()) }; MAX_HEAPS];
/// Slots handed out (may pass `MAX_HEAPS` when the registry is full). Incremented by registering
/// threads; a slot below it may still be null for a moment.
static HEAPS: AtomicUsize = AtomicUsize::new(0);
/// Idle scope heaps (state `IDLE`, reset), pushed by `leave`, popped by `enter`.
static SCOPES: OnceLock<ArrayQueue<&'static Heap>> = OnceLock::new();
/// The heap of threads that have no heap of their own (registry full, thread exiting).
static SHARED_HEAP: OnceLock<Option<&'static Heap>> = OnceLock::new();

/// Incremented by any thread whose pointer argument was refused.
static BAD: AtomicU64 = AtomicU64::new(0);
/// Incremented by any thread whose allocation failed.
static FAILED: AtomicU64 = AtomicU64::new(0);
/// Incremented when idle memory is given back (`heap_minimize`, an emptied abandoned heap).
static TRIMS: AtomicU64 = AtomicU64::new(0);

/// Every registered heap.
fn heaps() -> impl Iterator<Item = &'static Heap> {
    let n = HEAPS.load(Ordering::Acquire).min(MAX_HEAPS);
    SLOTS[..n].iter().filter_map(|s| {
        let h = s.load(Ordering::Acquire);
        // SAFETY: a non-null slot holds a leaked heap, never freed.
        (!h.is_null()).then(|| unsafe { &*h })
    })
}

/// The registered heap whose arena contains `p`.
fn find_heap(p: *const u8) -> Option<&'static Heap> {
    heaps().find(|h| h.contains(p))
}

/// Create, leak and register a heap in `state`. `None` if the registry is full or the region
/// cannot be reserved.
fn new_heap(state: u8, scope: bool) -> Option<&'static Heap> {
    if HEAPS.load(Ordering::Relaxed) >= MAX_HEAPS {
        return None;
    }
    let fenced = !barrier::available();
    // Pages from the host installed with `NapallocSetHostMemoryManager` (else the OS), charged to
    // the process-wide budget.
    let source = crate::host::default_source();
    let region = Region::builder().source(source.clone()).build().ok()?;
    let (base, len) = region.arena_range();
    // A thread heap also gets a small-block arena; without one (the reservation failed) every
    // request goes to the region, which serves every size.
    let small = if scope || state == SHARED { None } else { Small::new(&source).ok() };
    let small = small.unwrap_or(Small::disabled());
    let (small_base, small_len) = small.range();
    let heap = Box::new(Heap {
        busy: CachePadded::new(AtomicBool::new(false)),
        region: CachePadded::new(UnsafeCell::new(MaybeUninit::new(region))),
        small: CachePadded::new(UnsafeCell::new(small)),
        base: base as usize,
        len,
        small_base,
        small_len,
        outer: Cell::new(ptr::null()),
        attention: CachePadded::new(AtomicU32::new(if fenced { FENCED } else { 0 })),
        remote: CachePadded::new(BatchStack::new()),
        spare: CachePadded::new(BatchStack::new()),
        gen: AtomicU32::new(0),
        lock: CachePadded::new(RawLock::new()),
        state: AtomicU8::new(state),
        scope,
    });
    let i = HEAPS.fetch_add(1, Ordering::AcqRel);
    if i >= MAX_HEAPS {
        // Lost the race for the last slot: the heap is never published; release its region.
        let mut heap = heap;
        // SAFETY: initialized above, never used, dropped once.
        unsafe { heap.region.get_mut().assume_init_drop() };
        return None;
    }
    let heap: &'static Heap = Box::leak(heap);
    SLOTS[i].store(heap as *const Heap as *mut Heap, Ordering::Release);
    Some(heap)
}

fn shared_heap() -> Option<&'static Heap> {
    *SHARED_HEAP.get_or_init(|| new_heap(SHARED, false))
}

// ---------------------------------------------------------------------------------------------
// Thread state
// ---------------------------------------------------------------------------------------------

/// The heap this thread allocates from: its innermost scope, else its own heap; [`NO_HEAP`] until
/// the first allocation (and after the thread's exit handler ran). Never null. Read on every
/// operation of the fast path, written only by the thread itself (heap taken, scope entered or
/// left, exit handler).
///
/// On x86-64 Linux it is a thread-local word of the *initial-exec* TLS model, defined and
/// accessed in assembly: Rust's `thread_local!` compiles, in code that may end up in a shared
/// object (the `cdylib`), to the general-dynamic model, a call of `__tls_get_addr` (11
/// instructions in glibc) on every `CoTaskMemAlloc` and `CoTaskMemFree` of `libnapalloc.so`,
/// and, the call clobbering the argument registers, a saved register besides. Initial-exec
/// is two instructions (`mov` of the offset from the GOT, `mov` through `fs:`; a static link
/// relaxes the first to an immediate), the model malloc implementations use for the same
/// reason. The price: the library's 8 bytes of TLS come from the static TLS block, so a
/// `dlopen` of the library after start-up relies on glibc's surplus of static TLS (hundreds of
/// bytes, kept for exactly such libraries). The word's initial value is `&NO_HEAP` (a
/// relocated pointer in the TLS image, `.tdata`), so it is never null.
///
/// Elsewhere (and under Miri) a `thread_local!` `Cell`.
mod cur {
    use super::Heap;

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    mod imp {
        use super::super::NO_HEAP;
        use super::Heap;
        use core::arch::{asm, global_asm};

        // One pointer of initial-exec TLS, initialized to `&NO_HEAP`. Global (hidden, so not
        // exported from the shared object) because the code that reads it may be in another
        // codegen unit than this definition.
        global_asm!(
            ".pushsection .tdata.napalloc_cur_heap,\"awT\",@progbits",
            ".p2align 3",
            ".globl napalloc_cur_heap",
            ".hidden napalloc_cur_heap",
            ".type napalloc_cur_heap,@object",
            ".size napalloc_cur_heap,8",
            "napalloc_cur_heap:",
            ".quad {no_heap}",
            ".popsection",
            no_heap = sym NO_HEAP,
        );

        /// The offset of the calling thread's `napalloc_cur_heap` from its thread pointer: the
        /// same for every thread, and a constant of the process once the GOT is relocated (a
        /// static link makes it an immediate), so the compiler may compute it once per function
        /// or hoist it out of a loop (`pure, nomem`).
        #[inline(always)]
        fn offset() -> usize {
            let o: usize;
            // The GOT entry (initial-exec model) is filled by the dynamic linker before any code
            // runs and never changes: no other memory is read, none is written, no stack used.
            // SAFETY: loads the TLS offset of `napalloc_cur_heap` from its GOT entry (above).
            unsafe {
                asm!(
                    "mov {o}, qword ptr [rip + napalloc_cur_heap@GOTTPOFF]",
                    o = out(reg) o,
                    options(nostack, preserves_flags, pure, nomem),
                );
            }
            o
        }

        #[inline(always)]
        pub(super) fn get() -> *const Heap {
            let h: *const Heap;
            // The word is defined above, 8-aligned and always initialized; no other memory and no
            // stack is touched. `pure, readonly`: the compiler may reuse the value until the
            // next write of memory (a `set` is such a write).
            // SAFETY: reads the calling thread's own `napalloc_cur_heap` at `fs` + its offset.
            unsafe {
                asm!(
                    "mov {h}, qword ptr fs:[{o}]",
                    h = lateout(reg) h,
                    o = in(reg) offset(),
                    options(nostack, preserves_flags, pure, readonly),
                );
            }
            h
        }

        #[inline(always)]
        pub(super) fn set(h: *const Heap) {
            // SAFETY: writes the calling thread's own copy of `napalloc_cur_heap`, as `get`
            // reads it; nothing else is touched.
            unsafe {
                asm!(
                    "mov qword ptr fs:[{o}], {h}",
                    o = in(reg) offset(),
                    h = in(reg) h,
                    options(nostack, preserves_flags),
                );
            }
        }
    }

    #[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(miri))))]
    mod imp {
        use super::super::NO_HEAP;
        use super::Heap;
        use core::cell::Cell;

        std::thread_local! {
            static CUR: Cell<*const Heap> = const { Cell::new(&NO_HEAP) };
        }

        #[inline(always)]
        pub(super) fn get() -> *const Heap {
            CUR.with(Cell::get)
        }

        #[inline(always)]
        pub(super) fn set(h: *const Heap) {
            CUR.with(|c| c.set(h));
        }
    }

    /// The calling thread's current heap (a leaked heap or `NO_HEAP`; never null).
    #[inline(always)]
    pub(super) fn get() -> *const Heap {
        imp::get()
    }

    /// Make `h` (a leaked heap or `NO_HEAP`) the calling thread's current heap.
    #[inline(always)]
    pub(super) fn set(h: *const Heap) {
        imp::set(h)
    }

    /// [`set`], returning the previous value.
    #[inline]
    pub(super) fn replace(h: *const Heap) -> *const Heap {
        let old = get();
        set(h);
        old
    }
}

thread_local! {
    /// This thread's own heap, null until needed.
    static HOME: Cell<*const Heap> = const { Cell::new(ptr::null()) };
    /// True while this thread holds some heap through its lock (slow path); a nested call
    /// (from a host page source or a logger) must then fail instead of entering a heap.
    static IN_SLOW: Cell<bool> = const { Cell::new(false) };
    /// The idle scope heap of this thread's last scope (null if none): the next scope takes it
    /// back first, with its pages still resident. Another thread may claim it from the registry
    /// meanwhile (`claim_idle` arbitrates), so it is only a hint.
    static SPARE: Cell<*const Heap> = const { Cell::new(ptr::null()) };
    /// Set by the exit handler: from then on the thread uses the shared heap.
    static EXITED: Cell<bool> = const { Cell::new(false) };
    /// Its destructor abandons the thread's heaps; touched once, when the first heap is taken.
    static EXIT: ExitHandler = const { ExitHandler };
    /// Frees of other heaps' blocks, waiting to be sent as one batch; its destructor sends them.
    static OUTBOX: Outbox = const {
        Outbox {
            heap: Cell::new(&NO_HEAP),
            gen: Cell::new(0),
            node: Cell::new(ptr::null_mut()),
            spare: Cell::new(ptr::null_mut()),
        }
    };
}

/// Runs at thread exit (TLS destructor) and abandons the thread's heaps.
struct ExitHandler;

impl Drop for ExitHandler {
    fn drop(&mut self) {
        let _ = EXITED.try_with(|e| e.set(true));
        let spare = SPARE.with(|s| s.replace(ptr::null()));
        if !spare.is_null() {
            // SAFETY: heaps are never freed.
            let _ = scope_cache().push(unsafe { &*spare });
        }
        let cur = cur::replace(&NO_HEAP);
        let home = HOME.with(|c| c.replace(ptr::null()));
        let mut h = cur;
        while let Some(heap) = real(h) {
            if ptr::eq(heap, home) {
                break;
            }
            h = heap.outer.get();
            abandon(heap);
        }
        if !home.is_null() {
            // SAFETY: heaps are never freed.
            abandon(unsafe { &*home });
        }
    }
}

/// The heaps this thread owns, innermost scope first, its own heap last.
fn own_heaps() -> impl Iterator<Item = &'static Heap> {
    let home = HOME.with(Cell::get);
    let mut h = cur::get();
    let mut done = false;
    core::iter::from_fn(move || {
        if done {
            return None;
        }
        let heap = real(h)?;
        if h == home {
            done = true;
        } else {
            h = heap.outer.get();
            if h.is_null() {
                h = home;
            }
        }
        Some(heap)
    })
}

/// The heap this thread owns that contains `p`.
fn own_heap_of(p: *const u8) -> Option<&'static Heap> {
    own_heaps().find(|h| h.contains(p))
}

/// Where this thread allocates: its current heap, creating (or adopting) its own on first use.
/// `Err(true)` means "use the shared heap", `Err(false)` "re-entered: fail".
fn cur_heap() -> Result<&'static Heap, bool> {
    if let Some(cur) = real(cur::get()) {
        return Ok(cur);
    }
    if IN_SLOW.with(Cell::get) {
        return Err(false);
    }
    // Arm the exit handler first: if the thread is already past it (a late TLS destructor
    // allocating), it gets no heap of its own.
    if EXITED.with(Cell::get) || EXIT.try_with(|_| {}).is_err() {
        EXITED.with(|e| e.set(true));
        return Err(true);
    }
    // A heap adopted below must not be the outbox's hint (see `Outbox`).
    flush_outbox();
    // Creating a region may call a host page source, which may call us back.
    IN_SLOW.with(|s| s.set(true));
    let h = adopt().or_else(|| new_heap(OWNED, false));
    IN_SLOW.with(|s| s.set(false));
    let Some(h) = h else {
        return Err(true);
    };
    HOME.with(|c| c.set(h));
    cur::set(h);
    Ok(h)
}

/// Take over an abandoned thread heap, if there is one. It may still hold blocks of the thread
/// that abandoned it (other threads may be freeing them): adopting it anyway is what keeps a
/// server whose threads come and go from reserving a heap per thread.
fn adopt() -> Option<&'static Heap> {
    heaps().filter(|h| !h.scope && h.state.load(Ordering::Relaxed) == ABANDONED).find(|h| {
        if !h.lock.try_lock() {
            return false;
        }
        let ok = h.state.load(Ordering::Relaxed) == ABANDONED;
        if ok {
            h.state.store(OWNED, Ordering::SeqCst);
        }
        h.lock.unlock();
        ok
    })
}

/// Give up a heap this thread owns (its thread exits): blocks stay valid; free memory if empty.
fn abandon(h: &'static Heap) {
    h.outer.set(ptr::null());
    if let Some(held) = Held::acquire(h, true) {
        h.state.store(ABANDONED, Ordering::SeqCst);
        held.drain();
        held.trim_if_empty();
        // Dropping `held` re-checks the queue: a freer that saw ABANDONED while we held the
        // lock left its block to us.
    }
}

// ---------------------------------------------------------------------------------------------
// Holding a heap through its lock
// ---------------------------------------------------------------------------------------------

/// Exclusive access to a heap's region through its lock (the slow path). Released on drop,
/// also when unwinding.
struct Held {
    heap: &'static Heap,
    /// After unlocking an unowned heap, drain what was pushed while we held it (`try_drain`).
    recheck: bool,
    _not_send: PhantomData<*mut ()>,
    /// Memory notifications wait until the lock is released (dropped after `Drop::drop`).
    _defer: crate::host::NotifyDeferral,
}

impl Held {
    /// Lock `h` and make its region ours. `own`: the calling thread owns `h` (so its `busy` is
    /// false and needs no barrier). `None` if this thread already holds a heap (re-entered).
    fn acquire(h: &'static Heap, own: bool) -> Option<Held> {
        if IN_SLOW.with(Cell::get) {
            return None;
        }
        h.lock.lock();
        // From here on, `Drop` undoes everything, whatever happens.
        IN_SLOW.with(|s| s.set(true));
        let held =
            Held { heap: h, recheck: true, _not_send: PhantomData, _defer: crate::host::NotifyDeferral::enter() };
        h.attention.fetch_or(HELD, Ordering::SeqCst);
        if !own && h.state.load(Ordering::Relaxed) == OWNED {
            if h.attention.load(Ordering::Relaxed) & FENCED == 0 {
                barrier::heavy();
            }
            // The owner either saw HELD (and will take the lock, which we hold) or set `busy`
            // before reading `attention`; wait until that operation is over.
            let mut spins = 0u32;
            while h.busy.load(Ordering::Acquire) {
                if spins < 1000 {
                    spins += 1;
                    core::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        Some(held)
    }

    #[allow(clippy::mut_from_ref)]
    fn region(&self) -> &mut Region {
        // SAFETY: we hold the lock with HELD set and the owner out of its fast path (module doc),
        // and IN_SLOW keeps this thread from re-entering: this is the only reference.
        unsafe { &mut *self.heap.region_ptr() }
    }

    /// The region and the small arena, for operations that need both.
    #[allow(clippy::mut_from_ref)]
    fn both(&self) -> (&mut Region, &mut Small) {
        // SAFETY: as in `region`; the small arena is a separate cell, under the same rule.
        (self.region(), unsafe { &mut *self.heap.small_ptr() })
    }

    /// Free everything queued on the heap by other threads.
    fn drain(&self) {
        let h = self.heap;
        if h.attention.load(Ordering::Relaxed) & REMOTE == 0 {
            return;
        }
        h.attention.fetch_and(!REMOTE, Ordering::SeqCst);
        // Pairs with the fence in `remote_free`: a push whose pusher still saw REMOTE set is
        // visible to the pops below.
        fence(Ordering::SeqCst);
        let mut newest = h.remote.take();
        if newest.is_null() {
            return;
        }
        // Oldest batch first, as the frees were made (a block freed alone before its parent's
        // tree is then freed alone, not reported as a double free).
        let (last, mut first) = (newest, ptr::null_mut::<RemoteBatch>());
        while !newest.is_null() {
            // SAFETY: `take` made every node of the list ours.
            let next = unsafe { (*newest).next };
            // SAFETY: as above.
            unsafe { (*newest).next = first };
            first = newest;
            newest = next;
        }
        let (r, s) = self.both();
        let gen = h.gen.load(Ordering::Relaxed);
        let mut node = first;
        prefetch(first.cast(), AHEAD_BYTES);
        while !node.is_null() {
            // SAFETY: ours (see above) until it is pushed on `spare` below; nothing else refers
            // to it meanwhile (a nested free while a bad pointer is logged queues a new node).
            let b = unsafe { &*node };
            // The next node's lines were written by the freeing thread's core: start loading
            // them while this one is processed (the walk above only brought in its first line).
            if !b.next.is_null() {
                prefetch(b.next.cast(), AHEAD_BYTES);
            }
            // A batch of an older `gen` names blocks of a scope that was left since: gone with
            // its reset.
            if b.gen == gen {
                let items = &b.items[..b.len as usize];
                for (k, line) in items.chunks(LINE_ITEMS).enumerate() {
                    if let Some(ahead) = items.get((k + AHEAD_LINES) * LINE_ITEMS) {
                        prefetch((ahead as *const *mut u8).cast(), 64);
                    }
                    // Small blocks in a run, as the common case; anything else one by one.
                    let mut rest = line;
                    while !rest.is_empty() {
                        let n = s.free_run(rest, TREE);
                        let Some(&item) = rest.get(n) else { break };
                        free_queued(r, s, item);
                        rest = &rest[n + 1..];
                    }
                }
            }
            node = b.next;
        }
        // SAFETY: `first ..= last` is the list we took, ours; empty nodes for the next batches.
        unsafe { h.spare.push(first, last) };
    }

    /// Decommit the small arena of an abandoned heap if it holds no block, and reset and
    /// decommit the region if it holds none (an abandoned scope heap then
    /// becomes idle, ready for the next scope).
    fn trim_if_empty(&self) {
        let h = self.heap;
        let (r, s) = self.both();
        if h.state.load(Ordering::Relaxed) != ABANDONED {
            return;
        }
        // The small arena on its own: it may be empty while the region still holds blocks.
        let small_empty = s.trim_if_empty();
        if r.live_blocks() == 0 {
            r.reset();
            if r.trim(0).is_ok() {
                TRIMS.fetch_add(1, Ordering::Relaxed);
            }
            if h.scope && small_empty {
                h.state.store(IDLE, Ordering::SeqCst);
            }
        }
    }
}

/// Free one queued item ([`tag`]) of the heap whose region and small arena these are (a drain,
/// under the lock), as its freeing thread asked.
fn free_queued(r: &mut Region, s: &mut Small, item: *mut u8) {
    let (ptr, tree) = untag(item);
    free_now(r, s, ptr, tree);
}

/// Free `ptr` (with `tree`, its tree) in the heap whose region and small arena these are, under
/// its lock: `false` if `ptr` is no live block, which is then refused untouched, reported and
/// counted.
fn free_now(r: &mut Region, s: &mut Small, ptr: *mut u8, tree: bool) -> bool {
    let Some(p) = NonNull::new(ptr) else { return false };
    // A leaf's tree is the leaf, and so is a small block without a proxy. The freeing thread gave
    // the block up; task-heap regions never scrub and only hold 16-aligned blocks.
    // SAFETY: so; anything but a live block start is refused untouched.
    if s.try_free(ptr) || (!s.has_proxies() && unsafe { r.try_free_leaf_plain(ptr) }) {
        return true;
    }
    // SAFETY: as above; a bad pointer is refused (and reported) untouched. A small block (or any
    // other) goes through the general free.
    if unsafe { free_in(r, s, p, tree) }.is_err() {
        BAD.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    true
}

impl Drop for Held {
    fn drop(&mut self) {
        let h = self.heap;
        IN_SLOW.with(|s| s.set(false));
        // SAFETY: we still hold the lock (module doc): nobody else touches the small arena.
        let proxied = unsafe { &*h.small_ptr() }.has_proxies();
        if proxied {
            h.attention.fetch_or(PROXIED, Ordering::Relaxed);
        } else if h.attention.load(Ordering::Relaxed) & PROXIED != 0 {
            h.attention.fetch_and(!PROXIED, Ordering::Relaxed);
        }
        h.attention.fetch_and(!HELD, Ordering::Release);
        h.lock.unlock();
        // A freer of an unowned heap that found the lock taken left its block to us.
        if self.recheck && h.state.load(Ordering::SeqCst) != OWNED && h.attention.load(Ordering::SeqCst) & REMOTE != 0 {
            try_drain(h);
        }
    }
}

/// Run `f` on the region and small arena of `h`, which this thread owns, through the lock.
/// `None` if re-entered.
#[inline(never)]
fn with_own<R>(h: &'static Heap, f: impl FnOnce(&mut Region, &mut Small) -> R) -> Option<R> {
    let held = Held::acquire(h, true)?;
    held.drain();
    let (r, s) = held.both();
    Some(f(r, s))
}

/// Run `f` on the region and small arena of `h`, which this thread does not own. `None` if
/// re-entered.
#[inline(never)]
fn with_foreign<R>(h: &'static Heap, f: impl FnOnce(&mut Region, &mut Small) -> R) -> Option<R> {
    let held = Held::acquire(h, false)?;
    held.drain();
    let (r, s) = held.both();
    let r = f(r, s);
    held.trim_if_empty();
    Some(r)
}

/// Run `f` on the region of whichever heap holds `p`: this thread's own (through the lock) or
/// another's (foreign access). `Err(true)`: no heap holds `p`; `Err(false)`: re-entered.
fn with_heap_of<R>(p: *const u8, f: impl FnOnce(&mut Region, &mut Small) -> R) -> Result<R, bool> {
    flush_outbox(); // what this thread freed is seen as freed
    if let Some(h) = own_heap_of(p) {
        return with_own(h, f).ok_or(false);
    }
    match find_heap(p) {
        Some(h) => with_foreign(h, f).ok_or(false),
        None => Err(true),
    }
}

/// Free `p` (aligned to [`ALIGN`]) of `h` (not this thread's): into this thread's [`Outbox`] if
/// a thread owns `h`; else freed at once under `h`'s lock if this thread can take it, so that the
/// answer is the free's own (`false`: `p` was no block and is reported); else queued on `h` for
/// whoever holds it. `true`: freed or queued.
fn remote_free(h: &'static Heap, p: *mut u8, tree: bool) -> bool {
    if h.state.load(Ordering::SeqCst) == OWNED {
        if OUTBOX.try_with(|o| o.add(h, p, tree)).is_ok() {
            return true;
        }
    } else if let Some(freed) = free_unowned(h, p, tree) {
        return freed;
    }
    send(h, one_free(h, p, tree));
    true
}

/// Free `p` of `h`, which no thread owns (abandoned by its thread, or an idle scope heap), now:
/// `None` if `h`'s lock is taken, this thread holds a heap already, or `h` was adopted meanwhile
/// (the caller queues the free instead).
///
/// What this thread freed before into `h` is delivered first, in order: a block freed alone
/// before its parent's tree is then freed alone, not reported as a double free.
#[cold]
#[inline(never)]
fn free_unowned(h: &'static Heap, p: *mut u8, tree: bool) -> Option<bool> {
    flush_outbox();
    let held = Held::acquire_unowned(h)?;
    held.drain();
    let (r, s) = held.both();
    let freed = free_now(r, s, p, tree);
    held.trim_if_empty();
    drop(held);
    // What was pushed while we held the lock (`acquire_unowned` leaves the re-check to us).
    if h.attention.load(Ordering::SeqCst) & REMOTE != 0 {
        try_drain(h);
    }
    Some(freed)
}

/// Queue `batch` (a node the caller owns and gives up) on `h` and raise `REMOTE`; process it at
/// once if nobody owns `h`.
fn send(h: &'static Heap, batch: *mut RemoteBatch) {
    // SAFETY: a node of the caller's, given up here.
    unsafe { h.remote.push(batch, batch) };
    // Set REMOTE only if it is clear: a freer that keeps freeing into the same heap then only
    // reads its `attention` line. Nothing is stranded: the fence orders our push before our load,
    // and a drainer clears REMOTE (SeqCst) and fences before it pops; so either our load sees the
    // clear and we set the bit again, or the drainer's pops see our push.
    fence(Ordering::SeqCst);
    if h.attention.load(Ordering::Relaxed) & REMOTE == 0 {
        h.attention.fetch_or(REMOTE, Ordering::SeqCst);
    }
    if h.state.load(Ordering::SeqCst) != OWNED {
        try_drain(h);
    }
}

/// A thread's frees of blocks of other threads' heaps, gathered into one batch per heap before
/// they are sent (snmalloc's remote cache): a producer/consumer pair then pays one push, one
/// fence and one read of the owner's `attention` per [`BATCH`] frees instead of per free.
///
/// The batch is written straight into the node that will carry it (`node`), so sending it
/// copies nothing.
///
/// A batch is sent when it is full, when the thread frees into another heap, before the thread
/// asks for anything that should see its frees (`stats`, `thread_stats`, `heap_minimize`, a
/// query, realloc or child allocation of another heap's block, any slow-path allocation), and
/// when the thread exits. So at most `BATCH - 1` blocks per freeing thread wait while that
/// thread does nothing else with the allocator.
///
/// After a full batch is sent the outbox keeps its heap (with no node) as a hint: the next
/// free of a block of that heap ([`Outbox::add_to_last`], tried first by the free slow path)
/// needs no search of the registry. The hint is never one of the thread's own heaps: only
/// blocks of heaps another thread owns are added, a heap this thread takes over by adoption
/// comes only after the outbox is flushed ([`cur_heap`]), and one it takes over as a scope was
/// reset since (its `gen` moved on, which `add_to_last` checks).
///
/// Invariant: `node` is null or a node owned by this thread (in no list) whose
/// `items[..len]`, `len < BATCH`, are tagged frees ([`tag`]) of blocks of `heap`, stamped
/// `gen` (the heap's `gen` when the first was added; the node's own `gen` holds the same);
/// `node` is null when `heap` is [`NO_HEAP`] (no heap: never null, so that the hint's range
/// check needs no test first, `NO_HEAP` containing nothing). `spare` is a `next`-linked list of
/// empty nodes that belong to this thread. Touched only by its thread.
struct Outbox {
    heap: Cell<*const Heap>,
    gen: Cell<u32>,
    node: Cell<*mut RemoteBatch>,
    spare: Cell<*mut RemoteBatch>,
}

impl Outbox {
    /// Queue the free of `p` (aligned to [`ALIGN`]) of `h`, which another thread owns.
    #[inline]
    fn add(&self, h: &'static Heap, p: *mut u8, tree: bool) {
        let gen = h.gen.load(Ordering::Relaxed);
        if !ptr::eq(self.heap.get(), h) || self.gen.get() != gen {
            self.flush();
            self.heap.set(h);
            self.gen.set(gen);
        }
        self.push(h, p, tree);
    }

    /// [`add`](Self::add) if `p` is aligned to [`ALIGN`] and lies in the heap of the last batch
    /// (the hint, see above), that heap still has the batch's `gen` and another thread owns it;
    /// `false` (nothing done) otherwise.
    #[inline]
    fn add_to_last(&self, p: *mut u8, tree: bool) -> bool {
        // SAFETY: the hint is `NO_HEAP` (which contains nothing) or a leaked heap: never freed.
        let h: &'static Heap = unsafe { &*self.heap.get() };
        if !h.contains(p)
            || p as usize % ALIGN != 0
            || h.gen.load(Ordering::Relaxed) != self.gen.get()
            || h.state.load(Ordering::SeqCst) != OWNED
        {
            return false;
        }
        self.push(h, p, tree);
        true
    }

    /// Append a free to the batch for `h` (= `heap`), starting one if there is none.
    #[inline]
    fn push(&self, h: &'static Heap, p: *mut u8, tree: bool) {
        let mut node = self.node.get();
        if node.is_null() {
            node = self.start(h);
        }
        // SAFETY: `node` is ours (invariant) and only this thread touches its outbox; `len <
        // BATCH` (a full batch is sent at once, below).
        let full = unsafe {
            let n = (*node).len as usize;
            (*node).items[n] = tag(p, tree);
            (*node).len = n as u32 + 1;
            n + 1 == BATCH
        };
        if full {
            self.send();
        }
    }

    /// A node for a new batch to `h` (= `heap`), stamped with `gen`, now the outbox's `node`.
    #[cold]
    fn start(&self, h: &'static Heap) -> *mut RemoteBatch {
        let node = self.node(h);
        // SAFETY: a node of ours (taken out of every list).
        unsafe {
            (*node).gen = self.gen.get();
            (*node).len = 0;
        }
        self.node.set(node);
        node
    }

    /// Send the pending batch, if any, and forget the heap.
    fn flush(&self) {
        self.send();
        self.heap.set(&NO_HEAP);
    }

    /// Send the pending batch, if any (the heap stays as the hint).
    fn send(&self) {
        let node = self.node.replace(ptr::null_mut());
        if node.is_null() {
            return;
        }
        // A node is only started for a real heap (invariant), which stays the outbox's heap
        // while the node is pending.
        let Some(h) = real(self.heap.get()) else {
            debug_assert!(false, "a pending batch without a heap");
            // SAFETY: the node is ours: kept as a spare rather than lost.
            unsafe { (*node).next = self.spare.get() };
            self.spare.set(node);
            return;
        };
        send(h, node);
    }

    /// An empty node for a batch to `h`, owned by the caller: one of this thread's spares, else
    /// the spares `h`'s drainer gave back (all of them; the rest become this thread's), else a
    /// new one.
    fn node(&self, h: &'static Heap) -> *mut RemoteBatch {
        let mut node = self.spare.get();
        if node.is_null() {
            node = h.spare.take();
            if node.is_null() {
                return RemoteBatch::boxed();
            }
        }
        // SAFETY: a node of this thread's spare list (or of the list just taken): ours.
        self.spare.set(unsafe { (*node).next });
        node
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.flush();
        let mut node = self.spare.replace(ptr::null_mut());
        while !node.is_null() {
            // SAFETY: this thread's spare nodes are boxed and in no other list: ours to free.
            let b = unsafe { Box::from_raw(node) };
            node = b.next;
        }
    }
}

/// Send this thread's pending remote frees (see [`Outbox`]).
fn flush_outbox() {
    let _ = OUTBOX.try_with(Outbox::flush);
}

/// Deliver the calling thread's pending frees of blocks of other threads' heaps now.
///
/// A free of another thread's block waits in the freeing thread's batch (at most 255 blocks of
/// one heap) until the batch is full, the thread frees into another heap, asks for [`stats`],
/// [`thread_stats`] or [`heap_minimize`], queries, reallocates or allocates a child of another
/// heap's block, allocates on its slow path, or exits. Until then the owning heap counts the
/// blocks as live (its `did_alloc` and `size_of` still see them). Call this before signalling a
/// thread that checks its heap's counters after you freed its blocks.
///
/// ```
/// let p = napalloc::heap::alloc(64).unwrap().as_ptr() as usize;
/// std::thread::spawn(move || {
///     // SAFETY: a live block of the main thread's heap, freed once.
///     unsafe { napalloc::heap::free(p as *mut u8) };
///     napalloc::heap::flush_remote_frees();
/// })
/// .join()
/// .unwrap();
/// assert_eq!(napalloc::heap::did_alloc(p as *const u8), 0);
/// ```
pub fn flush_remote_frees() {
    flush_outbox();
}

/// Drain an unowned heap's queue if its lock is free. No pushed block is stranded: a pusher
/// sets `REMOTE` before it tries the lock, and whoever held the lock re-reads `REMOTE` after
/// unlocking (all `SeqCst`: the store-buffer pattern cannot lose both sides).
fn try_drain(h: &'static Heap) {
    loop {
        // `None`: re-entered (the block waits in the queue), the lock is taken (its holder
        // re-checks), or the heap is owned (its owner drains: REMOTE is set).
        let Some(held) = Held::acquire_unowned(h) else {
            return;
        };
        held.drain();
        held.trim_if_empty();
        drop(held);
        if h.attention.load(Ordering::SeqCst) & REMOTE == 0 {
            return;
        }
    }
}

impl Held {
    /// Like `acquire` for a heap nobody owns, but only if its lock is free; no re-check on
    /// release (the caller loops).
    fn acquire_unowned(h: &'static Heap) -> Option<Held> {
        if IN_SLOW.with(Cell::get) || !h.lock.try_lock() {
            return None;
        }
        IN_SLOW.with(|s| s.set(true));
        let held =
            Held { heap: h, recheck: false, _not_send: PhantomData, _defer: crate::host::NotifyDeferral::enter() };
        h.attention.fetch_or(HELD, Ordering::SeqCst);
        if h.state.load(Ordering::SeqCst) == OWNED {
            return None; // adopted meanwhile: its new owner drains (dropping `held` unlocks)
        }
        Some(held)
    }
}

// ---------------------------------------------------------------------------------------------
// The fast path
// ---------------------------------------------------------------------------------------------

/// `fast!(|r, s| body)`: run `body` on the current heap's region `r` and small arena `s`
/// without the lock, if nothing needs attention; `None` otherwise (`fast!(|r| body)`: the
/// region alone). Pending remote frees (`REMOTE`) need attention too: the slow path does them
/// first, so that a block freed by another thread is freed before this thread frees or reuses
/// anything (a double free across threads is then refused, not applied to the slot's next
/// block; module doc).
/// `body` must not call out (no page commits, no logging): it may not be re-entered. A macro
/// rather than a function taking a closure, so that the body is always inlined into the caller
/// (LLVM declined to inline the closure of the free path into the `CoTaskMemFree` export, which
/// cost a call and a stack frame per block).
///
/// The small arena uses this same protocol rather than a cheaper one of its own: other threads
/// do touch it (a foreign `realloc`, `size_of` or `alloc_child` of a small block, `stats`,
/// `heap_minimize`, and draining remote frees all run under the lock on the owner's heap), and
/// the `busy`/`attention` handshake is what keeps them out while the owner is inside. It costs
/// two plain stores and one load of a line the owner keeps in its cache.
macro_rules! fast {
    (|$r:pat_param, $s:pat_param| $body:expr) => {{
        // SAFETY: `CUR` is never null: a leaked heap or `NO_HEAP`, never freed.
        let h = unsafe { &*cur::get() };
        h.busy.store(true, Ordering::Relaxed);
        barrier::light();
        let att = h.attention.load(Ordering::Acquire);
        let out = if att == 0 {
            // We own the heap, `busy` is set and nobody held it when we looked (module doc): the
            // region is ours until `busy` is cleared, and `body` does not call out.
            // SAFETY: so this is the only reference to the region while it lives.
            let $r: &Region = unsafe { &*h.region_ptr() };
            // SAFETY: the small arena is under the same rule as the region.
            let $s: &Small = unsafe { &*h.small_ptr() };
            $body
        } else {
            None
        };
        h.busy.store(false, Ordering::Release);
        out
    }};
    (|$r:ident| $body:expr) => {
        fast!(|$r, _| $body)
    };
}

/// The fast path with a full fence, for a heap marked `FENCED` and nothing else.
#[inline(never)]
fn fenced<R>(h: &'static Heap, f: impl FnOnce(&Region, &Small) -> Option<R>) -> Option<R> {
    if h.attention.load(Ordering::Relaxed) != FENCED {
        return None;
    }
    h.busy.store(true, Ordering::Relaxed);
    fence(Ordering::SeqCst);
    let att = h.attention.load(Ordering::Acquire);
    let r = if att == FENCED {
        // SAFETY: as in `fast`, with a real fence between the store of `busy` and the load.
        let (r, s) = unsafe { (&*h.region_ptr(), &*h.small_ptr()) };
        f(r, s)
    } else {
        None
    };
    h.busy.store(false, Ordering::Release);
    r
}

// ---------------------------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------------------------

fn failed<T>() -> Option<T> {
    FAILED.fetch_add(1, Ordering::Relaxed);
    None
}

fn bad(what: &str, p: *const u8, e: Error) {
    BAD.fetch_add(1, Ordering::Relaxed);
    log::warn!("napalloc: {what}({p:p}) refused: {e}");
}

/// Report a pointer that a caller of the heap refused to use (the NapUtil `Free*` functions:
/// a top-level pointer that is not a live block, a block too small for its structure, an
/// embedded array shorter than its count): a `log` warning and [`HeapStats::bad_pointers`].
pub fn report_bad_pointer(what: &str, p: *const u8) {
    BAD.fetch_add(1, Ordering::Relaxed);
    log::warn!("napalloc: {what}({p:p}) refused");
}

/// The lock-free fast path of [`alloc`] alone: `None` when the slow path would be needed.
/// No call out of the region, no allocation; it can only panic on a broken invariant of the
/// side table (recording a finished tail asserts that the records fit).
#[inline(always)]
pub(crate) fn alloc_fast(size: usize) -> Option<NonNull<u8>> {
    fast!(|r, s| try_alloc_any(r, s, size))
}

/// The first part of [`alloc_fast`]: a block of the small arena, or `None`. Calls nothing at
/// all and needs few registers, so a function that inlines it and hands every miss on to
/// another function (the `CoTaskMemAlloc` export, [`alloc`]) needs no stack frame.
///
/// The constant bound (not `Small::serves`) lets the compiler drop the class index's bounds
/// check; a disabled small arena (scope heaps) misses here, and [`alloc_fast`] tries the region.
#[inline(always)]
pub(crate) fn alloc_small_fast(size: usize) -> Option<NonNull<u8>> {
    if size > SMALL_MAX {
        return None;
    }
    fast!(|_, s| s.try_alloc(size))
}

/// The first part of [`free_fast`]: free a plain live block of the small arena, or return
/// `false` (nothing done). Calls nothing at all (see [`alloc_small_fast`]).
///
/// # Safety
/// As [`free`].
#[inline(always)]
pub(crate) unsafe fn free_small_fast(p: *mut u8) -> bool {
    fast!(|_, s| s.try_free(p).then_some(())).is_some()
}

/// A fast allocation in the heap: small requests from the small arena, the others from the
/// region ([`try_alloc_in`]).
#[inline(always)]
fn try_alloc_any(r: &Region, s: &Small, size: usize) -> Option<NonNull<u8>> {
    if size <= SMALL_MAX {
        match s.try_alloc(size) {
            Some(p) => Some(p),
            // An enabled arena that needs pages takes the slow path (which commits them).
            None if s.serves(size) => None,
            None => try_alloc_in(r, size),
        }
    } else {
        try_alloc_in(r, size)
    }
}

/// The fast allocation in a region: a dead slot of the size class, else new memory at hand.
#[inline(always)]
fn try_alloc_in(r: &Region, size: usize) -> Option<NonNull<u8>> {
    match r.try_reuse(size) {
        Some(p) => Some(p),
        None => r.try_alloc(size),
    }
}

/// The lock-free fast path of [`free`] alone: `false` (nothing done) when the slow path would be
/// needed. Cannot panic (no calls, no allocation).
///
/// # Safety
/// As [`free`].
#[inline(always)]
pub(crate) unsafe fn free_fast(p: *mut u8) -> bool {
    // A block outside the current heap's region (another heap's: a remote free) cannot be freed
    // here: one range compare instead of the region's lookup of a foreign address. (`NO_HEAP`
    // has an empty range, and its fast path would fail anyway.) The compiler reuses this read of
    // the current heap in `fast!`.
    // SAFETY: the current heap is never null: a leaked heap or `NO_HEAP`, never freed.
    let h = unsafe { &*cur::get() };
    if (p as usize).wrapping_sub(h.base) >= h.len {
        return false;
    }
    // The region alone: every caller tried the small arena's fast path just before, under the
    // same condition (a second try could only fail again). Task-heap regions never scrub and
    // only ever hold 16-aligned blocks (`ALIGN`).
    // SAFETY: forwarded caller guarantee; anything but a live block start is refused untouched.
    fast!(|r| unsafe { r.try_free_leaf_plain(p) }.then_some(())).is_some()
}

/// Free `p` in the heap whose region and small arena these are (a lock holder's free, or the
/// owner's slow path): `tree` frees its recorded children too. A pointer that is not a live block
/// is refused untouched and logged (by the region, or here), `Err` for the caller to count.
///
/// # Safety
/// As [`free`] (or [`free_tree`]).
unsafe fn free_in(r: &mut Region, s: &mut Small, p: NonNull<u8>, tree: bool) -> Result<(), Error> {
    if s.is_proxy(p.as_ptr()) {
        return Err(refuse_proxy("free", p));
    }
    match s.kind(p.as_ptr()) {
        // SAFETY: forwarded caller guarantee; the region refuses a bad pointer untouched.
        Kind::Outside => unsafe {
            if tree {
                r.free(p)
            } else {
                r.free_one(p)
            }
        },
        Kind::Bad => {
            log::warn!("napalloc: free({:p}) refused: {}", p.as_ptr(), Error::NotABlock);
            Err(Error::NotABlock)
        }
        Kind::Live { .. } => {
            if let Some(q) = s.free_block(p.as_ptr()) {
                // The proxy is a live region block that only we know of: freeing it alone
                // leaves the children independent, as `free` of a region parent does.
                // SAFETY: the proxy is freed once, here, together with its small block.
                let _ = unsafe {
                    if tree {
                        r.free(q)
                    } else {
                        r.free_one(q)
                    }
                };
            }
            Ok(())
        }
    }
}

/// `realloc` of `p` in the heap whose region and small arena these are: a region block stays
/// in the region (`Region::realloc`); a small block is resized in place if it keeps its number of
/// granules, else moved to another small block or, past `SMALL_MAX`, to the region (to its proxy
/// if it has recorded children, so the records stay with the data).
///
/// # Safety
/// As [`realloc`].
unsafe fn realloc_in(r: &mut Region, s: &mut Small, p: NonNull<u8>, size: usize) -> Result<NonNull<u8>, Error> {
    if s.is_proxy(p.as_ptr()) {
        return Err(refuse_proxy("CoTaskMemRealloc", p));
    }
    let (old, proxy) = match s.kind(p.as_ptr()) {
        // SAFETY: forwarded caller guarantee; the region refuses a bad pointer untouched.
        Kind::Outside => return unsafe { r.realloc(p, size) },
        Kind::Bad => {
            log::warn!("napalloc: CoTaskMemRealloc({:p}) refused: {}", p.as_ptr(), Error::NotABlock);
            return Err(Error::NotABlock);
        }
        Kind::Live { size, proxy } => (size, proxy),
    };
    if s.resize_in_place(p.as_ptr(), size) {
        return Ok(p);
    }
    let moved = if s.serves(size) { s.alloc(size, CriticalLevel::Task).ok() } else { None };
    let q = match moved {
        Some(q) => {
            if let Some(pr) = s.take_proxy(p.as_ptr()) {
                s.set_proxy(q.as_ptr(), pr);
            }
            q
        }
        None => match proxy.then(|| s.proxy(p.as_ptr())).flatten() {
            Some(pr) => {
                // SAFETY: the proxy is a live zero-size region block only we know of; it grows
                // into the block's new home, keeping its children's records.
                let q = unsafe { r.realloc(pr, size)? };
                s.take_proxy(p.as_ptr());
                q
            }
            None => r.alloc(task_layout(size)?)?,
        },
    };
    // SAFETY: `p` is a live small block of `old` bytes, `q` another live block (of the small arena
    // or the region) of `size` bytes: distinct, each valid for `old.min(size)` bytes.
    unsafe { ptr::copy_nonoverlapping(p.as_ptr(), q.as_ptr(), old.min(size)) };
    s.free_block(p.as_ptr());
    Ok(q)
}

/// Log a pointer that names a proxy (a block the caller cannot have: it freed a block at that
/// address before) and refuse it as freed.
#[cold]
fn refuse_proxy(what: &str, p: NonNull<u8>) -> Error {
    log::warn!("napalloc: {what}({:p}) refused: {}", p.as_ptr(), Error::NotABlock);
    Error::NotABlock
}

/// `alloc_child` of `parent` in the heap whose region and small arena these are. A small parent
/// gets a proxy in the region on its first child (module doc of `small`).
fn child_in(r: &mut Region, s: &mut Small, parent: NonNull<u8>, l: Layout) -> Result<NonNull<u8>, Error> {
    if s.is_proxy(parent.as_ptr()) {
        return Err(refuse_proxy("alloc_child", parent));
    }
    match s.kind(parent.as_ptr()) {
        Kind::Outside => r.alloc_child(parent, l),
        Kind::Bad => Err(Error::NotABlock),
        Kind::Live { .. } => {
            let q = match s.proxy(parent.as_ptr()) {
                Some(q) => q,
                None => {
                    let q = r.alloc(task_layout(0)?)?;
                    s.set_proxy(parent.as_ptr(), q);
                    q
                }
            };
            r.alloc_child(q, l)
        }
    }
}

/// What a query of `p` finds in the heap whose region and small arena these are: `None` if
/// neither holds `p`, else `Some(size_of(p))`.
#[inline(always)]
fn query(r: &Region, s: &Small, p: *const u8) -> Option<Option<usize>> {
    // The region first: the NapUtil functions query their structures, which live there. (No
    // proxy exists while the fast path runs: `PROXIED`; a lock holder uses `query_held`.)
    if let Some(nn) = NonNull::new(p as *mut u8).filter(|_| r.contains(p)) {
        return Some(r.size_of(nn));
    }
    s.contains(p).then(|| s.size_of(p))
}

/// [`query`] for a lock holder, in whose heap proxies may exist: a proxy is no block of the
/// caller's (its address may be that of a block the caller freed).
fn query_held(r: &Region, s: &Small, p: *const u8) -> Option<Option<usize>> {
    query(r, s, p).map(|q| q.filter(|_| !s.is_proxy(p)))
}

/// The layout of a task-heap block of `size` bytes, or `TooLarge`.
fn task_layout(size: usize) -> Result<Layout, Error> {
    Layout::from_size_align(size, ALIGN).map_err(|_| Error::TooLarge)
}

/// `CoTaskMemAlloc`: a 16-aligned block of `size` bytes, or `None`.
#[inline]
pub fn alloc(size: usize) -> Option<NonNull<u8>> {
    if let Some(p) = alloc_small_fast(size) {
        return Some(p);
    }
    alloc_rest(size)
}

/// [`alloc`] past the small arena's fast path: the region's fast path, then the slow path.
#[inline(never)]
fn alloc_rest(size: usize) -> Option<NonNull<u8>> {
    if let Some(p) = alloc_fast(size) {
        return Some(p);
    }
    alloc_slow(size, CriticalLevel::Task)
}

/// Allocate with an explicit critical level: `Task` may fail at once; `AppDomain` and `Process`
/// give idle memory back ([`heap_minimize`]) and retry before they fail.
pub fn alloc_critical(size: usize, level: CriticalLevel) -> Option<NonNull<u8>> {
    if let Some(p) = fast!(|r, s| try_alloc_any(r, s, size)) {
        return Some(p);
    }
    alloc_slow(size, level)
}

/// A block that lives in the region whatever its size (a NapUtil structure, which gets recorded
/// children): [`alloc`] without the small arena.
#[inline]
pub(crate) fn alloc_tracked(size: usize) -> Option<NonNull<u8>> {
    if let Some(p) = fast!(|r| try_alloc_in(r, size)) {
        return Some(p);
    }
    alloc_slow_in(size, CriticalLevel::Task, false)
}

/// [`alloc`] past its fast path (for callers that tried [`alloc_fast`] already).
#[cold]
#[inline(never)]
pub(crate) fn alloc_slow(size: usize, level: CriticalLevel) -> Option<NonNull<u8>> {
    alloc_slow_in(size, level, true)
}

/// [`alloc_slow`]; `small`: the small arena may serve the request.
#[cold]
#[inline(never)]
fn alloc_slow_in(size: usize, level: CriticalLevel, small: bool) -> Option<NonNull<u8>> {
    flush_outbox();
    let Ok(layout) = task_layout(size) else {
        return failed();
    };
    let h = match cur_heap() {
        Ok(h) => h,
        Err(true) => return shared_alloc(layout),
        Err(false) => return failed(),
    };
    let fast = |r: &Region, s: &Small| {
        if small {
            try_alloc_any(r, s, size)
        } else {
            try_alloc_in(r, size)
        }
    };
    if let Some(p) = fenced(h, fast) {
        return Some(p);
    }
    let alloc = |r: &mut Region, s: &mut Small| {
        // A small arena that cannot commit more (reservation full, budget) leaves the request
        // to the region.
        if small && s.serves(size) {
            if let Ok(p) = s.alloc(size, level) {
                return Ok(p);
            }
        }
        r.with_critical_level(level, |r| r.alloc(layout))
    };
    match with_own(h, alloc) {
        Some(Ok(p)) => Some(p),
        Some(Err(_)) if level != CriticalLevel::Task => {
            // Give idle memory back (other heaps' included) and try once more.
            heap_minimize();
            match with_own(h, alloc) {
                Some(Ok(p)) => Some(p),
                _ => failed(),
            }
        }
        _ => failed(),
    }
}

/// Allocate from the shared heap (for threads that have no heap of their own).
fn shared_alloc(layout: Layout) -> Option<NonNull<u8>> {
    match shared_heap().and_then(|h| with_foreign(h, |r, _| r.alloc(layout))) {
        Some(Ok(p)) => Some(p),
        _ => failed(),
    }
}

/// Allocate a block recorded as an embedded pointer of `parent`: [`free_tree`] of the parent
/// frees it too. The block lives in the parent's heap, whichever thread owns it. `None` if
/// `parent` is not a live block or memory is short.
#[inline]
pub fn alloc_child(parent: NonNull<u8>, size: usize) -> Option<NonNull<u8>> {
    // A parent in the current heap, a child that fits in memory at hand: lock-free (pending
    // remote frees are done first, on the slow path).
    if let Some(p) = fast!(|r| if r.contains(parent.as_ptr()) { r.try_alloc_child(parent, size) } else { None }) {
        return Some(p);
    }
    alloc_child_slow(parent, size)
}

/// A block of `size` bytes and a block of `child` bytes recorded as its embedded pointer
/// (`AllocConnections`, `AllocFixupInfo`, `AllocCountedString`), with one pass of the fast
/// protocol when both fit in memory at hand. `None` if the parent cannot be had; `Some((p,
/// None))` if only the child failed (the caller frees `p`).
#[inline]
pub(crate) fn alloc_with_child(size: usize, child: usize) -> Option<(NonNull<u8>, Option<NonNull<u8>>)> {
    // A new tail of the two blocks first (no dead slot of the class waiting), then the general
    // fast path.
    match fast!(|r| r.try_alloc_pair(size, child)) {
        Some((p, q)) => Some((p, Some(q))),
        None => alloc_with_child_slow(size, child),
    }
}

/// [`alloc_with_child`] past its first fast path: a dead slot or a new tail for the parent, a
/// child of it from memory at hand, else each block through its own slow path.
#[cold]
#[inline(never)]
fn alloc_with_child_slow(size: usize, child: usize) -> Option<(NonNull<u8>, Option<NonNull<u8>>)> {
    let fast = fast!(|r| try_alloc_in(r, size).map(|p| (p, r.try_alloc_child(p, child))));
    let (p, c) = match fast {
        Some(pc) => pc,
        None => (alloc_tracked(size)?, None),
    };
    Some((p, c.or_else(|| alloc_child(p, child))))
}

/// `size_of(p)` and, if `p` is a live block of at least `min` bytes, the pointer `q = field()`
/// (a field read from `p`'s block, read only then) and `size_of(q)`, with one pass of the fast
/// protocol when both blocks are in the current heap: what a NapUtil `Free*` function needs
/// to validate a structure and the array it points to. `field` must not call the task heap.
/// Returns `(size_of(p), q, size_of(q))`, with `q` null when `field` was not called.
#[inline]
pub(crate) fn size_of_pair<F: FnOnce() -> *const u8>(
    p: *const u8,
    min: usize,
    field: F,
) -> (Option<usize>, *const u8, Option<usize>) {
    if p.is_null() {
        return (None, ptr::null(), None);
    }
    let mut field = Some(field);
    // `Some((a, q, Some(b)))`: all known; `Some((a, q, None))`: `q` needs the general query.
    let fast = fast!(|r, s| match (query(r, s, p), field.take()) {
        (None, f) => {
            field = f; // not this heap's: the general query below
            None
        }
        (Some(Some(a)), Some(f)) if a >= min => {
            let q = f();
            let b = if q.is_null() { Some(None) } else { query(r, s, q) };
            Some((Some(a), q, b))
        }
        (Some(a), _) => Some((a, ptr::null(), Some(None))),
    });
    match fast {
        Some((a, q, Some(b))) => (a, q, b),
        Some((a, q, None)) => (a, q, size_of(q)),
        None => match (size_of(p), field.take()) {
            (Some(a), Some(f)) if a >= min => {
                let q = f();
                (Some(a), q, size_of(q))
            }
            (a, _) => (a, ptr::null(), None),
        },
    }
}

/// `free(a)` (NULL: nothing), then `free_tree(b)`, with one pass of the fast protocol when both
/// are leaves of the current heap (a structure and the array it points to, in that order).
///
/// # Safety
/// As [`free`] for `a` and [`free_tree`] for `b`.
#[inline]
pub(crate) unsafe fn free_then_tree(a: *mut u8, b: *mut u8) {
    // SAFETY: forwarded caller guarantee; anything but a live block start is refused untouched.
    let done = fast!(|r, s| {
        // The region first: NapUtil structures and arrays live there (hand-built ones may not).
        // SAFETY: forwarded caller guarantee for `a`; anything but a live block start is refused.
        let da = a.is_null() || unsafe { r.try_free_leaf_plain(a) || r.try_pop_tail(a) } || s.try_free(a);
        // SAFETY: forwarded caller guarantee for `b`; anything but a live block start is refused.
        Some((da, da && (unsafe { r.try_free_leaf_plain(b) } || s.try_free(b))))
    });
    let (da, db) = done.unwrap_or((false, false));
    // SAFETY: forwarded caller guarantee; `a` first, so a child `a` is not freed with `b`.
    unsafe {
        if !da {
            free(a);
        }
        if !db {
            free_tree(b);
        }
    }
}

/// [`Region::tail_pair`] in the current heap, with the tail's end (`None`: not known without a
/// lookup).
#[inline]
pub(crate) fn tail_pair(p: *const u8) -> Option<(usize, *mut u8, usize, *const u8)> {
    fast!(|r| r.tail_pair(p).map(|(size, q, q_size)| (size, q, q_size, r.tail_end())))
}

/// [`Region::try_free_tail_to`] in the current heap: `false` (nothing done) unless `p` is still
/// the root of its pending tail and the tail still ends at `end`.
///
/// # Safety
/// As [`free_tree`] for `p`.
#[inline]
pub(crate) unsafe fn try_free_tail_to(p: *const u8, end: *const u8) -> bool {
    // SAFETY: forwarded caller guarantee; anything else is refused untouched. Task-heap regions
    // never scrub.
    fast!(|r| unsafe { r.try_free_tail_to(p, end) }.then_some(())).is_some()
}

/// [`Region::try_alloc_pair`] in the current heap, lock-free, never calling out: `None`
/// (nothing allocated) when it cannot be done from memory at hand or the heap needs attention
/// (the caller then takes [`alloc_with_child`]).
#[inline]
pub(crate) fn try_alloc_pair(size: usize, child: usize) -> Option<(NonNull<u8>, NonNull<u8>)> {
    fast!(|r| r.try_alloc_pair(size, child))
}

/// [`free`] of an embedded block by a NapUtil `Free*` function: such a block is often the
/// newest of the pending tail (the structure and its arrays were allocated together and are
/// freed together), which this frees lock-free too (`Region::try_pop_tail`).
///
/// # Safety
/// As [`free`].
#[inline]
pub(crate) unsafe fn free_embedded(p: *mut u8) -> bool {
    // SAFETY: forwarded caller guarantee; anything but a live block start is refused untouched.
    if fast!(|r, s| (unsafe { r.try_free_leaf_plain(p) || r.try_pop_tail(p) } || s.try_free(p)).then_some(())).is_some()
    {
        return true;
    }
    // SAFETY: forwarded caller guarantee.
    unsafe { free_slow(p, false) }
}

/// [`alloc_child`] past its fast path.
#[cold]
#[inline(never)]
fn alloc_child_slow(parent: NonNull<u8>, size: usize) -> Option<NonNull<u8>> {
    let Ok(l) = Layout::from_size_align(size, ALIGN) else {
        return failed();
    };
    match with_heap_of(parent.as_ptr(), |r, s| child_in(r, s, parent, l)) {
        Ok(Ok(p)) => Some(p),
        Ok(Err(e @ (Error::NotABlock | Error::ForeignPointer))) => {
            bad("alloc_child", parent.as_ptr(), e);
            None
        }
        Err(true) => {
            bad("alloc_child", parent.as_ptr(), Error::ForeignPointer);
            None
        }
        _ => failed(),
    }
}

/// `CoTaskMemFree`: free one block; NULL is a no-op; a bad pointer is reported and ignored.
/// Returns whether a block was freed or, for a block of a heap another thread owns, queued for
/// it. A block of a heap no thread owns (its thread exited) is freed at once, so `false` there
/// means a bad pointer too, unless another thread held that heap at the moment (then it is
/// queued, `true`, and checked when it is processed).
///
/// # Safety
/// If `p` is a live block, nothing uses it afterwards.
#[inline]
pub unsafe fn free(p: *mut u8) -> bool {
    // SAFETY: forwarded caller guarantee.
    if unsafe { free_small_fast(p) } {
        return true;
    }
    // SAFETY: forwarded caller guarantee.
    unsafe { free_rest(p, false) }
}

/// [`free`] (or [`free_tree`]) past the small arena's fast path: the region's fast path, then
/// the slow path.
///
/// # Safety
/// As [`free`].
#[inline(never)]
unsafe fn free_rest(p: *mut u8, tree: bool) -> bool {
    // SAFETY: forwarded caller guarantee.
    if unsafe { free_fast(p) } {
        return true;
    }
    // SAFETY: forwarded caller guarantee.
    unsafe { free_slow(p, tree) }
}

/// Free `p` and every block recorded as its embedded pointer, recursively. Returns what [`free`]
/// returns.
///
/// # Safety
/// If `p` is a live block, nothing uses it or its embedded blocks afterwards.
#[inline]
pub unsafe fn free_tree(p: *mut u8) -> bool {
    // A block without children is its whole tree.
    // SAFETY: forwarded caller guarantee.
    if unsafe { free_small_fast(p) } {
        return true;
    }
    // SAFETY: forwarded caller guarantee.
    unsafe { free_rest(p, true) }
}

/// [`free`] (or, with `tree`, [`free_tree`]) past its fast path (for callers that tried
/// [`free_fast`] already).
///
/// # Safety
/// As [`free`].
#[inline]
pub(crate) unsafe fn free_slow(p: *mut u8, tree: bool) -> bool {
    // Another block of the heap this thread last freed into (see `Outbox`): no registry search,
    // and no stack frame of the rest of the slow path (inlined into the callers).
    if OUTBOX.try_with(|o| o.add_to_last(p, tree)).unwrap_or(false) {
        return true;
    }
    // SAFETY: forwarded caller guarantee.
    unsafe { free_slow_rest(p, tree) }
}

/// [`free_slow`] past the outbox's hint.
///
/// # Safety
/// As [`free`].
#[cold]
#[inline(never)]
unsafe fn free_slow_rest(p: *mut u8, tree: bool) -> bool {
    let Some(nn) = NonNull::new(p) else {
        return false;
    };
    let what = if tree { "free_tree" } else { "CoTaskMemFree" };
    // No task heap has a block that is not `ALIGN`-aligned (regions and small arenas alike), and
    // the remote queues rely on it (`tag`): refuse a misaligned pointer here, whoever owns it.
    if p as usize % ALIGN != 0 {
        bad(what, p, if find_heap(p).is_some() { Error::NotABlock } else { Error::ForeignPointer });
        return false;
    }
    if let Some(h) = own_heap_of(p) {
        // SAFETY: the caller of `free` gave the block up; anything else is refused untouched.
        if fenced(h, |r, s| (s.try_free(p) || unsafe { r.try_free_leaf_plain(p) }).then_some(())).is_some() {
            return true;
        }
        // SAFETY: forwarded caller guarantee; a bad pointer is refused without being touched.
        let r = with_own(h, |r, s| unsafe { free_in(r, s, nn, tree) });
        return match r {
            Some(Ok(())) => true,
            Some(Err(_)) => {
                BAD.fetch_add(1, Ordering::Relaxed); // the region logged it
                false
            }
            None => {
                // Re-entered while this thread holds a heap: do it later, as a remote free.
                // SAFETY: a node of ours, given up.
                unsafe {
                    let node = one_free(h, p, tree);
                    h.remote.push(node, node);
                }
                h.attention.fetch_or(REMOTE, Ordering::SeqCst);
                true
            }
        };
    }
    match find_heap(p) {
        Some(h) => remote_free(h, p, tree),
        None => {
            bad(what, p, Error::ForeignPointer);
            false
        }
    }
}

/// `CoTaskMemRealloc`: NULL `p` allocates; size 0 frees and returns NULL; a failed grow returns
/// NULL and leaves `p` valid; a bad pointer returns NULL and is reported. The block stays in its
/// heap (whichever thread owns it), keeping its embedded-pointer records.
///
/// # Safety
/// If the block moves, nothing uses the old pointer afterwards.
pub unsafe fn realloc(p: *mut u8, size: usize) -> *mut u8 {
    let Some(nn) = NonNull::new(p) else {
        return alloc(size).map_or(ptr::null_mut(), NonNull::as_ptr);
    };
    if size == 0 {
        // SAFETY: forwarded caller guarantee.
        unsafe { free(p) };
        return ptr::null_mut();
    }
    // SAFETY: forwarded caller guarantee; a bad pointer is refused without being touched.
    match with_heap_of(p, |r, s| unsafe { realloc_in(r, s, nn, size) }) {
        Ok(Ok(q)) => q.as_ptr(),
        Ok(Err(Error::NotABlock | Error::ForeignPointer)) => {
            BAD.fetch_add(1, Ordering::Relaxed); // the region logged it
            ptr::null_mut()
        }
        Err(true) => {
            bad("CoTaskMemRealloc", p, Error::ForeignPointer);
            ptr::null_mut()
        }
        _ => failed().unwrap_or(ptr::null_mut()),
    }
}

/// The requested size of a live block (`IMalloc::GetSize`), `None` for anything else.
#[inline]
pub fn size_of(p: *const u8) -> Option<usize> {
    let nn = NonNull::new(p as *mut u8)?;
    // A query waits for pending remote frees (the slow path drains them): a block another
    // thread freed is not reported live.
    if let Some(r) = fast!(|r, s| query(r, s, p)) {
        return r;
    }
    size_of_slow(nn)
}

/// [`size_of`] past its fast path: another heap's block, pending remote frees, or not a block.
#[cold]
#[inline(never)]
fn size_of_slow(p: NonNull<u8>) -> Option<usize> {
    with_heap_of(p.as_ptr(), |r, s| query_held(r, s, p.as_ptr()).flatten()).ok().flatten()
}

/// `IMalloc::DidAlloc`: 1 for a live block start, 0 for anything else, -1 for NULL.
pub fn did_alloc(p: *const u8) -> i32 {
    let Some(nn) = NonNull::new(p as *mut u8) else {
        return -1;
    };
    // As in `size_of`: pending remote frees are done first.
    if let Some(r) = fast!(|r, s| query(r, s, p).map(|q| q.is_some())) {
        return r as i32;
    }
    did_alloc_slow(nn)
}

/// [`did_alloc`] past its fast path.
#[cold]
#[inline(never)]
fn did_alloc_slow(p: NonNull<u8>) -> i32 {
    with_heap_of(p.as_ptr(), |r, s| query_held(r, s, p.as_ptr()).flatten().is_some()).unwrap_or(false) as i32
}

/// `IMalloc::HeapMinimize`: give unused committed memory back to the OS. A region or small
/// arena that holds no block (whoever owns its heap: a running thread's heap whose blocks were
/// all freed too) is reset and decommitted entirely. One that still holds blocks decommits what
/// lies past its last one, and lets the OS take back every other whole page that no live block
/// overlaps (`Region::purge_free`, `Small::purge_free`: resident memory drops, the pages stay
/// committed and are handed out again without a commit).
pub fn heap_minimize() {
    flush_outbox();
    TRIMS.fetch_add(1, Ordering::Relaxed);
    for h in heaps() {
        let own = own_heaps().any(|o| ptr::eq(o, h));
        if let Some(held) = Held::acquire(h, own) {
            held.drain();
            let (r, s) = held.both();
            // Nothing is live, and the owner (if any) is kept out by the lock (module doc) and
            // holds no state of the region between its operations: forgetting the freed slots
            // loses nothing, and lets the trim below reach every page.
            if r.live_blocks() == 0 {
                r.reset();
            }
            let _ = r.trim(0);
            r.purge_free();
            if !s.trim_if_empty() {
                s.purge_free();
            }
            drop(held);
        }
    }
}

/// Add the counters of one heap (its region and small arena) to `s`. The region's proxies of
/// small blocks with children are not user blocks (they hold no bytes).
fn add_stats(s: &mut HeapStats, r: &Region, small: &Small) {
    let rs = r.stats();
    let (blocks, bytes, proxies) = small.live();
    let (committed, reserved) = small.memory();
    s.live_blocks += (rs.live_blocks - proxies + blocks) as u64;
    s.live_bytes += (rs.live_bytes + bytes) as u64;
    s.committed_bytes += (rs.committed + committed) as u64;
    s.reserved_bytes += (rs.reserved + reserved) as u64;
}

/// Counters of the task heap: every heap's region, read through the protocol (frees queued for
/// a heap are done first).
///
/// The small blocks are counted by reading each small arena's granule map, which is what the
/// fast paths keep instead of a counter: O(the arenas' high-water marks), holding each heap's
/// lock meanwhile (microseconds for the usual few hundred KiB per thread, about a millisecond per
/// full 64 MiB arena). A statistic for a dashboard, not for a hot loop.
pub fn stats() -> HeapStats {
    flush_outbox();
    let mut s = HeapStats {
        bad_pointers: BAD.load(Ordering::Relaxed),
        failed_allocations: FAILED.load(Ordering::Relaxed),
        trims: TRIMS.load(Ordering::Relaxed),
        ..HeapStats::default()
    };
    for h in heaps() {
        let own = own_heaps().any(|o| ptr::eq(o, h));
        if let Some(held) = Held::acquire(h, own) {
            // Frees queued for the heap count as done (they are, as far as callers know).
            held.drain();
            let (r, small) = held.both();
            add_stats(&mut s, r, small);
        }
    }
    s
}

/// Counters of the calling thread's current heap alone (its innermost scope, else its own
/// heap, which is created or adopted now if the thread has none yet; an adopted heap may hold
/// blocks of the thread that abandoned it). Remote frees queued for it are done first. Other
/// threads' allocations do not change these counters.
pub fn thread_stats() -> HeapStats {
    flush_outbox();
    let mut s = HeapStats::default();
    if let Ok(h) = cur_heap() {
        let _ = with_own(h, |r, small| add_stats(&mut s, r, small));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Request scopes
// ---------------------------------------------------------------------------------------------

/// An active request scope of the calling thread. Dropping it leaves the scope: every block
/// allocated in it that is still live is freed at once (the scope's region is reset in O(1)), and
/// pointers into it are dead from then on. `!Send`: a scope is left on the thread that entered it.
#[derive(Debug)]
pub struct ScopeGuard {
    heap: &'static Heap,
    _not_send: PhantomData<*mut ()>,
}

/// Start a request scope on the calling thread: until the guard is dropped, the thread's task
/// heap allocations come from the scope's own region.
pub fn enter_scope() -> Result<ScopeGuard, Error> {
    let h = enter_raw()?;
    Ok(ScopeGuard { heap: h, _not_send: PhantomData })
}

/// Run `f` in a request scope; everything it leaks in the task heap is freed when it returns.
pub fn scope<R>(f: impl FnOnce() -> R) -> Result<R, Error> {
    let guard = enter_scope()?;
    let r = f();
    drop(guard);
    Ok(r)
}

impl ScopeGuard {
    /// Leave the scope now; `Err` (and nothing changed) if it is not the thread's innermost.
    pub fn leave(self) -> Result<(), Error> {
        let r = leave_raw(self.heap);
        if r.is_ok() {
            core::mem::forget(self);
        }
        r
    }

    /// The C handle of this scope (what `NapallocScopeEnter` hands out).
    pub fn handle(&self) -> *mut NapallocScope {
        self.heap as *const Heap as *mut NapallocScope
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        // Not the innermost (guards dropped out of order): unlink it from the chain instead.
        if leave_raw(self.heap).is_err() {
            leave_unlinked(self.heap);
        }
    }
}

/// `NapallocScopeEnter`: enter a scope; its heap is the opaque C handle.
pub(crate) fn enter_handle() -> Result<*mut NapallocScope, Error> {
    enter_raw().map(|h| h as *const Heap as *mut NapallocScope)
}

/// `NapallocScopeLeave`: leave the scope `handle` if it is the calling thread's innermost;
/// `Err(InvalidLayout)` (nothing changed) otherwise, also for a handle of another thread. The
/// handle is compared, never dereferenced, unless it is the thread's current scope.
pub(crate) fn leave_handle(handle: *const NapallocScope) -> Result<(), Error> {
    leave_raw(handle.cast())
}

/// Enter a scope; returns its heap.
fn enter_raw() -> Result<&'static Heap, Error> {
    if IN_SLOW.with(Cell::get) || EXITED.with(Cell::get) {
        return Err(Error::OutOfMemory);
    }
    // The thread's own heap first, so that the scope chain always ends there.
    let home = cur_heap().map_err(|_| Error::OutOfMemory)?;
    let cache = scope_cache();
    // This thread's last scope heap first; then the cache; then any idle scope heap (the cache
    // may have overflowed); then a new one.
    let spare = SPARE.with(|s| s.replace(ptr::null()));
    // SAFETY: heaps are never freed.
    let spare = (!spare.is_null()).then(|| unsafe { &*spare });
    let mut candidates =
        spare.into_iter().chain(core::iter::from_fn(|| cache.pop())).chain(heaps().filter(|h| h.scope));
    let h = match candidates.find(|h| claim_idle(h)) {
        Some(h) => h,
        None => {
            IN_SLOW.with(|s| s.set(true));
            let h = new_heap(OWNED, true);
            IN_SLOW.with(|s| s.set(false));
            h.ok_or(Error::OutOfMemory)?
        }
    };
    // `cur_heap` above made sure the thread has a heap: `CUR` is a real heap.
    h.outer.set(real(cur::get()).unwrap_or(home));
    cur::set(h);
    Ok(h)
}

fn scope_cache() -> &'static ArrayQueue<&'static Heap> {
    SCOPES.get_or_init(|| ArrayQueue::new(SCOPE_CACHE))
}

/// Make an idle scope heap ours.
fn claim_idle(h: &'static Heap) -> bool {
    if h.state.load(Ordering::Relaxed) != IDLE || !h.lock.try_lock() {
        return false;
    }
    let idle = h.state.load(Ordering::Relaxed) == IDLE;
    if idle {
        h.state.store(OWNED, Ordering::SeqCst);
    }
    h.lock.unlock();
    idle
}

/// Leave the innermost scope `h` of this thread: reset its region and put it in the cache.
/// `Err(InvalidLayout)` (nothing changed) if `h` is not the thread's innermost scope.
fn leave_raw(h: *const Heap) -> Result<(), Error> {
    // Compared as a raw pointer, not made a reference, until it is known to be this thread's
    // current heap: a handle from C may be any address, misaligned or unmapped.
    if !ptr::eq(h, cur::get()) || ptr::eq(h, HOME.with(Cell::get)) {
        return Err(Error::InvalidLayout);
    }
    let Some(h) = real(h) else {
        return Err(Error::InvalidLayout);
    };
    let held = Held::acquire(h, true).ok_or(Error::InvalidLayout)?;
    cur::set(h.outer.get());
    retire(h, held);
    Ok(())
}

/// Leave a scope that is not the innermost: take it out of the chain, then retire it.
fn leave_unlinked(h: &'static Heap) {
    let mut inner: Option<&'static Heap> = None;
    for o in own_heaps() {
        if ptr::eq(o, h) {
            let Some(held) = Held::acquire(h, true) else { return };
            match inner {
                Some(i) => i.outer.set(h.outer.get()),
                None => cur::set(h.outer.get()),
            }
            retire(h, held);
            return;
        }
        inner = Some(o);
    }
}

/// Reset a scope heap we hold, mark it idle and cache it.
fn retire(h: &'static Heap, held: Held) {
    let r = held.region();
    r.reset();
    // Frees queued for the scope's blocks are moot now: every block is gone. Batches still in
    // other threads' outboxes carry the old generation and are dropped when they arrive.
    h.gen.fetch_add(1, Ordering::Relaxed);
    let first = h.remote.take();
    if !first.is_null() {
        let mut last = first;
        // SAFETY: `take` made every node of the list ours.
        while let Some(next) = NonNull::new(unsafe { (*last).next }) {
            last = next.as_ptr();
        }
        // SAFETY: the list we took: ours, given back as spares.
        unsafe { h.spare.push(first, last) };
    }
    h.attention.fetch_and(!REMOTE, Ordering::SeqCst);
    h.outer.set(ptr::null());
    h.state.store(IDLE, Ordering::SeqCst);
    drop(held);
    if SPARE.with(Cell::get).is_null() && !EXITED.with(Cell::get) {
        SPARE.with(|s| s.set(h));
        return;
    }
    if scope_cache().push(h).is_err() {
        // Cache full: the heap stays registered and idle (`enter_raw` finds it by a scan of the
        // registry); give its memory back meanwhile.
        if let Some(held) = Held::acquire(h, false) {
            if held.region().trim(0).is_ok() {
                TRIMS.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Small versions of `tests/task_heap*.rs`, so that Miri runs the protocol too
    //! (`cargo miri test --lib`): other tests share the process, so only per-thread books are
    //! checked exactly.
    use super::*;
    use std::thread;

    /// A block pointer handed to another thread (keeps its provenance, for Miri).
    #[derive(Clone, Copy, Debug)]
    struct P(*mut u8);
    // SAFETY: a block of the task heap may be used and freed by any thread.
    unsafe impl Send for P {}

    fn mine() -> u64 {
        thread_stats().live_blocks
    }

    #[test]
    fn remote_frees_foreign_queries_and_reallocs() {
        // Checked block by block: a thread-wide count could move under us, because a test
        // thread may adopt an abandoned heap whose blocks other test threads are still freeing.
        let blocks: Vec<P> = (0..20).map(|i| P(alloc(16 + i * 8).unwrap().as_ptr())).collect();
        let addrs: Vec<usize> = blocks.iter().map(|b| b.0 as usize).collect();
        let moved = thread::spawn(move || {
            let mut moved = P(ptr::null_mut());
            for (i, &P(p)) in blocks.iter().enumerate() {
                assert_eq!(size_of(p), Some(16 + i * 8));
                assert_eq!(did_alloc(p), 1);
                assert_eq!(did_alloc(p.wrapping_add(4)), 0);
                if i % 5 == 0 {
                    // SAFETY: handed over; not used after it moves.
                    let q = unsafe { realloc(p, 2000) };
                    assert!(!q.is_null());
                    if !moved.0.is_null() {
                        // SAFETY: the previous reallocated block, freed once.
                        assert!(unsafe { free(moved.0) });
                    }
                    moved = P(q);
                } else {
                    // SAFETY: handed over, freed once.
                    assert!(unsafe { free(p) });
                }
            }
            moved
        })
        .join()
        .unwrap();
        assert_eq!(size_of(moved.0), Some(2000), "reallocated in its own heap");
        heap_minimize(); // drains every heap's queue of remote frees
        for (i, &a) in addrs.iter().enumerate() {
            // 2000 bytes is another size class: no original slot was reused by the reallocs
            assert_eq!(did_alloc(ptr::without_provenance(a)), 0, "block {i} was freed remotely and drained");
        }
        // SAFETY: live, freed once.
        assert!(unsafe { free(moved.0) });
        assert_eq!(did_alloc(moved.0), 0);
    }

    #[test]
    fn the_fused_naputil_operations_match_their_parts() {
        // alloc_with_child: the child is recorded under the block (free_tree frees both).
        let (s, c) = alloc_with_child(16, 64).unwrap();
        let c = c.unwrap();
        assert_eq!((size_of(s.as_ptr()), size_of(c.as_ptr())), (Some(16), Some(64)));
        // SAFETY: live blocks of 16 and 64 bytes: the structure points to the array.
        unsafe { s.as_ptr().cast::<*mut u8>().write(c.as_ptr()) };
        // SAFETY: called only while `s` is a live 16-byte block (`size_of_pair` checks it first).
        let read = || unsafe { s.as_ptr().cast::<*const u8>().read() };
        assert_eq!(size_of_pair(s.as_ptr(), 16, read), (Some(16), c.as_ptr().cast_const(), Some(64)));
        // Too small for the structure: the field is not read.
        let never = || -> *const u8 { unreachable!("read of a block smaller than its structure") };
        assert_eq!(size_of_pair(s.as_ptr(), 17, never), (Some(16), ptr::null(), None));
        assert_eq!(size_of_pair(ptr::null(), 0, never), (None, ptr::null(), None));
        assert_eq!(size_of_pair(s.as_ptr().wrapping_add(4), 0, never), (None, ptr::null(), None), "interior");
        // An array in another thread's heap: found by the general query.
        let far = thread::spawn(|| P(alloc(40).unwrap().as_ptr())).join().unwrap();
        // SAFETY: as above.
        unsafe { s.as_ptr().cast::<*mut u8>().write(far.0) };
        assert_eq!(size_of_pair(s.as_ptr(), 16, read), (Some(16), far.0.cast_const(), Some(40)));
        // free_then_tree: the first block alone, then the second with its tree.
        // SAFETY: `far` and `s` (with its recorded child `c`) are live and freed once.
        unsafe { free_then_tree(far.0, s.as_ptr()) };
        flush_remote_frees();
        assert_eq!((did_alloc(s.as_ptr()), did_alloc(c.as_ptr())), (0, 0), "the tree went with it");
        heap_minimize(); // delivers and drains the remote free of `far`
        assert_eq!(did_alloc(far.0), 0);
        // NULL first: only the second; a refused second changes nothing.
        let (t, _) = alloc_with_child(16, 0).unwrap();
        let bad_before = stats().bad_pointers;
        // SAFETY: live, freed once; then a freed pointer, refused.
        unsafe {
            free_then_tree(ptr::null_mut(), t.as_ptr());
            free_then_tree(ptr::null_mut(), t.as_ptr());
        }
        assert_eq!(did_alloc(t.as_ptr()), 0);
        assert!(stats().bad_pointers > bad_before, "the double free was reported");
    }

    #[test]
    fn blocks_survive_their_thread() {
        let (a, b) = thread::spawn(|| {
            let a = alloc(40).unwrap();
            let b = alloc_child(a, 24).unwrap();
            (P(a.as_ptr()), P(b.as_ptr()))
        })
        .join()
        .unwrap();
        assert_eq!(size_of(a.0), Some(40));
        assert_eq!(size_of(b.0), Some(24));
        // SAFETY: live; the tree goes with it.
        assert!(unsafe { free_tree(a.0) });
        assert_eq!(did_alloc(b.0), 0, "freed with its parent, at once");
    }

    #[test]
    fn scopes_reset_on_leave() {
        let before = mine();
        let leaked = scope(|| {
            let p = alloc(100).unwrap();
            assert_eq!(mine(), 1, "the scope's own region");
            p.as_ptr()
        })
        .unwrap();
        assert_eq!(did_alloc(leaked), 0);
        assert_eq!(mine(), before);
        let g = enter_scope().unwrap();
        let h = enter_handle().unwrap();
        assert_eq!(leave_handle(g.handle()), Err(Error::InvalidLayout), "not the innermost");
        assert_eq!(leave_handle(h), Ok(()));
        g.leave().unwrap();
    }
}
