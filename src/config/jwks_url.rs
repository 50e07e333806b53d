//! `jwks_url` of an `[[issuer]]`, validated: where its keys are fetched from, and over what.

use rustls::pki_types::ServerName;

/// Where a JWKS lives: a validated `http(s)://host[:port]/path` URL. Its query string may carry
/// an API key: logs and `Debug` show [`JwksUrl::shown`], never the query.
#[derive(Clone, PartialEq, Eq)]
pub struct JwksUrl {
    pub url: String,
    pub tls: bool,
    /// The host as connected to (an IPv6 literal without brackets).
    pub host: String,
    pub port: u16,
    /// `Host` header value.
    pub authority: String,
    pub path_and_query: String,
}

impl std::fmt::Debug for JwksUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("JwksUrl").field(&self.shown()).finish()
    }
}

impl JwksUrl {
    /// The URL without its query string, for logs.
    pub fn shown(&self) -> &str {
        self.url.split('?').next().unwrap_or_default()
    }

    /// Parses and checks a `jwks_url`. `https` for any host; plain `http` only for a loopback
    /// host (local development, tests): a JWKS fetched in the clear could be swapped for keys
    /// that sign anything.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("`{url}` must be an http(s) URL")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{url}` has no host"))?;
        if authority.as_str().contains('@') {
            // Not echoed: the part before `@` is a secret.
            return Err("must not carry credentials (user:password@)".to_owned());
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !tls && !is_loopback(&bare) {
            return Err(format!(
                "`{url}` must be https (plain http only for localhost)"
            ));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path_and_query = uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str)
            .to_owned();
        if tls {
            ServerName::try_from(bare.clone())
                .map_err(|_| format!("`{url}`: `{bare}` is not a valid TLS server name"))?;
        }
        Ok(Self {
            url: url.to_owned(),
            tls,
            host: bare,
            port,
            authority: authority.as_str().to_owned(),
            path_and_query: if path_and_query.is_empty() {
                "/".into()
            } else {
                path_and_query
            },
        })
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_string_stays_out_of_logs_and_debug() {
        let t = JwksUrl::parse("https://idp.example.com/jwks?api_key=s3cret").unwrap();
        assert_eq!(t.shown(), "https://idp.example.com/jwks");
        assert!(!format!("{t:?}").contains("s3cret"));
        assert_eq!(
            t.path_and_query, "/jwks?api_key=s3cret",
            "still fetched with it"
        );
    }

    #[test]
    fn urls_https_anywhere_http_only_on_loopback() {
        let t = JwksUrl::parse("https://app.example.com/api/auth/jwks").unwrap();
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port), ("app.example.com", 443));
        assert_eq!(t.path_and_query, "/api/auth/jwks");
        let t = JwksUrl::parse("http://127.0.0.1:3000/jwks?x=1").unwrap();
        assert_eq!(
            (t.tls, t.port, t.path_and_query.as_str()),
            (false, 3000, "/jwks?x=1")
        );
        assert_eq!(JwksUrl::parse("http://[::1]:80/j").unwrap().host, "::1");
        assert!(JwksUrl::parse("http://localhost/j").is_ok());
        for bad in [
            "http://app.example.com/jwks",
            "ftp://app.example.com/jwks",
            "https://user:pw@app.example.com/jwks",
            "/jwks",
            "not a url",
        ] {
            assert!(JwksUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
