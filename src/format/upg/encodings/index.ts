/**
 * The UPG encodings by name: how a record's params are validated, which buffers they imply, and how
 * the buffers become a WeightTensor. One file per encoding, each with pack / unpack / matmul together.
 */
import { ModelFormatError } from '../../../errors.js';
import type { EncodedTensor, EncodingParams, UpgBuffer } from './common.js';
import { BITMAP_TILES, BitmapTensor } from './bitmap.js';
import { CsrTensor } from './csr.js';
import { DENSE_DTYPES, DenseUpgTensor, type DenseDtype } from './dense.js';
import { NM_GROUPS, NM_PATTERNS, NmTensor } from './nm.js';
import { Q4Tensor, Q4_GROUPS } from './q4.js';
import { Q8Tensor } from './q8.js';

export const ENCODINGS = ['dense', 'q8', 'q4', 'bitmap', 'nm', 'csr'] as const;
export type EncodingName = (typeof ENCODINGS)[number];

export { BitmapTensor, CsrTensor, DenseUpgTensor, NmTensor, Q4Tensor, Q8Tensor };
export type { EncodedTensor, EncodingParams, UpgBuffer };

/** The buffers a tensor record must have. `counts` carries the data-dependent lengths (bitmap nnz, csr entries) read from the file. */
export function expectedBuffers(
  where: string,
  encoding: string,
  shape: number[],
  params: EncodingParams,
  counts: Record<string, number[] | undefined>,
): Omit<UpgBuffer, 'bytes'>[] {
  const fail = (problem: string): never => {
    throw new ModelFormatError(where, problem);
  };
  const int = (key: string, allowed: number[]): number => {
    const v = params[key];
    if (typeof v !== 'number' || !allowed.includes(v)) fail(`parameter ${key}=${JSON.stringify(v)} of encoding ${encoding} is not one of ${allowed.join(', ')}`);
    return v as number;
  };
  if (encoding === 'dense') {
    const dtype = params.dtype as DenseDtype;
    if (!DENSE_DTYPES.includes(dtype)) fail(`dense dtype ${JSON.stringify(params.dtype)} is not one of ${DENSE_DTYPES.join(', ')}`);
    return DenseUpgTensor.expectedBuffers(shape, dtype);
  }
  if (shape.length !== 2) fail(`encoding ${encoding} needs a matrix, got shape [${shape}]`);
  const [rows, cols] = shape as [number, number];
  switch (encoding) {
    case 'q8':
      return Q8Tensor.expectedBuffers(rows, cols);
    case 'q4':
      return Q4Tensor.expectedBuffers(rows, cols, int('group', Q4_GROUPS));
    case 'bitmap': {
      const bits = int('bits', [4, 8]);
      const valueShape = counts.values ?? fail('has no values buffer');
      const nnz = bits === 8 ? valueShape[0]! : 2 * valueShape[0]!; // bits 4: nnz or nnz - 1, checked by offsets
      return BitmapTensor.expectedBuffers(rows, cols, int('tile', BITMAP_TILES), bits, nnz);
    }
    case 'nm': {
      const n = int('n', [2, 4]);
      const m = int('m', [4, 8]);
      if (!NM_PATTERNS.some(([a, b]) => a === n && b === m)) fail(`pattern ${n}:${m} is not 2:4 or 4:8`);
      const bits = int('bits', [4, 8]);
      return NmTensor.expectedBuffers(rows, cols, n, m, bits, bits === 4 ? int('group', NM_GROUPS) : 0);
    }
    case 'csr':
      return CsrTensor.expectedBuffers(rows, (counts.entries ?? fail('has no entries buffer'))[0]!);
    default:
      return fail(`uses encoding "${encoding}", which this reader does not know (it knows ${ENCODINGS.join(', ')}); upgrade pdvm or recompress with known encodings`);
  }
}

/** Builds the tensor from validated buffers (bytes by role). */
export function tensorFromBuffers(encoding: EncodingName, shape: number[], params: EncodingParams, b: Map<string, Uint8Array>): EncodedTensor {
  const [rows, cols] = shape as [number, number];
  switch (encoding) {
    case 'dense':
      return new DenseUpgTensor(rows, cols, params.dtype as DenseDtype, b.get('values')!);
    case 'q8':
      return Q8Tensor.fromBuffers(rows, cols, b);
    case 'q4':
      return Q4Tensor.fromBuffers(rows, cols, params.group as number, b);
    case 'bitmap':
      return BitmapTensor.fromBuffers(rows, cols, params.tile as number, params.bits as 4 | 8, b);
    case 'nm':
      return NmTensor.fromBuffers(rows, cols, params.n as number, params.m as number, params.bits as 4 | 8, (params.group as number) ?? 0, b);
    case 'csr':
      return CsrTensor.fromBuffers(rows, cols, b);
  }
}

/** Joins consecutive row blocks of one matrix, packed separately with the same encoding and parameters. */
export function concatRowBlocks(parts: EncodedTensor[]): EncodedTensor {
  if (parts.length === 1) return parts[0]!;
  const first = parts[0]!;
  if (first instanceof Q8Tensor) return Q8Tensor.concatRows(parts as Q8Tensor[]);
  if (first instanceof Q4Tensor) return Q4Tensor.concatRows(parts as Q4Tensor[]);
  if (first instanceof BitmapTensor) return BitmapTensor.concatRows(parts as BitmapTensor[]);
  if (first instanceof NmTensor) return NmTensor.concatRows(parts as NmTensor[]);
  if (first instanceof CsrTensor) return CsrTensor.concatRows(parts as CsrTensor[]);
  if (first instanceof DenseUpgTensor) return DenseUpgTensor.concatRows(parts as DenseUpgTensor[]);
  throw new Error(`concatRowBlocks: unknown encoding ${first.encoding}`);
}
