/**
 * The KV cache of the WebGPU backend, shared by the forward pass (prefill, unfused decode, batched
 * steps) and the fused decoder (docs/KV-CACHE.md):
 *
 *   per layer, a K pool and a V pool of slots:  (slots, contextLength, kvDim)
 *   a sequence owns one slot for its life; position p of slot s is row (s * contextLength + p)
 *   storage 'f16' (default): 16-bit floats, two a 32-bit word; 'f32' as an option
 *     - read as vec4<f16> where the device has shader-f16, else as vec2<u32> words with
 *       unpack2x16float ('packed'; the bytes are the same, so either kernel reads either cache)
 *     - K rows of f16 caches hold each head's dims in RoPE pair order: word w of a head holds the two
 *       dims that rotate together (w, w + rotaryDim/2) for w < rotaryDim/2, then the pass-through dims
 *       in order, so the kernel that rotates a pair writes one whole word (kernels/kv.ts)
 *   a pool larger than one storage binding (maxStorageBufferBindingSize) is several buffers, each of
 *   whole slots; a dispatch binds one of them (one dispatch per buffer for a batch across buffers).
 *
 * Kernels take each row's slot and position from a per-step table in the step buffer (kernels/kv.ts:
 * `rowsAt`), so one dispatch serves rows of different sequences (a batched decode step) or many rows
 * of one (prefill).
 */
import { InvalidInputError } from '../../errors.js';
import type { Gpu } from './device.js';
import { GpuOutOfMemoryError } from './errors.js';
import type { KvStorage } from './kernels/kv.js';

export type KvCacheDtype = 'f16' | 'f32';

export interface KvCacheShape {
  numLayers: number;
  kvDim: number;
  contextLength: number;
  dtype: KvCacheDtype;
  /** f16 caches: read and written as u32 words even where the device has shader-f16 (tests, CI). */
  packed?: boolean;
  /** At most this many slots a buffer (tests split a small pool across buffers with it). */
  maxSlotsPerBuffer?: number;
}

/** One pool buffer: whole slots of every layer's K and V. */
export interface KvBufferGroup {
  index: number;
  slots: number;
  k: GPUBuffer[]; // per layer: (slots, contextLength, kvDim)
  v: GPUBuffer[];
}

/** A sequence's place in the pool: buffer group and slot within it. */
export interface KvSlot {
  group: KvBufferGroup;
  local: number;
  /** The row table's slot word: group << 16 | local. */
  word: number;
}

const MAX_SLOTS_PER_GROUP = 0xffff;

export class KvCache {
  readonly groups: KvBufferGroup[] = [];
  readonly storage: KvStorage;
  /** Bytes of one slot of one layer's K (or V). */
  readonly slotBytes: number;
  /** Whole slots one buffer holds (the binding limit / slotBytes). */
  readonly slotsPerBuffer: number;
  private readonly free: KvSlot[] = [];
  private disposed = false;

  constructor(readonly gpu: Gpu, readonly shape: KvCacheShape) {
    const s = shape;
    if (s.dtype !== 'f16' && s.dtype !== 'f32') throw new InvalidInputError(`kvCache must be 'f16' or 'f32', got '${String(s.dtype)}'`);
    this.storage = s.dtype === 'f32' ? 'f32' : gpu.features.shaderF16 && !s.packed ? 'f16' : 'f16-packed';
    this.slotBytes = s.contextLength * s.kvDim * (s.dtype === 'f32' ? 4 : 2);
    if (this.slotBytes > gpu.maxBindingBytes) {
      const most = Math.floor(gpu.maxBindingBytes / (s.kvDim * (s.dtype === 'f32' ? 4 : 2)));
      throw new GpuOutOfMemoryError(
        `a KV cache slot of ${s.contextLength} positions needs ${(this.slotBytes / 1e6).toFixed(1)} MB per layer for K (and V), over this device's storage binding limit of ${(gpu.maxBindingBytes / 1e6).toFixed(1)} MB; use a context length of at most ${most}${s.dtype === 'f32' ? ' (or the f16 KV cache)' : ''}`,
      );
    }
    this.slotsPerBuffer = Math.min(MAX_SLOTS_PER_GROUP, s.maxSlotsPerBuffer ?? MAX_SLOTS_PER_GROUP, Math.floor(gpu.maxBindingBytes / this.slotBytes));
  }

  /** Bytes of K and V for `slots` sequences over every layer. */
  bytesFor(slots: number): number {
    return 2 * this.shape.numLayers * this.slotBytes * slots;
  }

  get capacity(): number {
    return this.groups.reduce((a, g) => a + g.slots, 0);
  }

  get slotsInUse(): number {
    return this.capacity - this.free.length;
  }

  /** Adds buffers for at least `slots` more slots (whole buffers of at most slotsPerBuffer). */
  grow(slots: number): void {
    if (this.disposed) throw new InvalidInputError('this KV cache was disposed');
    let left = Math.max(1, slots);
    while (left > 0) {
      const n = Math.min(left, this.slotsPerBuffer);
      const index = this.groups.length;
      if (index > 0xffff) throw new GpuOutOfMemoryError('the KV cache has too many buffers');
      const bytes = n * this.slotBytes;
      const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
      const k: GPUBuffer[] = [], v: GPUBuffer[] = [];
      for (let l = 0; l < this.shape.numLayers; l++) {
        k.push(this.gpu.createBuffer(`kv.${index}.${l}.k`, bytes, usage));
        v.push(this.gpu.createBuffer(`kv.${index}.${l}.v`, bytes, usage));
      }
      const group: KvBufferGroup = { index, slots: n, k, v };
      this.groups.push(group);
      // handed out lowest first
      for (let i = n - 1; i >= 0; i--) this.free.push({ group, local: i, word: (index << 16) | i });
      this.free.sort((a, b) => b.word - a.word);
      left -= n;
    }
  }

  /** A free slot, growing the pool by one buffer group (doubling, within the binding) when full. */
  acquire(): KvSlot {
    if (this.free.length === 0) this.grow(Math.max(1, Math.min(this.capacity, this.slotsPerBuffer)));
    return this.free.pop()!;
  }

  release(slot: KvSlot): void {
    if (this.disposed) return;
    if (this.free.includes(slot)) return;
    this.free.push(slot);
    this.free.sort((a, b) => b.word - a.word);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const g of this.groups) for (const b of [...g.k, ...g.v]) b.destroy();
    this.free.length = 0;
  }
}
