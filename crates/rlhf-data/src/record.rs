//! One prompt of a dataset, and the rules that turn a JSON object (a JSONL line, or a Parquet row
//! converted to JSON) into one. Both file formats share these rules, so they accept the same
//! records and report the same errors.

use rlhf_core::ChatMessage;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::error::FieldError;

/// What the policy is asked: a plain string or a list of chat messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Prompt {
    /// A plain prompt, sent as one user message when a chat template is applied.
    #[serde(rename = "prompt")]
    Text(String),
    /// A conversation to continue (system, user, assistant turns).
    #[serde(rename = "messages")]
    Messages(Vec<ChatMessage>),
}

impl Prompt {
    /// The prompt as chat messages: a plain prompt becomes one `user` message.
    pub fn to_messages(&self) -> Vec<ChatMessage> {
        match self {
            Prompt::Text(text) => vec![ChatMessage::new("user", text.clone())],
            Prompt::Messages(messages) => messages.clone(),
        }
    }

    /// A one-string view for logs: the text, or the messages' contents joined by newlines.
    pub fn display_text(&self) -> String {
        match self {
            Prompt::Text(text) => text.clone(),
            Prompt::Messages(messages) => messages
                .iter()
                .map(|m| format!("{}: {}", m.role, m.content))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// One prompt of a dataset.
///
/// Serialises to the same shape it is read from: `{"id", "prompt" | "messages", "answer"?,
/// "group"?, ...metadata}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromptRecord {
    /// Unique within its dataset; part of every sample id, so it must be stable across runs.
    pub id: String,
    /// What the policy is asked.
    #[serde(flatten)]
    pub prompt: Prompt,
    /// A reference answer for rule and verifier scorers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// A group label, for per-group (pluralistic) rewards and per-group metrics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Every other field of the record, kept for scorers and reports.
    #[serde(flatten)]
    pub metadata: Map<String, Value>,
}

impl<'de> Deserialize<'de> for PromptRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = Map::deserialize(deserializer)?;
        PromptRecord::from_json(object, None).map_err(|e| match e.field {
            Some(field) => serde::de::Error::custom(format!("field `{field}`: {}", e.message)),
            None => serde::de::Error::custom(e.message),
        })
    }
}

/// The reserved keys of a record; everything else is metadata.
const RESERVED: [&str; 5] = ["id", "prompt", "messages", "answer", "group"];

impl PromptRecord {
    /// A record with a plain prompt and nothing else.
    pub fn new(id: impl Into<String>, prompt: impl Into<String>) -> Self {
        PromptRecord {
            id: id.into(),
            prompt: Prompt::Text(prompt.into()),
            answer: None,
            group: None,
            metadata: Map::new(),
        }
    }

    /// Parses a record from a JSON object; `default_id` is used when the record has no `id`
    /// (`null` counts as absent for every optional field).
    pub(crate) fn from_json(
        mut object: Map<String, Value>,
        default_id: Option<String>,
    ) -> Result<Self, FieldError> {
        let id = match object.remove("id") {
            None | Some(Value::Null) => {
                default_id.ok_or_else(|| FieldError::new("id", "missing"))?
            }
            Some(Value::String(s)) if s.is_empty() => {
                return Err(FieldError::new("id", "empty string"));
            }
            Some(Value::String(s)) => s,
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            Some(other) => {
                return Err(FieldError::new(
                    "id",
                    format!("expected a string or an integer, found {}", kind(&other)),
                ));
            }
        };
        let text = optional_string(&mut object, "prompt")?;
        let messages = match object.remove("messages") {
            None | Some(Value::Null) => None,
            Some(value) => Some(parse_messages(value)?),
        };
        let prompt = match (text, messages) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "prompt",
                    "both `prompt` and `messages` are set; keep one",
                ));
            }
            (Some(text), None) if text.is_empty() => {
                return Err(FieldError::new("prompt", "empty string"));
            }
            (Some(text), None) => Prompt::Text(text),
            (None, Some(messages)) => Prompt::Messages(messages),
            (None, None) => {
                return Err(FieldError::new(
                    "prompt",
                    "missing: a record needs `prompt` (a string) or `messages` (a list of {role, content})",
                ));
            }
        };
        let answer = optional_string(&mut object, "answer")?;
        let group = optional_string(&mut object, "group")?;
        debug_assert!(RESERVED.iter().all(|k| !object.contains_key(*k)));
        Ok(PromptRecord {
            id,
            prompt,
            answer,
            group,
            metadata: object,
        })
    }
}

fn optional_string(
    object: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<String>, FieldError> {
    match object.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(FieldError::new(
            key,
            format!("expected a string, found {}", kind(&other)),
        )),
    }
}

fn parse_messages(value: Value) -> Result<Vec<ChatMessage>, FieldError> {
    let Value::Array(items) = value else {
        return Err(FieldError::new(
            "messages",
            format!(
                "expected a list of {{role, content}}, found {}",
                kind(&value)
            ),
        ));
    };
    if items.is_empty() {
        return Err(FieldError::new("messages", "empty list"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Object(mut message) = item else {
                return Err(FieldError::new(
                    format!("messages[{i}]"),
                    format!(
                        "expected an object {{role, content}}, found {}",
                        kind(&item)
                    ),
                ));
            };
            let mut take = |key: &str| match message.remove(key) {
                Some(Value::String(s)) => Ok(s),
                None | Some(Value::Null) => {
                    Err(FieldError::new(format!("messages[{i}].{key}"), "missing"))
                }
                Some(other) => Err(FieldError::new(
                    format!("messages[{i}].{key}"),
                    format!("expected a string, found {}", kind(&other)),
                )),
            };
            let role = take("role")?;
            let content = take("content")?;
            if role.is_empty() {
                return Err(FieldError::new(
                    format!("messages[{i}].role"),
                    "empty string",
                ));
            }
            // Keys with null values are what columnar writers produce for absent struct
            // fields; any other key would be silently dropped, so it is an error.
            if let Some((key, _)) = message.iter().find(|(_, v)| !v.is_null()) {
                return Err(FieldError::new(
                    format!("messages[{i}].{key}"),
                    "unknown key (a message has only `role` and `content`)",
                ));
            }
            Ok(ChatMessage { role, content })
        })
        .collect()
}

/// A JSON value's type, for error messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<PromptRecord, FieldError> {
        let Value::Object(object) = value else {
            panic!("test input must be an object");
        };
        PromptRecord::from_json(object, Some("7".into()))
    }

    #[test]
    fn accepts_every_shape() -> Result<(), String> {
        let text = parse(json!({"prompt": "hi", "answer": "a", "group": "g", "lang": "en"}))
            .map_err(|e| e.message)?;
        assert_eq!(text.id, "7");
        assert_eq!(text.prompt, Prompt::Text("hi".into()));
        assert_eq!(text.answer.as_deref(), Some("a"));
        assert_eq!(text.group.as_deref(), Some("g"));
        assert_eq!(text.metadata.get("lang"), Some(&json!("en")));

        let chat =
            parse(json!({"id": 42, "messages": [{"role": "user", "content": "x", "name": null}]}))
                .map_err(|e| e.message)?;
        assert_eq!(chat.id, "42");
        assert_eq!(
            chat.prompt.to_messages(),
            vec![ChatMessage::new("user", "x")]
        );
        let nulls = parse(json!({"id": null, "prompt": "p", "answer": null, "messages": null}))
            .map_err(|e| e.message)?;
        assert_eq!((nulls.id.as_str(), nulls.answer), ("7", None));
        Ok(())
    }

    #[test]
    fn rejects_with_the_field_named() {
        let cases = [
            (json!({"answer": "x"}), "prompt", "missing"),
            (
                json!({"prompt": 3}),
                "prompt",
                "expected a string, found an integer",
            ),
            (json!({"prompt": ""}), "prompt", "empty string"),
            (
                json!({"prompt": "a", "messages": []}),
                "messages",
                "empty list",
            ),
            (
                json!({"prompt": "a", "messages": [{"role": "u", "content": "c"}]}),
                "prompt",
                "both",
            ),
            (json!({"messages": "hi"}), "messages", "expected a list"),
            (
                json!({"messages": [1]}),
                "messages[0]",
                "expected an object",
            ),
            (
                json!({"messages": [{"role": "u"}]}),
                "messages[0].content",
                "missing",
            ),
            (
                json!({"messages": [{"role": 1, "content": "c"}]}),
                "messages[0].role",
                "found an integer",
            ),
            (
                json!({"messages": [{"role": "u", "content": "c", "x": 1}]}),
                "messages[0].x",
                "unknown key",
            ),
            (json!({"prompt": "p", "id": 1.5}), "id", "found a float"),
            (json!({"prompt": "p", "id": ""}), "id", "empty"),
            (
                json!({"prompt": "p", "answer": 4}),
                "answer",
                "found an integer",
            ),
            (
                json!({"prompt": "p", "group": ["g"]}),
                "group",
                "found a list",
            ),
        ];
        for (input, field, message) in cases {
            let error = match parse(input.clone()) {
                Ok(record) => panic!("{input} was accepted as {record:?}"),
                Err(e) => e,
            };
            assert_eq!(error.field.as_deref(), Some(field), "{input}");
            assert!(
                error.message.contains(message),
                "{input}: {}",
                error.message
            );
        }
    }

    #[test]
    fn serde_round_trip_keeps_the_input_shape() -> Result<(), serde_json::Error> {
        let input = json!({"id": "a", "messages": [{"role": "user", "content": "x"}], "group": "g", "k": [1]});
        let record: PromptRecord = serde_json::from_value(input.clone())?;
        assert_eq!(serde_json::to_value(&record)?, input);
        let missing: Result<PromptRecord, _> = serde_json::from_value(json!({"prompt": "p"}));
        assert!(missing.is_err(), "a serialised record must carry its id");
        Ok(())
    }
}
