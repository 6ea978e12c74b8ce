//! How requests reach Vault: one HTTP client built from the TLS settings, and the ordered list of Vault nodes.
//!
//! A request goes to the node that answered last. When a node cannot be reached (connection refused, reset or timed
//! out) or answers 503 (sealed, or a standby that cannot serve), the next node is tried, once each. Standby nodes
//! answer with a 307 redirect to the active node; it is followed only to one of the configured addresses, so the
//! token is never sent to a host the operator did not name.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use rustify::clients::reqwest::Client as HttpClient;
use rustify::endpoint::Endpoint;
use rustify::enums::RequestMethod;
use url::Url;
use vaultrs::api::EndpointMiddleware;
use vaultrs::client::VaultClientSettings;
use vaultrs::error::ClientError;
use zeroize::Zeroize;

use super::VaultSetupError;
use crate::config::VaultConfig;
use crate::metrics;
use crate::sys::root_only::{read_root_only, Keep};

/// The most redirects one request follows (a standby points at the active node: one is normal).
const MAX_REDIRECTS: usize = 3;

/// One Vault node: its address as configured and a client bound to it.
struct Node {
    address: String,
    http: HttpClient,
    settings: VaultClientSettings,
}

impl Node {
    fn new(target: Target, client: reqwest::Client, config: &VaultConfig) -> Node {
        let base = target.url.as_str().trim_end_matches('/').to_owned();
        Node {
            http: HttpClient::new(&base, client),
            settings: VaultClientSettings {
                address: target.url,
                ca_certs: Vec::new(),
                identity: None,
                timeout: Some(config.timeout),
                token: String::new(),
                verify: !config.tls_skip_verify,
                version: 1,
                wrapping: false,
                namespace: None,
                proxy: None,
            },
            address: target.configured,
        }
    }
}

/// The Vault nodes and the HTTP client that reaches them.
pub struct Transport {
    nodes: Vec<Node>,
    /// The node that answered last; requests start there.
    current: AtomicUsize,
    timeout: Duration,
}

/// A vaultrs client for one request: a node, a token and a namespace. The token copy is wiped on drop.
struct Call<'a> {
    http: &'a HttpClient,
    settings: &'a VaultClientSettings,
    middle: EndpointMiddleware,
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        self.middle.token.zeroize();
    }
}

#[async_trait::async_trait]
impl vaultrs::client::Client for Call<'_> {
    fn http(&self) -> &HttpClient {
        self.http
    }

    fn middle(&self) -> &EndpointMiddleware {
        &self.middle
    }

    fn settings(&self) -> &VaultClientSettings {
        self.settings
    }

    fn set_token(&mut self, token: &str) {
        self.middle.token.zeroize();
        self.middle.token = token.to_owned();
    }
}

/// Whether an error means "this node cannot serve now, another might".
fn is_node_failure(error: &ClientError) -> bool {
    match error {
        ClientError::RestClientError {
            source: rustify::errors::ClientError::RequestError { .. },
        } => true,
        other => super::status_of(other) == Some(503),
    }
}

/// The method label of a request's metrics.
fn metric_method<E: Endpoint>(endpoint: &E) -> metrics::Method {
    match endpoint.method() {
        RequestMethod::GET => metrics::Method::Get,
        RequestMethod::LIST => metrics::Method::List,
        RequestMethod::POST => metrics::Method::Post,
        RequestMethod::PUT => metrics::Method::Put,
        RequestMethod::DELETE => metrics::Method::Delete,
        _ => metrics::Method::Other,
    }
}

/// How Vault answered, for the metrics: the statuses [`super::source_error`] tells apart, a node that cannot serve
/// (unreachable, sealed, 5xx, rate-limited) as unavailable, and anything else (a 400, a reply that is not JSON) as an
/// error.
fn request_result<T>(result: &Result<T, ClientError>) -> metrics::VaultResult {
    let Err(error) = result else {
        return metrics::VaultResult::Ok;
    };
    match super::status_of(error) {
        Some(404) => metrics::VaultResult::NotFound,
        Some(403) => metrics::VaultResult::Denied,
        Some(code) if code >= 500 || code == 429 => metrics::VaultResult::Unavailable,
        Some(_) => metrics::VaultResult::Error,
        None if is_node_failure(error) => metrics::VaultResult::Unavailable,
        None => metrics::VaultResult::Error,
    }
}

/// Counts one request (all the nodes it tried) in the metrics.
fn count_request<T>(
    method: &OnceLock<metrics::Method>,
    result: &Result<T, ClientError>,
    started: std::time::Instant,
) {
    let method = method.get().copied().unwrap_or(metrics::Method::Other);
    metrics::vault_request(method, request_result(result), started.elapsed());
}

fn read_file(path: &std::path::Path, key: &str) -> Result<Vec<u8>, VaultSetupError> {
    std::fs::read(path).map_err(|e| VaultSetupError::Tls {
        reason: format!("{key} {}: {e}", path.display()),
    })
}

/// Every PEM certificate in `file`, for `vault.ca_cert` or one file of `vault.ca_path`.
fn certificates(
    path: &std::path::Path,
    key: &str,
) -> Result<Vec<reqwest::Certificate>, VaultSetupError> {
    let pem = read_file(path, key)?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| VaultSetupError::Tls {
        reason: format!(
            "{key} {}: not a PEM certificate bundle: {e}",
            path.display()
        ),
    })?;
    if certs.is_empty() {
        return Err(VaultSetupError::Tls {
            reason: format!("{key} {}: no PEM certificate in it", path.display()),
        });
    }
    Ok(certs)
}

/// The CA certificates to trust instead of the system's: `ca_cert` plus every `*.pem`/`*.crt` file in `ca_path`.
fn trusted_cas(config: &VaultConfig) -> Result<Vec<reqwest::Certificate>, VaultSetupError> {
    let mut cas = Vec::new();
    if let Some(file) = &config.ca_cert {
        cas.extend(certificates(file, "vault.ca_cert")?);
    }
    if let Some(dir) = &config.ca_path {
        let entries = std::fs::read_dir(dir).map_err(|e| VaultSetupError::Tls {
            reason: format!("vault.ca_path {}: {e}", dir.display()),
        })?;
        let mut files: Vec<_> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension()
                    .is_some_and(|ext| ext == "pem" || ext == "crt")
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(VaultSetupError::Tls {
                reason: format!("vault.ca_path {}: no *.pem or *.crt file", dir.display()),
            });
        }
        for file in files {
            cas.extend(certificates(&file, "vault.ca_path")?);
        }
    }
    Ok(cas)
}

/// The client certificate and key (for TLS client auth and the cert auth method).
fn identity(config: &VaultConfig) -> Result<Option<reqwest::Identity>, VaultSetupError> {
    let (cert, key) = match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => (cert, key),
        _ => return Ok(None),
    };
    let mut pem = read_file(cert, "vault.client_cert")?;
    pem.push(b'\n');
    let key_pem = read_root_only(key, Keep::OwnerOnly).map_err(|e| VaultSetupError::Tls {
        reason: format!("vault.client_key {}: {e}", key.display()),
    })?;
    pem.extend_from_slice(&key_pem);
    drop(key_pem);
    let identity = reqwest::Identity::from_pem(&pem).map_err(|e| VaultSetupError::Tls {
        reason: format!(
            "vault.client_cert {} with vault.client_key {}: {e}",
            cert.display(),
            key.display()
        ),
    });
    pem.zeroize();
    identity.map(Some)
}

fn parse_address(address: &str) -> Result<Url, VaultSetupError> {
    let url = Url::parse(address).map_err(|e| VaultSetupError::Address {
        addr: address.to_owned(),
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(VaultSetupError::Address {
            addr: address.to_owned(),
            reason: "use http://HOST:PORT or https://HOST:PORT".to_owned(),
        });
    }
    Ok(url)
}

/// The addresses a token would cross the network to unencrypted: `http://` to anything but this host (127.0.0.0/8,
/// `::1`, `localhost`). A Vault Agent or proxy on loopback is a normal set-up; anything else exposes the token to
/// whoever is on the network path.
fn plaintext_remote_addresses(urls: &[Url]) -> Vec<&Url> {
    urls.iter()
        .filter(|url| url.scheme() == "http" && !is_loopback(url))
        .collect()
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Some(url::Host::Domain(name)) => {
            let name = name.strip_suffix('.').unwrap_or(name);
            name.eq_ignore_ascii_case("localhost")
        }
        None => false,
    }
}

/// The origin (`scheme://host:port`) of a URL, for comparing redirect targets with the configured nodes.
fn origin(url: &Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

/// Where one node's requests go.
struct Target {
    /// The address as configured, for logs and messages.
    configured: String,
    /// The URL requests use: with `tls_server_name`, the configured one with that name as its host.
    url: Url,
    /// With `tls_server_name`: the name, and the configured host's addresses it must resolve to.
    resolve: Option<(String, Vec<SocketAddr>)>,
}

impl Target {
    /// With `server_name`, the certificate is verified for that name while connecting to the configured host: the URL
    /// carries the name, and the name resolves to the configured host's addresses.
    fn new(url: Url, server_name: Option<&str>) -> Result<Target, VaultSetupError> {
        let configured = url.as_str().trim_end_matches('/').to_owned();
        let Some(name) = server_name else {
            return Ok(Target {
                configured,
                url,
                resolve: None,
            });
        };
        let addrs = url
            .socket_addrs(|| Some(8200))
            .map_err(|e| VaultSetupError::Address {
                addr: configured.clone(),
                reason: format!("resolving {}: {e}", url.host_str().unwrap_or_default()),
            })?;
        let mut named = url;
        named
            .set_host(Some(name))
            .map_err(|e| VaultSetupError::Address {
                addr: configured.clone(),
                reason: format!("vault.tls_server_name {name:?}: {e}"),
            })?;
        Ok(Target {
            configured,
            url: named,
            resolve: Some((name.to_owned(), addrs)),
        })
    }
}

/// What every node's HTTP client is built from.
struct ClientSettings {
    timeout: Duration,
    /// Trusted instead of the system's CA store; `None`: the system's.
    cas: Option<Vec<reqwest::Certificate>>,
    identity: Option<reqwest::Identity>,
    skip_verify: bool,
    /// The origins of every node, the only ones a redirect is followed to.
    allowed: Vec<String>,
}

impl ClientSettings {
    fn new(config: &VaultConfig, targets: &[Target]) -> Result<ClientSettings, VaultSetupError> {
        let cas = trusted_cas(config)?;
        let cas = if !cas.is_empty() {
            // A private CA replaces the system store: Vault behind a private CA should not also trust public ones.
            Some(cas)
        } else if targets.iter().all(|t| t.url.scheme() == "http") {
            // Plain HTTP: skip loading the system's CA store (memory in every mount unit).
            Some(Vec::new())
        } else {
            None
        };
        Ok(ClientSettings {
            timeout: config.timeout,
            cas,
            identity: identity(config)?,
            skip_verify: config.tls_skip_verify,
            allowed: targets.iter().map(|t| origin(&t.url)).collect(),
        })
    }

    /// A client; with `resolve`, one whose DNS answer for the name is the given addresses.
    fn build(
        &self,
        resolve: Option<&(String, Vec<SocketAddr>)>,
    ) -> Result<reqwest::Client, VaultSetupError> {
        let mut builder = reqwest::ClientBuilder::new()
            .tls_backend_rustls()
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(4);
        if let Some(cas) = &self.cas {
            builder = builder.tls_certs_only(cas.clone());
        }
        if let Some(identity) = &self.identity {
            builder = builder.identity(identity.clone());
        }
        if self.skip_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if let Some((name, addrs)) = resolve {
            builder = builder.resolve_to_addrs(name, addrs);
        }
        let allowed = self.allowed.clone();
        builder = builder.redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error("too many redirects between Vault nodes")
            } else if allowed.contains(&origin(attempt.url())) {
                attempt.follow()
            } else {
                // Following would send the token to a host not in vault.addr.
                attempt.stop()
            }
        }));
        builder.build().map_err(|e| VaultSetupError::Tls {
            reason: super::error_chain(&e),
        })
    }
}

impl Transport {
    /// Builds the HTTP client from the TLS settings and the node list from `vault.addr`.
    pub fn new(config: &VaultConfig) -> Result<Transport, VaultSetupError> {
        let urls = config
            .addr
            .iter()
            .map(|address| parse_address(address))
            .collect::<Result<Vec<_>, _>>()?;
        if urls.is_empty() {
            return Err(VaultSetupError::Address {
                addr: String::new(),
                reason: "no address: set vault.addr (or VAULT_ADDR, --addr)".to_owned(),
            });
        }
        let plaintext = plaintext_remote_addresses(&urls);
        if !plaintext.is_empty() {
            let addresses: Vec<&str> = plaintext.iter().map(|url| url.as_str()).collect();
            tracing::warn!(
                vault_addr = %addresses.join(", "),
                "vault.addr uses plain http:// to another host: the Vault token and login credentials cross the \
                 network unencrypted, readable by anyone on the path; use https://"
            );
        }
        if config.tls_skip_verify {
            tracing::warn!(
                "vault.tls_skip_verify is on: Vault's TLS certificate is NOT verified, so anyone on the network path \
                 can impersonate Vault and collect the token; use vault.ca_cert instead"
            );
        }
        let targets = urls
            .into_iter()
            .map(|url| Target::new(url, config.tls_server_name.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let settings = ClientSettings::new(config, &targets)?;
        // Nodes share one client (one connection pool), except with tls_server_name: all nodes' URLs then carry the
        // same name, and each node needs its own client to resolve it to its own host.
        let shared = match config.tls_server_name {
            None => Some(settings.build(None)?),
            Some(_) => None,
        };
        let nodes = targets
            .into_iter()
            .map(|target| {
                let client = match (&target.resolve, &shared) {
                    (None, Some(shared)) => shared.clone(),
                    (resolve, _) => settings.build(resolve.as_ref())?,
                };
                Ok(Node::new(target, client, config))
            })
            .collect::<Result<Vec<_>, VaultSetupError>>()?;
        Ok(Transport {
            nodes,
            current: AtomicUsize::new(0),
            timeout: config.timeout,
        })
    }

    /// The configured addresses, in order (for logs).
    pub fn addresses(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.address.as_str()).collect()
    }

    /// The node requests go to now (for logs and messages).
    pub fn current_address(&self) -> &str {
        let index = self.current.load(Ordering::Relaxed) % self.nodes.len().max(1);
        self.nodes
            .get(index)
            .map(|n| n.address.as_str())
            .unwrap_or_default()
    }

    /// The longest one request may take (`vault.timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends the request `make()` builds with `token` (empty: none) and `namespace`, moving through the nodes when
    /// one cannot serve. The error is the last node's.
    pub async fn exec<E: Endpoint>(
        &self,
        token: &str,
        namespace: Option<&str>,
        make: impl Fn() -> E,
    ) -> Result<E::Response, ClientError> {
        let (method, started) = (OnceLock::new(), std::time::Instant::now());
        let result = self
            .on_nodes(token, namespace, |call| {
                let endpoint = make();
                let _ = method.set(metric_method(&endpoint));
                async move { vaultrs::api::exec_with_no_result(&call, endpoint).await }
            })
            .await;
        count_request(&method, &result, started);
        result
    }

    /// [`Transport::exec`] for a request Vault answers with no body (204 No Content), such as a revocation.
    pub async fn exec_empty<E: Endpoint>(
        &self,
        token: &str,
        namespace: Option<&str>,
        make: impl Fn() -> E,
    ) -> Result<(), ClientError> {
        let (method, started) = (OnceLock::new(), std::time::Instant::now());
        let result = self
            .on_nodes(token, namespace, |call| {
                let endpoint = make();
                let _ = method.set(metric_method(&endpoint));
                async move { vaultrs::api::exec_with_empty(&call, endpoint).await }
            })
            .await;
        count_request(&method, &result, started);
        result
    }

    /// Runs `send` with a client for each node in turn, from the one that answered last, until one can serve.
    async fn on_nodes<'s, T, Reply>(
        &'s self,
        token: &str,
        namespace: Option<&str>,
        send: impl Fn(Call<'s>) -> Reply,
    ) -> Result<T, ClientError>
    where
        Reply: std::future::Future<Output = Result<T, ClientError>>,
    {
        let count = self.nodes.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last_error = None;
        for step in 0..count {
            let index = (start + step) % count;
            let Some(node) = self.nodes.get(index) else {
                continue;
            };
            let call = Call {
                http: &node.http,
                settings: &node.settings,
                middle: EndpointMiddleware {
                    token: token.to_owned(),
                    version: "v1".to_owned(),
                    wrap: None,
                    namespace: namespace.map(str::to_owned),
                },
            };
            match send(call).await {
                Err(error) if count > 1 && is_node_failure(&error) => {
                    tracing::warn!(
                        vault_addr = %node.address,
                        reason = %super::describe_client_error(&error),
                        "Vault node cannot serve; trying the next address"
                    );
                    last_error = Some(error);
                }
                result => {
                    if step > 0 {
                        tracing::info!(vault_addr = %node.address, "now using this Vault node");
                        self.current.store(index, Ordering::Relaxed);
                    }
                    return result;
                }
            }
        }
        Err(last_error.unwrap_or(ClientError::ResponseEmptyError))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_answers_are_counted_by_what_they_mean() {
        let api = |code| {
            Err::<(), _>(ClientError::APIError {
                code,
                errors: Vec::new(),
            })
        };
        assert_eq!(request_result(&Ok(())), metrics::VaultResult::Ok);
        assert_eq!(request_result(&api(404)), metrics::VaultResult::NotFound);
        assert_eq!(request_result(&api(403)), metrics::VaultResult::Denied);
        assert_eq!(request_result(&api(503)), metrics::VaultResult::Unavailable);
        assert_eq!(request_result(&api(429)), metrics::VaultResult::Unavailable);
        assert_eq!(request_result(&api(400)), metrics::VaultResult::Error);
        assert_eq!(
            request_result(&Err::<(), _>(ClientError::ResponseEmptyError)),
            metrics::VaultResult::Error
        );
    }

    fn plaintext_remote(addresses: &[&str]) -> Vec<String> {
        let urls: Vec<Url> = addresses
            .iter()
            .map(|a| parse_address(a).unwrap())
            .collect();
        plaintext_remote_addresses(&urls)
            .into_iter()
            .map(|url| url.to_string())
            .collect()
    }

    #[test]
    fn plain_http_to_another_host_is_flagged_and_loopback_is_not() {
        for local in [
            "http://127.0.0.1:8200",
            "http://127.8.9.10:8200",
            "http://[::1]:8200",
            "http://[::ffff:127.0.0.1]:8200",
            "http://localhost:8200",
            "http://LocalHost.:8200",
            "https://vault.example.com:8200",
            "https://10.0.0.5:8200",
        ] {
            assert_eq!(plaintext_remote(&[local]), Vec::<String>::new(), "{local}");
        }
        for remote in [
            "http://vault.example.com:8200",
            "http://10.0.0.5:8200",
            "http://128.0.0.1:8200",
            "http://[fe80::1]:8200",
            "http://localhost.example.com:8200",
            "http://0.0.0.0:8200",
        ] {
            assert_eq!(plaintext_remote(&[remote]).len(), 1, "{remote}");
        }
    }

    #[test]
    fn every_node_of_an_ha_list_is_judged() {
        assert_eq!(
            plaintext_remote(&[
                "https://vault-1.example.com:8200",
                "http://127.0.0.1:8200",
                "http://vault-3.example.com:8200",
            ]),
            vec!["http://vault-3.example.com:8200/".to_owned()]
        );
    }
}
