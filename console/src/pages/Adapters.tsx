// The sync registry (through the gateway's /sync/adapters relay): each adapter's versions,
// every region's contribution, the digest served and where it is loaded; publish an upload,
// retire an adapter, revoke a version; and each adapter's audit log.
import { useState } from "react";
import { getJson, sendJson, upload } from "../api";
import { Alert } from "../components/Alert";
import { useConfirmation } from "../components/ConfirmDialog";
import { usePolling } from "../hooks";
import { adapterArchive } from "../tar";

interface Version {
  digest: string;
  base_model: string;
  rank: number;
  revoked: boolean;
  published_by: string;
}

interface Contribution {
  version: string | null;
  weight: number;
  seq: number;
  live: boolean;
}

export interface Adapter {
  name: string;
  live: boolean;
  versions: Version[];
  contributions: Record<string, Contribution>;
  served: { digest: string; base_model: string; parts: Array<[string, string, number]> } | null;
  loaded: Record<string, string | null>;
  problem: string | null;
}

const REFRESH_MS = 3000;
const short = (digest: string | null | undefined) => (digest ? digest.slice(0, 12) : "–");
const path = (name: string) => `/sync/adapters/${encodeURIComponent(name)}`;

export function Adapters({ relayed }: { relayed: boolean }) {
  const registry = usePolling(
    (signal) => (relayed ? getJson<{ region: string; adapters: Adapter[] }>("/sync/adapters", signal) : Promise.resolve(null)),
    REFRESH_MS,
  );
  const { confirm: act, dialog } = useConfirmation(registry.refresh);
  const [audit, setAudit] = useState<{ name: string; events: Array<{ at: string; event: string }> } | null>(null);
  const [auditError, setAuditError] = useState<Error | null>(null);

  if (!relayed) {
    return (
      <section aria-labelledby="adapters-title">
        <h1 id="adapters-title">Adapters</h1>
        <p>This gateway relays to no sync sidecar: set its <code>sync_url</code> to the region's sidecar.</p>
      </section>
    );
  }
  const showAudit = async (name: string) => {
    setAuditError(null);
    try {
      setAudit(await getJson(`${path(name)}/audit`));
    } catch (caught) {
      setAuditError(caught as Error);
    }
  };

  const adapters = registry.data?.adapters ?? [];
  return (
    <section aria-labelledby="adapters-title">
      <h1 id="adapters-title">Adapters</h1>
      <p className="muted">
        The registry of region {registry.data?.region ?? "…"}'s sync sidecar, merged across regions, refreshed every
        three seconds.
      </p>
      <Alert error={registry.error} />
      <Publish onPublished={registry.refresh} />
      {registry.data && adapters.length === 0 && <p>No adapter is published yet.</p>}
      {adapters.map((adapter) => (
        <article key={adapter.name} className="card" aria-label={`Adapter ${adapter.name}`}>
          <header className="card-head">
            <h2 className="mono">{adapter.name}</h2>
            <span className={`pill ${adapter.live ? "ok" : "warn"}`}>{adapter.live ? "live" : "retired"}</span>
            <span className="muted">served {short(adapter.served?.digest)}</span>
            <span className="row-actions">
              <button type="button" onClick={() => void showAudit(adapter.name)}>
                Audit log
              </button>
              {adapter.live && (
                <button
                  type="button"
                  className="danger"
                  onClick={() =>
                    act({
                      title: `Retire ${adapter.name}`,
                      message: "Every region stops serving it; engines unload it.",
                      action: "Retire",
                      danger: true,
                      run: () => sendJson("DELETE", path(adapter.name)),
                    })
                  }
                >
                  Retire
                </button>
              )}
            </span>
          </header>
          {adapter.problem && <p className="alert">{adapter.problem}</p>}
          <div className="table-wrap">
            <table>
              <caption>Contributions</caption>
              <thead>
                <tr>
                  <th scope="col">Region</th>
                  <th scope="col">Version</th>
                  <th scope="col">Weight</th>
                  <th scope="col">Sequence</th>
                </tr>
              </thead>
              <tbody>
                {Object.entries(adapter.contributions).map(([region, part]) => (
                  <tr key={region}>
                    <th scope="row">{region}</th>
                    <td className="mono">{part.live ? short(part.version) : "withdrawn"}</td>
                    <td>{part.weight}</td>
                    <td>{part.seq}</td>
                  </tr>
                ))}
              </tbody>
            </table>
            <table>
              <caption>Versions</caption>
              <thead>
                <tr>
                  <th scope="col">Digest</th>
                  <th scope="col">Base model</th>
                  <th scope="col">Rank</th>
                  <th scope="col">Published by</th>
                  <th scope="col">
                    <span className="sr-only">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {adapter.versions.map((version) => (
                  <tr key={version.digest}>
                    <th scope="row" className="mono">
                      {short(version.digest)}
                    </th>
                    <td>{version.base_model}</td>
                    <td>{version.rank}</td>
                    <td>{version.published_by}</td>
                    <td>
                      {version.revoked ? (
                        <span className="pill bad">revoked</span>
                      ) : (
                        <button
                          type="button"
                          className="danger"
                          onClick={() =>
                            act({
                              title: `Revoke version ${short(version.digest)}`,
                              message: `No region serves this version of ${adapter.name} again.`,
                              action: "Revoke",
                              danger: true,
                              run: () => sendJson("DELETE", `${path(adapter.name)}/versions/${version.digest}`),
                            })
                          }
                        >
                          Revoke
                        </button>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <p className="small">
            Loaded:{" "}
            {Object.keys(adapter.loaded).length === 0
              ? "this region's sidecar knows no engine"
              : Object.entries(adapter.loaded)
                  .map(([engine, digest]) => `${engine} ${digest ? short(digest) : "not loaded"}`)
                  .join(" · ")}
          </p>
        </article>
      ))}
      {(audit || auditError) && (
        <section aria-label="Audit log" className="card">
          <h2>Audit log{audit && <span className="mono"> · {audit.name}</span>}</h2>
          <Alert error={auditError} />
          {audit && (
            <ol className="audit">
              {audit.events.map((row, index) => (
                <li key={index}>
                  <span className="mono muted">{row.at}</span> {row.event}
                </li>
              ))}
            </ol>
          )}
          <button type="button" onClick={() => (setAudit(null), setAuditError(null))}>
            Close
          </button>
        </section>
      )}
      {dialog}
    </section>
  );
}

function Publish({ onPublished }: { onPublished: () => Promise<void> }) {
  const [name, setName] = useState("");
  const [weight, setWeight] = useState(1);
  const [baseModel, setBaseModel] = useState("");
  const [files, setFiles] = useState<File[]>([]);
  const [progress, setProgress] = useState<number | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const [done, setDone] = useState<string | null>(null);

  const publish = async () => {
    setError(null);
    setDone(null);
    setProgress(0);
    try {
      const archive = await adapterArchive(files);
      const query = new URLSearchParams({ name: name.trim(), weight: String(weight) });
      if (baseModel.trim()) query.set("base_model", baseModel.trim());
      const answer = await upload<{ name: string; published: string }>(`/sync/adapters?${query}`, archive, setProgress);
      setDone(`Published ${answer.name}: version ${short(answer.published)}.`);
      await onPublished();
    } catch (caught) {
      setError(caught as Error);
    } finally {
      setProgress(null);
    }
  };

  return (
    <form
      className="card publish"
      aria-label="Publish an adapter"
      onSubmit={(event) => {
        event.preventDefault();
        void publish();
      }}
    >
      <h2>Publish an adapter</h2>
      <div className="controls">
        <label>
          Name
          <input required value={name} onChange={(event) => setName(event.target.value)} placeholder="support-bot" />
        </label>
        <label>
          Weight
          <input type="number" min={0.01} step={0.01} value={weight}
            onChange={(event) => setWeight(Number(event.target.value))} />
        </label>
        <label>
          Base model
          <input value={baseModel} onChange={(event) => setBaseModel(event.target.value)}
            placeholder="from its config" />
        </label>
        <label>
          Adapter files
          <input type="file" multiple required accept=".json,.safetensors,.bin,.tar,.gz,.tgz"
            onChange={(event) => setFiles([...(event.target.files ?? [])])} />
        </label>
        <button type="submit" className="primary" disabled={progress !== null}>
          Publish
        </button>
      </div>
      <p className="muted small">The adapter folder's files (adapter_config.json and its weights), or one tar archive of them.</p>
      {progress !== null && <progress aria-label="Upload" value={progress} max={1} />}
      <Alert error={error} />
      {done && <p role="status">{done}</p>}
    </form>
  );
}
