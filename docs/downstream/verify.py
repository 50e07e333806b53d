"""Verify a Portcullis identity assertion (CONTRACT section 9) in a Python service.

    python3 verify.py JWKS_URL AUDIENCE ISSUER ASSERTION

prints the claims as JSON and exits 0, or prints why and exits 1. In a service, keep one
PyJWKClient (it caches the key set) and call `verify` per request with the header's value.
"""

import json
import sys

import jwt  # PyJWT[crypto]


def verify(client: jwt.PyJWKClient, assertion: str, audience: str, issuer: str) -> dict:
    # Explicitly typed: a user's own token (same issuer, same JWKS) is never an assertion.
    if jwt.get_unverified_header(assertion).get("typ") != "portcullis-assertion+jwt":
        raise jwt.InvalidTokenError("not a Portcullis assertion (typ)")
    key = client.get_signing_key_from_jwt(assertion)  # by the header's kid
    return jwt.decode(
        assertion,
        key.key,
        algorithms=["EdDSA", "ES256"],  # never what the token says it is
        audience=audience,              # this service's upstream name in Portcullis
        issuer=issuer,                  # Portcullis's tokens.issuer
        options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        leeway=5,
    )


if __name__ == "__main__":
    jwks_url, audience, issuer, assertion = sys.argv[1:5]
    try:
        claims = verify(jwt.PyJWKClient(jwks_url), assertion, audience, issuer)
    except jwt.PyJWTError as e:
        print(f"refused: {e}")
        sys.exit(1)
    print(json.dumps(claims))
