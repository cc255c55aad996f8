/**
 * Synthetic models for `pdvm bench`: a shape's config and random weights made directly in the chosen
 * encoding on the GPU from a seed, tensor by tensor (no dense copy, no checkpoint, the whole model
 * never in host memory). A fill kernel writes each buffer from a hash of (seed, buffer, index):
 *   q4       random nibbles; per group scale in [0.002, 0.004], min = -7.5 scale
 *   q8       random int8 (-128..127, rows of whole 16-column units); per row f32 scale in
 *            [0.00015, 0.0003] (weights within about +-0.04, like the others)
 *   bitmap4  random masks made on the host in row chunks (each bit kept with probability `density`)
 *            with their per-tile offsets; values random nibbles; per-tile scales in [0.002, 0.005];
 *            then expanded to q4 on the GPU as the engine does (fused/weights.ts), unless `bitmap: 'walk'`
 *   bf16     values uniform in [-0.03, 0.03]
 * The embedding table is bf16; lm_head has the matrices' encoding (q4 for bitmap models, as pruning
 * leaves lm_head dense).
 */
import type { Gpu } from '../backends/webgpu/device.js';
import { expandBitmap4, fusedWeightBytes, rowBlocked, rowsPerBinding, type FusedLayerWeights, type FusedMatrix, type FusedModelWeights } from '../backends/webgpu/fused/weights.js';
import type { ModelConfig } from '../model/config.js';

export interface BenchShape {
  layers: number;
  hidden: number;
  intermediate: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  ropeTheta: number;
}

export const BENCH_SHAPES: Record<string, BenchShape> = {
  'phi-4': { layers: 40, hidden: 5120, intermediate: 17920, heads: 40, kvHeads: 10, headDim: 128, vocab: 100352, ropeTheta: 250000 },
  'llama-3.1-70b': { layers: 80, hidden: 8192, intermediate: 28672, heads: 64, kvHeads: 8, headDim: 128, vocab: 128256, ropeTheta: 500000 },
  'llama-3.1-8b': { layers: 32, hidden: 4096, intermediate: 14336, heads: 32, kvHeads: 8, headDim: 128, vocab: 128256, ropeTheta: 500000 },
  'llama-3.2-1b': { layers: 16, hidden: 2048, intermediate: 8192, heads: 32, kvHeads: 8, headDim: 64, vocab: 128256, ropeTheta: 500000 },
  'brown-llama': { layers: 6, hidden: 384, intermediate: 1024, heads: 6, kvHeads: 2, headDim: 64, vocab: 4096, ropeTheta: 10000 },
};

export type BenchEncoding = 'q4' | 'q8' | 'bitmap' | 'bf16';

export interface SyntheticOptions {
  encoding: BenchEncoding;
  /** q4 group (columns). */
  group: number;
  /** bitmap tile (columns). */
  tile: number;
  /** bitmap: share of weights kept. */
  density: number;
  seed: number;
  /** bitmap: rewrite as q4 (default, what the engine runs) or keep the bitmap kernel. */
  bitmap?: 'expand' | 'walk';
}

export function benchConfig(s: BenchShape): ModelConfig {
  return {
    architecture: 'LlamaForCausalLM', hiddenSize: s.hidden, intermediateSize: s.intermediate, numLayers: s.layers,
    numHeads: s.heads, numKvHeads: s.kvHeads, headDim: s.headDim, rotaryDim: s.headDim, vocabSize: s.vocab,
    rmsNormEps: 1e-5, ropeTheta: s.ropeTheta, ropeScaling: { type: 'default' }, maxPositionEmbeddings: 131072,
    tieWordEmbeddings: false, slidingWindow: null, attentionBias: false, bosTokenId: null, eosTokenIds: [],
  };
}

const FILL_WG = 256;

/** mode 0 random u32; 1 q4 (scale, min) f16 pairs; 2 bf16 pairs; 3 f16 pairs of tile scales; 4 q8 f32 row scales. */
function fillWgsl(mode: number): string {
  const value: Record<number, string> = {
    0: 'h',
    1: 'pack2x16float(vec2<f32>(s, -7.5 * s))',
    2: '(bitcast<u32>(a) >> 16u) | (bitcast<u32>(c) & 0xffff0000u)',
    3: 'pack2x16float(vec2<f32>(0.002 + 0.003 * u01(h), 0.002 + 0.003 * u01(h ^ 0x68e31da4u)))',
    4: 'bitcast<u32>(0.00015 + 0.00015 * u01(h))',
  };
  return `
@group(0) @binding(0) var<storage, read_write> dst: array<u32>;
@group(0) @binding(1) var<uniform> params: vec4<u32>; // words, seed, first word, -
fn pcg(x: u32) -> u32 {
  let s = x * 747796405u + 2891336453u;
  let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (w >> 22u) ^ w;
}
fn u01(h: u32) -> f32 { return f32(h >> 8u) / 16777216.0; }
@compute @workgroup_size(${FILL_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  for (var i = gid.x; i < params.x; i += nwg.x * ${FILL_WG}u) {
    let h = pcg((params.z + i) ^ pcg(params.y));
    let s = 0.002 + 0.002 * u01(h);
    let a = (u01(h) - 0.5) * 0.06;
    let c = (u01(pcg(h)) - 0.5) * 0.06;
    dst[i] = ${value[mode]};
  }
}`;
}

/** Bytes a row takes in each buffer of a matrix of this encoding (for splitting across bindings). */
function rowBytes(cols: number, encoding: BenchEncoding, o: SyntheticOptions): number[] {
  if (encoding === 'bf16') return [Math.ceil(cols / 8) * 16];
  if (encoding === 'q8') return [Math.ceil(cols / 16) * 16, 4];
  if (encoding === 'q4') return [(Math.ceil(cols / o.group) * o.group) / 2, Math.ceil(cols / o.group) * 4];
  // bitmap: expanded to q4 with the tile as group (its own buffers are smaller)
  return [(Math.ceil(cols / o.tile) * o.tile) / 2, Math.ceil(cols / o.tile) * 4];
}

/** xorshift32 for host-side masks. */
function xorshift(seed: number): () => number {
  let x = (seed | 0) || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

function popcount(v: number): number {
  v -= (v >>> 1) & 0x55555555;
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

export class SyntheticWeights {
  private readonly pipelines = new Map<number, GPUComputePipeline>();
  private readonly params: GPUBuffer;
  private counter = 0;
  /** Bytes of every buffer made. */
  bytes = 0;

  constructor(private readonly gpu: Gpu, private readonly o: SyntheticOptions) {
    this.params = gpu.createBuffer('synthetic.params', 16, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
  }

  private fill(buffer: GPUBuffer, words: number, mode: number): void {
    const device = this.gpu.device;
    let p = this.pipelines.get(mode);
    if (!p) {
      p = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code: fillWgsl(mode) }), entryPoint: 'main' } });
      this.pipelines.set(mode, p);
    }
    const group = device.createBindGroup({ layout: p.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer } }, { binding: 1, resource: { buffer: this.params } }] });
    device.queue.writeBuffer(this.params, 0, new Uint32Array([words, this.o.seed * 7919 + this.counter++, 0, 0]));
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(p);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(Math.min(65535, Math.max(1, Math.ceil(words / FILL_WG))));
    pass.end();
    device.queue.submit([enc.finish()]);
  }

  private buffer(label: string, words: number, mode: number | null): GPUBuffer {
    const b = this.gpu.createBuffer(label, words * 4, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST);
    this.bytes += b.size;
    if (mode !== null) this.fill(b, words, mode);
    return b;
  }

  /** A matrix of random weights; split by rows where one binding cannot hold a buffer of it (as uploadFusedMatrix does). */
  matrix(label: string, rows: number, cols: number, encoding: BenchEncoding): FusedMatrix {
    const per = rowsPerBinding(this.gpu, label, rowBytes(cols, encoding, this.o));
    if (rows <= per) return this.block(label, rows, cols, encoding);
    const blocks: FusedMatrix[] = [];
    for (let r0 = 0; r0 < rows; r0 += per) blocks.push(this.block(`${label}.rows${r0}`, Math.min(per, rows - r0), cols, encoding));
    return rowBlocked(blocks);
  }

  private block(label: string, rows: number, cols: number, encoding: BenchEncoding): FusedMatrix {
    if (encoding === 'bf16') {
      const units = Math.ceil(cols / 8);
      const buffers = { W: this.buffer(`${label}.w`, rows * units * 4, 2) };
      return { encoding: 'bf16', rows, cols, units, group: 0, buffers, bytes: buffers.W.size };
    }
    if (encoding === 'q4') {
      const g = this.o.group, groups = Math.ceil(cols / g), words = (groups * g) / 8;
      const buffers = { Q: this.buffer(`${label}.q`, rows * words, 0), SM: this.buffer(`${label}.sm`, rows * groups, 1) };
      return { encoding: 'q4', rows, cols, units: words / 4, group: g, buffers, bytes: buffers.Q.size + buffers.SM.size };
    }
    if (encoding === 'q8') {
      const units = Math.ceil(cols / 16);
      const buffers = { Q: this.buffer(`${label}.q`, rows * units * 4, 0), SCALE: this.buffer(`${label}.scale`, rows, 4) };
      return { encoding: 'q8', rows, cols, units, group: 0, buffers, bytes: buffers.Q.size + buffers.SCALE.size };
    }
    const m = this.bitmap(label, rows, cols);
    if ((this.o.bitmap ?? 'expand') === 'walk') return m;
    const q = expandBitmap4(this.gpu, m, label);
    this.bytes += q.bytes - m.bytes;
    return q;
  }

  private bitmap(label: string, rows: number, cols: number): FusedMatrix {
    const tile = this.o.tile, tiles = Math.ceil(cols / tile), wpt = tile / 32;
    const mask = this.buffer(`${label}.mask`, rows * tiles * wpt, null);
    const offsets = this.buffer(`${label}.offsets`, rows * tiles + 1, null);
    const next = xorshift(this.o.seed * 104729 + this.counter++);
    const keep = Math.round(this.o.density * 4294967296);
    const rowsPerChunk = Math.max(1, Math.floor((1 << 22) / (tiles * wpt)));
    let nnz = 0;
    for (let r0 = 0; r0 < rows; r0 += rowsPerChunk) {
      const n = Math.min(rowsPerChunk, rows - r0);
      const m = new Uint32Array(n * tiles * wpt);
      const off = new Uint32Array(n * tiles);
      for (let t = 0; t < n * tiles; t++) {
        off[t] = nnz;
        for (let w = 0; w < wpt; w++) {
          let word = 0;
          if (this.o.density === 0.5) word = next();
          else for (let b = 0; b < 32; b++) if (next() < keep) word |= 1 << b;
          m[t * wpt + w] = word >>> 0;
          nnz += popcount(word);
        }
      }
      this.gpu.device.queue.writeBuffer(mask, r0 * tiles * wpt * 4, m);
      this.gpu.device.queue.writeBuffer(offsets, r0 * tiles * 4, off);
    }
    this.gpu.device.queue.writeBuffer(offsets, rows * tiles * 4, new Uint32Array([nnz]));
    const buffers = {
      MASK: mask,
      OFFS: offsets,
      VALS: this.buffer(`${label}.values`, Math.max(1, Math.ceil(nnz / 8)), 0),
      SC: this.buffer(`${label}.scales`, Math.ceil((rows * tiles) / 2), 3),
    };
    const bytes = Object.values(buffers).reduce((a, b) => a + b.size, 0);
    return { encoding: 'bitmap4', rows, cols, units: tiles, group: tile, buffers, bytes };
  }

  private ones(label: string, n: number): GPUBuffer {
    const b = this.gpu.createBuffer(label, n * 4, GPUBufferUsage.STORAGE, true);
    new Float32Array(b.getMappedRange(), 0, n).fill(1);
    b.unmap();
    this.bytes += b.size;
    return b;
  }

  /** Every weight of a model of this shape, made on the GPU. `onTensor` reports progress. */
  async model(c: ModelConfig, onTensor?: (label: string) => void): Promise<FusedModelWeights> {
    const enc = this.o.encoding, H = c.hiddenSize;
    const qkvRows = (c.numHeads + 2 * c.numKvHeads) * c.headDim;
    const layers: FusedLayerWeights[] = [];
    for (let l = 0; l < c.numLayers; l++) {
      layers.push({
        attnNorm: this.ones(`layers.${l}.attn_norm`, H),
        qkv: this.matrix(`layers.${l}.qkv`, qkvRows, H, enc),
        qkvBias: null,
        o: this.matrix(`layers.${l}.o`, H, c.numHeads * c.headDim, enc),
        mlpNorm: this.ones(`layers.${l}.mlp_norm`, H),
        gateUp: this.matrix(`layers.${l}.gate_up`, 2 * c.intermediateSize, H, enc),
        down: this.matrix(`layers.${l}.down`, H, c.intermediateSize, enc),
      });
      onTensor?.(`layer ${l + 1}/${c.numLayers}`);
      await this.gpu.device.queue.onSubmittedWorkDone(); // bounds the staging memory in flight
    }
    const embed = this.matrix('embed', c.vocabSize, H, 'bf16');
    const lmHead = this.matrix('lm_head', c.vocabSize, H, enc === 'bitmap' ? 'q4' : enc);
    const finalNorm = this.ones('final_norm', H);
    await this.gpu.device.queue.onSubmittedWorkDone();
    this.gpu.check();
    const w = { embed, layers, finalNorm, lmHead };
    return { ...w, bytes: fusedWeightBytes(w) };
  }
}
