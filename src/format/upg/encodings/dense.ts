/**
 * `dense`: plain BF16 / F16 / F32 values (docs/upg-format.md, "dense"); the entry keeps the tensor's own
 * name and shape, so standard safetensors tools see an ordinary checkpoint tensor.
 */
import { DenseTensor } from '../../../model/tensor.js';
import { f32ToBf16, f32ToF16 } from '../../dtype.js';
import { toF32 } from '../../safetensors.js';
import { bytesOf, concatArrays, type EncodedTensor, type UpgBuffer } from './common.js';

export type DenseDtype = 'BF16' | 'F16' | 'F32';
export const DENSE_DTYPES: DenseDtype[] = ['BF16', 'F16', 'F32'];

/** Rounds float32 values to `dtype` and returns the stored bytes. */
export function denseBytes(values: Float32Array, dtype: DenseDtype): Uint8Array {
  if (dtype === 'F32') return bytesOf(Float32Array.from(values));
  const out = new Uint16Array(values.length);
  const convert = dtype === 'BF16' ? f32ToBf16 : f32ToF16;
  for (let i = 0; i < values.length; i++) out[i] = convert(values[i]!);
  return bytesOf(out);
}

export class DenseUpgTensor extends DenseTensor implements EncodedTensor {
  readonly params: { dtype: DenseDtype };

  constructor(rows: number, cols: number, readonly dtype: DenseDtype, readonly stored: Uint8Array) {
    super(rows, cols, toF32({ name: 'dense', dtype, shape: [rows, cols], offset: 0, byteLength: stored.length }, stored.slice()), dtype);
    this.params = { dtype };
  }

  static pack(rows: number, cols: number, w: Float32Array, dtype: DenseDtype): DenseUpgTensor {
    return new DenseUpgTensor(rows, cols, dtype, denseBytes(w, dtype));
  }

  static concatRows(parts: DenseUpgTensor[]): DenseUpgTensor {
    const rows = parts.reduce((a, p) => a + p.rows, 0);
    return new DenseUpgTensor(rows, parts[0]!.cols, parts[0]!.dtype, concatArrays(parts.map((p) => p.stored)));
  }

  static expectedBuffers(shape: number[], dtype: DenseDtype): Omit<UpgBuffer, 'bytes'>[] {
    return [{ role: 'values', dtype, shape }];
  }

  buffers(): UpgBuffer[] {
    return [{ role: 'values', dtype: this.dtype, shape: [this.rows, this.cols], bytes: this.stored }];
  }

  decodeRow(r: number, out: Float32Array): void {
    this.readRow(r, out);
  }

  unpack(): Float32Array {
    return Float32Array.from(this.data);
  }
}
