//! Token estimation: what the tokens-per-minute budget is charged before a call, for the
//! limiter to reconcile with the usage the provider reports afterwards.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Completion tokens assumed for a request that sets no `max_tokens`.
const DEFAULT_COMPLETION_ESTIMATE: u32 = 256;

/// Characters of prompt JSON taken as one token: a rough average of English text under
/// common tokenizers, good enough for a budget the provider's report corrects.
const CHARS_PER_TOKEN: usize = 4;

/// The prompt's size (its messages' JSON, [`CHARS_PER_TOKEN`] characters a token) plus the
/// completion it may produce (`max_tokens`, else `max_completion_tokens`, else a default).
pub fn estimate_tokens(request: &RawValue) -> u32 {
    #[derive(Deserialize)]
    struct Shape<'a> {
        #[serde(default, borrow)]
        messages: Vec<&'a RawValue>,
        #[serde(default)]
        max_tokens: Option<u32>,
        #[serde(default)]
        max_completion_tokens: Option<u32>,
    }
    match serde_json::from_str::<Shape>(request.get()) {
        Ok(shape) => {
            let prompt_chars: usize = shape.messages.iter().map(|m| m.get().len()).sum();
            let prompt = (prompt_chars / CHARS_PER_TOKEN).max(1) as u32;
            let completion = shape
                .max_tokens
                .or(shape.max_completion_tokens)
                .unwrap_or(DEFAULT_COMPLETION_ESTIMATE);
            prompt.saturating_add(completion)
        }
        Err(_) => DEFAULT_COMPLETION_ESTIMATE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_prompt_plus_completion() {
        let raw = RawValue::from_string(
            r#"{"messages":[{"role":"user","content":"0123456789012345678901234567890123456789"}],"max_tokens":100}"#
                .to_string(),
        )
        .unwrap();
        let n = estimate_tokens(&raw);
        assert!((110..=120).contains(&n), "{n}");
        let raw = RawValue::from_string(r#"{"messages":[]}"#.to_string()).unwrap();
        assert_eq!(estimate_tokens(&raw), 1 + DEFAULT_COMPLETION_ESTIMATE);
    }
}
