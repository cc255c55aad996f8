/**
 * The tensor-core prefill kernels' WGSL (kernels/matmul-tiled.ts, kernels/attention-tensor-core.ts)
 * where no device has subgroup matrices (lavapipe, CI): each layout and tile, each weight encoding,
 * bias and residual epilogues, each KV cache storage, head dims and windows, both ways of finding the
 * subgroup, with the subgroup-matrix builtins rewritten into scalar stand-ins of the same arguments,
 * must pass Tint's checks. Catches WGSL errors outside the builtins before a
 * device with tensor cores runs the kernel (there, matmul-tiled.test.ts compares it with the CPU).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { convertF16Wgsl, dequantF16Wgsl, matmulTensorCoreWgsl, TENSOR_CORE_TILES, tensorCoreTileName, type TensorCoreTile, type TiledMatmulShape } from '../../../src/backends/webgpu/kernels/matmul-tiled.js';
import { attentionMergeWgsl, attentionSplitFor, attentionTensorCoreWgsl } from '../../../src/backends/webgpu/kernels/attention-tensor-core.js';
import type { KvStorage } from '../../../src/backends/webgpu/kernels/kv.js';
import { SKIP_GPU, testGpu, withScalarStandIns } from './gpu.js';

const shapes: TiledMatmulShape[] = [
  { weight: { encoding: 'q4', wordsPerRow: 256, group: 64, groups: 32 }, rows: 3072, cols: 2048, yStride: 3072, yOffset: 0, bias: false, residual: false },
  { weight: { encoding: 'q4', wordsPerRow: 9, group: 8, groups: 9 }, rows: 130, cols: 72, yStride: 133, yOffset: 2, bias: true, residual: true },
  { weight: { encoding: 'q8', wordsPerRow: 18 }, rows: 130, cols: 72, yStride: 133, yOffset: 2, bias: false, residual: true },
  { weight: { encoding: 'dense', dtype: 'f32', rowChunks: 18 }, rows: 130, cols: 72, yStride: 133, yOffset: 2, bias: false, residual: true },
  { weight: { encoding: 'dense', dtype: 'bf16', rowChunks: 9 }, rows: 130, cols: 72, yStride: 133, yOffset: 2, bias: true, residual: false },
];
const tiles: TensorCoreTile[] = [
  ...TENSOR_CORE_TILES, { am: 4, an: 4, gm: 2, gn: 2, kind: 'hybrid', ks: 64 }, { am: 4, an: 4, gm: 2, gn: 2, kind: 'direct', ks: 32 },
  ...TENSOR_CORE_TILES.map((tile) => ({ ...tile, f16Dequant: false })), { am: 4, an: 4, gm: 2, gn: 4, kind: 'staged', ks: 32, f16Dequant: true },
  { am: 2, an: 4, gm: 4, gn: 2, kind: 'staged', ks: 64, f16Dequant: true },
];

test('the tensor-core prefill kernel\'s WGSL passes Tint\'s checks outside the subgroup-matrix builtins', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu();
  const failures: string[] = [];
  const check = async (what: string, code: string) => {
    const info = await gpu.device.createShaderModule({ code }).getCompilationInfo();
    const errors = info.messages.filter((m) => m.type === 'error');
    if (errors.length) failures.push(`${what}: ${errors.map((e) => `line ${e.lineNum}: ${e.message}`).join('; ')}`);
  };
  let n = 0;
  for (const s of shapes) {
    await check(`convert_f16 ${s.cols}`, convertF16Wgsl(s.cols));
    await check(`dequant_f16 ${s.weight.encoding}`, dequantF16Wgsl(s.weight, s.rows, s.cols, Math.ceil(s.rows / 128) * 128));
    for (const tile of tiles) {
      for (const indexing of ['subgroup-id', 'invocation-index'] as const) {
        await check(`${s.weight.encoding} ${tensorCoreTileName(tile)} ${indexing}`, withScalarStandIns(matmulTensorCoreWgsl(s, 32, indexing, tile)));
        n++;
      }
    }
  }
  const attentions: [number, number, number, number | null, KvStorage][] = [[32, 8, 64, null, 'f16'], [40, 10, 128, null, 'f16-packed'], [6, 6, 96, 21, 'f32'], [4, 1, 64, 100, 'f16']];
  if (gpu.subgroups) {
    for (const [numHeads, numKvHeads, headDim, slidingWindow, storage] of attentions) {
      for (const indexing of ['subgroup-id', 'invocation-index'] as const) {
        const s = { numHeads, numKvHeads, headDim, slidingWindow, rotaryDim: headDim };
        const kv = { storage, contextLength: 4096, rowsAt: 520, kvBuffer: -1 };
        await check(`attention ${numHeads}/${numKvHeads}x${headDim} window ${slidingWindow} ${storage} ${indexing}`, withScalarStandIns(attentionTensorCoreWgsl(s, kv, 32, indexing)));
        const split = attentionSplitFor(s, kv.contextLength, 512, 2 ** 31);
        assert.ok(split && split.splits > 1);
        await check(`attention split ${JSON.stringify(split)} ${numHeads}/${numKvHeads}x${headDim} window ${slidingWindow} ${storage} ${indexing}`, withScalarStandIns(attentionTensorCoreWgsl(s, kv, 32, indexing, 'template', split)));
        if (indexing === 'subgroup-id') await check(`attention merge ${numHeads}/${numKvHeads}x${headDim} window ${slidingWindow}`, attentionMergeWgsl(s, kv, split));
        n += indexing === 'subgroup-id' ? 3 : 2;
      }
    }
  }
  console.log(`${n} kernels checked, ${failures.length} failed`);
  assert.deepEqual(failures, []);
});
