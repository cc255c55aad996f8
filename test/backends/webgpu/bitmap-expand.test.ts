/**
 * A 4-bit bitmap rewritten as q4 on the GPU (kernels/bitmap-expand.ts) decodes to exactly the bitmap's
 * weights: every tile size, a partial last tile, densities from sparse to full, parts joined by rows.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { uploadFusedMatrix } from '../../../src/backends/webgpu/fused/weights.js';
import { BitmapTensor, BITMAP_TILES } from '../../../src/format/upg/encodings/bitmap.js';
import { f16ArrayToF32 } from '../../../src/format/upg/encodings/common.js';
import { rng } from '../../helpers.js';
import { SKIP_GPU, readU32, testGpu } from './gpu.js';

function randomBitmap(rows: number, cols: number, tile: number, density: number, seed: number): BitmapTensor {
  const next = rng(seed);
  const w = Float32Array.from({ length: rows * cols }, () => (next() < density ? (next() - 0.5) * (0.01 + next()) : 0));
  return BitmapTensor.pack(rows, cols, w, tile, 4);
}

test('bitmap4 expanded to q4 on the GPU decodes to exactly the bitmap weights', { skip: SKIP_GPU }, async () => {
  const gpu = await testGpu();
  for (const tile of BITMAP_TILES) {
    for (const [density, cols] of [[0.5, 300], [0.05, 2 * tile], [1, tile + 32], [0.7, 36]] as const) {
      const parts = [randomBitmap(5, cols, tile, density, tile * 31 + cols), randomBitmap(3, cols, tile, density, tile * 17 + cols + 1)];
      const rows = 8;
      const m = uploadFusedMatrix(gpu, parts, 'expand test');
      assert.equal(m.encoding, 'q4');
      assert.equal(m.group, tile);
      const tiles = Math.ceil(cols / tile);
      assert.equal(m.units, (tiles * tile) / 32);
      const q = await readU32(gpu, m.buffers.Q!, rows * m.units * 4);
      const sm = f16ArrayToF32(new Uint16Array((await readU32(gpu, m.buffers.SM!, rows * tiles)).buffer));
      let worst = 0, where = '';
      const want = new Float32Array(cols);
      for (let r = 0; r < rows; r++) {
        const part = r < 5 ? parts[0]! : parts[1]!;
        part.readRow(r < 5 ? r : r - 5, want);
        for (let c = 0; c < tiles * tile; c++) {
          const u = (q[r * m.units * 4 + (c >> 3)]! >>> ((c & 7) * 4)) & 15;
          const g = r * tiles + Math.floor(c / tile);
          const got = Math.fround(Math.fround(u * sm[2 * g]!) + sm[2 * g + 1]!);
          const diff = Math.abs(got - (c < cols ? want[c]! : 0));
          if (diff > worst) { worst = diff; where = `row ${r} column ${c}: ${got} against ${c < cols ? want[c] : 0}`; }
        }
      }
      assert.equal(worst, 0, `tile ${tile}, ${cols} columns, density ${density}: worst difference ${worst} at ${where}`);
      for (const b of Object.values(m.buffers)) b.destroy();
    }
  }
});
