/// <reference types="vitest/config" />
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// Served by the gateway at /console (app/api/console.py); `npm run dev` proxies the API to a
// gateway on :8000.
export default defineConfig({
  base: "/console/",
  plugins: [react()],
  build: { outDir: "dist", emptyOutDir: true, assetsInlineLimit: 0, sourcemap: false },
  server: {
    proxy: Object.fromEntries(
      ["/v1", "/admin", "/oauth", "/.well-known", "/console/config.json", "/sync"].map((path) => [
        path,
        "http://127.0.0.1:8000",
      ]),
    ),
  },
  test: { environment: "jsdom", include: ["src/**/*.test.{ts,tsx}"] },
});
