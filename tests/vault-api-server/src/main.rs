//! `vault-api-server --listen 127.0.0.1:8200 --root-token TOKEN
//!  [--mount secret/=kv2] [--mount kv/=kv1] [--seed FILE.json] [--no-ui-mounts]`

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use vault_api_server::{KvVersion, ServerConfig, TestVault};

const USAGE: &str =
    "usage: vault-api-server --listen IP:PORT [--root-token TOKEN] [--mount PATH/=kv1|kv2]... \
[--seed FILE.json] [--no-ui-mounts]
  --listen       address to bind (port 0 = any free port); default 127.0.0.1:8200
  --root-token   the preset root token; default \"root\"
  --mount        a KV mount, repeatable; default secret/=kv2 and kv/=kv1
  --seed         JSON object {\"secret/app-1/db-password\": {\"value\": \"s3cr3t\"}, ...}
  --no-ui-mounts sys/internal/ui/mounts answers 404 like an old server
Prints VAULT_ADDR=http://IP:PORT once listening; runs until SIGTERM/SIGINT.";

struct Args {
    listen: SocketAddr,
    config: ServerConfig,
    seed: Option<String>,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8200));
    let mut config = ServerConfig::default();
    let mut mounts = Vec::new();
    let mut seed = None;
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
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !mounts.is_empty() {
        config.mounts = mounts;
    }
    Ok(Args {
        listen,
        config,
        seed,
    })
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
    let vault = match TestVault::start_on(args.listen, args.config).await {
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
