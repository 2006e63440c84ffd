//! Tokenizer (`tokenizer.json` through the `tokenizers` crate) and chat template
//! (`tokenizer_config.json` `chat_template` or `chat_template.jinja`, rendered with minijinja the
//! way transformers renders it with jinja2: `trim_blocks`, `lstrip_blocks`, `raise_exception`,
//! Python string methods).

use std::path::{Path, PathBuf};

pub use rlhf_core::ChatMessage;
use serde_json::Value;

use crate::config::read_json;
use crate::error::{ModelError, Result};

/// A tokenizer with its special tokens and chat template.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    chat_template: Option<(String, PathBuf)>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
}

impl Tokenizer {
    /// Loads `tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja` from a folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::Tokenizer {
                path,
                message: "not found (only the fast-tokenizer format tokenizer.json is supported)"
                    .into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = if cfg_path.exists() {
            read_json(&cfg_path)?
        } else {
            Value::Null
        };
        let special = |key: &str| -> Option<String> {
            match cfg.get(key) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Object(o)) => {
                    o.get("content").and_then(Value::as_str).map(String::from)
                }
                _ => None,
            }
        };
        let mut chat_template = match cfg.get("chat_template") {
            Some(Value::String(s)) => Some((s.clone(), cfg_path.clone())),
            Some(Value::Array(items)) => items
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or(items.first())
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(|s| (s.to_string(), cfg_path.clone())),
            _ => None,
        };
        let jinja = dir.join("chat_template.jinja");
        if chat_template.is_none() && jinja.exists() {
            let text = std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?;
            chat_template = Some((text, jinja));
        }
        Ok(Self {
            inner,
            path,
            chat_template,
            bos_token: special("bos_token"),
            eos_token: special("eos_token"),
            pad_token: special("pad_token"),
            unk_token: special("unk_token"),
        })
    }

    fn err(&self, message: impl Into<String>) -> ModelError {
        ModelError::Tokenizer {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// Encodes text. `add_special_tokens = true` is what `tokenizer(text)` does in transformers:
    /// the tokenizer's own post-processor decides which special tokens are added.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.err(format!("cannot encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.err(format!("cannot decode: {e}")))
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of the end-of-sequence token named in `tokenizer_config.json`.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_id(t))
    }

    /// The id of the padding token named in `tokenizer_config.json`.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_token.as_deref().and_then(|t| self.token_id(t))
    }

    /// Whether a chat template was found.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Renders the chat template to text.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let Some((source, path)) = &self.chat_template else {
            return Err(ModelError::ChatTemplate {
                path: self.path.with_file_name("tokenizer_config.json"),
                message: "no `chat_template` field and no chat_template.jinja".into(),
            });
        };
        let err = |message: String| ModelError::ChatTemplate {
            path: path.clone(),
            message,
        };
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", source)
            .map_err(|e| err(format!("invalid template: {}", describe(&e))))?;
        let template = env.get_template("chat").map_err(|e| err(describe(&e)))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
            pad_token => self.pad_token.clone().unwrap_or_default(),
            unk_token => self.unk_token.clone().unwrap_or_default(),
        };
        template
            .render(ctx)
            .map_err(|e| err(format!("rendering failed: {}", describe(&e))))
    }

    /// Renders and encodes a conversation as `apply_chat_template(..., tokenize=True)` does
    /// (the rendered text carries its own special tokens, so none are added).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }
}

/// A one-line description of a minijinja error, with its line when known.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.kind().to_string();
    if let Some(detail) = e.detail() {
        s.push_str(": ");
        s.push_str(detail);
    }
    if let Some(line) = e.line() {
        s.push_str(&format!(" (line {line})"));
    }
    s
}
