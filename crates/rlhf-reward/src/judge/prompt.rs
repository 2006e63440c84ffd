//! The judge's prompts (MT-Bench style: explain first, then a verdict in a fixed format, which
//! is also the "multiple evidence" advice of Wang et al. 2023) and the parsers for its replies.

use std::sync::LazyLock;

use regex::Regex;

use crate::scorer::ScoreInput;

/// The lowest rating a pointwise judge may give.
pub const MIN_RATING: f64 = 1.0;
/// The highest rating a pointwise judge may give.
pub const MAX_RATING: f64 = 10.0;

/// The default system message.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful and impartial assistant that evaluates the quality of AI assistants' responses.";

/// The default pointwise template; `{prompt}`, `{completion}` and `{reference}` are replaced.
pub const POINTWISE_TEMPLATE: &str = "[Instruction]
Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question displayed below. Consider helpfulness, relevance, accuracy, depth and level of detail.{reference} Begin your evaluation with a short explanation. Be as objective as possible. After the explanation, rate the response on a scale of 1 to 10 by strictly following this format: \"Rating: [[5]]\".

[Question]
{prompt}

[The Start of Assistant's Answer]
{completion}
[The End of Assistant's Answer]";

/// The default pairwise template; `{prompt}`, `{a}` and `{b}` are replaced.
pub const PAIRWISE_TEMPLATE: &str = "[Instruction]
Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the user question displayed below. Choose the assistant that follows the user's instructions and answers the user's question better. Begin your evaluation by comparing the two responses and provide a short explanation. Avoid any position biases and ensure that the order in which the responses were presented does not influence your decision. Do not let the length of the responses or the names of the assistants influence your evaluation. Be as objective as possible. After the explanation, output your final verdict by strictly following this format: \"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie.

[User Question]
{prompt}

[The Start of Assistant A's Answer]
{a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{b}
[The End of Assistant B's Answer]";

/// The placeholders a pointwise template must contain.
pub const POINTWISE_PLACEHOLDERS: [&str; 2] = ["{prompt}", "{completion}"];
/// The placeholders a pairwise template must contain.
pub const PAIRWISE_PLACEHOLDERS: [&str; 3] = ["{prompt}", "{a}", "{b}"];

/// Checks that a custom `template` (at `field`) has the placeholders `mode` needs.
pub fn check_template(
    template: Option<&str>,
    mode: super::JudgeMode,
    field: &str,
) -> Result<(), crate::RewardError> {
    let Some(template) = template else {
        return Ok(());
    };
    let needed: &[&str] = match mode {
        super::JudgeMode::Pointwise => &POINTWISE_PLACEHOLDERS,
        super::JudgeMode::Pairwise => &PAIRWISE_PLACEHOLDERS,
    };
    match needed.iter().find(|p| !template.contains(**p)) {
        Some(missing) => Err(crate::RewardError::config(
            field,
            format!("a {mode:?} template must contain {missing}").to_lowercase(),
        )),
        None => Ok(()),
    }
}

/// The question as the judge should read it: the chat messages as a transcript when there
/// are several, the single message's text, or the rendered prompt.
pub fn question(input: &ScoreInput) -> String {
    match input.messages.as_deref() {
        Some([only]) => only.content.clone(),
        Some(messages) if !messages.is_empty() => messages
            .iter()
            .map(|m| format!("{}: {}", m.role, m.content))
            .collect::<Vec<_>>()
            .join("\n\n"),
        _ => input.prompt.clone(),
    }
}

/// Fills a pointwise template (one pass, so text in the completion is never re-substituted).
pub fn pointwise(template: &str, question: &str, completion: &str, answer: Option<&str>) -> String {
    let reference = match answer {
        Some(a) => {
            format!(" A reference answer is provided; use it to check correctness: \"{a}\".")
        }
        None => String::new(),
    };
    fill(
        template,
        &[
            ("{prompt}", question),
            ("{completion}", completion),
            ("{reference}", &reference),
        ],
    )
}

/// Fills a pairwise template.
pub fn pairwise(template: &str, question: &str, a: &str, b: &str) -> String {
    fill(template, &[("{prompt}", question), ("{a}", a), ("{b}", b)])
}

/// Replaces each placeholder in one left-to-right pass.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    'outer: while !rest.is_empty() {
        for (key, value) in values {
            if let Some(after) = rest.strip_prefix(key) {
                out.push_str(value);
                rest = after;
                continue 'outer;
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

static RATING_BRACKETS: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"\[\[\s*([-+]?\d+(?:\.\d+)?)\s*\]\]").ok());
static RATING_LABEL: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?i)rating\s*[:=]\s*\**\s*([-+]?\d+(?:\.\d+)?)").ok());
static VERDICT: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?i)\[\[\s*(A|B|C|tie)\s*\]\]").ok());

/// The rating in a pointwise reply: the last `[[n]]`, else the last `Rating: n`, else the whole
/// reply if it is a number. Ratings outside 1–10 are an error.
pub fn parse_rating(reply: &str) -> Result<f64, String> {
    let last = |re: &LazyLock<Option<Regex>>| {
        re.as_ref()
            .and_then(|re| re.captures_iter(reply).last())
            .and_then(|c| c.get(1))
            .and_then(|m| m.as_str().parse::<f64>().ok())
    };
    let rating = last(&RATING_BRACKETS)
        .or_else(|| last(&RATING_LABEL))
        .or_else(|| reply.trim().parse::<f64>().ok().filter(|r| r.is_finite()))
        .ok_or_else(|| format!("no rating in the judge's reply: {:?}", shorten(reply)))?;
    if !(MIN_RATING..=MAX_RATING).contains(&rating) {
        return Err(format!(
            "rating {rating} is outside {MIN_RATING}–{MAX_RATING}: {:?}",
            shorten(reply)
        ));
    }
    Ok(rating)
}

/// Which position a pairwise reply prefers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The answer shown first (`[[A]]`).
    First,
    /// The answer shown second (`[[B]]`).
    Second,
    /// A tie (`[[C]]`).
    Tie,
}

/// The verdict in a pairwise reply: the last `[[A]]`, `[[B]]` or `[[C]]` (`[[tie]]` too).
pub fn parse_verdict(reply: &str) -> Result<Position, String> {
    let found = VERDICT
        .as_ref()
        .and_then(|re| re.captures_iter(reply).last())
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_ascii_uppercase());
    match found.as_deref() {
        Some("A") => Ok(Position::First),
        Some("B") => Ok(Position::Second),
        Some("C" | "TIE") => Ok(Position::Tie),
        _ => Err(format!(
            "no verdict [[A]], [[B]] or [[C]] in the judge's reply: {:?}",
            shorten(reply)
        )),
    }
}

fn shorten(s: &str) -> &str {
    match s.char_indices().nth(200) {
        Some((cut, _)) => &s[..cut],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use rlhf_core::ChatMessage;

    use super::*;

    #[test]
    fn ratings() {
        let ok = [
            ("Good answer. Rating: [[8]]", 8.0),
            ("[[3]] at first, but on reflection Rating: [[7.5]]", 7.5),
            ("Rating: 6", 6.0),
            ("rating = **9**", 9.0),
            (" 4 ", 4.0),
        ];
        for (reply, want) in ok {
            assert_eq!(parse_rating(reply), Ok(want), "{reply}");
        }
        for bad in ["I cannot rate this", "Rating: [[11]]", "[[0]]", "NaN", ""] {
            assert!(parse_rating(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(parse_verdict("A is better. [[A]]"), Ok(Position::First));
        assert_eq!(
            parse_verdict("[[A]] no, final: [[ B ]]"),
            Ok(Position::Second)
        );
        assert_eq!(parse_verdict("[[C]]"), Ok(Position::Tie));
        assert_eq!(parse_verdict("[[tie]]"), Ok(Position::Tie));
        assert!(parse_verdict("A").is_err());
    }

    #[test]
    fn templates_fill_once() {
        let text = pairwise("Q: {prompt} A: {a} B: {b}", "why {b}?", "x {prompt}", "y");
        assert_eq!(text, "Q: why {b}? A: x {prompt} B: y");
        let text = pointwise(POINTWISE_TEMPLATE, "q", "c", Some("42"));
        assert!(text.contains("\"42\"") && !text.contains("{reference}"));
        assert!(!pointwise(POINTWISE_TEMPLATE, "q", "c", None).contains("reference"));
    }

    #[test]
    fn questions_from_messages() {
        let mut input = ScoreInput::new("p", "<|user|>hi", "hello");
        assert_eq!(question(&input), "<|user|>hi");
        input.messages = Some(vec![ChatMessage::new("user", "hi")]);
        assert_eq!(question(&input), "hi");
        input.messages = Some(vec![
            ChatMessage::new("system", "be brief"),
            ChatMessage::new("user", "hi"),
        ]);
        assert_eq!(question(&input), "system: be brief\n\nuser: hi");
    }
}
