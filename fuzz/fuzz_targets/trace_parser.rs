//! The streaming trace parser on arbitrary text in arbitrary chunks, against its documented
//! promise: every chunking gives the trace that parsing the whole text at once gives.
#![no_main]
use libfuzzer_sys::fuzz_target;
use r1_core::{Trace, TraceParser};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let starts_in_reasoning = cut & 1 == 1;
    let mut parser = TraceParser::new(starts_in_reasoning);
    // Chunks of 1 to 16 characters, the length drawn from the first byte.
    let step = 1 + (cut as usize >> 1) % 16;
    let chars: Vec<char> = text.chars().collect();
    for chunk in chars.chunks(step) {
        parser.push(&chunk.iter().collect::<String>());
    }
    let (_, trace) = parser.finish();
    let _ = r1_core::steps(&trace.reasoning, &r1_core::StepConfig::default());
    let _ = r1_core::final_answer(&trace.answer);
    assert_eq!(
        trace,
        Trace::parse(&text, starts_in_reasoning),
        "chunks of {step} differ from the whole"
    );
});
