// A real OpenID provider for tests/idp.rs: npm's oidc-provider (a certified OpenID Connect
// implementation), not ours. Usage: node oidc_provider.mjs PORT KID
// Serves issuer http://127.0.0.1:PORT with discovery, a JWKS holding one fresh RS256 key
// named KID (so restarting with another KID is a key rotation), and one client-credentials
// client, `ingest-service` / `ingest-secret`, whose access tokens for the resource
// `urn:event-gateway` are RS256 JWTs (RFC 9068) with that audience. Prints "ready" when
// listening.
import crypto from "node:crypto";
import Provider from "oidc-provider";

const [port, kid] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: "jwk" }), kid, use: "sig", alg: "RS256" };

const provider = new Provider(issuer, {
  jwks: { keys: [jwk] },
  clients: [
    {
      client_id: "ingest-service",
      client_secret: "ingest-secret",
      grant_types: ["client_credentials"],
      response_types: [],
      redirect_uris: [],
    },
  ],
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => "urn:event-gateway",
      getResourceServerInfo: () => ({
        scope: "events:write",
        audience: "urn:event-gateway",
        accessTokenFormat: "jwt",
        accessTokenTTL: 600,
        jwt: { sign: { alg: "RS256" } },
      }),
    },
  },
});
provider.listen(Number(port), "127.0.0.1", () => console.log("ready"));
