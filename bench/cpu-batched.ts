/**
 * Batched decoding on the CPU backend (the demo model): one Engine.step decodes B sequences, each
 * weight read once for all of them. Prints, for each B, the aggregate tokens per second of wall time
 * and per second of this process's CPU time (the second is what the engine does when the machine's
 * other jobs take cores away), and the ratio to B = 1. A program, not a test: figures go to
 * docs/PERFORMANCE.md.
 *   npx tsc -p . && node dist/bench/cpu-batched.js [--batches 1,4,8,16,32] [--steps 24] [--context 256]
 */
import { scriptArgs } from '../scripts/args.js';
import os from 'node:os';
import { CpuEngine } from '../src/backends/cpu/engine.js';
import { demoModelPath } from '../src/cli/common.js';
import { loadModel } from '../src/model/load.js';

const { values } = scriptArgs({ options: { batches: { type: 'string', default: '1,4,8,16,32' }, steps: { type: 'string', default: '24' }, context: { type: 'string', default: '256' } } });
const steps = Number(values.steps);
const loaded = await loadModel(demoModelPath());
const engine = new CpuEngine(loaded.config, loaded.weights, Number(values.context));
const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};
const prompt = Array.from({ length: 16 }, (_, i) => 10 + i);
const rows: { B: number; wall: number; cpu: number }[] = [];
for (const B of values.batches!.split(',').map(Number)) {
  const seqs = Array.from({ length: B }, () => engine.createSequence());
  engine.stepSync(seqs.map((seq) => ({ seq, tokens: prompt, logits: true })));
  for (let i = 0; i < 3; i++) engine.stepSync(seqs.map((seq) => ({ seq, tokens: [100 + i], logits: true }))); // warm
  const w0 = performance.now(), c0 = cpuMs();
  for (let i = 0; i < steps; i++) engine.stepSync(seqs.map((seq) => ({ seq, tokens: [200 + i], logits: true })));
  const wall = (performance.now() - w0) / 1000, cpu = (cpuMs() - c0) / 1000;
  rows.push({ B, wall: (B * steps) / wall, cpu: (B * steps) / cpu });
}
console.log(`CPU batched decode, demo model, ${steps} steps after a 16-token prompt; ${os.cpus()[0]?.model ?? 'cpu'}, load average ${os.loadavg()[0]!.toFixed(1)}, Node ${process.version}, ${new Date().toISOString().slice(0, 10)}`);
console.log('B   tok/s (wall)  tok/s (CPU time)  vs B=1 (CPU time)');
for (const r of rows) console.log(`${String(r.B).padEnd(3)} ${r.wall.toFixed(1).padStart(12)}  ${r.cpu.toFixed(1).padStart(16)}  ${(r.cpu / rows[0]!.cpu).toFixed(2).padStart(17)}x`);
console.log(JSON.stringify(rows));
