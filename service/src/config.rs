//! Config files: TOML into a serde struct, then the role's own `validate()`.
//!
//! Errors name the file and the field: toml's messages carry the key path and
//! line, and validation errors are built with [`ConfigError::invalid`].

use serde::de::DeserializeOwned;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config field `{field}`: {message}")]
    Invalid { field: String, message: String },
}

impl ConfigError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Loads `path` (or the defaults when `None`). Unknown keys are errors when
/// the struct says `#[serde(deny_unknown_fields)]`.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

pub fn parse<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_string(),
        message: e.to_string().trim_end().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        #[serde(default)]
        port: u16,
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse::<Demo>("port = \"x\"", "demo.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("port") && e.contains("demo.toml"), "{e}");
        let e = parse::<Demo>("prot = 1", "demo.toml").unwrap_err().to_string();
        assert!(e.contains("prot"), "{e}");
        assert_eq!(parse::<Demo>("port = 7", "d").unwrap().port, 7);
        assert!(
            load::<Demo>(Some(Path::new("/nonexistent/x.toml")))
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/x.toml")
        );
    }
}
