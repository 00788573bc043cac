// A real OpenID Connect provider (node-oidc-provider, certified), for the console's browser
// test of `auth_mode: external`: the console registered as a public client with PKCE, access
// tokens as RFC 9068 JWTs for the gateway's audience with its scopes. Its development
// interactions sign anyone in (any name, any password) and ask for consent; its session
// ends at its end_session_endpoint, which the console's "Sign out" visits.
//
//   node e2e/oidc-issuer.mjs PORT CONSOLE_REDIRECT_URI CONSOLE_ORIGIN
import Provider from "oidc-provider";

const [port, redirectUri, consoleOrigin] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const SCOPES = "chat finetune adapters admin";

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: "ops-console",
      token_endpoint_auth_method: "none",
      grant_types: ["authorization_code"],
      response_types: ["code"],
      redirect_uris: [redirectUri],
      post_logout_redirect_uris: [`${consoleOrigin}/console/`], // RP-initiated logout comes back here
    },
  ],
  pkce: { required: () => true, methods: ["S256"] },
  scopes: SCOPES.split(" "),
  features: {
    devInteractions: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => "urn:switchyard", // a resource indicator is a URI; the audience is the gateway's
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: SCOPES,
        audience: "switchyard",
        accessTokenFormat: "jwt",
        accessTokenTTL: 3600,
      }),
    },
  },
  clientBasedCORS: (ctx, origin) => origin === consoleOrigin,
});
provider.proxy = false;
provider.listen(Number(port), "127.0.0.1", () => console.log(`issuer ready at ${issuer}`));
