//! Logging: human-readable lines by default, JSON lines with `SLUICE_LOG_FORMAT=json`.
//! The filter comes from `SLUICE_LOG` (or `RUST_LOG`), default `info`.

use tracing_subscriber::EnvFilter;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("SLUICE_LOG_FORMAT must be \"human\" or \"json\", not {0:?}")]
    Format(String),
    #[error("invalid log filter {filter:?}: {message}")]
    Filter { filter: String, message: String },
}

pub fn init() -> Result<(), TelemetryError> {
    let spec = std::env::var("SLUICE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let filter = EnvFilter::try_new(&spec).map_err(|e| TelemetryError::Filter {
        filter: spec.clone(),
        message: e.to_string(),
    })?;
    let format = std::env::var("SLUICE_LOG_FORMAT").unwrap_or_else(|_| "human".into());
    // Colours only on a terminal: logs written to a file or a collector stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format.as_str() {
        "human" | "" => builder.init(),
        "json" => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        other => return Err(TelemetryError::Format(other.to_string())),
    }
    Ok(())
}
