/**
 * Headless Chromium for the browser test and the page benchmark: Debian's chromium (installed by
 * scripts/install-browser-test-deps.sh) driven by playwright-core, with WebGPU on SwiftShader (a CPU
 * Vulkan driver shipped with chromium), a fresh profile, and no background network traffic.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext } from 'playwright-core';

export const CHROMIUM = process.env.PDVM_CHROMIUM ?? '/usr/bin/chromium';

/** As root in CI: no sandbox; navigator.gpu with a SwiftShader adapter; nothing fetched in the background. */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--enable-features=Vulkan',
  '--use-vulkan=swiftshader',
  '--use-webgpu-adapter=swiftshader',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

/**
 * A headless browser on a fresh profile (kept across pages of this context: OPFS persists); close()
 * removes the profile. `webgpu: false` leaves the WebGPU flags out: navigator.gpu then finds no adapter.
 */
export async function launchChromium(options: { webgpu?: boolean } = {}): Promise<{ browser: BrowserContext; close: () => Promise<void> }> {
  const profile = mkdtempSync(join(tmpdir(), 'pdvm-chromium-'));
  const args = options.webgpu === false ? CHROMIUM_ARGS.filter((a) => !/webgpu|vulkan/i.test(a)) : CHROMIUM_ARGS;
  const browser = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args, viewport: { width: 900, height: 900 } });
  return {
    browser,
    close: async () => {
      await browser.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
