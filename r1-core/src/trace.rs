//! Reasoning traces: DeepSeek-R1 output split into reasoning and answer, while streaming or on a
//! recorded string, then the reasoning cut into steps and the answer mined for a final answer
//! and tool calls.
//!
//! Split semantics (those of vLLM's and SGLang's DeepSeek-R1 reasoning parsers):
//! - When the prompt ended with `<think>` (R1 templates do), output starts inside the reasoning;
//!   otherwise it is reasoning only if it starts with `<think>`.
//! - A leading `<think>` is stripped. Text before the first `</think>` is reasoning, after it the
//!   answer. Tags after that are answer text.
//! - Output that ends inside the reasoning is all reasoning, and the trace says it was cut off.
//! - Tags split across any number of deltas are recognised: ambiguous tails are held back until
//!   the next delta decides them, so every chunking gives the same result.

use serde::Serialize;
use serde_json::Value;

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const TOOL_CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
const TOOL_CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
const TOOL_CALL_END: &str = "<｜tool▁call▁end｜>";
const TOOL_SEP: &str = "<｜tool▁sep｜>";

/// Which part of the output a piece of text belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Channel {
    /// Inside `<think>…</think>`.
    Reasoning,
    /// After `</think>` (or all output, for a model that does not reason).
    Answer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not yet known whether the output opens with `<think>`.
    Undecided,
    /// In the reasoning; `at_start` while a leading `<think>` may still come.
    Reasoning { at_start: bool },
    /// After `</think>`, or output without reasoning.
    Answer,
}

/// Splits streamed text into reasoning and answer.
#[derive(Debug, Clone)]
pub struct TraceParser {
    state: State,
    pending: String,
    reasoning: String,
    answer: String,
    entered_reasoning: bool,
}

impl TraceParser {
    /// A parser for output whose prompt ended with `<think>` (`starts_in_reasoning`) or not.
    pub fn new(starts_in_reasoning: bool) -> Self {
        TraceParser {
            state: if starts_in_reasoning {
                State::Reasoning { at_start: true }
            } else {
                State::Undecided
            },
            pending: String::new(),
            reasoning: String::new(),
            answer: String::new(),
            entered_reasoning: starts_in_reasoning,
        }
    }

    /// The reasoning released so far.
    pub(crate) fn reasoning(&self) -> &str {
        &self.reasoning
    }

    /// Whether the reasoning has ended (`</think>` came, or the output has none).
    pub(crate) fn reasoning_over(&self) -> bool {
        self.state == State::Answer
    }

    /// The channel the next text goes to, as far as known now.
    pub fn channel(&self) -> Channel {
        match self.state {
            State::Reasoning { .. } => Channel::Reasoning,
            State::Answer => Channel::Answer,
            State::Undecided => Channel::Answer,
        }
    }

    /// Feeds a delta; returns the text it releases, by channel, in order.
    pub fn push(&mut self, delta: &str) -> Vec<(Channel, String)> {
        self.pending.push_str(delta);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Undecided => {
                    let trimmed = self.pending.trim_start();
                    if let Some(rest) = trimmed.strip_prefix(THINK_OPEN) {
                        self.pending = rest.to_string();
                        self.state = State::Reasoning { at_start: false };
                        self.entered_reasoning = true;
                    } else if THINK_OPEN.starts_with(trimmed) {
                        return out; // "", "  <th": wait for more
                    } else {
                        self.state = State::Answer;
                    }
                }
                State::Reasoning { at_start: true } => {
                    if let Some(rest) = self.pending.strip_prefix(THINK_OPEN) {
                        self.pending = rest.to_string();
                    } else if THINK_OPEN.starts_with(self.pending.as_str()) {
                        return out;
                    }
                    self.state = State::Reasoning { at_start: false };
                }
                State::Reasoning { at_start: false } => {
                    if let Some(i) = self.pending.find(THINK_CLOSE) {
                        let before = self.pending[..i].to_string();
                        self.pending.drain(..i + THINK_CLOSE.len());
                        self.emit(Channel::Reasoning, before, &mut out);
                        self.state = State::Answer;
                    } else {
                        // Hold back a tail that may be the start of `</think>`.
                        let keep = partial_suffix(&self.pending, THINK_CLOSE);
                        let text: String = self.pending.drain(..self.pending.len() - keep).collect();
                        self.emit(Channel::Reasoning, text, &mut out);
                        return out;
                    }
                }
                State::Answer => {
                    let text = std::mem::take(&mut self.pending);
                    self.emit(Channel::Answer, text, &mut out);
                    return out;
                }
            }
        }
    }

    fn emit(&mut self, ch: Channel, text: String, out: &mut Vec<(Channel, String)>) {
        if text.is_empty() {
            return;
        }
        match ch {
            Channel::Reasoning => self.reasoning.push_str(&text),
            Channel::Answer => self.answer.push_str(&text),
        }
        out.push((ch, text));
    }

    /// Ends the stream: releases anything held back and returns the parsed trace.
    pub fn finish(mut self) -> (Vec<(Channel, String)>, Trace) {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.pending);
        let truncated = matches!(self.state, State::Reasoning { .. });
        let ch = if truncated { Channel::Reasoning } else { Channel::Answer };
        self.emit(ch, rest, &mut out);
        let trace = Trace::from_parts(self.reasoning, self.answer, truncated && self.entered_reasoning);
        (out, trace)
    }
}

/// Length of the longest proper prefix of `tag` that `text` ends with.
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len()).rev().find(|&n| text.ends_with(&tag[..n])).unwrap_or(0)
}

/// One step of the reasoning.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Step {
    /// The step's text (trimmed).
    pub text: String,
    /// Its byte range in [`Trace::reasoning`].
    pub span: (usize, usize),
}

/// A tool call: one the model made (from DeepSeek's tool-call markup), or one an assistant
/// message carries into a chat template.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ToolCall {
    /// The function name.
    pub name: String,
    /// The arguments as JSON text, as the model wrote them (trimmed of their code fence).
    pub arguments: String,
    /// Whether `arguments` parse as JSON (when not, [`Trace::errors`] says why).
    pub valid_json: bool,
}

impl ToolCall {
    /// A call of `name` with `arguments` (JSON text).
    pub fn new(name: &str, arguments: &str) -> Self {
        ToolCall {
            name: name.to_string(),
            arguments: arguments.to_string(),
            valid_json: serde_json::from_str::<Value>(arguments).is_ok(),
        }
    }
}

/// Where the reasoning is cut into steps.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StepConfig {
    /// Words that start a new step when they open a sentence ("Wait", "Alternatively"…).
    pub markers: Vec<String>,
    /// Strings every occurrence of which ends a step (default: a blank line, `"\n\n"`).
    pub separators: Vec<String>,
}

impl StepConfig {
    /// Steps cut before these markers (and at blank lines).
    pub fn with_markers(markers: &[&str]) -> Self {
        StepConfig {
            markers: markers.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Sets [`StepConfig::separators`].
    pub fn with_separators(mut self, separators: &[&str]) -> Self {
        self.separators = separators.iter().map(|m| m.to_string()).collect();
        self
    }
}

impl Default for StepConfig {
    fn default() -> Self {
        StepConfig {
            markers: ["Wait", "Alternatively", "Let me check", "But"]
                .map(String::from)
                .to_vec(),
            separators: vec!["\n\n".into()],
        }
    }
}

/// A parsed reasoning trace.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Trace {
    /// The reasoning text, tags removed.
    pub reasoning: String,
    /// The answer text, up to any tool-call section.
    pub answer: String,
    /// The output ended inside the reasoning (no `</think>`).
    pub truncated: bool,
    /// The reasoning cut into steps (default [`StepConfig`]).
    pub steps: Vec<Step>,
    /// `\boxed{…}` of the answer, else its last non-empty line.
    pub final_answer: Option<String>,
    /// Tool calls in the answer.
    pub tool_calls: Vec<ToolCall>,
    /// Problems found while parsing (malformed tool calls…).
    pub errors: Vec<String>,
}

impl Trace {
    /// Parses a whole recorded output (e.g. one line of a JSONL dataset of R1 outputs).
    pub fn parse(text: &str, starts_in_reasoning: bool) -> Trace {
        let mut p = TraceParser::new(starts_in_reasoning);
        p.push(text);
        p.finish().1
    }

    fn from_parts(reasoning: String, full_answer: String, truncated: bool) -> Trace {
        let (answer, tool_section) = match full_answer.find(TOOL_CALLS_BEGIN) {
            Some(i) => (full_answer[..i].to_string(), Some(&full_answer[i..])),
            None => (full_answer.clone(), None),
        };
        let (tool_calls, errors) = tool_section.map(parse_tool_calls).unwrap_or_default();
        Trace {
            steps: steps(&reasoning, &StepConfig::default()),
            final_answer: final_answer(&answer),
            reasoning,
            answer,
            truncated,
            tool_calls,
            errors,
        }
    }

    /// Re-cuts the reasoning with other step markers.
    pub fn steps_with(&self, cfg: &StepConfig) -> Vec<Step> {
        steps(&self.reasoning, cfg)
    }
}

/// Cuts `text` at separators (blank lines) and before step markers that open a sentence.
pub fn steps(text: &str, cfg: &StepConfig) -> Vec<Step> {
    let mut cuts = cuts(text, cfg, false);
    cuts.extend([0, text.len()]);
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2)
        .filter_map(|w| {
            let piece = &text[w[0]..w[1]];
            let start = w[0] + (piece.len() - piece.trim_start().len());
            let trimmed = piece.trim();
            (!trimmed.is_empty()).then(|| Step {
                text: trimmed.to_string(),
                span: (start, start + trimmed.len()),
            })
        })
        .collect()
}

/// Where `text` is cut into steps, sorted. `streaming`: `text` may still grow, so a marker at its
/// very end (which more letters could make another word) is not a cut yet.
pub(crate) fn cuts(text: &str, cfg: &StepConfig, streaming: bool) -> Vec<usize> {
    let mut cuts = Vec::new();
    for sep in cfg.separators.iter().filter(|s| !s.is_empty()) {
        let mut from = 0;
        while let Some(i) = text[from..].find(sep.as_str()) {
            cuts.push(from + i);
            from += i + sep.len();
        }
    }
    for m in cfg.markers.iter().filter(|m| !m.is_empty()) {
        for (i, _) in text.match_indices(m.as_str()) {
            let after = text[i + m.len()..].chars().next();
            let word_ends = match after {
                None => !streaming,
                Some(c) => !c.is_alphanumeric(),
            };
            let before = text[..i].trim_end_matches([' ', '\t']);
            let opens_sentence = before.is_empty() || before.ends_with(['.', '!', '?', '\n', ':']);
            if word_ends && opens_sentence {
                cuts.push(i);
            }
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// The content of the last `\boxed{…}` (braces balanced), else the last non-empty line.
pub fn final_answer(answer: &str) -> Option<String> {
    if let Some(boxed) = last_boxed(answer) {
        return Some(boxed);
    }
    answer
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
}

fn last_boxed(text: &str) -> Option<String> {
    for (i, _) in text.rmatch_indices("\\boxed") {
        let rest = text[i + "\\boxed".len()..].trim_start();
        let Some(body) = rest.strip_prefix('{') else {
            continue;
        };
        let mut depth = 1;
        for (j, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(body[..j].to_string());
                    }
                }
                _ => {}
            }
        }
    }
    None
}

/// Parses DeepSeek's tool-call section:
/// `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\n{…}\n```<｜tool▁call▁end｜>` (R1, V3),
/// or `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{…}<｜tool▁call▁end｜>` (V3.1).
fn parse_tool_calls(section: &str) -> (Vec<ToolCall>, Vec<String>) {
    let mut calls = Vec::new();
    let mut errors = Vec::new();
    let mut rest = section;
    while let Some(b) = rest.find(TOOL_CALL_BEGIN) {
        let body_start = &rest[b + TOOL_CALL_BEGIN.len()..];
        let Some(e) = body_start.find(TOOL_CALL_END) else {
            errors.push(format!(
                "tool call {} is not terminated by {TOOL_CALL_END}",
                calls.len()
            ));
            break;
        };
        let body = &body_start[..e];
        rest = &body_start[e + TOOL_CALL_END.len()..];
        match parse_one_call(body) {
            Ok((call, problem)) => {
                if let Some(msg) = problem {
                    errors.push(format!("tool call `{}`: {msg}", call.name));
                }
                calls.push(call);
            }
            Err(msg) => errors.push(format!("tool call {}: {msg}", calls.len())),
        }
    }
    (calls, errors)
}

/// One call's name and arguments, and what is wrong with its arguments if anything.
fn parse_one_call(body: &str) -> Result<(ToolCall, Option<String>), String> {
    let (head, tail) = body
        .split_once(TOOL_SEP)
        .ok_or_else(|| format!("no {TOOL_SEP} in {body:?}"))?;
    let (name, args) = match tail.split_once('\n') {
        // R1/V3: type before the separator, then NAME, newline, a ```json fence.
        Some((name, fenced)) if fenced.trim_start().starts_with("```") => {
            let inner = fenced.trim().trim_start_matches("```json").trim_start_matches("```");
            (name.trim(), inner.trim_end().trim_end_matches("```").trim())
        }
        // V3.1: NAME before the separator, raw JSON after it.
        _ => (head.trim(), tail.trim()),
    };
    if name.is_empty() {
        return Err("empty function name".into());
    }
    let problem = serde_json::from_str::<Value>(args)
        .err()
        .map(|e| format!("arguments are not valid JSON ({e}): {args:?}"));
    let call = ToolCall {
        name: name.to_string(),
        arguments: args.to_string(),
        valid_json: problem.is_none(),
    };
    Ok((call, problem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_reasoning_and_answer() {
        let t = Trace::parse("Let me think.\n</think>\n\nThe answer is 4.", true);
        assert_eq!(t.reasoning, "Let me think.\n");
        assert_eq!(t.answer, "\n\nThe answer is 4.");
        assert!(!t.truncated);
        assert_eq!(t.final_answer.as_deref(), Some("The answer is 4."));
    }

    #[test]
    fn leading_think_is_stripped_and_missing_close_truncates() {
        let t = Trace::parse("<think>\nhmm", true);
        assert_eq!(
            (t.reasoning.as_str(), t.answer.as_str(), t.truncated),
            ("\nhmm", "", true)
        );
        let t = Trace::parse("  <think>a</think>b", false);
        assert_eq!((t.reasoning.as_str(), t.answer.as_str()), ("a", "b"));
        // Without reasoning the whole output is the answer.
        let t = Trace::parse("plain </think> answer", false);
        assert_eq!(
            (t.reasoning.as_str(), t.answer.as_str(), t.truncated),
            ("", "plain </think> answer", false)
        );
    }

    #[test]
    fn stray_tags_in_the_answer_are_text() {
        let t = Trace::parse("r</think>a <think>b</think>c", true);
        assert_eq!(t.answer, "a <think>b</think>c");
    }

    #[test]
    fn tags_split_across_deltas() {
        let mut p = TraceParser::new(true);
        let mut got = Vec::new();
        for d in ["<th", "ink>ab</", "thi", "nk", ">cd"] {
            got.extend(p.push(d));
        }
        let (rest, t) = p.finish();
        got.extend(rest);
        assert_eq!(
            got,
            vec![
                (Channel::Reasoning, "ab".to_string()),
                (Channel::Answer, "cd".to_string())
            ]
        );
        assert_eq!((t.reasoning.as_str(), t.answer.as_str()), ("ab", "cd"));
    }

    #[test]
    fn steps_cut_at_paragraphs_and_markers() {
        let r = "First, add 2 and 2.\n\nThat gives 4. Wait, check: 2+2=4. But maybe not? Butter is fine.";
        let s = steps(r, &StepConfig::default());
        let texts: Vec<&str> = s.iter().map(|x| x.text.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "First, add 2 and 2.",
                "That gives 4.",
                "Wait, check: 2+2=4.",
                "But maybe not? Butter is fine."
            ]
        );
        for st in &s {
            assert_eq!(&r[st.span.0..st.span.1], st.text);
        }
    }

    #[test]
    fn boxed_with_nested_braces() {
        assert_eq!(
            final_answer("so \\boxed{\\frac{1}{2}} and \\boxed{x^{2}}").as_deref(),
            Some("x^{2}")
        );
        assert_eq!(
            final_answer("line one\n\n  last line  \n\n").as_deref(),
            Some("last line")
        );
        assert_eq!(final_answer("\\boxed{unclosed").as_deref(), Some("\\boxed{unclosed"));
        assert_eq!(final_answer(""), None);
    }

    #[test]
    fn tool_calls_parse_and_report_bad_json() {
        let out = "thinking</think>Let me look.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>broken\n```json\n{\"x\": }\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        let t = Trace::parse(out, true);
        assert_eq!(t.answer, "Let me look.");
        assert_eq!(t.tool_calls.len(), 2);
        assert_eq!(t.tool_calls[0].name, "get_weather");
        assert_eq!(t.tool_calls[0].arguments, "{\"city\": \"Paris\"}");
        assert!(t.tool_calls[0].valid_json);
        assert_eq!(t.tool_calls[1].name, "broken");
        assert_eq!(
            (t.tool_calls[1].arguments.as_str(), t.tool_calls[1].valid_json),
            ("{\"x\": }", false)
        );
        assert_eq!(t.errors.len(), 1);
        // V3.1 form.
        let t = Trace::parse("</think><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>{\"a\":1}<｜tool▁call▁end｜><｜tool▁calls▁end｜>", true);
        assert_eq!(
            (t.tool_calls[0].arguments.as_str(), t.tool_calls[0].valid_json),
            ("{\"a\":1}", true)
        );
        // Unterminated.
        let t = Trace::parse(
            "</think><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{}",
            true,
        );
        assert!(t.tool_calls.is_empty() && t.errors.len() == 1);
    }

    /// Splits `text` at the given char positions (mod its length).
    fn chunk(text: &str, cuts: &[usize]) -> Vec<String> {
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
        let mut at: Vec<usize> = cuts.iter().map(|c| bounds[c % bounds.len()]).collect();
        at.extend([0, text.len()]);
        at.sort_unstable();
        at.dedup();
        at.windows(2).map(|w| text[w[0]..w[1]].to_string()).collect()
    }

    fn pieces() -> impl Strategy<Value = String> {
        let atoms = prop::sample::select(vec![
            "<think>",
            "</think>",
            "<",
            "</",
            "think",
            ">",
            "\n",
            "\n\n",
            "Wait, ",
            "But ",
            "é",
            "你好",
            "🙂",
            "x",
            " ",
            "\\boxed{",
            "}",
            "<｜tool▁calls▁begin｜>",
        ]);
        prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn any_chunking_parses_like_the_whole(text in pieces(), cuts in prop::collection::vec(0usize..200, 0..30), start in any::<bool>()) {
            let whole = Trace::parse(&text, start);
            let mut p = TraceParser::new(start);
            let mut streamed: Vec<(Channel, String)> = Vec::new();
            for c in chunk(&text, &cuts) {
                streamed.extend(p.push(&c));
            }
            let (rest, t) = p.finish();
            streamed.extend(rest);
            prop_assert_eq!(&t, &whole);
            // The streamed pieces add up to the parsed channels.
            let r: String = streamed.iter().filter(|x| x.0 == Channel::Reasoning).map(|x| x.1.as_str()).collect();
            let a: String = streamed.iter().filter(|x| x.0 == Channel::Answer).map(|x| x.1.as_str()).collect();
            prop_assert_eq!(r, whole.reasoning.clone());
            prop_assert!(a.starts_with(&whole.answer));
        }
    }
}
