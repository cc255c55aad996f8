/**
 * The Node-only way to a `GPU` object: Dawn through the `webgpu` npm package. Loaded dynamically by
 * device.ts only when running in Node, so browser bundles never see it.
 */
import { existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';

const LAVAPIPE_ICD = '/usr/share/vulkan/icd.d/lvp_icd.json';

// Dawn's GPU object must stay referenced for as long as any device from it lives: once collected,
// Dawn's event processing crashes the process later (../shared/gpu/README.md). A module-level variable
// keeps it alive for the life of the process.
let nodeGpu: GPU | null = null;

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

export async function nodeGpuEntryPoint(): Promise<GPU> {
  if (nodeGpu) return nodeGpu;
  configureVulkanEnvironment();
  const { create, globals } = await import('webgpu');
  // GPUBufferUsage, GPUMapMode, GPUShaderStage... as in a browser
  Object.assign(globalThis, globals);
  nodeGpu = create([]);
  return nodeGpu;
}
