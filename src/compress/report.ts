/** The per-tensor compression report and its totals, printed by `pdvm compress` and `pdvm inspect`. */

export interface TensorReportRow {
  name: string;
  encoding: string;
  /** 'group=64', 'BF16', ... */
  detail: string;
  shape: number[];
  bytes: number;
  sparsity?: number;
  relError?: number;
}

export interface ReportTotals {
  parameters: number;
  tensorBytes: number;
  fileBytes: number;
  bitsPerWeight: number;
  ratioVsBf16: number;
  ratioVsFp32: number;
}

export function reportTotals(rows: TensorReportRow[], fileBytes: number): ReportTotals {
  const parameters = rows.reduce((a, r) => a + r.shape.reduce((x, y) => x * y, 1), 0);
  const tensorBytes = rows.reduce((a, r) => a + r.bytes, 0);
  return {
    parameters,
    tensorBytes,
    fileBytes,
    bitsPerWeight: (8 * tensorBytes) / parameters,
    ratioVsBf16: (2 * parameters) / tensorBytes,
    ratioVsFp32: (4 * parameters) / tensorBytes,
  };
}

export function formatBytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} MB`;
  return `${(n / 1e3).toFixed(1)} kB`;
}

/** A fixed-width table: tensor, encoding, shape, sparsity, bits/weight (indices and scales included), relative error. */
export function formatReport(rows: TensorReportRow[], fileBytes: number): string {
  const nameWidth = Math.max(6, ...rows.map((r) => r.name.length)) + 2;
  const lines = [
    'tensor'.padEnd(nameWidth) + 'encoding'.padEnd(26) + 'shape'.padEnd(14) + 'sparsity'.padStart(9) + 'bits/w'.padStart(8) + 'rel.err'.padStart(10),
  ];
  for (const r of rows) {
    const n = r.shape.reduce((x, y) => x * y, 1);
    const enc = r.detail ? `${r.encoding} ${r.detail}` : r.encoding;
    lines.push(
      r.name.padEnd(nameWidth) +
        enc.padEnd(26) +
        `[${r.shape}]`.padEnd(14) +
        (r.sparsity === undefined ? '' : `${(100 * r.sparsity).toFixed(1)}%`).padStart(9) +
        ((8 * r.bytes) / n).toFixed(2).padStart(8) +
        (r.relError === undefined ? '' : r.relError.toExponential(2)).padStart(10),
    );
  }
  const t = reportTotals(rows, fileBytes);
  lines.push(
    '',
    `total: ${(t.parameters / 1e6).toFixed(2)} M parameters in ${formatBytes(t.tensorBytes)} of tensors (file ${formatBytes(t.fileBytes)}); ` +
      `${t.bitsPerWeight.toFixed(2)} bits/weight; ${t.ratioVsBf16.toFixed(2)}x smaller than bf16, ${t.ratioVsFp32.toFixed(2)}x smaller than fp32`,
  );
  return lines.join('\n');
}

/** Report rows of a loaded UPG artifact (its tensor summaries carry the compressor's measurements). */
export function upgReportRows(model: { tensors: { name: string; encoding: string; dtype: string; shape: number[]; bytes: number; sparsity?: number; relError?: number }[] }): TensorReportRow[] {
  return model.tensors.map((t) => ({ name: t.name, encoding: t.encoding, detail: t.dtype, shape: t.shape, bytes: t.bytes, sparsity: t.sparsity, relError: t.relError }));
}
