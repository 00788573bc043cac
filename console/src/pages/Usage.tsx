// Per-tenant requests, tokens, errors and sheds over time, and the SLOs' burn rates
// (GET /admin/usage: this gateway's counts, or its region's through Redis).
import { useState } from "react";
import { getJson } from "../api";
import { Alert } from "../components/Alert";
import { LineChart, type Series } from "../components/LineChart";
import { usePolling } from "../hooks";

type Counter = "requests" | "tokens" | "errors" | "shed";

interface SloWindow {
  window: string;
  events: number;
  ratio: number;
  burn_rate: number;
}

export interface UsageReport {
  region: string;
  minutes: number[]; // each minute's start, seconds since the epoch
  tenants: Record<string, Record<Counter, number[]>>;
  slos: Array<{ name: string; description: string; objective: number; windows: SloWindow[] }>;
}

const SPANS = { "15 minutes": 15, "1 hour": 60, "6 hours": 360, "24 hours": 1440 } as const;
const COLORS = ["#2a56b8", "#b83a2a", "#1f8a4c", "#8a5a00", "#6b3fa0", "#5b6475"];
const TOP = 5;
const REFRESH_MS = 5000;

const total = (values: number[]) => values.reduce((sum, value) => sum + value, 0);

/** The busiest tenants by `counter`, the rest summed as "others", one series each. */
export function seriesOf(report: UsageReport, counter: Counter): Series[] {
  const ranked = Object.entries(report.tenants).sort(([, a], [, b]) => total(b.requests) - total(a.requests));
  const shown = ranked.slice(0, TOP);
  const rest = ranked.slice(TOP);
  const lines: Array<[string, number[]]> = shown.map(([tenant, counts]) => [tenant, counts[counter]]);
  if (rest.length) {
    lines.push(["others", report.minutes.map((_, i) => total(rest.map(([, counts]) => counts[counter][i] ?? 0)))]);
  }
  return lines.map(([name, values], index) => ({
    name,
    color: COLORS[index % COLORS.length]!,
    points: values.map((value, i) => [report.minutes[i]!, value] as [number, number]),
  }));
}

/** How an SLO's burn rate reads: over 14.4 pages, over 1 eats the budget early. */
export function burnTone(rate: number): "ok" | "warn" | "bad" {
  return rate >= 14.4 ? "bad" : rate > 1 ? "warn" : "ok";
}

const clock = (seconds: number) =>
  new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

export function Usage() {
  const [span, setSpan] = useState<number>(60);
  const usage = usePolling(
    (signal) => getJson<UsageReport>(`/admin/usage?minutes=${span}`, signal),
    REFRESH_MS,
    String(span),
  );
  const report = usage.data;
  const tenants = report ? Object.entries(report.tenants).sort(([, a], [, b]) => total(b.requests) - total(a.requests)) : [];
  return (
    <section aria-labelledby="usage-title">
      <h1 id="usage-title">Usage and SLOs</h1>
      <div className="controls">
        <label>
          Period
          <select value={span} onChange={(event) => setSpan(Number(event.target.value))}>
            {Object.entries(SPANS).map(([label, minutes]) => (
              <option key={minutes} value={minutes}>
                {label}
              </option>
            ))}
          </select>
        </label>
      </div>
      <Alert error={usage.error} />
      {report && (
        <>
          <section className="card" aria-label="Service level objectives">
            <h2>Service level objectives</h2>
            <div className="table-wrap">
              <table>
                <caption className="sr-only">Burn rates: how many times faster than allowed each budget is spent</caption>
                <thead>
                  <tr>
                    <th scope="col">Objective</th>
                    {report.slos[0]?.windows.map((w) => (
                      <th scope="col" key={w.window}>
                        Burn {w.window}
                      </th>
                    ))}
                  </tr>
                </thead>
                <tbody>
                  {report.slos.map((slo) => (
                    <tr key={slo.name} aria-label={`SLO ${slo.name}`}>
                      <th scope="row">
                        {slo.name}
                        <br />
                        <span className="muted small">
                          {(slo.objective * 100).toFixed(1)} % of {slo.description}
                        </span>
                      </th>
                      {slo.windows.map((w) => (
                        <td key={w.window}>
                          <span className={`pill ${burnTone(w.burn_rate)}`}>{w.burn_rate.toFixed(2)}×</span>
                          <br />
                          <span className="muted small">
                            {(w.ratio * 100).toFixed(2)} % of {w.events}
                          </span>
                        </td>
                      ))}
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          </section>
          <LineChart title="Requests per minute" xLabel="time" formatX={clock} series={seriesOf(report, "requests")} />
          <LineChart title="Tokens per minute" xLabel="time" formatX={clock} series={seriesOf(report, "tokens")} />
          <LineChart title="Errors per minute" xLabel="time" formatX={clock} series={seriesOf(report, "errors")} />
          <LineChart title="Sheds per minute" xLabel="time" formatX={clock} series={seriesOf(report, "shed")} />
          <section className="card" aria-label="Tenants">
            <h2>Tenants</h2>
            {tenants.length === 0 && <p className="muted">No requests in this period.</p>}
            {tenants.length > 0 && (
              <div className="table-wrap">
                <table>
                  <caption className="sr-only">Each tenant's totals over the period</caption>
                  <thead>
                    <tr>
                      <th scope="col">Tenant</th>
                      <th scope="col">Requests</th>
                      <th scope="col">Tokens</th>
                      <th scope="col">Errors</th>
                      <th scope="col">Sheds</th>
                    </tr>
                  </thead>
                  <tbody>
                    {tenants.map(([tenant, counts]) => (
                      <tr key={tenant} aria-label={`Tenant ${tenant}`}>
                        <th scope="row">{tenant}</th>
                        <td>{total(counts.requests)}</td>
                        <td>{total(counts.tokens)}</td>
                        <td>{total(counts.errors)}</td>
                        <td>{total(counts.shed)}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            )}
          </section>
        </>
      )}
    </section>
  );
}
