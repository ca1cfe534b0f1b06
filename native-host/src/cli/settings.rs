//! `sdm settings`: show the service's settings, or change some with `--set key=value`.

use anyhow::{Context, bail};
use protocol::{Command, Settings, SettingsPatch, SettingsResult};
use sdm::client::Client;

use super::print::out;
use super::{parse, service_error};

/// Apply `set` (when any) and print the settings as the service now holds them.
pub async fn run(client: &mut Client, set: &[String]) -> anyhow::Result<()> {
    let command = if set.is_empty() {
        Command::GetSettings
    } else {
        Command::SetSettings {
            settings: patch(set)?,
        }
    };
    let result: SettingsResult = client.call(command).await.map_err(service_error)?;
    out(serde_json::to_string_pretty(&result.settings)?)
}

/// Turn `key=value` pairs into a settings patch, reading each value as its field's type. The service checks the
/// values' ranges, so they are refused with the same words from every client.
fn patch(pairs: &[String]) -> anyhow::Result<SettingsPatch> {
    let defaults = serde_json::to_value(Settings::default())?;
    let fields = defaults
        .as_object()
        .expect("settings serialize to an object");
    let mut patch = serde_json::Map::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("{pair:?} is not key=value"))?;
        let key = key.trim();
        let Some(example) = fields.get(key) else {
            let known: Vec<&str> = fields.keys().map(String::as_str).collect();
            bail!(
                "unknown setting {key:?}: the settings are {}",
                known.join(", ")
            );
        };
        patch.insert(key.to_string(), typed(key, value.trim(), example)?);
    }
    serde_json::from_value(serde_json::Value::Object(patch))
        .context("settings do not fit their types")
}

/// `value` read as the JSON type of `example`, the setting's default.
fn typed(key: &str, value: &str, example: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
    use serde_json::Value;
    Ok(match example {
        Value::Bool(_) => Value::Bool(match value.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => true,
            "false" | "no" | "off" | "0" => false,
            _ => bail!("{key} is true or false, not {value:?}"),
        }),
        Value::Number(_) => {
            let n = if key == "bandwidth_limit" || key == "capture_min_size" {
                parse::bytes(value).map_err(anyhow::Error::msg)?
            } else {
                value
                    .parse::<u64>()
                    .with_context(|| format!("{key} is a whole number, not {value:?}"))?
            };
            Value::from(n)
        }
        Value::Array(_) => Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        _ => Value::String(value.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_pairs_are_read_as_their_field_types() {
        let p = patch(&[
            "max_concurrent=4".into(),
            "capture_enabled=off".into(),
            "bandwidth_limit=1M".into(),
            "download_dir=/tmp/dl".into(),
            "capture_exclude=a.com, b.org".into(),
        ])
        .unwrap();
        assert_eq!(p.max_concurrent, Some(4));
        assert_eq!(p.capture_enabled, Some(false));
        assert_eq!(p.bandwidth_limit, Some(1 << 20));
        assert_eq!(p.download_dir.as_deref(), Some("/tmp/dl"));
        assert_eq!(
            p.capture_exclude,
            Some(vec!["a.com".into(), "b.org".into()])
        );
        assert!(patch(&["colour=blue".into()]).is_err());
        assert!(patch(&["max_concurrent=many".into()]).is_err());
        assert!(patch(&["max_concurrent".into()]).is_err());
    }
}
