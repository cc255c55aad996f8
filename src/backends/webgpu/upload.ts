/**
 * A model's weights onto the device, matrix by matrix. Lazy tensors (model/lazy.ts) are read just
 * before they are uploaded and let go after, so host memory holds one matrix (q/k/v or gate/up
 * together, which the fused path joins) at a time, not the model. With the fused path, each layer is uploaded in the
 * fused layout and the engine's view of it made at once (fused/engine-weights.ts); where the fused path
 * cannot hold the weights, everything uploaded is freed and the weights are uploaded again for the
 * forward pass alone, with a notice saying why.
 */
import { loadTensor } from '../../model/lazy.js';
import type { WeightTensor } from '../../model/tensor.js';
import type { ModelWeights } from '../../model/weights.js';
import type { Gpu } from './device.js';
import { DeviceLostError, GpuOutOfMemoryError } from './errors.js';
import { engineEmbeddingOverFused, engineLmHeadOverFused, gpuBuffersOf, matricesOver } from './fused/engine-weights.js';
import { fusedWeightBytes, uploadFloats, uploadFusedEmbedding, uploadFusedMatrix, type FusedLayerWeights, type FusedMatrix, type FusedModelWeights } from './fused/weights.js';
import { uploadMatrix, uploadVector, type GpuLayerWeights, type GpuMatrix, type GpuModelWeights, type UploadOptions } from './weights.js';

export interface UploadedWeights {
  /** The fused path's weights, or null when it is off (not asked for, or it could not hold them). */
  fused: FusedModelWeights | null;
  /** The forward pass's weights (sharing the fused buffers where the layouts coincide). */
  weights: GpuModelWeights;
  /** Why the fused path is off although it was asked for. */
  notice?: string;
}

export interface ModelUploadOptions {
  decode: 'fused' | 'unfused';
  upload: UploadOptions;
  /** What to do when an allocation fails (appended to out-of-memory messages). */
  hint: string;
  /** Called with each matrix uploaded in the engine's own layout. */
  onTensor?: (name: string) => void;
}

export async function uploadModelWeights(gpu: Gpu, w: ModelWeights, options: ModelUploadOptions): Promise<UploadedWeights> {
  let notice: string | undefined;
  if (options.decode === 'fused') {
    const made = recordingBuffers(gpu);
    try {
      return await uploadLayers(gpu, made.gpu, w, true, options);
    } catch (e) {
      if (e instanceof DeviceLostError) throw e;
      for (const b of made.buffers) b.destroy();
      notice = `decoding through the forward pass: the fused path cannot hold these weights (${(e as Error).message})`;
    }
  }
  return { ...(await uploadLayers(gpu, gpu, w, false, options)), notice };
}

/** A layer's matrices in groups uploaded together (the fused path joins q/k/v and gate/up), with their labels. */
const GROUPS = [
  ['qkv', 'qkv'],
  ['o', 'o'],
  ['gateUp', 'gate_up'],
  ['down', 'down'],
] as const;
type GroupKey = (typeof GROUPS)[number][0];

/**
 * `gpu` checks the allocations, `g` makes them (a recorder on the fused path, to free them on
 * failure). Each group of matrices is read, uploaded and let go before the next is read.
 */
async function uploadLayers(gpu: Gpu, g: Gpu, w: ModelWeights, fusedPath: boolean, options: ModelUploadOptions): Promise<UploadedWeights> {
  const { hint, upload } = options;
  const step = <R>(what: string, fn: () => R): Promise<R> => gpu.allocating(what, hint, () => guardAllocation(hint, fn));
  // not memoizedUpload: its map would keep every host tensor alive (a tied lm_head is reused below)
  const own = (t: WeightTensor, label: string): GpuMatrix => {
    const m = uploadMatrix(g, t, label, upload);
    options.onTensor?.(label);
    return m;
  };
  const fusedLayers: FusedLayerWeights[] = [];
  const layers: GpuLayerWeights[] = [];
  for (let l = 0; l < w.layers.length; l++) {
    const L = w.layers[l]!;
    const vector = fusedPath ? (v: Float32Array, label: string) => uploadFloats(g, label, v) : (v: Float32Array, label: string) => uploadVector(g, v, label);
    const norms = await step(`layers.${l} norms`, () => ({
      attnNorm: vector(L.attnNorm, `layers.${l}.attn_norm`),
      qkvBias: L.qkvBias ? vector(L.qkvBias, `layers.${l}.qkv_bias`) : null,
      mlpNorm: vector(L.mlpNorm, `layers.${l}.mlp_norm`),
    }));
    const fusedOf: Partial<Record<GroupKey, FusedMatrix>> = {};
    const viewsOf: Partial<Record<GroupKey, GpuMatrix[]>> = {};
    for (const [key, name] of GROUPS) {
      const stored = L[key];
      const label = `layers.${l}.${name}`;
      // this group's host copies, let go when the loop moves on
      const parts: WeightTensor[] = [];
      for (const t of Array.isArray(stored) ? stored : [stored]) parts.push(await loadTensor(t));
      if (fusedPath) {
        const F = await step(`${label} in the fused layout`, () => uploadFusedMatrix(g, parts, label));
        fusedOf[key] = F;
        viewsOf[key] = await step(label, () => matricesOver(parts, F, label, own, upload));
      } else {
        viewsOf[key] = await step(label, () => parts.map((t, i) => own(t, Array.isArray(stored) ? `${label}.${i}` : label)));
      }
    }
    layers.push({ ...norms, qkv: viewsOf.qkv!, o: viewsOf.o![0]!, gateUp: viewsOf.gateUp!, down: viewsOf.down![0]! });
    if (fusedPath) fusedLayers.push({ ...norms, qkv: fusedOf.qkv!, o: fusedOf.o!, gateUp: fusedOf.gateUp!, down: fusedOf.down! });
  }
  const tied = w.lmHead === w.embed;
  let embedHost: WeightTensor | null = await loadTensor(w.embed);
  if (!fusedPath) {
    const embed = await step('the embedding', () => own(embedHost!, 'embed'));
    embedHost = null;
    const lmHead = tied ? embed : await ownLmHead(await loadTensor(w.lmHead));
    const finalNorm = uploadVector(g, w.finalNorm, 'final_norm');
    return { fused: null, weights: withBytes({ embed, layers, finalNorm, lmHead }) };
  }
  const fusedEmbed = await step('the embedding in the fused layout', () => uploadFusedEmbedding(g, embedHost!));
  const embed = await step('the embedding', () => engineEmbeddingOverFused(embedHost!, tied, fusedEmbed, own, upload));
  embedHost = null;
  let fusedLmHead = fusedEmbed;
  let lmHead: GpuMatrix = embed;
  if (!tied) {
    const lmHost = await loadTensor(w.lmHead);
    fusedLmHead = await step('lm_head in the fused layout', () => uploadFusedMatrix(g, [lmHost], 'lm_head'));
    lmHead = await step('lm_head', () => engineLmHeadOverFused(lmHost, fusedLmHead, own, upload));
  }
  const finalNorm = uploadFloats(g, 'final_norm', w.finalNorm);
  const fused = { embed: fusedEmbed, layers: fusedLayers, finalNorm, lmHead: fusedLmHead };
  return { fused: { ...fused, bytes: fusedWeightBytes(fused) }, weights: withBytes({ embed, layers, finalNorm, lmHead }) };

  function ownLmHead(t: WeightTensor): Promise<GpuMatrix> {
    return step('lm_head', () => own(t, 'lm_head'));
  }
}

function withBytes(w: Omit<GpuModelWeights, 'bytes'>): GpuModelWeights {
  return { ...w, bytes: gpuBuffersOf(w).reduce((a, b) => a + b.size, 0) };
}

/**
 * The device seen through a Gpu whose createBuffer also records each buffer, so that an upload that
 * fails half-way can free what it made.
 */
export function recordingBuffers(gpu: Gpu): { gpu: Gpu; buffers: GPUBuffer[] } {
  const buffers: GPUBuffer[] = [];
  const recorder = Object.create(gpu) as Gpu;
  recorder.createBuffer = (...args: Parameters<Gpu['createBuffer']>) => {
    const b = gpu.createBuffer(...args);
    buffers.push(b);
    return b;
  };
  return { gpu: recorder, buffers };
}

/** Dawn throws RangeError for a mapped allocation it cannot make: report it as out of memory. */
export function guardAllocation<R>(hint: string, fn: () => R): R {
  try {
    return fn();
  } catch (e) {
    if (e instanceof RangeError || /memory|allocat/i.test((e as Error).message)) {
      throw new GpuOutOfMemoryError(`GPU allocation failed (${(e as Error).message}); ${hint}`);
    }
    throw e;
  }
}
