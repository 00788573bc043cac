// Paths under /console/, pushed to the history; the gateway answers every one with the app.
import { useSyncExternalStore } from "react";

export const BASE = "/console";

const subscribe = (listener: () => void) => {
  window.addEventListener("popstate", listener);
  return () => window.removeEventListener("popstate", listener);
};

/** The page's path under /console (e.g. "/fleet") and its query. */
export function useLocation(): { path: string; query: URLSearchParams } {
  const href = useSyncExternalStore(subscribe, () => location.pathname + location.search);
  const url = new URL(href, location.origin);
  const path = url.pathname.startsWith(BASE) ? url.pathname.slice(BASE.length) || "/" : url.pathname;
  return { path, query: url.searchParams };
}

export function navigate(to: string, replace = false): void {
  const target = to.startsWith(BASE) ? to : BASE + to;
  if (replace) history.replaceState(null, "", target);
  else history.pushState(null, "", target);
  window.dispatchEvent(new PopStateEvent("popstate"));
}
