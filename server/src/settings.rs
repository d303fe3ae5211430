//! Configuration: defaults, then `switchboard.toml` (or `--config`), then `SWITCHBOARD_*`
//! environment variables, then flags. Unknown keys and bad values are errors that name the
//! setting.
//!
//! Each setting is declared once, in the [`settings!`] list below: its name (the config file
//! key, `SWITCHBOARD_<NAME>` and `--<name-with-dashes>`), type, default and help. The `config`
//! crate does the layering and the typed parsing, so errors read the same whichever layer the
//! bad value came from.

use clap::Args;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Declares the settings: from one line per setting it generates the flags of `serve` and
/// `migrate` ([`ServeArgs`]), the typed [`Settings`] and the [`SETTINGS`] table (key and
/// default) that drives the defaults, the environment and the flag overrides.
macro_rules! settings {
    ($(
        $(#[$attr:meta])*
        $name:ident: $ty:ty = $default:literal, $value_name:literal, $help:literal;
    )*) => {
        /// Every setting of `switchboard serve`; each also reads `SWITCHBOARD_<NAME>` and the
        /// config file.
        #[derive(Debug, Clone, Default, Args)]
        pub struct ServeArgs {
            /// Config file (TOML) [default: ./switchboard.toml when it exists]
            #[arg(long, value_name = "FILE")]
            pub config: Option<PathBuf>,
            $(
                #[arg(long, value_name = $value_name, help = help(stringify!($name), $default, $help))]
                pub $name: Option<String>,
            )*
        }

        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $( $(#[$attr])* pub $name: $ty, )*
        }

        /// Every setting's key and default, in declaration order.
        const SETTINGS: &[Setting] = &[$( Setting { key: stringify!($name), default: $default } ),*];

        impl ServeArgs {
            /// The settings given as flags, as (key, value).
            fn flags(&self) -> impl Iterator<Item = (&'static str, &str)> {
                [$( (stringify!($name), self.$name.as_deref()) ),*]
                    .into_iter()
                    .filter_map(|(key, value)| Some((key, value?)))
            }
        }
    };
}

settings! {
    rest_addr: SocketAddr = "127.0.0.1:8080", "ADDR", "REST API listen address";
    xds_addr: SocketAddr = "127.0.0.1:18000", "ADDR", "xDS gRPC listen address";
    admin_addr: SocketAddr = "127.0.0.1:9090", "ADDR",
        "Admin listen address for /metrics, /healthz, /readyz";
    database_url: String = "", "URL",
        "postgres://… to share one database between replicas; empty for embedded SQLite under data_dir";
    database_url_file: PathBuf = "", "FILE",
        "File holding database_url (a Kubernetes Secret or systemd credential), so the password is in neither the environment nor the command line";
    data_dir: PathBuf = "./data", "DIR",
        "Directory for the embedded database and the generated admin token";
    admin_token: String = "", "TOKEN",
        "Platform admin token; when unset one is generated at first start into data_dir/admin-token (mode 0600)";
    admin_token_file: PathBuf = "", "FILE",
        "File holding admin_token (a Kubernetes Secret or systemd credential)";
    ca_key_file: String = "", "FILE",
        "File holding the key that encrypts the mesh CAs' private keys (64 hex characters or base64 of 32 bytes)";
    ca_key: String = "", "KEY",
        "The CA key-encryption key itself, best given as SWITCHBOARD_CA_KEY; with neither this nor ca_key_file, SQLite generates data_dir/ca-key";
    trust_domain: String = "switchboard.local", "DOMAIN",
        "SPIFFE trust domain: workload identities are spiffe://{tenant}.{trust_domain}/mesh/{mesh}/service/{service}";
    tls_cert_file: PathBuf = "", "FILE",
        "PEM certificate chain (leaf first) for TLS on the REST and xDS ports, re-read when it changes; empty: plaintext";
    tls_key_file: PathBuf = "", "FILE",
        "PEM private key of tls_cert_file (PKCS#8, PKCS#1 or SEC1), re-read with it";
    proxy_jwt_key_file: PathBuf = "", "FILE",
        "HS256 key signing JWT proxy tokens (32+ bytes), the same file on every replica; empty: generated into data_dir/proxy-jwt-key on the embedded database, JWT proxy tokens off with PostgreSQL";
    log_format: LogFormat = "text", "FORMAT", "Log format: text or json";
    log_level: String = "info", "FILTER", "Log filter, e.g. info or switchboard=debug,sqlx=warn";
    otlp_endpoint: String = "", "URL",
        "OTLP/gRPC collector to export traces to, e.g. http://127.0.0.1:4317; when unset, OTEL_EXPORTER_OTLP_ENDPOINT, and without either nothing is exported";
    trace_sampling_ratio: f64 = "1.0", "RATIO",
        "Share of the traces started here that are exported, 0.0 to 1.0; a REST caller's traceparent decides for its own trace";
    #[serde(deserialize_with = "duration")]
    sidecar_grace_period: Duration = "30s", "DURATION",
        "How long a sidecar's self-registered endpoint outlives its last xDS stream, e.g. 30s or 2m";
    /// Zero: the change log is never pruned.
    #[serde(deserialize_with = "duration")]
    change_retention: Duration = "24h", "DURATION",
        "How long the change log keeps a revision's changes, e.g. 24h; 0s keeps them forever";
    /// Zero: history is never pruned.
    #[serde(deserialize_with = "duration")]
    history_retention: Duration = "720h", "DURATION",
        "How long resource history and the audit log are kept (720h: 30 days); 0s keeps them forever";
    quota_streams: u64 = "50000", "N",
        "Default per-tenant quota: concurrent xDS streams of a tenant on one replica";
    quota_resources_per_mesh: u64 = "10000", "N",
        "Default per-tenant quota: stored resources in one mesh";
    quota_writes_per_second: u64 = "100", "N",
        "Default per-tenant quota: REST writes per second on one replica (at least 1)";
    quota_write_burst: u64 = "200", "N",
        "Default per-tenant quota: REST writes allowed at once after a quiet period (at least 1)";
    xds_max_concurrent_initial_pushes: usize = "256", "COUNT",
        "How many xDS streams build and write their initial responses at once; the others wait their turn, first come first served";
    /// Zero: no keepalive pings.
    #[serde(deserialize_with = "duration")]
    xds_keepalive_interval: Duration = "30s", "DURATION",
        "HTTP/2 PING interval on the xDS port, to drop proxies that vanished; 0s sends none";
    #[serde(deserialize_with = "duration")]
    xds_keepalive_timeout: Duration = "20s", "DURATION",
        "How long an xDS connection's PING may go unanswered before the connection is closed";
    /// Zero: connections have no maximum age.
    #[serde(deserialize_with = "duration")]
    xds_max_connection_age: Duration = "30m", "DURATION",
        "xDS connections get GOAWAY after this age (plus or minus the jitter), so streams re-balance across replicas; 0s: never";
    #[serde(deserialize_with = "duration")]
    xds_max_connection_age_jitter: Duration = "3m", "DURATION",
        "Spread of xds_max_connection_age, drawn per connection so connections opened together do not leave together";
    #[serde(deserialize_with = "duration")]
    xds_max_connection_age_grace: Duration = "30s", "DURATION",
        "How long an xDS connection sent GOAWAY at its maximum age keeps its open streams before it is closed";
    /// Fits Kubernetes' default terminationGracePeriodSeconds (30 s) with 5 s to spare.
    #[serde(deserialize_with = "duration")]
    drain_period: Duration = "25s", "DURATION",
        "On SIGTERM or SIGINT: readiness fails at once, the ports stop accepting, xDS connections get GOAWAY spread uniformly over this period, in-flight REST requests finish, and the process exits by its end; keep it below the orchestrator's kill timeout";
}

/// A setting's name and its default as written in a config file.
struct Setting {
    key: &'static str,
    default: &'static str,
}

/// A flag's help: what it sets, then the setting's name and default (an empty default, such as
/// `database_url`'s, has its meaning in the text).
fn help(key: &str, default: &str, text: &str) -> String {
    if default.is_empty() {
        format!("{text} [setting {key}]")
    } else {
        format!("{text} [setting {key}, default {default}]")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A duration as every Switchboard duration is written (`30s`, `1m30s`, `500ms`).
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    switchboard_xds_server::parse_grace_period(&text).map_err(serde::de::Error::custom)
}

/// The shortest change log retention accepted (other than 0s, forever).
const MIN_CHANGE_RETENTION: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("invalid configuration: setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Fills the secret setting `key` from its `{key}_file` when that is set: the file's content
/// without its trailing newline (`echo` and editors add one; `LoadCredential=` and a mounted
/// Secret pass the bytes as they are). Giving both, or a file that is missing, unreadable or
/// empty, is an error naming `{key}_file`.
/// The file's content is never quoted.
fn read_secret_file(
    value: &mut String,
    (key, file_key): (&str, &'static str),
    file: &Path,
) -> Result<(), SettingsError> {
    if file.as_os_str().is_empty() {
        return Ok(());
    }
    let invalid = |message: String| SettingsError::Invalid {
        key: file_key,
        message,
    };
    if !value.is_empty() {
        return Err(invalid(format!("set {key} or {file_key}, not both")));
    }
    let bytes =
        std::fs::read(file).map_err(|e| invalid(format!("cannot read {}: {e}", file.display())))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| invalid(format!("{} is not UTF-8 text", file.display())))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(invalid(format!("{} is empty", file.display())));
    }
    *value = text.to_owned();
    Ok(())
}

impl Settings {
    /// The quotas of tenants that have none of their own.
    pub fn quota_defaults(&self) -> switchboard_store::Quotas {
        switchboard_store::Quotas {
            streams: self.quota_streams,
            resources_per_mesh: self.quota_resources_per_mesh,
            writes_per_second: self.quota_writes_per_second,
            write_burst: self.quota_write_burst,
        }
    }

    /// Loads settings; `env` is the process environment (injectable for tests).
    pub fn load(
        args: &ServeArgs,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        let mut b = config::Config::builder();
        for setting in SETTINGS {
            b = b.set_default(setting.key, setting.default)?;
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        // OpenTelemetry's standard variable, below every layer of our own.
        if let Some((_, endpoint)) = env.iter().find(|(k, _)| k == "OTEL_EXPORTER_OTLP_ENDPOINT") {
            b = b.set_default("otlp_endpoint", endpoint.as_str())?;
        }
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
                SETTINGS
                    .iter()
                    .any(|s| s.key == key)
                    .then(|| (format!("SWITCHBOARD_{}", key.to_ascii_uppercase()), v))
            })
            .collect();
        b = b.add_source(config::Environment::with_prefix("SWITCHBOARD").source(Some(env_map)));
        for (key, value) in args.flags() {
            b = b.set_override(key, value)?;
        }
        let mut s: Settings = b.build()?.try_deserialize()?;
        let (url, token) = (&s.database_url_file, &s.admin_token_file);
        read_secret_file(
            &mut s.database_url,
            ("database_url", "database_url_file"),
            url,
        )?;
        read_secret_file(
            &mut s.admin_token,
            ("admin_token", "admin_token_file"),
            token,
        )?;
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
        for (key, value, min) in [
            ("quota_streams", s.quota_streams, 0),
            ("quota_resources_per_mesh", s.quota_resources_per_mesh, 0),
            ("quota_writes_per_second", s.quota_writes_per_second, 1),
            ("quota_write_burst", s.quota_write_burst, 1),
        ] {
            if !(min..=switchboard_store::QUOTA_MAX).contains(&value) {
                return Err(SettingsError::Invalid {
                    key,
                    message: format!("must be between {min} and {}", switchboard_store::QUOTA_MAX),
                });
            }
        }
        if s.xds_max_concurrent_initial_pushes == 0 {
            return Err(SettingsError::Invalid {
                key: "xds_max_concurrent_initial_pushes",
                message: "allow at least 1 (no stream could be served with 0)".into(),
            });
        }
        if !s.xds_keepalive_interval.is_zero() && s.xds_keepalive_timeout.is_zero() {
            return Err(SettingsError::Invalid {
                key: "xds_keepalive_timeout",
                message: "give pings some time to be answered, e.g. 20s".into(),
            });
        }
        if !s.xds_max_connection_age.is_zero()
            && s.xds_max_connection_age_jitter >= s.xds_max_connection_age
        {
            return Err(SettingsError::Invalid {
                key: "xds_max_connection_age_jitter",
                message: "keep the jitter below xds_max_connection_age (10% of it is typical)"
                    .into(),
            });
        }
        if !(0.0..=1.0).contains(&s.trace_sampling_ratio) {
            return Err(SettingsError::Invalid {
                key: "trace_sampling_ratio",
                message: format!(
                    "{} is not a share: give 0.0 (none) to 1.0 (all)",
                    s.trace_sampling_ratio
                ),
            });
        }
        if !s.otlp_endpoint.is_empty() && !s.otlp_endpoint.contains(':') {
            return Err(SettingsError::Invalid {
                key: "otlp_endpoint",
                message: format!(
                    "{:?} is not a collector address: use http://host:4317",
                    s.otlp_endpoint
                ),
            });
        }
        if !s.admin_token.is_empty() && s.admin_token.len() < 16 {
            return Err(SettingsError::Invalid {
                key: "admin_token",
                message: "use at least 16 characters".into(),
            });
        }
        if s.tls_cert_file.as_os_str().is_empty() != s.tls_key_file.as_os_str().is_empty() {
            return Err(SettingsError::Invalid {
                key: if s.tls_key_file.as_os_str().is_empty() {
                    "tls_key_file"
                } else {
                    "tls_cert_file"
                },
                message:
                    "set both tls_cert_file and tls_key_file for TLS, or neither for plaintext"
                        .into(),
            });
        }
        Ok(s)
    }

    /// The xDS port's connection policy: keepalive and maximum age (0s turns each off).
    pub fn xds_connections(&self) -> switchboard_xds_server::ConnectionPolicy {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        switchboard_xds_server::ConnectionPolicy {
            keepalive_interval: nonzero(self.xds_keepalive_interval),
            keepalive_timeout: self.xds_keepalive_timeout,
            max_age: nonzero(self.xds_max_connection_age).map(|age| {
                switchboard_xds_server::MaxAge {
                    age,
                    jitter: self.xds_max_connection_age_jitter,
                    grace: self.xds_max_connection_age_grace,
                }
            }),
        }
    }

    /// How the xDS port drains at shutdown.
    pub fn xds_drain(&self) -> switchboard_xds_server::Drain {
        switchboard_xds_server::Drain {
            period: self.drain_period,
        }
    }

    /// The certificate files of the REST and xDS ports, when TLS is on.
    pub fn tls(&self) -> Option<crate::tls::TlsFiles> {
        (!self.tls_cert_file.as_os_str().is_empty()).then(|| crate::tls::TlsFiles {
            cert: self.tls_cert_file.clone(),
            key: self.tls_key_file.clone(),
        })
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
    fn quota_defaults() {
        let s = Settings::load(&ServeArgs::default(), env(&[])).unwrap();
        assert_eq!(s.quota_defaults(), switchboard_store::Quotas::DEFAULT);
        let s = Settings::load(
            &ServeArgs::default(),
            env(&[("SWITCHBOARD_QUOTA_STREAMS", "7")]),
        )
        .unwrap();
        assert_eq!(s.quota_defaults().streams, 7);
        let msg = Settings::load(
            &ServeArgs::default(),
            env(&[("SWITCHBOARD_QUOTA_WRITES_PER_SECOND", "0")]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            msg,
            "invalid configuration: setting quota_writes_per_second: must be between 1 and \
             1000000000"
        );
    }

    #[test]
    fn history_retention() {
        let s = Settings::load(&ServeArgs::default(), env(&[])).unwrap();
        assert_eq!(s.history_retention, Duration::from_secs(30 * 24 * 3600)); // default
        let s = Settings::load(
            &ServeArgs::default(),
            env(&[("SWITCHBOARD_HISTORY_RETENTION", "0s")]),
        )
        .unwrap();
        assert!(s.history_retention.is_zero());
        let args = ServeArgs {
            history_retention: Some("a month".into()),
            ..Default::default()
        };
        let msg = Settings::load(&args, env(&[])).unwrap_err().to_string();
        assert!(msg.contains("history_retention"), "{msg}");
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
    fn help_and_readme_list_every_setting_with_its_default() {
        let help = ServeArgs::augment_args(clap::Command::new("serve"))
            .render_long_help()
            .to_string();
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has a Configuration section");
        let rows: Vec<Vec<&str>> = section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| l.split('|').map(str::trim).collect())
            .collect();
        for s in SETTINGS {
            let flag = format!("--{}", s.key.replace('_', "-"));
            assert!(help.contains(&flag), "serve --help has no {flag}");
            let tag = if s.default.is_empty() {
                format!("[setting {}]", s.key)
            } else {
                format!("[setting {}, default {}]", s.key, s.default)
            };
            assert!(help.contains(&tag), "serve --help has no {tag}");
            let row = rows
                .iter()
                .find(|r| r[1] == format!("`{}`", s.key))
                .unwrap_or_else(|| panic!("README's configuration table has no {}", s.key));
            if !s.default.is_empty() {
                assert_eq!(row[2], s.default, "README's default of {}", s.key);
            }
        }
        for row in &rows {
            assert!(
                SETTINGS.iter().any(|s| row[1] == format!("`{}`", s.key)),
                "README's configuration table has {}, which is no setting",
                row[1]
            );
        }
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let s = Settings::load(&ServeArgs::default(), env(&[])).unwrap();
        assert_eq!(s.tls(), None);
        let s = Settings::load(
            &ServeArgs::default(),
            env(&[
                ("SWITCHBOARD_TLS_CERT_FILE", "/etc/sb/cert.pem"),
                ("SWITCHBOARD_TLS_KEY_FILE", "/etc/sb/key.pem"),
            ]),
        )
        .unwrap();
        let files = s.tls().unwrap();
        assert_eq!(files.cert, PathBuf::from("/etc/sb/cert.pem"));
        assert_eq!(files.key, PathBuf::from("/etc/sb/key.pem"));
        let msg = Settings::load(
            &ServeArgs::default(),
            env(&[("SWITCHBOARD_TLS_CERT_FILE", "/etc/sb/cert.pem")]),
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("tls_key_file"), "{msg}");
    }

    #[test]
    fn the_xds_connection_policy_follows_its_settings() {
        use switchboard_xds_server::{ConnectionPolicy, MaxAge};
        let load = |e: &[(&str, &str)]| Settings::load(&ServeArgs::default(), env(e));
        let defaults = load(&[]).unwrap();
        assert_eq!(defaults.xds_max_concurrent_initial_pushes, 256);
        assert_eq!(
            defaults.xds_connections(),
            ConnectionPolicy {
                keepalive_interval: Some(Duration::from_secs(30)),
                keepalive_timeout: Duration::from_secs(20),
                max_age: Some(MaxAge {
                    age: Duration::from_secs(1800),
                    jitter: Duration::from_secs(180),
                    grace: Duration::from_secs(30),
                }),
            }
        );
        let off = load(&[
            ("SWITCHBOARD_XDS_KEEPALIVE_INTERVAL", "0s"),
            ("SWITCHBOARD_XDS_MAX_CONNECTION_AGE", "0s"),
        ])
        .unwrap()
        .xds_connections();
        assert_eq!((off.keepalive_interval, off.max_age), (None, None));
        for (pairs, key) in [
            (
                &[("SWITCHBOARD_XDS_MAX_CONCURRENT_INITIAL_PUSHES", "0")][..],
                "xds_max_concurrent_initial_pushes",
            ),
            (
                &[("SWITCHBOARD_XDS_KEEPALIVE_TIMEOUT", "0s")][..],
                "xds_keepalive_timeout",
            ),
            (
                &[
                    ("SWITCHBOARD_XDS_MAX_CONNECTION_AGE", "1m"),
                    ("SWITCHBOARD_XDS_MAX_CONNECTION_AGE_JITTER", "1m"),
                ][..],
                "xds_max_connection_age_jitter",
            ),
        ] {
            let msg = load(pairs).unwrap_err().to_string();
            assert!(msg.contains(key), "{msg}");
        }
    }

    #[test]
    fn the_drain_period_fits_kubernetes_grace_and_can_be_set() {
        let load = |e: &[(&str, &str)]| Settings::load(&ServeArgs::default(), env(e));
        assert_eq!(
            load(&[]).unwrap().xds_drain().period,
            Duration::from_secs(25)
        );
        let set = load(&[("SWITCHBOARD_DRAIN_PERIOD", "1m")]).unwrap();
        assert_eq!(set.xds_drain().period, Duration::from_secs(60));
        let msg = load(&[("SWITCHBOARD_DRAIN_PERIOD", "soon")])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("drain_period"), "{msg}");
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

    #[test]
    fn secrets_come_from_files_without_their_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("database-url");
        std::fs::write(&url, "postgres://sb:pw@db:5432/sb\n").unwrap();
        let token = dir.path().join("admin-token");
        std::fs::write(&token, "a-token-long-enough\r\n").unwrap();
        let s = Settings::load(
            &ServeArgs {
                admin_token_file: Some(token.to_str().unwrap().into()),
                ..Default::default()
            },
            env(&[("SWITCHBOARD_DATABASE_URL_FILE", url.to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!(s.database_url, "postgres://sb:pw@db:5432/sb");
        assert_eq!(s.database_url(), "postgres://sb:pw@db:5432/sb");
        assert_eq!(s.admin_token, "a-token-long-enough");
        // The value's own checks apply to the file's content, without quoting it.
        std::fs::write(&url, "mysql://sb:hunter2@db/sb").unwrap();
        std::fs::write(&token, "short").unwrap();
        let load = |key: &str, file: &Path| {
            Settings::load(&ServeArgs::default(), env(&[(key, file.to_str().unwrap())]))
                .unwrap_err()
                .to_string()
        };
        let msg = load("SWITCHBOARD_DATABASE_URL_FILE", &url);
        assert!(msg.contains("setting database_url:"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        let msg = load("SWITCHBOARD_ADMIN_TOKEN_FILE", &token);
        assert!(msg.contains("setting admin_token:"), "{msg}");
    }

    #[test]
    fn a_secret_file_missing_empty_or_given_with_its_value_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "a-token-long-enough\n").unwrap();
        let missing = dir.path().join("missing");
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        for (pairs, key, says) in [
            (
                vec![("SWITCHBOARD_ADMIN_TOKEN_FILE", path(&missing))],
                "admin_token_file",
                "cannot read",
            ),
            (
                vec![("SWITCHBOARD_DATABASE_URL_FILE", path(dir.path()))],
                "database_url_file",
                "cannot read",
            ),
            (
                vec![("SWITCHBOARD_DATABASE_URL_FILE", path(&empty))],
                "database_url_file",
                "is empty",
            ),
            (
                vec![
                    (
                        "SWITCHBOARD_ADMIN_TOKEN",
                        "another-token-long-enough".to_owned(),
                    ),
                    ("SWITCHBOARD_ADMIN_TOKEN_FILE", path(&token)),
                ],
                "admin_token_file",
                "set admin_token or admin_token_file, not both",
            ),
        ] {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let msg = Settings::load(&ServeArgs::default(), env(&pairs))
                .unwrap_err()
                .to_string();
            assert!(
                msg.starts_with(&format!("invalid configuration: setting {key}: ")),
                "{msg}"
            );
            assert!(msg.contains(says), "{msg}");
            assert!(!msg.contains("a-token-long-enough"), "{msg}");
        }
    }
}
