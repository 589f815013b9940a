//! Writes `r1.pc` (pkg-config) beside the built library, so a C project finds libr1 with
//! `pkg-config --cflags --libs r1` (PKG_CONFIG_PATH=target/release).

fn main() {
    let Some(out) = std::env::var_os("OUT_DIR") else { return };
    // OUT_DIR is target/<profile>/build/r1-ffi-<hash>/out: the library lands in target/<profile>.
    let profile_dir = std::path::Path::new(&out).ancestors().nth(3).map(|p| p.to_path_buf());
    let Some(lib_dir) = profile_dir else { return };
    let include = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../include");
    let include = include.canonicalize().unwrap_or(include);
    let pc = format!(
        "prefix={}\nlibdir={}\nincludedir={}\n\nName: r1\nDescription: Embeddable inference for DeepSeek-R1-family reasoning models\nVersion: {}\nLibs: -L${{libdir}} -lr1\nLibs.private: -lpthread -ldl -lm\nCflags: -I${{includedir}}\n",
        lib_dir.display(),
        lib_dir.display(),
        include.display(),
        env!("CARGO_PKG_VERSION"),
    );
    let _ = std::fs::write(lib_dir.join("r1.pc"), pc);
    println!("cargo:rerun-if-changed=build.rs");
}
