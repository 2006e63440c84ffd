//! Loading real dataset files: JSONL written here into temp dirs, Parquet fixtures written by
//! pandas/pyarrow (`tests/fixtures/make_parquet.py`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rlhf_core::ChatMessage;
use rlhf_data::{DataError, LoadOptions, Location, Prompt, PromptCursor, load_prompts, split};
use serde_json::json;

const STRICT: LoadOptions = LoadOptions {
    skip_malformed: false,
};
const LENIENT: LoadOptions = LoadOptions {
    skip_malformed: true,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

fn error_text(result: Result<rlhf_data::LoadReport, DataError>) -> Result<String> {
    match result {
        Ok(report) => bail!("expected an error, loaded {} records", report.records.len()),
        Err(error) => Ok(error.to_string()),
    }
}

#[test]
fn jsonl_reads_every_record_shape() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = write(
        dir.path(),
        "prompts.jsonl",
        concat!(
            "{\"prompt\": \"2+2?\", \"answer\": \"4\", \"group\": \"math\", \"source\": \"gsm\"}\n",
            "\n",
            "{\"id\": 17, \"messages\": [{\"role\": \"system\", \"content\": \"be brief\"}, {\"role\": \"user\", \"content\": \"hi\"}]}\n",
            "{\"id\": \"named\", \"prompt\": \"x\", \"answer\": null}",
        ),
    )?;
    let report = load_prompts(&path, STRICT)?;
    assert!(report.skipped.is_empty());
    let ids: Vec<&str> = report.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        ["0", "17", "named"],
        "default id = 0-based line number"
    );
    let first = &report.records[0];
    assert_eq!(first.prompt, Prompt::Text("2+2?".into()));
    assert_eq!(
        (first.answer.as_deref(), first.group.as_deref()),
        (Some("4"), Some("math"))
    );
    assert_eq!(first.metadata.get("source"), Some(&json!("gsm")));
    assert_eq!(
        report.records[1].prompt,
        Prompt::Messages(vec![
            ChatMessage::new("system", "be brief"),
            ChatMessage::new("user", "hi")
        ])
    );
    assert_eq!(report.records[2].answer, None);
    Ok(())
}

#[test]
fn jsonl_errors_name_file_line_and_field() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cases = [
        (
            "{\"prompt\": \"a\"}\n{\"prompt\": \"b\"\n",
            "line 2: malformed JSON",
        ),
        ("{\"answer\": \"a\"}\n", "line 1: field `prompt`: missing"),
        (
            "{\"prompt\": [\"a\"]}\n",
            "line 1: field `prompt`: expected a string, found a list",
        ),
        (
            "{\"prompt\": \"a\", \"group\": 3}\n",
            "line 1: field `group`: expected a string, found an integer",
        ),
        (
            "{\"messages\": [{\"role\": \"user\"}]}\n",
            "line 1: field `messages[0].content`: missing",
        ),
        (
            "{\"id\": \"x\", \"prompt\": \"a\"}\n\n{\"id\": \"x\", \"prompt\": \"b\"}\n",
            "line 3: field `id`: duplicate id \"x\" (first at line 1)",
        ),
        (
            "{\"prompt\": \"a\"}\n{\"id\": \"0\", \"prompt\": \"b\"}\n",
            "line 2: field `id`: duplicate id \"0\" (first at line 1)",
        ),
        ("[1, 2]\n", "line 1: expected a JSON object, found a list"),
        ("", "dataset is empty"),
        ("\n  \n", "dataset is empty"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = write(dir.path(), &format!("case{i}.jsonl"), text)?;
        let message = error_text(load_prompts(&path, STRICT))?;
        assert!(
            message.starts_with(&path.display().to_string()),
            "{message}"
        );
        assert!(message.contains(expected), "case {i}: {message}");
    }
    let missing = error_text(load_prompts(dir.path().join("nope.jsonl"), STRICT))?;
    assert!(missing.contains("nope.jsonl"), "{missing}");
    let csv = write(dir.path(), "data.csv", "prompt\nx\n")?;
    assert!(error_text(load_prompts(&csv, STRICT))?.contains("unsupported dataset format"));
    Ok(())
}

#[test]
fn jsonl_skip_malformed_counts_instead() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = write(
        dir.path(),
        "mixed.jsonl",
        "{\"prompt\": \"ok\"}\nnot json\n{\"prompt\": 5}\n{\"id\": \"0\", \"prompt\": \"dup\"}\n{\"prompt\": \"ok too\"}\n",
    )?;
    let report = load_prompts(&path, LENIENT)?;
    let ids: Vec<&str> = report.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["0", "4"]);
    let skipped: Vec<Location> = report.skipped.iter().map(|e| e.location).collect();
    assert_eq!(
        skipped,
        [Location::Line(2), Location::Line(3), Location::Line(4)]
    );
    assert_eq!(report.skipped[1].field.as_deref(), Some("prompt"));

    let all_bad = write(dir.path(), "bad.jsonl", "nope\n{}\n")?;
    let message = error_text(load_prompts(&all_bad, LENIENT))?;
    assert!(
        message.contains("dataset is empty (2 malformed records skipped)"),
        "{message}"
    );
    Ok(())
}

#[test]
fn parquet_from_pandas_with_messages_and_metadata() -> Result<()> {
    let report = load_prompts(fixture("mixed.parquet"), STRICT)?;
    let [q1, q2, q3] = report.records.as_slice() else {
        bail!("expected 3 records, got {}", report.records.len());
    };
    assert_eq!(
        (q1.id.as_str(), q2.id.as_str(), q3.id.as_str()),
        ("q1", "q2", "q3")
    );
    assert_eq!(q1.prompt, Prompt::Text("What is 2 + 2?".into()));
    assert_eq!(
        (q1.answer.as_deref(), q1.group.as_deref()),
        (Some("4"), Some("math"))
    );
    assert_eq!(q1.metadata.get("difficulty"), Some(&json!(1)));
    assert_eq!(q1.metadata.get("tags"), Some(&json!(["easy"])));
    assert_eq!(
        q2.prompt,
        Prompt::Messages(vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Say hi.")
        ])
    );
    assert_eq!(
        (q2.answer.as_deref(), q2.group.as_deref()),
        (None, Some("chat"))
    );
    assert_eq!(q2.metadata.get("tags"), Some(&json!([])));
    assert_eq!((q3.group.as_deref(), q3.metadata.len()), (None, 2));
    Ok(())
}

#[test]
fn parquet_ids_integer_and_default_across_row_groups() -> Result<()> {
    let ints = load_prompts(fixture("int_ids.parquet"), STRICT)?;
    let ids: Vec<&str> = ints.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["10", "11", "12"]);

    let rows = load_prompts(fixture("no_id_row_groups.parquet"), STRICT)?;
    let got: Vec<(String, Prompt)> = rows.records.into_iter().map(|r| (r.id, r.prompt)).collect();
    let want: Vec<(String, Prompt)> = (0..5)
        .map(|i| (i.to_string(), Prompt::Text(format!("prompt {i}"))))
        .collect();
    assert_eq!(got, want);
    Ok(())
}

#[test]
fn parquet_chat_maps_and_pandas_index() -> Result<()> {
    let maps = load_prompts(fixture("chat_maps.parquet"), STRICT)?;
    assert_eq!(maps.records.len(), 1);
    assert_eq!(maps.records[0].id, "m1");
    assert_eq!(
        maps.records[0].prompt,
        Prompt::Messages(vec![ChatMessage::new("user", "Hello")])
    );

    let indexed = load_prompts(fixture("indexed.parquet"), STRICT)?;
    let got: Vec<(&str, usize)> = indexed
        .records
        .iter()
        .map(|r| (r.id.as_str(), r.metadata.len()))
        .collect();
    assert_eq!(
        got,
        [("0", 0), ("1", 0)],
        "pandas' index column is neither id nor metadata"
    );
    Ok(())
}

#[test]
fn parquet_errors_name_file_row_and_field() -> Result<()> {
    let cases = [
        ("bad_rows.parquet", "row 1: field `prompt`: missing"),
        (
            "wrong_type.parquet",
            "row 0: field `prompt`: expected a string, found an integer",
        ),
        ("empty.parquet", "dataset is empty"),
        (
            "zstd.parquet",
            "parquet: row 0: Parquet error: Disabled feature at compile time: zstd (this build reads snappy",
        ),
    ];
    for (name, expected) in cases {
        let message = error_text(load_prompts(fixture(name), STRICT))?;
        assert!(
            message.contains(name) && message.contains(expected),
            "{name}: {message}"
        );
    }
    let lenient = load_prompts(fixture("bad_rows.parquet"), LENIENT)?;
    let ids: Vec<&str> = lenient.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["x", "z"]);
    let skipped: Vec<String> = lenient.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(skipped.len(), 2);
    assert!(
        skipped[0].starts_with("row 1: field `prompt`: missing"),
        "{skipped:?}"
    );
    assert_eq!(
        skipped[1],
        "row 2: field `id`: duplicate id \"x\" (first at row 0)"
    );

    let dir = tempfile::tempdir()?;
    let fake = write(
        dir.path(),
        "fake.parquet",
        "{\"prompt\": \"not parquet\"}\n",
    )?;
    let message = error_text(load_prompts(&fake, STRICT))?;
    assert!(message.contains("fake.parquet: parquet:"), "{message}");
    Ok(())
}

#[test]
fn load_split_and_iterate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let text: String = (0..200)
        .map(|i| format!("{{\"id\": \"p{i}\", \"prompt\": \"q{i}\"}}\n"))
        .collect();
    let path = write(dir.path(), "big.jsonl", &text)?;
    let records = load_prompts(&path, STRICT)?.records;
    let (train, heldout) = split(records.clone(), 0.25, 42)?;
    assert_eq!(train.len() + heldout.len(), 200);
    assert!((30..70).contains(&heldout.len()), "{}", heldout.len());
    assert_eq!(split(records, 0.25, 42)?.1, heldout, "deterministic");

    let mut cursor = PromptCursor::new(train.clone(), 7)?;
    let mut seen = std::collections::HashSet::new();
    while cursor.state().epoch == 0 {
        for record in cursor.next_batch(16) {
            assert!(
                seen.insert(record.id.clone()),
                "{} twice in one epoch",
                record.id
            );
        }
        if seen.len() == train.len() {
            break;
        }
    }
    assert_eq!(seen.len(), train.len());
    assert!(
        heldout.iter().all(|r| !seen.contains(&r.id)),
        "held-out prompts never trained"
    );
    Ok(())
}

#[test]
fn fixture_script_is_committed_with_its_outputs() -> Result<()> {
    let script = std::fs::read_to_string(fixture("make_parquet.py")).context("script")?;
    for name in [
        "mixed",
        "int_ids",
        "no_id_row_groups",
        "bad_rows",
        "wrong_type",
        "empty",
        "zstd",
    ] {
        let file = format!("{name}.parquet");
        assert!(script.contains(&file), "{file} not produced by the script");
        assert!(fixture(&file).is_file(), "{file} missing");
    }
    Ok(())
}
