import { afterEach, describe, expect, it, vi } from "vitest";
import { handOverToOpener, Session } from "./session";

const builtin = { mode: "builtin" as const, authorization_endpoint: "/oauth/authorize",
  token_endpoint: "/oauth/token", client_id: "switchyard-console", scopes: ["chat", "admin"] }; // prettier-ignore

afterEach(() => {
  vi.unstubAllGlobals();
  sessionStorage.clear();
  history.replaceState(null, "", "/");
});

describe("the sign-in", () => {
  it("refuses a callback it did not start, or one for another state, and says the issuer's error", async () => {
    const session = new Session(builtin);
    await expect(session.completeRedirect("?code=x&state=s")).rejects.toThrow("not started here");
    sessionStorage.setItem("switchyard.sign-in", JSON.stringify({ verifier: "v", state: "mine", returnTo: "/fleet" }));
    await expect(session.completeRedirect("?code=x&state=theirs")).rejects.toThrow("another request");
    sessionStorage.setItem("switchyard.sign-in", JSON.stringify({ verifier: "v", state: "mine", returnTo: "/fleet" }));
    await expect(
      session.completeRedirect("?error=access_denied&error_description=ada+may+use+none&state=mine"),
    ).rejects.toThrow("ada may use none");
    expect(session.current).toBeNull();
  });

  it("keeps the token in memory only, with the scopes the issuer granted", async () => {
    const utf8 = String.fromCharCode(...new TextEncoder().encode(JSON.stringify({ sub: "José" })));
    const claims = btoa(utf8).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    vi.stubGlobal("fetch", vi.fn(async () => new Response(JSON.stringify({
      access_token: `h.${claims}.s`, token_type: "Bearer", expires_in: 3600, scope: "chat",
    })))); // prettier-ignore
    const session = new Session(builtin);
    sessionStorage.setItem("switchyard.sign-in", JSON.stringify({ verifier: "v", state: "mine", returnTo: "/fleet" }));
    expect(await session.completeRedirect("?code=c&state=mine")).toBe("/fleet");
    expect(session.current?.subject).toBe("José"); // a subject in UTF-8, from base64url
    expect([session.may("chat"), session.may("admin")]).toEqual([true, false]);
    expect(sessionStorage.length).toBe(0);
    expect(localStorage.length).toBe(0);
  });

  it("hands a popup's answer only to a same-origin opener, and only for a popup's sign-in", () => {
    const posted: unknown[] = [];
    const opener = { location: { origin: location.origin }, postMessage: (m: unknown) => posted.push(m) };
    vi.stubGlobal("opener", opener);
    vi.spyOn(window, "close").mockImplementation(() => undefined);
    history.replaceState(null, "", "/console/callback?code=c&state=plain");
    expect(handOverToOpener()).toBe(false); // a sign-in by redirect completes here
    history.replaceState(null, "", "/console/callback?code=c&state=popup.x");
    expect(handOverToOpener()).toBe(true);
    expect(posted).toEqual([{ type: "switchyard-sign-in", search: "?code=c&state=popup.x" }]);
    vi.stubGlobal("opener", { get location(): never { throw new DOMException("cross-origin") } });
    expect(handOverToOpener()).toBe(false);
  });

  it("signs out of an external provider's session too, where it has one", () => {
    const session = new Session(builtin);
    expect(session.signOut()).toBeNull(); // the built-in issuer keeps no session of its own
    const external = { ...builtin, mode: "external" as const, end_session_endpoint: "https://idp.example/logout?x=1" };
    const address = new URL(new Session(external).signOut() ?? "");
    expect(address.origin + address.pathname).toBe("https://idp.example/logout");
    expect(address.searchParams.get("x")).toBe("1"); // the provider's own query is kept
    expect(address.searchParams.get("client_id")).toBe("switchyard-console");
    expect(address.searchParams.get("post_logout_redirect_uri")).toBe(location.origin + "/console/");
    const unusable = new Session({ ...external, end_session_endpoint: "https://idp example/logout" });
    expect(unusable.signOut()).toBeNull(); // signed out here all the same
    expect(unusable.current).toBeNull();
  });
});
