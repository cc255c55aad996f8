/**
 * A 4-bit bitmap matrix rewritten as the fused path's q4 layout, on the GPU, exactly:
 *   bitmap4  W[r, c] = (v - 8) * scale[r, tile]  where mask bit c is set (v the stored nibble), else 0
 *   q4       W[r, c] = u * scale + min           with u = v where set, 8 where not, the group = the tile,
 *                                                scale = the tile's scale and min = -8 * scale
 * (u * scale + min is exact in f32: scale is an f16, u has 4 bits, -8 * scale is an f16 again.) One
 * invocation a 32-column unit: it counts the stored values of the tile's earlier mask words, then
 * writes the unit's 32 nibbles (vec4 word e holds columns 8e .. 8e + 7, nibble j column 8e + j) and,
 * for a tile's first unit, the group's (scale, min).
 */
export function bitmapToQ4Wgsl(rows: number, tiles: number, tile: number): string {
  const wpt = tile / 32;
  if (!Number.isInteger(wpt)) throw new Error(`bitmapToQ4Wgsl: the tile (${tile}) must be a multiple of 32 columns`);
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> MASK: array<u32>;
@group(0) @binding(1) var<storage, read> OFFS: array<u32>;
@group(0) @binding(2) var<storage, read> VALS: array<u32>;
@group(0) @binding(3) var<storage, read> SC: array<u32>;
@group(0) @binding(4) var<storage, read_write> Q: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> SM: array<u32>;

const WPT = ${wpt}u;
const TOTAL = ${rows * tiles * wpt}u;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  for (var i = gid.x; i < TOTAL; i += nwg.x * 256u) {
    // unit i is mask word i: tile ti = row * tiles + t, word w of the tile
    let ti = i / WPT;
    let w = i % WPT;
    var idx = OFFS[ti];
    for (var j = 0u; j < w; j++) { idx += countOneBits(MASK[ti * WPT + j]); }
    let m = MASK[i];
    var out = vec4<u32>(0u);
    for (var c = 0u; c < 32u; c++) {
      var u = 8u;
      if (((m >> c) & 1u) == 1u) {
        u = (VALS[idx >> 3u] >> ((idx & 7u) * 4u)) & 15u;
        idx += 1u;
      }
      out[c / 8u] |= u << ((c % 8u) * 4u);
    }
    Q[i] = out;
    if (w == 0u) {
      let s = unpack2x16float(SC[ti >> 1u])[ti & 1u];
      SM[ti] = pack2x16float(vec2<f32>(s, -8.0 * s));
    }
  }
}
`;
}
