// Opens the test page in Debian's headless Chromium through playwright-core and waits until
// analytics.js reports that every call was sent. Prints the outcome as JSON; exits 1 on failure.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const profile = mkdtempSync(join(tmpdir(), "cdp-chromium-"));
const problems = [];
let outcome = null;
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await context.newPage();
  page.on("console", (message) => { if (message.type() === "error") problems.push("console: " + message.text()); });
  page.on("requestfailed", (request) => problems.push(`request failed: ${request.url()} ${request.failure()?.errorText}`));
  const sent = [];
  page.on("response", (response) => {
    const url = response.url();
    if (url.startsWith(process.env.INGEST_URL)) sent.push(`${response.status()} ${new URL(url).pathname}`);
  });
  await page.goto(process.env.PAGE_URL);
  await page.waitForFunction(() => window.__done || window.__error, null, { timeout: 60000 });
  const result = await page.evaluate(() => ({ done: window.__done || null, error: window.__error || null }));
  outcome = { ...result, sent, problems };
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(outcome) + "\n");
process.exit(outcome && outcome.done ? 0 : 1);
