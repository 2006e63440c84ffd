//! The labeling page and its JSON API:
//! - `GET /`: the page (labeller name, the prompt, completions A and B, buttons; keys `a`,
//!   `t`, `b`, `s` to skip).
//! - `POST /api/next` `{"labeler": "ann"}`: the oldest open comparison not held by someone
//!   else, now held by `ann` for `claim_s` (`{"item": null}` when there is none).
//! - `POST /api/label` `{"item": 7, "choice": "a" | "b" | "tie", "labeler": "ann"}`: records
//!   the answer (`{"recorded": true, "used": bool}`; `used` is false when it came after the
//!   scoring call stopped waiting). 404 for an unknown item, 409 when already labelled.
//! - `POST /api/skip` `{"item": 7, "labeler": "ann"}`: `ann` passes on it (it is not handed
//!   to `ann` again; others still get it).
//! - `GET /api/pending`: every open comparison; `GET /api/stats`: the counters.
//! - `GET /metrics`: the counters in the Prometheus text format (counts only, no texts).
//!
//! With a token configured every `/api/` call needs `Authorization: Bearer <token>`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::desk::{Choice, Desk, Refused};

/// Longest accepted labeller name, in characters.
const MAX_LABELER: usize = 64;

pub(super) fn router(desk: Arc<Desk>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/next", post(next))
        .route("/api/label", post(label))
        .route("/api/skip", post(skip))
        .route("/api/pending", get(pending))
        .route("/api/stats", get(stats))
        .route("/metrics", get(metrics))
        .with_state(desk)
}

/// A refused request: its status and the message sent as `{"error": ...}`.
struct Fail(StatusCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Fail {
    Fail(status, message.into())
}

/// Refuses a request without the configured token.
fn check(desk: &Desk, headers: &HeaderMap) -> Result<(), Fail> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if desk.authorized(presented) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "this labeling page needs `Authorization: Bearer <token>` (open the page as /?token=...)",
        ))
    }
}

/// Parses a JSON body into `T`, naming the bad field.
fn body<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, Fail> {
    serde_json::from_str(text)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}

fn labeler(name: &str) -> Result<String, Fail> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_LABELER || name.chars().any(char::is_control) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("`labeler` must be 1 to {MAX_LABELER} printable characters"),
        ));
    }
    Ok(name.to_owned())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NextRequest {
    labeler: String,
}

async fn next(
    State(desk): State<Arc<Desk>>,
    headers: HeaderMap,
    text: String,
) -> Result<Response, Fail> {
    check(&desk, &headers)?;
    let req: NextRequest = body(&text)?;
    let who = labeler(&req.labeler)?;
    let item = desk.next(&who);
    Ok(axum::Json(json!({ "item": item, "open": desk.stats().open })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelRequest {
    item: u64,
    choice: Choice,
    labeler: String,
}

async fn label(
    State(desk): State<Arc<Desk>>,
    headers: HeaderMap,
    text: String,
) -> Result<Response, Fail> {
    check(&desk, &headers)?;
    let req: LabelRequest = body(&text)?;
    let who = labeler(&req.labeler)?;
    match desk.label(req.item, req.choice, &who) {
        Ok(used) => {
            tracing::info!(item = req.item, labeler = %who, choice = ?req.choice, used, "human label");
            Ok(axum::Json(json!({ "recorded": true, "used": used })).into_response())
        }
        Err(Refused::Unknown(id)) => Err(error(
            StatusCode::NOT_FOUND,
            format!("no comparison {id} (never asked, or closed long ago)"),
        )),
        Err(Refused::Labelled(id, by)) => Err(error(
            StatusCode::CONFLICT,
            format!("comparison {id} was already labelled by {by}"),
        )),
        Err(Refused::Write(message)) => {
            tracing::error!(item = req.item, %message, "label not recorded");
            Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("label not recorded, try again: {message}"),
            ))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SkipRequest {
    item: u64,
    labeler: String,
}

async fn skip(
    State(desk): State<Arc<Desk>>,
    headers: HeaderMap,
    text: String,
) -> Result<Response, Fail> {
    check(&desk, &headers)?;
    let req: SkipRequest = body(&text)?;
    let who = labeler(&req.labeler)?;
    if desk.skip(req.item, &who) {
        Ok(axum::Json(json!({ "skipped": true })).into_response())
    } else {
        Err(error(
            StatusCode::NOT_FOUND,
            format!("no open comparison {}", req.item),
        ))
    }
}

async fn pending(State(desk): State<Arc<Desk>>, headers: HeaderMap) -> Result<Response, Fail> {
    check(&desk, &headers)?;
    Ok(axum::Json(json!({ "items": desk.pending() })).into_response())
}

async fn stats(State(desk): State<Arc<Desk>>, headers: HeaderMap) -> Result<Response, Fail> {
    check(&desk, &headers)?;
    Ok(axum::Json(desk.stats()).into_response())
}

async fn metrics(State(desk): State<Arc<Desk>>) -> Response {
    let s = desk.stats();
    let mut text = String::new();
    for (name, help, value) in [
        ("asked", "comparisons put on the labeling page", s.asked),
        (
            "labelled",
            "labels that arrived in time and were used",
            s.labelled,
        ),
        ("reused", "pairs answered from an earlier label", s.reused),
        (
            "timed_out",
            "comparisons whose scoring call stopped waiting",
            s.timed_out,
        ),
        (
            "busy",
            "uncertain pairs not asked because max_open were open",
            s.busy,
        ),
        (
            "late",
            "labels that arrived after their call stopped waiting",
            s.late,
        ),
    ] {
        text.push_str(&format!(
            "# HELP rlhf_human_{name}_total Human scorer: {help}.\n\
             # TYPE rlhf_human_{name}_total counter\nrlhf_human_{name}_total {value}\n"
        ));
    }
    text.push_str(&format!(
        "# HELP rlhf_human_open Human scorer: comparisons open now.\n\
         # TYPE rlhf_human_open gauge\nrlhf_human_open {}\n",
        s.open
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The page: plain HTML and script, no external resources. Texts are set with `textContent`
/// (completions are model output, never interpreted as HTML).
const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rlhf — which answer is better?</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:1.5rem;max-width:80rem}
pre{white-space:pre-wrap;word-wrap:break-word;background:#f5f5f5;padding:.75rem;border-radius:4px;min-height:3rem}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
button{font-size:1rem;padding:.5rem 1.2rem;margin-right:.5rem}
#status{color:#555}
</style></head><body>
<h1>Which answer is better?</h1>
<p><label>Your name: <input id="who" size="20"></label> <span id="status"></span></p>
<div id="task" hidden>
<h2>Prompt</h2><pre id="prompt"></pre>
<div class="pair"><div><h2>A</h2><pre id="a"></pre></div><div><h2>B</h2><pre id="b"></pre></div></div>
<p><button id="ba">A is better (a)</button><button id="bt">Tie (t)</button><button id="bb">B is better (b)</button><button id="bs">Skip (s)</button></p>
</div>
<script>
const token = new URLSearchParams(location.search).get("token");
const who = document.getElementById("who");
who.value = localStorage.getItem("rlhf-labeler") || "";
who.onchange = () => { localStorage.setItem("rlhf-labeler", who.value.trim()); load(); };
let item = null, done = 0;
function say(t) { document.getElementById("status").textContent = t; }
async function api(path, payload) {
  const headers = {"Content-Type": "application/json"};
  if (token) headers["Authorization"] = "Bearer " + token;
  const r = await fetch(path, {method: "POST", headers, body: JSON.stringify(payload)});
  const j = await r.json();
  if (!r.ok) throw new Error(j.error || r.statusText);
  return j;
}
async function load() {
  if (!who.value.trim()) { say("enter your name to start"); return; }
  try {
    const j = await api("api/next", {labeler: who.value.trim()});
    item = j.item;
    document.getElementById("task").hidden = !item;
    if (!item) { say(`labelled ${done}; nothing to label now, checking again…`); setTimeout(load, 3000); return; }
    for (const k of ["prompt", "a", "b"]) document.getElementById(k).textContent = item[k];
    say(`labelled ${done}; ${j.open} open; this one asked ${Math.round(item.asked_s_ago)} s ago`);
  } catch (e) { say("error: " + e.message); setTimeout(load, 5000); }
}
async function answer(choice) {
  if (!item) return;
  try {
    const j = await api("api/label", {item: item.item, choice, labeler: who.value.trim()});
    done += 1;
    if (!j.used) say("recorded, but too late for its training step");
  } catch (e) { say("error: " + e.message); }
  item = null; load();
}
async function skip() {
  if (!item) return;
  try { await api("api/skip", {item: item.item, labeler: who.value.trim()}); } catch (e) { say("error: " + e.message); }
  item = null; load();
}
document.getElementById("bs").onclick = skip;
document.getElementById("ba").onclick = () => answer("a");
document.getElementById("bt").onclick = () => answer("tie");
document.getElementById("bb").onclick = () => answer("b");
document.addEventListener("keydown", e => {
  if (e.target === who) return;
  if (e.key === "a") answer("a"); else if (e.key === "t") answer("tie"); else if (e.key === "b") answer("b");
  else if (e.key === "s") skip();
});
load();
</script></body></html>
"#;
