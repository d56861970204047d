//! The messages of an OpenAI chat request as Anthropic turns: system and developer
//! messages become the system prompt, images become image blocks, an assistant's tool
//! calls become `tool_use` blocks and `tool` messages `tool_result` blocks in a user turn.
//! A message field or content part the Messages API cannot carry is refused by name.

use serde_json::{Value, json};

use super::anthropic_request::{Unconvertible, refuse, unsupported};

/// System and developer messages become the system prompt; the rest `messages`, with
/// consecutive tool results gathered into one user turn as Anthropic requires.
pub(super) fn messages(value: &Value) -> Result<(Vec<String>, Vec<Value>), Unconvertible> {
    let list = value
        .as_array()
        .ok_or_else(|| refuse("request.messages", "must be an array"))?;
    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    let mut results_open = false;
    for (i, m) in list.iter().enumerate() {
        let at = format!("request.messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let allowed: &[&str] = match role {
            "system" | "developer" | "user" => &["role", "content"],
            "assistant" => &["role", "content", "tool_calls", "refusal"],
            "tool" => &["role", "content", "tool_call_id"],
            _ => {
                return Err(refuse(
                    format!("{at}.role"),
                    format!("role {role:?} is not supported by the anthropic provider"),
                ));
            }
        };
        let object = m.as_object().into_iter().flatten();
        if let Some((key, _)) = object
            .filter(|(_, v)| !v.is_null())
            .find(|(k, _)| !allowed.contains(&k.as_str()))
        {
            return Err(unsupported(format!("{at}.{key}")));
        }
        let content = m.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => system.push(plain_text(&at, content)?),
            "user" => out.push(json!({ "role": "user", "content": user_content(&at, content)? })),
            "assistant" => {
                out.push(json!({ "role": "assistant", "content": assistant_content(&at, m)? }))
            }
            _ => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        refuse(
                            format!("{at}.tool_call_id"),
                            "a tool message needs its tool_call_id",
                        )
                    })?;
                let result = json!({ "type": "tool_result", "tool_use_id": id, "content": plain_text(&at, content)? });
                match out.last_mut().filter(|_| results_open) {
                    Some(turn) => turn["content"]
                        .as_array_mut()
                        .expect("a tool-result turn")
                        .push(result),
                    None => out.push(json!({ "role": "user", "content": [result] })),
                }
            }
        }
        results_open = role == "tool";
    }
    Ok((system, out))
}

/// Content that must be text: a string, or text parts joined.
fn plain_text(at: &str, content: &Value) -> Result<String, Unconvertible> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => text.push(part["text"].as_str().unwrap_or_default()),
                    _ => {
                        return Err(refuse(
                            format!("{at}.content[{j}].type"),
                            "only text parts are supported here by the anthropic provider",
                        ));
                    }
                }
            }
            Ok(text.join("\n"))
        }
        _ => Err(refuse(
            format!("{at}.content"),
            "must be a string or an array of text parts",
        )),
    }
}

/// A user turn: a string, or text and image parts as Anthropic blocks.
fn user_content(at: &str, content: &Value) -> Result<Value, Unconvertible> {
    let Value::Array(parts) = content else {
        return match content {
            Value::String(_) => Ok(content.clone()),
            _ => Err(refuse(
                format!("{at}.content"),
                "must be a string or an array of content parts",
            )),
        };
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let here = format!("{at}.content[{j}]");
        blocks.push(match part.get("type").and_then(Value::as_str) {
            Some("text") => {
                json!({ "type": "text", "text": part["text"].as_str().unwrap_or_default() })
            }
            Some("image_url") => image(&here, &part["image_url"])?,
            _ => return Err(unsupported(format!("{here}.type"))),
        });
    }
    Ok(blocks.into())
}

/// An `image_url` part: a `data:` URL becomes a base64 source, any other URL a url source.
fn image(at: &str, image_url: &Value) -> Result<Value, Unconvertible> {
    if let Some(detail) = image_url
        .get("detail")
        .and_then(Value::as_str)
        .filter(|d| *d != "auto")
    {
        return Err(refuse(
            format!("{at}.image_url.detail"),
            format!("detail {detail:?} is not supported by the anthropic provider"),
        ));
    }
    let url = image_url
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| refuse(format!("{at}.image_url.url"), "an image part needs its url"))?;
    let source = match url.strip_prefix("data:") {
        Some(data) => {
            let (media_type, base64) = data.split_once(";base64,").ok_or_else(|| {
                refuse(
                    format!("{at}.image_url.url"),
                    "a data URL must be base64 (data:<media type>;base64,<data>)",
                )
            })?;
            json!({ "type": "base64", "media_type": media_type, "data": base64 })
        }
        None => json!({ "type": "url", "url": url }),
    };
    Ok(json!({ "type": "image", "source": source }))
}

/// An assistant turn: its text (or refusal) and its tool calls as `tool_use` blocks.
fn assistant_content(at: &str, m: &Value) -> Result<Value, Unconvertible> {
    let mut blocks = Vec::new();
    for key in ["content", "refusal"] {
        match m.get(key).unwrap_or(&Value::Null) {
            Value::Null => {}
            value => {
                let text = plain_text(at, value)?;
                if !text.is_empty() {
                    blocks.push(json!({ "type": "text", "text": text }));
                }
            }
        }
    }
    let calls = match m.get("tool_calls") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(calls)) => calls,
        Some(_) => return Err(refuse(format!("{at}.tool_calls"), "must be an array")),
    };
    for (k, call) in calls.iter().enumerate() {
        let here = format!("{at}.tool_calls[{k}]");
        if call.get("type").and_then(Value::as_str) != Some("function") {
            return Err(unsupported(format!("{here}.type")));
        }
        let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
        let input: Value = serde_json::from_str(if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        })
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| {
            refuse(
                format!("{here}.function.arguments"),
                "must be a JSON object in text",
            )
        })?;
        blocks.push(json!({
            "type": "tool_use",
            "id": call["id"].as_str().unwrap_or_default(),
            "name": call["function"]["name"].as_str().unwrap_or_default(),
            "input": input,
        }));
    }
    Ok(blocks.into())
}
