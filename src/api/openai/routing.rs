//! Which provider and model serve a model name a client sends, and the names
//! `GET /v1/models` lists.
//!
//! A name is looked up, in order, as: a `[[routes]]` entry's `model`; `provider/model`
//! with a configured provider (any model of it); a configured provider's name alone (its
//! `default_model`). Anything else is `model_not_found`.

use crate::config::{Config, DisconnectPolicy};

/// Where a model name leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Target {
    pub provider: String,
    pub model: String,
    pub on_disconnect: DisconnectPolicy,
}

pub(super) fn resolve(config: &Config, name: &str) -> Option<Target> {
    if let Some(route) = config.routes.iter().find(|r| r.model == name) {
        let provider = config.provider(&route.provider)?;
        return Some(Target {
            provider: route.provider.clone(),
            model: route.target_model(provider)?.to_string(),
            on_disconnect: route.on_disconnect,
        });
    }
    let (provider, model) = match name.split_once('/') {
        Some((provider, model)) if !model.is_empty() => {
            (config.provider(provider)?, model.to_string())
        }
        Some(_) => return None,
        None => {
            let provider = config.provider(name)?;
            (provider, provider.default_model.clone()?)
        }
    };
    Some(Target {
        provider: provider.name.clone(),
        model,
        on_disconnect: DisconnectPolicy::default(),
    })
}

/// The names `GET /v1/models` lists, with the provider behind each: every route, then
/// `provider/default_model` for each provider that has a default model.
pub(super) fn listed(config: &Config) -> Vec<(String, String)> {
    let routes = config
        .routes
        .iter()
        .map(|r| (r.model.clone(), r.provider.clone()));
    let defaults = config.providers.iter().filter_map(|p| {
        p.default_model
            .as_ref()
            .map(|m| (format!("{}/{m}", p.name), p.name.clone()))
    });
    routes.chain(defaults).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        crate::config::Config::from_toml_and_env(
            "[[providers]]\nname = \"sim\"\nkind = \"sim\"\ndefault_model = \"sim-1\"\n\
             [[providers]]\nname = \"openai\"\nkind = \"openai\"\n\
             [[routes]]\nmodel = \"fast\"\nprovider = \"openai\"\nprovider_model = \"gpt-4o-mini\"\n\
             on_disconnect = \"finish\"\n",
            std::path::Path::new("test.toml"),
            std::iter::empty(),
        )
        .unwrap()
    }

    #[test]
    fn routes_then_provider_slash_model_then_provider_names() {
        let c = config();
        let target = |provider: &str, model: &str, policy| Target {
            provider: provider.into(),
            model: model.into(),
            on_disconnect: policy,
        };
        assert_eq!(
            resolve(&c, "fast"),
            Some(target("openai", "gpt-4o-mini", DisconnectPolicy::Finish))
        );
        assert_eq!(
            resolve(&c, "openai/gpt-4.1"),
            Some(target("openai", "gpt-4.1", DisconnectPolicy::Cancel))
        );
        assert_eq!(
            resolve(&c, "sim"),
            Some(target("sim", "sim-1", DisconnectPolicy::Cancel))
        );
        for unknown in ["gpt-4o", "openai", "nope/x", "sim/", ""] {
            assert_eq!(resolve(&c, unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn the_list_names_routes_and_default_models() {
        let names: Vec<String> = listed(&config()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["fast", "sim/sim-1"]);
    }
}
