/**
 * The one-pass tensor-core prompt attention's self-test (self-test.ts) on this device in variants that
 * take its parts out one at a time, to find which part a device gets wrong where the whole fails:
 *   as-is                  the kernel (keys growing, rescales that matter)
 *   no-growth              the kernel on the plain data (rescales by factors near 1)
 *   no-rescale             never a rescale: the reference max of a row's first live tile kept (plain data)
 *   roundtrip              no rescale factor, but O stored to workgroup memory and loaded back every tile (plain data)
 *   roundtrip-col          the same, stored and loaded column-major
 *   no-block ...           the rescale block taken out, and then the output's division by l
 * Each line: the variant and the self-test's answer. Run: node attention-lab.mjs (bundled with node-gpu.ts).
 */
import { Gpu } from '../src/backends/webgpu/device.js';
import { selfTestPromptAttention } from '../src/backends/webgpu/self-test.js';

const gpu = await Gpu.acquire({});
const f = gpu.features;
if (!f.subgroupMatrixF16 || !f.subgroupMatrixIndexing) {
  console.log('no self-tested f16 subgroup matrices here: nothing to try');
  process.exit(0);
}
const always = (c: string) => c.replace('if (any(anyMoved != vec4<u32>(0u))) {', 'if (true || any(anyMoved != vec4<u32>(0u))) {');
const noScale = (c: string) => c.replace(/ \*= fs\[g \* 16u \+ e \/ 16u\];/g, ' *= 1.0;');
const colMajor = (c: string) =>
  c.replace(/\n {6}subgroupMatrixStore<row_major>\(&ss\[g\], (\d+u), (o\d+), /g, '\n      subgroupMatrixStore<col_major>(&ss[g], $1, $2, ')
    .replace(/subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>\(&ss\[g\]/g, 'subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, col_major>(&ss[g]');
// the rescale block taken out (its barrier kept as a plain one, or as the uniform load)
const noBlock = (keep: string) => (c: string) => c.replace(/ {4}\/\/ \(the uniform load is the barrier[\s\S]*?\n {4}\}\n(?= {4}\{\n {6}let pl)/, `    ${keep}\n`);
const plainOut = (c: string) => c.replace(/\] \* fs\[g \* 16u \+ e \/ 16u\]; \}/g, ']; }');
// O stored straight to out, not divided by l (whole subgroups right where a row has one key: row 0)
const directOut = (c: string) => {
  const head = c.slice(0, c.indexOf('  // out (T, HEADS * HD), or parts'));
  const qDim = /tt \* (\d+)u \+ h \* (\d+)u/.exec(c)!;
  const n = [...c.matchAll(/var o(\d+) = subgroup_matrix_result/g)].length;
  return `${head}${Array.from({ length: n }, (_, i) => `  subgroupMatrixStore<row_major>(&out, (t0 + g * 16u) * ${qDim[1]}u + h * ${qDim[2]}u + ${16 * i}u, o${i}, ${qDim[1]}u);`).join('\n')}\n}\n`;
};
// the two subgroup shuffles of a tile taken out (each half row its own max and sum: row 0, one key, still right undivided)
const noShuffles = (c: string) => c.replace('tmax = max(tmax, subgroupShuffleXor(tmax, 1u));', '').replace('l += sum + subgroupShuffleXor(sum, 1u);', 'l += sum;');
const variants: [string, { rescaleAbove?: number; passes?: 1 | 2 }, (c: string) => string, number][] = [
  ['direct-out', { rescaleAbove: 1e9 }, directOut, 0],
  ['direct-out, no-block', { rescaleAbove: 1e9 }, (c) => directOut(noBlock('workgroupBarrier();')(c)), 0],
  ['no-block, no shuffles, O not divided by l', { rescaleAbove: 1e9 }, (c) => plainOut(noShuffles(noBlock('workgroupBarrier();')(c))), 0],
  ['direct-out, no-block, no shuffles', { rescaleAbove: 1e9 }, (c) => directOut(noShuffles(noBlock('workgroupBarrier();')(c))), 0],
  ['two passes, every subgroup\'s output through ss', { passes: 2 }, (c) => c.replace('let whole = t0 + g * 16u + 16u <= T;', 'let whole = false;'), 0],
  ['as-is', {}, (c) => c, 0.08],
  ['no-growth', {}, (c) => c, 0],
  ['no-rescale', { rescaleAbove: 1e9 }, (c) => c, 0],
  ['roundtrip', { rescaleAbove: 1e9 }, (c) => noScale(always(c)), 0],
  ['no-block (a barrier)', { rescaleAbove: 1e9 }, noBlock('workgroupBarrier();'), 0],
  ['no-block, O not divided by l (row 0 still right: one key)', { rescaleAbove: 1e9 }, (c) => plainOut(noBlock('workgroupBarrier();')(c)), 0],
  ['roundtrip-col', { rescaleAbove: 1e9 }, (c) => colMajor(noScale(always(c))), 0],
];
for (const [name, options, transform, growth] of variants) {
  let changed = true;
  const r = await selfTestPromptAttention(gpu.device, f.subgroupMaxSize, f.subgroupMatrixIndexing, f.subgroupMatrixSyntax, false, { passes: 1 as const, ...options }, (c) => {
    const t = transform(c);
    changed = t !== c || name === 'as-is' || name === 'no-growth' || name === 'no-rescale';
    if (process.env.LAB_DUMP === name) console.log(t);
    return t;
  }, growth);
  if (!changed) console.log(`${name}: (the transform changed nothing)`);
  console.log(`${name}: ${r}`);
}
process.exit(0);
