//! The rate-limit styles' table: one row per style and phase, with goodput, refusals and
//! the time to converge against the targets, and the section of BENCHMARKS.md it fills.

use serde_json::Value;

/// Steady-state goodput every style must reach, as a share of the true limit...
const TARGET_GOODPUT: f64 = 0.97;
/// ...and of the token limit in the token-limited style.
const TARGET_TOKEN_GOODPUT: f64 = 0.95;
/// Refused share every style must stay under in steady state.
const TARGET_REFUSED: f64 = 0.01;
/// Seconds to converge after the start or a change.
const TARGET_CONVERGED_SECS: f64 = 10.0;

/// The phases of a halved case, as the table names them.
const PHASE_NAMES: [&str; 3] = ["", " — halved", " — restored"];

/// One row per phase of every case, in markdown.
pub fn markdown(styles: &Value) -> String {
    let mut md = String::from(
        "| style | steady-state goodput (% of R) | refused (% of attempts) | converged after | verdict |\n|---|---|---|---|---|\n",
    );
    for case in styles["cases"].as_array().into_iter().flatten() {
        let goodput_target = match case["name"].as_str() {
            Some("tpm") => TARGET_TOKEN_GOODPUT,
            _ => TARGET_GOODPUT,
        };
        for (i, p) in case["phases"].as_array().into_iter().flatten().enumerate() {
            let goodput = p["goodput_share_of_r"].as_f64().unwrap_or(f64::NAN);
            let refused = p["refused_share"].as_f64().unwrap_or(f64::NAN);
            let converged = p["converged_after_secs"].as_f64();
            let met = goodput >= goodput_target
                && refused <= TARGET_REFUSED
                && converged.is_some_and(|c| c <= TARGET_CONVERGED_SECS);
            md.push_str(&format!(
                "| {}{} | {:.1}% | {:.2}% | {} | {} |\n",
                case["title"].as_str().unwrap_or("?"),
                PHASE_NAMES.get(i).copied().unwrap_or(""),
                goodput * 100.0,
                refused * 100.0,
                converged.map_or("not in the phase".into(), |c| format!("{c:.2} s")),
                if met { "pass" } else { "**miss**" },
            ));
        }
    }
    md.push_str(&format!(
        "\nTargets: steady-state goodput ≥ {:.0}% of R ({:.0}% of the token limit), ≤ {:.0}% of attempts refused, converged within {:.0} s.\n",
        TARGET_GOODPUT * 100.0,
        TARGET_TOKEN_GOODPUT * 100.0,
        TARGET_REFUSED * 100.0,
        TARGET_CONVERGED_SECS
    ));
    md
}

/// A case's phases on one line, for the progress output.
pub fn one_line(case: &Value) -> String {
    case["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{:.1}% of R, {:.2}% refused, converged {}",
                p["goodput_share_of_r"].as_f64().unwrap_or(f64::NAN) * 100.0,
                p["refused_share"].as_f64().unwrap_or(f64::NAN) * 100.0,
                p["converged_after_secs"]
                    .as_f64()
                    .map_or("never".into(), |c| format!("{c:.2} s")),
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Where the table goes in BENCHMARKS.md: between these two lines.
const BEGIN: &str = "<!-- rate-limit styles table: written by sluice-bench -->";
const END: &str = "<!-- end of the rate-limit styles table -->";

/// Replaces the table between the markers of `doc` with `table`; `None` when the markers
/// are missing.
pub fn replace_in_doc(doc: &str, table: &str) -> Option<String> {
    let start = doc.find(BEGIN)? + BEGIN.len();
    let end = start + doc[start..].find(END)?;
    Some(format!("{}\n{}{}", &doc[..start], table, &doc[end..]))
}
