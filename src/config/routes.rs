//! `[[routes]]`: the model names clients of the OpenAI-compatible front door send, each
//! mapped to a configured provider and its model, with what happens to the run when the
//! client goes away before the answer.

use serde::Deserialize;

use super::{ConfigError, ProviderConfig, invalid};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The public model name clients put in `model`.
    pub model: String,
    /// The configured provider that serves it.
    pub provider: String,
    /// The provider's own model name (default: the provider's `default_model`).
    #[serde(default)]
    pub provider_model: Option<String>,
    /// What happens to the run when the client disconnects before the answer.
    #[serde(default)]
    pub on_disconnect: DisconnectPolicy,
}

/// What a client's disconnect does to its run.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectPolicy {
    /// The run is cancelled (an attempt in flight is aborted): nobody is waiting.
    #[default]
    Cancel,
    /// The run goes on; its result stays at `GET /runs/{id}`.
    Finish,
}

impl RouteConfig {
    /// The provider model this route runs.
    pub fn target_model<'a>(&'a self, provider: &'a ProviderConfig) -> Option<&'a str> {
        self.provider_model
            .as_deref()
            .or(provider.default_model.as_deref())
    }
}

/// Checks every route against the others and the providers.
pub(super) fn validate_all(
    routes: &[RouteConfig],
    providers: &[ProviderConfig],
) -> Result<(), ConfigError> {
    let mut names = std::collections::BTreeSet::new();
    for (i, r) in routes.iter().enumerate() {
        let at = |key: &str| format!("routes[{i}].{key}");
        if r.model.trim().is_empty() || r.model.len() > crate::run::MAX_NAME_LEN {
            return Err(invalid(
                at("model"),
                format!("must be 1 to {} characters", crate::run::MAX_NAME_LEN),
            ));
        }
        if !names.insert(r.model.as_str()) {
            return Err(invalid(
                at("model"),
                format!("route `{}` is defined twice", r.model),
            ));
        }
        let Some(provider) = providers.iter().find(|p| p.name == r.provider) else {
            let known: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
            return Err(invalid(
                at("provider"),
                format!(
                    "unknown provider `{}`; configured providers: {}",
                    r.provider,
                    known.join(", ")
                ),
            ));
        };
        if r.target_model(provider).is_none() {
            return Err(invalid(
                at("provider_model"),
                format!(
                    "provider `{}` has no default_model: name the model this route runs",
                    r.provider
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::load_for_test as load;
    use super::DisconnectPolicy;

    const OPENAI: &str = "[[providers]]\nname = \"openai\"\nkind = \"openai\"\n";

    #[test]
    fn a_route_names_a_provider_and_its_model() {
        let c = load(
            &format!(
                "{OPENAI}[[routes]]\nmodel = \"fast\"\nprovider = \"openai\"\n\
                 provider_model = \"gpt-4o-mini\"\non_disconnect = \"finish\"\n"
            ),
            &[],
        )
        .unwrap();
        assert_eq!(c.routes[0].provider_model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(c.routes[0].on_disconnect, DisconnectPolicy::Finish);
    }

    #[test]
    fn bad_routes_name_their_key() {
        for (route, key) in [
            (
                "model = \"x\"\nprovider = \"nope\"\nprovider_model = \"m\"",
                "routes[0].provider",
            ),
            (
                "model = \"x\"\nprovider = \"openai\"",
                "routes[0].provider_model",
            ),
            (
                "model = \"\"\nprovider = \"openai\"\nprovider_model = \"m\"",
                "routes[0].model",
            ),
            (
                "model = \"x\"\nprovider = \"openai\"\nprovider_model = \"m\"\non_disconnect = \"shrug\"",
                "on_disconnect",
            ),
        ] {
            let msg = load(&format!("{OPENAI}[[routes]]\n{route}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(msg.contains(key), "{route}: {msg}");
        }
        let twice = format!(
            "{OPENAI}[[routes]]\nmodel = \"x\"\nprovider = \"openai\"\nprovider_model = \"a\"\n\
             [[routes]]\nmodel = \"x\"\nprovider = \"openai\"\nprovider_model = \"b\"\n"
        );
        let msg = load(&twice, &[]).unwrap_err().to_string();
        assert!(msg.contains("defined twice"), "{msg}");
    }
}
