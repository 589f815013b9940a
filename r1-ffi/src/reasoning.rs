//! The reasoning features through the C ABI: the steps a verifier judged (`r1_session_step`),
//! self-consistency (`r1_consensus`) and distillation datasets (`r1_distill`). Conversions only:
//! the features live in r1-core.

use crate::convert::{c_str, gen_params, messages as chat_messages, write_array};
use crate::error::{guard, guard_value, Failure};
use crate::{model_ref, owned, r1_gen_params, r1_message, r1_model, r1_session, session_ref};
use r1_core::{CancelHandle, Consensus, DistillRecord, DistillWriter, Generation, Prompt, Verdict};
use std::ffi::{c_char, c_void, CString};
use std::sync::{Mutex, MutexGuard};

/// A step verifier's answer (what an `r1_step_verifier` returns).
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum r1_verdict {
    /// The step stands.
    R1_VERDICT_ACCEPT = 0,
    /// Sample the step again.
    R1_VERDICT_REJECT = 1,
    /// Close the reasoning after this step.
    R1_VERDICT_STOP = 2,
}

fn verdict(v: Verdict) -> r1_verdict {
    match v {
        Verdict::Reject => r1_verdict::R1_VERDICT_REJECT,
        Verdict::Stop => r1_verdict::R1_VERDICT_STOP,
        _ => r1_verdict::R1_VERDICT_ACCEPT,
    }
}

/// One step of the last generation, as C reads it.
struct StepC {
    text: CString,
    tries: u32,
    retries_exhausted: bool,
    last_verdict: Option<r1_verdict>,
}

/// What a session's last generation leaves: its verified steps, and its dataset record when it
/// was run with `top_logprobs`.
#[derive(Default)]
pub(crate) struct Last {
    steps: Vec<StepC>,
    record: Option<DistillRecord>,
}

impl Last {
    pub(crate) fn of(prompt_text: &str, g: &Generation, with_record: bool) -> Result<Last, Failure> {
        let steps = g
            .steps()
            .iter()
            .map(|s| StepC {
                text: owned(&s.text),
                tries: s.tries as u32,
                retries_exhausted: s.retries_exhausted,
                last_verdict: s.verdicts.last().copied().map(verdict),
            })
            .collect();
        let record = match with_record {
            true => Some(DistillRecord::from_generation(prompt_text, g)?),
            false => None,
        };
        Ok(Last { steps, record })
    }
}

pub(crate) fn lock_last(s: &r1_session) -> MutexGuard<'_, Last> {
    s.last.lock().unwrap_or_else(|p| p.into_inner())
}

/// The number of reasoning steps of the session's last generation that a verifier saw (0
/// without a verifier). One thread at a time per session.
#[no_mangle]
pub unsafe extern "C" fn r1_session_step_count(session: *const r1_session) -> usize {
    // SAFETY: the caller keeps the C contract of include/r1.h: a non-NULL `session` is live.
    unsafe { guard_value(0, || session_ref(session).map_or(0, |s| lock_last(s).steps.len())) }
}

/// Step `i` of the session's last verified generation: its text (owned by the session, valid
/// until its next generation or `r1_session_free`), how many times it was sampled, whether the
/// retries ran out, and the verdict on its last try (`R1_VERDICT_ACCEPT` for a step the
/// generation ended inside, never checked). Any output pointer may be NULL.
#[no_mangle]
pub unsafe extern "C" fn r1_session_step(
    session: *const r1_session,
    i: usize,
    text: *mut *const c_char,
    tries: *mut u32,
    retries_exhausted: *mut bool,
    last_verdict: *mut r1_verdict,
) -> crate::r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let s = session_ref(session)?;
            let last = lock_last(s);
            let step = last
                .steps
                .get(i)
                .ok_or_else(|| Failure::invalid(format!("step {i} of {}", last.steps.len())))?;
            if !text.is_null() {
                *text = step.text.as_ptr();
            }
            if !tries.is_null() {
                *tries = step.tries;
            }
            if !retries_exhausted.is_null() {
                *retries_exhausted = step.retries_exhausted;
            }
            if !last_verdict.is_null() {
                *last_verdict = step.last_verdict.unwrap_or(r1_verdict::R1_VERDICT_ACCEPT);
            }
            Ok(())
        })
    }
}

/// Self-consistency results: every sample and the vote. Immutable; its strings are its own.
#[allow(non_camel_case_types)]
pub struct r1_consensus {
    consensus: Consensus,
    prompt_text: String,
    final_answers: Vec<Option<CString>>,
    answer: Option<CString>,
    votes: Vec<(CString, u32)>,
}

/// `n` (1 to 256) samples of the reply to `messages`: the prompt prefilled once, sample `i`
/// seeded with `params->sampling.seed + i`, decoded together (batched) and streamed to `on_token` (may be
/// NULL), then a majority vote over their final answers (trimmed, `\boxed{}` unwrapped). On
/// success `*out` is a result to free with `r1_consensus_free`. Blocks; thread-safe (the model
/// may be shared).
#[no_mangle]
pub unsafe extern "C" fn r1_self_consistency(
    model: *const r1_model,
    messages: *const r1_message,
    n_messages: usize,
    params: *const r1_gen_params,
    n: u32,
    on_token: crate::batch::r1_sequence_callback,
    user_data: *mut c_void,
    out: *mut *mut r1_consensus,
) -> crate::r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let m = model_ref(model)?;
            if out.is_null() {
                return Err(Failure::null("out"));
            }
            let prompt = Prompt::Chat(chat_messages(messages, n_messages)?);
            let cancel = CancelHandle::new();
            let params = gen_params(params)?.with_cancel(cancel.clone());
            // The prompt's text only for distillation records (with top_logprobs).
            let prompt_text = match params.top_logprobs {
                Some(_) => m.engine.prompt_text(&prompt)?.unwrap_or_default(),
                None => String::new(),
            };
            let consensus = m
                .engine
                .self_consistency_streamed(&prompt, &params, n as usize, |i, event| {
                    crate::batch::emit(on_token, user_data, &cancel, i, event)
                })?;
            if cancel.is_cancelled() {
                return Err(r1_core::Error::Cancelled("the sample callback returned false".into()).into());
            }
            *out = Box::into_raw(Box::new(r1_consensus {
                final_answers: consensus
                    .samples
                    .iter()
                    .map(|s| s.final_answer.as_deref().map(owned))
                    .collect(),
                answer: consensus.vote.answer.as_deref().map(owned),
                votes: consensus
                    .vote
                    .counts
                    .iter()
                    .map(|(a, n)| (owned(a), *n as u32))
                    .collect(),
                consensus,
                prompt_text,
            }));
            Ok(())
        })
    }
}

/// # Safety
/// `c` is NULL or a live result from `r1_self_consistency`.
unsafe fn consensus_ref<'a>(c: *const r1_consensus) -> Result<&'a r1_consensus, Failure> {
    // SAFETY: a non-NULL `c` is a live result (this function's contract).
    unsafe { c.as_ref() }.ok_or_else(|| Failure::null("consensus"))
}

/// The number of samples (0 for NULL).
#[no_mangle]
pub unsafe extern "C" fn r1_consensus_sample_count(c: *const r1_consensus) -> usize {
    // SAFETY: a non-NULL `c` is a live result (the header's contract).
    unsafe { guard_value(0, || consensus_ref(c).map_or(0, |c| c.consensus.samples.len())) }
}

/// Sample `i`'s generated ids, under the length convention of `r1_tokenize`.
#[no_mangle]
pub unsafe extern "C" fn r1_consensus_sample_ids(
    c: *const r1_consensus,
    i: usize,
    ids: *mut u32,
    ids_cap: usize,
    n_out: *mut usize,
) -> crate::r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let c = consensus_ref(c)?;
            let s = c
                .consensus
                .samples
                .get(i)
                .ok_or_else(|| Failure::invalid(format!("sample {i}")))?;
            write_array(&s.generated_ids, ids, ids_cap, n_out)
        })
    }
}

/// Sample `i`'s normalised final answer, NULL if it has none (or `i` is out of range). Owned
/// by the result.
#[no_mangle]
pub unsafe extern "C" fn r1_consensus_sample_final_answer(c: *const r1_consensus, i: usize) -> *const c_char {
    // SAFETY: a non-NULL `c` is a live result (the header's contract).
    unsafe {
        guard_value(std::ptr::null(), || {
            let answer = consensus_ref(c).ok().and_then(|c| c.final_answers.get(i)?.as_ref());
            answer.map_or(std::ptr::null(), |a| a.as_ptr())
        })
    }
}

/// The winning answer (most votes; the first to appear on a tie), NULL when no sample has a
/// final answer. Owned by the result.
#[no_mangle]
pub unsafe extern "C" fn r1_consensus_answer(c: *const r1_consensus) -> *const c_char {
    // SAFETY: a non-NULL `c` is a live result (the header's contract).
    unsafe {
        guard_value(std::ptr::null(), || {
            consensus_ref(c)
                .ok()
                .and_then(|c| c.answer.as_ref())
                .map_or(std::ptr::null(), |a| a.as_ptr())
        })
    }
}

/// The number of distinct answers voted for.
#[no_mangle]
pub unsafe extern "C" fn r1_consensus_vote_count(c: *const r1_consensus) -> usize {
    // SAFETY: a non-NULL `c` is a live result (the header's contract).
    unsafe { guard_value(0, || consensus_ref(c).map_or(0, |c| c.votes.len())) }
}

/// Distinct answer `i` (in the order answers first appeared) and its votes.
#[no_mangle]
pub unsafe extern "C" fn r1_consensus_vote(
    c: *const r1_consensus,
    i: usize,
    answer: *mut *const c_char,
    votes: *mut u32,
) -> crate::r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let c = consensus_ref(c)?;
            let (a, n) = c
                .votes
                .get(i)
                .ok_or_else(|| Failure::invalid(format!("vote {i} of {}", c.votes.len())))?;
            if answer.is_null() || votes.is_null() {
                return Err(Failure::null("answer or votes"));
            }
            *answer = a.as_ptr();
            *votes = *n;
            Ok(())
        })
    }
}

/// Frees a result. NULL is fine; never twice.
#[no_mangle]
pub unsafe extern "C" fn r1_consensus_free(c: *mut r1_consensus) {
    // SAFETY: a non-NULL `c` is a live result, freed once (the header's contract).
    unsafe {
        guard_value((), || {
            if !c.is_null() {
                drop(Box::from_raw(c));
            }
        })
    }
}

/// A distillation dataset being written (`.jsonl` or `.safetensors`, see docs/reasoning.md).
/// One thread at a time.
#[allow(non_camel_case_types)]
pub struct r1_distill {
    writer: Mutex<Option<DistillWriter>>,
}

/// Opens (or creates, or resumes) the dataset at `path` for records of `top_k` (1 to 20)
/// log-probabilities per token. On success `*out` is a writer to close with `r1_distill_close`.
#[no_mangle]
pub unsafe extern "C" fn r1_distill_open(
    path: *const c_char,
    top_k: u32,
    out: *mut *mut r1_distill,
) -> crate::r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let path = c_str(path, "path")?;
            if out.is_null() {
                return Err(Failure::null("out"));
            }
            let writer = DistillWriter::create(path, top_k as usize)?;
            *out = Box::into_raw(Box::new(r1_distill {
                writer: Mutex::new(Some(writer)),
            }));
            Ok(())
        })
    }
}

/// Runs `f` on a writer that is still open.
///
/// # Safety
/// `w` is NULL or a live writer from `r1_distill_open`.
unsafe fn with_writer<T>(
    w: *const r1_distill,
    f: impl FnOnce(&mut DistillWriter) -> Result<T, Failure>,
) -> Result<T, Failure> {
    // SAFETY: a non-NULL `w` is a live writer (this function's contract).
    let w = unsafe { w.as_ref() }.ok_or_else(|| Failure::null("writer"))?;
    let mut guard = w.writer.lock().unwrap_or_else(|p| p.into_inner());
    f(guard
        .as_mut()
        .ok_or_else(|| Failure::invalid("the writer was closed"))?)
}

/// Whether the dataset holds a generation of this prompt text (the rendered chat: see
/// `r1_apply_chat_template`); false for bad arguments.
#[no_mangle]
pub unsafe extern "C" fn r1_distill_contains(w: *const r1_distill, prompt_text: *const c_char) -> bool {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard_value(false, || {
            with_writer(w, |w| Ok(w.contains(c_str(prompt_text, "prompt_text")?))).unwrap_or(false)
        })
    }
}

/// Generations in the dataset, earlier runs' included (0 for bad arguments).
#[no_mangle]
pub unsafe extern "C" fn r1_distill_count(w: *const r1_distill) -> usize {
    // SAFETY: a non-NULL `w` is a live writer (the header's contract).
    unsafe { guard_value(0, || with_writer(w, |w| Ok(w.len())).unwrap_or(0)) }
}

/// Appends the session's last generation, which must have been run with
/// `params.top_logprobs` equal to the writer's `top_k`.
#[no_mangle]
pub unsafe extern "C" fn r1_distill_write_last(w: *mut r1_distill, session: *const r1_session) -> crate::r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let s = session_ref(session)?;
            let last = lock_last(s);
            let record = last.record.as_ref().ok_or_else(|| {
                Failure::invalid("the session's last generation was not run with params.top_logprobs set")
            })?;
            with_writer(w, |w| Ok(w.write(record)?))
        })
    }
}

/// Appends sample `i` of a self-consistency result run with `params.top_logprobs` set.
#[no_mangle]
pub unsafe extern "C" fn r1_distill_write_sample(
    w: *mut r1_distill,
    c: *const r1_consensus,
    i: usize,
) -> crate::r1_status {
    // SAFETY: the caller keeps the C contract of include/r1.h: every non-NULL pointer is valid
    // for the length passed with it and live for the call; NULLs are checked before use.
    unsafe {
        guard(|| {
            let c = consensus_ref(c)?;
            let record = DistillRecord::from_sample(&c.prompt_text, &c.consensus, i)?;
            with_writer(w, |w| Ok(w.write(&record)?))
        })
    }
}

/// Writes what is buffered (a safetensors dataset's last shard) and frees the writer; the
/// status says whether that last write worked. NULL is fine (`R1_OK`); never twice.
#[no_mangle]
pub unsafe extern "C" fn r1_distill_close(w: *mut r1_distill) -> crate::r1_status {
    // SAFETY: a non-NULL `w` is a live writer, freed once (the header's contract).
    unsafe {
        guard(|| {
            if w.is_null() {
                return Ok(());
            }
            let w = Box::from_raw(w);
            let writer = w.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
            match writer {
                Some(writer) => Ok(writer.finish()?),
                None => Ok(()),
            }
        })
    }
}
