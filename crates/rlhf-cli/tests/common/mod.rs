//! Helpers shared by the tests that run the `rlhf` binary as a user does.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A checkpoint under `tests/fixtures` (`hf-tiny/tiny-qwen2`, ...).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// The tiny Qwen2 checkpoint most tests train.
pub fn tiny_qwen2() -> PathBuf {
    fixture("hf-tiny/tiny-qwen2")
}

/// Runs `rlhf ARGS`: (exit code, stdout, stderr).
pub fn rlhf(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(args)
        .output()
        .expect("the rlhf binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `ready` every 50 ms, failing after `within` with `what`.
pub fn wait_until(what: &str, within: std::time::Duration, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
