// Chat with any model or adapter the caller may use, streamed: the answer grows as tokens
// arrive, with time to first token, tokens per second, and where the request was served.
import { useEffect, useRef, useState } from "react";
import { getJson, stream, type StreamStart } from "../api";
import { Alert } from "../components/Alert";
import { useLocation } from "../router";

interface Message {
  role: "user" | "assistant";
  content: string;
}

interface Stats extends StreamStart {
  ttftMs: number | null;
  tokensPerS: number | null;
  tokens: number;
  idempotencyKey: string | null;
}

interface Chunk {
  choices?: Array<{ delta?: { content?: string | null } }>;
  usage?: { completion_tokens?: number } | null;
}

export function Playground() {
  const { query } = useLocation();
  const [models, setModels] = useState<string[]>([]);
  const [model, setModel] = useState(query.get("model") ?? "");
  const [messages, setMessages] = useState<Message[]>([]);
  const [draft, setDraft] = useState("");
  const [maxTokens, setMaxTokens] = useState(64);
  const [temperature, setTemperature] = useState(0.7);
  const [sendKey, setSendKey] = useState(false);
  const [stats, setStats] = useState<Stats | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const [controller, setController] = useState<AbortController | null>(null);
  const answerEnd = useRef<HTMLDivElement>(null);

  useEffect(() => {
    getJson<{ data: Array<{ id: string }> }>("/v1/models")
      .then((answer) => {
        const ids = answer.data.map((card) => card.id);
        setModels(ids);
        setModel((current) => current || ids[0] || "");
      })
      .catch(setError);
  }, []);

  useEffect(() => () => controller?.abort(), [controller]); // leaving the page ends its stream
  useEffect(() => {
    answerEnd.current?.scrollIntoView?.({ block: "nearest" }); // it returns a promise in newer browsers
  }, [messages]);

  const send = async () => {
    const content = draft.trim();
    if (!content || !model || controller) return;
    const conversation: Message[] = [...messages, { role: "user", content }];
    setMessages([...conversation, { role: "assistant", content: "" }]);
    setDraft("");
    setError(null);
    const abort = new AbortController();
    setController(abort);
    const key = sendKey ? crypto.randomUUID?.() ?? `${Date.now()}-${Math.random()}` : null;
    const started = performance.now();
    let first: number | null = null;
    let tokens = 0;
    let counted: number | null = null;
    const current: Stats = { requestId: null, region: null, replica: null, ttftMs: null, tokensPerS: null,
      tokens: 0, idempotencyKey: key }; // prettier-ignore
    setStats(current);
    const update = () => {
      const now = performance.now();
      const produced = counted ?? tokens;
      const tokensPerS = first !== null && now > first && produced > 1 ? ((produced - 1) * 1000) / (now - first) : null;
      setStats({ ...current, ttftMs: first === null ? null : first - started, tokensPerS, tokens: produced });
    };
    try {
      await stream(
        "/v1/chat/completions",
        {
          model,
          messages: conversation,
          max_tokens: maxTokens,
          temperature,
          stream: true,
          stream_options: { include_usage: true },
        },
        key ? { "idempotency-key": key } : {},
        (start) => Object.assign(current, start),
        (event) => {
          const chunk = event as Chunk;
          const text = chunk.choices?.[0]?.delta?.content ?? "";
          if (chunk.usage?.completion_tokens !== undefined) counted = chunk.usage.completion_tokens;
          if (text) {
            first ??= performance.now();
            tokens += 1;
            setMessages((all) => {
              const last = all[all.length - 1]!;
              return [...all.slice(0, -1), { ...last, content: last.content + text }];
            });
          }
          update();
        },
        abort.signal,
      );
    } catch (caught) {
      if (!abort.signal.aborted) setError(caught as Error);
    } finally {
      update();
      setController(null);
    }
  };

  return (
    <section aria-labelledby="playground-title" className="playground">
      <h1 id="playground-title">Playground</h1>
      <div className="controls">
        <label>
          Model
          <select value={model} onChange={(event) => setModel(event.target.value)}>
            {model && !models.includes(model) && <option value={model}>{model}</option>}
            {models.map((id) => (
              <option key={id} value={id}>
                {id}
              </option>
            ))}
          </select>
        </label>
        <label>
          Max tokens
          <input type="number" min={1} max={4096} value={maxTokens}
            onChange={(event) => setMaxTokens(Number(event.target.value) || 1)} />
        </label>
        <label>
          Temperature
          <input type="number" min={0} max={2} step={0.1} value={temperature}
            onChange={(event) => setTemperature(Number(event.target.value))} />
        </label>
        <label className="check">
          <input type="checkbox" checked={sendKey} onChange={(event) => setSendKey(event.target.checked)} />
          Send an Idempotency-Key
        </label>
        <button type="button" onClick={() => (setMessages([]), setStats(null))} disabled={!!controller}>
          New chat
        </button>
      </div>
      <div className="conversation" aria-live="polite" aria-label="Conversation">
        {messages.length === 0 && <p className="muted">Send a message to start.</p>}
        {messages.map((message, index) => (
          <div key={index} className={`message ${message.role}`}>
            <span className="role">{message.role === "user" ? "You" : model}</span>
            <p data-role={message.role}>{message.content || (controller ? "…" : "")}</p>
          </div>
        ))}
        <div ref={answerEnd} />
      </div>
      <Alert error={error} />
      <form
        className="composer"
        onSubmit={(event) => {
          event.preventDefault();
          void send();
        }}
      >
        <label htmlFor="draft" className="sr-only">
          Message
        </label>
        <textarea
          id="draft"
          rows={3}
          value={draft}
          placeholder="Write a message (Ctrl+Enter sends)"
          onChange={(event) => setDraft(event.target.value)}
          onKeyDown={(event) => {
            if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
              event.preventDefault();
              void send();
            }
          }}
        />
        {controller ? (
          <button type="button" onClick={() => controller.abort()}>
            Stop
          </button>
        ) : (
          <button type="submit" className="primary" disabled={!draft.trim() || !model}>
            Send
          </button>
        )}
      </form>
      {stats && (
        <dl className="stats" aria-label="Last answer">
          <div><dt>Time to first token</dt><dd>{stats.ttftMs === null ? "–" : `${Math.round(stats.ttftMs)} ms`}</dd></div>
          <div><dt>Tokens/s</dt><dd>{stats.tokensPerS === null ? "–" : stats.tokensPerS.toFixed(1)}</dd></div>
          <div><dt>Tokens</dt><dd>{stats.tokens}</dd></div>
          <div><dt>Region</dt><dd>{stats.region ?? "–"}</dd></div>
          <div><dt>Replica</dt><dd className="mono">{stats.replica ?? "–"}</dd></div>
          <div><dt>Request id</dt><dd className="mono">{stats.requestId ?? "–"}</dd></div>
          {stats.idempotencyKey && <div><dt>Idempotency-Key</dt><dd className="mono">{stats.idempotencyKey}</dd></div>}
        </dl>
      )}
    </section>
  );
}
