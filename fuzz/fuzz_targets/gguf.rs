//! The GGUF reader on arbitrary bytes, then what loading does with a header that parses: the
//! model config and the tokenizer from its metadata. Any outcome but a panic or a crash is fine.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((_config, tokenizer)) = r1_core::internals::gguf_header(data) {
        // A tokenizer that was built must encode and decode without panicking.
        if let Ok(ids) = tokenizer.encode("Hello <think> world</think>", true) {
            let _ = tokenizer.decode(&ids, false);
        }
    }
});
