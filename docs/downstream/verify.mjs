// Verify a Portcullis identity assertion (CONTRACT section 9) in a Node service, with jose.
//
//     node verify.mjs JWKS_URL AUDIENCE ISSUER ASSERTION
//
// prints the claims as JSON and exits 0, or prints why and exits 1. In a service, create the
// key set once (it caches and refetches on an unknown kid) and call `verify` per request.
import { createRemoteJWKSet, jwtVerify } from "jose";

export async function verify(jwks, assertion, audience, issuer) {
  const { payload } = await jwtVerify(assertion, jwks, {
    algorithms: ["EdDSA", "ES256"], // never what the token says it is
    typ: "portcullis-assertion+jwt", // a user's own token (same issuer, same JWKS) is refused
    audience, // this service's upstream name in Portcullis
    issuer, // Portcullis's tokens.issuer
    requiredClaims: ["exp", "iat", "sub"],
    clockTolerance: 5,
  });
  return payload;
}

const [jwksUrl, audience, issuer, assertion] = process.argv.slice(2);
try {
  const claims = await verify(createRemoteJWKSet(new URL(jwksUrl)), assertion, audience, issuer);
  console.log(JSON.stringify(claims));
} catch (e) {
  console.log(`refused: ${e.code ?? e.name}: ${e.message}`);
  process.exit(1);
}
