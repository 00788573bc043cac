// What the gateway tells its console (GET /console/config.json, app/api/console.py).

export type AuthConfig =
  | { mode: "disabled" }
  | {
      mode: "builtin" | "external";
      authorization_endpoint: string;
      token_endpoint: string;
      client_id: string;
      scopes: string[];
      end_session_endpoint?: string; // an external provider's (OpenID Connect RP-initiated logout)
    };

export interface ConsoleConfig {
  region: string;
  auth: AuthConfig;
  sync: boolean; // the gateway relays /sync/* to its region's sync sidecar
}

export async function loadConfig(): Promise<ConsoleConfig> {
  const response = await fetch("/console/config.json", { cache: "no-store" });
  if (!response.ok) throw new Error(`The gateway's console settings did not load (${response.status}).`);
  return (await response.json()) as ConsoleConfig;
}
