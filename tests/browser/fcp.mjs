// First contentful paint of dashboard pages in Debian's Chromium, for
// scripts/bench/dashboard_speed.py: signs in with FERRY_TOKEN (unless
// FCP_NO_LOGIN=1, for MLflow's UI), opens each path five times in a fresh
// page, prints {path: median FCP in ms} as the last line.
//
//   node tests/browser/fcp.mjs http://127.0.0.1:8470 /models /fleet
import { chromium } from 'playwright-core';

const [base, ...paths] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.FERRY_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
const ctx = await browser.newContext();
if (!process.env.FCP_NO_LOGIN) {
  const page = await ctx.newPage();
  await page.goto(`${base}/ui/login`);
  await page.fill('#token', process.env.FERRY_TOKEN);
  await Promise.all([page.waitForURL(/\/models/), page.click('button[type=submit]')]);
  await page.close();
}
const out = {};
for (const path of paths) {
  const runs = [];
  for (let i = 0; i < 6; i++) {
    const page = await ctx.newPage();
    await page.goto(base + path, { waitUntil: 'load' });
    const t = await page.evaluate(() => new Promise((resolve) => {
      const seen = performance.getEntriesByName('first-contentful-paint');
      if (seen.length) return resolve(seen[0].startTime);
      new PerformanceObserver((l) => resolve(l.getEntries()[0].startTime))
        .observe({ type: 'paint', buffered: true });
      setTimeout(() => resolve(null), 10000);
    }));
    await page.close();
    if (i > 0 && t !== null) runs.push(t); // the first run warms the cache
  }
  runs.sort((a, b) => a - b);
  out[path] = runs.length ? Math.round(runs[Math.floor(runs.length / 2)] * 10) / 10 : null;
}
await browser.close();
console.log(JSON.stringify(out));
