/**
 * A recorded kernel launch: pipeline and bind group made at load, workgroup counts from the number
 * of tokens in the step. The engine's forward pass is a list of these, encoded into one compute pass.
 */
export interface Dispatch {
  label: string;
  pipeline: GPUComputePipeline;
  bindGroup: GPUBindGroup;
  /** Workgroup counts for T tokens in this step. */
  workgroups: (T: number) => [number, number, number];
}

export function encodeDispatches(pass: GPUComputePassEncoder, dispatches: readonly Dispatch[], T: number): void {
  for (const d of dispatches) {
    pass.setPipeline(d.pipeline);
    pass.setBindGroup(0, d.bindGroup);
    const [x, y, z] = d.workgroups(T);
    pass.dispatchWorkgroups(x, y, z);
  }
}

/**
 * Each dispatch's time alone (`--profile`): `reps` copies of it in one compute pass and one submit,
 * divided, the median of 3 passes; `done` waits for the submitted work (the caller's way of waiting).
 */
export async function timeDispatches(device: GPUDevice, list: readonly Dispatch[], T: number, reps: number, done: () => Promise<unknown>, check?: () => void): Promise<{ label: string; microseconds: number }[]> {
  const out: { label: string; microseconds: number }[] = [];
  for (const d of list) {
    const times: number[] = [];
    for (let r = 0; r < 3; r++) {
      const encoder = device.createCommandEncoder();
      const pass = encoder.beginComputePass();
      for (let i = 0; i < reps; i++) encodeDispatches(pass, [d], T);
      pass.end();
      const t0 = performance.now();
      device.queue.submit([encoder.finish()]);
      await done();
      times.push(((performance.now() - t0) * 1000) / reps);
    }
    check?.();
    times.sort((a, b) => a - b);
    out.push({ label: d.label, microseconds: times[1]! });
  }
  return out;
}

/**
 * The per-step values every kernel reads, in one small storage buffer written once per forward:
 * word 0 T, 1 pos0, 2 random uniform (f32 bits), 3 top-k, 4 temperature, 5 top-p, 6 min-p (f32 bits),
 * then the T token ids from word 8.
 */
export const STEP_HEADER_WORDS = 8;
export const StepWord = { T: 0, pos0: 1, random: 2, topK: 3, temperature: 4, topP: 5, minP: 6 } as const;
