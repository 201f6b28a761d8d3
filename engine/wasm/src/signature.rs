//! Signed modules: with `require_signature = true` a stage loads a module
//! only when `<module>.sig` holds an Ed25519 signature of the module's
//! bytes by one of the stage's `trusted_keys`.
//!
//! The formats are OpenSSL's, so a team's existing tooling signs and
//! verifies without enrichd: public keys are PEM `PUBLIC KEY` (SPKI, as
//! `openssl pkey -pubout` writes), private keys PEM `PRIVATE KEY` (PKCS#8,
//! `openssl genpkey -algorithm ed25519`), and a signature is the raw 64
//! bytes `openssl pkeyutl -sign -rawin` writes, or the same in base64 (one
//! line, easier to paste and diff). `enrichd rule keygen|sign|verify` do
//! the same with this module.
//!
//! Verification happens on the bytes that will be compiled, before
//! compilation: a refused module never reaches wasmtime, and the stage
//! keeps its last good module (the reload path's keep-last-good).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

/// Largest key or signature file read (PEM keys are ~120 bytes).
const MAX_FILE_BYTES: u64 = 16 * 1024;

/// Where a module's detached signature lives: `<module>.sig`.
pub fn signature_path(module: &Path) -> PathBuf {
    let mut name = module.as_os_str().to_os_string();
    name.push(".sig");
    PathBuf::from(name)
}

/// A trusted public key and what reports call it.
#[derive(Clone)]
pub struct TrustedKey {
    key: VerifyingKey,
    /// First 12 hex digits of the SHA-256 of the raw 32-byte key.
    pub id: String,
}

impl TrustedKey {
    pub fn load(path: &Path) -> anyhow::Result<TrustedKey> {
        let text = read_small(path).with_context(|| format!("trusted key {}", path.display()))?;
        let text = String::from_utf8(text).map_err(|_| anyhow!("trusted key {}: not PEM text", path.display()))?;
        let key = VerifyingKey::from_public_key_pem(&text)
            .map_err(|e| anyhow!("trusted key {}: not an Ed25519 PEM public key ({e})", path.display()))?;
        Ok(TrustedKey::from(key))
    }
}

impl From<VerifyingKey> for TrustedKey {
    fn from(key: VerifyingKey) -> Self {
        let digest = Sha256::digest(key.as_bytes());
        TrustedKey { key, id: digest[..6].iter().map(|b| format!("{b:02x}")).collect() }
    }
}

/// A stage's signing policy and what its module was found to be.
pub struct Signing {
    pub required: bool,
    key_paths: Vec<PathBuf>,
    sig_path: PathBuf,
    /// The id of the key that signed the loaded module.
    signed_by: Option<String>,
}

impl Signing {
    /// Checks `bytes` (the module at `module`) against the stage's policy:
    /// `Err` refuses the module. `None` when the stage has no policy
    /// (neither `require_signature` nor `trusted_keys`). With trusted keys
    /// but not required, a signature that is present must still verify.
    pub fn check(
        required: bool,
        key_paths: Vec<PathBuf>,
        module: &Path,
        bytes: &[u8],
    ) -> anyhow::Result<Option<Signing>> {
        if !required && key_paths.is_empty() {
            return Ok(None);
        }
        if key_paths.is_empty() {
            bail!("require_signature is on but trusted_keys is empty: no module could load");
        }
        let keys = key_paths.iter().map(|p| TrustedKey::load(p)).collect::<anyhow::Result<Vec<_>>>()?;
        let sig_path = signature_path(module);
        let signed_by = if required || sig_path.exists() { Some(verify(bytes, &sig_path, &keys)?) } else { None };
        Ok(Some(Signing { required, key_paths, sig_path, signed_by }))
    }

    /// The signature and key files: a change to them reloads the stage.
    pub fn watch_paths(&self) -> impl Iterator<Item = PathBuf> + '_ {
        std::iter::once(self.sig_path.clone()).chain(self.key_paths.iter().cloned())
    }

    /// The id of the key that signed the module, if it was signed.
    pub fn signed_by(&self) -> Option<&str> {
        self.signed_by.as_deref()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "required": self.required, "signed_by": self.signed_by })
    }
}

/// Reads a signature file: 64 raw bytes, or their base64 on one line.
pub fn read_signature(path: &Path) -> anyhow::Result<Signature> {
    let bytes = read_small(path)?;
    let raw: Vec<u8> = if bytes.len() == 64 {
        bytes
    } else {
        let text = std::str::from_utf8(&bytes).map_err(|_| anyhow!("neither 64 raw bytes nor base64 text"))?;
        base64(text.trim()).ok_or_else(|| anyhow!("neither 64 raw bytes nor base64 text"))?
    };
    let raw: [u8; 64] =
        raw.try_into().map_err(|v: Vec<u8>| anyhow!("{} bytes, an Ed25519 signature is 64", v.len()))?;
    Ok(Signature::from_bytes(&raw))
}

/// The id of the trusted key whose signature of `bytes` is at `sig_path`.
pub fn verify(bytes: &[u8], sig_path: &Path, trusted: &[TrustedKey]) -> anyhow::Result<String> {
    let signature = match read_signature(sig_path) {
        Ok(s) => s,
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) => {
            bail!("unsigned: no signature file {} (require_signature is on)", sig_path.display())
        }
        Err(e) => return Err(e.context(format!("signature {}", sig_path.display()))),
    };
    for key in trusted {
        if key.key.verify(bytes, &signature).is_ok() {
            return Ok(key.id.clone());
        }
    }
    bail!(
        "signature {} does not match the module under any trusted key ({}): tampered, or signed by another key",
        sig_path.display(),
        trusted.iter().map(|k| k.id.as_str()).collect::<Vec<_>>().join(", ")
    )
}

/// Signs `bytes` with a PEM PKCS#8 Ed25519 private key; the base64
/// signature line (`enrichd rule sign`).
pub fn sign(bytes: &[u8], private_key_pem: &str) -> anyhow::Result<String> {
    use ed25519_dalek::Signer;
    let key = SigningKey::from_pkcs8_pem(private_key_pem)
        .map_err(|e| anyhow!("not an Ed25519 PEM private key (PKCS#8) ({e})"))?;
    Ok(base64_encode(&key.sign(bytes).to_bytes()))
}

/// A new key pair as PEM (private PKCS#8, public SPKI) from 32 random bytes.
pub fn keypair_pem(seed: [u8; 32]) -> anyhow::Result<(String, String)> {
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey, EncodePublicKey};
    let key = SigningKey::from_bytes(&seed);
    let private = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| anyhow!("encoding the private key: {e}"))?;
    let public =
        key.verifying_key().to_public_key_pem(LineEnding::LF).map_err(|e| anyhow!("encoding the public key: {e}"))?;
    Ok((private.to_string(), public))
}

fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!("over {MAX_FILE_BYTES} bytes")));
    }
    Ok(bytes)
}

fn base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_the_signed_bytes_under_the_signing_key() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = keypair_pem([7; 32]).unwrap();
        let (_, other_public) = keypair_pem([8; 32]).unwrap();
        std::fs::write(dir.path().join("k.pub.pem"), &public).unwrap();
        std::fs::write(dir.path().join("o.pub.pem"), &other_public).unwrap();
        let key = TrustedKey::load(&dir.path().join("k.pub.pem")).unwrap();
        let other = TrustedKey::load(&dir.path().join("o.pub.pem")).unwrap();
        let sig = dir.path().join("m.wasm.sig");
        std::fs::write(&sig, sign(b"module bytes", &private).unwrap()).unwrap();
        assert_eq!(verify(b"module bytes", &sig, &[other.clone(), key.clone()]).unwrap(), key.id);
        assert!(verify(b"module bytez", &sig, std::slice::from_ref(&key))
            .unwrap_err()
            .to_string()
            .contains("does not match"));
        assert!(verify(b"module bytes", &sig, &[other]).is_err());
        let missing = verify(b"module bytes", &dir.path().join("none.sig"), std::slice::from_ref(&key)).unwrap_err();
        assert!(missing.to_string().contains("unsigned"), "{missing}");
        std::fs::write(&sig, "short").unwrap();
        assert!(verify(b"module bytes", &sig, &[key]).is_err());
    }
}
