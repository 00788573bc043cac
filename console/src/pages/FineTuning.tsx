// Fine-tuning through the gateway's OpenAI-compatible API: upload a dataset (with progress),
// start a job, follow its status and training loss, cancel it, and chat with its model.
import { useEffect, useState } from "react";
import { getJson, sendJson, upload } from "../api";
import { Alert } from "../components/Alert";
import { useConfirmation } from "../components/ConfirmDialog";
import { LineChart } from "../components/LineChart";
import { usePolling } from "../hooks";
import { BASE, navigate } from "../router";

interface FileObject {
  id: string;
  filename: string;
  bytes: number;
  purpose: string;
}

export interface Job {
  id: string;
  model: string;
  status: string;
  fine_tuned_model: string | null;
  created_at: number;
  trained_tokens: number | null;
  error: { message?: string; code?: string } | null;
  hyperparameters?: Record<string, unknown>;
}

export interface JobEvent {
  id: string;
  created_at: number;
  level: string;
  message: string;
  type?: string;
  data?: { step?: number; train_loss?: number } | null;
}

interface Page<T> {
  data: T[];
  has_more: boolean;
}

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const REFRESH_MS = 2000;
const toneOf = (status: string) => (status === "succeeded" ? "ok" : FINISHED.has(status) ? "bad" : "warn");

/** The job's training loss by step, oldest first, from its `metrics` events. */
export function lossCurve(events: JobEvent[]): Array<[number, number]> {
  return events
    .filter((event) => event.type === "metrics" && typeof event.data?.step === "number" && typeof event.data?.train_loss === "number")
    .map((event) => [event.data!.step!, event.data!.train_loss!] as [number, number])
    .sort(([a], [b]) => a - b);
}

async function allEvents(job: string, signal: AbortSignal): Promise<JobEvent[]> {
  const events: JobEvent[] = [];
  let after: string | null = null;
  for (let page = 0; page < 5; page++) {
    const query = new URLSearchParams({ limit: "100", ...(after ? { after } : {}) });
    const found: Page<JobEvent> = await getJson(`/v1/fine_tuning/jobs/${encodeURIComponent(job)}/events?${query}`, signal);
    events.push(...found.data);
    if (!found.has_more || found.data.length === 0) break;
    after = found.data[found.data.length - 1]!.id;
  }
  return events;
}

export function FineTuning() {
  const jobs = usePolling((signal) => getJson<Page<Job>>("/v1/fine_tuning/jobs?limit=20", signal), REFRESH_MS);
  const files = usePolling((signal) => getJson<Page<FileObject>>("/v1/files?purpose=fine-tune", signal), 10_000);
  const [selected, setSelected] = useState<string | null>(null);
  const current = jobs.data?.data.find((job) => job.id === selected) ?? null;

  return (
    <section aria-labelledby="fine-tuning-title">
      <h1 id="fine-tuning-title">Fine-tuning</h1>
      <Alert error={jobs.error} />
      <div className="two-columns">
        <Dataset onUploaded={files.refresh} />
        <StartJob files={files.data?.data ?? []} onStarted={async (job) => (await jobs.refresh(), setSelected(job.id))} />
      </div>
      <section className="card" aria-label="Jobs">
        <h2>Jobs</h2>
        {jobs.data && jobs.data.data.length === 0 && <p className="muted">No job yet.</p>}
        {jobs.data && jobs.data.data.length > 0 && (
          <div className="table-wrap">
            <table>
              <caption className="sr-only">Your fine-tuning jobs, newest first</caption>
              <thead>
                <tr>
                  <th scope="col">Job</th>
                  <th scope="col">Base model</th>
                  <th scope="col">Status</th>
                  <th scope="col">Fine-tuned model</th>
                </tr>
              </thead>
              <tbody>
                {jobs.data.data.map((job) => (
                  <tr key={job.id} aria-selected={job.id === selected}>
                    <th scope="row">
                      <button type="button" className="link" onClick={() => setSelected(job.id)}>
                        {job.id}
                      </button>
                    </th>
                    <td>{job.model}</td>
                    <td>
                      <span className={`pill ${toneOf(job.status)}`}>
                        {job.status}
                      </span>
                    </td>
                    <td className="mono">{job.fine_tuned_model ?? "–"}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>
      {current && <JobDetail job={current} onChanged={jobs.refresh} />}
    </section>
  );
}

function Dataset({ onUploaded }: { onUploaded: () => Promise<void> }) {
  const [file, setFile] = useState<File | null>(null);
  const [progress, setProgress] = useState<number | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const send = async () => {
    if (!file) return;
    setError(null);
    setDone(null);
    setProgress(0);
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", file);
    try {
      const uploaded = await upload<FileObject>("/v1/files", form, setProgress);
      setDone(`Uploaded ${uploaded.filename} as ${uploaded.id}.`);
      await onUploaded();
    } catch (caught) {
      setError(caught as Error);
    } finally {
      setProgress(null);
    }
  };
  return (
    <form className="card" aria-label="Upload a dataset" onSubmit={(event) => (event.preventDefault(), void send())}>
      <h2>Upload a dataset</h2>
      <p className="muted small">Chat examples, one JSON object a line (OpenAI's fine-tuning format).</p>
      <label>
        Dataset file
        <input type="file" accept=".jsonl,.json,application/jsonl" required
          onChange={(event) => setFile(event.target.files?.[0] ?? null)} />
      </label>
      <button type="submit" className="primary" disabled={progress !== null || !file}>
        Upload
      </button>
      {progress !== null && <progress aria-label="Upload progress" value={progress} max={1} />}
      <Alert error={error} />
      {done && <p role="status">{done}</p>}
    </form>
  );
}

function StartJob({ files, onStarted }: { files: FileObject[]; onStarted: (job: Job) => Promise<void> }) {
  const [models, setModels] = useState<string[]>([]);
  const [model, setModel] = useState("");
  const [trainingFile, setTrainingFile] = useState("");
  const [suffix, setSuffix] = useState("");
  const [epochs, setEpochs] = useState(3);
  const [batchSize, setBatchSize] = useState(8);
  const [learningRate, setLearningRate] = useState(1);
  const [error, setError] = useState<Error | null>(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    getJson<Page<{ id: string }>>("/v1/models")
      .then((answer) => {
        const bases = answer.data.map((card) => card.id).filter((id) => !id.startsWith("ft:"));
        setModels(bases);
        setModel((chosen) => chosen || bases[0] || "");
      })
      .catch(setError);
  }, []);
  useEffect(() => setTrainingFile((chosen) => chosen || files[0]?.id || ""), [files]);

  const start = async () => {
    setBusy(true);
    setError(null);
    try {
      const hyperparameters = { n_epochs: epochs, batch_size: batchSize, learning_rate_multiplier: learningRate };
      const body: Record<string, unknown> = { model, training_file: trainingFile, hyperparameters };
      if (suffix.trim()) body.suffix = suffix.trim();
      await onStarted(await sendJson<Job>("POST", "/v1/fine_tuning/jobs", body));
    } catch (caught) {
      setError(caught as Error);
    } finally {
      setBusy(false);
    }
  };

  return (
    <form className="card" aria-label="Start a job" onSubmit={(event) => (event.preventDefault(), void start())}>
      <h2>Start a job</h2>
      <div className="controls">
        <label>
          Base model
          <select value={model} onChange={(event) => setModel(event.target.value)} required>
            {models.map((id) => <option key={id}>{id}</option>)}
          </select>
        </label>
        <label>
          Training file
          <select value={trainingFile} onChange={(event) => setTrainingFile(event.target.value)} required>
            {files.map((file) => (
              <option key={file.id} value={file.id}>
                {file.filename} ({file.id})
              </option>
            ))}
          </select>
        </label>
        <label>
          Suffix
          <input value={suffix} maxLength={64} onChange={(event) => setSuffix(event.target.value)} placeholder="support" />
        </label>
        <label>
          Epochs
          <input type="number" min={1} max={50} value={epochs} onChange={(event) => setEpochs(Number(event.target.value))} />
        </label>
        <label>
          Batch size
          <input type="number" min={1} max={256} value={batchSize}
            onChange={(event) => setBatchSize(Number(event.target.value))} />
        </label>
        <label>
          Learning rate multiplier
          <input type="number" min={0.01} step={0.01} value={learningRate}
            onChange={(event) => setLearningRate(Number(event.target.value))} />
        </label>
      </div>
      <button type="submit" className="primary" disabled={busy || !model || !trainingFile}>
        Start job
      </button>
      <Alert error={error} />
    </form>
  );
}

function JobDetail({ job, onChanged }: { job: Job; onChanged: () => Promise<void> }) {
  const events = usePolling((signal) => allEvents(job.id, signal), REFRESH_MS);
  const { confirm, dialog } = useConfirmation(onChanged);
  const curve = lossCurve(events.data ?? []);
  const latest = (events.data ?? []).slice(0, 5);
  return (
    <section className="card" aria-label={`Job ${job.id}`}>
      <header className="card-head">
        <h2 className="mono">{job.id}</h2>
        <span className={`pill ${toneOf(job.status)}`} role="status" aria-label="Job status">
          {job.status}
        </span>
        <span className="row-actions">
          {!FINISHED.has(job.status) && (
            <button type="button" className="danger" onClick={() => confirm({
              title: `Cancel ${job.id}`, message: "Training stops at its next step; nothing is published.",
              action: "Cancel job", danger: true,
              run: () => sendJson("POST", `/v1/fine_tuning/jobs/${encodeURIComponent(job.id)}/cancel`),
            })}>
              Cancel job
            </button>
          )}
          {job.status === "succeeded" && job.fine_tuned_model && (
            <a className="button primary" href={`${BASE}/playground?model=${encodeURIComponent(job.fine_tuned_model)}`}
              onClick={(event) => (event.preventDefault(), navigate(`/playground?model=${encodeURIComponent(job.fine_tuned_model!)}`))}>
              Open in playground
            </a>
          )}
        </span>
      </header>
      {job.error?.message && <p className="alert">{job.error.message}</p>}
      <LineChart title="Training loss" xLabel="step" series={[{ name: "train_loss", points: curve, color: "#2a56b8" }]} />
      <Alert error={events.error} />
      <h3>Latest events</h3>
      <ul className="audit">
        {latest.map((event) => (
          <li key={event.id}>{event.message}</li>
        ))}
      </ul>
      {dialog}
    </section>
  );
}
