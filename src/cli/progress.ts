/** Progress on stderr: a bar with ETA on a terminal (cli-progress), a few plain lines otherwise. */
import cliProgress from 'cli-progress';

export interface Progress {
  update(done: number, total: number): void;
  stop(): void;
}

function human(n: number, unit: string): string {
  if (unit !== 'B') return String(n);
  if (n >= 1e9) return (n / 1e9).toFixed(2) + ' GB';
  if (n >= 1e6) return (n / 1e6).toFixed(1) + ' MB';
  return (n / 1e3).toFixed(0) + ' kB';
}

export function progressBar(label: string, unit = '', quiet = false): Progress {
  if (quiet) return { update() {}, stop() {} };
  if (process.stderr.isTTY) {
    let bar: cliProgress.SingleBar | null = null;
    return {
      update(done, total) {
        if (!bar) {
          bar = new cliProgress.SingleBar(
            {
              stream: process.stderr,
              format: `${label} [{bar}] {percentage}% | {value_h}/{total_h} | ETA {eta_formatted}`,
              hideCursor: true,
              clearOnComplete: true,
            },
            cliProgress.Presets.shades_classic,
          );
          bar.start(total, 0, { value_h: human(0, unit), total_h: human(total, unit) });
        }
        bar.setTotal(total);
        bar.update(done, { value_h: human(done, unit), total_h: human(total, unit) });
      },
      stop() {
        bar?.stop();
      },
    };
  }
  // not a terminal: a line at each 25% step for long work
  let lastQuarter = -1;
  const start = Date.now();
  return {
    update(done, total) {
      const q = Math.floor((4 * done) / Math.max(1, total));
      if (q > lastQuarter && Date.now() - start > 2000) {
        lastQuarter = q;
        process.stderr.write(`${label}: ${human(done, unit)}/${human(total, unit)} (${Math.round((100 * done) / total)}%)\n`);
      }
    },
    stop() {},
  };
}
