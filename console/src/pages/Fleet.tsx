// Regions → pools → replicas, refreshed every two seconds, with the admin API's actions
// (app/api/admin.py): add a replica, drain, undrain and remove one, each confirmed first.
import { useState } from "react";
import { getJson, sendJson } from "../api";
import { Alert } from "../components/Alert";
import { useConfirmation, type Confirmation } from "../components/ConfirmDialog";
import { usePolling } from "../hooks";

export interface Replica {
  id: string;
  url: string;
  healthy: boolean;
  draining: boolean;
  removing?: boolean;
  models: string[];
  in_flight: number;
  engine_running: number | null;
  engine_waiting: number | null;
  active_adapters: string[];
  rtt_ms: number | null;
  last_error: string | null;
  breaker: "closed" | "half_open" | "open" | string;
  ejected_for_s: number | null;
}

export interface Pool {
  name: string;
  region: string;
  kind: string;
  max_load: number | null;
  healthy_replicas: number;
  replicas: Replica[];
}

interface Pools {
  region: string;
  pools: Pool[];
}

const REFRESH_MS = 2000;

export function stateOf(replica: Replica): { label: string; tone: "ok" | "warn" | "bad" } {
  if (replica.removing) return { label: "removing", tone: "warn" };
  if (replica.draining) return { label: "draining", tone: "warn" };
  if (replica.breaker === "open") return { label: "ejected", tone: "bad" };
  return replica.healthy ? { label: "healthy", tone: "ok" } : { label: "unhealthy", tone: "bad" };
}

export function byRegion(pools: Pool[], home: string): Array<[string, Pool[]]> {
  const regions = new Map<string, Pool[]>();
  for (const pool of pools) regions.set(pool.region, [...(regions.get(pool.region) ?? []), pool]);
  return [...regions.entries()].sort(([a], [b]) => (a === home ? -1 : b === home ? 1 : a.localeCompare(b)));
}

const path = (pool: string, replica?: string) =>
  `/admin/pools/${encodeURIComponent(pool)}/replicas` + (replica ? `/${encodeURIComponent(replica)}` : "");

export function Fleet() {
  const fleet = usePolling((signal) => getJson<Pools>("/admin/pools", signal), REFRESH_MS);
  const { confirm: act, dialog } = useConfirmation(fleet.refresh);

  return (
    <section aria-labelledby="fleet-title">
      <h1 id="fleet-title">Fleet</h1>
      <p className="muted">Regions, pools and replicas as this gateway sees them, refreshed every two seconds.</p>
      <Alert error={fleet.error} />
      {fleet.data === null && !fleet.error && <p>Loading…</p>}
      {fleet.data &&
        byRegion(fleet.data.pools, fleet.data.region).map(([region, pools]) => (
          <section key={region} className="region" aria-label={`Region ${region}`}>
            <h2>
              Region {region}
              {region === fleet.data!.region && <span className="badge">this gateway</span>}
            </h2>
            {pools.map((pool) => (
              <PoolCard key={pool.name} pool={pool} act={act} />
            ))}
          </section>
        ))}
      {dialog}
    </section>
  );
}

function PoolCard({ pool, act }: { pool: Pool; act: (c: Confirmation) => void }) {
  const [url, setUrl] = useState("");
  return (
    <article className="card" aria-label={`Pool ${pool.name}`}>
      <header className="card-head">
        <h3>{pool.name}</h3>
        <span className="muted">
          {pool.kind} · {pool.healthy_replicas}/{pool.replicas.length} healthy
          {pool.max_load !== null && ` · max load ${pool.max_load}`}
        </span>
      </header>
      <div className="table-wrap">
        <table>
          <caption className="sr-only">Replicas of pool {pool.name}</caption>
          <thead>
            <tr>
              <th scope="col">Replica</th>
              <th scope="col">State</th>
              <th scope="col">Load</th>
              <th scope="col">Queue</th>
              <th scope="col">Breaker</th>
              <th scope="col">Round trip</th>
              <th scope="col">Adapters</th>
              <th scope="col">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {pool.replicas.map((replica) => (
              <ReplicaRow key={replica.id} pool={pool} replica={replica} act={act} />
            ))}
          </tbody>
        </table>
      </div>
      <form
        className="inline-form"
        onSubmit={(event) => {
          event.preventDefault();
          const target = url.trim();
          act({
            title: `Add a replica to ${pool.name}`,
            message: `Probe ${target} and add it to pool ${pool.name} once it answers.`,
            action: "Add replica",
            run: async () => {
              await sendJson("POST", path(pool.name), { url: target });
              setUrl("");
            },
          });
        }}
      >
        <label htmlFor={`add-${pool.name}`}>Replica URL</label>
        <input
          id={`add-${pool.name}`}
          type="url"
          required
          placeholder="http://10.0.0.7:8000"
          value={url}
          onChange={(event) => setUrl(event.target.value)}
        />
        <button type="submit">Add replica</button>
      </form>
    </article>
  );
}

function ReplicaRow({ pool, replica, act }: { pool: Pool; replica: Replica; act: (c: Confirmation) => void }) {
  const state = stateOf(replica);
  const load = pool.max_load ? `${replica.in_flight}/${pool.max_load}` : String(replica.in_flight);
  const toggle = replica.draining
    ? { action: "Undrain", effect: "takes new requests again." }
    : { action: "Drain", effect: "takes no new requests; those in flight finish." };
  return (
    <tr aria-label={`Replica ${replica.id}`}>
      <th scope="row">
        <span className="mono">{replica.id}</span>
        <br />
        <span className="muted small">{replica.url}</span>
        {replica.last_error && <span className="muted small error-text"> · {replica.last_error}</span>}
      </th>
      <td>
        <span className={`pill ${state.tone}`}>{state.label}</span>
      </td>
      <td>{load}</td>
      <td>{replica.engine_waiting ?? "–"}</td>
      <td>
        {replica.breaker.replace("_", "-")}
        {replica.ejected_for_s !== null && ` (${replica.ejected_for_s} s)`}
      </td>
      <td>{replica.rtt_ms === null ? "–" : `${replica.rtt_ms} ms`}</td>
      <td>{replica.active_adapters.length ? replica.active_adapters.join(", ") : "–"}</td>
      <td>
        <div className="row-actions">
          <button
            type="button"
            onClick={() =>
              act({
                title: `${toggle.action} ${replica.id}`,
                message: `${replica.url} ${toggle.effect}`,
                action: toggle.action,
                run: () => sendJson("POST", `${path(pool.name, replica.id)}/${toggle.action.toLowerCase()}`),
              })
            }
          >
            {toggle.action}
          </button>
          <button
            type="button"
            className="danger"
            onClick={() =>
              act({
                title: `Remove ${replica.id}`,
                message: `${replica.url} leaves pool ${pool.name} once its requests in flight finish.`,
                action: "Remove",
                danger: true,
                run: () => sendJson("DELETE", path(pool.name, replica.id)),
              })
            }
          >
            Remove
          </button>
        </div>
      </td>
    </tr>
  );
}
