/**
 * Self-tests of the fast paths, run once at device creation (device.ts): each computes a small product
 * whose answer is known exactly (small integers and quarters, exact in f16 and f32) with the same
 * WGSL primitives the kernels use, and a path whose answer differs is never used. This is what makes
 * the Dawn toggles (allow_unsafe_apis, vulkan_enable_f16_on_nvidia) safe to ask for: a toggle that
 * exposes a broken feature costs speed, not correctness.
 */
import { f32ToF16 } from '../../format/dtype.js';
import { kStoredDim, type KvStorage } from './kernels/kv.js';
import { attentionMergeWgsl, attentionTensorCoreWgsl, TC_TILE_Q, type AttentionTensorCoreOptions } from './kernels/attention-tensor-core.js';
import { INT8_FEW_TILE, int8InputBytes, int8SplitCombineWgsl, int8TileName, int8TileSize, matmulInt8Wgsl, q4ToInt8RowsGrid, q4ToInt8RowsWgsl, quantizeBlocksGrid, quantizeBlocksWgsl, quantizeTokensGrid, quantizeTokensWgsl, type Int8Scaling, type Int8Split, type Int8Tile, type Int8Units } from './kernels/matmul-int8.js';
import { convertF16Invocations, convertF16Wgsl, linearGrid, matmulTensorCoreWgsl, paddedCols, subgroupMatrixLoadWgsl, subgroupMatrixStoreWgsl, tensorCoreTileName, tensorCoreTileSize, type SubgroupIndexing, type SubgroupMatrixSyntax, type TensorCoreTile } from './kernels/matmul-tiled.js';

/**
 * What a self-test that runs real kernels needs: storage buffers (filled, or a size), pipelines
 * compiled with their errors thrown, bind groups, and a submit that reads a buffer back as f32.
 * `destroy` frees every buffer it made.
 */
export function selfTestKit(device: GPUDevice) {
  const buffers: GPUBuffer[] = [];
  const storage = (data: Float32Array | Uint32Array | number, extra = 0): GPUBuffer => {
    const bytes = typeof data === 'number' ? data : data.byteLength;
    const b = device.createBuffer({ size: Math.max(16, Math.ceil(bytes / 16) * 16), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | extra });
    if (typeof data !== 'number') device.queue.writeBuffer(b, 0, data);
    buffers.push(b);
    return b;
  };
  const compile = async (label: string, code: string): Promise<GPUComputePipeline> => {
    const module = device.createShaderModule({ label, code });
    const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === 'error').map((m) => m.message);
    if (errors.length) throw new Error(`${label}: ${errors.join('; ')}`);
    return device.createComputePipeline({ label, layout: 'auto', compute: { module, entryPoint: 'main' } });
  };
  const bind = (pipeline: GPUComputePipeline, bufs: GPUBuffer[]): GPUBindGroup =>
    device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: bufs.map((buffer, binding) => ({ binding, resource: { buffer } })) });
  /** Copies `bytes` of `src` out at the end of `enc`, submits it and returns them as f32. */
  const submitAndRead = async (enc: GPUCommandEncoder, src: GPUBuffer, bytes: number): Promise<Float32Array> => {
    const read = device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    buffers.push(read);
    enc.copyBufferToBuffer(src, 0, read, 0, bytes);
    device.queue.submit([enc.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    const got = new Float32Array(read.getMappedRange().slice(0));
    read.unmap();
    return got;
  };
  const destroy = () => {
    for (const b of buffers) b.destroy();
  };
  return { storage, compile, bind, submitAndRead, destroy };
}

/** Runs one workgroup of a kernel over (input words) and reads `outFloats` f32 back; throws on any error. */
async function runOnce(device: GPUDevice, code: string, input: Uint32Array, outFloats: number): Promise<Float32Array> {
  device.pushErrorScope('validation');
  const module = device.createShaderModule({ label: 'self-test', code });
  const info = await module.getCompilationInfo();
  const errors = info.messages.filter((m) => m.type === 'error').map((m) => m.message);
  const pipeline = device.createComputePipeline({ label: 'self-test', layout: 'auto', compute: { module, entryPoint: 'main' } });
  const inBuf = device.createBuffer({ size: Math.max(16, input.byteLength), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(inBuf, 0, input);
  const outBuf = device.createBuffer({ size: outFloats * 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  const readBuf = device.createBuffer({ size: outFloats * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const bindGroup = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: inBuf } }, { binding: 1, resource: { buffer: outBuf } }] });
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bindGroup);
  pass.dispatchWorkgroups(1);
  pass.end();
  enc.copyBufferToBuffer(outBuf, 0, readBuf, 0, outFloats * 4);
  device.queue.submit([enc.finish()]);
  const err = await device.popErrorScope();
  if (errors.length || err) throw new Error(`${errors.join('; ')}${err ? ` ${err.message}` : ''}`.trim());
  await readBuf.mapAsync(GPUMapMode.READ);
  const out = new Float32Array(readBuf.getMappedRange().slice(0));
  readBuf.unmap();
  for (const b of [inBuf, outBuf, readBuf]) b.destroy();
  return out;
}

function compare(got: Float32Array, want: Float32Array): string {
  for (let i = 0; i < want.length; i++) {
    if (got[i] !== want[i]) return `failed: element ${i} is ${got[i]}, the known answer ${want[i]}`;
  }
  return 'passed';
}

/** shader-f16: f16 loads (two a word), vec2<f16> fma, conversions. */
export async function selfTestShaderF16(device: GPUDevice): Promise<string> {
  const n = 64;
  const a = Array.from({ length: n }, (_, i) => (i - 32) / 4);
  const words = new Uint32Array(n / 2);
  for (let i = 0; i < n / 2; i++) words[i] = (f32ToF16(a[2 * i]!) | (f32ToF16(a[2 * i + 1]!) << 16)) >>> 0;
  const code = /* wgsl */ `enable f16;
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> o: array<f32>;
@compute @workgroup_size(${n / 2}) fn main(@builtin(local_invocation_index) i: u32) {
  let v = bitcast<vec2<f16>>(src[i]);
  let r = fma(v, vec2<f16>(3.0h, -2.0h), vec2<f16>(0.25h));
  o[4u * i] = f32(r.x); o[4u * i + 1u] = f32(r.y);
  o[4u * i + 2u] = f32(v.x * v.y); o[4u * i + 3u] = f32(f16(f32(v.x) * 0.5));
}`;
  const want = new Float32Array(2 * n);
  for (let i = 0; i < n / 2; i++) {
    const x = a[2 * i]!, y = a[2 * i + 1]!;
    want.set([3 * x + 0.25, -2 * y + 0.25, x * y, x * 0.5], 4 * i);
  }
  try {
    return compare(await runOnce(device, code, words, 2 * n), want);
  } catch (e) {
    return `failed: ${(e as Error).message.slice(0, 200)}`;
  }
}

/**
 * Subgroup matrices f16 x f16 -> f32 at 16x16x16, as the prefill kernel uses them (kernels/
 * matmul-tiled.ts): left (tokens x k) row-major and right (k x rows, stored [row][k]) column-major
 * from workgroup memory with a padded stride, result stored to workgroup memory, two k steps.
 */
export async function selfTestSubgroupMatrix(device: GPUDevice, subgroupSize: number, syntax: SubgroupMatrixSyntax): Promise<string> {
  const M = 16, N = 16, K = 32, S = 40; // S: the kernels' padded stride (f16 elements)
  const A = new Float32Array(M * K), W = new Float32Array(N * K);
  for (let m = 0; m < M; m++) for (let k = 0; k < K; k++) A[m * K + k] = ((m * 7 + k * 3) % 9) - 4;
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) W[n * K + k] = ((n * 5 + k * 11) % 7) - 3 + 0.5;
  const input = new Float32Array(M * K + N * K);
  input.set(A);
  input.set(W, M * K);
  const code = /* wgsl */ `enable f16;
enable chromium_experimental_subgroup_matrix;
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> o: array<f32>;
var<workgroup> xs: array<f16, ${M * S}>;
var<workgroup> ws: array<f16, ${N * S}>;
var<workgroup> cs: array<f32, ${M * N}>;
@compute @workgroup_size(${subgroupSize}) fn main(@builtin(local_invocation_index) lid: u32) {
  for (var e = lid; e < ${M * K}u; e += ${subgroupSize}u) {
    xs[(e / ${K}u) * ${S}u + e % ${K}u] = f16(src[e]);
    ws[(e / ${K}u) * ${S}u + e % ${K}u] = f16(src[${M * K}u + e]);
  }
  workgroupBarrier();
  var acc = subgroup_matrix_result<f32, 16, 16>();
  for (var k = 0u; k < ${K}u; k += 16u) {
    let l = ${subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_left<f16, 16, 16>', '&xs', 'k', false, `${S}u`)};
    let r = ${subgroupMatrixLoadWgsl(syntax, 'subgroup_matrix_right<f16, 16, 16>', '&ws', 'k', true, `${S}u`)};
    acc = subgroupMatrixMultiplyAccumulate(l, r, acc);
  }
  ${subgroupMatrixStoreWgsl(syntax, '&cs', '0u', 'acc', false, '16u')};
  workgroupBarrier();
  for (var e = lid; e < ${M * N}u; e += ${subgroupSize}u) { o[e] = cs[e]; }
}`;
  const want = new Float32Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += A[m * K + k]! * W[n * K + k]!;
      want[m * N + n] = s;
    }
  }
  try {
    return compare(await runOnce(device, code, new Uint32Array(input.buffer), M * N), want);
  } catch (e) {
    return `failed: ${(e as Error).message.slice(0, 200)}`;
  }
}

/**
 * The prefill's tensor-core kernel itself (kernels/matmul-tiled.ts: x converted to f16, then the
 * product) in each of `tiles`, on a small product with partial tiles (70 tokens, 130 rows, 80
 * columns: a padded stage; dense f32 weights), small integers so the answer is exact: compiled, run
 * and compared element by element.
 */
export async function selfTestPrefillKernel(device: GPUDevice, subgroupSize: number, indexing: SubgroupIndexing, tiles: readonly TensorCoreTile[], syntax: SubgroupMatrixSyntax): Promise<string> {
  const T = 70, rows = 130, cols = 80;
  const W = new Float32Array(rows * cols), X = new Float32Array(T * cols);
  for (let i = 0; i < W.length; i++) W[i] = ((i * 7) % 9) - 4;
  for (let i = 0; i < X.length; i++) X[i] = ((i * 5) % 7) - 3;
  const want = new Float32Array(T * rows);
  for (let t = 0; t < T; t++) for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += X[t * cols + c]! * W[r * cols + c]!;
    want[t * rows + r] = s;
  }
  const { storage, compile, bind, submitAndRead, destroy } = selfTestKit(device);
  try {
    device.pushErrorScope('validation');
    const w = storage(W), x = storage(X), step = storage(new Uint32Array([T, 0, 0, 0]));
    const x16 = storage(Math.ceil(T / 128) * 128 * paddedCols(cols) * 2);
    const convert = await compile('self-test convert_f16', convertF16Wgsl(cols));
    for (const tile of tiles) {
      const code = matmulTensorCoreWgsl({ weight: { encoding: 'dense', dtype: 'f32', rowChunks: cols / 4 }, rows, cols, yStride: rows, yOffset: 0, bias: false, residual: false }, subgroupSize, indexing, tile, syntax);
      const pipeline = await compile(`self-test prefill kernel ${tensorCoreTileName(tile)}`, code);
      const y = storage(T * rows * 4, GPUBufferUsage.COPY_SRC);
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      pass.setPipeline(convert);
      pass.setBindGroup(0, bind(convert, [x, x16, step]));
      pass.dispatchWorkgroups(...linearGrid(convertF16Invocations(T, cols)));
      const size = tensorCoreTileSize(tile);
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bind(pipeline, [w, x16, y, step]));
      pass.dispatchWorkgroups(Math.ceil(T / size.tokens), Math.ceil(rows / size.rows));
      pass.end();
      const got = await submitAndRead(enc, y, T * rows * 4);
      const r = compare(got, want);
      if (r !== 'passed') return `${r} (tile ${tensorCoreTileName(tile)})`;
    }
    return 'passed';
  } catch (e) {
    return `failed: ${(e as Error).message.slice(0, 300)}`;
  } finally {
    const err = await device.popErrorScope().catch(() => null);
    if (err) console.warn(`prefill kernel self-test: ${err.message.slice(0, 300)}`);
    destroy();
  }
}

/**
 * The q4 product on the int8 tensor cores (kernels/matmul-int8.ts: quantize_blocks, then the product)
 * in each of `tiles`, on 70 tokens x 130 rows x 128 columns (partial tiles, two groups) with a
 * residual: every block of x holds a +-127, so x quantizes to itself with scale 1, and the weights'
 * scales and mins are quarters and integers, so the answer is exact. Scaling 'row' (q4_to_int8_rows and
 * quantize_tokens first): the weights decode to integers within +-127, with a -127 in every row, so
 * they too round to themselves with scale 1; 'row-q4' the same, the product rounding the q4 words as it
 * stages them (q4_to_int8_rows making only the rows' scales).
 */
export async function selfTestPrefillInt8(device: GPUDevice, indexing: SubgroupIndexing, tiles: readonly Int8Tile[], syntax: SubgroupMatrixSyntax, units: Int8Units, scaling: Int8Scaling = 'group'): Promise<string> {
  const T = 70, rows = 130, cols = 128, groups = cols / 64, wordsPerRow = cols / 8, byRow = scaling !== 'group', w8 = scaling === 'row';
  const X = Float32Array.from({ length: T * cols }, (_, i) => (i % 64 === 0 ? ((i / 64) % 2 ? -127 : 127) : (((i / cols) | 0) * 5 + (i % cols) * 3) % 15 - 7));
  const nibble = (r: number, c: number) => (byRow && c === 0 ? 0 : (r * 7 + c * 11) % 16);
  const scale = (r: number, g: number) => (byRow ? [1, 2, 4, 8][(r + g) % 4]! : 0.25 * (1 + ((r + g) % 3)));
  const min = (r: number, g: number) => (byRow ? (g === 0 ? -127 : [-60, 0, -7][(r + g) % 3]!) : -((r + 2 * g) % 5));
  const q = new Uint32Array(rows * wordsPerRow), sm = new Uint32Array(rows * groups);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) q[r * wordsPerRow + (c >> 3)]! |= nibble(r, c) << (4 * (c & 7));
    for (let g = 0; g < groups; g++) sm[r * groups + g] = (f32ToF16(scale(r, g)) | (f32ToF16(min(r, g)) << 16)) >>> 0;
  }
  const y0 = Float32Array.from({ length: T * rows }, (_, i) => (i % 7) - 3);
  const want = Float32Array.from(y0);
  for (let t = 0; t < T; t++) for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += (nibble(r, c) * scale(r, c >> 6) + min(r, c >> 6)) * X[t * cols + c]!;
    want[t * rows + r]! += s;
  }
  const { storage, compile, bind, submitAndRead, destroy } = selfTestKit(device);
  try {
    device.pushErrorScope('validation');
    const x = storage(X), qb = storage(q), smb = storage(sm), step = storage(new Uint32Array([T, 0, 0, 0]));
    const bytes = int8InputBytes(512, cols), xq = storage(bytes.xq), xscale = storage(bytes.xscale);
    const quantize = byRow ? await compile('self-test quantize_tokens', quantizeTokensWgsl(cols)) : await compile('self-test quantize_blocks', quantizeBlocksWgsl(cols));
    const convert = byRow ? await compile('self-test q4_to_int8_rows', q4ToInt8RowsWgsl(rows, cols, !w8)) : null;
    // 'row': the int8 rows and a scale a row; 'row-q4': (scale, 127 / max) a row
    const rowsOut = w8 ? [storage(new Uint32Array((rows * cols) / 4)), storage(new Float32Array(rows))] : byRow ? [storage(new Float32Array(2 * rows))] : [];
    // every tile; scaled by row, the few-token tile also with its columns split in two and combined
    const runs = [...tiles.map((tile) => ({ tile, split: undefined as Int8Split | undefined })), ...(byRow && tiles.includes(INT8_FEW_TILE) ? [{ tile: INT8_FEW_TILE, split: { parts: 2, maxTokens: T } }] : [])];
    for (const { tile, split } of runs) {
      const shape = { weight: { encoding: 'q4' as const, wordsPerRow, group: 64, groups }, rows, cols, yStride: rows, yOffset: 0, bias: false, residual: true };
      const name = `${int8TileName(tile)} (${scaling}${split ? `, columns in ${split.parts}` : ''})`;
      const pipeline = await compile(`self-test int8 product ${name}`, matmulInt8Wgsl(shape, indexing, tile, syntax, units, undefined, scaling, split));
      const combine = split ? await compile(`self-test int8 split combine`, int8SplitCombineWgsl(shape, split)) : null;
      const y = storage(y0, GPUBufferUsage.COPY_SRC), parts = split ? storage(new Float32Array(split.parts * T * rows)) : null;
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      if (convert) {
        pass.setPipeline(convert);
        pass.setBindGroup(0, bind(convert, [qb, smb, ...rowsOut]));
        pass.dispatchWorkgroups(...q4ToInt8RowsGrid(rows));
      }
      pass.setPipeline(quantize);
      pass.setBindGroup(0, bind(quantize, [x, xq, xscale, step]));
      pass.dispatchWorkgroups(...(byRow ? quantizeTokensGrid(T) : quantizeBlocksGrid(T, cols)));
      const size = int8TileSize(tile);
      pass.setPipeline(pipeline);
      const out = parts ?? y;
      pass.setBindGroup(0, bind(pipeline, w8 ? [...rowsOut, xq, xscale, out, step] : [qb, smb, xq, xscale, out, step, ...rowsOut]));
      pass.dispatchWorkgroups(Math.ceil(T / size.tokens), Math.ceil(rows / size.rows), split?.parts ?? 1);
      if (combine) {
        pass.setPipeline(combine);
        pass.setBindGroup(0, bind(combine, [parts!, y, step]));
        pass.dispatchWorkgroups(Math.ceil((T * rows) / 256));
      }
      pass.end();
      const r = compare(await submitAndRead(enc, y, T * rows * 4), want);
      if (r !== 'passed') return `${r} (tile ${name})`;
    }
    return 'passed';
  } catch (e) {
    return `failed: ${(e as Error).message.slice(0, 300)}`;
  } finally {
    const err = await device.popErrorScope().catch(() => null);
    if (err) console.warn(`int8 prefill self-test: ${err.message.slice(0, 300)}`);
    destroy();
  }
}

/**
 * The prompt attention on the tensor cores (kernels/attention-tensor-core.ts) on a small prompt: 2
 * query heads sharing a KV head of dim 32, 70 rows at positions 0..69 (a partial second query tile,
 * keys in 3 tiles), an f32 cache (or `cacheStorage`), against the same attention in f64 here; within 1e-2 of the largest
 * output (f16 q, k, v and probabilities); in one pass over the keys, or (`splitOverKeys`) split over
 * keys (a split a key tile) then merged (attention_merge).
 */
export async function selfTestPromptAttention(
  device: GPUDevice, subgroupSize: number, indexing: SubgroupIndexing, syntax: SubgroupMatrixSyntax, splitOverKeys = false, variant: AttentionTensorCoreOptions = {}, transform = (code: string) => code,
  keyGrowth = variant.passes === 1 ? 0.08 : 0, cacheStorage: KvStorage = 'f32',
): Promise<string> {
  // (128 rows a workgroup: HD 96, so that Q is staged in three rounds of 32 dims)
  const T = 70, heads = 2, HD = variant.rows === 128 ? 96 : 32, qDim = heads * HD, kvDim = HD, stride = qDim + 2 * kvDim, ctx = 80, rowsAt = 8;
  const wave = (i: number, a: number) => Math.sin(i * a) * 0.9;
  const qkv = Float32Array.from({ length: T * stride }, (_, i) => wave(i, 0.37));
  // keyGrowth: later keys larger (7.4x at the last), so that rows' maxes keep growing: the one-pass
  // kernel's rescale runs and matters (with it left out, this check fails)
  const K = Float32Array.from({ length: ctx * kvDim }, (_, i) => wave(i, 0.61) * (1 + keyGrowth * Math.floor(i / kvDim)));
  const V = Float32Array.from({ length: ctx * kvDim }, (_, i) => wave(i, 0.23));
  const want = new Float32Array(T * qDim);
  let scale = 0;
  for (let t = 0; t < T; t++) for (let h = 0; h < heads; h++) {
    const s = Array.from({ length: t + 1 }, (_, j) => { let d = 0; for (let e = 0; e < HD; e++) d += qkv[t * stride + h * HD + e]! * K[j * kvDim + e]!; return d / Math.sqrt(HD); });
    const m = Math.max(...s), p = s.map((x) => Math.exp(x - m)), l = p.reduce((a, b) => a + b, 0);
    for (let e = 0; e < HD; e++) {
      let o = 0;
      for (let j = 0; j <= t; j++) o += (p[j]! / l) * V[j * kvDim + e]!;
      want[t * qDim + h * HD + e] = o;
      scale = Math.max(scale, Math.abs(o));
    }
  }
  const stepWords = new Uint32Array(rowsAt + 2 * T);
  stepWords[0] = T;
  for (let t = 0; t < T; t++) { stepWords[rowsAt + 2 * t] = 0; stepWords[rowsAt + 2 * t + 1] = t; }
  const shape = { numHeads: heads, numKvHeads: 1, headDim: HD, slidingWindow: null, rotaryDim: HD };
  const layout = { storage: cacheStorage, contextLength: ctx, rowsAt, kvBuffer: -1 };
  const kit = selfTestKit(device), { storage, bind, submitAndRead } = kit;
  device.pushErrorScope('validation');
  try {
    // a kernel that does not compile is this test's answer, with the split it was asked in
    const compile = (label: string, code: string): Promise<GPUComputePipeline | string> =>
      kit.compile(label, code).catch((e: Error) => `failed: ${e.message.slice(0, 300)}`);
    // the cache as f32, or as f16 (also the words of the packed layout: element 2i the low half)
    // (K's dims in the cache's stored order: kStoredDim)
    const cache = (x: Float32Array) => (layout.storage === 'f32' ? x : new Uint32Array(Uint16Array.from(x, f32ToF16).buffer));
    const kStored = K.map((_, i) => K[i - (i % kvDim) + kStoredDim(cacheStorage, HD, HD, i % kvDim)]!);
    const inputs = [storage(qkv), storage(cache(kStored)), storage(cache(V))], step = storage(stepWords);
    // in one pass over the keys, or split over keys by 32 (3 splits) and merged
    for (const split of [splitOverKeys ? { keys: 32, splits: Math.ceil(ctx / 32) } : null]) {
      const what = split ? ' (split over keys)' : '';
      const pipeline = await compile('self-test prompt attention', transform(attentionTensorCoreWgsl(shape, layout, subgroupSize, indexing, syntax, split, variant)));
      if (typeof pipeline === 'string') return `${pipeline}${what}`;
      const merge = split ? await compile('self-test prompt attention merge', attentionMergeWgsl(shape, layout, split)) : null;
      if (typeof merge === 'string') return `${merge}${what}`;
      const out = storage(T * qDim * 4, GPUBufferUsage.COPY_SRC);
      const parts = split ? storage(T * heads * split.splits * HD * 4) : null, ml = split ? storage(T * heads * split.splits * 8) : null;
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bind(pipeline, split ? [...inputs, parts!, step, ml!] : [...inputs, out, step]));
      pass.dispatchWorkgroups(heads, Math.ceil(T / (variant.rows ?? TC_TILE_Q)), split ? split.splits : 1);
      if (merge) {
        pass.setPipeline(merge);
        pass.setBindGroup(0, bind(merge, [parts!, ml!, out, step]));
        pass.dispatchWorkgroups(T * heads);
      }
      pass.end();
      const got = await submitAndRead(enc, out, T * qDim * 4);
      for (let i = 0; i < want.length; i++) {
        if (!(Math.abs(got[i]! - want[i]!) <= 1e-2 * scale)) return `failed${what}: element ${i} is ${got[i]}, the reference ${want[i]!.toFixed(5)}`;
      }
    }
    return 'passed';
  } catch (e) {
    return `failed: ${(e as Error).message.slice(0, 300)}`;
  } finally {
    const err = await device.popErrorScope().catch(() => null);
    if (err) console.warn(`prompt attention self-test: ${err.message.slice(0, 300)}`);
    kit.destroy();
  }
}
