//! The thread count is a load option, honoured without environment variables, and process-wide
//! (this file is its own test process, so the first setting here is the process's first).

mod common;
use common::fixtures_dir;
use r1_core::{ErrorCode, LoadOptions, Model};

#[test]
fn threads_are_a_process_wide_load_option() {
    assert_eq!(r1_core::threads(), None);
    let dir = fixtures_dir().join("llama_tiny");
    let model = Model::load(&dir, &LoadOptions::default().with_threads(1)).unwrap();
    assert_eq!(r1_core::threads(), Some(1));
    // The tensor library's pools read this at their first use, which comes now.
    assert_eq!(std::env::var("CANDLE_NUM_THREADS").as_deref(), Ok("1"));
    model.logits(&[1, 2, 3]).unwrap();
    // The same count again is fine; another is refused, naming the count in force.
    Model::load(&dir, &LoadOptions::default().with_threads(1)).unwrap();
    let err = Model::load(&dir, &LoadOptions::default().with_threads(2))
        .err()
        .unwrap();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.to_string().contains("already computes with 1 threads"), "{err}");
    assert!(
        r1_core::set_threads(0).is_ok(),
        "0 = the default, which changes nothing"
    );
}
