/**
 * Node only: the `GPU` object from Dawn, through the optional `webgpu` npm package. Importing this
 * module registers it with device.ts; the Node entry (src/index.ts) and the CLI do.
 */
import { existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { registerGpuProvider } from './provider.js';
import { WebGpuUnavailableError } from './errors.js';

const LAVAPIPE_ICD = '/usr/share/vulkan/icd.d/lvp_icd.json';

// Dawn's GPU object must stay referenced for as long as any device from it lives: once collected,
// Dawn's event processing crashes the process later (../shared/gpu/README.md). A module-level variable
// keeps it alive for the life of the process.
const nodeGpus = new Map<string, GPU>();

/**
 * Dawn toggles pdvm asks for when `dawnToggles` is on (docs/PERFORMANCE.md, "Dawn toggles"):
 * allow_unsafe_apis exposes chromium-experimental-subgroup-matrix (tensor cores from WGSL) and
 * vulkan_enable_f16_on_nvidia exposes shader-f16 on NVIDIA's Vulkan driver. Neither is trusted as is:
 * device.ts runs a self-test of each fast path before any kernel uses it.
 */
export const DAWN_TOGGLES = ['allow_unsafe_apis', 'vulkan_enable_f16_on_nvidia'];

/**
 * On machines without a GPU (CI, developer laptops with scripts/install-vulkan.sh), point the Vulkan
 * loader at Mesa lavapipe, unless the user configured a driver or a real GPU is present.
 */
function configureVulkanEnvironment(): void {
  const env = process.env;
  if (!env.XDG_RUNTIME_DIR) env.XDG_RUNTIME_DIR = tmpdir();
  if (env.VK_ICD_FILENAMES || env.VK_DRIVER_FILES || !existsSync(LAVAPIPE_ICD)) return;
  const gpuNodes = ['/dev/dri', '/dev/nvidia0', '/dev/nvidiactl'].some((p) => existsSync(p));
  const vendorIcd = ['/etc/vulkan/icd.d', '/usr/share/vulkan/icd.d', '/usr/local/nvidia/share/vulkan/icd.d'].some(
    (dir) => existsSync(dir) && readdirSync(dir).some((f) => /nvidia|amdvlk|amd_icd/i.test(f)),
  );
  if (!gpuNodes && !vendorIcd) env.VK_ICD_FILENAMES = LAVAPIPE_ICD;
}

/** Dawn's entry point, with DAWN_TOGGLES requested or not (one GPU object each, kept for the process). */
async function nodeGpuEntryPoint(toggles = false): Promise<GPU> {
  const key = toggles ? 'toggles' : 'plain';
  const known = nodeGpus.get(key);
  if (known) return known;
  configureVulkanEnvironment();
  let dawn: typeof import('webgpu');
  try {
    dawn = await import('webgpu');
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') {
      throw new WebGpuUnavailableError('the webgpu backend in Node needs the optional "webgpu" package (Dawn), which is not installed: run `npm install webgpu`, or use the CPU backend');
    }
    throw new WebGpuUnavailableError(`the "webgpu" package (Dawn) failed to load (${(e as Error).message}); reinstall it with \`npm install webgpu\`, or use the CPU backend`);
  }
  const { create, globals } = dawn;
  // GPUBufferUsage, GPUMapMode, GPUShaderStage... as in a browser
  Object.assign(globalThis, globals);
  // PDVM_DAWN_EXTRA_TOGGLES (comma-separated, with the toggles on): more Dawn toggles, for measuring
  // what one costs (e.g. disable_robustness); none is asked for by default
  const extra = (process.env.PDVM_DAWN_EXTRA_TOGGLES ?? '').split(',').map((t) => t.trim()).filter((t) => /^[a-z0-9_]+$/.test(t));
  const gpu = create(toggles ? [`enable-dawn-features=${[...DAWN_TOGGLES, ...extra].join(',')}`] : []);
  nodeGpus.set(key, gpu);
  return gpu;
}

registerGpuProvider(async (toggles) => ({ gpu: await nodeGpuEntryPoint(toggles), toggles: toggles ? DAWN_TOGGLES : [] }));
