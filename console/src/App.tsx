import { useEffect, useRef, useState, type ReactElement } from "react";
import { SignInError, type Session } from "./auth/session";
import { Alert } from "./components/Alert";
import type { ConsoleConfig } from "./config";
import { useSessionState } from "./hooks";
import { Adapters } from "./pages/Adapters";
import { FineTuning } from "./pages/FineTuning";
import { Fleet } from "./pages/Fleet";
import { Playground } from "./pages/Playground";
import { Usage } from "./pages/Usage";
import { BASE, navigate, useLocation } from "./router";

interface Page {
  path: string;
  label: string;
  scopes: string[]; // any one of them offers the page
  render: (config: ConsoleConfig) => ReactElement;
}

export const PAGES: Page[] = [
  { path: "/fleet", label: "Fleet", scopes: ["admin"], render: () => <Fleet /> },
  { path: "/playground", label: "Playground", scopes: ["chat"], render: () => <Playground /> },
  { path: "/adapters", label: "Adapters", scopes: ["adapters", "admin"], render: (c) => <Adapters relayed={c.sync} /> },
  { path: "/fine-tuning", label: "Fine-tuning", scopes: ["finetune"], render: () => <FineTuning /> },
  { path: "/usage", label: "Usage", scopes: ["admin"], render: () => <Usage /> },
];

export function offered(session: Session): Page[] {
  return PAGES.filter((page) => page.scopes.some((scope) => session.may(scope)));
}

export function App({ config, session }: { config: ConsoleConfig; session: Session }) {
  useSessionState(session);
  const { path } = useLocation();
  const signedIn = !session.required || session.current !== null;
  const pages = offered(session);
  const page = pages.find((candidate) => candidate.path === path);
  const fallback = signedIn && path !== "/callback" && !page ? pages[0]?.path : undefined;
  useEffect(() => {
    if (fallback) navigate(fallback, true);
  }, [fallback]);

  if (path === "/callback") return <Callback session={session} />;
  if (!signedIn) return <SignIn session={session} path={path} />;

  return (
    <div className="shell">
      <a href="#main" className="skip">
        Skip to content
      </a>
      <header className="top">
        <span className="brand">Switchyard</span>
        <span className="muted">region {config.region}</span>
        {session.current && (
          <span className="who">
            <span aria-label="Signed in as">{session.current.subject}</span>
            <button type="button" onClick={() => signOut(session)}>
              Sign out
            </button>
          </span>
        )}
      </header>
      <nav aria-label="Pages" className="nav">
        <ul>
          {pages.map((candidate) => (
            <li key={candidate.path}>
              <a
                href={BASE + candidate.path}
                aria-current={candidate === page ? "page" : undefined}
                onClick={(event) => {
                  if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
                  event.preventDefault();
                  navigate(candidate.path);
                }}
              >
                {candidate.label}
              </a>
            </li>
          ))}
        </ul>
      </nav>
      <main id="main" tabIndex={-1}>
        {page ? page.render(config) : pages.length === 0 && <p>Your token grants none of the console's pages.</p>}
      </main>
      {session.expired && <Expired session={session} />}
    </div>
  );
}

/** Forget the token, then leave for the provider's sign-out where it keeps a session too. */
function signOut(session: Session): void {
  const provider = session.signOut();
  if (provider) location.assign(provider);
  else navigate("/");
}

function SignIn({ session, path }: { session: Session; path: string }) {
  const [error, setError] = useState<string | null>(null);
  return (
    <main className="sign-in" id="main">
      <h1>Switchyard console</h1>
      <p>Sign in to see the fleet, try models, and fine-tune and roll out adapters.</p>
      <Alert error={error} />
      <button
        type="button"
        className="primary"
        autoFocus
        onClick={() => session.signInByRedirect(path === "/" ? "/" : path + location.search).catch((e) => setError(e.message))}
      >
        Sign in
      </button>
    </main>
  );
}

function Callback({ session }: { session: Session }) {
  const [error, setError] = useState<string | null>(null);
  const started = useRef(false);
  useEffect(() => {
    if (started.current) return; // a code is good once
    started.current = true;
    session
      .completeRedirect(location.search)
      .then((returnTo) => navigate(returnTo || "/", true))
      .catch((caught: Error) => setError(caught instanceof SignInError ? caught.message : String(caught)));
  }, [session]);
  return (
    <main className="sign-in" id="main">
      <h1>Signing in…</h1>
      <Alert error={error} />
      {error && (
        <button type="button" onClick={() => navigate("/", true)}>
          Back to the console
        </button>
      )}
    </main>
  );
}

/** The token expired or was refused: sign in again in a popup; this page keeps its state. */
function Expired({ session }: { session: Session }) {
  const [error, setError] = useState<string | null>(null);
  return (
    <div className="backdrop">
      <div role="alertdialog" aria-modal="true" aria-labelledby="expired-title" className="dialog open">
        <h2 id="expired-title">Your session has expired</h2>
        <p>Sign in again to go on; this page keeps what you were doing.</p>
        <Alert error={error} />
        <button
          type="button"
          className="primary"
          autoFocus
          onClick={() => session.signInByPopup().catch((e: Error) => setError(e.message))}
        >
          Sign in again
        </button>
      </div>
    </div>
  );
}
