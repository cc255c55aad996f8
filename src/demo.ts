/** Where the demo model shipped with the package is: models/brown-llama-12m.upg beside dist/. */
export function demoModelUrl(): URL {
  // dist/src/demo.js -> ../../models
  return new URL('../../models/brown-llama-12m.upg', import.meta.url);
}
