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
// FERRY_SCREENSHOTS (a directory for one PNG per page), FERRY_UPLOAD_BUNDLE
// (churn v2, signed, for the upload steps).
//
// Fails on any JavaScript console error, page error, failed request or
// HTTP error a step did not provoke on purpose, and on any serious or
// critical axe-core violation on any page visited.
import { chromium } from 'playwright-core';
import { createRequire } from 'node:module';
import { readFileSync, statSync } from 'node:fs';
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
const UPLOAD = env('FERRY_UPLOAD_BUNDLE');

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
  page.on('requestfailed', (r) => {
    // The live-update stream stays open until the page goes away.
    if (r.url() === `${BASE}/ui/events` && r.failure()?.errorText === 'net::ERR_ABORTED') return;
    problems.push(`${who}: request failed: ${r.method()} ${r.url()}: ${r.failure()?.errorText}`);
  });
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

// Monitoring, as a viewer: the charts drawn from the roll-ups of the
// simulated devices' windows, the versions side by side, the PSI heat map,
// and the numbers moving without a reload as new windows are rolled up.
async function monitoringSteps(browser) {
  const { ctx, page } = await signIn(browser, 'viewer');
  await page.goto(`${BASE}/models/fraud`);
  await Promise.all([page.waitForURL(/\/models\/fraud\/monitoring/), page.locator('#monitoring-link').click()]);
  await page.waitForSelector('#series-totals', { timeout: 60000 });
  await page.waitForFunction(() => document.querySelectorAll('.plot canvas').length >= 6, null, { timeout: 30000 });
  check(true, 'monitoring: six charts drawn');
  const totals = await page.locator('#series-totals tbody').textContent();
  check(/v1/.test(totals) && /v2/.test(totals), `monitoring: v1 and v2 side by side (${totals.replace(/\s+/g, ' ').trim()})`);
  const heat = await page.locator('#psi-heat').textContent();
  check(/0\.9\d/.test(heat), 'monitoring: the heat map shows the injected PSI 0.9');
  await axe(page, 'monitoring');
  await shot(page, 'monitoring');
  // New windows arrive every second: the table changes with no reload.
  await page.evaluate(() => { window.ferryMark = 3; });
  await page.waitForFunction((before) => document.querySelector('#series-totals tbody').textContent !== before,
    totals, { timeout: 60000 });
  check(await page.evaluate(() => window.ferryMark === 3), 'monitoring: the numbers moved without a reload');
  await page.getByLabel('Time range').selectOption('7d');
  await Promise.all([page.waitForURL(/range=7d/), page.getByRole('button', { name: 'Show' }).click()]);
  await page.waitForFunction(() => document.querySelectorAll('.plot canvas').length >= 6, null, { timeout: 30000 });
  check((await page.locator('main').textContent()).includes('points of 1 h from the hour roll-ups'), 'monitoring: 7 days read the hourly roll-ups');
  await axe(page, 'monitoring (7d)');
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

/// Sends a form `dashboard.js` handles (click, then Confirm in the dialog).
async function submitConfirmed(page, button) {
  await button.click();
  await page.waitForSelector('dialog#confirm[open]');
  await page.getByRole('button', { name: 'Confirm' }).click();
}

/// A forged request with the page's own session and CSRF token: its status.
async function forged(page, method, url, body) {
  return page.evaluate(async ([m, u, b]) => {
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    const r = await fetch(u, { method: m, headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf }, body: b });
    await r.text();
    return r.status;
  }, [method, url, body]);
}

/// The drift policy page (after the alert steps, which rely on fraud's
/// policy as the operator left it: PSI threshold 0.3): reached from an
/// alert; a publisher sees the refusal of a bad value, then saves a new
/// threshold, a webhook and a schedule; the write-only secret survives a
/// save of the form as shown; a viewer sees it read-only and a forged
/// save is refused.
async function policySteps(browser) {
  const api = `${BASE}/api/v1/models/fraud/drift-config`;
  const { ctx, page } = await signIn(browser, 'publisher');
  await page.goto(`${BASE}/alerts?state=all&model=fraud`);
  await Promise.all([
    page.waitForURL(`${BASE}/models/fraud/policy`),
    page.locator(`#alert-${ALERT}`).getByRole('link', { name: 'Drift policy of fraud' }).click(),
  ]);
  check(true, 'policy: reached from the alert');
  await axe(page, 'policy (publisher)');
  const psi = page.getByLabel('PSI threshold');
  check(await psi.inputValue() === '0.3', 'policy: the PSI threshold the operator set (0.3)');
  check((await page.locator('#secret-state').textContent()).includes('not set'), 'policy: no webhook secret');
  const triggers = await page.locator('#trigger-list tbody tr').allTextContents();
  check(triggers.length >= 1 && triggers[0].includes('drift') && triggers[0].includes('not sent'),
    `policy: the drift alert's retraining trigger, without a webhook (${triggers.length})`);

  // A bad value: the server's refusal in the status line, nothing saved.
  expected.add(`400 ${api}`);
  await psi.fill('0');
  await submitConfirmed(page, page.getByRole('button', { name: 'Save policy' }));
  await page.waitForFunction(() => document.querySelector('#status').className.includes('error'));
  const refusal = await page.locator('#status').textContent();
  check(refusal.includes('psi_threshold must be a positive number'), `policy: refused (${refusal})`);

  // A good one, with a webhook, its secret and a schedule, by keyboard:
  // Enter in a field submits the form.
  await psi.fill('0.45');
  await page.getByLabel('Webhook URL').fill('https://ci.example/hooks/retrain?token=abc');
  await page.getByLabel('Webhook secret').fill('s3cret');
  await page.getByLabel('Schedule (cron, UTC)').fill('0 3 * * 1');
  await page.getByLabel('Schedule (cron, UTC)').press('Enter');
  await page.waitForSelector('dialog#confirm[open]');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('#secret-state')?.textContent.includes('Stored: set'));
  check((await page.locator('#status').textContent()).includes('is saved'), 'policy: saved');
  await page.reload();
  check(await psi.inputValue() === '0.45', 'policy: the new threshold after a reload');
  check(await page.getByLabel('Webhook URL').inputValue() === 'https://ci.example/…',
    'policy: the webhook URL shown by its origin only');
  check(await page.getByLabel('Webhook secret').inputValue() === '', 'policy: the secret is never shown');
  await axe(page, 'policy (saved)');
  await shot(page, 'policy');
  // The form saved again as shown keeps the stored URL and secret.
  await page.getByLabel('Watched features').fill('mean radius, mean texture');
  await submitConfirmed(page, page.getByRole('button', { name: 'Save policy' }));
  await page.waitForFunction(() => document.querySelector('#status').textContent.includes('is saved'));
  const stored = await page.evaluate(async (u) => (await fetch(u)).json(), api);
  check(stored.webhook_secret_set === true && stored.webhook_url === 'https://ci.example/…'
    && stored.features.length === 2 && stored.psi_threshold === 0.45 && stored.retrain_schedule === '0 3 * * 1',
    `policy: saved as shown, the secret and URL kept (${JSON.stringify(stored)})`);
  await ctx.close();

  const viewer = await signIn(browser, 'viewer');
  await viewer.page.goto(`${BASE}/models/fraud/policy`);
  check(await viewer.page.locator('#policy-form').count() === 0, 'viewer: the policy without a form');
  check((await viewer.page.locator('#p-psi_threshold').textContent()).trim() === '0.45', 'viewer: the threshold shown');
  check((await viewer.page.locator('#p-webhook_secret').textContent()).trim() === 'set', 'viewer: secret "set"');
  await axe(viewer.page, 'policy (viewer)');
  expected.add(`403 ${api}`);
  check(await forged(viewer.page, 'POST', api, JSON.stringify({ psi_threshold: 0.9 })) === 403,
    'viewer: a forged policy save is refused 403');
  await viewer.ctx.close();
}

/// Bundles from the model page: download (the session cookie is enough),
/// upload a signed bundle (publisher), delete (admin): refused with the
/// server's reason while a deployment uses the version, done otherwise.
async function lifecycleSteps(browser) {
  const { ctx, page } = await signIn(browser, 'publisher');
  await page.goto(`${BASE}/models/churn`);
  check(await page.getByRole('button', { name: /^Delete/ }).count() === 0, 'publisher: no delete buttons');
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.getByRole('link', { name: 'Download version 1', exact: true }).click(),
  ]);
  const size = statSync(await download.path()).size;
  check(download.suggestedFilename() === 'churn-1.ferry' && size > 0, `download: churn-1.ferry, ${size} bytes`);
  const fetched = await page.evaluate(async (u) => {
    const r = await fetch(u);
    return [r.status, (await r.arrayBuffer()).byteLength];
  }, `${BASE}/api/v1/models/churn/versions/1/bundle`);
  check(fetched[0] === 200 && fetched[1] === size, `download with the session cookie: ${fetched}`);

  await page.getByLabel('Signed bundle (.ferry)').setInputFiles(UPLOAD);
  await submitConfirmed(page, page.getByRole('button', { name: 'Upload and register' }));
  await page.waitForFunction(() => [...document.querySelectorAll('#versions tbody tr')]
    .some((r) => r.cells[1].textContent.trim() === '2'), null, { timeout: 60000 });
  check((await page.locator('#status').textContent()).includes('Registered churn version 2'),
    'upload: churn version 2 registered and listed');
  await axe(page, 'model (after the upload)');
  await ctx.close();

  const admin = await signIn(browser, 'admin');
  const p = admin.page;
  // fraud v1 is what the first deployment still serves: refused, with why.
  const v1 = `${BASE}/api/v1/models/fraud/versions/1`;
  expected.add(`409 ${v1}`);
  await p.goto(`${BASE}/models/fraud`);
  await submitConfirmed(p, p.getByRole('button', { name: 'Delete version 1', exact: true }));
  await p.waitForFunction(() => document.querySelector('#status').className.includes('error'));
  const why = await p.locator('#status').textContent();
  check(why.includes('live deployment'), `delete refused: ${why}`);
  check((await versionRow(p, 1)).includes('ready'), 'fraud v1 is still there');
  // churn v1: nothing deploys it.
  await p.goto(`${BASE}/models/churn`);
  await submitConfirmed(p, p.getByRole('button', { name: 'Delete version 1', exact: true }));
  await p.waitForFunction(() => document.querySelector('#status').textContent.includes('churn version 1 deleted'));
  check(await versionRow(p, 1) === '' && (await versionRow(p, 2)).includes('ready'),
    'delete: churn v1 gone, v2 listed');
  await axe(p, 'model (after a delete)');
  await admin.ctx.close();
}

/// The text of each row of `table`, whitespace collapsed.
async function rowTexts(page, table) {
  return (await page.locator(`${table} tbody tr`).allTextContents()).map((t) => t.replace(/\s+/g, ' ').trim());
}

/// The fleet's pages, after the rollout finished (fraud v2 on every
/// device through the rollout's deployment, v1's deployment superseded):
/// the device list with what each agent said in its health message, a
/// device's page (events, telemetry), the deployments with their device
/// states; a viewer's forged undeploy refused, the operator's done by
/// keyboard.
async function fleetSteps(browser) {
  const viewer = await signIn(browser, 'viewer');
  await viewer.page.goto(`${BASE}/deployments`);
  const ids = await viewer.page.locator('#deployments tbody tr')
    .evaluateAll((rows) => rows.map((r) => r.id.replace(/^deployment-/, '')));
  check(ids.length === 2, `viewer: deployments listed (${ids.join(', ')})`);
  check(await viewer.page.getByRole('button', { name: /^Undeploy/ }).count() === 0, 'viewer: no undeploy button');
  await axe(viewer.page, 'deployments (viewer)');
  const del = `${BASE}/api/v1/deployments/${ids[1]}`;
  expected.add(`403 ${del}`);
  const forged = await viewer.page.evaluate(async (u) => {
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    const r = await fetch(u, { method: 'DELETE', headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf }, body: '{}' });
    await r.text();
    return r.status;
  }, del);
  check(forged === 403, 'viewer: a forged undeploy is refused 403');
  await viewer.ctx.close();

  const { ctx, page } = await signIn(browser, 'operator');
  await page.getByRole('link', { name: 'Fleet' }).click();
  await page.waitForURL(`${BASE}/fleet`);
  // Health arrives over MQTT; the versions over QUIC.
  await page.waitForFunction(() => [...document.querySelectorAll('#devices tbody tr')]
    .every((r) => r.textContent.includes('fraud v2 active') && r.textContent.includes('online')), null, { timeout: 60000 })
    .catch(() => {});
  const rows = await rowTexts(page, '#devices');
  check(rows.length === 4 && rows.every((r) => r.includes('online') && r.includes('fraud v2 active')),
    `fleet: four devices online, running fraud v2 (${rows[0]})`);
  const cells = await page.locator('#devices tbody tr').first().locator('td').allTextContents();
  check(cells[4].trim().startsWith('sim-'), `fleet: the agent version (${cells[4].trim()})`);
  check(/^[a-z0-9_]+-[a-z]+$/.test(cells[5].trim()), `fleet: the architecture (${cells[5].trim()})`);
  check(['5', '3.1.1'].includes(cells[6].trim()), `fleet: the MQTT protocol (${cells[6].trim()})`);
  await axe(page, 'fleet (health)');
  await shot(page, 'fleet');
  await Promise.all([
    page.waitForURL(/sort=last_seen/),
    page.getByRole('link', { name: 'Health, last seen' }).click(),
  ]);
  check(await page.locator('th[aria-sort="descending"]').count() === 1 && (await rowTexts(page, '#devices')).length === 4,
    'fleet: sorted by last seen, linkable');
  await page.getByLabel('Running model').fill('churn');
  await Promise.all([page.waitForURL(/model=churn/), page.getByRole('button', { name: 'Filter' }).click()]);
  check((await page.locator('main').textContent()).includes('No device matches.'), 'fleet: no device runs churn');
  await page.goto(`${BASE}/fleet?model=fraud&sort=host`);
  check((await rowTexts(page, '#devices')).length === 4, 'fleet: every device runs fraud');
  await axe(page, 'fleet (by model)');

  // A device's page: health, versions, deployments, events, telemetry.
  const host = page.locator('#devices tbody tr').first().getByRole('link').first();
  const hostname = (await host.textContent()).trim();
  await Promise.all([page.waitForURL(/\/fleet\/[^/?]+$/), host.click()]);
  const device = page.url().split('/').pop();
  check((await page.locator('h1').textContent()).includes(hostname), `device page of ${hostname}`);
  check((await page.locator('#health').textContent()).includes('sim-'), 'device: the agent version');
  check((await page.locator('#versions').textContent()).includes('fraud v2 active'), 'device: fraud v2 reported active');
  check((await page.locator('#device-deployments tbody tr').count()) === 2, 'device: both deployments target it');
  const events = await rowTexts(page, '#events');
  check(events.some((e) => e.includes('activated') && e.includes('fraud v2')), `device: its events (${events[0]})`);
  const windows = await rowTexts(page, '#windows');
  check(windows.length > 0 && windows.every((w) => w.startsWith('fraud')), `device: its telemetry windows (${windows[0]})`);
  check(await page.locator(`#monitoring a[href="/models/fraud/monitoring?device=${device}"]`).count() === 1,
    'device: a link to the monitoring of fraud on it');
  await axe(page, 'device');
  await shot(page, 'device');
  if (await page.locator('#windows + nav a[rel="next"]').count()) {
    await Promise.all([page.waitForURL(/wpage=2/), page.locator('#windows + nav a[rel="next"]').click()]);
    check((await page.locator('#windows tbody tr').count()) > 0, 'device: the second page of windows');
    await axe(page, 'device (windows, page 2)');
  }

  // Deployments: counted per state; the superseded v1 undeployed by keyboard.
  await page.getByRole('link', { name: 'Deployments' }).click();
  await page.waitForURL(`${BASE}/deployments`);
  const deps = await rowTexts(page, '#deployments');
  check(deps.length === 2 && deps[0].includes('fraud@2') && deps[0].includes('4 active'),
    `deployments: v2 active on four devices (${deps[0]})`);
  check(deps[1].includes('fraud@1') && deps[1].includes('4 superseded'), `deployments: v1 superseded (${deps[1]})`);
  await axe(page, 'deployments');
  await shot(page, 'deployments');
  await Promise.all([
    page.waitForURL(`${BASE}/deployments/${ids[1]}`),
    page.locator(`#deployment-${ids[1]} a`).first().click(),
  ]);
  const states = await rowTexts(page, '#deployment-devices');
  check(states.length === 4 && states.every((s) => s.includes('superseded')), 'deployment: each device\'s state');
  await axe(page, 'deployment');
  await shot(page, 'deployment');
  await keyboardCommand(page, `undeploy-${ids[1]}`);
  await page.waitForFunction(() => document.querySelector('#deployment-state')?.textContent.includes('undeployed'));
  check((await page.locator('#status').textContent()).includes('undeployed'), 'deployment: undeployed, the status says so');
  check(await page.getByRole('button', { name: /^Undeploy/ }).count() === 0, 'an undeployed deployment has no button');
  await axe(page, 'deployment (undeployed)');
  await page.goto(`${BASE}/deployments`);
  check((await rowTexts(page, '#deployments')).length === 1, 'deployments: only v2 left');
  await Promise.all([
    page.waitForURL(`${BASE}/fleet/${device}`),
    page.goto(`${BASE}/deployments/${ids[0]}`).then(() =>
      page.locator('#deployment-devices').getByRole('link', { name: hostname, exact: true }).click()),
  ]);
  check(true, 'a deployment\'s device links to its page');
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
  await monitoringSteps(browser);
  await adminSteps(browser);
  await policySteps(browser);
  await lifecycleSteps(browser);
  await fleetSteps(browser);
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
