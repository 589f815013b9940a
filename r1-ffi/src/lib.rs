//! The C ABI of r1 (`libr1`, header `include/r1.h`): opaque handles, status codes, no crash on
//! misuse. It only converts, checks arguments and catches panics; behaviour lives in r1-core.
//!
//! Conventions (`docs/c-api.md`): every fallible call returns an `r1_status`; output parameters
//! are written only on success (and the size needed on `R1_ERROR_BUFFER_TOO_SMALL`); strings are
//! UTF-8; `r1_last_error_message()` names what was wrong.

#![deny(unsafe_op_in_unsafe_fn)]
#![allow(clippy::missing_safety_doc)] // the header documents each function's contract

mod batch;
mod convert;
mod error;
mod reasoning;

pub use batch::*;
pub use convert::{
    r1_dtype, r1_gen_params, r1_load_params, r1_message, r1_progress_callback, r1_quantize, r1_sampling_params,
    r1_step_verifier,
};
pub use error::r1_status;
pub use reasoning::*;

use convert::*;
use error::{guard, guard_value, last_error_ptr, Failure};
use r1_core::{CancelHandle, Channel, Engine, FinishReason, Prompt, Session};
use std::ffi::{c_char, c_void, CString};
use std::sync::Mutex;

/// A loaded model and its tokenizer. Immutable once loaded: share it across threads.
#[allow(non_camel_case_types)]
pub struct r1_model {
    engine: Engine,
}

/// One conversation: its cache and token history. One thread at a time, except
/// `r1_session_cancel`, which any thread may call.
#[allow(non_camel_case_types)]
pub struct r1_session {
    session: Mutex<Session>,
    cancel: CancelHandle,
    /// What the last generation left for `r1_session_step` and `r1_distill_write_last`.
    last: Mutex<reasoning::Last>,
}

/// A parsed reasoning trace; its strings are owned by it.
#[allow(non_camel_case_types)]
pub struct r1_trace {
    reasoning: CString,
    answer: CString,
    final_answer: Option<CString>,
    truncated: bool,
    steps: Vec<CString>,
    tool_names: Vec<CString>,
    tool_arguments: Vec<CString>,
}

/// Which part of the output a piece of text belongs to.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum r1_channel {
    /// Inside `<think>…</think>`.
    R1_CHANNEL_REASONING = 0,
    /// After `</think>`.
    R1_CHANNEL_ANSWER = 1,
}

/// Why a generation ended.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum r1_finish_reason {
    /// The model produced an end token.
    R1_FINISH_END_TOKEN = 0,
    /// A stop sequence appeared.
    R1_FINISH_STOP_SEQUENCE = 1,
    /// `max_tokens` were generated.
    R1_FINISH_MAX_TOKENS = 2,
    /// `r1_session_cancel` was called or the token callback returned false.
    R1_FINISH_CANCELLED = 3,
    /// The model's context is full.
    R1_FINISH_CONTEXT_FULL = 4,
    /// The thinking budget was reached with no room left to close the reasoning.
    R1_FINISH_REASONING_BUDGET = 5,
}

/// Per token: return false to stop the generation (finish reason `R1_FINISH_CANCELLED`).
/// `text` is UTF-8, never a split character, not NUL-terminated, valid only during the call;
/// `token` is `UINT32_MAX` for text released when the generation ends.
#[allow(non_camel_case_types)]
pub type r1_token_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        channel: r1_channel,
        text: *const c_char,
        len: usize,
        token: u32,
    ) -> bool,
>;

/// Token counts and speeds of a generation.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, Default)]
pub struct r1_usage {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Prompt tokens found in the session's cache.
    pub cached_prompt_tokens: u32,
    /// Generated tokens of the reasoning (with the closing `</think>`).
    pub reasoning_tokens: u32,
    /// Generated tokens of the answer.
    pub answer_tokens: u32,
    /// Reasoning steps the verifier rejected (each one sampled again).
    pub rejected_steps: u32,
    /// Prompt tokens run per second.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_s: f64,
}

/// The end of a generation.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy)]
pub struct r1_result {
    /// Why it ended.
    pub finish_reason: r1_finish_reason,
    /// Counts and speeds.
    pub usage: r1_usage,
}

/// The version of libr1, e.g. "0.1.0". A static string: never free it.
#[no_mangle]
pub extern "C" fn r1_version() -> *const c_char {
    static VERSION: &std::ffi::CStr =
        match std::ffi::CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    VERSION.as_ptr()
}

/// The name of a status, e.g. "R1_ERROR_IO"; "R1_UNKNOWN_STATUS" for a value that is none.
/// A static string: never free it. Thread-safe.
#[no_mangle]
pub extern "C" fn r1_status_name(status: r1_status) -> *const c_char {
    // Read as an integer: a C caller may pass any value.
    // SAFETY: `status` is a live local of the enum's size (a C int), read as that int.
    let n: i32 = unsafe { raw(&status as *const r1_status) };
    r1_status::name_of(n).map_or(c"R1_UNKNOWN_STATUS".as_ptr(), |c| c.as_ptr())
}

/// This thread's last error message, "" after a success. Owned by r1; valid until this
/// thread's next r1 call. Thread-safe (each thread has its own).
#[no_mangle]
pub extern "C" fn r1_last_error_message() -> *const c_char {
    last_error_ptr()
}

/// The default load parameters: all cores, f32, no quantization, no progress callback.
#[no_mangle]
pub extern "C" fn r1_load_params_default() -> r1_load_params {
    r1_load_params {
        threads: 0,
        dtype: r1_dtype::R1_DTYPE_F32,
        quantize: r1_quantize::R1_QUANTIZE_NONE,
        progress: None,
        progress_user_data: std::ptr::null_mut(),
    }
}

/// The default generation parameters: DeepSeek-R1's preset (temperature 0.6, top_p 0.95),
/// 2048 tokens at most, no stop sequences, no thinking budget.
#[no_mangle]
pub extern "C" fn r1_gen_params_default() -> r1_gen_params {
    let d = r1_core::SamplingParams::deepseek_r1();
    r1_gen_params {
        max_tokens: r1_core::GenerateParams::default().max_tokens as u32,
        sampling: r1_sampling_params {
            greedy: false,
            temperature: d.temperature,
            top_k: d.top_k as u32,
            top_p: d.top_p,
            min_p: d.min_p,
            repetition_penalty: d.repetition_penalty,
            presence_penalty: d.presence_penalty,
            frequency_penalty: d.frequency_penalty,
            seed: 0,
        },
        stop: std::ptr::null(),
        n_stop: 0,
        max_reasoning_tokens: -1,
        starts_in_reasoning: -1,
        top_logprobs: 0,
        verifier: None,
        verifier_user_data: std::ptr::null_mut(),
        max_step_retries: 3,
        step_separators: std::ptr::null(),
        n_step_separators: 0,
    }
}

/// Loads a checkpoint folder, a .safetensors file beside its config.json, or a GGUF file.
/// `params` may be NULL (the defaults). On success `*out` is a model to free with
/// `r1_model_free`; `*out` is untouched on failure. Blocks while loading (the progress callback
/// runs on this thread). Any thread may load; the thread count is process-wide.
#[no_mangle]
pub unsafe extern "C" fn r1_model_load(
    path: *const c_char,
    params: *const r1_load_params,
    out: *mut *mut r1_model,
) -> r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let path = c_str(path, "path")?;
            if out.is_null() {
                return Err(Failure::null("out"));
            }
            let options = load_options(params)?;
            let engine = Engine::load(path, &options)?;
            *out = Box::into_raw(Box::new(r1_model { engine }));
            Ok(())
        })
    }
}

/// Frees a model. NULL is fine; never twice, never while another thread uses this handle.
/// Sessions made from it keep their own reference, so they stay usable.
#[no_mangle]
pub unsafe extern "C" fn r1_model_free(model: *mut r1_model) {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard_value((), || {
            if !model.is_null() {
                drop(Box::from_raw(model));
            }
        })
    }
}

/// The vocabulary size (logits per position); 0 for NULL. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn r1_model_vocab_size(model: *const r1_model) -> u32 {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe { guard_value(0, || model.as_ref().map_or(0, |m| m.engine.model().vocab_size() as u32)) }
}

/// The most positions a sequence may have; 0 for NULL. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn r1_model_context_length(model: *const r1_model) -> u32 {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard_value(0, || {
            model.as_ref().map_or(0, |m| m.engine.model().context_length() as u32)
        })
    }
}

/// # Safety
/// `model` is NULL or a live model from `r1_model_load`.
pub(crate) unsafe fn model_ref<'a>(model: *const r1_model) -> Result<&'a r1_model, Failure> {
    // SAFETY: a non-NULL `model` is a live model (this function's contract).
    unsafe { model.as_ref() }.ok_or_else(|| Failure::null("model"))
}

/// Token ids of `text` (`text_len` bytes of UTF-8). With `add_special` the tokenizer adds
/// BOS where the model's files say so. On `R1_ERROR_BUFFER_TOO_SMALL` `*n_out` holds the count
/// needed (`ids` may be NULL when `ids_cap` is 0). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn r1_tokenize(
    model: *const r1_model,
    text: *const c_char,
    text_len: usize,
    add_special: bool,
    ids: *mut u32,
    ids_cap: usize,
    n_out: *mut usize,
) -> r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let m = model_ref(model)?;
            let text = utf8(text, text_len, "text")?;
            let add = raw::<u8, _>(&add_special as *const bool) != 0;
            let tokens = m.engine.tokenizer().encode(text, add)?;
            write_array(&tokens, ids, ids_cap, n_out)
        })
    }
}

/// The text of `n_ids` token ids, into `buf` (NUL-terminated when it fits with its NUL);
/// `*len_out` is its length in bytes without the NUL, also on `R1_ERROR_BUFFER_TOO_SMALL`.
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn r1_detokenize(
    model: *const r1_model,
    ids: *const u32,
    n_ids: usize,
    buf: *mut c_char,
    buf_cap: usize,
    len_out: *mut usize,
) -> r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let m = model_ref(model)?;
            let ids = array(ids, n_ids, "ids")?;
            let vocab = m.engine.model().vocab_size();
            if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
                return Err(Failure::invalid(format!(
                    "token id {bad} is outside the vocabulary of {vocab}"
                )));
            }
            let text = m.engine.tokenizer().decode(ids, false)?;
            write_text(&text, buf, buf_cap, len_out)
        })
    }
}

/// The model's chat template applied to `messages`, into `buf` (the text convention of
/// `r1_detokenize`). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn r1_apply_chat_template(
    model: *const r1_model,
    messages: *const r1_message,
    n_messages: usize,
    add_generation_prompt: bool,
    buf: *mut c_char,
    buf_cap: usize,
    len_out: *mut usize,
) -> r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let m = model_ref(model)?;
            let msgs = convert::messages(messages, n_messages)?;
            let add = raw::<u8, _>(&add_generation_prompt as *const bool) != 0;
            let text = m.engine.apply_chat_template(&msgs, add, &[])?;
            write_text(&text, buf, buf_cap, len_out)
        })
    }
}

/// Logits of every position of `ids`, from an empty cache: `out` receives `n_ids * vocab`
/// floats, row-major (`out_len` must be at least that). Blocks while computing; thread-safe.
#[no_mangle]
pub unsafe extern "C" fn r1_model_logits(
    model: *const r1_model,
    ids: *const u32,
    n_ids: usize,
    out: *mut f32,
    out_len: usize,
) -> r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let m = model_ref(model)?;
            let ids = array(ids, n_ids, "ids")?;
            if ids.is_empty() {
                return Err(Failure::invalid("no ids"));
            }
            let needed = ids.len().saturating_mul(m.engine.model().vocab_size());
            if out_len < needed {
                return Err(Failure::new(
                    r1_status::R1_ERROR_BUFFER_TOO_SMALL,
                    format!("out holds {out_len} floats, {needed} are needed"),
                ));
            }
            if out.is_null() {
                return Err(Failure::null("out"));
            }
            let logits = m.engine.model().logits(ids)?;
            logits.copy_to(std::slice::from_raw_parts_mut(out, needed))?;
            Ok(())
        })
    }
}

/// A new, empty conversation on `model`; free it with `r1_session_free`. The session keeps the
/// model alive. Thread-safe (the model may be shared).
#[no_mangle]
pub unsafe extern "C" fn r1_session_new(model: *const r1_model, out: *mut *mut r1_session) -> r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let m = model_ref(model)?;
            if out.is_null() {
                return Err(Failure::null("out"));
            }
            let session = m.engine.session();
            let cancel = session.cancel_handle();
            *out = Box::into_raw(Box::new(r1_session {
                session: Mutex::new(session),
                cancel,
                last: Mutex::default(),
            }));
            Ok(())
        })
    }
}

/// Frees a session. NULL is fine; never twice, never while a call on it runs (not even
/// `r1_session_cancel`).
#[no_mangle]
pub unsafe extern "C" fn r1_session_free(session: *mut r1_session) {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard_value((), || {
            if !session.is_null() {
                drop(Box::from_raw(session));
            }
        })
    }
}

/// # Safety
/// `session` is NULL or a live session from `r1_session_new`.
pub(crate) unsafe fn session_ref<'a>(session: *const r1_session) -> Result<&'a r1_session, Failure> {
    // SAFETY: a non-NULL `session` is a live session (this function's contract).
    unsafe { session.as_ref() }.ok_or_else(|| Failure::null("session"))
}

fn lock(s: &r1_session) -> std::sync::MutexGuard<'_, Session> {
    s.session.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forgets the conversation (the cache's memory is kept for reuse). One thread at a time per
/// session.
#[no_mangle]
pub unsafe extern "C" fn r1_session_reset(session: *mut r1_session) -> r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
        // for the length passed with it and live for the call; NULLs are checked before use.
        guard(|| Ok(lock(session_ref(session)?).reset()?))
    }
}

/// Stops the session's running generation at its next step (finish reason
/// `R1_FINISH_CANCELLED`). Any thread; never blocks.
#[no_mangle]
pub unsafe extern "C" fn r1_session_cancel(session: *mut r1_session) -> r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
        // for the length passed with it and live for the call; NULLs are checked before use.
        guard(|| {
            session_ref(session)?.cancel.cancel();
            Ok(())
        })
    }
}

pub(crate) fn channel(c: Channel) -> r1_channel {
    if c == Channel::Reasoning {
        r1_channel::R1_CHANNEL_REASONING
    } else {
        r1_channel::R1_CHANNEL_ANSWER
    }
}

/// A generation's counts as C reads them.
pub(crate) fn usage(u: &r1_core::Usage) -> r1_usage {
    r1_usage {
        prompt_tokens: u.prompt_tokens as u32,
        cached_prompt_tokens: u.cached_prompt_tokens as u32,
        reasoning_tokens: u.reasoning_tokens as u32,
        answer_tokens: u.answer_tokens as u32,
        rejected_steps: u.rejected_steps as u32,
        prefill_tokens_per_s: u.prefill_tokens_per_s,
        decode_tokens_per_s: u.decode_tokens_per_s,
    }
}

pub(crate) fn finish_reason(r: FinishReason) -> r1_finish_reason {
    match r {
        FinishReason::EndToken => r1_finish_reason::R1_FINISH_END_TOKEN,
        FinishReason::StopSequence => r1_finish_reason::R1_FINISH_STOP_SEQUENCE,
        FinishReason::MaxTokens => r1_finish_reason::R1_FINISH_MAX_TOKENS,
        FinishReason::ContextFull => r1_finish_reason::R1_FINISH_CONTEXT_FULL,
        FinishReason::ReasoningBudget => r1_finish_reason::R1_FINISH_REASONING_BUDGET,
        _ => r1_finish_reason::R1_FINISH_CANCELLED,
    }
}

/// Runs a prompt in the session, streaming to `on_token`, and fills `out` (may be NULL).
unsafe fn run(
    session: *mut r1_session,
    prompt: impl FnOnce() -> Result<Prompt, Failure>,
    params: *const r1_gen_params,
    on_token: r1_token_callback,
    user_data: *mut c_void,
    out: *mut r1_result,
) -> r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let s = session_ref(session)?;
            let prompt = prompt()?;
            let params = gen_params(params)?;
            let mut session = lock(s);
            // The prompt's text only for a distillation record (with top_logprobs).
            let prompt_text = match params.top_logprobs {
                Some(_) => session.engine().prompt_text(&prompt)?.unwrap_or_default(),
                None => String::new(),
            };
            let mut generation = session.generate(&prompt, &params)?;
            let mut result = None;
            for event in generation.by_ref() {
                let event = event?;
                if let Some(cb) = on_token {
                    if !event.text.is_empty() || event.token.is_some() {
                        let token = event.token.unwrap_or(u32::MAX);
                        let go = cb(
                            user_data,
                            channel(event.channel),
                            event.text.as_ptr().cast(),
                            event.text.len(),
                            token,
                        );
                        if !go {
                            s.cancel.cancel();
                        }
                    }
                }
                if let Some(f) = event.finish {
                    result = Some(r1_result {
                        finish_reason: finish_reason(f.reason),
                        usage: usage(&f.usage),
                    });
                }
            }
            let result = result
                .ok_or_else(|| Failure::new(r1_status::R1_ERROR_INTERNAL, "the generation ended without a finish"))?;
            *reasoning::lock_last(s) = reasoning::Last::of(&prompt_text, &generation, params.top_logprobs.is_some())?;
            if !out.is_null() {
                *out = result;
            }
            Ok(())
        })
    }
}

/// Generates the reply to `messages`, the whole conversation so far (OpenAI style): the
/// session renders them with the chat template, reuses its cache for the prefix it already
/// holds, and streams the reply to `on_token` (may be NULL), called on this thread. `params`
/// may be NULL (the defaults); `out` may be NULL. Blocks until the generation ends. One thread at
/// a time per session; `r1_session_cancel` from any other thread stops it.
#[no_mangle]
pub unsafe extern "C" fn r1_session_chat(
    session: *mut r1_session,
    messages: *const r1_message,
    n_messages: usize,
    params: *const r1_gen_params,
    on_token: r1_token_callback,
    user_data: *mut c_void,
    out: *mut r1_result,
) -> r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        run(
            session,
            || Ok(Prompt::Chat(convert::messages(messages, n_messages)?)),
            params,
            on_token,
            user_data,
            out,
        )
    }
}

/// Like `r1_session_chat` for raw text (NUL-terminated UTF-8), no template. Blocks until the
/// generation ends; one thread at a time per session.
#[no_mangle]
pub unsafe extern "C" fn r1_session_complete(
    session: *mut r1_session,
    prompt: *const c_char,
    params: *const r1_gen_params,
    on_token: r1_token_callback,
    user_data: *mut c_void,
    out: *mut r1_result,
) -> r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        run(
            session,
            || Ok(Prompt::Raw(c_str(prompt, "prompt")?.to_string())),
            params,
            on_token,
            user_data,
            out,
        )
    }
}

/// The last generation's generated token ids, under the length convention of `r1_tokenize`;
/// the caller owns `ids`. One thread at a time per session.
#[no_mangle]
pub unsafe extern "C" fn r1_session_generated_ids(
    session: *const r1_session,
    ids: *mut u32,
    ids_cap: usize,
    n_out: *mut usize,
) -> r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let s = session_ref(session)?;
            let generated = lock(s).last_generated_ids();
            write_array(&generated, ids, ids_cap, n_out)
        })
    }
}

/// A C string owned by a trace: interior NULs (which C cannot hold) become U+FFFD.
pub(crate) fn owned(text: &str) -> CString {
    CString::new(text.replace('\0', "\u{FFFD}")).unwrap_or_default()
}

fn trace_handle(t: &r1_core::Trace) -> *mut r1_trace {
    Box::into_raw(Box::new(r1_trace {
        reasoning: owned(&t.reasoning),
        answer: owned(&t.answer),
        final_answer: t.final_answer.as_deref().map(owned),
        truncated: t.truncated,
        steps: t.steps.iter().map(|s| owned(&s.text)).collect(),
        tool_names: t.tool_calls.iter().map(|c| owned(&c.name)).collect(),
        tool_arguments: t.tool_calls.iter().map(|c| owned(&c.arguments)).collect(),
    }))
}

/// The last generation's parsed trace, as a new trace to free with `r1_trace_free`.
/// `R1_ERROR_INVALID_ARGUMENT` if the session has not generated yet. One thread at a time per
/// session; the trace itself is independent of the session.
#[no_mangle]
pub unsafe extern "C" fn r1_session_trace(session: *const r1_session, out: *mut *mut r1_trace) -> r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let s = session_ref(session)?;
            if out.is_null() {
                return Err(Failure::null("out"));
            }
            let trace = lock(s)
                .last_trace()
                .ok_or_else(|| Failure::invalid("the session has not finished a generation yet"))?;
            *out = trace_handle(&trace);
            Ok(())
        })
    }
}

/// Parses recorded output (`len` bytes of UTF-8) into a new trace, to free with
/// `r1_trace_free`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn r1_trace_parse(
    text: *const c_char,
    len: usize,
    starts_in_reasoning: bool,
    out: *mut *mut r1_trace,
) -> r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let text = utf8(text, len, "text")?;
            if out.is_null() {
                return Err(Failure::null("out"));
            }
            let start = raw::<u8, _>(&starts_in_reasoning as *const bool) != 0;
            *out = trace_handle(&r1_core::Trace::parse(text, start));
            Ok(())
        })
    }
}

/// # Safety
/// `trace` is NULL or a live trace.
unsafe fn trace_str(trace: *const r1_trace, f: impl FnOnce(&r1_trace) -> Option<&CString>) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: a non-NULL `trace` is a live trace (this function's contract).
        unsafe { trace.as_ref() }
            .and_then(f)
            .map_or(std::ptr::null(), |c| c.as_ptr())
    })
}

/// The reasoning text; owned by the trace (valid until `r1_trace_free`), NUL-terminated; NULL
/// for a NULL trace. Traces are immutable: any thread may read them.
#[no_mangle]
pub unsafe extern "C" fn r1_trace_reasoning(trace: *const r1_trace) -> *const c_char {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
        // for the length passed with it and live for the call; NULLs are checked before use.
        trace_str(trace, |t| Some(&t.reasoning))
    }
}

/// The answer text; owned by the trace, NUL-terminated (NULL for a NULL trace).
#[no_mangle]
pub unsafe extern "C" fn r1_trace_answer(trace: *const r1_trace) -> *const c_char {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
        // for the length passed with it and live for the call; NULLs are checked before use.
        trace_str(trace, |t| Some(&t.answer))
    }
}

/// The final answer (`\boxed{…}`, else the answer's last line); NULL when none.
#[no_mangle]
pub unsafe extern "C" fn r1_trace_final_answer(trace: *const r1_trace) -> *const c_char {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
        // for the length passed with it and live for the call; NULLs are checked before use.
        trace_str(trace, |t| t.final_answer.as_ref())
    }
}

/// Whether the output ended inside the reasoning; false for NULL.
#[no_mangle]
pub unsafe extern "C" fn r1_trace_truncated(trace: *const r1_trace) -> bool {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    guard_value(false, || unsafe { trace.as_ref() }.is_some_and(|t| t.truncated))
}

/// Number of reasoning steps; 0 for NULL.
#[no_mangle]
pub unsafe extern "C" fn r1_trace_step_count(trace: *const r1_trace) -> usize {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    guard_value(0, || unsafe { trace.as_ref() }.map_or(0, |t| t.steps.len()))
}

/// Step `i`'s text; NULL past the end. Owned by the trace.
#[no_mangle]
pub unsafe extern "C" fn r1_trace_step(trace: *const r1_trace, i: usize) -> *const c_char {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
        // for the length passed with it and live for the call; NULLs are checked before use.
        trace_str(trace, |t| t.steps.get(i))
    }
}

/// Number of tool calls in the answer; 0 for NULL.
#[no_mangle]
pub unsafe extern "C" fn r1_trace_tool_call_count(trace: *const r1_trace) -> usize {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    guard_value(0, || unsafe { trace.as_ref() }.map_or(0, |t| t.tool_names.len()))
}

/// Tool call `i`'s function name; NULL past the end. Owned by the trace.
#[no_mangle]
pub unsafe extern "C" fn r1_trace_tool_call_name(trace: *const r1_trace, i: usize) -> *const c_char {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
        // for the length passed with it and live for the call; NULLs are checked before use.
        trace_str(trace, |t| t.tool_names.get(i))
    }
}

/// Tool call `i`'s arguments as JSON text; NULL past the end. Owned by the trace.
#[no_mangle]
pub unsafe extern "C" fn r1_trace_tool_call_arguments(trace: *const r1_trace, i: usize) -> *const c_char {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
        // for the length passed with it and live for the call; NULLs are checked before use.
        trace_str(trace, |t| t.tool_arguments.get(i))
    }
}

/// Frees a trace and its strings. NULL is fine; never twice, never while another thread reads
/// it.
#[no_mangle]
pub unsafe extern "C" fn r1_trace_free(trace: *mut r1_trace) {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard_value((), || {
            if !trace.is_null() {
                drop(Box::from_raw(trace));
            }
        })
    }
}
