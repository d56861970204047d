//! How durations are written in the config: a number and a unit, `300ms`, `30s`, `5m`,
//! `1h 30m`. Used as `#[serde(with = "duration")]` on every `Duration` key, so a bare
//! number (whose unit a reader would have to guess) is refused with an example.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "expected a duration string with a unit, like \"300ms\", \"30s\" or \"5m\"",
        )
    })?;
    humantime::parse_duration(text.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}); write a number and a unit, like \"300ms\", \"30s\" or \"5m\""
        ))
    })
}

/// Keys that may be left out: `#[serde(default, with = "duration::optional")]`.
pub mod optional {
    use std::time::Duration;

    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load_for_test as load;

    #[test]
    fn bad_duration_is_named() {
        let err = load("[dispatch]\nlease = \"soon\"\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("dispatch.lease"), "{msg}");
        assert!(msg.contains("invalid duration"), "{msg}");
    }
}
