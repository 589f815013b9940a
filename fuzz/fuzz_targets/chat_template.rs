//! Chat templates from files, compiled and rendered inside r1's sandbox: the input is the
//! template source; the conversation is fixed (a system turn, a user turn, an assistant turn
//! with reasoning and a tool call, a tool reply) with one tool schema.
#![no_main]
use libfuzzer_sys::fuzz_target;
use r1_core::{ChatTemplate, Message, ToolCall};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let Ok(template) = ChatTemplate::new(source) else {
        return;
    };
    let messages = [
        Message::system("Be brief."),
        Message::user("What is 7 * 6?"),
        Message::assistant("<think>\n7 * 6 = 42\n</think>\n\n42")
            .with_tool_calls(vec![ToolCall::new("calc", r#"{"x": 42}"#)]),
        Message::new("tool", "42"),
    ];
    let tools = [r#"{"type":"function","function":{"name":"calc","parameters":{}}}"#.to_string()];
    let _ = template.render(&messages, true, &tools);
});
