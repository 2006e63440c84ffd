//! Live settings: run settings an operator changes while the run goes on (`Admin.Set`, `rlhf
//! set`). They are kept in `<output_dir>/settings.json`, which a resumed run (a restart, a
//! standby taking over) applies over the run file's values, so that a run extended to 500
//! iterations stays extended.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::CoordinatorError;
use crate::config::CoordinatorConfig;

/// The file in the output folder.
pub const FILE: &str = "settings.json";

/// The settings that can change while a run goes on.
pub const KEYS: &[&str] = &["iterations", "eval_every", "checkpoint_every", "lr"];

/// Values of the live settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Iterations the run makes in all.
    pub iterations: u64,
    /// Held-out evaluation every N iterations (0: at the start and the end only).
    pub eval_every: u64,
    /// A checkpoint every N iterations (0: only the final one).
    pub checkpoint_every: u64,
    /// The policy's learning rate, sent with every update once set (none: the learner's
    /// `learner.lr`).
    #[serde(default)]
    pub lr: Option<f64>,
}

impl Settings {
    /// The settings as `config` has them.
    pub fn of(config: &CoordinatorConfig) -> Self {
        Self {
            iterations: config.iterations,
            eval_every: config.eval_every,
            checkpoint_every: config.checkpoint_every,
            lr: None,
        }
    }

    /// Writes these settings into `config`.
    pub fn apply(&self, config: &mut CoordinatorConfig) {
        config.iterations = self.iterations;
        config.eval_every = self.eval_every;
        config.checkpoint_every = self.checkpoint_every;
    }
}

/// The settings changed live in the run in `out`, if any.
pub fn load(out: &Path) -> Result<Option<Settings>, CoordinatorError> {
    let path = out.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| CoordinatorError::Io(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CoordinatorError::Io(format!("{}: {e}", path.display()))),
    }
}

/// `config` with the live settings of its output folder applied when it resumes (a fresh run
/// forgets them); returns the settings in effect.
pub fn resolve(config: &mut CoordinatorConfig) -> Result<Settings, CoordinatorError> {
    if !config.resume {
        return match std::fs::remove_file(config.output_dir.join(FILE)) {
            Ok(()) => Ok(Settings::of(config)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::of(config)),
            Err(e) => Err(CoordinatorError::Io(format!("{FILE}: {e}"))),
        };
    }
    let Some(s) = load(&config.output_dir)? else {
        return Ok(Settings::of(config));
    };
    if s != Settings::of(config) {
        tracing::info!(
            iterations = s.iterations,
            eval_every = s.eval_every,
            checkpoint_every = s.checkpoint_every,
            lr = ?s.lr,
            "live settings of the run ({FILE}) replace the run file's"
        );
    }
    s.apply(config);
    Ok(s)
}

fn not_live(key: &str) -> String {
    format!(
        "`{key}` cannot be changed while the run goes on (live settings: {})",
        KEYS.join(", ")
    )
}

/// The run's live settings, shared by the loop and the admin API.
#[derive(Debug, Clone)]
pub struct Live {
    settings: Arc<Mutex<Settings>>,
    out: PathBuf,
}

impl Live {
    /// The live settings `settings` (what [`resolve`] returned) of the run writing to `out`.
    pub fn new(settings: Settings, out: &Path) -> Self {
        Self {
            settings: Arc::new(Mutex::new(settings)),
            out: out.to_path_buf(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings now.
    pub fn get(&self) -> Settings {
        *self.lock()
    }

    /// Sets `key` to `value` (a whole number; `lr` a positive number) and keeps the result in
    /// `settings.json`; `done`
    /// is how many iterations the run has completed (`iterations` must stay above it: ending
    /// the run sooner is `stop`). Errors say what is wrong, naming the key.
    pub fn set(&self, key: &str, value: &str, done: u64) -> Result<Settings, String> {
        // The key first: a bad key is named as such, whatever the value.
        if !KEYS.contains(&key) {
            return Err(not_live(key));
        }
        let mut s = self.lock();
        let mut next = *s;
        if key == "lr" {
            let lr: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|lr: &f64| lr.is_finite() && *lr > 0.0)
                .ok_or_else(|| format!("lr: `{value}` is not a positive number"))?;
            next.lr = Some(lr);
            return self.keep(&mut s, next);
        }
        let n: u64 = value
            .trim()
            .parse()
            .map_err(|_| format!("{key}: `{value}` is not a whole number"))?;
        match key {
            "iterations" => {
                if n <= done {
                    return Err(format!(
                        "iterations: {n} is not above the {done} iterations done (to end the \
                         run sooner, stop it)"
                    ));
                }
                next.iterations = n;
            }
            "eval_every" => next.eval_every = n,
            "checkpoint_every" => next.checkpoint_every = n,
            other => return Err(not_live(other)),
        }
        self.keep(&mut s, next)
    }

    /// Writes `next` to `settings.json`, then makes it the settings in effect.
    fn keep(&self, s: &mut Settings, next: Settings) -> Result<Settings, String> {
        let text = serde_json::to_string_pretty(&next).map_err(|e| e.to_string())?;
        crate::resume::write_atomic(&self.out.join(FILE), &text).map_err(|e| e.to_string())?;
        *s = next;
        Ok(next)
    }
}
