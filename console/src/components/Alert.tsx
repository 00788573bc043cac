export function Alert({ error }: { error: Error | string | null }) {
  if (!error) return null;
  return (
    <p role="alert" className="alert">
      {typeof error === "string" ? error : error.message}
    </p>
  );
}
