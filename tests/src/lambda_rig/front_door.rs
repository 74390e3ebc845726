//! A local stand-in for API Gateway: real HTTP in, the event API Gateway would send to the
//! function the route names, the function's answer back out as HTTP.
//!
//! `HttpApi`: each route of infra/functions.json goes to its own function with a payload 2.0
//! event (stage `$default`, no base path); an unknown route is `404 {"message":"Not Found"}`.
//! `RestApi`: everything under the stage (`/fhir/…`) goes to the `api` function as a REST proxy
//! event (payload 1.0, `resource` `/{proxy+}` or `/auth/token`); outside the stage API Gateway
//! answers 403 `Missing Authentication Token`. Bodies that are not text are base64-encoded, as
//! API Gateway does, and answers the function base64-encodes are decoded. Lambda's limits apply:
//! an event over 6 MB is refused (413) and so is a function answer over 6 MB (502, as API
//! Gateway answers a failed integration), as is a function error or timeout.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use base64::Engine;
use serde_json::{json, Map, Value};

use super::emulator::Emulator;

/// Lambda's payload limit for a synchronous invoke, request and response alike.
pub const LAMBDA_PAYLOAD_LIMIT: usize = 6 * 1024 * 1024;
/// API Gateway's own limit on a request body.
const API_BODY_LIMIT: usize = 10 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiType {
    HttpApi,
    RestApi,
}

impl ApiType {
    pub fn name(self) -> &'static str {
        match self {
            ApiType::HttpApi => "HttpApi",
            ApiType::RestApi => "RestApi",
        }
    }

    /// The path the FHIR base has behind this front door (the REST API's stage).
    pub fn base_path(self) -> &'static str {
        match self {
            ApiType::HttpApi => "",
            ApiType::RestApi => "/fhir",
        }
    }
}

/// A route of infra/functions.json (`GET /Group/{id}/$export`) and the function behind it.
struct Route {
    method: String,
    segments: Vec<String>,
    key: String,
    function: Arc<Emulator>,
}

impl Route {
    /// The path parameters when `method path` is this route.
    fn matches(&self, method: &str, path: &str) -> Option<BTreeMap<String, String>> {
        if self.method != "ANY" && self.method != method {
            return None;
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut params = BTreeMap::new();
        for (i, seg) in self.segments.iter().enumerate() {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix("+}")) {
                params.insert(name.to_string(), parts.get(i..)?.join("/"));
                return Some(params);
            }
            let part = parts.get(i)?;
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                params.insert(name.to_string(), part.to_string());
            } else if seg != part {
                return None;
            }
        }
        (parts.len() == self.segments.len()).then_some(params)
    }
}

struct Door {
    api_type: ApiType,
    routes: Vec<Route>,
    host: String,
}

pub struct FrontDoor {
    pub base_url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FrontDoor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FrontDoor {
    /// Serves on `listener`; `routes` are (`METHOD /path`, function) pairs.
    pub fn start(
        listener: tokio::net::TcpListener,
        api_type: ApiType,
        routes: Vec<(String, Arc<Emulator>)>,
    ) -> FrontDoor {
        let addr = listener.local_addr().expect("addr");
        let door = Arc::new(Door {
            api_type,
            host: addr.to_string(),
            routes: routes
                .into_iter()
                .map(|(key, function)| {
                    let (method, path) = key.split_once(' ').expect("METHOD /path");
                    Route {
                        method: method.to_string(),
                        segments: path
                            .trim_start_matches('/')
                            .split('/')
                            .map(str::to_string)
                            .collect(),
                        key,
                        function,
                    }
                })
                .collect(),
        });
        let app = axum::Router::new()
            .fallback(move |req: axum::extract::Request| {
                let door = door.clone();
                async move { door.answer(req).await }
            })
            .into_make_service();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("front door");
        });
        FrontDoor {
            base_url: format!("http://{addr}{}", api_type.base_path()),
            task,
        }
    }
}

fn gateway_error(status: u16, message: &str) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(json!({ "message": message }).to_string()))
        .expect("response")
}

/// Whether API Gateway passes a body of this type as text (else base64).
fn is_text(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return true };
    let ct = ct.to_ascii_lowercase();
    ct.starts_with("text/")
        || ct.contains("json")
        || ct.contains("xml")
        || ct.starts_with("application/x-www-form-urlencoded")
}

impl Door {
    async fn answer(&self, req: axum::extract::Request) -> Response {
        let (parts, body) = req.into_parts();
        let Ok(body) = axum::body::to_bytes(body, API_BODY_LIMIT).await else {
            return gateway_error(413, "Request Entity Too Large");
        };
        let method = parts.method.as_str().to_string();
        let full_path = parts.uri.path().to_string();
        let path = match self.api_type {
            ApiType::HttpApi => Some(full_path.as_str()),
            ApiType::RestApi => full_path.strip_prefix(self.api_type.base_path()),
        };
        let found = path.and_then(|p| {
            self.routes
                .iter()
                .find_map(|r| r.matches(&method, p).map(|params| (r, params)))
        });
        let Some((route, params)) = found else {
            return match self.api_type {
                ApiType::HttpApi => gateway_error(404, "Not Found"),
                ApiType::RestApi => gateway_error(403, "Missing Authentication Token"),
            };
        };
        let path = path.expect("matched");
        let content_type = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok());
        let (body, base64) = if body.is_empty() {
            (Value::Null, false)
        } else if is_text(content_type) && std::str::from_utf8(&body).is_ok() {
            (
                Value::String(String::from_utf8(body.to_vec()).expect("utf8")),
                false,
            )
        } else {
            (
                Value::String(base64::engine::general_purpose::STANDARD.encode(&body)),
                true,
            )
        };
        let request = Incoming {
            method: &method,
            path,
            full_path: &full_path,
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
            route_key: &route.key,
            params: &params,
            body,
            base64,
            host: &self.host,
        };
        let event = match self.api_type {
            ApiType::HttpApi => request.http_api_event(),
            ApiType::RestApi => request.rest_api_event(),
        };
        if event.to_string().len() > LAMBDA_PAYLOAD_LIMIT {
            return gateway_error(413, "Request Entity Too Large");
        }
        let invocation = route.function.invoke(&event).await;
        if invocation.is_error() {
            return gateway_error(502, "Internal Server Error");
        }
        if invocation.body.len() > LAMBDA_PAYLOAD_LIMIT {
            // Lambda refuses a response over its limit; API Gateway answers the failure.
            return gateway_error(502, "Internal Server Error");
        }
        to_http(&invocation.json())
    }
}

/// What the front door read from a request.
struct Incoming<'a> {
    method: &'a str,
    /// Under the stage.
    path: &'a str,
    full_path: &'a str,
    query: &'a str,
    headers: &'a http::HeaderMap,
    route_key: &'a str,
    params: &'a BTreeMap<String, String>,
    body: Value,
    base64: bool,
    host: &'a str,
}

impl Incoming<'_> {
    fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }

    fn request_id() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64
    }

    fn user_agent(&self) -> String {
        self.headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    /// Payload format 2.0: lower-case header names, repeated headers and query parameters
    /// joined with commas, `rawPath` / `rawQueryString` as sent.
    fn http_api_event(&self) -> Value {
        let mut headers = Map::new();
        for (name, value) in self.headers {
            let value = String::from_utf8_lossy(value.as_bytes()).to_string();
            match headers.get_mut(name.as_str()) {
                Some(Value::String(prev)) => {
                    prev.push(',');
                    prev.push_str(&value);
                }
                _ => {
                    headers.insert(name.as_str().to_string(), Value::String(value));
                }
            }
        }
        let cookies = headers.remove("cookie");
        let mut query = Map::new();
        for (k, v) in self.query_pairs() {
            match query.get_mut(&k) {
                Some(Value::String(prev)) => {
                    prev.push(',');
                    prev.push_str(&v);
                }
                _ => {
                    query.insert(k, Value::String(v));
                }
            }
        }
        let route_key = self.route_key.to_string();
        let mut event = json!({
            "version": "2.0",
            "routeKey": route_key,
            "rawPath": self.path,
            "rawQueryString": self.query,
            "headers": headers,
            "requestContext": {
                "accountId": "123456789012",
                "apiId": "local",
                "domainName": self.host,
                "domainPrefix": "local",
                "http": {
                    "method": self.method,
                    "path": self.path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": "127.0.0.1",
                    "userAgent": self.user_agent(),
                },
                "requestId": Self::request_id(),
                "routeKey": route_key,
                "stage": "$default",
                "time": chrono::Utc::now().format("%d/%b/%Y:%H:%M:%S +0000").to_string(),
                "timeEpoch": Self::now_ms(),
            },
            "isBase64Encoded": self.base64,
        });
        if let Some(Value::String(c)) = cookies {
            event["cookies"] = json!(c.split("; ").collect::<Vec<_>>());
        }
        if !query.is_empty() {
            event["queryStringParameters"] = Value::Object(query);
        }
        if !self.params.is_empty() {
            event["pathParameters"] = json!(self.params);
        }
        if !self.body.is_null() {
            event["body"] = self.body.clone();
        }
        event
    }

    /// Payload format 1.0 (REST API proxy integration): `headers` keep the last value of a
    /// repeated header and `multiValueHeaders` all of them; the same for query parameters.
    fn rest_api_event(&self) -> Value {
        let mut headers = Map::new();
        let mut multi_headers = Map::new();
        for (name, value) in self.headers {
            let value = Value::String(String::from_utf8_lossy(value.as_bytes()).to_string());
            let name = name.as_str().to_string();
            headers.insert(name.clone(), value.clone());
            multi_headers
                .entry(name)
                .or_insert_with(|| json!([]))
                .as_array_mut()
                .expect("array")
                .push(value);
        }
        let mut query = Map::new();
        let mut multi_query = Map::new();
        for (k, v) in self.query_pairs() {
            query.insert(k.clone(), json!(v));
            multi_query
                .entry(k)
                .or_insert_with(|| json!([]))
                .as_array_mut()
                .expect("array")
                .push(json!(v));
        }
        let resource = self
            .route_key
            .split_once(' ')
            .map(|(_, r)| r)
            .unwrap_or("/{proxy+}");
        let opt = |m: Map<String, Value>| {
            if m.is_empty() {
                Value::Null
            } else {
                Value::Object(m)
            }
        };
        json!({
            "resource": resource,
            "path": self.path,
            "httpMethod": self.method,
            "headers": opt(headers),
            "multiValueHeaders": opt(multi_headers),
            "queryStringParameters": opt(query),
            "multiValueQueryStringParameters": opt(multi_query),
            "pathParameters": if self.params.is_empty() { Value::Null } else { json!(self.params) },
            "stageVariables": null,
            "requestContext": {
                "resourceId": "local",
                "resourcePath": resource,
                "httpMethod": self.method,
                "requestTime": chrono::Utc::now().format("%d/%b/%Y:%H:%M:%S +0000").to_string(),
                "path": self.full_path,
                "accountId": "123456789012",
                "protocol": "HTTP/1.1",
                "stage": "fhir",
                "domainPrefix": "local",
                "requestTimeEpoch": Self::now_ms(),
                "requestId": Self::request_id(),
                "identity": { "sourceIp": "127.0.0.1", "userAgent": self.user_agent() },
                "domainName": self.host,
                "apiId": "local",
            },
            "body": self.body,
            "isBase64Encoded": self.base64,
        })
    }
}

/// A function's answer (either payload format) as an HTTP response.
fn to_http(answer: &Value) -> Response {
    let Some(status) = answer.get("statusCode").and_then(Value::as_u64) else {
        return gateway_error(502, "Internal Server Error");
    };
    let mut builder = Response::builder().status(status as u16);
    let mut seen = std::collections::BTreeSet::new();
    if let Some(Value::Object(multi)) = answer.get("multiValueHeaders") {
        for (name, values) in multi {
            seen.insert(name.to_ascii_lowercase());
            for v in values.as_array().into_iter().flatten() {
                builder = builder.header(name, v.as_str().unwrap_or_default());
            }
        }
    }
    if let Some(Value::Object(headers)) = answer.get("headers") {
        for (name, v) in headers {
            if !seen.contains(&name.to_ascii_lowercase()) {
                builder = builder.header(name, v.as_str().unwrap_or_default());
            }
        }
    }
    for cookie in answer
        .get("cookies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        builder = builder.header("set-cookie", cookie.as_str().unwrap_or_default());
    }
    let body = answer.get("body").and_then(Value::as_str).unwrap_or("");
    let bytes = if answer.get("isBase64Encoded") == Some(&Value::Bool(true)) {
        match base64::engine::general_purpose::STANDARD.decode(body) {
            Ok(b) => b,
            Err(_) => return gateway_error(502, "Internal Server Error"),
        }
    } else {
        body.as_bytes().to_vec()
    };
    builder.body(Body::from(bytes)).expect("response")
}
