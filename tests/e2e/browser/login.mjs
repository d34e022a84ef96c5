// Headless Chromium logs in through Envoy + oidc-authz + the mock Okta IdP (run by tests/e2e/test_browser.py).
//
//   node login.mjs --url http://127.0.0.1:<envoy>/login/headers --screenshot out.png [--user alice]
//                  [--chromium /usr/bin/chromium] [--timeout-ms 30000]
//
// Opens --url in a fresh profile, expects the mock Okta login form (redirected there by oidc-authz), signs in as
// --user (any password), waits to land back on --url's path and prints that page's body (httpbin's JSON echo) to
// stdout. Everything else (each navigation, the cookies, errors) goes to stderr. Saves a screenshot of the final
// page, or of wherever it got stuck, to --screenshot. Exit 0 on success, 1 on any failure.
//
// playwright-core only drives the system's Chromium (executablePath); it never downloads a browser.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' },
    user: { type: 'string', default: 'alice' },
    screenshot: { type: 'string' },
    chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
    'timeout-ms': { type: 'string', default: '30000' },
  },
});
if (!opt.url || !opt.screenshot) {
  console.error('usage: node login.mjs --url URL --screenshot FILE [--user alice] [--chromium PATH]');
  process.exit(2);
}
const timeout = Number(opt['timeout-ms']);
const target = new URL(opt.url);
const log = (...a) => console.error('[login.mjs]', ...a);

const profile = mkdtempSync(join(tmpdir(), 'oidc-authz-chromium-'));
let context;
let page;
let ok = false;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: opt.chromium,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1024, height: 700 },
    timeout,
  });
  context.setDefaultTimeout(timeout);
  page = context.pages()[0] ?? await context.newPage();
  page.on('response', (r) => {
    if (r.request().isNavigationRequest() && r.request().frame() === page.mainFrame()) {
      log('nav', r.status(), r.request().method(), r.url(), r.headers().location ? `-> ${r.headers().location}` : '');
    }
  });
  page.on('console', (m) => log('console', m.type(), m.text()));
  page.on('pageerror', (e) => log('pageerror', e.message));

  // 1. the app -> oidc-authz 302 -> the IdP's authorize -> its login form
  await page.goto(target.href, { waitUntil: 'domcontentloaded' });
  if (new URL(page.url()).origin === target.origin) {
    throw new Error(`expected to be sent to the IdP's login page, still on ${page.url()}`);
  }
  const login = page.locator('input[name="login"]');
  await login.waitFor({ state: 'visible' });
  log('login form at', page.url());

  // 2. sign in; the IdP redirects to oidc-authz's callback, which redirects to the original URL
  await login.fill(opt.user);
  await page.locator('input[name="password"]').fill('x');
  const landed = page.waitForResponse((r) => {
    const u = new URL(r.url());
    return r.request().isNavigationRequest() && u.origin === target.origin && u.pathname === target.pathname
      && r.status() !== 302;
  });
  await page.locator('button[type="submit"]').click();
  const resp = await landed;
  await page.waitForLoadState('load');
  log('landed on', resp.url(), 'status', resp.status());
  if (resp.status() !== 200) {
    throw new Error(`${resp.url()} answered ${resp.status()}: ${(await resp.text()).slice(0, 500)}`);
  }

  // 3. the echo, exactly as the server sent it (not Chromium's JSON viewer)
  const body = await resp.text();
  JSON.parse(body); // must be JSON
  const cookies = await context.cookies(target.origin);
  log('cookies', JSON.stringify(cookies.map((c) => ({
    name: c.name, path: c.path, httpOnly: c.httpOnly, sameSite: c.sameSite, secure: c.secure, size: c.value.length,
  }))));
  process.stdout.write(body.endsWith('\n') ? body : `${body}\n`);
  ok = true;
} catch (e) {
  log('FAILED:', e?.message ?? e);
  if (page) log('at', page.url(), 'page text:', (await page.textContent('body').catch(() => ''))?.slice(0, 500));
} finally {
  if (page) await page.screenshot({ path: opt.screenshot, fullPage: true }).catch((e) => log('screenshot failed', e.message));
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(ok ? 0 : 1);
