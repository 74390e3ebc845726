//! Every environment variable in one table: its name, default, parser (with its range) and
//! meaning. [`Values::read`] checks a whole environment against it (a value that does not parse
//! or is out of range is an error naming the variable, never clamped); the README's table of
//! variables and `bulk-export env` are rendered from it (a test keeps the README in step).

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{check_base_url, ConfigError, StoragePath};
use crate::fhir::resource_types::is_resource_type;

/// One environment variable.
pub struct Setting {
    pub name: &'static str,
    /// Firely Server's name of the same setting.
    pub firely: Option<&'static str>,
    pub default: Default,
    pub parser: Parser,
    /// What it means (markdown: the README's cell).
    pub help: &'static str,
}

/// What an unset variable means.
pub enum Default {
    /// This value, read as if it were set; the note follows it where it is shown (`(1 GiB)`).
    Value(&'static str, Option<&'static str>),
    /// Nothing: the setting is off or not used.
    None,
    /// The process cannot start without it.
    Required,
    /// Worked out from elsewhere, as said.
    Computed(&'static str),
}

/// How a value is read.
pub enum Parser {
    /// A whole number from `min` to `max` (None: as large as the setting's type holds).
    Number { min: u64, max: Option<u64> },
    /// `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`.
    Bool,
    /// One of these words (any case).
    OneOf(&'static [&'static str]),
    /// Any text.
    Text,
    /// Text of at least this many bytes, never shown in an error or a log.
    Secret { min_bytes: usize },
    /// `s3://bucket/prefix` or a directory ([`StoragePath::parse`]).
    Storage,
    /// An absolute http(s) URL (`check_base_url`).
    BaseUrl,
    /// A comma-separated list of R4 resource types.
    ResourceTypes,
    /// `ip:port`.
    SocketAddr,
    /// Read by `serve`'s options, the AWS SDK or the logger, not by [`super::Config`]: listed
    /// here to be documented with the rest.
    Elsewhere,
}

/// A checked value.
#[derive(Debug, Clone)]
pub enum Value {
    Number(u64),
    Bool(bool),
    Text(String),
    Storage(StoragePath),
    Types(Vec<String>),
    Addr(SocketAddr),
}

const fn var(name: &'static str, default: Default, parser: Parser, help: &'static str) -> Setting {
    Setting {
        name,
        firely: None,
        default,
        parser,
        help,
    }
}

const fn number(min: u64) -> Parser {
    Parser::Number { min, max: None }
}

const fn between(min: u64, max: u64) -> Parser {
    Parser::Number {
        min,
        max: Some(max),
    }
}

const fn value(v: &'static str) -> Default {
    Default::Value(v, None)
}

impl Setting {
    const fn firely(self, name: &'static str) -> Setting {
        Setting {
            firely: Some(name),
            ..self
        }
    }
}

/// Every variable, in the README's order.
pub const SETTINGS: &[Setting] = &[
    var("DATABASE_URL", Default::Required, Parser::Text,
        "Postgres URL, e.g. `postgres://user:pass@host:5432/db`. TLS the libpq way: `?sslmode=require` (encrypted; verified only with `sslrootcert`), `?sslmode=verify-full&sslrootcert=/path/ca.pem` (certificate and host name verified; without `sslrootcert` against the system CAs); `disable`/`prefer` (default) connect in plain TCP. Amazon RDS: `sslmode=verify-full` with the RDS CA bundle, or `sslmode=require`"),
    var("DATABASE_SECRET", Default::None, Parser::Text,
        "a Secrets Manager secret (ARN or name) holding `{\"username\": …, \"password\": …}` (what RDS keeps for a managed password): read at start and put into DATABASE_URL, which then carries no password (what `template.yaml` sets up; `bulk-export` reads it too)"),
    var("DATABASE_POOL_SIZE", Default::Computed("4 per Lambda function; `serve`: 8 + 3 per exporter worker; `load`: its writers + 4 (never fewer)"), number(1),
        "database connections per process"),
    var("STORAGE_PATH", value("./exports"), Parser::Storage,
        "`s3://bucket/prefix` or a local directory").firely("StoragePath"),
    var("REPEAT_PERIOD", value("60000"), number(100),
        "ms between exporter runs when nothing wakes it (`serve` only; in AWS, RepeatPeriod is the `ExporterSchedule` template parameter)").firely("RepeatPeriod"),
    var("ADDITIONAL_RESOURCES", value("Organization,Location,Substance,Device,BodyStructure,Medication,Coverage"), Parser::ResourceTypes,
        "types added to Patient/Group exports when referenced").firely("AdditionalResources"),
    var("QUEUE_URL", Default::None, Parser::Text,
        "SQS queue that wakes the exporter; none: the schedule finds jobs (`serve` wakes in-process)"),
    var("PUBLIC_BASE_URL", Default::Computed("`serve`: `http://<host>:<port>` it listens on; Lambda: `https://<the API's domain>`"), Parser::BaseUrl,
        "the FHIR base URL, never taken from the request's `Host` or forwarded headers: Content-Location, manifest URLs, smart-configuration, and the token `aud`/`iss` checks use it, and routes exist only under its path. Set it to the URL clients use behind a proxy, a custom domain, or when `serve` listens on `0.0.0.0`"),
    var("TRUST_FORWARDED_HEADERS", value("false"), Parser::Bool,
        "`true`: without `PUBLIC_BASE_URL`, take the base from `X-Forwarded-Proto` + `X-Forwarded-Host` (only behind a proxy that sets them and drops clients' own)"),
    var("MAX_FILE_BYTES", Default::Value("268435456", Some("(256 MiB)")), number(1024),
        "an ndjson file is closed and the next started at this size"),
    var("EXPORT_ITEM_BYTES", Default::Value("1073741824", Some("(1 GiB)")), number(1),
        "work-item size: planning splits a larger type into key ranges of about this size (`Observation-003-0001.ndjson` is the first file of its fourth range), which any exporter with the STORAGE_PATH the job was kicked off with claims; in AWS each item is one SQS message, and the exporter function's `ExporterMaxConcurrency` caps how many invocations share them"),
    var("EXPORT_SCAN_PERCENT", value("25"), number(0),
        "a Patient- or Group-level export with at least this share of all Patients reads each compartment type by scanning it and testing each resource's patients (the speed of a system-level export); a smaller one reads just its patients' resources through the compartment index (its cost independent of the database's size). Over 100: never scan. Either way the files are the same"),
    var("EXPORT_SCAN_MAX_PATIENTS", value("2000000"), number(0),
        "a job with more patients than this never scans: a scan tests each resource against an in-memory hash of the job's patients (about 128 bytes each, per reading statement: 256 MB at the default), which Postgres cannot spill to disk; a larger job reads through the compartment, whose joins spill when they must"),
    var("PORT", value("8080"), Parser::Elsewhere,
        "`serve --port`: the port it listens on"),
    var("HOST", value("127.0.0.1"), Parser::Elsewhere,
        "`serve --host`: the address it listens on"),
    var("EXPORT_WORKERS", Default::Computed("the number of cores"), Parser::Elsewhere,
        "`serve --workers N`: exporters in the process; they share every export's work items"),
    var("S3_GZIP_COPIES", value("true"), Parser::Bool,
        "S3 storage: store a gzip copy beside each file for clients that send `Accept-Encoding: gzip` (`false`: plain files only)"),
    var("S3_CONNECT_TIMEOUT_SECONDS", value("5"), number(1),
        "S3 storage: connecting; a request without a body fails its attempt after this and `S3_FIRST_BYTE_TIMEOUT_SECONDS` together (3 attempts per operation), so an S3 that accepts connections and does not answer costs seconds, not minutes"),
    var("S3_FIRST_BYTE_TIMEOUT_SECONDS", value("15"), number(1),
        "S3 storage: after connecting, waiting for the first byte of an answer"),
    var("S3_MIN_UPLOAD_RATE_BYTES", Default::Value("262144", Some("(256 KiB/s)")), number(1024),
        "S3 storage: the slowest upload accepted; an upload's attempt may take connect + first byte + its size at this rate (an 8 MiB part: 52 s at the defaults). A storage call that runs past its operations' timeouts is overdue: the exporter stops renewing its lease, and another exporter takes the work"),
    var("S3_FORCE_PATH_STYLE", Default::Computed("`true` when `AWS_ENDPOINT_URL` is set, else `false`"), Parser::Bool,
        "S3 path-style addressing (emulators)"),
    var("PRESIGN_TTL_SECONDS", value("300"), between(1, super::MAX_PRESIGN_TTL_SECONDS),
        "lifetime of presigned download URLs (minted per download): whoever holds one downloads the file without a token"),
    var("JOB_RETENTION_HOURS", value("24"), number(0),
        "after this a completed export's status is 404 and its files are deleted (`Expires` header)"),
    var("CANCELLED_STATUS_CODE", value("404"), Parser::OneOf(&["404", "410"]),
        "status URL answer after DELETE: `404` (IG) or `410` (Firely)"),
    var("LEASE_SECONDS", value("120"), number(5),
        "how long an exporter owns a work item without renewing (a heartbeat renews it every third) before another may take it"),
    var("MAX_ATTEMPTS", value("3"), number(1),
        "failed or crashed attempts of a work item without progress before its job is Failed"),
    var("STORAGE_OUTAGE_SECONDS", value("900"), number(0),
        "how long a work item waits out its storage being unavailable (S3 timing out, unreachable or answering 5xx, or a storage call overdue) before its job is Failed; these failures are retried after the backoff and do not count toward `MAX_ATTEMPTS`, so an S3 outage of minutes delays an export instead of failing it"),
    var("RETRY_AFTER_SECONDS", value("2"), number(1),
        "`Retry-After` on 202 status answers"),
    var("MIN_POLL_INTERVAL_MS", value("500"), number(0),
        "status polls of a running export closer together than this get 429 + Retry-After (0: off)"),
    var("MAX_CONCURRENT_EXPORTS", value("10"), number(1),
        "running exports per client; one more kick-off gets 429 + Retry-After (exact under concurrent kick-offs)"),
    var("MAX_STORED_EXPORTS", value("100"), number(1),
        "exports per client whose status and files are kept (any state, until deleted or expired); one more kick-off gets 429"),
    var("SERVE_HEADER_TIMEOUT_SECONDS", value("10"), number(1),
        "`serve`: a request's headers must arrive within this (else the connection is closed)"),
    var("SERVE_BODY_TIMEOUT_SECONDS", value("30"), number(1),
        "`serve`: a request's body must arrive within this (else 408)"),
    var("SERVE_MAX_CONNECTIONS", value("512"), number(1),
        "`serve`: open connections at most (slow clients cannot exhaust file descriptors); when all are open, a new connection takes the place of an idle one (still sending its headers, or kept alive between requests: from the peer with the most connections, oldest first), and is closed at once only when every connection is answering a request"),
    var("SERVE_MAX_CONNECTIONS_PER_PEER", Default::Value("64", Some("(or `SERVE_MAX_CONNECTIONS` when fewer)")), number(1),
        "`serve`: open connections from one peer (an IPv4 address, or an IPv6 /64) at most, and at most `SERVE_MAX_CONNECTIONS`; more from it are closed at once, so one client cannot hold the others' connections. Behind a proxy every connection comes from the proxy: set it to `SERVE_MAX_CONNECTIONS` there and let the proxy limit its clients"),
    var("SERVE_BODY_BUDGET_BYTES", Default::Value("33554432", Some("(32 MiB)")), between(crate::http::MAX_BODY_BYTES as u64, 1 << 30),
        "`serve`: request bodies in memory at once, all connections together; a body that does not fit gets 503 + Retry-After. Each body is also bounded before it is read: a kick-off's `Parameters` 1 MiB (only with a valid token, or authorization off: without one it gets 401 unread), every other route's 64 KiB (the token form is a few KB); a larger `Content-Length` gets 413 before the body is read (an OAuth error at `/auth/token`)"),
    var("METRICS", value("on"), Parser::Bool,
        "`serve`: `GET [base]/metrics` (the Prometheus/OpenMetrics text, under the FHIR base's path like every route, with the same size checks and access log); `off`: no metrics endpoint"),
    var("METRICS_ADDR", Default::None, Parser::SocketAddr,
        "`serve`: answer `GET /metrics` on this `ip:port` instead (e.g. `127.0.0.1:9090`, reachable by Prometheus but not by API clients), not on the main port"),
    var("AWS_ENDPOINT_URL", Default::Computed("AWS defaults"), Parser::Text,
        "the standard AWS SDK variables (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, …) select the S3/SQS endpoint (AWS, LocalStack, moto); with an endpoint set, S3 uses path-style addressing"),
    var("AWS_ENDPOINT_URL_S3", Default::None, Parser::Text,
        "the S3 endpoint alone (else `AWS_ENDPOINT_URL`'s); with it set, S3 uses path-style addressing"),
    var("AUTH", value("smart"), Parser::OneOf(&["smart", "off"]),
        "`smart`: SMART Backend Services bearer tokens on every export route; `off`: none (one machine only; `serve --insecure`)"),
    var("TOKEN_SIGNING_KEY", Default::Computed("(the Lambdas need it or the next one; `serve` makes a random one)"), Parser::Secret { min_bytes: super::MIN_SIGNING_KEY_BYTES },
        "signs and checks access tokens (HS256). In AWS a generated Secrets Manager secret"),
    var("TOKEN_SIGNING_KEY_SECRET", Default::None, Parser::Text,
        "or: the Secrets Manager secret (ARN or name) holding that key, read at cold start (what `template.yaml` sets up)"),
    var("ACCESS_TOKEN_TTL_SECONDS", value("300"), between(10, 300),
        "lifetime of issued access tokens"),
    var("RUST_LOG", value("info"), Parser::Elsewhere,
        "what is logged (tracing's filter: `debug`, `shared=debug,info`, …)"),
    var("LOG_FORMAT", Default::Computed("`text` (`json` in Lambda)"), Parser::OneOf(&["json", "text"]),
        "how log lines are written: `json`, one object per line, or `text`"),
];

/// The setting named `name` (every name the code reads is in the table: unit-tested).
pub fn setting(name: &str) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} is not in config::table::SETTINGS"))
}

impl Parser {
    /// `raw` (trimmed, not empty) read, or why not.
    fn parse(&self, raw: &str) -> Result<Value, String> {
        match self {
            Parser::Number { min, max } => {
                let n: u64 = raw
                    .parse()
                    .map_err(|_| "expected a non-negative integer".to_string())?;
                if n < *min || max.is_some_and(|max| n > max) {
                    return Err(format!("out of range: must be {}", range_text(*min, *max)));
                }
                Ok(Value::Number(n))
            }
            Parser::Bool => parse_bool(raw).map(Value::Bool),
            Parser::OneOf(words) => words
                .iter()
                .find(|w| w.eq_ignore_ascii_case(raw))
                .map(|w| Value::Text(w.to_string()))
                .ok_or_else(|| format!("must be {}", words.join(" or "))),
            Parser::Secret { min_bytes } if raw.len() < *min_bytes => {
                Err(format!("must be at least {min_bytes} bytes"))
            }
            Parser::Text | Parser::Secret { .. } | Parser::Elsewhere => {
                Ok(Value::Text(raw.to_string()))
            }
            Parser::Storage => StoragePath::parse(raw).map(Value::Storage).map_err(|e| e.0),
            Parser::BaseUrl => check_base_url(raw).map(Value::Text),
            Parser::ResourceTypes => parse_types(raw).map(Value::Types),
            Parser::SocketAddr => raw
                .parse()
                .map(Value::Addr)
                .map_err(|_| "expected host:port with an IP address (127.0.0.1:9090)".into()),
        }
    }
}

/// The one boolean parser: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`, in any case.
pub fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false (1/0, yes/no, on/off)".into()),
    }
}

fn parse_types(list: &str) -> Result<Vec<String>, String> {
    let types: Vec<String> = list
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    match types.iter().find(|t| !is_resource_type(t)) {
        Some(bad) => Err(format!("{bad} is not an R4 resource type")),
        None => Ok(types),
    }
}

fn range_text(min: u64, max: Option<u64>) -> String {
    match max {
        Some(max) => format!("{min} to {max}"),
        None => format!("at least {min}"),
    }
}

/// An environment checked against [`SETTINGS`]: every variable's value (or default) read.
pub struct Values(HashMap<&'static str, Value>);

impl Values {
    /// Reads every setting from `get` (an empty value counts as unset): the first value that
    /// does not parse or is out of range is the error, naming its variable.
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Result<Values, ConfigError> {
        let mut values = HashMap::new();
        for s in SETTINGS {
            let raw = get(s.name).filter(|v| !v.trim().is_empty());
            let (raw, set) = match (&raw, &s.default) {
                (Some(v), _) => (v.as_str(), true),
                (None, Default::Value(v, _)) => (*v, false),
                (None, Default::Required) => return Err(ConfigError::Missing { name: s.name }),
                (None, _) => continue,
            };
            let trimmed = if matches!(s.parser, Parser::Text) {
                raw
            } else {
                raw.trim()
            };
            let value = s
                .parser
                .parse(trimmed)
                .map_err(|reason| ConfigError::Invalid {
                    name: s.name,
                    value: match s.parser {
                        Parser::Secret { .. } => "<hidden>".into(),
                        _ => raw.to_string(),
                    },
                    reason: if set {
                        reason
                    } else {
                        format!("the default: {reason}")
                    },
                })?;
            values.insert(s.name, value);
        }
        Ok(Values(values))
    }

    fn get(&self, name: &'static str) -> Option<&Value> {
        setting(name);
        self.0.get(name)
    }

    /// Whether the variable is set (or has a default).
    pub fn is_set(&self, name: &'static str) -> bool {
        self.get(name).is_some()
    }

    /// A number setting, as the type its field holds (too large for it: an error).
    pub fn number<T: TryFrom<u64>>(&self, name: &'static str) -> Result<Option<T>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => T::try_from(*n).map(Some).map_err(|_| ConfigError::Invalid {
                name,
                value: n.to_string(),
                reason: "too large".into(),
            }),
            Some(other) => panic!("{name} is not a number: {other:?}"),
        }
    }

    /// A number setting with a default.
    pub fn count<T: TryFrom<u64>>(&self, name: &'static str) -> Result<T, ConfigError> {
        Ok(self
            .number(name)?
            .expect("a setting with a default has a value"))
    }

    pub fn flag(&self, name: &'static str) -> Option<bool> {
        match self.get(name)? {
            Value::Bool(b) => Some(*b),
            other => panic!("{name} is not a boolean: {other:?}"),
        }
    }

    pub fn text(&self, name: &'static str) -> Option<String> {
        match self.get(name)? {
            Value::Text(t) => Some(t.clone()),
            other => panic!("{name} is not text: {other:?}"),
        }
    }

    /// A storage path with a default.
    pub fn storage(&self, name: &'static str) -> StoragePath {
        match self.get(name) {
            Some(Value::Storage(p)) => p.clone(),
            other => panic!("{name} is not a storage path with a default: {other:?}"),
        }
    }

    /// A list of types with a default.
    pub fn types(&self, name: &'static str) -> Vec<String> {
        match self.get(name) {
            Some(Value::Types(t)) => t.clone(),
            other => panic!("{name} is not a list of types with a default: {other:?}"),
        }
    }

    pub fn addr(&self, name: &'static str) -> Option<SocketAddr> {
        match self.get(name)? {
            Value::Addr(a) => Some(*a),
            other => panic!("{name} is not an address: {other:?}"),
        }
    }
}

impl Setting {
    /// The default as the README shows it.
    pub fn shown_default(&self) -> String {
        match &self.default {
            Default::Value(v, None) => format!("`{v}`"),
            Default::Value(v, Some(note)) => format!("`{v}` {note}"),
            Default::None => "(none)".into(),
            Default::Required => "(required)".into(),
            Default::Computed(text) => text.to_string(),
        }
    }

    /// The meaning with the accepted range, where there is one.
    pub fn shown_help(&self) -> String {
        match self.parser {
            Parser::Number { min, max } if min > 0 || max.is_some() => {
                format!("{}; {}", self.help, range_text(min, max))
            }
            Parser::Secret { min_bytes } => format!("at least {min_bytes} bytes; {}", self.help),
            _ => self.help.to_string(),
        }
    }

    /// `` `NAME` [Firely] ``: the README's first column.
    pub fn shown_name(&self) -> String {
        match self.firely {
            Some(f) => format!("`{}` [{f}]", self.name),
            None => format!("`{}`", self.name),
        }
    }
}

/// The README's table of environment variables (its header and one row per setting).
pub fn markdown() -> String {
    let mut out = String::from("| Variable | Default | Meaning |\n|---|---|---|\n");
    for s in SETTINGS {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            s.shown_name(),
            s.shown_default(),
            s.shown_help()
        ));
    }
    out
}

/// Every setting as plain text, for `bulk-export env`: its name and default, then its meaning
/// wrapped at `width` columns.
pub fn plain_text(width: usize) -> String {
    let mut out = String::new();
    for s in SETTINGS {
        let default = s.shown_default().replace('`', "");
        if default.starts_with('(') {
            out.push_str(&format!("{}  {default}\n", s.name));
        } else {
            out.push_str(&format!("{}  (default: {default})\n", s.name));
        }
        let mut line = String::from("   ");
        for word in s.shown_help().replace('`', "").split_whitespace() {
            if line.len() + 1 + word.len() > width && line.len() > 3 {
                out.push_str(&line);
                out.push('\n');
                line = String::from("   ");
            }
            line.push(' ');
            line.push_str(word);
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}
