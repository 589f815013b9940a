//! What the examples, integration tests and benches of this package share.

/// Peak resident set size of this process in KiB (Linux's `VmHWM`; `None` elsewhere).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A loading bar on stderr for [`r1_core::LoadOptions::with_progress`]; it clears itself when
/// the load is done.
pub fn progress_bar() -> impl Fn(u64, u64) -> bool + Send + Sync + 'static {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("loading {bar:40} {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    move |done, total| {
        bar.set_length(total);
        bar.set_position(done);
        if done >= total {
            bar.finish_and_clear();
        }
        true
    }
}

/// An example's exit: success, or its name and the error on stderr and a failure code.
pub fn exit_code(name: &str, result: Result<(), impl std::fmt::Display>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
