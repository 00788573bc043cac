// The gateway's API as the pages call it: the session's token on every request, a 401 met by
// signing in again (the request is then sent once more), and errors as the gateway words them
// (OpenAI's envelope: {"error": {"message", "type", "param", "code"}}).
import type { Session } from "./auth/session";
import { EventStreamParser } from "./sse";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: string | null = null,
    readonly param: string | null = null,
  ) {
    super(message);
  }
}

const RENEW_BEFORE_MS = 30_000;
let session: Session | null = null;

export function useSession(value: Session): void {
  session = value;
}

async function errorOf(response: Response): Promise<ApiError> {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text) as { error?: { message?: string; code?: string; param?: string } | string };
    if (body.error && typeof body.error === "object" && body.error.message) {
      return new ApiError(response.status, body.error.message, body.error.code ?? null, body.error.param ?? null);
    }
    if (typeof body.error === "string") return new ApiError(response.status, body.error);
  } catch {
    // not JSON: the status says it
  }
  return new ApiError(response.status, text.trim().slice(0, 300) || `${response.status} ${response.statusText}`);
}

async function authorized(headers: Headers): Promise<void> {
  if (session === null || !session.required) return;
  const token = session.current;
  if (token === null || token.expiresAt - Date.now() < RENEW_BEFORE_MS) await session.renew();
  const value = session.authorization();
  if (value) headers.set("authorization", value);
}

/** The response to `path`, after one more sign-in if the token was refused; ApiError unless 2xx. */
export async function request(path: string, init: RequestInit = {}): Promise<Response> {
  for (let attempt = 0; ; attempt++) {
    const headers = new Headers(init.headers);
    await authorized(headers);
    const response = await fetch(path, { ...init, headers });
    if (response.status === 401 && session?.required && attempt === 0) {
      await session.renew(); // the page asks to sign in again; then this request goes once more
      continue;
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }
}

export async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  return (await (await request(path, { signal })).json()) as T;
}

export async function sendJson<T>(method: string, path: string, body?: unknown): Promise<T> {
  const init: RequestInit = { method };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { "content-type": "application/json" };
  }
  const response = await request(path, init);
  const text = await response.text();
  return (text ? JSON.parse(text) : {}) as T;
}

/** An upload with progress (fetch reports none): XMLHttpRequest, with the same token handling. */
export async function upload<T>(
  path: string,
  body: FormData | Blob,
  onProgress: (fraction: number) => void,
  method = "POST",
): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    const headers = new Headers();
    await authorized(headers);
    const answer = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open(method, path);
      headers.forEach((value, name) => xhr.setRequestHeader(name, value));
      if (body instanceof Blob) xhr.setRequestHeader("content-type", body.type || "application/octet-stream");
      xhr.upload.onprogress = (event) => event.lengthComputable && onProgress(event.loaded / event.total);
      xhr.onload = () => resolve({ status: xhr.status, text: xhr.responseText });
      xhr.onerror = () => reject(new ApiError(0, "The upload did not reach the gateway."));
      xhr.send(body);
    });
    if (answer.status === 401 && session?.required && attempt === 0) {
      await session.renew();
      continue;
    }
    if (answer.status < 200 || answer.status >= 300) {
      throw await errorOf(new Response(answer.text, { status: answer.status }));
    }
    onProgress(1);
    return JSON.parse(answer.text) as T;
  }
}

export interface StreamStart {
  requestId: string | null;
  region: string | null;
  replica: string | null;
}

/** POST a streamed request; `onEvent` gets each event's JSON, in order, until `[DONE]`. */
export async function stream(
  path: string,
  body: unknown,
  headers: Record<string, string>,
  onStart: (start: StreamStart) => void,
  onEvent: (event: unknown) => void,
  signal: AbortSignal,
): Promise<void> {
  const response = await request(path, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
    signal,
  });
  onStart({
    requestId: response.headers.get("x-request-id"),
    region: response.headers.get("x-route-region"),
    replica: response.headers.get("x-route-replica"),
  });
  const reader = response.body!.getReader();
  const parser = new EventStreamParser();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    for (const data of parser.push(value)) {
      if (data === "[DONE]") return;
      const event = JSON.parse(data) as { error?: { message?: string; code?: string } };
      if (event.error) throw new ApiError(200, event.error.message ?? "the stream ended with an error", event.error.code);
      onEvent(event);
    }
  }
}
