//! Asymmetric memory barriers: a cheap side that runs often and a heavy side that runs rarely.
//!
//! A Dekker-style handshake (each side writes its own flag, then reads the other's) needs a
//! StoreLoad barrier on *both* sides. When one side runs millions of times a second (the owner of
//! a task heap) and the other almost never (a thread that needs to look into that heap), the
//! barrier can be made asymmetric: the frequent side only keeps the compiler from reordering
//! ([`light`]), and the rare side forces a full barrier onto every running thread of the process
//! ([`heavy`]). After `heavy` returns, every other thread has either not yet executed its flag
//! store (and will see ours when it reads), or its store is visible to us: exactly what the
//! handshake needs. This is the scheme of Linux's `membarrier(2)` documentation, of Folly's
//! `asymmetricLightBarrier`/`asymmetricHeavyBarrier` and of the JVM's biased locking.
//!
//! Backends:
//! * Linux: `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, after registering the process once
//!   with `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED` (Linux 4.14).
//! * Windows: `FlushProcessWriteBuffers`.
//! * Anywhere else, under Miri, or if registration fails: not available; callers then put a full
//!   `fence(SeqCst)` on the frequent side too ([`available`] says which).
//!
//! # References
//! - [membarrier(2)](https://man7.org/linux/man-pages/man2/membarrier.2.html)
//! - [FlushProcessWriteBuffers](https://learn.microsoft.com/en-us/windows/win32/api/processthreadsapi/nf-processthreadsapi-flushprocesswritebuffers)

use core::sync::atomic::{compiler_fence, AtomicU8, Ordering};

const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;

/// Whether [`heavy`] works here. Written once (by whichever thread asks first; racing writers
/// store the same answer), then only read: `UNKNOWN` before the first call, then `YES` or `NO`.
static AVAILABLE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Whether the asymmetric barrier is available; registers the process on first use. The answer
/// never changes, so a caller may choose its protocol once.
pub(crate) fn available() -> bool {
    match AVAILABLE.load(Ordering::Acquire) {
        YES => true,
        NO => false,
        _ => {
            let ok = backend::register();
            AVAILABLE.store(if ok { YES } else { NO }, Ordering::Release);
            ok
        }
    }
}

/// The frequent side: a compiler barrier only. Valid only where [`available`] returned true.
#[inline(always)]
pub(crate) fn light() {
    compiler_fence(Ordering::SeqCst);
}

/// The rare side: a full memory barrier on every running thread of the process. Valid only
/// after [`available`] returned true.
pub(crate) fn heavy() {
    debug_assert_eq!(AVAILABLE.load(Ordering::Relaxed), YES, "heavy barrier used while unavailable");
    backend::heavy();
}

#[cfg(all(any(target_os = "linux", target_os = "android"), not(miri)))]
mod backend {
    // From <linux/membarrier.h>.
    const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
    const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    fn membarrier(cmd: libc::c_long) -> libc::c_long {
        // SAFETY: membarrier(cmd, flags = 0, cpu_id = 0) reads and writes no memory of ours.
        unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_long, 0 as libc::c_long) }
    }

    pub(super) fn register() -> bool {
        let both = MEMBARRIER_CMD_PRIVATE_EXPEDITED | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED;
        let q = membarrier(MEMBARRIER_CMD_QUERY);
        q >= 0 && q & both == both && membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
    }

    pub(super) fn heavy() {
        // Registered in `register`; the command cannot fail afterwards, but if it ever did, no
        // weaker barrier here would do, so be loud.
        let r = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
        assert_eq!(
            r,
            0,
            "membarrier(PRIVATE_EXPEDITED) failed after registration: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(all(windows, not(miri)))]
mod backend {
    pub(super) fn register() -> bool {
        true
    }

    pub(super) fn heavy() {
        // SAFETY: FlushProcessWriteBuffers takes no arguments and cannot fail.
        unsafe { windows_sys::Win32::System::Threading::FlushProcessWriteBuffers() };
    }
}

#[cfg(any(miri, not(any(target_os = "linux", target_os = "android", windows))))]
mod backend {
    pub(super) fn register() -> bool {
        false
    }

    pub(super) fn heavy() {
        unreachable!("the asymmetric barrier is not available on this platform");
    }
}
