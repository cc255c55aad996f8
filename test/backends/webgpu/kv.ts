/**
 * Test helpers for the KV cache (src/backends/webgpu/kv-cache.ts): pools filled from f32 arrays in a
 * given storage (f16 K rows in RoPE pair order), read back as f32 in dim order, and f16 rounding of
 * the CPU reference's caches.
 */
import { kStoredDim, type KvStorage } from '../../../src/backends/webgpu/kernels/kv.js';
import type { Gpu } from '../../../src/backends/webgpu/device.js';
import { f16ToF32, f32ToF16 } from '../../../src/format/dtype.js';
import { read, storage } from './gpu.js';

/**
 * The storages to test on this device: f32, packed f16, and native f16 where the device has
 * shader-f16 (in the subgroups variant only: the f16 loads do not touch the reductions, and lavapipe
 * compiles slowly).
 */
export function kvStorages(gpu: Gpu): KvStorage[] {
  return gpu.features.shaderF16 && gpu.subgroups ? ['f32', 'f16-packed', 'f16'] : ['f32', 'f16-packed'];
}

export function roundF16(a: Float32Array): Float32Array {
  return a.map((x) => f16ToF32(f32ToF16(x)));
}

/** A pool buffer of (rows, kvDim) from f32 values in dim order (K: isKey, stored in pair order). */
export function poolBuffer(gpu: Gpu, values: Float32Array, kvDim: number, headDim: number, rotaryDim: number, s: KvStorage, isKey: boolean): GPUBuffer {
  if (s === 'f32') return storage(gpu, values);
  const halves = new Uint16Array(values.length + (values.length % 4 === 0 ? 0 : 4 - (values.length % 4)));
  for (let i = 0; i < values.length; i++) {
    const e = i % kvDim, head = e - (e % headDim), j = e % headDim;
    const d = isKey ? kStoredDim(s, headDim, rotaryDim, j) : j;
    halves[i] = f32ToF16(values[i - e + head + d]!);
  }
  return storage(gpu, new Uint32Array(halves.buffer));
}

/** A pool buffer read back as f32 in dim order. */
export async function readPool(gpu: Gpu, b: GPUBuffer, n: number, kvDim: number, headDim: number, rotaryDim: number, s: KvStorage, isKey: boolean): Promise<Float32Array> {
  if (s === 'f32') return read(gpu, b, n);
  const words = await read(gpu, b, Math.ceil(n / 2));
  const halves = new Uint16Array(words.buffer);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const e = i % kvDim, head = e - (e % headDim), j = e % headDim;
    const d = isKey ? kStoredDim(s, headDim, rotaryDim, j) : j;
    out[i - e + head + d] = f16ToF32(halves[i]!);
  }
  return out;
}

/** A step buffer with T, pos0 and a row table at word `at` of (slot word, position) rows. */
export function stepWithRows(gpu: Gpu, T: number, at: number, rows: { slot: number; pos: number }[]): GPUBuffer {
  const words = new Uint32Array(at + 2 * rows.length + 4);
  words[0] = T;
  words[1] = rows[0]?.pos ?? 0;
  rows.forEach((r, t) => {
    words[at + 2 * t] = r.slot;
    words[at + 2 * t + 1] = r.pos;
  });
  return storage(gpu, words, 'step');
}
