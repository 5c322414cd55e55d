//! `camgate tx enroll|update|search|treat|review|show`: the local API from the command line, as a
//! client of the running daemon (so the CLI and the site's systems go through the same checks
//! and the same queue). Prints the API's JSON answer; exit 0 on 2xx, 1 on an error answer or no
//! answer, 2 on a usage error (bad arguments, unreadable picture, token or configuration).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hyper::Method;

use crate::api::config::{DEFAULT_LISTEN, DEFAULT_TOKEN_FILE};
use crate::config::Config;
use crate::net::credentials;
use crate::net::https::HttpsClient;

const DEFAULT_CONFIG: &str = "/etc/camgate/camgate.toml";
/// Answers are JSON of one transaction or person list; anything larger is not the API.
const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// Enough for 24 MiB over a slow loopback-proxied link; the API's own body timeout is 60 s.
const TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum TxCliError {
    /// Exit 2.
    #[error("{0}")]
    Usage(String),
    /// Exit 1: no answer from the API.
    #[error("{0}")]
    Failed(String),
}

#[derive(clap::Args, Debug)]
pub struct TxArgs {
    /// The daemon's API, `http://HOST:PORT`. Default: from the configuration's `[api] listen`,
    /// else http://127.0.0.1:8470.
    #[arg(long, global = true, value_name = "URL")]
    pub api: Option<String>,
    /// File holding the bearer token. Default: the configuration's `[api] token_file`.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The daemon's configuration (for `[api]`). Default /etc/camgate/camgate.toml when present.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: TxCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum TxCommand {
    /// Enroll the person KEY from one or more pictures.
    Enroll {
        #[arg(long)]
        key: String,
        /// Attribute `name=value` (repeatable).
        #[arg(long = "attr", value_name = "K=V")]
        attrs: Vec<String>,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Update the person KEY from new pictures.
    Update {
        key: String,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Search the gallery: 1:N, or 1:1 against --key.
    Search {
        #[arg(long)]
        key: Option<String>,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Treat the exception of transaction TGUID (e.g. RECOLLECT, SAME_FINGERS).
    Treat { tguid: String, treatment: String },
    /// Approve (--approve) or reject (--reject) the pending transaction TGUID.
    Review {
        tguid: String,
        #[arg(long, conflicts_with = "reject", required_unless_present = "reject")]
        approve: bool,
        #[arg(long)]
        reject: bool,
    },
    /// The state of transaction TGUID.
    Show { tguid: String },
}

/// Runs the command; the process exit code.
pub fn run(args: TxArgs) -> u8 {
    let result = prepare(&args).and_then(|(client, token, req)| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TxCliError::Failed(format!("tokio runtime: {e}")))?;
        rt.block_on(send(&client, &token, req))
    });
    match result {
        Ok((status, body)) => {
            println!("{}", String::from_utf8_lossy(&body));
            if (200..300).contains(&status) {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("camgate tx: {e}");
            match e {
                TxCliError::Usage(_) => 2,
                TxCliError::Failed(_) => 1,
            }
        }
    }
}

/// One API request: method, path and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct TxRequest {
    pub method: Method,
    pub path: String,
    pub body: Option<serde_json::Value>,
}

fn prepare(args: &TxArgs) -> Result<(HttpsClient, String, TxRequest), TxCliError> {
    // The configuration is read only for what the flags leave open.
    let api = if args.api.is_some() && args.token_file.is_some() {
        None
    } else {
        api_config(args.config.as_deref())?
    };
    let base = match &args.api {
        Some(u) => u.clone(),
        None => format!(
            "http://{}",
            connect_addr(api.as_ref().map(|a| a.listen.as_str()))
        ),
    };
    let authority = authority_of(&base)?;
    let token_file = args
        .token_file
        .clone()
        .unwrap_or_else(|| api.map_or_else(|| PathBuf::from(DEFAULT_TOKEN_FILE), |a| a.token_file));
    let token =
        credentials::read_secret_file(&token_file, "token file").map_err(TxCliError::Usage)?;
    let req = request_of(&args.cmd)?;
    Ok((HttpsClient::new(&authority, None, TIMEOUT), token, req))
}

/// `[api]` of the configuration named, or of the default one when it exists.
fn api_config(path: Option<&Path>) -> Result<Option<crate::api::ApiConfig>, TxCliError> {
    let path = match path {
        Some(p) => p,
        None if Path::new(DEFAULT_CONFIG).exists() => Path::new(DEFAULT_CONFIG),
        None => return Ok(None),
    };
    let cfg = Config::load(path).map_err(|e| TxCliError::Usage(e.to_string()))?;
    Ok(cfg.api)
}

/// Where to connect for a `listen` address: a wildcard address means this host.
fn connect_addr(listen: Option<&str>) -> String {
    let listen = listen.unwrap_or(DEFAULT_LISTEN);
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let local = if a.is_ipv4() { "127.0.0.1" } else { "[::1]" };
            format!("{local}:{}", a.port())
        }
        _ => listen.to_owned(),
    }
}

/// `host:port` of an `http://` URL (no path: the API's paths are absolute).
fn authority_of(url: &str) -> Result<String, TxCliError> {
    let bad = || TxCliError::Usage(format!("--api {url:?}: expected http://HOST:PORT"));
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') || host.contains('@') {
        return Err(bad());
    }
    Ok(
        if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_owned()
        } else {
            format!("{host}:80")
        },
    )
}

/// The request of a command (pictures read and base64-encoded here).
pub fn request_of(cmd: &TxCommand) -> Result<TxRequest, TxCliError> {
    let post = |path: String, body| TxRequest {
        method: Method::POST,
        path,
        body: Some(body),
    };
    Ok(match cmd {
        TxCommand::Enroll { key, attrs, images } => {
            let attributes = parse_attrs(attrs)?;
            let body = serde_json::json!({"key": key, "images": read_images(images)?, "attributes": attributes});
            post("/v1/people".into(), body)
        }
        TxCommand::Update { key, images } => TxRequest {
            method: Method::PUT,
            path: format!("/v1/people/{}", encode_segment(key)),
            body: Some(serde_json::json!({"images": read_images(images)?})),
        },
        TxCommand::Search { key, images } => {
            let mut body = serde_json::json!({"images": read_images(images)?});
            if let Some(k) = key {
                body["key"] = k.as_str().into();
            }
            post("/v1/searches".into(), body)
        }
        TxCommand::Treat { tguid, treatment } => post(
            format!("/v1/exceptions/{}/treatment", encode_segment(tguid)),
            serde_json::json!({ "treatment": treatment }),
        ),
        TxCommand::Review { tguid, approve, .. } => post(
            format!("/v1/reviews/{}", encode_segment(tguid)),
            serde_json::json!({ "approve": approve }),
        ),
        TxCommand::Show { tguid } => TxRequest {
            method: Method::GET,
            path: format!("/v1/transactions/{}", encode_segment(tguid)),
            body: None,
        },
    })
}

fn parse_attrs(attrs: &[String]) -> Result<BTreeMap<String, String>, TxCliError> {
    attrs
        .iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(TxCliError::Usage(format!(
                "--attr {a:?}: expected NAME=VALUE"
            ))),
        })
        .collect()
}

fn read_images(paths: &[PathBuf]) -> Result<Vec<String>, TxCliError> {
    paths
        .iter()
        .map(|p| {
            std::fs::read(p)
                .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
                .map_err(|e| TxCliError::Usage(format!("cannot read {}: {e}", p.display())))
        })
        .collect()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn send(
    client: &HttpsClient,
    token: &str,
    req: TxRequest,
) -> Result<(u16, Bytes), TxCliError> {
    let auth = format!("Bearer {token}");
    let body = req
        .body
        .map(|v| ("application/json", Bytes::from(v.to_string())));
    let answer = client
        .request_with(
            req.method,
            &req.path,
            &[("authorization", &auth)],
            body,
            MAX_ANSWER,
        )
        .await
        .map_err(|e| TxCliError::Failed(format!("{}: {e}", client.authority())))?;
    Ok((answer.status, answer.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_segments_and_listen_addresses() {
        assert_eq!(
            authority_of("http://127.0.0.1:8470/").unwrap(),
            "127.0.0.1:8470"
        );
        assert_eq!(authority_of("http://gw.local").unwrap(), "gw.local:80");
        assert!(authority_of("https://127.0.0.1:8470").is_err());
        assert!(authority_of("http://a:1/v1").is_err());
        assert_eq!(encode_segment("Jürgen M/1"), "J%C3%BCrgen%20M%2F1");
        assert_eq!(connect_addr(Some("0.0.0.0:9000")), "127.0.0.1:9000");
        assert_eq!(connect_addr(Some("[::]:9000")), "[::1]:9000");
        assert_eq!(connect_addr(None), "127.0.0.1:8470");
    }

    #[test]
    fn requests_of_commands() {
        let r = request_of(&TxCommand::Review {
            tguid: "t 1".into(),
            approve: false,
            reject: true,
        })
        .unwrap();
        assert_eq!(r.path, "/v1/reviews/t%201");
        assert_eq!(r.body, Some(serde_json::json!({"approve": false})));
        let e = request_of(&TxCommand::Search {
            key: None,
            images: vec!["/nonexistent.jpg".into()],
        });
        assert!(matches!(e, Err(TxCliError::Usage(_))));
        assert!(parse_attrs(&["=x".into()]).is_err());
    }
}
