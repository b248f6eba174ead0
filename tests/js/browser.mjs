// Loads a page in headless Chromium (Debian's, through playwright-core) and prints the
// page's window.results as JSON once it sets window.done. Usage: node browser.mjs <url>.
// Run by tests/browser.rs; CHROMIUM names the browser (default /usr/bin/chromium).
import { chromium } from "playwright-core";

const url = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // This machine's network is closed: no background fetches to Google's hosts.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const page = await browser.newPage();
  const console_lines = [];
  page.on("console", (m) => console_lines.push(`${m.type()}: ${m.text()}`));
  await page.goto(url);
  await page.waitForFunction(() => window.done === true, null, { timeout: 30000 });
  const results = await page.evaluate(() => window.results);
  console.log(JSON.stringify({ results, console: console_lines }));
} finally {
  await browser.close();
}
