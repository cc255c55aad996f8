/**
 * Where `navigator.gpu` is missing (Node), the WebGPU `GPU` object comes from a provider: node-gpu.ts
 * registers Dawn's when imported (the Node entry and the CLI import it); a page or another runtime may
 * register its own. The types are opaque here so that the package's public declarations need no
 * WebGPU type definitions.
 */

/** Gives a WebGPU `GPU` object (opaque here), with Dawn's toggles asked for or not, and the toggles it was created with. */
export type GpuProvider = (toggles: boolean) => Promise<{ gpu: object; toggles: string[] }>;

let provider: GpuProvider | null = null;

export function registerGpuProvider(p: GpuProvider): void {
  provider = p;
}

export function registeredGpuProvider(): GpuProvider | null {
  return provider;
}
