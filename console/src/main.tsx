import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { useSession } from "./api";
import { App } from "./App";
import { handOverToOpener, Session } from "./auth/session";
import { loadConfig } from "./config";
import "./styles.css";

const root = createRoot(document.getElementById("root")!);

async function start(): Promise<void> {
  // The sign-in popup's callback: hand the code to the console that opened it, and close.
  if (location.pathname === "/console/callback" && handOverToOpener()) return;
  const config = await loadConfig();
  const session = new Session(config.auth);
  useSession(session);
  window.addEventListener("message", (event) => void session.receive(event).catch(console.error));
  root.render(
    <StrictMode>
      <App config={config} session={session} />
    </StrictMode>,
  );
}

start().catch((error: Error) => {
  root.render(
    <p role="alert" className="alert">
      {error.message}
    </p>,
  );
});
