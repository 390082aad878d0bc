//! The one error type of the crate.
//!
//! Every fallible operation returns [`Error`]; the C ABI maps it to an HRESULT with
//! [`Error::hresult`]. Errors are small `Copy` values so that the allocation paths can return them
//! without allocating.

use core::fmt;

/// HRESULT values of SPEC §2, shared by the C ABI, the host layer and the tests.
pub mod hr {
    /// An HRESULT: a 32-bit status, negative on failure.
    pub type HRESULT = i32;
    pub const S_OK: HRESULT = 0;
    pub const S_FALSE: HRESULT = 1;
    pub const E_INVALIDARG: HRESULT = 0x8007_0057_u32 as i32;
    pub const E_OUTOFMEMORY: HRESULT = 0x8007_000E_u32 as i32;
    pub const E_FAIL: HRESULT = 0x8000_4005_u32 as i32;
    pub const E_POINTER: HRESULT = 0x8000_4003_u32 as i32;
    pub const E_NOINTERFACE: HRESULT = 0x8000_4002_u32 as i32;
    pub const HOST_E_INVALIDOPERATION: HRESULT = 0x8013_1022_u32 as i32;
    pub const HOST_E_CLRNOTAVAILABLE: HRESULT = 0x8013_1023_u32 as i32;
    pub const HOST_E_TIMEOUT: HRESULT = 0x8013_1024_u32 as i32;
    pub const HOST_E_NOT_OWNER: HRESULT = 0x8013_1025_u32 as i32;
    pub const HOST_E_ABANDONED: HRESULT = 0x8013_1026_u32 as i32;
}

/// Why an operation failed. Nothing is changed when an operation returns an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The page source (OS or host) refused to reserve or commit memory.
    OutOfMemory,
    /// The request does not fit in what is left of the reservation.
    ReservationExhausted,
    /// Committing more would pass the configured limit or budget.
    LimitExceeded,
    /// The size (plus alignment) overflows or exceeds what one block may be.
    TooLarge,
    /// The alignment is not a power of two, or the layout is otherwise invalid.
    InvalidLayout,
    /// The pointer does not lie inside this allocator's memory.
    ForeignPointer,
    /// The pointer lies inside this allocator's memory but not at the start of a live block
    /// (an interior pointer, or the start of a block that was already freed).
    NotABlock,
    /// The host page source failed with this HRESULT.
    Host(i32),
    /// The operating system call failed with this raw error code.
    Os(i32),
}

impl Error {
    /// The HRESULT the C ABI reports for this error.
    pub fn hresult(self) -> hr::HRESULT {
        match self {
            Error::OutOfMemory
            | Error::ReservationExhausted
            | Error::LimitExceeded
            | Error::TooLarge
            | Error::Os(_) => hr::E_OUTOFMEMORY,
            Error::InvalidLayout | Error::ForeignPointer | Error::NotABlock => hr::E_INVALIDARG,
            Error::Host(h) => h,
        }
    }

    /// True for errors that mean "memory could not be had" (as opposed to bad input).
    pub fn is_out_of_memory(self) -> bool {
        matches!(
            self,
            Error::OutOfMemory
                | Error::ReservationExhausted
                | Error::LimitExceeded
                | Error::TooLarge
                | Error::Host(_)
                | Error::Os(_)
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::OutOfMemory => f.write_str("the page source is out of memory"),
            Error::ReservationExhausted => f.write_str("the reservation has no room for this request"),
            Error::LimitExceeded => f.write_str("the allocation limit or memory budget would be exceeded"),
            Error::TooLarge => f.write_str("the requested size is too large"),
            Error::InvalidLayout => f.write_str("invalid layout (alignment must be a power of two)"),
            Error::ForeignPointer => f.write_str("pointer was not allocated by this allocator"),
            Error::NotABlock => f.write_str("pointer is not the start of a live block (interior or already freed)"),
            Error::Host(h) => write!(f, "the host page source failed with HRESULT {:#010x}", *h as u32),
            Error::Os(e) => write!(f, "operating system error {e}"),
        }
    }
}

impl std::error::Error for Error {}
