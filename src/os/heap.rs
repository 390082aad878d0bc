//! Plain-heap backend of the page layer, used under Miri (and on platforms with neither mmap nor
//! VirtualAlloc). See `os/mod.rs` for the contract.
//!
//! The whole reservation is one zeroed heap allocation, so a "reservation" really costs memory:
//! keep reservations small under Miri. Commit is bookkeeping only; decommit zeroes the range,
//! which is exactly what a recommitted page must read as.

use super::{debug_check_range, reservation_size, OsConfig};
use crate::Error;
use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};

const PAGE: usize = 4096;

pub(super) fn query_config() -> OsConfig {
    OsConfig { page_size: PAGE, granularity: PAGE, has_virtual_reserve: false, backend: "heap" }
}

/// See `super::memory_load`: the heap backend does not know the machine's memory load.
pub(super) fn memory_load() -> Option<(u32, usize)> {
    None
}

/// A reserved range (here: a zeroed heap allocation). See `os/mod.rs`.
#[derive(Debug)]
pub struct Reservation {
    // Invariant: `base` came from `alloc_zeroed(layout)` and is freed only in `drop`.
    base: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the allocation is owned by the reservation; `&self` methods only write through raw
// pointers into ranges the caller owns (see the contract).
unsafe impl Send for Reservation {}
// SAFETY: as above.
unsafe impl Sync for Reservation {}

impl Reservation {
    /// Reserve at least `len` bytes.
    pub fn new(len: usize) -> Result<Self, Error> {
        let len = reservation_size(len)?;
        let layout = Layout::from_size_align(len, PAGE).map_err(|_| Error::TooLarge)?;
        if len > isize::MAX as usize / 2 {
            return Err(Error::OutOfMemory);
        }
        // SAFETY: `layout` has a non-zero size.
        let base = NonNull::new(unsafe { alloc_zeroed(layout) }).ok_or(Error::OutOfMemory)?;
        Ok(Reservation { base, layout })
    }

    /// The first byte of the reservation.
    #[inline]
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// Always false: a reservation is never empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The reserved length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Make a range usable (bookkeeping only in this backend).
    ///
    /// # Safety
    /// `offset` and `len` are page-aligned and the range lies inside the reservation.
    pub unsafe fn commit(&self, offset: usize, len: usize) -> Result<(), Error> {
        debug_check_range(self.len(), offset, len);
        Ok(())
    }

    /// Forget a range's contents: it reads as zero afterwards.
    ///
    /// # Safety
    /// As for [`commit`](Self::commit), and no live reference points into the range.
    pub unsafe fn decommit(&self, offset: usize, len: usize) -> Result<(), Error> {
        debug_check_range(self.len(), offset, len);
        // SAFETY: the range is inside our allocation and unreferenced (caller's guarantee).
        unsafe { self.base.as_ptr().add(offset).write_bytes(0, len) };
        Ok(())
    }

    /// "Return" a committed range's pages while it stays committed: its contents are zeroed, as
    /// Linux's `MADV_DONTNEED` leaves them.
    ///
    /// # Safety
    /// As for [`decommit`](Self::decommit).
    pub unsafe fn purge(&self, offset: usize, len: usize) -> Result<(), Error> {
        debug_check_range(self.len(), offset, len);
        // SAFETY: the range is inside our allocation and unreferenced (caller's guarantee).
        unsafe { self.base.as_ptr().add(offset).write_bytes(0, len) };
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: `base` was allocated with `layout` in `new` and is freed exactly once, here.
        unsafe { dealloc(self.base.as_ptr(), self.layout) }
    }
}
