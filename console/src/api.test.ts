import { afterEach, describe, expect, it, vi } from "vitest";
import { ApiError, getJson, request, useSession } from "./api";
import { Session } from "./auth/session";

const answer = (status: number, body: unknown) =>
  new Response(typeof body === "string" ? body : JSON.stringify(body), { status });

afterEach(() => vi.unstubAllGlobals());

describe("requests to the gateway", () => {
  it("words an error as the gateway did", async () => {
    useSession(new Session({ mode: "disabled" }));
    const envelope = { error: { message: "Replica http://x did not answer.", code: "replica_unreachable", param: "url" } };
    vi.stubGlobal("fetch", vi.fn(async () => answer(502, envelope)));
    const error = (await getJson("/admin/pools").catch((e: unknown) => e)) as ApiError;
    expect(error).toBeInstanceOf(ApiError);
    expect([error.status, error.message, error.code, error.param]).toEqual([
      502, "Replica http://x did not answer.", "replica_unreachable", "url",
    ]); // prettier-ignore
    vi.stubGlobal("fetch", vi.fn(async () => answer(503, "upstream connect error")));
    await expect(request("/x")).rejects.toThrow("upstream connect error");
  });

  it("asks to sign in again on a 401, then sends the request once more with the new token", async () => {
    const session = new Session({ mode: "builtin", authorization_endpoint: "/oauth/authorize",
      token_endpoint: "/oauth/token", client_id: "c", scopes: ["chat"] }); // prettier-ignore
    useSession(session);
    const seen: Array<string | null> = [];
    let calls = 0;
    vi.stubGlobal("fetch", vi.fn(async (_: string, init: RequestInit) => {
      seen.push(new Headers(init.headers).get("authorization"));
      return ++calls === 1 ? answer(401, { error: { message: "expired" } }) : answer(200, { ok: true });
    })); // prettier-ignore
    // signed in once already (a token that the gateway will refuse)
    Object.assign(session, { token: { accessToken: "old", subject: "ada", scopes: ["chat"], expiresAt: Date.now() + 3.6e6 } });
    const pending = getJson<{ ok: boolean }>("/v1/models");
    await vi.waitFor(() => expect(session.expired).toBe(true));
    // the sign-in completes: what a popup's code exchange does
    const renewal = (session as unknown as { renewal: { resolve: (t: unknown) => void } }).renewal;
    const fresh = { accessToken: "new", subject: "ada", scopes: ["chat"], expiresAt: Date.now() + 3.6e6 };
    Object.assign(session, { token: fresh, renewal: null });
    renewal.resolve(fresh);
    expect(await pending).toEqual({ ok: true });
    expect(seen).toEqual(["Bearer old", "Bearer new"]);
  });
});
