//! Vault set-up through its HTTP API as an operator would do it (root token): auth methods, roles, policies. Used
//! against the Vault-API test server and against OpenBao (`OpenBao::admin`); every call checks its status.

use serde_json::{json, Value};

/// An operator's HTTP client for one Vault address.
pub struct Admin {
    http: reqwest::Client,
    addr: String,
    token: String,
}

impl Admin {
    pub fn new(addr: &str, token: &str) -> Admin {
        Admin::with_client(reqwest::Client::new(), addr, token)
    }

    /// For TLS servers: a client that trusts `ca_pem`.
    pub fn with_ca(addr: &str, token: &str, ca_pem: &str) -> Admin {
        let certs = reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes()).unwrap();
        let http = reqwest::ClientBuilder::new()
            .tls_backend_rustls()
            .tls_certs_only(certs)
            .build()
            .unwrap();
        Admin::with_client(http, addr, token)
    }

    fn with_client(http: reqwest::Client, addr: &str, token: &str) -> Admin {
        Admin {
            http,
            addr: addr.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    /// `method path` with `body`; the reply's JSON (Null for 204). Panics on any other status than 2xx.
    pub async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        self.call_with(method, path, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> Value {
        let mut request = self
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}/v1/{path}", self.addr),
            )
            .header("X-Vault-Token", &self.token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if !body.is_null() {
            request = request.body(serde_json::to_vec(&body).unwrap());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        assert!(
            status.is_success(),
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&bytes)
        );
        if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        }
    }

    /// Enables AppRole at `auth/approle` and creates `role` with `policies`; `token_type` is `service` or `batch`
    /// (batch tokens cannot be renewed). Returns the role ID.
    pub async fn approle(
        &self,
        role: &str,
        policies: &[&str],
        ttl: &str,
        token_type: &str,
    ) -> String {
        let enabled = self.call("GET", "sys/auth", Value::Null).await;
        let has_approle = enabled.get("approle/").is_some()
            || enabled
                .get("data")
                .and_then(|d| d.get("approle/"))
                .is_some();
        if !has_approle {
            self.call("POST", "sys/auth/approle", json!({"type": "approle"}))
                .await;
        }
        self.call(
            "POST",
            &format!("auth/approle/role/{role}"),
            json!({"token_policies": policies, "token_ttl": ttl, "token_type": token_type}),
        )
        .await;
        let reply = self
            .call(
                "GET",
                &format!("auth/approle/role/{role}/role-id"),
                Value::Null,
            )
            .await;
        reply["data"]["role_id"].as_str().unwrap().to_owned()
    }

    /// A new secret ID for `role`.
    pub async fn secret_id(&self, role: &str) -> String {
        let reply = self
            .call(
                "POST",
                &format!("auth/approle/role/{role}/secret-id"),
                json!({}),
            )
            .await;
        reply["data"]["secret_id"].as_str().unwrap().to_owned()
    }

    /// A new secret ID for `role`, response-wrapped: the wrapping token.
    pub async fn wrapped_secret_id(&self, role: &str) -> String {
        let reply = self
            .call_with(
                "POST",
                &format!("auth/approle/role/{role}/secret-id"),
                json!({}),
                &[("X-Vault-Wrap-TTL", "5m")],
            )
            .await;
        reply["wrap_info"]["token"].as_str().unwrap().to_owned()
    }

    /// Revokes `token`.
    pub async fn revoke(&self, token: &str) {
        self.call("POST", "auth/token/revoke", json!({ "token": token }))
            .await;
    }
}
