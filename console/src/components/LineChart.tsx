// A small SVG line chart: one or more series over the same x axis, with a labelled figure.

export interface Series {
  name: string;
  points: Array<[number, number]>; // [x, y]
  color: string;
}

const WIDTH = 640;
const HEIGHT = 220;
const PAD = { left: 48, right: 12, top: 12, bottom: 28 };

function ticks(min: number, max: number, count = 4): number[] {
  if (max === min) return [min];
  return Array.from({ length: count + 1 }, (_, i) => min + ((max - min) * i) / count);
}

const short = (value: number) =>
  Math.abs(value) >= 1000 ? `${(value / 1000).toFixed(1)}k` : Number(value.toPrecision(3)).toString();

export function LineChart({
  title,
  series,
  xLabel,
  formatX = short,
}: {
  title: string;
  series: Series[];
  xLabel: string;
  formatX?: (x: number) => string;
}) {
  const all = series.flatMap((s) => s.points);
  if (all.length === 0) return <p className="muted">No data yet for {title.toLowerCase()}.</p>;
  const xs = all.map(([x]) => x);
  const ys = all.map(([, y]) => y);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(0, ...ys), Math.max(...ys) || 1];
  const sx = (x: number) => PAD.left + ((x - x0) / (x1 - x0 || 1)) * (WIDTH - PAD.left - PAD.right);
  const sy = (y: number) => HEIGHT - PAD.bottom - ((y - y0) / (y1 - y0 || 1)) * (HEIGHT - PAD.top - PAD.bottom);
  return (
    <figure className="chart">
      <svg viewBox={`0 0 ${WIDTH} ${HEIGHT}`} role="img" aria-label={title}>
        {ticks(y0, y1).map((y) => (
          <g key={`y${y}`}>
            <line x1={PAD.left} x2={WIDTH - PAD.right} y1={sy(y)} y2={sy(y)} className="grid" />
            <text x={PAD.left - 6} y={sy(y) + 4} textAnchor="end">
              {short(y)}
            </text>
          </g>
        ))}
        {ticks(x0, x1).map((x, i, all) => (
          <text key={`x${x}`} x={sx(x)} y={HEIGHT - 8} textAnchor={i === 0 ? "start" : i === all.length - 1 ? "end" : "middle"}>
            {formatX(x)}
          </text>
        ))}
        {series.map((s) => (
          <polyline
            key={s.name}
            fill="none"
            stroke={s.color}
            strokeWidth={2}
            points={s.points.map(([x, y]) => `${sx(x)},${sy(y)}`).join(" ")}
          />
        ))}
      </svg>
      <figcaption>
        {title} ({xLabel})
        {series.length > 1 &&
          series.map((s) => (
            <span key={s.name} className="legend">
              <span style={{ background: s.color }} aria-hidden="true" /> {s.name}
            </span>
          ))}
      </figcaption>
    </figure>
  );
}
