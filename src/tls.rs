//! TLS for the API (`[server] tls_cert`, `tls_key`; optional client
//! certificates with `tls_client_ca`), on rustls with the ring provider
//! already in the build.
//!
//! Certificates are rotated by replacing the files: every second the
//! files' size and modification time are compared with what was loaded,
//! and a change builds a new configuration that new connections get
//! (connections already open keep theirs). A new pair that does not load
//! (half-written, key not matching the certificate, bad PEM) is refused
//! and reported; the last good one keeps serving, as for every other file
//! enrichd reloads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{anyhow, Context};
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

/// Whether a client must present a certificate (with `tls_client_ca`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ClientAuth {
    /// Connections without a certificate signed by the CA are refused in
    /// the handshake.
    #[default]
    Required,
    /// A certificate is verified when presented; clients without one are
    /// let in (and still need an API key).
    Optional,
}

/// The files a TLS configuration is built from, resolved.
#[derive(Clone, Debug)]
pub(crate) struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [self.cert.as_path(), self.key.as_path()].into_iter().chain(self.client_ca.as_deref())
    }
}

/// The live TLS configuration and its state.
pub(crate) struct Tls {
    files: TlsFiles,
    acceptor: ArcSwap<TlsAcceptor>,
    state: Mutex<TlsState>,
}

struct TlsState {
    stamps: Vec<Option<(u64, SystemTime)>>,
    cert_sha256: String,
    loaded_at: SystemTime,
    reloads: u64,
    last_error: Option<String>,
}

impl Tls {
    /// Loads the files; `Err` names what is wrong (start-up fails on it).
    pub(crate) fn load(files: TlsFiles) -> anyhow::Result<Arc<Tls>> {
        let stamps = stamps(&files);
        let (config, cert_sha256) = build(&files)?;
        Ok(Arc::new(Tls {
            acceptor: ArcSwap::from_pointee(TlsAcceptor::from(Arc::new(config))),
            state: Mutex::new(TlsState {
                stamps,
                cert_sha256,
                loaded_at: SystemTime::now(),
                reloads: 0,
                last_error: None,
            }),
            files,
        }))
    }

    /// What a new connection's handshake uses.
    pub(crate) fn acceptor(&self) -> Arc<TlsAcceptor> {
        self.acceptor.load_full()
    }

    /// Reloads when a file changed since the last look (the ticker, every
    /// second); keeps the running configuration when the new one fails.
    pub(crate) fn refresh(&self) {
        let now = stamps(&self.files);
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if now == state.stamps {
            return;
        }
        state.stamps = now;
        match build(&self.files) {
            Ok((config, sha)) => {
                self.acceptor.store(Arc::new(TlsAcceptor::from(Arc::new(config))));
                tracing::info!(cert_sha256 = %sha, "TLS certificate reloaded");
                state.cert_sha256 = sha;
                state.loaded_at = SystemTime::now();
                state.reloads += 1;
                state.last_error = None;
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "TLS files changed but do not load; the running certificate stays");
                state.last_error = Some(format!("{e:#}"));
            }
        }
    }

    /// For `/v1/health/details` (needs a key: it names files).
    pub(crate) fn status(&self) -> Value {
        let state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        json!({
            "cert": self.files.cert,
            "cert_sha256": state.cert_sha256,
            "loaded_at": enrichd_engine::rfc3339(state.loaded_at),
            "reloads": state.reloads,
            "client_auth": self.files.client_ca.as_ref().map(|_| match self.files.client_auth {
                ClientAuth::Required => "required",
                ClientAuth::Optional => "optional",
            }),
            "last_error": state.last_error,
        })
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<(u64, SystemTime)>> {
    files
        .paths()
        .map(|p| std::fs::metadata(p).ok().map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH))))
        .collect()
}

/// Says so when the private key file is open to other users. Only a
/// warning: secrets mounted by orchestrators are often 0644 inside a
/// container that holds nothing else, and refusing would stop the API.
fn warn_if_readable_by_others(key: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(key) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %key.display(),
                mode = format!("{mode:04o}"),
                "tls_key is readable or writable by other users; chmod 600 it"
            );
        }
    }
}

fn build(files: &TlsFiles) -> anyhow::Result<(rustls::ServerConfig, String)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("tls_cert {}", files.cert.display()))?;
    let leaf = certs.first().ok_or_else(|| anyhow!("tls_cert {}: no certificate in it", files.cert.display()))?;
    let sha = Sha256::digest(leaf.as_ref()).iter().map(|b| format!("{b:02x}")).collect();
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("tls_key {}", files.key.display()))?;
    warn_if_readable_by_others(&files.key);
    // ring, not aws-lc-rs: it is already in the build (reqwest's) and
    // needs no C toolchain; rustls 0.23.48 deprecates it for lacking the
    // post-quantum key exchange (X25519MLKEM768), which the API's clients
    // (collectors on the same network) do not negotiate today. Revisit
    // when they do.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| format!("tls_client_ca {}", ca.display()))?
            {
                let cert = cert.map_err(|e| anyhow!("tls_client_ca {}: {e}", ca.display()))?;
                roots.add(cert).with_context(|| format!("tls_client_ca {}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match files.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            builder
                .with_client_cert_verifier(verifier.build().with_context(|| format!("tls_client_ca {}", ca.display()))?)
        }
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!("tls_cert {} and tls_key {} do not make a pair", files.cert.display(), files.key.display())
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, sha))
}
