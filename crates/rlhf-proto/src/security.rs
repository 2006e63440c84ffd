//! Transport security of the services.
//!
//! - **Mutual TLS between the roles** ([`Tls`]): every server presents a certificate signed by
//!   the cluster's CA and asks each client for one signed by the same CA; every client checks
//!   the server's certificate against that CA and presents its own. A process without a
//!   certificate from the cluster's CA can neither call a role nor pose as one.
//! - **Tokens with roles on the admin API** ([`AdminAuth`]): `viewer` tokens may read the
//!   status, `operator` tokens may also stop, pause and unpause the run. A client presenting a
//!   certificate of the cluster's CA (a member) counts as an operator.
//!
//! Without either, the services speak plain HTTP/2 and the admin API is open, as before: fine
//! on one machine, or behind a NetworkPolicy.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// A bad certificate, key or token file, or a bad address.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn file_error(path: &Path, message: impl fmt::Display) -> SecurityError {
    SecurityError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// TLS material of one process: the CA that peers' certificates must chain to, and this
/// process's own certificate chain and key (required to serve, and presented when calling).
#[derive(Clone)]
pub struct Tls {
    inner: Arc<TlsInner>,
}

struct TlsInner {
    ca: Certificate,
    identity: Option<Identity>,
    server_name: Option<String>,
    files: String,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tls({})", self.inner.files)
    }
}

/// Reads a PEM file holding at least one certificate.
fn read_certificates(path: &Path) -> Result<Vec<u8>, SecurityError> {
    let pem = std::fs::read(path).map_err(|e| file_error(path, e))?;
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(&pem) {
        c.map_err(|e| file_error(path, format!("not a PEM certificate file: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(file_error(
            path,
            "no certificate in it (expected a PEM `BEGIN CERTIFICATE` block)",
        ));
    }
    Ok(pem)
}

impl Tls {
    /// Reads the CA certificate(s) from `ca` and, when given, this process's certificate chain
    /// and private key (PEM: PKCS#8, PKCS#1 or SEC1). `server_name`: the name clients check in
    /// servers' certificates instead of the host of the address they dial (one certificate
    /// with that name can then serve every role, whatever its address). Errors name the file.
    pub fn load(
        ca: &Path,
        identity: Option<(&Path, &Path)>,
        server_name: Option<String>,
    ) -> Result<Self, SecurityError> {
        let ca_pem = read_certificates(ca)?;
        let mut files = format!("ca {}", ca.display());
        let identity = match identity {
            Some((cert, key)) => {
                let cert_pem = read_certificates(cert)?;
                let key_pem = std::fs::read(key).map_err(|e| file_error(key, e))?;
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    file_error(
                        key,
                        format!("no usable private key (PEM PKCS#8, PKCS#1 or SEC1): {e}"),
                    )
                })?;
                files.push_str(&format!(", cert {}, key {}", cert.display(), key.display()));
                Some(Identity::from_pem(cert_pem, key_pem))
            }
            None => None,
        };
        if let Some(n) = &server_name
            && n.trim().is_empty()
        {
            return Err(SecurityError::Invalid(
                "server_name: empty (leave it out to check the host of each address)".into(),
            ));
        }
        Ok(Self {
            inner: Arc::new(TlsInner {
                ca: Certificate::from_pem(ca_pem),
                identity,
                server_name,
                files,
            }),
        })
    }

    /// Server side: this process's certificate; clients must present a certificate of the
    /// CA (`clients_optional`: they may also come without one, e.g. an operator's `rlhf
    /// status` with a token; one they do present is still checked).
    fn server_config(&self, clients_optional: bool) -> Result<ServerTlsConfig, SecurityError> {
        let identity = self.inner.identity.clone().ok_or_else(|| {
            SecurityError::Invalid(format!(
                "TLS ({}): serving needs this process's certificate and key",
                self.inner.files
            ))
        })?;
        Ok(ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(self.inner.ca.clone())
            .client_auth_optional(clients_optional))
    }

    /// Client side, for a server at `address` (`host:port`, with or without a scheme): the
    /// server's certificate must chain to the CA and name `server_name` (else the host); this
    /// process's certificate is presented when it has one.
    pub fn client_config(&self, address: &str) -> ClientTlsConfig {
        let host = host_of(authority(address));
        let name = self.inner.server_name.as_deref().unwrap_or(host);
        let mut c = ClientTlsConfig::new()
            .ca_certificate(self.inner.ca.clone())
            .domain_name(name);
        if let Some(id) = &self.inner.identity {
            c = c.identity(id.clone());
        }
        c
    }
}

/// Who a server accepts as a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clients {
    /// Only clients with a certificate of the cluster's CA (the roles' own services).
    Members,
    /// Also clients without a certificate (the admin API, which checks tokens instead).
    Anyone,
}

/// A server builder: requests run in a trace span ([`crate::trace::server_span`]), over TLS
/// when `tls` is given. Fails when the key does not fit the certificate or is not supported.
pub fn server(tls: Option<&Tls>, clients: Clients) -> Result<Server, SecurityError> {
    let builder = Server::builder().trace_fn(crate::trace::server_span);
    match tls {
        None => Ok(builder),
        Some(t) => {
            let files = t.inner.files.clone();
            builder
                .tls_config(t.server_config(clients == Clients::Anyone)?)
                .map_err(|e| SecurityError::Invalid(format!("TLS ({files}): {e}")))
        }
    }
}

/// `host:port` (or `host`) of an address with or without an `http://` / `https://` scheme.
pub fn authority(address: &str) -> &str {
    address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address)
        .trim_end_matches('/')
}

/// The host of `host:port` (IPv6 in brackets allowed).
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// The URL a member is reached at: `https://host:port` with TLS, else `http://host:port`.
pub fn url(address: &str, tls: Option<&Tls>) -> String {
    let scheme = if tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{}", authority(address))
}

/// An endpoint for `address` (`host:port`, with or without a scheme): over TLS, checking the
/// server against the CA, when `tls` is given (whatever scheme the address names).
pub fn endpoint(address: &str, tls: Option<&Tls>) -> Result<Endpoint, SecurityError> {
    let at = url(address, tls);
    let e = Endpoint::from_shared(at.clone())
        .map_err(|e| SecurityError::Invalid(format!("invalid address `{address}`: {e}")))?;
    match tls {
        None => Ok(e),
        Some(t) => e
            .tls_config(t.client_config(address))
            .map_err(|e| SecurityError::Invalid(format!("TLS for `{at}`: {e}"))),
    }
}

/// What an admin API call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Read the run's status.
    Viewer,
    /// Also stop, pause and unpause the run, and register members.
    Operator,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Viewer => "viewer",
            Access::Operator => "operator",
        })
    }
}

/// Shortest token accepted (characters): guessing must be hopeless.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The admin API's tokens: one per line, `<role> <token>` (`viewer` or `operator`), `#`
/// comments and blank lines ignored. Only SHA-256 digests are kept in memory.
#[derive(Clone)]
pub struct AdminTokens {
    digests: Arc<Vec<([u8; 32], Access)>>,
}

impl fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminTokens({} tokens)", self.digests.len())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl AdminTokens {
    /// Reads a tokens file; errors name the file and the line.
    pub fn load(path: &Path) -> Result<Self, SecurityError> {
        let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
        Self::parse(&text).map_err(|m| file_error(path, m))
    }

    /// Parses the text of a tokens file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut digests: Vec<([u8; 32], Access)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let mut words = line.split_whitespace();
            let (Some(role), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(format!(
                    "line {n}: expected `<role> <token>` (role viewer or operator)"
                ));
            };
            let access = match role {
                "viewer" => Access::Viewer,
                "operator" => Access::Operator,
                other => {
                    return Err(format!(
                        "line {n}: unknown role `{other}` (viewer or operator)"
                    ));
                }
            };
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(format!(
                    "line {n}: the token is shorter than {MIN_TOKEN_CHARS} characters"
                ));
            }
            let d = digest(token);
            if digests.iter().any(|(seen, _)| *seen == d) {
                return Err(format!("line {n}: this token is listed twice"));
            }
            digests.push((d, access));
        }
        if digests.is_empty() {
            return Err("no tokens in it (lines `<role> <token>`)".into());
        }
        Ok(Self {
            digests: Arc::new(digests),
        })
    }

    /// The access `token` grants, if it is listed. Every listed digest is compared in full,
    /// without stopping early, whatever the token.
    fn access(&self, token: &str) -> Option<Access> {
        let d = digest(token);
        let mut found = None;
        for (listed, access) in self.digests.iter() {
            let diff = listed
                .iter()
                .zip(d.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(*access);
            }
        }
        found
    }
}

/// The admin API's gate. Open when neither tokens nor an operator name are configured;
/// otherwise a call needs a client certificate of the cluster's CA (checked in the TLS
/// handshake) or an `authorization: Bearer <token>` of a role that allows it. A member's
/// certificate counts as an operator, or, with an operator name, only a certificate valid for
/// that name does (other members' certificates count as viewers).
#[derive(Debug, Clone, Default)]
pub struct AdminAuth {
    tokens: Option<AdminTokens>,
    operator_name: Option<String>,
}

impl AdminAuth {
    pub fn new(tokens: Option<AdminTokens>) -> Self {
        Self {
            tokens,
            operator_name: None,
        }
    }

    /// Only client certificates valid for `name` (a DNS name) count as operators.
    pub fn with_operator_name(mut self, name: Option<String>) -> Self {
        self.operator_name = name;
        self
    }

    /// Whether calls are checked at all.
    pub fn is_enforced(&self) -> bool {
        self.tokens.is_some() || self.operator_name.is_some()
    }

    /// What the client certificate of `req` grants (none without one).
    fn certificate_access<T>(&self, req: &tonic::Request<T>) -> Option<Access> {
        let certs = req.peer_certs()?;
        let leaf = certs.first()?;
        let Some(name) = &self.operator_name else {
            return Some(Access::Operator);
        };
        let valid = rustls_pki_types::ServerName::try_from(name.as_str())
            .ok()
            .zip(webpki::EndEntityCert::try_from(leaf).ok())
            .is_some_and(|(n, cert)| cert.verify_is_valid_for_subject_name(&n).is_ok());
        Some(if valid {
            Access::Operator
        } else {
            Access::Viewer
        })
    }

    /// Ok when `req` may make a call that needs `need`: `Unauthenticated` without a
    /// certificate or a known token, `PermissionDenied` when what it has grants too little.
    pub fn check<T>(&self, req: &tonic::Request<T>, need: Access) -> Result<(), tonic::Status> {
        if !self.is_enforced() {
            return Ok(());
        }
        let by_certificate = self.certificate_access(req);
        if by_certificate >= Some(need) {
            return Ok(());
        }
        let token = bearer(req.metadata());
        let by_token = match (&self.tokens, token) {
            (Some(tokens), Some(t)) => match tokens.access(t) {
                Some(a) => Some(a),
                None => {
                    return Err(tonic::Status::unauthenticated(
                        "unknown token (not in cluster.admin_tokens)",
                    ));
                }
            },
            _ => None,
        };
        match by_certificate.max(by_token) {
            Some(a) if a >= need => Ok(()),
            Some(a) => Err(tonic::Status::permission_denied(format!(
                "a {a} {} may not do this: it needs an {need} token{}",
                if by_token >= by_certificate {
                    "token"
                } else {
                    "certificate"
                },
                match &self.operator_name {
                    Some(n) => format!(" or a certificate for `{n}`"),
                    None => String::new(),
                }
            ))),
            None => Err(tonic::Status::unauthenticated(
                "the admin API needs a token: `authorization: Bearer <token>` (rlhf: \
                 --token-file or RLHF_TOKEN)",
            )),
        }
    }
}

fn bearer(m: &MetadataMap) -> Option<&str> {
    let v = m.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Client interceptor sending `authorization: Bearer <token>` (none: sends nothing).
#[derive(Clone, Default)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "BearerToken(..)"
        } else {
            "BearerToken(none)"
        })
    }
}

impl BearerToken {
    /// `token` (surrounding whitespace removed); an error when it cannot go in a header.
    pub fn new(token: Option<&str>) -> Result<Self, SecurityError> {
        match token.map(str::trim) {
            None => Ok(Self(None)),
            Some(t) => {
                let mut v: AsciiMetadataValue = format!("Bearer {t}").parse().map_err(|_| {
                    SecurityError::Invalid(
                        "the token has characters a gRPC header cannot carry".into(),
                    )
                })?;
                v.set_sensitive(true);
                Ok(Self(Some(v)))
            }
        }
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_is_checked_line_by_line() {
        let ok = AdminTokens::parse(
            "# ops\nviewer  aaaaaaaaaaaaaaaaaaaa\n\noperator bbbbbbbbbbbbbbbbbbbb\n",
        )
        .expect("valid");
        assert_eq!(ok.access("aaaaaaaaaaaaaaaaaaaa"), Some(Access::Viewer));
        assert_eq!(ok.access("bbbbbbbbbbbbbbbbbbbb"), Some(Access::Operator));
        assert_eq!(ok.access("cccccccccccccccccccc"), None);
        assert_eq!(ok.access(""), None);
        for (text, says) in [
            ("admin aaaaaaaaaaaaaaaaaaaa", "line 1: unknown role `admin`"),
            ("viewer short", "line 1: the token is shorter than 16"),
            ("\nviewer", "line 2: expected `<role> <token>`"),
            ("viewer a b", "line 1: expected"),
            (
                "viewer aaaaaaaaaaaaaaaaaaaa\noperator aaaaaaaaaaaaaaaaaaaa",
                "line 2: this token is listed twice",
            ),
            ("# nothing\n", "no tokens"),
        ] {
            let e = AdminTokens::parse(text).expect_err(text);
            assert!(e.starts_with(says), "{text:?}: {e}");
        }
    }

    fn request(auth: Option<&str>) -> tonic::Request<()> {
        let mut r = tonic::Request::new(());
        if let Some(a) = auth {
            r.metadata_mut()
                .insert("authorization", a.parse().expect("ascii"));
        }
        r
    }

    #[test]
    fn admin_auth_grants_by_role() {
        let open = AdminAuth::default();
        assert!(open.check(&request(None), Access::Operator).is_ok());
        let auth = AdminAuth::new(Some(
            AdminTokens::parse("viewer vvvvvvvvvvvvvvvvvvvv\noperator oooooooooooooooooooo")
                .expect("valid"),
        ));
        let code = |r: Result<(), tonic::Status>| r.err().map(|s| s.code());
        use tonic::Code::{PermissionDenied, Unauthenticated};
        assert_eq!(
            code(auth.check(&request(None), Access::Viewer)),
            Some(Unauthenticated)
        );
        let wrong = request(Some("Bearer wwwwwwwwwwwwwwwwwwww"));
        assert_eq!(
            code(auth.check(&wrong, Access::Viewer)),
            Some(Unauthenticated)
        );
        let viewer = request(Some("Bearer vvvvvvvvvvvvvvvvvvvv"));
        assert_eq!(code(auth.check(&viewer, Access::Viewer)), None);
        assert_eq!(
            code(auth.check(&viewer, Access::Operator)),
            Some(PermissionDenied)
        );
        let operator = request(Some("bearer oooooooooooooooooooo"));
        assert_eq!(code(auth.check(&operator, Access::Operator)), None);
        assert_eq!(code(auth.check(&operator, Access::Viewer)), None);
        // The interceptor's header is what the gate reads.
        let mut sent = BearerToken::new(Some(" vvvvvvvvvvvvvvvvvvvv\n"))
            .expect("ascii")
            .call(tonic::Request::new(()))
            .expect("intercepted");
        assert_eq!(code(auth.check(&sent, Access::Viewer)), None);
        sent.metadata_mut().remove("authorization");
        assert_eq!(
            code(auth.check(&sent, Access::Viewer)),
            Some(Unauthenticated)
        );
    }

    #[test]
    fn addresses_take_the_scheme_of_the_transport() {
        assert_eq!(url("http://a:1", None), "http://a:1");
        assert_eq!(url("a:1", None), "http://a:1");
        assert_eq!(url("http://10.0.0.1:50051/", None), "http://10.0.0.1:50051");
        assert_eq!(host_of("learner.ns.svc:50051"), "learner.ns.svc");
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("10.1.2.3:9"), "10.1.2.3");
        assert_eq!(host_of("name"), "name");
    }
}
