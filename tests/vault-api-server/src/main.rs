//! `vault-api-server --listen 127.0.0.1:8200 --root-token TOKEN
//!  [--mount secret/=kv2] [--mount kv/=kv1] [--seed FILE.json] [--no-ui-mounts]
//!  [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]
//!  [--cert-auth MOUNT=ROLE:CA_FILE:POLICY[,POLICY]]`

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use vault_api_server::{KvVersion, ServerConfig, TestVault, TlsSettings};

const USAGE: &str =
    "usage: vault-api-server --listen IP:PORT [--root-token TOKEN] [--mount PATH/=kv1|kv2]... \
[--seed FILE.json] [--no-ui-mounts] [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]] \
[--cert-auth MOUNT=ROLE:CA_FILE:POLICY[,POLICY]]...
  --listen        address to bind (port 0 = any free port); default 127.0.0.1:8200
  --root-token    the preset root token; default \"root\"
  --mount         a KV mount, repeatable; default secret/=kv2 and kv/=kv1
  --seed          JSON object {\"secret/app-1/db-password\": {\"value\": \"s3cr3t\"}, ...}
  --no-ui-mounts  sys/internal/ui/mounts answers 404 like an old server
  --tls-cert      serve HTTPS with this certificate chain (PEM); needs --tls-key
  --tls-key       the certificate's private key (PEM)
  --tls-client-ca verify client certificates against this CA (still optional)
  --cert-auth     enable cert auth at auth/MOUNT/ with role ROLE trusting CA_FILE, repeatable
Prints VAULT_ADDR=http(s)://IP:PORT once listening; runs until SIGTERM/SIGINT.";

struct CertRole {
    mount: String,
    role: String,
    ca_file: String,
    policies: Vec<String>,
}

struct Args {
    listen: SocketAddr,
    config: ServerConfig,
    seed: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    tls_client_ca: Option<String>,
    cert_roles: Vec<CertRole>,
}

/// `MOUNT=ROLE:CA_FILE:POLICY[,POLICY]` (the CA file may contain `:`).
fn parse_cert_auth(v: &str) -> Result<CertRole, String> {
    let bad = || format!("--cert-auth {v:?}: expected MOUNT=ROLE:CA_FILE:POLICY");
    let (mount, rest) = v.split_once('=').ok_or_else(bad)?;
    let (role, rest) = rest.split_once(':').ok_or_else(bad)?;
    let (ca_file, policies) = rest.rsplit_once(':').ok_or_else(bad)?;
    let mount = mount.trim_matches('/');
    if mount.is_empty() || role.is_empty() || ca_file.is_empty() {
        return Err(bad());
    }
    Ok(CertRole {
        mount: mount.to_string(),
        role: role.to_string(),
        ca_file: ca_file.to_string(),
        policies: policies
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8200));
    let mut config = ServerConfig::default();
    let mut mounts = Vec::new();
    let mut seed = None;
    let (mut tls_cert, mut tls_key, mut tls_client_ca) = (None, None, None);
    let mut cert_roles = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                listen = v.parse().map_err(|e| format!("--listen {v:?}: {e}"))?;
            }
            "--root-token" => config.root_token = value()?,
            "--mount" => {
                let v = value()?;
                let (path, kind) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--mount {v:?}: expected PATH/=kv1 or PATH/=kv2"))?;
                let version = match kind {
                    "kv1" | "1" | "v1" => KvVersion::V1,
                    "kv2" | "2" | "v2" => KvVersion::V2,
                    _ => return Err(format!("--mount {v:?}: kind must be kv1 or kv2")),
                };
                if path.trim_matches('/').is_empty() {
                    return Err(format!("--mount {v:?}: empty path"));
                }
                mounts.push((format!("{}/", path.trim_matches('/')), version));
            }
            "--seed" => seed = Some(value()?),
            "--no-ui-mounts" => config.ui_mounts_endpoint = false,
            "--tls-cert" => tls_cert = Some(value()?),
            "--tls-key" => tls_key = Some(value()?),
            "--tls-client-ca" => tls_client_ca = Some(value()?),
            "--cert-auth" => cert_roles.push(parse_cert_auth(&value()?)?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !mounts.is_empty() {
        config.mounts = mounts;
    }
    if tls_cert.is_some() != tls_key.is_some() {
        return Err("--tls-cert and --tls-key go together".into());
    }
    if tls_client_ca.is_some() && tls_cert.is_none() {
        return Err("--tls-client-ca needs --tls-cert and --tls-key".into());
    }
    Ok(Args {
        listen,
        config,
        seed,
        tls_cert,
        tls_key,
        tls_client_ca,
        cert_roles,
    })
}

fn read(flag: &str, file: &str) -> Result<String, String> {
    std::fs::read_to_string(file).map_err(|e| format!("{flag} {file}: {e}"))
}

fn tls_settings(args: &Args) -> Result<Option<TlsSettings>, String> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    Ok(Some(TlsSettings {
        cert_chain_pem: read("--tls-cert", cert)?,
        key_pem: read("--tls-key", key)?,
        client_ca_pem: match &args.tls_client_ca {
            Some(f) => Some(read("--tls-client-ca", f)?),
            None => None,
        },
    }))
}

fn setup_cert_auth(vault: &TestVault, roles: &[CertRole]) -> Result<(), String> {
    for r in roles {
        let ca = read("--cert-auth", &r.ca_file)?;
        let policies: Vec<&str> = r.policies.iter().map(String::as_str).collect();
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            vault.set_cert_role(&r.mount, &r.role, &ca, &policies, None)
        }));
        if ok.is_err() {
            return Err(format!(
                "--cert-auth {}={}: bad CA file {} or mount in use",
                r.mount, r.role, r.ca_file
            ));
        }
    }
    Ok(())
}

fn load_seed(vault: &TestVault, file: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("--seed {file}: {e}"))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("--seed {file}: {e}"))?;
    let obj = json
        .as_object()
        .ok_or_else(|| format!("--seed {file}: expected a JSON object of path -> data"))?;
    for (path, data) in obj {
        if !data.is_object() {
            return Err(format!("--seed {file}: {path}: data must be a JSON object"));
        }
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            vault.put(path, data.clone())
        }));
        if ok.is_err() {
            return Err(format!("--seed {file}: {path}: no KV mount for this path"));
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("vault-api-server: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut config = args.config.clone();
    config.tls = match tls_settings(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vault-api-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let vault = match TestVault::start_on(args.listen, config).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("vault-api-server: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    if let Some(file) = &args.seed {
        if let Err(e) = load_seed(&vault, file) {
            eprintln!("vault-api-server: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = setup_cert_auth(&vault, &args.cert_roles) {
        eprintln!("vault-api-server: {e}");
        return ExitCode::FAILURE;
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "VAULT_ADDR={}", vault.addr());
    let _ = out.flush();

    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vault-api-server: cannot install SIGTERM handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    vault.shutdown().await;
    ExitCode::SUCCESS
}
