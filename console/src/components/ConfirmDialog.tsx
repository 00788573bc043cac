import { useEffect, useRef, useState, type ReactElement } from "react";

export interface Confirmation {
  title: string;
  message: string;
  action: string; // the confirm button's label
  danger?: boolean;
  run: () => Promise<unknown>;
}

/** A modal that asks before an action, then runs it and shows the gateway's error if it fails. */
export function ConfirmDialog({ ask, onDone }: { ask: Confirmation | null; onDone: () => void }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    const element = dialog.current;
    if (!element) return;
    if (ask && !element.open) {
      setError(null);
      element.showModal();
    } else if (!ask && element.open) element.close();
  }, [ask]);

  const confirm = async () => {
    if (!ask) return;
    setBusy(true);
    setError(null);
    try {
      await ask.run();
      onDone();
    } catch (caught) {
      setError((caught as Error).message);
    } finally {
      setBusy(false);
    }
  };

  return (
    <dialog ref={dialog} aria-labelledby="confirm-title" onCancel={onDone} className="dialog">
      {ask && (
        <form method="dialog" onSubmit={(event) => (event.preventDefault(), void confirm())}>
          <h2 id="confirm-title">{ask.title}</h2>
          <p>{ask.message}</p>
          {error && (
            <p role="alert" className="alert">
              {error}
            </p>
          )}
          <div className="actions">
            <button type="button" onClick={onDone} disabled={busy}>
              Cancel
            </button>
            <button type="submit" className={ask.danger ? "danger" : "primary"} disabled={busy} autoFocus>
              {ask.action}
            </button>
          </div>
        </form>
      )}
    </dialog>
  );
}

/** A page's confirmations: `confirm` asks, then runs the action and `after` (the page's
 * refresh); `dialog` is what the page renders for them. */
export function useConfirmation(after: () => Promise<unknown>): {
  confirm: (confirmation: Confirmation) => void;
  dialog: ReactElement;
} {
  const [ask, setAsk] = useState<Confirmation | null>(null);
  const confirm = (confirmation: Confirmation) =>
    setAsk({ ...confirmation, run: async () => (await confirmation.run(), await after()) });
  return { confirm, dialog: <ConfirmDialog ask={ask} onDone={() => setAsk(null)} /> };
}
