//! The C ABI's entry points with fuzzed arguments, on one tiny model loaded once: text that is
//! not UTF-8, token ids outside the vocabulary, buffers too small or empty, NULL pointers,
//! messages with any bytes, trace accessors at any index. The contract a C caller keeps (a
//! non-NULL pointer points to as many items as its length says) is kept; everything else is
//! the fuzzer's. Every call must return a status, never crash.
#![no_main]
use libfuzzer_sys::fuzz_target;
use r1::*;
use std::ffi::{c_char, CString};
use std::sync::OnceLock;

struct Model(*mut r1_model);
// SAFETY: the C API documents models as thread-safe; the pointer is only read.
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

fn model() -> *const r1_model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/fixtures/gguf/llama_tiny.f32.gguf"
            );
            let path = CString::new(path).unwrap();
            let mut m = std::ptr::null_mut();
            // SAFETY: a NUL-terminated path, NULL params (the defaults), a valid out pointer.
            let status = unsafe { r1_model_load(path.as_ptr(), std::ptr::null(), &mut m) };
            assert_eq!(status, r1_status::R1_OK, "the fixture model must load");
            Model(m)
        })
        .0
}

/// A pointer to `v`, or NULL when `null` (a C caller's mistake the API must report).
fn ptr<T>(v: &[T], null: bool) -> *const T {
    if null {
        std::ptr::null()
    } else {
        v.as_ptr()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[op, flags, cap], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let null = flags & 1 == 1;
    let cap = cap as usize % 80;
    let m = if flags & 2 == 2 { std::ptr::null() } else { model() };
    let mut n = 0usize;
    // SAFETY, for every call below: each non-NULL pointer points to at least as many items as
    // the length passed with it, and every out pointer is valid; the rest is fuzzed.
    unsafe {
        match op % 5 {
            0 => {
                let mut ids = vec![0u32; cap];
                let _ = r1_tokenize(
                    m,
                    ptr(rest, null).cast(),
                    rest.len(),
                    flags & 4 == 4,
                    ids.as_mut_ptr(),
                    cap,
                    &mut n,
                );
            }
            1 => {
                let ids: Vec<u32> = rest
                    .chunks(2)
                    .map(|c| c.iter().fold(0u32, |a, &b| a << 8 | b as u32))
                    .collect();
                let mut buf = vec![0 as c_char; cap];
                let _ = r1_detokenize(m, ptr(&ids, null), ids.len(), buf.as_mut_ptr(), cap, &mut n);
            }
            2 => {
                let parts: Vec<CString> = rest
                    .split(|&b| b == 0xff)
                    .take(8)
                    .map(|p| CString::new(p.iter().copied().filter(|&b| b != 0).collect::<Vec<u8>>()).unwrap())
                    .collect();
                let msgs: Vec<r1_message> = parts
                    .chunks(2)
                    .map(|pair| r1_message {
                        role: pair[0].as_ptr(),
                        content: pair.get(1).map_or(std::ptr::null(), |c| c.as_ptr()),
                    })
                    .collect();
                let mut buf = vec![0 as c_char; cap * 16];
                let _ = r1_apply_chat_template(
                    m,
                    ptr(&msgs, null),
                    msgs.len(),
                    flags & 4 == 4,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut n,
                );
            }
            3 => {
                let mut t = std::ptr::null_mut();
                if r1_trace_parse(ptr(rest, null).cast(), rest.len(), flags & 4 == 4, &mut t) == r1_status::R1_OK {
                    let _ = (
                        r1_trace_reasoning(t),
                        r1_trace_answer(t),
                        r1_trace_final_answer(t),
                        r1_trace_truncated(t),
                    );
                    for i in 0..r1_trace_step_count(t) + 2 {
                        let _ = r1_trace_step(t, i);
                    }
                    for i in 0..r1_trace_tool_call_count(t) + 2 {
                        let _ = (r1_trace_tool_call_name(t, i), r1_trace_tool_call_arguments(t, i));
                    }
                    r1_trace_free(t);
                }
            }
            _ => {
                let ids: Vec<u32> = rest.iter().take(8).map(|&b| b as u32 * 3).collect();
                let mut out = vec![0f32; cap * 64];
                let _ = r1_model_logits(m, ptr(&ids, null), ids.len(), out.as_mut_ptr(), out.len());
            }
        }
        let _ = r1_last_error_message();
    }
});
