//! The OpenAI chat request every run is enqueued in, turned into an Anthropic Messages
//! body: system messages, tools and tool choice, tool calls and tool results, images,
//! stop sequences, sampling settings and JSON output. A field the Messages API cannot
//! carry is refused with its name (at enqueue, through [`check`]), never dropped.

use serde_json::{Map, Value, json};

use super::anthropic_messages::messages;

/// Anthropic requires `max_tokens`; used when the request sets no limit.
pub const DEFAULT_MAX_TOKENS: u64 = 1024;
/// The tool a JSON-output request is answered through: the model is made to call it, and
/// its input becomes the answer's content.
pub const JSON_OUTPUT_TOOL: &str = "json_output";
const JSON_OUTPUT_DESCRIPTION: &str = "Give the answer as this tool's input.";
/// Anthropic's `temperature` range ends here (OpenAI's goes to 2).
const MAX_TEMPERATURE: f64 = 1.0;

/// A request field the provider cannot carry over; `field` is its path from the enqueue
/// body (`request.logit_bias`, `request.messages[2].content[0].type`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Unconvertible {
    pub field: String,
    pub message: String,
}

pub(super) fn refuse(field: impl Into<String>, message: impl Into<String>) -> Unconvertible {
    Unconvertible {
        field: field.into(),
        message: message.into(),
    }
}

pub(super) fn unsupported(field: String) -> Unconvertible {
    let message = format!("{field} is not supported by the anthropic provider");
    refuse(field, message)
}

/// A Messages API body, and the name of the tool that carries a JSON answer, if any.
#[derive(Debug)]
pub struct Converted {
    pub body: Value,
    pub json_tool: Option<&'static str>,
}

/// Whether `request` converts; what [`convert`] would refuse, found at enqueue.
pub fn check(request: &str) -> Result<(), Unconvertible> {
    convert(request, "", false).map(drop)
}

/// The Messages API body for an OpenAI chat request sent to `model`.
pub fn convert(request: &str, model: &str, stream: bool) -> Result<Converted, Unconvertible> {
    let chat: Map<String, Value> = serde_json::from_str(request)
        .map_err(|e| refuse("request", format!("not a chat request object: {e}")))?;
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    let mut max_tokens = None;
    let mut json_tool = None;
    for (key, value) in chat.iter().filter(|(_, v)| !v.is_null()) {
        let field = format!("request.{key}");
        match key.as_str() {
            // Sluice sets the model and the streaming itself.
            "model" | "stream" | "stream_options" => {}
            "messages" => {
                let (system, messages) = messages(value)?;
                if !system.is_empty() {
                    body.insert("system".into(), system.join("\n").into());
                }
                body.insert("messages".into(), messages.into());
            }
            "max_tokens" | "max_completion_tokens" => {
                let n = value
                    .as_u64()
                    .ok_or_else(|| refuse(&field, "must be a positive integer"))?;
                // `max_tokens` wins when both are set.
                if key == "max_tokens" || max_tokens.is_none() {
                    max_tokens = Some(n);
                }
            }
            "temperature" => match value.as_f64() {
                Some(t) if (0.0..=MAX_TEMPERATURE).contains(&t) => {
                    body.insert(key.clone(), value.clone());
                }
                _ => {
                    return Err(refuse(
                        field,
                        "the anthropic provider takes a temperature from 0 to 1",
                    ));
                }
            },
            "top_p" => {
                body.insert(key.clone(), value.clone());
            }
            "stop" => {
                let stops = match value {
                    Value::String(s) => vec![Value::String(s.clone())],
                    Value::Array(a) if a.iter().all(Value::is_string) => a.clone(),
                    _ => return Err(refuse(field, "must be a string or an array of strings")),
                };
                if !stops.is_empty() {
                    body.insert("stop_sequences".into(), stops.into());
                }
            }
            "tools" => {
                body.insert("tools".into(), tools(value)?.into());
            }
            "tool_choice" => {
                body.insert("tool_choice".into(), tool_choice(value)?);
            }
            // Handled with tool_choice below.
            "parallel_tool_calls" => {}
            "response_format" => json_tool = json_output(value, &mut body)?,
            "user" => {
                body.insert("metadata".into(), json!({ "user_id": value }));
            }
            // Defaults that ask for nothing are accepted.
            "n" if value.as_u64() == Some(1) => {}
            "logprobs" if value == &Value::Bool(false) => {}
            "presence_penalty" | "frequency_penalty" if value.as_f64() == Some(0.0) => {}
            _ => return Err(unsupported(field)),
        }
    }
    let has = |key: &str| chat.get(key).is_some_and(|v| !v.is_null());
    if json_tool.is_some() && (has("tools") || has("tool_choice")) {
        return Err(refuse(
            "request.response_format",
            "the anthropic provider cannot combine a JSON response format with tools",
        ));
    }
    if !body.contains_key("messages") {
        return Err(refuse("request.messages", "messages is required"));
    }
    if chat.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        let choice = body
            .entry("tool_choice")
            .or_insert_with(|| json!({ "type": "auto" }));
        if choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = true.into();
        }
    }
    body.insert(
        "max_tokens".into(),
        max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).into(),
    );
    if stream {
        body.insert("stream".into(), true.into());
    }
    Ok(Converted {
        body: body.into(),
        json_tool,
    })
}

/// OpenAI function tools as Anthropic tools (`parameters` becomes `input_schema`).
fn tools(value: &Value) -> Result<Vec<Value>, Unconvertible> {
    let list = value
        .as_array()
        .ok_or_else(|| refuse("request.tools", "must be an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let at = format!("request.tools[{i}]");
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(unsupported(format!("{at}.type")));
        }
        let function = &tool["function"];
        if function
            .get("strict")
            .is_some_and(|s| s.as_bool() == Some(true))
        {
            return Err(unsupported(format!("{at}.function.strict")));
        }
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| refuse(format!("{at}.function.name"), "a tool needs a name"))?;
        let mut converted = json!({
            "name": name,
            "input_schema": function.get("parameters").filter(|p| !p.is_null()).cloned()
                .unwrap_or_else(|| json!({ "type": "object", "properties": {} })),
        });
        if let Some(description) = function.get("description").filter(|d| !d.is_null()) {
            converted["description"] = description.clone();
        }
        out.push(converted);
    }
    Ok(out)
}

/// `none` / `auto` / `required` / a named function, as Anthropic's tool choice.
fn tool_choice(value: &Value) -> Result<Value, Unconvertible> {
    Ok(match value {
        Value::String(s) if s == "none" => json!({ "type": "none" }),
        Value::String(s) if s == "auto" => json!({ "type": "auto" }),
        Value::String(s) if s == "required" => json!({ "type": "any" }),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    refuse(
                        "request.tool_choice.function.name",
                        "a named tool choice needs the function name",
                    )
                })?;
            json!({ "type": "tool", "name": name })
        }
        _ => return Err(unsupported("request.tool_choice".into())),
    })
}

/// `response_format`: text needs nothing; a JSON object or schema is asked for through a
/// tool the model must call, whose input is the answer.
fn json_output(
    value: &Value,
    body: &mut Map<String, Value>,
) -> Result<Option<&'static str>, Unconvertible> {
    let schema = match value.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(None),
        Some("json_object") => json!({ "type": "object" }),
        Some("json_schema") => value
            .pointer("/json_schema/schema")
            .cloned()
            .ok_or_else(|| {
                refuse(
                    "request.response_format.json_schema.schema",
                    "a json_schema response format needs its schema",
                )
            })?,
        _ => return Err(unsupported("request.response_format.type".into())),
    };
    body.insert(
        "tools".into(),
        json!([{ "name": JSON_OUTPUT_TOOL, "description": JSON_OUTPUT_DESCRIPTION, "input_schema": schema }]),
    );
    body.insert(
        "tool_choice".into(),
        json!({ "type": "tool", "name": JSON_OUTPUT_TOOL }),
    );
    Ok(Some(JSON_OUTPUT_TOOL))
}

#[cfg(test)]
mod tests;
