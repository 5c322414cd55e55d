//! The local transactions API (issue 15): HTTP/1.1 + JSON on the gateway for the site's systems,
//! over the processor's narrow [`crate::gbds::service::Transactions`] interface. Enroll, update
//! and search with pictures (JSON base64 or `multipart/form-data`), treat exceptions, review
//! pending transactions, read transactions and people. Every request carries a bearer token.
//! The routes are described by `openapi.yaml` beside this file ([`OPENAPI_YAML`]).
//!
//! - [`config`]: the `[api]` section.
//! - [`routes`]: the route table and router.
//! - [`body`]: request bodies → submissions (pure).
//! - [`server`]: the hyper server: auth, bounds, timeouts, answers.

pub mod body;
pub mod config;
pub mod routes;
pub mod server;

use serde::Serialize;

pub use config::ApiConfig;
pub use routes::ROUTES;
pub use server::{bind, serve, ApiServer};

use crate::gbds::service::ServiceError;

/// The OpenAPI 3 document of the routes in [`ROUTES`].
pub const OPENAPI_YAML: &str = include_str!("openapi.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("api.listen: {0:?} is not an IP address and port")]
    Listen(String),
    #[error("cannot listen for the API on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("api.token_file: {0}")]
    Token(String),
}

/// A request the API refuses: its status and the `{"error": {"code", "message"}}` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400, with the code the service uses for the same thing.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "too_large", message)
    }

    /// The JSON answer body.
    pub fn body(&self) -> String {
        #[derive(Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: &'a str,
        }
        #[derive(Serialize)]
        struct Outer<'a> {
            error: Inner<'a>,
        }
        let o = Outer {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        };
        serde_json::to_string(&o)
            .unwrap_or_else(|_| r#"{"error":{"code":"internal","message":""}}"#.into())
    }
}

impl From<ServiceError> for Refusal {
    fn from(e: ServiceError) -> Self {
        Refusal::new(e.http_status(), e.code(), e.to_string())
    }
}
