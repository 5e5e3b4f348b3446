//! The broker's settings, also read from the `[broker]` part of a TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cs_wire::WireLimits;
use serde::{Deserialize, Serialize};

/// Certificate chain and private key (PEM files) for wss://.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything the broker needs. Durations are written in TOML as a number
/// of seconds (`10`, `0.5`) or a string with a unit (`"10s"`, `"250ms"`,
/// `"2m"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// The home directory: the source of truth.
    pub home: PathBuf,
    /// Journal and per-client indexes (outside the home, or under its
    /// excluded `.cs-actor/`).
    pub state_dir: PathBuf,
    /// Where to listen, e.g. `127.0.0.1:7443`; port 0 picks a free port
    /// (see [`crate::BrokerHandle::local_addr`]).
    pub listen: SocketAddr,
    /// The bearer tokens of the compute servers (mode 0600).
    pub tokens_file: PathBuf,
    /// wss:// when set, ws:// otherwise (loopback and tests only).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Most sessions at once; a client beyond that is refused (Busy).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most tar streams (step 3 or step 4, any client) being worked on at
    /// once. A stream waiting on its client's network gives its slot back
    /// meanwhile, so a slow client never holds one.
    #[serde(default = "default_max_concurrent_tar")]
    pub max_concurrent_tar: usize,
    /// Time a connection has to complete the websocket upgrade.
    #[serde(default = "default_hello_timeout", with = "duration")]
    pub hello_timeout: Duration,
    /// A session with no frame in either direction for this long is closed.
    #[serde(default = "default_idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    /// Sizes of messages, chunks and streams on the wire.
    #[serde(default, with = "WireLimitsDef")]
    pub limits: WireLimits,
    /// Local-only patterns (gitignore-style): must be the same as the
    /// clients'. `None`: the engine's defaults.
    #[serde(default)]
    pub local_only: Option<Vec<String>>,
    /// Excluded patterns: as `local_only`.
    #[serde(default)]
    pub excluded: Option<Vec<String>>,
    /// The home's owner, resolved by the caller: what the broker writes in
    /// the home is given to it (see `cs_engine::ProjectConfig::owner`).
    /// `None`: the process's own ids.
    #[serde(skip)]
    pub owner: Option<cs_engine::Owner>,
    /// A hello looks only where inotify saw the home change; the whole
    /// home is rescanned at least this often (what inotify cannot see: mmap
    /// writes, a home on a network filesystem). Default 300 s.
    #[serde(default = "default_full_rescan", with = "duration")]
    pub full_rescan: Duration,
    /// Files that keep changing on the project (step 4): see
    /// `cs_engine::BusyPolicy`.
    #[serde(skip)]
    pub busy: cs_engine::BusyPolicy,
}

/// `cs_wire::WireLimits` in TOML: `[limits] max_message_bytes = …,
/// max_chunk_bytes = …` (each optional).
#[derive(Serialize, Deserialize)]
#[serde(remote = "WireLimits", deny_unknown_fields)]
struct WireLimitsDef {
    #[serde(default = "default_max_message_bytes")]
    max_message_bytes: usize,
    #[serde(default = "default_max_chunk_bytes")]
    max_chunk_bytes: usize,
}

fn default_max_message_bytes() -> usize {
    WireLimits::default().max_message_bytes
}
fn default_max_chunk_bytes() -> usize {
    WireLimits::default().max_chunk_bytes
}

fn default_max_connections() -> usize {
    64
}
fn default_max_concurrent_tar() -> usize {
    2
}
fn default_hello_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_full_rescan() -> Duration {
    cs_engine::DEFAULT_FULL_RESCAN_EVERY
}

impl BrokerConfig {
    /// A configuration with every default.
    pub fn new(home: PathBuf, state_dir: PathBuf, listen: SocketAddr, tokens_file: PathBuf) -> Self {
        BrokerConfig {
            home,
            state_dir,
            listen,
            tokens_file,
            tls: None,
            max_connections: default_max_connections(),
            max_concurrent_tar: default_max_concurrent_tar(),
            hello_timeout: default_hello_timeout(),
            idle_timeout: default_idle_timeout(),
            limits: WireLimits::default(),
            local_only: None,
            excluded: None,
            owner: None,
            full_rescan: default_full_rescan(),
            busy: cs_engine::BusyPolicy::default(),
        }
    }

    /// The engine's path filter for these settings.
    pub fn filter(&self) -> Result<cs_engine::PathFilter, cs_engine::EngineError> {
        let defaults = cs_engine::default_local_only();
        let local: Vec<&str> = self.local_only.as_ref().unwrap_or(&defaults).iter().map(String::as_str).collect();
        let excluded: Vec<&str> = match &self.excluded {
            Some(v) => v.iter().map(String::as_str).collect(),
            None => cs_engine::DEFAULT_EXCLUDED.to_vec(),
        };
        cs_engine::PathFilter::new(&local, &excluded)
    }
}

/// Durations as seconds or as `"<number><unit>"` (ms, s, m, h).
pub mod duration {
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_nanos() == 0 {
            s.serialize_u64(d.as_secs())
        } else {
            s.serialize_f64(d.as_secs_f64())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number of seconds or a string such as \"10s\", \"250ms\", \"2m\"")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v).map(Duration::from_secs).map_err(|_| E::custom("a duration cannot be negative"))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(|e| E::custom(format!("bad duration {v}: {e}")))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v)
                .ok_or_else(|| E::custom(format!("bad duration {v:?}: use e.g. \"10s\", \"250ms\", \"2m\", \"1h\"")))
        }
    }

    /// `"250ms"`, `"10s"`, `"1.5s"`, `"2m"`, `"1h"`, or a bare number of seconds.
    pub fn parse(s: &str) -> Option<Duration> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().ok()?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "" | "s" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            _ => return None,
        };
        Duration::try_from_secs_f64(secs).ok()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_units() {
            assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
            assert_eq!(parse("10s"), Some(Duration::from_secs(10)));
            assert_eq!(parse("1.5"), Some(Duration::from_millis(1500)));
            assert_eq!(parse("2m"), Some(Duration::from_secs(120)));
            assert_eq!(parse("1h"), Some(Duration::from_secs(3600)));
            assert_eq!(parse("x"), None);
            assert_eq!(parse("10 parsecs"), None);
        }
    }
}
