//! C values in, r1-core values out: strings, arrays, parameter structs, messages, and the
//! length convention of output buffers. Enum and bool fields that come from C are read as their
//! integer bytes and checked, so an out-of-range value is an error, never undefined behaviour.

use crate::error::{r1_status, Failure};
use std::ffi::{c_char, c_void, CStr};

/// Loading progress: return false to stop the load (then `R1_ERROR_CANCELLED`).
#[allow(non_camel_case_types)]
pub type r1_progress_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, done_bytes: u64, total_bytes: u64) -> bool>;

/// Storage dtype of a checkpoint's weights.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum r1_dtype {
    /// 32-bit floats.
    R1_DTYPE_F32 = 0,
    /// IEEE half precision.
    R1_DTYPE_F16 = 1,
    /// bfloat16.
    R1_DTYPE_BF16 = 2,
}

/// Quantization of a checkpoint's linear weights while loading.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum r1_quantize {
    /// Keep the weights as stored.
    R1_QUANTIZE_NONE = 0,
    /// ggml Q8_0 (8.5 bits per weight).
    R1_QUANTIZE_Q8_0 = 1,
    /// ggml Q4_K (4.5 bits per weight).
    R1_QUANTIZE_Q4_K = 2,
}

/// How to load a model. Get the defaults from `r1_load_params_default()`.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct r1_load_params {
    /// Compute threads; 0 = all cores. Process-wide: the first load that sets it fixes it.
    pub threads: u32,
    /// Storage dtype of a checkpoint's weights (GGUF files keep their own).
    pub dtype: r1_dtype,
    /// Quantize a checkpoint while loading.
    pub quantize: r1_quantize,
    /// Called while loading; may be NULL.
    pub progress: r1_progress_callback,
    /// Passed to `progress`.
    pub progress_user_data: *mut c_void,
}

/// The sampling chain.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy)]
pub struct r1_sampling_params {
    /// Argmax decoding (the other fields but the penalties are then ignored).
    pub greedy: bool,
    /// Temperature (> 0).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: u32,
    /// Nucleus threshold in (0, 1]; 1 = off.
    pub top_p: f32,
    /// Min-p threshold in [0, 1]; 0 = off.
    pub min_p: f32,
    /// Repetition penalty; 1 = off.
    pub repetition_penalty: f32,
    /// Presence penalty; 0 = off.
    pub presence_penalty: f32,
    /// Frequency penalty; 0 = off.
    pub frequency_penalty: f32,
    /// Seed of the sampler's generator.
    pub seed: u64,
}

/// Settings of one generation. Get the defaults from `r1_gen_params_default()`.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct r1_gen_params {
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// The sampling chain.
    pub sampling: r1_sampling_params,
    /// Stop sequences (UTF-8, NUL-terminated); may be NULL when `n_stop` is 0.
    pub stop: *const *const c_char,
    /// Number of stop sequences.
    pub n_stop: usize,
    /// Thinking budget in tokens; -1 = none.
    pub max_reasoning_tokens: i32,
    /// Whether the output starts inside `<think>`: -1 = from the prompt, 0 = no, 1 = yes.
    pub starts_in_reasoning: i32,
    /// Log-probabilities per generated token: 0 = none, k (1 to 20) = the k most likely
    /// tokens' (what `r1_distill_write_last` writes).
    pub top_logprobs: u32,
    /// A step verifier, NULL for none: called at each reasoning step (see `r1_step_verifier`).
    pub verifier: r1_step_verifier,
    /// Passed to `verifier` as is.
    pub verifier_user_data: *mut c_void,
    /// How many times a rejected step is sampled again (at most 64).
    pub max_step_retries: u32,
    /// Strings that end a reasoning step for the verifier (UTF-8, NUL-terminated), besides
    /// the step markers ("Wait", ...); NULL with 0 = a blank line.
    pub step_separators: *const *const c_char,
    /// Number of step separators.
    pub n_step_separators: usize,
}

/// A step verifier: called with a reasoning step's text (`step_len` bytes of UTF-8, not
/// NUL-terminated) and the reasoning up to its end, on the generating thread, during the call
/// only. Returns an `r1_verdict`: `R1_VERDICT_ACCEPT`, `R1_VERDICT_REJECT` (sample the step
/// again) or `R1_VERDICT_STOP` (close the reasoning after it); any other value accepts.
#[allow(non_camel_case_types)]
pub type r1_step_verifier = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        step: *const c_char,
        step_len: usize,
        reasoning: *const c_char,
        reasoning_len: usize,
    ) -> i32,
>;

/// A C verifier callback and its user data, as r1-core's closure.
struct CVerifier {
    check: unsafe extern "C" fn(*mut c_void, *const c_char, usize, *const c_char, usize) -> i32,
    user_data: *mut c_void,
}

// SAFETY: the generation that holds the verifier runs inside the C call that was given it, on
// that call's thread, and ends before the call returns (the header's contract for callbacks);
// the pointers are never used elsewhere or later.
unsafe impl Send for CVerifier {}
// SAFETY: as above: only the generating thread ever calls it.
unsafe impl Sync for CVerifier {}

impl CVerifier {
    fn verdict(&self, step: &str, reasoning: &str) -> r1_core::Verdict {
        // SAFETY: the callback's contract (`r1_step_verifier`): the strings are valid for the
        // lengths given during the call.
        let v = unsafe {
            (self.check)(
                self.user_data,
                step.as_ptr().cast(),
                step.len(),
                reasoning.as_ptr().cast(),
                reasoning.len(),
            )
        };
        match v {
            1 => r1_core::Verdict::Reject,
            2 => r1_core::Verdict::Stop,
            _ => r1_core::Verdict::Accept,
        }
    }
}

/// One chat message: role ("system", "user", "assistant", "tool") and content, UTF-8,
/// NUL-terminated.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct r1_message {
    /// The role.
    pub role: *const c_char,
    /// The text.
    pub content: *const c_char,
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        if p.is_null() {
            return Err(Failure::null(what));
        }
        CStr::from_ptr(p)
            .to_str()
            .map_err(|e| Failure::new(r1_status::R1_ERROR_INVALID_UTF8, format!("`{what}` is not UTF-8: {e}")))
    }
}

/// A `(pointer, length)` UTF-8 argument.
///
/// # Safety
/// `p` is NULL or points to `len` readable bytes.
pub(crate) unsafe fn utf8<'a>(p: *const c_char, len: usize, what: &str) -> Result<&'a str, Failure> {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        if len == 0 {
            return Ok("");
        }
        if p.is_null() {
            return Err(Failure::null(what));
        }
        let bytes = std::slice::from_raw_parts(p.cast::<u8>(), len);
        std::str::from_utf8(bytes)
            .map_err(|e| Failure::new(r1_status::R1_ERROR_INVALID_UTF8, format!("`{what}` is not UTF-8: {e}")))
    }
}

/// A `(pointer, count)` array argument; NULL is fine when the count is 0.
///
/// # Safety
/// `p` is NULL or points to `n` readable values.
pub(crate) unsafe fn array<'a, T>(p: *const T, n: usize, what: &str) -> Result<&'a [T], Failure> {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        if n == 0 {
            return Ok(&[]);
        }
        if p.is_null() {
            return Err(Failure::null(what));
        }
        Ok(std::slice::from_raw_parts(p, n))
    }
}

/// Reads a C enum or bool field as its integer bytes, without making a Rust value of the
/// enum type (an out-of-range value would be undefined behaviour in Rust).
///
/// # Safety
/// `field` points to a readable value of `size_of::<I>()` bytes.
pub(crate) unsafe fn raw<I: Copy, T>(field: *const T) -> I {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe { std::ptr::read_unaligned(field.cast::<I>()) }
}

/// Load parameters as r1-core options.
///
/// # Safety
/// `p` is NULL or points to an `r1_load_params`.
pub(crate) unsafe fn load_options(p: *const r1_load_params) -> Result<r1_core::LoadOptions, Failure> {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        let mut o = r1_core::LoadOptions::default();
        if p.is_null() {
            return Ok(o);
        }
        let threads = (*p).threads;
        if threads > 0 {
            o = o.with_threads(threads as usize);
        }
        o = o.with_dtype(match raw::<u32, _>(std::ptr::addr_of!((*p).dtype)) {
            0 => r1_core::DType::F32,
            1 => r1_core::DType::F16,
            2 => r1_core::DType::BF16,
            other => return Err(Failure::invalid(format!("dtype {other} (R1_DTYPE_F32, _F16 or _BF16)"))),
        });
        o = o.with_quantize(match raw::<u32, _>(std::ptr::addr_of!((*p).quantize)) {
            0 => None,
            1 => Some(r1_core::QuantizeTo::Q8_0),
            2 => Some(r1_core::QuantizeTo::Q4K),
            other => {
                return Err(Failure::invalid(format!(
                    "quantize {other} (R1_QUANTIZE_NONE, _Q8_0 or _Q4_K)"
                )))
            }
        });
        if let Some(f) = (*p).progress {
            // The user data crosses threads only as the caller allows; r1 calls it on the loading
            // thread. A raw pointer is not Send, so it travels as an address.
            let data = (*p).progress_user_data as usize;
            o = o.with_progress(move |done, total| f(data as *mut c_void, done, total));
        }
        Ok(o)
    }
}

/// Generation parameters as r1-core's; `NULL` = the defaults.
///
/// # Safety
/// `p` is NULL or points to an `r1_gen_params` whose `stop` holds `n_stop` C strings.
pub(crate) unsafe fn gen_params(p: *const r1_gen_params) -> Result<r1_core::GenerateParams, Failure> {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        if p.is_null() {
            return Ok(r1_core::GenerateParams::default());
        }
        let s = &(*p).sampling;
        let greedy = raw::<u8, _>(std::ptr::addr_of!(s.greedy)) != 0;
        let sampling = if greedy {
            r1_core::SamplingParams::greedy()
        } else {
            r1_core::SamplingParams::default()
                .with_temperature(s.temperature)
                .with_top_k(s.top_k as usize)
                .with_top_p(s.top_p)
                .with_min_p(s.min_p)
                .with_seed(s.seed)
        }
        .with_penalties(s.repetition_penalty, s.presence_penalty, s.frequency_penalty);
        let stops = strings((*p).stop, (*p).n_stop, "params->stop")?;
        let mut params = r1_core::GenerateParams::default()
            .with_max_tokens((*p).max_tokens as usize)
            .with_sampling(sampling)
            .with_stop(stops);
        params.max_reasoning_tokens = match (*p).max_reasoning_tokens {
            -1 => None,
            n if n >= 0 => Some(n as usize),
            n => {
                return Err(Failure::invalid(format!(
                    "max_reasoning_tokens {n} (-1 = none, or >= 0)"
                )))
            }
        };
        params.starts_in_reasoning = match (*p).starts_in_reasoning {
            -1 => None,
            0 => Some(false),
            1 => Some(true),
            n => return Err(Failure::invalid(format!("starts_in_reasoning {n} (-1, 0 or 1)"))),
        };
        params.top_logprobs = match (*p).top_logprobs {
            0 => None,
            k => Some(k as usize),
        };
        if let Some(check) = (*p).verifier {
            let v = CVerifier {
                check,
                user_data: (*p).verifier_user_data,
            };
            let separators = strings((*p).step_separators, (*p).n_step_separators, "params->step_separators")?;
            let mut steps = r1_core::StepConfig::default();
            if !separators.is_empty() {
                steps.separators = separators;
            }
            let verifier = r1_core::StepVerifier::new(move |step, reasoning| v.verdict(step, reasoning));
            params.verifier = Some(
                verifier
                    .with_max_retries((*p).max_step_retries as usize)
                    .with_steps(steps),
            );
        }
        Ok(params)
    }
}

/// An array of `n` NUL-terminated strings (NULL when `n` is 0) as owned strings.
///
/// # Safety
/// `p` is NULL or points to `n` pointers, each NULL or a NUL-terminated string.
unsafe fn strings(p: *const *const c_char, n: usize, what: &str) -> Result<Vec<String>, Failure> {
    // SAFETY: this function's contract, passed on to `array` and `c_str`.
    unsafe {
        array(p, n, what)?
            .iter()
            .enumerate()
            .map(|(i, &c)| c_str(c, &format!("{what}[{i}]")).map(str::to_string))
            .collect()
    }
}

/// Messages as r1-core's.
///
/// # Safety
/// `p` is NULL or points to `n` messages of valid C strings.
pub(crate) unsafe fn messages(p: *const r1_message, n: usize) -> Result<Vec<r1_core::Message>, Failure> {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        array(p, n, "messages")?
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = c_str(m.role, &format!("messages[{i}].role"))?;
                let content = c_str(m.content, &format!("messages[{i}].content"))?;
                Ok(r1_core::Message::new(role, content))
            })
            .collect()
    }
}

/// Writes `values` to `(out, cap)` under the length convention: `*n_out` gets the count; if
/// `cap` is too small nothing is written and the status is `R1_ERROR_BUFFER_TOO_SMALL`.
///
/// # Safety
/// `out` is NULL or has room for `cap` values; `n_out` is writable.
pub(crate) unsafe fn write_array<T: Copy>(
    values: &[T],
    out: *mut T,
    cap: usize,
    n_out: *mut usize,
) -> Result<(), Failure> {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        if n_out.is_null() {
            return Err(Failure::null("n_out"));
        }
        if values.len() > cap {
            *n_out = values.len();
            return Err(Failure::new(
                r1_status::R1_ERROR_BUFFER_TOO_SMALL,
                format!("the buffer holds {cap} values, {} are needed", values.len()),
            ));
        }
        if !values.is_empty() {
            if out.is_null() {
                return Err(Failure::null("output buffer"));
            }
            std::ptr::copy_nonoverlapping(values.as_ptr(), out, values.len());
        }
        *n_out = values.len();
        Ok(())
    }
}

/// Writes `text` to `(buf, cap)`: NUL-terminated when it fits with its NUL. `*len_out` gets the
/// byte length without the NUL; when `cap` is under that length nothing is written and the
/// status is `R1_ERROR_BUFFER_TOO_SMALL`.
///
/// # Safety
/// `buf` is NULL or has room for `cap` bytes; `len_out` is writable.
pub(crate) unsafe fn write_text(text: &str, buf: *mut c_char, cap: usize, len_out: *mut usize) -> Result<(), Failure> {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        if len_out.is_null() {
            return Err(Failure::null("len_out"));
        }
        let n = text.len();
        if n > cap {
            *len_out = n;
            return Err(Failure::new(
                r1_status::R1_ERROR_BUFFER_TOO_SMALL,
                format!("the buffer holds {cap} bytes, the text is {n} (+1 for its NUL)"),
            ));
        }
        if cap > 0 {
            if buf.is_null() {
                return Err(Failure::null("buf"));
            }
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
            if cap > n {
                *buf.add(n) = 0;
            }
        }
        *len_out = n;
        Ok(())
    }
}
