//! Status codes, the per-thread last error message, and the guard every entry point runs in:
//! it catches panics, so a Rust panic never unwinds into C or aborts the host.

use r1_core::{Error, ErrorCode};
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What every fallible call returns. `R1_OK` is 0; the others name what went wrong, and
/// `r1_last_error_message()` says more.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum r1_status {
    /// Success.
    R1_OK = 0,
    /// A required pointer argument was NULL.
    R1_ERROR_NULL_ARGUMENT = 1,
    /// An argument's value is unusable (a token id past the vocabulary, a bad sampling value).
    R1_ERROR_INVALID_ARGUMENT = 2,
    /// Text that must be UTF-8 is not.
    R1_ERROR_INVALID_UTF8 = 3,
    /// A file could not be found, opened or read.
    R1_ERROR_IO = 4,
    /// A file is malformed (config, weights, tokenizer).
    R1_ERROR_FORMAT = 5,
    /// A model or option r1 does not implement.
    R1_ERROR_UNSUPPORTED = 6,
    /// An output buffer is too small; the size needed was written to the length output.
    R1_ERROR_BUFFER_TOO_SMALL = 7,
    /// The tokens do not fit in the model's context.
    R1_ERROR_CONTEXT_FULL = 8,
    /// The caller stopped the work (a progress callback returned false).
    R1_ERROR_CANCELLED = 9,
    /// A chat template failed.
    R1_ERROR_TEMPLATE = 10,
    /// r1 panicked (a bug in r1); the message is kept. The handles stay valid.
    R1_ERROR_PANIC = 11,
    /// An internal error (a bug in r1).
    R1_ERROR_INTERNAL = 12,
}

impl r1_status {
    /// The status of an r1-core error code (the numbers are the same).
    pub(crate) fn of(code: ErrorCode) -> r1_status {
        match code {
            ErrorCode::InvalidArgument => r1_status::R1_ERROR_INVALID_ARGUMENT,
            ErrorCode::InvalidUtf8 => r1_status::R1_ERROR_INVALID_UTF8,
            ErrorCode::Io => r1_status::R1_ERROR_IO,
            ErrorCode::Format => r1_status::R1_ERROR_FORMAT,
            ErrorCode::Unsupported => r1_status::R1_ERROR_UNSUPPORTED,
            ErrorCode::ContextFull => r1_status::R1_ERROR_CONTEXT_FULL,
            ErrorCode::Cancelled => r1_status::R1_ERROR_CANCELLED,
            ErrorCode::Template => r1_status::R1_ERROR_TEMPLATE,
            _ => r1_status::R1_ERROR_INTERNAL,
        }
    }

    /// The name of status number `n` (what `r1_status_name` prints), if it is one.
    pub(crate) fn name_of(n: i32) -> Option<&'static std::ffi::CStr> {
        // Indexed by the status numbers, which run 0..=12 without gaps.
        const NAMES: [&std::ffi::CStr; 13] = [
            c"R1_OK",
            c"R1_ERROR_NULL_ARGUMENT",
            c"R1_ERROR_INVALID_ARGUMENT",
            c"R1_ERROR_INVALID_UTF8",
            c"R1_ERROR_IO",
            c"R1_ERROR_FORMAT",
            c"R1_ERROR_UNSUPPORTED",
            c"R1_ERROR_BUFFER_TOO_SMALL",
            c"R1_ERROR_CONTEXT_FULL",
            c"R1_ERROR_CANCELLED",
            c"R1_ERROR_TEMPLATE",
            c"R1_ERROR_PANIC",
            c"R1_ERROR_INTERNAL",
        ];
        usize::try_from(n).ok().and_then(|i| NAMES.get(i).copied())
    }
}

/// A failed call: its status and message.
pub(crate) struct Failure {
    pub status: r1_status,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(status: r1_status, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    /// A NULL where `what` is required.
    pub(crate) fn null(what: &str) -> Failure {
        Failure::new(r1_status::R1_ERROR_NULL_ARGUMENT, format!("`{what}` is NULL"))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(r1_status::R1_ERROR_INVALID_ARGUMENT, message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::new(r1_status::of(e.code()), e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A message with a NUL inside is cut there: C reads up to the first NUL anyway.
    let bytes: Vec<u8> = message.bytes().take_while(|&b| b != 0).collect();
    let c = CString::new(bytes).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// This thread's last error message; valid until this thread's next r1 call.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Runs an entry point's body: records its error message (or clears it on success) and turns
/// a panic into `R1_ERROR_PANIC` with the panic's message.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> r1_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            r1_status::R1_OK
        }
        Ok(Err(f)) => {
            set_last_error(&f.message);
            f.status
        }
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("r1 panicked (a bug in r1): {msg}"));
            r1_status::R1_ERROR_PANIC
        }
    }
}

/// Runs an infallible entry point that returns a value, with `fallback` if it panics.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(_) => {
            set_last_error("r1 panicked (a bug in r1)");
            fallback
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> String {
        // SAFETY: the last-error pointer is a NUL-terminated string owned by this thread.
        unsafe { std::ffi::CStr::from_ptr(last_error_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_with_its_message() {
        let status = guard(|| panic!("boom at the boundary"));
        assert_eq!(status, r1_status::R1_ERROR_PANIC);
        assert!(message().contains("boom at the boundary"), "{}", message());
        assert_eq!(guard(|| Ok(())), r1_status::R1_OK);
        assert_eq!(message(), "", "a success clears the message");
        assert_eq!(guard_value(7, || panic!("again")), 7);
    }

    #[test]
    fn errors_keep_their_code_and_message() {
        let status = guard(|| Err(Error::ContextFull("300 tokens in 256".into()).into()));
        assert_eq!(status, r1_status::R1_ERROR_CONTEXT_FULL);
        assert!(message().contains("300 tokens in 256"));
        // Every r1-core code has its own status, with the same number.
        for code in ErrorCode::ALL {
            assert_eq!(r1_status::of(code) as i32, code.as_i32(), "{code}");
        }
        assert_eq!(
            r1_status::name_of(r1_status::R1_ERROR_CANCELLED as i32).unwrap(),
            c"R1_ERROR_CANCELLED"
        );
        assert_eq!(
            r1_status::name_of(r1_status::R1_ERROR_INTERNAL as i32).unwrap(),
            c"R1_ERROR_INTERNAL"
        );
        assert!(r1_status::name_of(13).is_none() && r1_status::name_of(-1).is_none());
        let status = guard(|| Err(Failure::null("path")));
        assert_eq!(status, r1_status::R1_ERROR_NULL_ARGUMENT);
        assert_eq!(message(), "`path` is NULL");
    }
}
