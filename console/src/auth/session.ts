// The signed-in session: the access token lives in this module's memory only (never in
// storage), so a reload signs in again. What must survive the trip to the login page (the
// PKCE verifier, the state, the page to come back to) waits in sessionStorage, for one
// sign-in. An expired token does not reload the page: the sign-in opens in a popup and the
// requests that met the 401 are sent again once it is back (api.ts).
import type { AuthConfig } from "../config";
import { challengeOf, randomString } from "./pkce";

export interface Token {
  accessToken: string;
  subject: string;
  scopes: string[];
  expiresAt: number; // ms since the epoch
}

type SignIn = Extract<AuthConfig, { mode: "builtin" | "external" }>;
type Pending = { verifier: string; state: string; returnTo: string };

export const CALLBACK_PATH = "/console/callback";
const SIGNED_OUT_PATH = "/console/"; // where a provider sends the browser after signing out
const PENDING_KEY = "switchyard.sign-in";
const MESSAGE_TYPE = "switchyard-sign-in";
const POPUP_STATE = "popup."; // a popup's sign-in: its callback hands over to the window that opened it

export class SignInError extends Error {}

function subjectOf(accessToken: string): string {
  try {
    const payload = atob((accessToken.split(".")[1] ?? "").replace(/-/g, "+").replace(/_/g, "/"));
    const text = new TextDecoder().decode(Uint8Array.from(payload, (c) => c.charCodeAt(0))); // UTF-8
    const claims = JSON.parse(text) as { sub?: unknown };
    return typeof claims.sub === "string" ? claims.sub : "";
  } catch {
    return "";
  }
}

export class Session {
  private token: Token | null = null;
  private listeners = new Set<() => void>();
  private renewal: { promise: Promise<Token>; resolve: (token: Token) => void } | null = null;
  private popup: Pending | null = null;

  constructor(private readonly auth: AuthConfig) {}

  get current(): Token | null {
    return this.token;
  }

  /** True while a token is needed again (expired, or refused): the page asks to sign in. */
  get expired(): boolean {
    return this.renewal !== null;
  }

  get required(): boolean {
    return this.auth.mode !== "disabled";
  }

  may(scope: string): boolean {
    return !this.required || (this.token?.scopes.includes(scope) ?? false);
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private changed(): void {
    this.listeners.forEach((listener) => listener());
  }

  /** The Authorization header's value, or null when none is needed or held. */
  authorization(): string | null {
    return this.token ? `Bearer ${this.token.accessToken}` : null;
  }

  /** Wait for a new token: the page shows its sign-in prompt until one comes. */
  renew(): Promise<Token> {
    if (this.renewal === null) {
      let resolve!: (token: Token) => void;
      const promise = new Promise<Token>((r) => (resolve = r));
      this.renewal = { promise, resolve };
      this.changed();
    }
    return this.renewal.promise;
  }

  /** Forget the token. Where the provider keeps a session of its own (an external OpenID
   * Connect provider with an end_session_endpoint), returns the address that ends it too and
   * sends the browser back to the console, so that the next "Sign in" asks for the password
   * again; otherwise null. */
  signOut(): string | null {
    this.token = null;
    this.changed();
    if (this.auth.mode === "disabled" || !this.auth.end_session_endpoint) return null;
    let address: URL;
    try {
      address = new URL(this.auth.end_session_endpoint); // may carry a query of its own
    } catch {
      return null; // not an address this browser can go to: the token is forgotten all the same
    }
    address.searchParams.set("client_id", this.auth.client_id);
    address.searchParams.set("post_logout_redirect_uri", location.origin + SIGNED_OUT_PATH);
    return address.href;
  }

  private signInConfig(): SignIn {
    if (this.auth.mode === "disabled") throw new SignInError("This gateway does not ask for sign-in.");
    return this.auth;
  }

  private async authorizeUrl(pending: Pending): Promise<string> {
    const auth = this.signInConfig();
    const query = new URLSearchParams({
      response_type: "code",
      client_id: auth.client_id,
      redirect_uri: location.origin + CALLBACK_PATH,
      state: pending.state,
      code_challenge: await challengeOf(pending.verifier),
      code_challenge_method: "S256",
      scope: auth.scopes.join(" "),
    });
    return `${auth.authorization_endpoint}?${query}`;
  }

  /** Sign in by leaving for the login page; the console comes back to `returnTo`. */
  async signInByRedirect(returnTo: string): Promise<void> {
    const pending = { verifier: randomString(), state: randomString(16), returnTo };
    sessionStorage.setItem(PENDING_KEY, JSON.stringify(pending));
    location.assign(await this.authorizeUrl(pending));
  }

  /** Sign in again in a popup, keeping this page as it is. */
  async signInByPopup(): Promise<void> {
    const pending = { verifier: randomString(), state: POPUP_STATE + randomString(16), returnTo: "" };
    this.popup = pending;
    const url = await this.authorizeUrl(pending);
    const opened = window.open(url, "switchyard-sign-in", "popup,width=480,height=640");
    if (!opened) throw new SignInError("The browser blocked the sign-in window: allow popups for this page.");
  }

  /** A message from the popup's callback page (same origin only). */
  async receive(event: MessageEvent): Promise<void> {
    const data = event.data as { type?: string; search?: string } | null;
    if (event.origin !== location.origin || data?.type !== MESSAGE_TYPE || this.popup === null) return;
    const pending = this.popup;
    this.popup = null;
    await this.complete(new URLSearchParams(data.search ?? ""), pending);
  }

  /** On the callback page after a redirect: the token, and the page to go back to. */
  async completeRedirect(search: string): Promise<string> {
    const stored = sessionStorage.getItem(PENDING_KEY);
    sessionStorage.removeItem(PENDING_KEY);
    if (stored === null) throw new SignInError("This sign-in was not started here: sign in again.");
    const pending = JSON.parse(stored) as Pending;
    await this.complete(new URLSearchParams(search), pending);
    return pending.returnTo;
  }

  private async complete(query: URLSearchParams, pending: Pending): Promise<void> {
    if (query.get("state") !== pending.state) throw new SignInError("The sign-in came back for another request.");
    const error = query.get("error");
    if (error) throw new SignInError(query.get("error_description") || error);
    const code = query.get("code");
    if (!code) throw new SignInError("The sign-in came back without a code.");
    const auth = this.signInConfig();
    const response = await fetch(auth.token_endpoint, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({
        grant_type: "authorization_code",
        client_id: auth.client_id,
        code,
        redirect_uri: location.origin + CALLBACK_PATH,
        code_verifier: pending.verifier,
      }),
    });
    const body = (await response.json().catch(() => ({}))) as Record<string, unknown>;
    if (!response.ok || typeof body.access_token !== "string") {
      throw new SignInError(String(body.error_description ?? body.error ?? `sign-in failed (${response.status})`));
    }
    const scope = typeof body.scope === "string" ? body.scope : "";
    const lifetime = typeof body.expires_in === "number" ? body.expires_in : 3600;
    this.token = {
      accessToken: body.access_token,
      subject: subjectOf(body.access_token),
      scopes: scope.split(" ").filter(Boolean),
      expiresAt: Date.now() + lifetime * 1000,
    };
    const renewal = this.renewal;
    this.renewal = null;
    renewal?.resolve(this.token);
    this.changed();
  }
}

/** On the callback page inside the popup: hand the answer to the page that opened it. */
export function handOverToOpener(): boolean {
  if (!new URLSearchParams(location.search).get("state")?.startsWith(POPUP_STATE)) return false;
  let opener: Window | null = null;
  try {
    opener = window.opener && window.opener.location.origin === location.origin ? window.opener : null;
  } catch {
    opener = null; // another origin's window: never hand it anything
  }
  if (opener === null) return false;
  opener.postMessage({ type: MESSAGE_TYPE, search: location.search }, location.origin);
  window.close();
  return true;
}
