//! `include/r1.h` is what cbindgen makes of r1-ffi's sources: regenerated here and compared,
//! so a change to the ABI that is not in the committed header fails. `R1_BLESS=1` rewrites it.

use std::path::Path;

#[test]
fn committed_header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen reads r1-ffi")
        .write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    let header = crate_dir.join("../include/r1.h");
    if std::env::var_os("R1_BLESS").is_some() {
        std::fs::write(&header, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&header).unwrap_or_default();
    assert!(
        committed == generated,
        "include/r1.h is stale: run `R1_BLESS=1 cargo test -p r1-ffi --release --test header` and commit it"
    );
}
