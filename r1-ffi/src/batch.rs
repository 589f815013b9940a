//! Batched generation through the C ABI: several conversations generated together
//! (`r1_generate_batch`). Conversions only: the scheduling lives in r1-core.

use crate::convert::{gen_params, messages as chat_messages};
use crate::error::{guard, Failure};
use crate::{channel, finish_reason, model_ref, r1_channel, r1_gen_params, r1_message, r1_model, r1_result, usage};
use r1_core::{CancelHandle, Event, Prompt};
use std::ffi::{c_char, c_void};

/// One conversation of a batch: its messages.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct r1_conversation {
    /// The messages, OpenAI style.
    pub messages: *const r1_message,
    /// How many.
    pub n_messages: usize,
}

/// Per event of sequence `sequence` of a call that runs several (a conversation of
/// `r1_generate_batch`, a sample of `r1_self_consistency`): like `r1_token_callback`, the
/// sequence's index first. Return false to stop every sequence of the call.
#[allow(non_camel_case_types)]
pub type r1_sequence_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        sequence: u32,
        channel: r1_channel,
        text: *const c_char,
        len: usize,
        token: u32,
    ) -> bool,
>;

/// Replies to `n` conversations generated together, each on a fresh cache with `params`: one
/// forward pass per step for all of them (every weight read once), a finished one leaving and
/// the next joining; each reply equals what `r1_session_chat` gives alone (a seed is each
/// conversation's own). Events stream to `on_token` (may be NULL) with their conversation's
/// index; `results` (may be NULL) receives `n` results. Blocks; thread-safe (the model may be
/// shared).
#[no_mangle]
pub unsafe extern "C" fn r1_generate_batch(
    model: *const r1_model,
    conversations: *const r1_conversation,
    n: usize,
    params: *const r1_gen_params,
    on_token: r1_sequence_callback,
    user_data: *mut c_void,
    results: *mut r1_result,
) -> crate::r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let m = model_ref(model)?;
            let convs = crate::convert::array(conversations, n, "conversations")?;
            let cancel = CancelHandle::new();
            let params = gen_params(params)?.with_cancel(cancel.clone());
            let requests = convs
                .iter()
                .map(|c| Ok((Prompt::Chat(chat_messages(c.messages, c.n_messages)?), params.clone())))
                .collect::<Result<Vec<_>, Failure>>()?;
            let done = m.engine.generate_batch(&requests, |i, event| {
                let Some(cb) = on_token else { return };
                if event.text.is_empty() && event.token.is_none() {
                    return;
                }
                let token = event.token.unwrap_or(u32::MAX);
                let text = event.text.as_ptr().cast();
                if !cb(
                    user_data,
                    i as u32,
                    channel(event.channel),
                    text,
                    event.text.len(),
                    token,
                ) {
                    cancel.cancel();
                }
            })?;
            if let Some(g) = done.iter().find(|g| g.error().is_some()) {
                let code = g.error().unwrap_or(r1_core::ErrorCode::Internal);
                return Err(Failure::new(
                    crate::r1_status::of(code),
                    format!("a conversation of the batch failed ({})", code.name()),
                ));
            }
            if !results.is_null() {
                for (i, g) in done.iter().enumerate() {
                    *results.add(i) = r1_result {
                        finish_reason: finish_reason(g.finish_reason().unwrap_or(r1_core::FinishReason::Cancelled)),
                        usage: usage(&g.usage()),
                    };
                }
            }
            Ok(())
        })
    }
}

/// Hands sequence `i`'s event to a C callback (if any); a false return cancels the call.
///
/// # Safety
/// `on_token` and `user_data` are the caller's, valid during the call (the header's contract).
pub(crate) unsafe fn emit(
    on_token: r1_sequence_callback,
    user_data: *mut c_void,
    cancel: &CancelHandle,
    i: usize,
    event: &Event,
) {
    let Some(cb) = on_token else { return };
    if event.text.is_empty() && event.token.is_none() {
        return;
    }
    let token = event.token.unwrap_or(u32::MAX);
    // SAFETY: this function's contract; the text is valid for its length during the call.
    let go = unsafe {
        cb(
            user_data,
            i as u32,
            channel(event.channel),
            event.text.as_ptr().cast(),
            event.text.len(),
            token,
        )
    };
    if !go {
        cancel.cancel();
    }
}
