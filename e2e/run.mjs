#!/usr/bin/env node
// Drives a real Chromium through the gateway at <base-url>:
//   node e2e/run.mjs http://127.0.0.1:8080
// It opens <base-url><PAGE_PATH> (src/demo/echo.rs APP_PAGE, served by the echo upstream at /app/ and, in
// the demo, at /), clicks through register,
// sign-in, document.cookie, the owner route, sign-out and the owner route again, and checks
// every result the page shows, plus what only the browser knows: the auth cookie is HttpOnly,
// SameSite=Strict and Secure; the page sent no Authorization header and stored nothing; a
// revoked token put back into the cookie jar is refused with token_revoked.
// Exits 0 when every expectation holds, 1 with a message naming the first that does not.
//
// Environment: CHROMIUM (default /usr/bin/chromium), AUTH_COOKIE (default portcullis_token),
// PAGE_PATH (default /app/),
// E2E_SCREENSHOT (a PNG path: a screenshot of the page at the end, pass or fail).

import { chromium } from "playwright-core";
import { existsSync } from "node:fs";

const base = (process.argv[2] || "").replace(/\/+$/, "");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const cookieName = process.env.AUTH_COOKIE || "portcullis_token";
const pagePath = process.env.PAGE_PATH || "/app/";
const screenshot = process.env.E2E_SCREENSHOT || "";
const STEP_TIMEOUT_MS = 15_000;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

class Expectation extends Error {}

function expect(ok, message) {
  if (!ok) throw new Expectation(message);
}

function equal(actual, wanted, what) {
  expect(actual === wanted, `${what}: expected ${JSON.stringify(wanted)}, got ${JSON.stringify(actual)}`);
}

async function main() {
  if (!/^https?:\/\/[^/]+$/.test(base)) {
    throw new Expectation("usage: node e2e/run.mjs <base-url>, e.g. http://127.0.0.1:8080");
  }
  expect(existsSync(executablePath),
    `no Chromium at ${executablePath}: install Debian's package (apt-get install -y chromium) or set CHROMIUM`);

  const browser = await chromium.launch({
    executablePath,
    headless: true,
    timeout: 30_000,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  let page;
  try {
    const context = await browser.newContext();
    page = await context.newPage();
    page.setDefaultTimeout(STEP_TIMEOUT_MS);

    const problems = [];
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("console", (m) => {
      if (m.type() === "error" && !/status of 401/.test(m.text())) {
        problems.push(`console error: ${m.text()}`);
      }
    });
    const authorizationSent = [];
    page.on("request", (r) => {
      if (r.headers().authorization !== undefined) authorizationSent.push(r.url());
    });

    const text = async (id) => (await page.locator(`#${id}`).textContent()) ?? "";
    const authCookie = async () =>
      (await context.cookies(base)).find((c) => c.name === cookieName);

    // Clicks a step's button and waits until the page says the step is done (or failed).
    async function step(button, name) {
      await page.click(`#${button}`);
      await page.waitForFunction(
        (n) => {
          const o = document.getElementById("outcome").textContent;
          return o === `${n}: done` || o.startsWith(`${n}: failed`);
        },
        name,
        { timeout: STEP_TIMEOUT_MS },
      );
      const outcome = await text("outcome");
      expect(outcome === `${name}: done`, `step ${name}: the page reports ${JSON.stringify(outcome)}`);
    }

    // 0. The page, from the upstream, through the gateway's public route.
    const resp = await page.goto(`${base}${pagePath}`);
    expect(resp !== null, `no response for ${base}${pagePath}`);
    equal(resp.status(), 200, `GET ${pagePath} status`);
    expect((resp.headers()["content-type"] || "").startsWith("text/html"),
      `GET ${pagePath} content-type: ${resp.headers()["content-type"]}`);
    equal(await page.title(), "Portcullis demo", "page title");

    // 1. Register.
    await step("btn-register", "register");
    equal(await text("register-status"), "201", "register status");
    const userId = await text("user-id");
    expect(UUID.test(userId), `register: the user id is not a UUID: ${JSON.stringify(userId)}`);

    // 2. Sign in: the gateway sets the cookie; the browser keeps it HttpOnly, Strict, Secure.
    await step("btn-signin", "signin");
    equal(await text("signin-status"), "200", "signin status");
    const cookie = await authCookie();
    expect(cookie !== undefined,
      `after sign-in the browser holds no ${cookieName} cookie (a Secure cookie refused on http?)`);
    equal(cookie.httpOnly, true, `${cookieName} HttpOnly`);
    equal(cookie.sameSite, "Strict", `${cookieName} SameSite`);
    equal(cookie.secure, true, `${cookieName} Secure`);
    equal(cookie.path, "/", `${cookieName} Path`);
    expect(cookie.expires > Date.now() / 1000, `${cookieName} must be persistent (Max-Age), expires=${cookie.expires}`);
    const token = cookie.value;
    expect(token.split(".").length === 3, `${cookieName} does not hold a JWT`);

    // 3. HttpOnly: invisible to the page's script.
    await step("btn-cookie", "cookie");
    const shown = await text("document-cookie");
    expect(!shown.includes(cookieName) && !shown.includes(token),
      `document.cookie exposes the auth cookie: ${JSON.stringify(shown)}`);
    const live = await page.evaluate(() => document.cookie);
    expect(!live.includes(cookieName), `document.cookie exposes ${cookieName}`);

    // 4. The owner route with the cookie alone; the upstream gets the identity, not the cookie.
    await step("btn-protected", "protected");
    equal(await text("protected-status"), "200", "owner route status");
    equal(await text("upstream-user-id"), userId, "x-user-id received by the upstream");
    equal(await text("upstream-authorization"), "(none)", "authorization received by the upstream");
    const upstreamCookie = await text("upstream-cookie");
    expect(!upstreamCookie.includes(`${cookieName}=`) && !upstreamCookie.includes(token),
      `the upstream received the auth cookie: ${upstreamCookie}`);

    // 5. Sign out with the cookie: 204, and the gateway clears it.
    await step("btn-signout", "signout");
    equal(await text("signout-status"), "204", "signout status");
    expect((await authCookie()) === undefined, `${cookieName} is still in the cookie jar after sign-out`);

    // 6. The owner route again: no credential any more.
    await step("btn-protected-again", "protected-again");
    equal(await text("after-signout-status"), "401", "owner route after sign-out: status");
    equal(await text("after-signout-code"), "missing_token", "owner route after sign-out: code");
    expect((await text("after-signout-challenge")).startsWith("Bearer realm="),
      `owner route after sign-out: WWW-Authenticate ${await text("after-signout-challenge")}`);

    // 7. The signed-out token itself is revoked, not just forgotten by the browser.
    await context.addCookies([cookie]);
    expect((await authCookie())?.value === token, "could not put the old cookie back");
    const replay = await page.evaluate(async (id) => {
      const r = await fetch(`/api/${id}/tasks/1`, { credentials: "same-origin" });
      const body = await r.json().catch(() => ({}));
      return { status: r.status, code: body.code, challenge: r.headers.get("www-authenticate") };
    }, userId);
    equal(replay.status, 401, "revoked token replayed: status");
    equal(replay.code, "token_revoked", "revoked token replayed: code");
    expect((replay.challenge || "").includes('error="invalid_token"'),
      `revoked token replayed: WWW-Authenticate ${replay.challenge}`);
    await context.clearCookies();

    // The page kept nothing and never sent a bearer token.
    const stored = await page.evaluate(() => localStorage.length + sessionStorage.length);
    equal(stored, 0, "entries in localStorage + sessionStorage");
    const html = await page.content();
    expect(!html.includes(token), "the token appears in the page's DOM");
    expect(authorizationSent.length === 0,
      `requests sent with an Authorization header: ${authorizationSent.join(", ")}`);
    expect(problems.length === 0, problems.join("; "));

    console.log(`e2e ok: user ${userId} registered, signed in by HttpOnly SameSite=Strict Secure cookie, ` +
      "reached its owner route, signed out; the revoked token is refused");
  } finally {
    if (screenshot && page) {
      await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
    }
    await browser.close();
  }
}

const watchdog = setTimeout(() => {
  console.error("e2e FAILED: no result within 120 s");
  process.exit(1);
}, 120_000);
watchdog.unref();

main().then(
  () => process.exit(0),
  (e) => {
    const what = e instanceof Expectation ? e.message : (e && e.stack) || String(e);
    console.error(`e2e FAILED: ${what}`);
    process.exit(1);
  },
);
