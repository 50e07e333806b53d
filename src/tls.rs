//! Trust anchors for every outbound TLS client of the gateway: the Postgres store
//! (`sslmode=verify-*`, `sslrootcert=system`) and the JWKS fetches of external issuers.

use rustls::pki_types::CertificateDer;

/// The platform's trust anchors, through rustls-native-certs (which honours `SSL_CERT_FILE`
/// and `SSL_CERT_DIR`), minus the certificates that declare themselves not to be a CA
/// (basicConstraints `cA` false): a certificate directory such as Debian's `/etc/ssl/certs`
/// also holds locally installed self-signed server certificates (the "snakeoil" one, hashed
/// there by `c_rehash`), and those must not become trust anchors for every host. To trust such
/// a certificate for the database, name it in `sslrootcert`.
pub fn platform_roots() -> Result<Vec<CertificateDer<'static>>, String> {
    let result = rustls_native_certs::load_native_certs();
    let certs: Vec<_> = result
        .certs
        .into_iter()
        .filter(|cert| !declares_not_ca(cert.as_ref()))
        .collect();
    if certs.is_empty() {
        let why = result
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(format!("no platform root certificates found{why}"));
    }
    Ok(certs)
}

/// Whether a DER certificate carries basicConstraints with `cA` false. A certificate this
/// parser cannot read, or one without the extension, counts as "no": webpki decides.
fn declares_not_ca(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    matches!(cert.basic_constraints(), Ok(Some(bc)) if !bc.value.ca)
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject as _;

    use super::*;

    #[test]
    fn leaf_certificates_are_not_platform_roots() {
        // Debian's snakeoil certificate: self-signed, CA:FALSE.
        if let Ok(certs) = CertificateDer::pem_file_iter("/etc/ssl/certs/ssl-cert-snakeoil.pem")
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        {
            assert!(certs.iter().all(|c| declares_not_ca(c.as_ref())));
        }
        let roots = platform_roots().unwrap();
        assert!(roots.len() > 10, "{}", roots.len());
        assert!(roots.iter().all(|c| !declares_not_ca(c.as_ref())));
        assert!(!declares_not_ca(b"garbage"));
        assert!(!declares_not_ca(&[]));
    }
}
