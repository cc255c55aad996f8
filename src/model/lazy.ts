/**
 * Weights that stay in their source until used: a LazyTensor knows its name, encoding and shape, and
 * reads its bytes on each load(). The WebGPU backend loads them layer by layer as it uploads and drops
 * each host copy once it is on the device, so loading holds about one layer's tensors in host memory,
 * not the model. The CPU backend, which multiplies from host memory, materialises them all.
 */
import type { LayerWeights, ModelWeights } from './weights.js';
import type { WeightTensor } from './tensor.js';

export class LazyTensor implements WeightTensor {
  constructor(
    readonly name: string,
    readonly encoding: string,
    readonly rows: number,
    readonly cols: number,
    /** Bytes the stored encoding takes. */
    readonly byteLength: number,
    private readonly read: () => Promise<WeightTensor>,
  ) {}

  /** Reads the tensor from its source (again on every call: nothing is kept here). */
  load(): Promise<WeightTensor> {
    return this.read();
  }

  matmul(): void {
    throw new Error(`${this.name} is not in memory (a lazily loaded weight): materialise the weights first`);
  }

  readRow(): void {
    throw new Error(`${this.name} is not in memory (a lazily loaded weight): materialise the weights first`);
  }
}

/** The tensor itself, loaded where it is lazy. */
export function loadTensor(t: WeightTensor): Promise<WeightTensor> {
  return t instanceof LazyTensor ? t.load() : Promise.resolve(t);
}

export function hasLazyTensors(w: ModelWeights): boolean {
  const all = [w.embed, w.lmHead, ...w.layers.flatMap((L) => [...L.qkv, L.o, ...L.gateUp, L.down])];
  return all.some((t) => t instanceof LazyTensor);
}

/** One layer with its matrices in memory. */
export async function materializeLayer(L: LayerWeights): Promise<LayerWeights> {
  const qkv: WeightTensor[] = [];
  for (const t of L.qkv) qkv.push(await loadTensor(t));
  const o = await loadTensor(L.o);
  const gateUp: WeightTensor[] = [];
  for (const t of L.gateUp) gateUp.push(await loadTensor(t));
  const down = await loadTensor(L.down);
  return { ...L, qkv, o, gateUp, down };
}

/** Every matrix in memory (the CPU backend); a tied lm_head stays the embedding's object. */
export async function materializeWeights(w: ModelWeights): Promise<ModelWeights> {
  if (!hasLazyTensors(w)) return w;
  const layers: LayerWeights[] = [];
  for (const L of w.layers) layers.push(await materializeLayer(L));
  const embed = await loadTensor(w.embed);
  const lmHead = w.lmHead === w.embed ? embed : await loadTensor(w.lmHead);
  return { ...w, embed, layers, lmHead };
}
