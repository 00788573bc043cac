import { useCallback, useEffect, useRef, useState, useSyncExternalStore } from "react";
import type { Session } from "./auth/session";

/** Re-renders when the session changes (signed in, expired, signed out). */
export function useSessionState(session: Session): number {
  const version = useRef(0);
  const subscribe = useCallback(
    (listener: () => void) =>
      session.subscribe(() => {
        version.current += 1;
        listener();
      }),
    [session],
  );
  return useSyncExternalStore(subscribe, () => version.current);
}

export interface Polled<T> {
  data: T | null;
  error: Error | null;
  refresh: () => Promise<void>;
}

/** `load` now and every `intervalMs` (while the page is visible), and at once when `key`
 * changes (what it loads); `refresh` loads at once. */
export function usePolling<T>(load: (signal: AbortSignal) => Promise<T>, intervalMs: number, key = ""): Polled<T> {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const loadRef = useRef(load);
  loadRef.current = load;
  const controller = useRef<AbortController | null>(null);

  const refresh = useCallback(async () => {
    controller.current?.abort();
    const current = new AbortController();
    controller.current = current;
    try {
      const value = await loadRef.current(current.signal);
      if (!current.signal.aborted) {
        setData(value);
        setError(null);
      }
    } catch (caught) {
      if (!current.signal.aborted) setError(caught as Error);
    }
  }, []);

  useEffect(() => {
    void refresh();
    const timer = window.setInterval(() => document.visibilityState === "visible" && void refresh(), intervalMs);
    return () => {
      window.clearInterval(timer);
      controller.current?.abort();
    };
  }, [refresh, intervalMs, key]);

  return { data, error, refresh };
}
