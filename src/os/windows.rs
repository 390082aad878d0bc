//! Windows backend of the page layer (see `os/mod.rs` for the contract).
//!
//! # References
//! * VirtualAlloc: `MEM_RESERVE` with `PAGE_NOACCESS` reserves in units of the allocation
//!   granularity (64 KiB); `MEM_COMMIT` commits in pages, committed pages read as zero, and
//!   committing an already committed page succeeds.
//! * VirtualFree: `MEM_DECOMMIT` for a range, `MEM_RELEASE` with size 0 for the whole reservation.
//! * GetSystemInfo: `dwPageSize`, `dwAllocationGranularity`.

use super::{debug_check_range, reservation_size, OsConfig};
use crate::Error;
use core::ptr::NonNull;
use windows_sys::Win32::Foundation::GetLastError;
use windows_sys::Win32::System::Memory::{
    VirtualAlloc, VirtualFree, MEM_COMMIT, MEM_DECOMMIT, MEM_RELEASE, MEM_RESERVE, MEM_RESET, PAGE_NOACCESS,
    PAGE_READWRITE,
};
use windows_sys::Win32::System::SystemInformation::{GetSystemInfo, GlobalMemoryStatusEx, MEMORYSTATUSEX, SYSTEM_INFO};

pub(super) fn query_config() -> OsConfig {
    // SAFETY: SYSTEM_INFO is plain data; GetSystemInfo fills it and cannot fail.
    let info = unsafe {
        let mut info: SYSTEM_INFO = core::mem::zeroed();
        GetSystemInfo(&mut info);
        info
    };
    OsConfig {
        page_size: info.dwPageSize as usize,
        granularity: info.dwAllocationGranularity as usize,
        has_virtual_reserve: true,
        backend: "VirtualAlloc",
    }
}

/// See `super::memory_load`: `GlobalMemoryStatusEx`'s `dwMemoryLoad` and `ullAvailPhys`.
pub(super) fn memory_load() -> Option<(u32, usize)> {
    // SAFETY: MEMORYSTATUSEX is plain data; `dwLength` is set as the API requires and the call
    // only writes into the struct we own.
    let status = unsafe {
        let mut status: MEMORYSTATUSEX = core::mem::zeroed();
        status.dwLength = core::mem::size_of::<MEMORYSTATUSEX>() as u32;
        if GlobalMemoryStatusEx(&mut status) == 0 {
            return None;
        }
        status
    };
    Some((status.dwMemoryLoad.min(100), usize::try_from(status.ullAvailPhys).unwrap_or(usize::MAX)))
}

fn last_error() -> Error {
    // SAFETY: GetLastError only reads the calling thread's last-error value.
    match unsafe { GetLastError() } {
        8 | 14 | 1455 => Error::OutOfMemory, // NOT_ENOUGH_MEMORY, OUTOFMEMORY, COMMITMENT_LIMIT
        code => Error::Os(code as i32),
    }
}

/// A reserved range of address space (see the module contract in `os/mod.rs`).
#[derive(Debug)]
pub struct Reservation {
    // Invariant: `base` is the address VirtualAlloc(MEM_RESERVE) returned for `len` bytes; it is
    // released exactly once, in `drop`.
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the reservation is address space owned by this value; the `&self` methods only issue
// VirtualAlloc/VirtualFree calls, which the kernel serializes.
unsafe impl Send for Reservation {}
// SAFETY: as above.
unsafe impl Sync for Reservation {}

impl Reservation {
    /// Reserve at least `len` bytes (rounded up to the 64 KiB allocation granularity).
    pub fn new(len: usize) -> Result<Self, Error> {
        let len = reservation_size(len)?;
        // SAFETY: reserving fresh address space has no preconditions.
        let p = unsafe { VirtualAlloc(core::ptr::null(), len, MEM_RESERVE, PAGE_NOACCESS) };
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(last_error)?;
        Ok(Reservation { base, len })
    }

    /// The first byte of the reservation (aligned to the allocation granularity).
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
        self.len
    }

    /// Commit `[offset, offset + len)`.
    ///
    /// # Safety
    /// `offset` and `len` are page-aligned and the range lies inside the reservation.
    pub unsafe fn commit(&self, offset: usize, len: usize) -> Result<(), Error> {
        debug_check_range(self.len, offset, len);
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the caller guarantees the range is inside our reservation.
        let p = unsafe { VirtualAlloc(self.base.as_ptr().add(offset).cast(), len, MEM_COMMIT, PAGE_READWRITE) };
        if p.is_null() {
            Err(last_error())
        } else {
            Ok(())
        }
    }

    /// Decommit `[offset, offset + len)`; it reads as zero once committed again.
    ///
    /// # Safety
    /// As for [`commit`](Self::commit), and no live reference points into the range.
    pub unsafe fn decommit(&self, offset: usize, len: usize) -> Result<(), Error> {
        debug_check_range(self.len, offset, len);
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the range is inside our reservation and unreferenced (caller's guarantee).
        if unsafe { VirtualFree(self.base.as_ptr().add(offset).cast(), len, MEM_DECOMMIT) } == 0 {
            Err(last_error())
        } else {
            Ok(())
        }
    }

    /// Let the OS take back the pages of a committed range whose contents are no longer needed
    /// (`MEM_RESET`: they are not written to the paging file and may be reused at once); the
    /// range stays committed and accessible, and reads as zero or as its old contents.
    ///
    /// # Safety
    /// As for [`decommit`](Self::decommit): the range is committed and nothing refers into it.
    pub unsafe fn purge(&self, offset: usize, len: usize) -> Result<(), Error> {
        debug_check_range(self.len, offset, len);
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the range is inside our reservation, committed and unreferenced (caller's
        // guarantee); MEM_RESET changes no protection and no commit.
        let p = unsafe { VirtualAlloc(self.base.as_ptr().add(offset).cast(), len, MEM_RESET, PAGE_READWRITE) };
        if p.is_null() {
            Err(last_error())
        } else {
            Ok(())
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: `base` came from VirtualAlloc(MEM_RESERVE) and is released exactly once.
        let ok = unsafe { VirtualFree(self.base.as_ptr().cast(), 0, MEM_RELEASE) };
        debug_assert!(ok != 0, "VirtualFree(MEM_RELEASE) failed");
    }
}
