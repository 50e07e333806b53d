// Test-only better-auth server (JWT plugin, PostgreSQL via the pure-JS `pg`
// driver) for Portcullis integration tests. Configured only through
// environment variables; see README.md. Prints exactly one line to stdout,
// `LISTENING <port>`, once the tables exist and requests can be served.
// Everything else (better-auth logs, errors) goes to stderr.

import { randomBytes } from "node:crypto";
import http from "node:http";
import process from "node:process";

import pg from "pg";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import { bearer, jwt } from "better-auth/plugins";

// ES384 is not in better-auth's typed JWKOptions, but keyPairConfig.alg is handed
// straight to jose, so it works at runtime (verified with 1.7.29).
const SUPPORTED_ALGS = ["EdDSA", "ES256", "ES384", "ES512", "RS256", "PS256"];
const DEFAULT_SECRET = "portcullis-better-auth-fixture-test-only-secret-0123456789";

function fail(message) {
  process.stderr.write(`better-auth fixture: ${message}\n`);
  process.exit(2);
}

function positiveInt(name) {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return undefined;
  if (!/^\d+$/.test(raw) || Number(raw) <= 0) fail(`${name} must be a positive integer (seconds), got ${JSON.stringify(raw)}`);
  return Number(raw);
}

// ---- configuration --------------------------------------------------------

const databaseUrl = process.env.DATABASE_URL || "postgres://postgres@127.0.0.1:5432/test";

const schemaFromEnv = process.env.BA_SCHEMA;
const schema = schemaFromEnv || `ba_${process.pid}_${randomBytes(4).toString("hex")}`;
if (!/^[a-z_][a-z0-9_]{0,62}$/.test(schema)) {
  fail(`BA_SCHEMA must match ^[a-z_][a-z0-9_]{0,62}$, got ${JSON.stringify(schema)}`);
}
// Drop the schema on clean shutdown when we invented its name, or when asked.
const dropSchemaOnExit = process.env.BA_DROP_SCHEMA ? process.env.BA_DROP_SCHEMA === "1" : !schemaFromEnv;

const alg = process.env.BA_ALG || "EdDSA";
if (!SUPPORTED_ALGS.includes(alg)) fail(`BA_ALG must be one of ${SUPPORTED_ALGS.join(", ")}, got ${JSON.stringify(alg)}`);

const rotationSecs = positiveInt("BA_ROTATION_SECS");
const graceSecs = positiveInt("BA_GRACE_SECS");

let expirationTime = process.env.BA_JWT_EXPIRES || undefined;
// A bare number would be taken by better-auth as an absolute `exp` value;
// treat it as a lifetime in seconds instead.
if (expirationTime && /^\d+$/.test(expirationTime)) expirationTime = `${expirationTime}s`;

const secret = process.env.BETTER_AUTH_SECRET || DEFAULT_SECRET;
if (secret.length < 32) fail("BETTER_AUTH_SECRET must be at least 32 characters");

const host = process.env.BA_HOST || "127.0.0.1";
const listenPort = process.env.BA_PORT ? Number(process.env.BA_PORT) : 0;

// ---- database --------------------------------------------------------------

async function createSchema() {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    await client.query(`CREATE SCHEMA IF NOT EXISTS "${schema}"`);
  } finally {
    await client.end();
  }
}

async function dropSchema() {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  } finally {
    await client.end();
  }
}

// ---- main ------------------------------------------------------------------

let handler = null;
const server = http.createServer((req, res) => {
  if (!handler) {
    res.writeHead(503, { "content-type": "text/plain" });
    res.end("starting\n");
    return;
  }
  handler(req, res).catch((err) => {
    process.stderr.write(`better-auth fixture: handler error: ${err?.stack || err}\n`);
    if (!res.headersSent) res.writeHead(500);
    res.end();
  });
});

let pool = null;
let shuttingDown = false;

async function shutdown(signal) {
  if (shuttingDown) return;
  shuttingDown = true;
  process.stderr.write(`better-auth fixture: ${signal}, shutting down\n`);
  const force = setTimeout(() => process.exit(0), 3000);
  force.unref();
  server.closeAllConnections?.();
  await new Promise((resolve) => server.close(() => resolve()));
  try {
    if (pool) await pool.end();
    if (dropSchemaOnExit) await dropSchema();
  } catch (err) {
    process.stderr.write(`better-auth fixture: cleanup error: ${err?.message || err}\n`);
  }
  process.exit(0);
}
process.on("SIGTERM", () => void shutdown("SIGTERM"));
process.on("SIGINT", () => void shutdown("SIGINT"));
// A broken stdout/stderr pipe (the test runner died) must not crash us
// before cleanup.
process.stdout.on("error", () => {});
process.stderr.on("error", () => {});
// If the process that spawned us goes away without sending SIGTERM (test
// panicked or was killed), shut down instead of lingering as an orphan.
const initialPpid = process.ppid;
setInterval(() => {
  if (process.ppid !== initialPpid) void shutdown("parent exited");
}, 500).unref();

async function main() {
  await createSchema();

  // Listen first so baseURL can carry the OS-chosen port.
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(listenPort, host, resolve);
  });
  const { port } = server.address();
  const baseURL = `http://${host}:${port}`;
  const issuer = process.env.BA_ISSUER || baseURL;
  const audienceRaw = process.env.BA_AUDIENCE || baseURL;
  const audience = audienceRaw.includes(",") ? audienceRaw.split(",").map((s) => s.trim()) : audienceRaw;

  pool = new pg.Pool({
    connectionString: databaseUrl,
    options: `-c search_path=${schema}`,
    max: 5,
  });
  pool.on("error", (err) => process.stderr.write(`better-auth fixture: pg pool error: ${err.message}\n`));

  const jwks = { keyPairConfig: { alg } };
  if (rotationSecs) {
    jwks.rotationInterval = rotationSecs; // seconds
    jwks.gracePeriod = graceSecs ?? rotationSecs; // seconds
  } else if (graceSecs) {
    jwks.gracePeriod = graceSecs;
  }

  const options = {
    appName: "portcullis-test",
    baseURL,
    basePath: "/api/auth",
    secret,
    database: pool,
    trustedOrigins: [
      baseURL,
      ...(process.env.BA_TRUSTED_ORIGINS || "").split(",").map((s) => s.trim()).filter(Boolean),
    ],
    emailAndPassword: { enabled: true, requireEmailVerification: false, autoSignIn: true },
    rateLimit: { enabled: false },
    telemetry: { enabled: false },
    logger: {
      level: process.env.BA_LOG_LEVEL || "warn",
      log: (level, message, ...args) => {
        const extra = args.length ? " " + args.map((a) => (a instanceof Error ? a.stack : JSON.stringify(a))).join(" ") : "";
        process.stderr.write(`[better-auth ${level}] ${message}${extra}\n`);
      },
    },
    plugins: [
      jwt({
        jwks,
        jwt: {
          issuer,
          audience,
          ...(expirationTime ? { expirationTime } : {}),
        },
      }),
      bearer(),
    ],
  };

  const { runMigrations } = await getMigrations(options);
  await runMigrations();

  const auth = betterAuth(options);
  handler = toNodeHandler(auth);

  process.stderr.write(
    `better-auth fixture: ready baseURL=${baseURL} schema=${schema} alg=${alg}` +
      ` rotation=${rotationSecs ?? "off"} grace=${jwks.gracePeriod ?? "default"} expires=${expirationTime ?? "default(15m)"}` +
      ` iss=${issuer} aud=${JSON.stringify(audience)}\n`,
  );
  process.stdout.write(`LISTENING ${port}\n`);
}

main().catch(async (err) => {
  process.stderr.write(`better-auth fixture: startup failed: ${err?.stack || err}\n`);
  try {
    if (pool) await pool.end();
  } catch {}
  process.exit(1);
});
