//! Chat templates: the Jinja template a checkpoint ships in `tokenizer_config.json` (or GGUF's
//! `tokenizer.chat_template`), rendered with `minijinja` under Hugging Face's conventions, and a
//! built-in DeepSeek-R1 template for models that ship none.

use crate::error::{Error, Result};
use crate::trace::ToolCall;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One chat message.
///
/// Serialized (for templates, and from JSON files of OpenAI-style messages) as the dict a
/// Hugging Face template expects: `{"role", "content", "tool_calls": [{"type": "function",
/// "function": {"name", "arguments"}}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "WireMessage", into = "WireMessage")]
#[non_exhaustive]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text. For earlier assistant turns this may include `<think>…</think>` reasoning, which
    /// R1 templates drop.
    pub content: String,
    /// Tool calls an assistant turn made.
    pub tool_calls: Vec<ToolCall>,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.to_string(),
            content: content.to_string(),
            tool_calls: vec![],
        }
    }

    /// A system message.
    pub fn system(content: &str) -> Self {
        Self::new("system", content)
    }

    /// A user message.
    pub fn user(content: &str) -> Self {
        Self::new("user", content)
    }

    /// An assistant message.
    pub fn assistant(content: &str) -> Self {
        Self::new("assistant", content)
    }

    /// The message with `calls` as its tool calls.
    pub fn with_tool_calls(mut self, calls: Vec<ToolCall>) -> Self {
        self.tool_calls = calls;
        self
    }
}

/// The OpenAI/Hugging Face shape of a message.
#[derive(Serialize, Deserialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall>,
}

#[derive(Serialize, Deserialize)]
struct WireToolCall {
    #[serde(rename = "type", default = "function_type")]
    kind: String,
    function: WireFunction,
}

#[derive(Serialize, Deserialize)]
struct WireFunction {
    name: String,
    /// Templates differ: some print a string, some apply `tojson` to a dict. A dict is sent when
    /// the text parses; `tojson` of it gives the JSON back, and DeepSeek's template takes both.
    #[serde(default)]
    arguments: Value,
}

fn function_type() -> String {
    "function".into()
}

impl From<WireMessage> for Message {
    fn from(w: WireMessage) -> Self {
        let tool_calls = w
            .tool_calls
            .into_iter()
            .map(|c| {
                let args = match c.function.arguments {
                    Value::String(s) => s,
                    Value::Null => "{}".to_string(),
                    other => other.to_string(),
                };
                ToolCall::new(&c.function.name, &args)
            })
            .collect();
        Message {
            role: w.role,
            content: w.content.unwrap_or_default(),
            tool_calls,
        }
    }
}

impl From<Message> for WireMessage {
    fn from(m: Message) -> Self {
        let tool_calls = m
            .tool_calls
            .into_iter()
            .map(|c| WireToolCall {
                kind: function_type(),
                function: WireFunction {
                    arguments: serde_json::from_str(&c.arguments).unwrap_or(Value::String(c.arguments)),
                    name: c.name,
                },
            })
            .collect();
        WireMessage {
            role: m.role,
            content: Some(m.content),
            tool_calls,
        }
    }
}

/// DeepSeek-R1's conversation format, for checkpoints without a template: BOS, the system text,
/// `<｜User｜>` turns, `<｜Assistant｜>` turns reduced to the text after `</think>` and closed by
/// EOS, tool calls and outputs in DeepSeek's markup, and a generation prompt that opens the
/// reasoning with `<think>\n`.
pub const DEEPSEEK_R1_TEMPLATE: &str = r#"{%- set ns = namespace(system='') -%}
{%- for m in messages if m.role == 'system' -%}
{%- set ns.system = ns.system + (ns.system and '\n\n' or '') + m.content -%}
{%- endfor -%}
{{- bos_token }}{{ ns.system }}
{%- for m in messages -%}
{%- if m.role == 'user' -%}
<｜User｜>{{ m.content }}
{%- elif m.role == 'assistant' -%}
<｜Assistant｜>{{ (m.content or '').split('</think>')[-1] }}
{%- if m.tool_calls -%}
<｜tool▁calls▁begin｜>
{%- for call in m.tool_calls -%}
<｜tool▁call▁begin｜>{{ call.type or 'function' }}<｜tool▁sep｜>{{ call.function.name }}
```json
{{ call.function.arguments if call.function.arguments is string else call.function.arguments | tojson }}
```<｜tool▁call▁end｜>
{%- endfor -%}
<｜tool▁calls▁end｜>
{%- endif -%}
{{ eos_token }}
{%- elif m.role == 'tool' -%}
<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{{ m.content }}<｜tool▁output▁end｜><｜tool▁outputs▁end｜>
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<｜Assistant｜><think>
{% endif -%}"#;

/// A compiled chat template and the special-token strings it is rendered with.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

/// The sandbox a template from a file runs in. Templates come with model files from anyone, so
/// a render is bounded in work, memory, output and nesting, and sees no file system: the
/// environment has no loader (`include` and `import` find nothing) and exposes no host objects.
pub(crate) mod sandbox {
    /// Longest template source (real chat templates are under 64 KB).
    pub const SOURCE_BYTES: usize = 1 << 20;
    /// Fuel of a render before its input is counted: minijinja charges one per instruction and
    /// about one per 64 bytes of data created, so this bounds both time (half a million
    /// instructions) and memory (about 32 MB).
    pub const BASE_FUEL: u64 = 500_000;
    /// Input bytes (messages and tool schemas) per extra fuel: at one fuel per 4 bytes, each
    /// input byte may be copied, split and written about 16 times over.
    pub const INPUT_BYTES_PER_FUEL: u64 = 4;
    /// Output allowed before the input is counted.
    pub const BASE_OUTPUT_BYTES: usize = 4 << 20;
    /// Nesting of macros, loops and blocks (minijinja's default is 500).
    pub const RECURSION: usize = 128;
}

impl ChatTemplate {
    /// A template from Jinja source. It is compiled now, so a broken template fails at load.
    pub fn new(source: &str) -> Result<Self> {
        if source.len() > sandbox::SOURCE_BYTES {
            return Err(Error::Template(format!(
                "the template is {} bytes; at most {} are accepted",
                source.len(),
                sandbox::SOURCE_BYTES
            )));
        }
        let t = ChatTemplate {
            source: source.to_string(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        environment(0).template_from_str(&t.source).map_err(template_error)?;
        Ok(t)
    }

    /// The built-in DeepSeek-R1 template.
    pub fn deepseek_r1() -> Result<Self> {
        Self::new(DEEPSEEK_R1_TEMPLATE)
    }

    /// `tokenizer_config.json`'s `chat_template`: a string, or a list of `{name, template}` of
    /// which `default` is taken.
    pub(crate) fn from_config_value(v: &Value) -> Result<Option<Self>> {
        match v {
            Value::String(s) => Self::new(s).map(Some),
            Value::Array(items) => {
                let named = |n: &str| items.iter().find(|i| i.get("name").and_then(Value::as_str) == Some(n));
                let chosen = named("default").or(items.first());
                match chosen.and_then(|c| c.get("template")).and_then(Value::as_str) {
                    Some(s) => Self::new(s).map(Some),
                    None => Ok(None),
                }
            }
            _ => Ok(None),
        }
    }

    /// Sets the `bos_token` / `eos_token` strings the template sees.
    pub(crate) fn with_special_tokens(mut self, bos: Option<String>, eos: Option<String>) -> Self {
        self.bos_token = bos.unwrap_or_default();
        self.eos_token = eos.unwrap_or_default();
        self
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; `tools` are JSON schemas (one JSON text each) passed as the
    /// template's `tools` (none: the template sees no `tools`).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool, tools: &[String]) -> Result<String> {
        let tools: Vec<Value> = tools
            .iter()
            .enumerate()
            .map(|(i, t)| {
                serde_json::from_str(t)
                    .map_err(|e| Error::InvalidArgument(format!("tool schema {i} is not valid JSON: {e}")))
            })
            .collect::<Result<_>>()?;
        let input = input_bytes(messages) + tools_len(&tools);
        let tools = (!tools.is_empty()).then_some(tools);
        let env = environment(input);
        let template = env.template_from_str(&self.source).map_err(template_error)?;
        let ctx = minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => tools.map(|t| minijinja::Value::from(minijinja::value::Serde(t))),
        };
        let cap = sandbox::BASE_OUTPUT_BYTES.saturating_add(input.saturating_mul(2));
        let mut out = Capped { bytes: Vec::new(), cap };
        template
            .render_captured_to(ctx, &mut out)
            .map_err(|e| match out.bytes.len() >= cap {
                true => Error::Template(format!("the rendered prompt would be over {cap} bytes")),
                false => template_error(e),
            })?;
        String::from_utf8(out.bytes).map_err(|e| Error::Template(format!("rendered text is not UTF-8: {e}")))
    }
}

/// The bytes of the messages (and a little for each one's fields), what the sandbox scales with.
fn input_bytes(messages: &[Message]) -> usize {
    let calls = |m: &Message| {
        m.tool_calls
            .iter()
            .map(|c| c.name.len() + c.arguments.len())
            .sum::<usize>()
    };
    messages
        .iter()
        .map(|m| m.content.len() + m.role.len() + calls(m) + 64)
        .sum()
}

/// The bytes of the tool schemas, as the template sees them.
fn tools_len(tools: &[Value]) -> usize {
    tools.iter().map(|t| t.to_string().len()).sum()
}

/// A writer that refuses to grow past `cap` bytes: the render fails instead of filling memory.
struct Capped {
    bytes: Vec<u8>,
    cap: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.cap {
            self.bytes.resize(self.cap, 0);
            return Err(std::io::Error::other("output cap"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A minijinja environment with Hugging Face's conventions: Python string/dict methods
/// (`.strip()`, `.split()`, `.items()`…), `raise_exception`, and `tojson`; inside the
/// [`sandbox`], with fuel for `input` bytes.
fn environment(input: usize) -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    let fuel = sandbox::BASE_FUEL.saturating_add(input as u64 / sandbox::INPUT_BYTES_PER_FUEL);
    env.set_fuel(Some(fuel));
    env.set_recursion_limit(sandbox::RECURSION);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        },
    );
    // HF renders with trim_blocks and lstrip_blocks.
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env
}

fn template_error(e: minijinja::Error) -> Error {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    Error::Template(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r1() -> ChatTemplate {
        ChatTemplate::deepseek_r1().unwrap().with_special_tokens(
            Some("<｜begin▁of▁sentence｜>".into()),
            Some("<｜end▁of▁sentence｜>".into()),
        )
    }

    #[test]
    fn r1_template_matches_deepseek_format() {
        let msgs = [
            Message::system("Be brief."),
            Message::user("2+2?"),
            Message::assistant("<think>\nadd them\n</think>\n\n4"),
            Message::user("3+3?"),
        ];
        let s = r1().render(&msgs, true, &[]).unwrap();
        assert_eq!(
            s,
            "<｜begin▁of▁sentence｜>Be brief.<｜User｜>2+2?<｜Assistant｜>\n\n4<｜end▁of▁sentence｜>\
             <｜User｜>3+3?<｜Assistant｜><think>\n"
        );
        let no_prompt = r1().render(&msgs[..2], false, &[]).unwrap();
        assert_eq!(no_prompt, "<｜begin▁of▁sentence｜>Be brief.<｜User｜>2+2?");
    }

    #[test]
    fn r1_template_renders_tool_calls() {
        let call = Message::assistant("").with_tool_calls(vec![ToolCall::new("get_weather", "{\"city\":\"Paris\"}")]);
        let msgs = [Message::user("weather?"), call, Message::new("tool", "sunny")];
        let s = r1().render(&msgs, true, &[]).unwrap();
        assert!(s.contains(
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>"
        ), "{s}");
        assert!(s.contains("<｜tool▁output▁begin｜>sunny<｜tool▁output▁end｜>"));
    }

    #[test]
    fn raise_exception_and_syntax_errors_are_errors() {
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}",
        )
        .unwrap();
        let e = t.render(&[Message::system("x")], false, &[]).unwrap_err();
        assert!(e.to_string().contains("first must be user"), "{e}");
        assert!(ChatTemplate::new("{% if %}").is_err());
    }

    #[test]
    fn python_methods_work() {
        let t = ChatTemplate::new("{{ messages[0].content.strip().upper() }}|{{ 'a,b'.split(',')[-1] }}").unwrap();
        assert_eq!(t.render(&[Message::user("  hi ")], false, &[]).unwrap(), "HI|b");
    }

    /// Renders `source` on one user message, timing it: hostile templates must fail fast.
    fn hostile(source: &str, content: &str) -> (Result<String>, std::time::Duration) {
        let t0 = std::time::Instant::now();
        let r = ChatTemplate::new(source).and_then(|t| t.render(&[Message::user(content)], true, &[]));
        (r, t0.elapsed())
    }

    fn fails_fast(source: &str, content: &str, needle: &str) {
        let (r, took) = hostile(source, content);
        let name: String = source.chars().take(60).collect();
        match r {
            Ok(s) => panic!("{name:?} rendered {} bytes", s.len()),
            Err(e) => {
                let msg: String = e
                    .to_string()
                    .chars()
                    .rev()
                    .take(200)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                assert!(e.to_string().contains(needle), "{name:?}: …{msg}");
            }
        }
        assert!(took < std::time::Duration::from_secs(1), "{name:?} took {took:?}");
        eprintln!("{name:?}: refused in {:.1} ms", took.as_secs_f64() * 1e3);
    }

    #[test]
    fn templates_cannot_reach_the_host() {
        // The Jinja escapes of CVE-2024-34359: Python objects do not exist here.
        for escape in [
            "{{ self.__init__.__globals__ }}",
            "{{ ''.__class__.__mro__[1].__subclasses__() }}",
            "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
            "{{ lipsum.__globals__['os'].popen('id').read() }}",
        ] {
            match hostile(escape, "hi").0 {
                Ok(s) => assert!(s.is_empty(), "{escape:?} gave {s:?}"),
                Err(e) => assert!(matches!(e, Error::Template(_)), "{e}"),
            }
        }
        // No loader: nothing to include or import, absolute or relative.
        fails_fast("{% include '/etc/passwd' %}", "hi", "not found");
        fails_fast("{% import '../../secrets' as s %}", "hi", "not found");
        fails_fast("{% extends 'base.html' %}", "hi", "not found");
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        fails_fast(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            "",
            "fuel",
        );
        fails_fast(
            "{% for i in range(100) %}{% set s = 'x' * 10**8 %}{% endfor %}",
            "",
            "fuel",
        );
        fails_fast(
            "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "",
            "fuel",
        );
        fails_fast("{{ (messages[0].content ~ '') * 100000000 }}", "abc", "fuel");
        // Real templates on long chats keep enough fuel: a megabyte of content renders.
        let long = "word ".repeat(200_000);
        let (r, _) = hostile(DEEPSEEK_R1_TEMPLATE, &long);
        assert!(r.unwrap().len() > long.len());
    }

    #[test]
    fn recursion_nesting_and_size_are_bounded() {
        fails_fast(
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            "",
            "recursion",
        );
        let deep_if = format!("{}x{}", "{% if true %}".repeat(10_000), "{% endif %}".repeat(10_000));
        fails_fast(&deep_if, "", "maximum recursion");
        let deep_parens = format!("{{{{ {}1{} }}}}", "(".repeat(100_000), ")".repeat(100_000));
        fails_fast(&deep_parens, "", "maximum recursion");
        let huge = "x".repeat(sandbox::SOURCE_BYTES + 1);
        fails_fast(&huge, "", "at most");
        // Output past the cap: four copies of a 4 MB message.
        let big = "y".repeat(4 << 20);
        let four =
            "{{ messages[0].content }}{{ messages[0].content }}{{ messages[0].content }}{{ messages[0].content }}";
        fails_fast(four, &big, "would be over");
    }
}
