//! The on-disk cache of GPU kernels and autotune results.
//!
//! burn's CUDA backend (CubeCL) compiles every kernel at run time (generated C++ through NVRTC
//! to PTX) and autotunes matmuls and reductions on first use: the first training step of a
//! Qwen2.5-0.5B-shaped model took 11–19 s on an H200 against 0.3 s for the next ones
//! (docs/benchmarks.md). CubeCL keeps autotune results on disk by default (in a `target` folder
//! found above the working directory, else the user's cache folder) but compiled kernels only in
//! memory, so every process — each learner restart, each rollout worker — compiled them all
//! again. [`configure`] points both caches at one folder before the first GPU call:
//!
//! - `RLHF_GPU_CACHE=DIR` puts them in `DIR`; `RLHF_GPU_CACHE=off` keeps CubeCL's defaults
//!   (kernels compiled in memory only).
//! - Unset, they go to `$XDG_CACHE_HOME/rlhf/gpu`, else `$HOME/.cache/rlhf/gpu`.
//! - A CubeCL configuration file (`cubecl.toml`, `CubeCL.toml`, `burn.toml` or `Burn.toml` in
//!   the working directory or above) is left to decide, unless `RLHF_GPU_CACHE` names a folder.
//! - A folder that cannot be created or written turns the cache off with the reason (CubeCL
//!   itself would panic at the first kernel).
//!
//! CubeCL keys a compiled kernel by the kernel's name and settings, not by the GPU it was
//! compiled for, so the kernels go in a subfolder named after the GPU models the NVIDIA driver
//! lists (`/proc/driver/nvidia/gpus/*/information`, e.g. `NVIDIA-H200`): a folder shared by
//! machines with different GPUs never hands one GPU another's code. Several processes may share
//! the folder: CubeCL locks its autotune files; compiled kernels are appended to a file without
//! a lock, and an entry CubeCL cannot read back is skipped with a warning.

use std::path::{Path, PathBuf};

/// The environment variable naming the cache folder (or `off`).
pub const ENV: &str = "RLHF_GPU_CACHE";

/// CubeCL's own configuration files, searched in the working directory and its parents.
const CUBECL_FILES: [&str; 4] = ["cubecl.toml", "CubeCL.toml", "burn.toml", "Burn.toml"];

/// Where GPU kernels and autotune results are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelCache {
    /// In this folder.
    Dir(PathBuf),
    /// CubeCL's defaults (compiled kernels not kept on disk): `RLHF_GPU_CACHE=off`.
    Off(String),
    /// CubeCL's defaults, because no folder could be used (why).
    Unavailable(String),
    /// As this CubeCL configuration file says.
    UserConfig(PathBuf),
}

impl std::fmt::Display for KernelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelCache::Dir(dir) => write!(f, "GPU kernel cache in {}", dir.display()),
            KernelCache::Off(why) => write!(f, "GPU kernel cache off: {why}"),
            KernelCache::Unavailable(why) => write!(f, "GPU kernel cache unavailable: {why}"),
            KernelCache::UserConfig(file) => {
                write!(f, "GPU kernel cache as configured in {}", file.display())
            }
        }
    }
}

/// `v` trimmed, `None` when blank.
fn set(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|v| !v.is_empty())
}

/// Decides where the cache goes from the values of `RLHF_GPU_CACHE`, `XDG_CACHE_HOME` and
/// `HOME` and the working directory `cwd` (no file is written).
pub fn resolve(
    setting: Option<&str>,
    xdg_cache_home: Option<&str>,
    home: Option<&str>,
    cwd: &Path,
) -> KernelCache {
    match set(setting) {
        Some(v)
            if matches!(
                v.to_ascii_lowercase().as_str(),
                "off" | "none" | "0" | "false"
            ) =>
        {
            return KernelCache::Off(format!("{ENV}={v}"));
        }
        Some(v) => return KernelCache::Dir(cwd.join(v)),
        None => {}
    }
    if let Some(file) = cubecl_config_file(cwd) {
        return KernelCache::UserConfig(file);
    }
    // XDG: a relative XDG_CACHE_HOME is invalid and ignored.
    if let Some(xdg) = set(xdg_cache_home)
        .map(Path::new)
        .filter(|p| p.is_absolute())
    {
        return KernelCache::Dir(xdg.join("rlhf").join("gpu"));
    }
    match set(home) {
        Some(home) => KernelCache::Dir(Path::new(home).join(".cache").join("rlhf").join("gpu")),
        None => KernelCache::Unavailable(format!("neither {ENV}, XDG_CACHE_HOME nor HOME is set")),
    }
}

/// The CubeCL configuration file CubeCL itself would read from `cwd`, if any.
fn cubecl_config_file(cwd: &Path) -> Option<PathBuf> {
    cwd.ancestors()
        .flat_map(|dir| CUBECL_FILES.iter().map(move |name| dir.join(name)))
        .find(|path| path.is_file())
}

/// Creates `dir` and checks that a file can be written in it.
pub fn prepare(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".rlhf-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("cannot write in {}: {e}", dir.display()))
}

/// The GPU models the NVIDIA driver lists under `proc_root` (`/proc` on Linux), as one folder
/// name (`NVIDIA-H200`, models joined by `+`); `None` without the driver.
pub fn gpu_models(proc_root: &Path) -> Option<String> {
    let gpus = std::fs::read_dir(proc_root.join("driver/nvidia/gpus")).ok()?;
    let mut models: Vec<String> = gpus
        .filter_map(|gpu| std::fs::read_to_string(gpu.ok()?.path().join("information")).ok())
        .filter_map(|info| {
            let line = info.lines().find(|l| l.starts_with("Model:"))?;
            let model: String = line["Model:".len()..]
                .trim()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            (!model.is_empty()).then_some(model)
        })
        .collect();
    models.sort();
    models.dedup();
    (!models.is_empty()).then(|| models.join("+"))
}

/// Resolves the cache from the environment, prepares its folder (with the GPU models'
/// subfolder) and, in a binary built with the CUDA backend, hands it to CubeCL. Call once,
/// before anything runs on a GPU; returns what was decided, for the log.
pub fn configure() -> KernelCache {
    let env = |name: &str| std::env::var(name).ok();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let decided = resolve(
        env(ENV).as_deref(),
        env("XDG_CACHE_HOME").as_deref(),
        env("HOME").as_deref(),
        &cwd,
    );
    let decided = match decided {
        KernelCache::Dir(dir) => {
            let dir =
                dir.join(gpu_models(Path::new("/proc")).unwrap_or_else(|| "unknown-gpu".into()));
            match prepare(&dir) {
                Ok(()) => KernelCache::Dir(dir),
                Err(why) => KernelCache::Unavailable(format!(
                    "{why} (set {ENV} to a writable folder, or to `off`)"
                )),
            }
        }
        other => other,
    };
    apply(decided)
}

/// Sets CubeCL's runtime configuration: its own (file and `CUBECL_*` variables, as CubeCL would
/// read them) with both caches in the folder.
#[cfg(feature = "cuda")]
fn apply(decided: KernelCache) -> KernelCache {
    use burn::cubecl::config::cache::CacheConfig;
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    let KernelCache::Dir(dir) = &decided else {
        return decided;
    };
    if CubeClRuntimeConfig::storage().lock().is_some() {
        return KernelCache::Unavailable(
            "CubeCL was configured before the cache could be set".into(),
        );
    }
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    config.compilation.cache = Some(CacheConfig::File(dir.clone()));
    config.autotune.cache = CacheConfig::File(dir.clone());
    CubeClRuntimeConfig::set(config);
    decided
}

/// Without a GPU backend in the binary there is nothing to configure.
#[cfg(not(feature = "cuda"))]
fn apply(decided: KernelCache) -> KernelCache {
    decided
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_wins_then_a_cubecl_file_then_xdg_then_home() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cwd = tmp.path().join("work").join("run");
        std::fs::create_dir_all(&cwd).expect("mkdir");
        let r = |s, x, h| resolve(s, x, h, &cwd);
        assert_eq!(
            r(None, Some("/xdg"), Some("/home/u")),
            KernelCache::Dir(PathBuf::from("/xdg/rlhf/gpu"))
        );
        assert_eq!(
            r(None, None, Some("/home/u")),
            KernelCache::Dir(PathBuf::from("/home/u/.cache/rlhf/gpu"))
        );
        // A relative XDG_CACHE_HOME is invalid (XDG spec): HOME decides.
        assert_eq!(
            r(None, Some("cache"), Some("/home/u")),
            KernelCache::Dir(PathBuf::from("/home/u/.cache/rlhf/gpu"))
        );
        assert!(
            matches!(r(None, None, None), KernelCache::Unavailable(why) if why.contains("HOME"))
        );
        // Relative folders are taken from the working directory.
        assert_eq!(
            r(Some("kernels"), None, Some("/home/u")),
            KernelCache::Dir(cwd.join("kernels"))
        );
        for off in ["off", "OFF", "none", "0", "false"] {
            assert!(matches!(
                r(Some(off), Some("/x"), Some("/h")),
                KernelCache::Off(_)
            ));
        }
        // Blank means unset.
        assert_eq!(
            r(Some("  "), None, Some("/home/u")),
            KernelCache::Dir(PathBuf::from("/home/u/.cache/rlhf/gpu"))
        );
        // A CubeCL file above the working directory decides, unless the setting names a folder.
        let file = tmp.path().join("work").join("burn.toml");
        std::fs::write(&file, "[cubecl]\n").expect("write");
        assert_eq!(
            r(None, Some("/xdg"), Some("/home/u")),
            KernelCache::UserConfig(file)
        );
        assert_eq!(
            r(Some("/k"), None, None),
            KernelCache::Dir(PathBuf::from("/k"))
        );
    }

    #[test]
    fn gpu_models_come_from_the_driver_listing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(gpu_models(tmp.path()), None, "no driver");
        let gpus = tmp.path().join("driver/nvidia/gpus");
        for (bus, model) in [
            ("0000:01:00.0", "NVIDIA H200"),
            ("0000:02:00.0", "NVIDIA H200"),
            ("0000:03:00.0", "NVIDIA A100-SXM4-80GB"),
        ] {
            std::fs::create_dir_all(gpus.join(bus)).expect("mkdir");
            std::fs::write(
                gpus.join(bus).join("information"),
                format!("Model: \t\t {model}\nIRQ:   \t\t 42\nGPU UUID: \t GPU-1234\n"),
            )
            .expect("write");
        }
        assert_eq!(
            gpu_models(tmp.path()).as_deref(),
            Some("NVIDIA-A100-SXM4-80GB+NVIDIA-H200")
        );
    }

    #[test]
    fn prepare_creates_the_folder_and_refuses_one_it_cannot_write() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a").join("b");
        prepare(&dir).expect("writable");
        assert!(dir.is_dir());
        assert_eq!(
            std::fs::read_dir(&dir).expect("list").count(),
            0,
            "probe removed"
        );
        // A path through a regular file can never be created.
        let file = tmp.path().join("plain");
        std::fs::write(&file, "x").expect("write");
        let err = prepare(&file.join("sub")).expect_err("not a folder");
        assert!(
            err.contains("cannot create") && err.contains("plain"),
            "{err}"
        );
    }
}
