//! env-secrets: a secret-provider plugin that answers `key` with the environment variable
//! `SECRET_<KEY>` (upper case, `-` as `_`). The plugin sees only variables its Plugin resource
//! grants (`spec.grants.env`), so the operator decides exactly which secrets it can hand out.

use orchestrator_plugin_sdk::secret_provider::{self, SandboxInfo};

pub fn variable(key: &str) -> Result<String, String> {
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("invalid key {key:?}"));
    }
    Ok(format!("SECRET_{}", key.to_ascii_uppercase().replace('-', "_")))
}

struct EnvSecrets;

impl secret_provider::Guest for EnvSecrets {
    fn resolve(sandbox: SandboxInfo, key: String) -> Result<String, String> {
        let var = variable(&key)?;
        orchestrator_plugin_sdk::log(orchestrator_plugin_sdk::Level::Info, &format!("{} asks for {key}", sandbox.name));
        std::env::var(&var).map_err(|_| format!("{var} is not set or not granted (spec.grants.env)"))
    }
}

orchestrator_plugin_sdk::export_secret_provider!(EnvSecrets);

#[cfg(test)]
mod tests {
    #[test]
    fn keys_map_to_variables() {
        assert_eq!(super::variable("openai-prod").unwrap(), "SECRET_OPENAI_PROD");
        assert!(super::variable("../etc").is_err());
        assert!(super::variable("").is_err());
    }
}
