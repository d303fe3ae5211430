//! Configuration: defaults, then `switchboard.toml` (or `--config`), then `SWITCHBOARD_*`
//! environment variables, then flags. Unknown keys and bad values are errors that name the
//! setting.

use clap::Args;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Every setting of `switchboard serve`; each also reads `SWITCHBOARD_<NAME>` and the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Config file (TOML) [default: ./switchboard.toml when it exists]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// REST API listen address [setting rest_addr, default 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub rest_addr: Option<String>,
    /// xDS gRPC listen address [setting xds_addr, default 127.0.0.1:18000]
    #[arg(long, value_name = "ADDR")]
    pub xds_addr: Option<String>,
    /// Admin listen address for /metrics, /healthz, /readyz [setting admin_addr, default 127.0.0.1:9090]
    #[arg(long, value_name = "ADDR")]
    pub admin_addr: Option<String>,
    /// postgres://… to share one database between replicas; empty for embedded SQLite under data_dir [setting database_url]
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Directory for the embedded database and the generated admin token [setting data_dir, default ./data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// Platform admin token; when unset one is generated at first start into data_dir/admin-token (mode 0600) [setting admin_token]
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// Log format: text or json [setting log_format, default text]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or switchboard=debug,sqlx=warn [setting log_level, default info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// How long a sidecar's self-registered endpoint outlives its last xDS stream, e.g. 30s or 2m [setting sidecar_grace_period, default 30s]
    #[arg(long, value_name = "DURATION")]
    pub sidecar_grace_period: Option<String>,
    /// How long the change log keeps a revision's changes, e.g. 24h; 0s keeps them forever [setting change_retention, default 24h]
    #[arg(long, value_name = "DURATION")]
    pub change_retention: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub rest_addr: SocketAddr,
    pub xds_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub database_url: String,
    pub data_dir: PathBuf,
    pub admin_token: String,
    pub log_format: LogFormat,
    pub log_level: String,
    #[serde(deserialize_with = "duration")]
    pub sidecar_grace_period: Duration,
    /// Zero: the change log is never pruned.
    #[serde(deserialize_with = "duration")]
    pub change_retention: Duration,
}

/// A duration as every Switchboard duration is written (`30s`, `1m30s`, `500ms`).
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    switchboard_xds_server::parse_grace_period(&text).map_err(serde::de::Error::custom)
}

const KEYS: [&str; 10] = [
    "rest_addr",
    "xds_addr",
    "admin_addr",
    "database_url",
    "data_dir",
    "admin_token",
    "log_format",
    "log_level",
    "sidecar_grace_period",
    "change_retention",
];

/// The shortest change log retention accepted (other than 0s, forever).
const MIN_CHANGE_RETENTION: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("invalid configuration: setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Settings {
    /// Loads settings; `env` is the process environment (injectable for tests).
    pub fn load(
        args: &ServeArgs,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        let mut b = config::Config::builder()
            .set_default("rest_addr", "127.0.0.1:8080")?
            .set_default("xds_addr", "127.0.0.1:18000")?
            .set_default("admin_addr", "127.0.0.1:9090")?
            .set_default("database_url", "")?
            .set_default("data_dir", "./data")?
            .set_default("admin_token", "")?
            .set_default("log_format", "text")?
            .set_default("log_level", "info")?
            .set_default("sidecar_grace_period", "30s")?
            .set_default("change_retention", "24h")?;
        b = match &args.config {
            Some(p) => b.add_source(
                config::File::from(p.as_path())
                    .format(config::FileFormat::Toml)
                    .required(true),
            ),
            None => b.add_source(
                config::File::new("switchboard.toml", config::FileFormat::Toml).required(false),
            ),
        };
        // Only SWITCHBOARD_<known setting> variables count: others (like the test suite's own)
        // share the prefix without being settings.
        let env_map: config::Map<String, String> = env
            .into_iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix("SWITCHBOARD_")?.to_ascii_lowercase();
                KEYS.contains(&key.as_str())
                    .then(|| (format!("SWITCHBOARD_{}", key.to_ascii_uppercase()), v))
            })
            .collect();
        b = b.add_source(config::Environment::with_prefix("SWITCHBOARD").source(Some(env_map)));
        for (key, value) in [
            ("rest_addr", &args.rest_addr),
            ("xds_addr", &args.xds_addr),
            ("admin_addr", &args.admin_addr),
            ("database_url", &args.database_url),
            ("data_dir", &args.data_dir),
            ("admin_token", &args.admin_token),
            ("log_format", &args.log_format),
            ("log_level", &args.log_level),
            ("sidecar_grace_period", &args.sidecar_grace_period),
            ("change_retention", &args.change_retention),
        ] {
            if let Some(v) = value {
                b = b.set_override(key, v.as_str())?;
            }
        }
        let s: Settings = b.build()?.try_deserialize()?;
        let db_ok = ["", "postgres://", "postgresql://", "sqlite:"]
            .iter()
            .any(|p| {
                if p.is_empty() {
                    s.database_url.is_empty()
                } else {
                    s.database_url.starts_with(p)
                }
            });
        if !db_ok {
            return Err(SettingsError::Invalid {
                key: "database_url",
                message: "use postgres://user@host:port/db, sqlite:path, or leave it empty for the embedded default".into(),
            });
        }
        if tracing_subscriber::EnvFilter::try_new(&s.log_level).is_err() {
            return Err(SettingsError::Invalid {
                key: "log_level",
                message: format!(
                    "{:?} is not a log filter (try info or switchboard=debug)",
                    s.log_level
                ),
            });
        }
        if !s.change_retention.is_zero() && s.change_retention < MIN_CHANGE_RETENTION {
            return Err(SettingsError::Invalid {
                key: "change_retention",
                message: format!(
                    "keep changes for at least {}s (or 0s to keep them forever): replicas and \
                     watchers that fall further behind re-read everything",
                    MIN_CHANGE_RETENTION.as_secs()
                ),
            });
        }
        if !s.admin_token.is_empty() && s.admin_token.len() < 16 {
            return Err(SettingsError::Invalid {
                key: "admin_token",
                message: "use at least 16 characters".into(),
            });
        }
        Ok(s)
    }

    /// The database to open: the configured URL, or SQLite under data_dir.
    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("switchboard.db").display()
            )
        } else {
            self.database_url.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(&file, "rest_addr = \"127.0.0.1:1111\"\nxds_addr = \"127.0.0.1:2222\"\nadmin_addr = \"127.0.0.1:3333\"\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            admin_addr: Some("127.0.0.1:4444".into()),
            ..Default::default()
        };
        let s = Settings::load(
            &args,
            env(&[
                ("SWITCHBOARD_XDS_ADDR", "127.0.0.1:5555"),
                ("SWITCHBOARD_TEST_DATABASE_URL", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.rest_addr.port(), 1111); // file
        assert_eq!(s.xds_addr.port(), 5555); // env over file
        assert_eq!(s.admin_addr.port(), 4444); // flag over file
        assert_eq!(s.log_format, LogFormat::Text); // default
        assert_eq!(s.sidecar_grace_period, Duration::from_secs(30)); // default
    }

    #[test]
    fn sidecar_grace_period() {
        let s = Settings::load(
            &ServeArgs::default(),
            env(&[("SWITCHBOARD_SIDECAR_GRACE_PERIOD", "1m30s")]),
        )
        .unwrap();
        assert_eq!(s.sidecar_grace_period, Duration::from_secs(90));
        let args = ServeArgs {
            sidecar_grace_period: Some("500ms".into()),
            ..Default::default()
        };
        let s = Settings::load(&args, env(&[("SWITCHBOARD_SIDECAR_GRACE_PERIOD", "1m")])).unwrap();
        assert_eq!(s.sidecar_grace_period, Duration::from_millis(500)); // flag over env
        let msg = Settings::load(
            &ServeArgs::default(),
            env(&[("SWITCHBOARD_SIDECAR_GRACE_PERIOD", "30")]),
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("sidecar_grace_period"), "{msg}");
        assert!(msg.contains("not a duration"), "{msg}");
    }

    #[test]
    fn change_retention() {
        let s = Settings::load(&ServeArgs::default(), env(&[])).unwrap();
        assert_eq!(s.change_retention, Duration::from_secs(24 * 3600)); // default
        let s = Settings::load(
            &ServeArgs::default(),
            env(&[("SWITCHBOARD_CHANGE_RETENTION", "0s")]),
        )
        .unwrap();
        assert!(s.change_retention.is_zero());
        let args = ServeArgs {
            change_retention: Some("10s".into()),
            ..Default::default()
        };
        let msg = Settings::load(&args, env(&[])).unwrap_err().to_string();
        assert!(msg.contains("change_retention"), "{msg}");
        assert!(msg.contains("at least 60s"), "{msg}");
    }

    #[test]
    fn errors_name_the_setting() {
        let bad = |args: ServeArgs, e: &[(&str, &str)]| {
            Settings::load(&args, env(e)).unwrap_err().to_string()
        };
        let msg = bad(
            ServeArgs {
                rest_addr: Some("nope".into()),
                ..Default::default()
            },
            &[],
        );
        assert!(msg.contains("rest_addr"), "{msg}");
        let msg = bad(ServeArgs::default(), &[("SWITCHBOARD_LOG_FORMAT", "xml")]);
        assert!(msg.contains("log_format"), "{msg}");
        let msg = bad(
            ServeArgs {
                database_url: Some("mysql://x".into()),
                ..Default::default()
            },
            &[],
        );
        assert!(msg.contains("database_url"), "{msg}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(&file, "rest_adr = \"127.0.0.1:1\"\n").unwrap();
        let msg = bad(
            ServeArgs {
                config: Some(file),
                ..Default::default()
            },
            &[],
        );
        assert!(msg.contains("rest_adr"), "{msg}");
    }
}
