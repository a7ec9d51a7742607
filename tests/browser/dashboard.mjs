// The dashboard in Debian's Chromium, driven by playwright-core, against a
// real `ferry server` that tests/e2e/dashboard_e2e.rs started and seeded
// (fraud v1 and v2 with champion on v1, churn v1; four simulated devices
// labelled site=berlin running fraud v1, and a rollout of v2 to them that
// waits for approval after its first wave; the devices report drift
// (PSI 0.9) that fraud's drift policy (PSI threshold 0.95) does not call
// drift yet).
//
// Env: FERRY_URL, FERRY_ADMIN_TOKEN, FERRY_PUBLISHER_TOKEN,
// FERRY_VIEWER_TOKEN, FERRY_OPERATOR_TOKEN, FERRY_ROLLOUT_ID, FERRY_CHROMIUM (default /usr/bin/chromium),
// FERRY_SCREENSHOTS (a directory for one PNG per page).
//
// Fails on any JavaScript console error, page error, failed request or
// HTTP error a step did not provoke on purpose, and on any serious or
// critical axe-core violation on any page visited.
import { chromium } from 'playwright-core';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

function env(name, fallback) {
  const v = process.env[name] || fallback;
  if (!v) throw new Error(`${name} is not set`);
  return v;
}
const BASE = env('FERRY_URL');
const TOKENS = {
  admin: env('FERRY_ADMIN_TOKEN'),
  publisher: env('FERRY_PUBLISHER_TOKEN'),
  viewer: env('FERRY_VIEWER_TOKEN'),
  operator: env('FERRY_OPERATOR_TOKEN'),
};
const ROLLOUT = env('FERRY_ROLLOUT_ID');
const SHOTS = env('FERRY_SCREENSHOTS');

const problems = [];
// `${status} ${url}` of the refusals a step provokes on purpose.
const expected = new Set();

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

function watch(page, who) {
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const at = m.location()?.url || '';
    // Chromium logs each refused request; the provoked ones are expected.
    if (/Failed to load resource/.test(m.text()) && [...expected].some((e) => e.endsWith(` ${at}`))) return;
    problems.push(`${who}: console error: ${m.text()} (${at})`);
  });
  page.on('pageerror', (e) => problems.push(`${who}: page error: ${e.message}`));
  page.on('requestfailed', (r) =>
    problems.push(`${who}: request failed: ${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
  page.on('response', (r) => {
    if (r.status() >= 400 && !expected.has(`${r.status()} ${r.url()}`)) {
      problems.push(`${who}: HTTP ${r.status()} for ${r.request().method()} ${r.url()}`);
    }
  });
}

async function axe(page, name) {
  await page.evaluate(AXE);
  const r = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  for (const v of bad) {
    const where = v.nodes.map((n) => n.target.join(' ')).join('; ');
    problems.push(`${name}: axe ${v.impact} ${v.id}: ${v.help} (${where})`);
  }
  console.log(`axe ${name}: ${r.violations.length} violation(s), ${bad.length} serious or critical`);
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

async function signIn(browser, who) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await ctx.newPage();
  watch(page, who);
  await page.goto(`${BASE}/`);
  check(page.url().startsWith(`${BASE}/ui/login`), `${who}: / without a session leads to sign-in`);
  await page.getByLabel('API token').fill(TOKENS[who]);
  await Promise.all([
    page.waitForURL(`${BASE}/models`),
    page.getByRole('button', { name: 'Sign in' }).click(),
  ]);
  check(true, `${who}: signed in`);
  await axe(page, `models (${who})`);
  return { ctx, page };
}

/// The text of the versions table row of `version`.
async function versionRow(page, version) {
  return page.evaluate((v) => {
    const row = [...document.querySelectorAll('#versions tbody tr')]
      .find((r) => r.cells[1].textContent.trim() === String(v));
    return row ? row.textContent : '';
  }, version);
}

async function publisherSteps(browser) {
  const ctx0 = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const login = await ctx0.newPage();
  watch(login, 'login');
  await login.goto(`${BASE}/ui/login`);
  await axe(login, 'login');
  await shot(login, 'login');
  await ctx0.close();

  const { ctx, page } = await signIn(browser, 'publisher');
  await shot(page, 'models');
  check(!(await page.getByRole('link', { name: 'Audit' }).count()), 'publisher: no Audit link');

  // Search updates the results in place and the URL with it.
  await page.getByLabel('Name contains').fill('fra');
  await page.getByRole('button', { name: 'Search' }).click();
  await page.waitForURL(/q=fra/);
  await page.waitForFunction(() => !document.querySelector('#results').textContent.includes('churn'));
  check(await page.locator('#results').getByRole('link', { name: 'fraud' }).count() === 1,
    'search by name finds fraud only');
  await axe(page, 'models (searched in place)');
  await page.goto(`${BASE}/models?metric=auc&min=0.92`);
  const ranged = await page.locator('#results').textContent();
  check(ranged.includes('fraud') && !ranged.includes('churn'), 'a metric range (auc >= 0.92) finds fraud only');
  await axe(page, 'models (metric range)');
  await page.goto(`${BASE}/models?q=fra`);
  await axe(page, 'models (searched, loaded from its URL)');
  await Promise.all([
    page.waitForURL(`${BASE}/models/fraud`),
    page.locator('#results').getByRole('link', { name: 'fraud' }).click(),
  ]);
  check((await versionRow(page, 1)).includes('champion'), 'champion is on version 1');
  await axe(page, 'model');
  await shot(page, 'model');

  // Compare two versions.
  await page.getByLabel('Compare version 1', { exact: true }).check();
  await page.getByLabel('Compare version 2', { exact: true }).check();
  await Promise.all([
    page.waitForURL(/\/models\/fraud\/compare\?/),
    page.getByRole('button', { name: 'Compare selected versions' }).click(),
  ]);
  const compared = await page.locator('main').textContent();
  check(compared.includes('0.93') && compared.includes('(+0.02)'), 'compare shows auc with its delta');
  await axe(page, 'compare');
  await shot(page, 'compare');

  // Promote with the keyboard only: Tab to the button, Enter, confirm.
  await page.goto(`${BASE}/models/fraud`);
  await axe(page, 'model (before the promotion)');
  let reached = false;
  for (let i = 0; i < 40 && !reached; i++) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate(() => document.activeElement?.id === 'promote-button');
  }
  check(reached, 'Tab reaches the promote button');
  await page.keyboard.press('Enter');
  await page.waitForSelector('dialog#confirm[open]');
  const message = await page.locator('dialog#confirm [data-message]').textContent();
  check(message.includes('"champion"') && message.includes('version 2'), `the dialog asks: ${message}`);
  check(await page.evaluate(() => document.activeElement?.value === 'confirm'), 'the dialog focuses Confirm');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => {
    const row = [...document.querySelectorAll('#versions tbody tr')]
      .find((r) => r.cells[1].textContent.trim() === '2');
    return row && row.cells[3].textContent.includes('champion');
  });
  check(!(await versionRow(page, 1)).includes('champion'), 'champion moved from version 1 to 2');
  check((await page.locator('#status').textContent()).includes('now points at version 2'), 'the status says so');
  await axe(page, 'model (after the promotion)');

  // A mutation without the CSRF header is refused, even with the session.
  const archive = `${BASE}/api/v1/models/fraud/versions/1/archive`;
  expected.add(`403 ${archive}`);
  // (Bodies are read to the end: a request still open when the page
  // navigates would count as failed.)
  const noCsrf = await page.evaluate(async (u) => {
    const r = await fetch(u, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
    await r.text();
    return r.status;
  }, archive);
  check(noCsrf === 403, 'a mutation without X-CSRF-Token is refused 403');
  await page.reload();
  check((await versionRow(page, 1)).includes('ready'), 'version 1 is still ready');
  await axe(page, 'model (reloaded)');

  // Sign out: the session is gone.
  await Promise.all([
    page.waitForURL(/\/ui\/login$/),
    page.getByRole('button', { name: 'Sign out' }).click(),
  ]);
  await page.goto(`${BASE}/models`);
  check(page.url().startsWith(`${BASE}/ui/login`), 'after sign-out pages lead to sign-in again');
  await axe(page, 'login (after sign-out)');
  await ctx.close();
}

/// Tabs until `id` has the focus, presses Enter and confirms the dialog
/// with Enter: a rollout command by keyboard only.
async function keyboardCommand(page, id) {
  let reached = false;
  for (let i = 0; i < 60 && !reached; i++) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate((x) => document.activeElement?.id === x, id);
  }
  check(reached, `Tab reaches #${id}`);
  await page.keyboard.press('Enter');
  await page.waitForSelector('dialog#confirm[open]');
  check(await page.evaluate(() => document.activeElement?.value === 'confirm'), 'the dialog focuses Confirm');
  await page.keyboard.press('Enter');
}

async function phaseIs(page, phase) {
  await page.waitForFunction((p) => document.querySelector('#phase')?.textContent.includes(`Phase: ${p}`), phase,
    { timeout: 120000 });
}

async function operatorSteps(browser) {
  const { ctx, page } = await signIn(browser, 'operator');
  // The fleet: every simulated device, its labels and connection.
  await page.getByRole('link', { name: 'Fleet' }).click();
  await page.waitForURL(`${BASE}/fleet`);
  const devices = await page.locator('#devices tbody tr').allTextContents();
  check(devices.length === 4 && devices.every((r) => r.includes('site=berlin') && r.includes('connected')),
    'fleet: four connected devices labelled site=berlin');
  await axe(page, 'fleet');
  await shot(page, 'fleet');
  await page.getByLabel('Label (key=value)').fill('site=oslo');
  await Promise.all([page.waitForURL(/label=site%3Doslo/), page.getByRole('button', { name: 'Filter' }).click()]);
  check((await page.locator('main').textContent()).includes('No device matches.'), 'fleet: a label filter');
  await axe(page, 'fleet (filtered)');

  // The rollouts list, linkable by phase.
  await page.goto(`${BASE}/rollouts?model=fraud`);
  check((await page.locator('#rollouts tbody tr').count()) === 1, 'rollouts: the rollout is listed');
  await axe(page, 'rollouts');
  await page.goto(`${BASE}/rollouts?phase=finished`);
  check((await page.locator('main').textContent()).includes('No rollout matches.'), 'rollouts: a phase filter');
  await Promise.all([
    page.waitForURL(`${BASE}/rollouts/${ROLLOUT}`),
    page.goto(`${BASE}/rollouts`).then(() => page.locator('#rollouts a').first().click()),
  ]);
  await axe(page, 'rollout');
  // From here on the page is never reloaded: a mark on the window shows it.
  await page.evaluate(() => { window.ferryMark = 1; });
  let polls = 0;
  page.on('request', (r) => { if (r.url().endsWith(`/rollouts/${ROLLOUT}/progress`)) polls++; });
  // Pause (allowed running or awaiting approval), then resume: the wave
  // bakes again, and the page follows it to "awaiting approval" by itself.
  await keyboardCommand(page, 'pause-button');
  await phaseIs(page, 'paused');
  check((await page.locator('#cause').textContent()).includes('Paused by an operator'), 'the pause cause is shown');
  await axe(page, 'rollout (paused)');
  await keyboardCommand(page, 'resume-button');
  await phaseIs(page, 'awaiting approval');
  check(polls > 0, `the progress section polled (${polls} request(s))`);
  check(await page.evaluate(() => window.ferryMark === 1), 'awaiting approval shown without a reload');
  check((await page.locator('#gates').textContent()).includes('install'), 'the gates of the last verdict');
  await axe(page, 'rollout (awaiting approval)');
  // Approve by click and confirm; the rollout runs its last wave and ends.
  await page.locator('#approve-button').click();
  await page.waitForSelector('dialog#confirm[open]');
  await page.getByRole('button', { name: 'Confirm' }).click();
  await phaseIs(page, 'finished');
  check(await page.evaluate(() => window.ferryMark === 1), 'finished shown without a reload');
  check(await page.locator('#commands').count() === 0, 'a finished rollout has no commands');
  const waves = await page.locator('table.wave').count();
  check(waves === 2, `two waves shown (${waves})`);
  await axe(page, 'rollout (finished)');
  await shot(page, 'rollout');
  await alertSteps(page);
  await ctx.close();
}

// The id of the drift alert the operator acknowledged, for the viewer.
let ALERT = '';

/// The alerts page open before the alert exists; an operator lowers the
/// drift policy's PSI threshold, the alert appears without a reload, is
/// acknowledged and moves to the acknowledged list.
async function alertSteps(page) {
  await page.getByRole('link', { name: 'Alerts' }).click();
  await page.waitForURL(`${BASE}/alerts`);
  check(await page.locator('#alerts tbody tr').count() === 0, 'alerts: no open alert yet');
  await axe(page, 'alerts (none)');
  await page.evaluate(() => { window.ferryMark = 2; });
  const policy = await page.evaluate(async (u) => {
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    const r = await fetch(u, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
      body: JSON.stringify({ psi_threshold: 0.3, min_drifted_rows: 100 }),
    });
    await r.text();
    return r.status;
  }, `${BASE}/api/v1/models/fraud/drift-config`);
  check(policy === 200, 'operator: drift policy threshold lowered to 0.3');
  await page.waitForSelector('#alerts tbody tr', { timeout: 120000 });
  check(await page.evaluate(() => window.ferryMark === 2), 'alerts: the drift alert appeared without a reload');
  const row = page.locator('#alerts tbody tr').first();
  const text = await row.textContent();
  check(text.includes('fraud') && text.includes('drift') && text.includes('max PSI 0.9'),
    `alerts: the row shows model, kind and evidence (${text.replace(/\s+/g, ' ').trim()})`);
  ALERT = (await row.getAttribute('id')).replace(/^alert-/, '');
  await axe(page, 'alerts (open)');
  await shot(page, 'alerts');
  await row.getByRole('button', { name: 'Acknowledge' }).click();
  await page.waitForSelector('dialog#confirm[open]');
  const message = await page.locator('dialog#confirm [data-message]').textContent();
  check(message.includes('drift') && message.includes('fraud'), `the dialog asks: ${message}`);
  await page.getByRole('button', { name: 'Confirm' }).click();
  await page.waitForFunction((id) => !document.getElementById(`alert-${id}`), ALERT, { timeout: 60000 });
  check((await page.locator('#status').textContent()).includes('Acknowledged'), 'alerts: the status says acknowledged');
  await page.getByLabel('State').selectOption('acknowledged');
  await Promise.all([page.waitForURL(/state=acknowledged/), page.getByRole('button', { name: 'Filter' }).click()]);
  const acked = await page.locator(`#alert-${ALERT}`).textContent();
  check(acked.includes('acknowledged') && acked.includes('(operator)'),
    `alerts: acknowledged by the operator (${acked.replace(/\s+/g, ' ').trim()})`);
  await axe(page, 'alerts (acknowledged)');
}

async function viewerSteps(browser) {
  const { ctx, page } = await signIn(browser, 'viewer');
  await page.goto(`${BASE}/models/fraud`);
  check(await page.locator('#promote-button').count() === 0, 'viewer: no promote button');
  check(await page.getByRole('button', { name: /^Archive/ }).count() === 0, 'viewer: no archive buttons');
  check(await page.getByRole('link', { name: /^Download/ }).count() > 0, 'viewer: download links');
  await axe(page, 'model (viewer)');
  // The forged request: the viewer's own session and CSRF token.
  const promote = `${BASE}/api/v1/models/fraud/promote`;
  expected.add(`403 ${promote}`);
  const forged = await page.evaluate(async (u) => {
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    const r = await fetch(u, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
      body: JSON.stringify({ version: 1, alias: 'champion' }),
    });
    await r.text();
    return r.status;
  }, promote);
  check(forged === 403, 'viewer: a forged promotion is refused 403');
  // Rollouts: the viewer sees them, without commands, and a forged
  // approval is refused.
  await page.goto(`${BASE}/rollouts/${ROLLOUT}`);
  check(await page.locator('#commands').count() === 0, 'viewer: no rollout commands');
  check(await page.getByRole('button', { name: 'Approve' }).count() === 0, 'viewer: no approve button');
  const approve = `${BASE}/api/v1/rollouts/${ROLLOUT}/approve`;
  expected.add(`403 ${approve}`);
  const forgedApproval = await page.evaluate(async (u) => {
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    const r = await fetch(u, { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf }, body: '{}' });
    await r.text();
    return r.status;
  }, approve);
  check(forgedApproval === 403, 'viewer: a forged approval is refused 403');
  await axe(page, 'rollout (viewer)');
  // Alerts: the viewer sees them without the Acknowledge button, and a
  // forged acknowledgement is refused.
  await page.goto(`${BASE}/alerts?state=all&model=fraud`);
  check(await page.locator(`#alert-${ALERT}`).count() === 1, 'viewer: the acknowledged alert is listed');
  check(await page.getByRole('button', { name: 'Acknowledge' }).count() === 0, 'viewer: no acknowledge button');
  const ack = `${BASE}/api/v1/alerts/${ALERT}/ack`;
  expected.add(`403 ${ack}`);
  const forgedAck = await page.evaluate(async (u) => {
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    const r = await fetch(u, { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf }, body: '{}' });
    await r.text();
    return r.status;
  }, ack);
  check(forgedAck === 403, 'viewer: a forged acknowledgement is refused 403');
  await axe(page, 'alerts (viewer)');
  expected.add(`403 ${BASE}/audit`);
  await page.goto(`${BASE}/audit`);
  check((await page.locator('h1').textContent()) === 'Not allowed', 'viewer: the audit page is refused');
  await axe(page, 'refusal page');
  await ctx.close();
}

async function adminSteps(browser) {
  const { ctx, page } = await signIn(browser, 'admin');
  await page.getByRole('link', { name: 'Audit' }).click();
  await page.waitForURL(`${BASE}/audit`);
  const badge = await page.locator('#chain').textContent();
  check(/Chain verified up to record \d+/.test(badge), `badge: ${badge}`);
  const trail = await page.locator('#audit').textContent();
  for (const action of ['session.create', 'session.delete', 'alias.set', 'auth.csrf']) {
    check(trail.includes(action), `the trail shows ${action}`);
  }
  check(trail.includes('fraud@champion -> 2'), 'the trail shows the promotion');
  await axe(page, 'audit');
  await shot(page, 'audit');
  await page.getByLabel('Action', { exact: true }).fill('alias.set');
  await page.getByLabel('Outcome', { exact: true }).selectOption('refused');
  await Promise.all([page.waitForURL(/action=alias\.set/), page.getByRole('button', { name: 'Filter' }).click()]);
  const rows = await page.locator('#audit tbody tr').allTextContents();
  check(rows.length > 0 && rows.every((r) => r.includes('alias.set') && r.includes('refused')),
    'filtered: only refused alias.set (the viewer\'s forgery)');
  await axe(page, 'audit (filtered)');
  await ctx.close();
}

const browser = await chromium.launch({
  executablePath: env('FERRY_CHROMIUM', '/usr/bin/chromium'),
  args: ['--no-sandbox'],
});
let failure = null;
try {
  await publisherSteps(browser);
  await operatorSteps(browser);
  await viewerSteps(browser);
  await adminSteps(browser);
} catch (e) {
  failure = e;
} finally {
  await browser.close();
}
if (failure) problems.unshift(String(failure.stack || failure));
if (problems.length) {
  console.error(`dashboard browser test FAILED:\n${problems.join('\n')}`);
  process.exit(1);
}
console.log('dashboard browser test: every check passed');
