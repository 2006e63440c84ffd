//! A development certificate authority for mutual TLS (`rlhf certs`): a CA and certificates
//! for the roles, valid for both serving and calling (server and client authentication).
//! Production clusters usually take theirs from cert-manager or their own PKI; any PEM CA,
//! certificate and key work (`cluster.tls`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::security::SecurityError;

/// Subject of the CA `rlhf certs` makes; a later call that finds its `ca.key` signs with it.
const CA_NAME: &str = "rlhf development CA";

/// What [`issue`] wrote.
#[derive(Debug, Clone)]
pub struct Issued {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// Whether the CA was made now (else an existing `ca.key` signed).
    pub ca_created: bool,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn invalid(what: &str, e: impl std::fmt::Display) -> SecurityError {
    SecurityError::Invalid(format!("{what}: {e}"))
}

fn validity(params: &mut CertificateParams, days: u32) -> Result<(), SecurityError> {
    if days == 0 {
        return Err(SecurityError::Invalid(
            "days: a certificate must be valid for at least a day".into(),
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| invalid("system clock", e))?;
    // An hour of slack for clocks a little behind this one.
    let from = now.saturating_sub(Duration::from_secs(3600));
    let to = now + Duration::from_secs(u64::from(days) * 86_400);
    let at = |d: Duration| {
        time::OffsetDateTime::from_unix_timestamp(d.as_secs() as i64)
            .map_err(|e| invalid("validity", e))
    };
    params.not_before = at(from)?;
    params.not_after = at(to)?;
    Ok(())
}

fn ca_params(days: u32) -> Result<CertificateParams, SecurityError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p, days)?;
    Ok(p)
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), SecurityError> {
    let err = |e: std::io::Error| SecurityError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::write(path, text).map_err(err)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}

/// Writes `<stem>.crt` and `<stem>.key` into `dir`: a certificate for `names` (DNS names or IP
/// addresses; the first is also its common name), valid `days` days for serving and calling,
/// signed by the CA in `dir` (`ca.crt`, `ca.key`), which is created first when `dir` has no
/// `ca.key`. Keys are written readable by their owner only.
pub fn issue(dir: &Path, stem: &str, names: &[String], days: u32) -> Result<Issued, SecurityError> {
    let Some(first) = names.first() else {
        return Err(SecurityError::Invalid(
            "name: give at least one DNS name or IP address for the certificate".into(),
        ));
    };
    std::fs::create_dir_all(dir).map_err(|e| SecurityError::File {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let ca_cert = dir.join("ca.crt");
    let ca_key_path = dir.join("ca.key");
    let ca_created = !ca_key_path.exists();
    let ca_key = if ca_created {
        let key = KeyPair::generate().map_err(|e| invalid("generating the CA key", e))?;
        let cert = ca_params(days)?
            .self_signed(&key)
            .map_err(|e| invalid("signing the CA", e))?;
        write(&ca_key_path, &key.serialize_pem(), true)?;
        write(&ca_cert, &cert.pem(), false)?;
        key
    } else {
        let pem = std::fs::read_to_string(&ca_key_path).map_err(|e| SecurityError::File {
            path: ca_key_path.clone(),
            message: e.to_string(),
        })?;
        KeyPair::from_pem(&pem).map_err(|e| SecurityError::File {
            path: ca_key_path.clone(),
            message: format!("not a CA key written by `rlhf certs`: {e}"),
        })?
    };
    let issuer = Issuer::new(ca_params(days)?, &ca_key);

    let mut params = CertificateParams::new(names.to_vec()).map_err(|e| invalid("name", e))?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, first.as_str());
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days)?;
    let key = KeyPair::generate().map_err(|e| invalid("generating the key", e))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| invalid("signing the certificate", e))?;
    let (cert_path, key_path) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    write(&key_path, &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)?;
    Ok(Issued {
        ca_cert,
        ca_key: ca_key_path,
        ca_created,
        cert: cert_path,
        key: key_path,
    })
}
