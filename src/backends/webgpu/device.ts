/**
 * Device acquisition for Node (Dawn through the `webgpu` package, loaded dynamically) and browsers
 * (`navigator.gpu`), plus what every kernel needs from the device: the features in use, the limits,
 * a pipeline cache, allocation with out-of-memory checks, and device-loss tracking.
 * Nothing here imports a Node module.
 */
import { registeredGpuProvider } from './provider.js';
import { DeviceLostError, GpuOutOfMemoryError, GpuValidationError, WebGpuUnavailableError } from './errors.js';
import { parseTensorCoreTile, TENSOR_CORE_TILES, type SubgroupIndexing, type SubgroupMatrixSyntax, type TensorCoreTile } from './kernels/matmul-tiled.js';
import { INT8_SPLIT_WORKGROUPS, int8TilesFor, parseInt8Tile, type Int8Scaling, type Int8Tile, type Int8Units } from './kernels/matmul-int8.js';
import { attentionTensorCoreBytes, attentionVariantName, parseAttentionKvBuffers, parseAttentionPasses, parseAttentionRows, parseAttentionSplits, type AttentionRows } from './kernels/attention-tensor-core.js';
import { selfTestPrefillInt8, selfTestPrefillKernel, selfTestPromptAttention, selfTestShaderF16, selfTestSubgroupMatrix } from './self-test.js';

/** One subgroup-matrix configuration the adapter offers: component -> result type at M x N x K. */
export interface SubgroupMatrixConfig {
  componentType: string;
  resultComponentType: string;
  M: number;
  N: number;
  K: number;
}

/**
 * What the device offers and what pdvm's kernels use, decided once at device creation. A feature is
 * `true` here only when it was requested, granted and (for the fast paths) passed its self-test.
 */
export interface GpuFeatures {
  /** Subgroup reductions (`subgroups`). */
  subgroups: boolean;
  /** `shader-f16`: f16 arithmetic and storage in WGSL. */
  shaderF16: boolean;
  /** WGSL `packed_4x8_integer_dot_product` (dot4I8Packed / dot4U8Packed). */
  packed4x8IntegerDotProduct: boolean;
  /** Subgroup sizes the adapter reports (min, max); 0 when unknown. */
  subgroupMinSize: number;
  subgroupMaxSize: number;
  /** Every configuration `chromium-experimental-subgroup-matrix` offers (empty without it). */
  subgroupMatrixConfigs: SubgroupMatrixConfig[];
  /** f16 x f16 -> f32 subgroup-matrix products at 16x16x16, self-tested: the prefill's tensor-core path. */
  subgroupMatrixF16: boolean;
  /** How that kernel finds its subgroup (the way that passed its self-test); null when off. */
  subgroupMatrixIndexing: SubgroupIndexing | null;
  /** How the WGSL compiler spells subgroup-matrix loads and stores (the first form that passed its self-test). */
  subgroupMatrixSyntax: SubgroupMatrixSyntax;
  /** Prompt attention on the tensor cores (kernels/attention-tensor-core.ts), self-tested. */
  attentionTensorCore: boolean;
  /** That attention split over keys and merged (long prompts, uneven causal tiles), self-tested. */
  attentionSplit: boolean;
  /** That attention in one pass over the keys (lazy rescale) or two (PDVM_ATTENTION_PASSES; 2 where one failed its self-test). */
  attentionPasses: 1 | 2;
  /** The one-pass kernel's K and V in one workgroup buffer or two (PDVM_ATTENTION_KV_BUFFERS; self-tested). */
  attentionKvBuffers: 1 | 2;
  /** Query rows a workgroup of the one-pass kernel with two K/V buffers (PDVM_ATTENTION_ROWS; self-tested). */
  attentionRows: AttentionRows;
  /** With attentionRows 128: whether the 64-row kernel with the same K/V buffers passed too (for head dims 128 rows do not fit). */
  attentionRows64: boolean;
  /** The splits over keys a long prompt's attention aims at (PDVM_ATTENTION_SPLITS, 8 unset). */
  attentionSplits: number;
  /** That kernel's tile for every matrix; null: chosen per matrix shape (chooseTensorCoreTile). */
  subgroupMatrixTile: TensorCoreTile | null;
  /**
   * q4 g64 prefill products on i8 x i8 -> i32 subgroup matrices at 16x16x32 (kernels/matmul-int8.ts),
   * asked for (GpuOptions.prefillInt8) and self-tested.
   */
  subgroupMatrixI8: boolean;
  /** How this Dawn spells the int8 kernel's loads and counts their offsets (the way that passed its self-test). */
  int8Syntax: SubgroupMatrixSyntax;
  int8Units: Int8Units;
  /** The int8 kernel's tile for every matrix (PDVM_I8_TILE); null: chosen per matrix shape. */
  int8Tile: Int8Tile | null;
  /** Workgroups a token tile the few-token int8 products' column split aims at (PDVM_I8_SPLIT; INT8_SPLIT_WORKGROUPS). */
  int8SplitWorkgroups: number;
  /**
   * The few-token int8 products ('row' scaling) with their operands straight from global memory
   * (kernels/matmul-int8.ts matmulInt8DirectWgsl), 16 x this many tokens a workgroup; 0: off
   * (PDVM_I8_DIRECT=1|2|4; measured slower than the staged tiles, a lab variant).
   */
  int8Direct: number;
  /** The direct kernel's operands in tiles of 16 rows x 128 bytes, loaded at constant offsets (PDVM_I8_DIRECT=t1|t2|t4; not yet measured). */
  int8DirectTiles: boolean;
  /** PDVM_I8_LAB=no-scale: the int8 kernel without its per-group scaling (timing only, wrong results). */
  int8Lab: 'no-scale' | null;
  /** How the int8 products scale: per q4 group ('group', PDVM_PREFILL_I8=1) or once per row and token ('row' or 'row-q4', PDVM_PREFILL_I8=row|row-q4). */
  int8Scaling: Int8Scaling;
  /** Dawn toggles requested (Node). */
  dawnToggles: string[];
  /** Each self-test's outcome: 'passed', 'failed: why', or 'not run: why'. */
  selfTests: Record<string, string>;
}
export interface GpuOptions {
  /** Ignore the `subgroups` feature even where present (tests run both paths). */
  disableSubgroups?: boolean;
  /** Ignore `shader-f16` even where present. */
  disableShaderF16?: boolean;
  /**
   * Use `chromium-experimental-subgroup-matrix` where offered and self-tested: the prefill's f16
   * tensor-core kernel (default on; PDVM_SUBGROUP_MATRIX=0 in the environment turns it off, for the
   * f32 tiles and their token-for-token agreement with the CPU). The kernels spell loads and stores
   * in the form the WGSL compiler accepts without a deprecation warning where it can (self-tested).
   */
  subgroupMatrix?: boolean;
  /**
   * The tensor-core kernel's tile for every matrix (default: PDVM_SM_TILE, a bench/prefill-lab.ts
   * name such as "h64-4422", else chosen per matrix shape).
   */
  subgroupMatrixTile?: TensorCoreTile;
  /**
   * Prompt attention on the tensor cores where subgroup matrices are used and its self-test passes
   * (default on since measured on the H100, 2026-12-05: PDVM_TC_ATTENTION=0 turns it off; else the
   * f32 tiles of kernels/attention.ts serve).
   */
  tensorCoreAttention?: boolean;
  /**
   * Node only: ask Dawn for the toggles allow_unsafe_apis and vulkan_enable_f16_on_nvidia (which expose
   * subgroup matrices and, on NVIDIA, shader-f16). Default on, unless PDVM_DAWN_TOGGLES=0; every fast
   * path they expose must pass its self-test at device creation before a kernel uses it. Browsers
   * cannot set toggles: there the adapter's features decide.
   */
  dawnToggles?: boolean;
  /**
   * The prefill's q4 g64 products on the int8 tensor cores, where i8 x i8 -> i32 16x16x32 subgroup
   * matrices are offered and the kernel's self-test passes. 'row' (the default; PDVM_PREFILL_I8=row):
   * x quantized to int8 a token, W rounded again to int8 a row and kept beside its q4 words (a byte a
   * weight more; where that copy does not fit, the engine drops it and multiplies in f16). 'row-q4'
   * (PDVM_PREFILL_I8=row-q4): the same bytes made from the q4 words as they are staged, no copy, slower.
   * true (PDVM_PREFILL_I8=1 or group): x quantized per token and 64 columns, scaled per group (slow).
   * false (PDVM_PREFILL_I8=0): the f16 tensor cores. Changes the numbers: see kernels/matmul-int8.ts
   * and docs/PERFORMANCE.md.
   */
  prefillInt8?: boolean | 'row' | 'row-q4';
  /** Polyfill WGSL's dot4I8Packed even where the language feature exists (tests run both). */
  disablePackedDot?: boolean;
  /** Split tensors at this many bytes instead of the device's maxStorageBufferBindingSize (tests). */
  maxBindingBytes?: number;
  powerPreference?: GPUPowerPreference;
  /**
   * 'adapter' (default) asks for the adapter's limits (storage binding size, invocations, workgroup
   * memory, storage buffers a stage); 'default' asks for none, so the device has WebGPU's default
   * limits (256 invocations, 16 KiB workgroup memory, 8 storage buffers a stage), as a page that
   * shares a device, or a browser granting only the defaults, gives. Tests run the kernels under it.
   */
  limits?: 'adapter' | 'default';
}

function isNode(): boolean {
  const p = (globalThis as { process?: { versions?: { node?: string } } }).process;
  return typeof p?.versions?.node === 'string';
}

/** `navigator.gpu` in a browser or worker, the registered provider's (Dawn in Node), or null. */
async function gpuEntryPoint(toggles = false): Promise<{ gpu: GPU; toggles: string[] } | null> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu) return { gpu: nav.gpu, toggles: [] };
  if (!registeredGpuProvider() && isNode()) {
    // modules imported past the Node entry (tests, tools) get Dawn here; the specifier is not a
    // literal so that bundlers never follow it into a browser build
    const specifier = ['.', 'node-gpu.js'].join('/');
    await import(specifier);
  }
  const provider = registeredGpuProvider();
  return provider ? ((await provider(toggles)) as { gpu: GPU; toggles: string[] }) : null;
}

function env(name: string): string | undefined {
  return (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.[name];
}

/**
 * GpuOptions.prefillInt8 from PDVM_PREFILL_I8: unset or 'row' -> 'row' (the default), 'row-q4',
 * '1' or 'group' -> true, '0', 'f16' or 'off' -> false; anything else is an error that names the choices.
 */
export function parsePrefillInt8(v: string | undefined): boolean | 'row' | 'row-q4' {
  if (v === undefined || v === '' || v === 'row') return 'row';
  if (v === 'row-q4') return v;
  if (v === '1' || v === 'group') return true;
  if (v === '0' || v === 'f16' || v === 'off') return false;
  throw new Error(`PDVM_PREFILL_I8='${v}' is not one of row (the default), row-q4, group (or 1), f16 (or 0, off)`);
}

/**
 * The int8 products with `scaling` on this device: each way of counting an i8 load's offset until one
 * gives the known answer; on a pass, features say so (subgroupMatrixI8, int8Scaling, the way found).
 */
async function selfTestInt8(device: GPUDevice, features: GpuFeatures, scaling: Int8Scaling): Promise<boolean> {
  const tiles = features.int8Tile ? [features.int8Tile] : int8TilesFor(scaling);
  const other = features.subgroupMatrixSyntax === 'template' ? 'argument' : 'template';
  for (const [syntax, units] of [[features.subgroupMatrixSyntax, 'words'], [features.subgroupMatrixSyntax, 'bytes'], [other, 'words'], [other, 'bytes']] as const) {
    const k = await selfTestPrefillInt8(device, features.subgroupMatrixIndexing!, tiles, syntax, units, scaling);
    features.selfTests[`prefill int8 ${scaling} (${syntax} majorness, offsets in ${units})`] = k;
    if (k === 'passed') {
      Object.assign(features, { subgroupMatrixI8: true, int8Scaling: scaling, int8Syntax: syntax, int8Units: units });
      return true;
    }
  }
  return false;
}

/** Whether Node asks Dawn for the toggles: the option, else PDVM_DAWN_TOGGLES (default on). */
function wantToggles(options: GpuOptions): boolean {
  if (options.dawnToggles !== undefined) return options.dawnToggles;
  const v = env('PDVM_DAWN_TOGGLES');
  return v !== '0' && v !== 'false';
}

/** Why WebGPU cannot be used here, as one line; null when an adapter exists. */
export async function probeWebGpu(): Promise<string | null> {
  try {
    const gpu = (await gpuEntryPoint())?.gpu;
    if (!gpu) return 'this runtime has no WebGPU (no navigator.gpu)';
    const adapter = await gpu.requestAdapter();
    if (!adapter) return 'no WebGPU adapter was found (on a machine without a GPU, run scripts/install-vulkan.sh to install Mesa lavapipe)';
    return null;
  } catch (e) {
    return `WebGPU failed to start: ${(e as Error).message}`;
  }
}

/**
 * The adapter's description when the only WebGPU adapter is a software one (Mesa lavapipe/llvmpipe,
 * SwiftShader): WebGPU works there, but the CPU backend is faster. Null for hardware or no adapter.
 */
export async function softwareAdapter(): Promise<string | null> {
  try {
    const gpu = (await gpuEntryPoint())?.gpu;
    const adapter = await gpu?.requestAdapter({ powerPreference: 'high-performance' });
    if (!adapter) return null;
    const info = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
    const software = info.isFallbackAdapter === true || info.architecture === 'software' || /llvmpipe|lavapipe|swiftshader/i.test(`${info.device} ${info.description}`);
    return software ? info.description || info.device || 'a software adapter' : null;
  } catch {
    return null;
  }
}

/** The prompt attention's tensor-core variant these features ask for (what device.ts self-tests and ops.ts builds). */
export function promptAttentionVariant(f: GpuFeatures): { passes: 1 | 2; kvBuffers: 1 | 2; rows: AttentionRows } {
  return { passes: f.attentionPasses, kvBuffers: f.attentionKvBuffers, rows: f.attentionRows };
}

export function featureSummary(f: GpuFeatures): string {
  const on = (b: boolean) => (b ? 'on' : 'off');
  const configs = f.subgroupMatrixConfigs.map((c) => `${c.componentType}->${c.resultComponentType} ${c.M}x${c.N}x${c.K}`).join(', ');
  const tests = Object.entries(f.selfTests).map(([k, v]) => `${k} ${v}`).join('; ');
  return `subgroups ${on(f.subgroups)}, shader-f16 ${on(f.shaderF16)}, dot4I8Packed ${on(f.packed4x8IntegerDotProduct)}, ` +
    `subgroup matrix f16 ${on(f.subgroupMatrixF16)}, i8 ${on(f.subgroupMatrixI8)} (configurations: ${configs || 'none'}), ` +
    `Dawn toggles: ${f.dawnToggles.join(', ') || 'none'}${tests ? `; self-tests: ${tests}` : ''}`;
}

/** A device plus what the backend derives from it. One per engine. */
export class Gpu {
  /** Set once the device is lost; every later call throws. */
  private lost: GPUDeviceLostInfo | null = null;
  private firstError: GPUError | null = null;
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private readonly modules = new Map<string, GPUShaderModule>();
  private readonly scratchBuffers = new Map<string, GPUBuffer>();
  /** Largest byte size a storage binding may have (tensors above it are split). */
  readonly maxBindingBytes: number;

  private constructor(
    readonly device: GPUDevice,
    readonly adapterDescription: string,
    /** What the device offers and the kernels use. */
    readonly features: GpuFeatures,
    options: GpuOptions,
  ) {
    const limit = device.limits.maxStorageBufferBindingSize;
    this.maxBindingBytes = Math.min(limit, options.maxBindingBytes ?? limit) & ~15;
    void device.lost.then((info) => {
      this.lost = info;
    });
    device.addEventListener('uncapturederror', (ev) => {
      this.firstError ??= (ev as GPUUncapturedErrorEvent).error;
    });
  }

  /** Kernels use subgroup reductions (= features.subgroups). */
  get subgroups(): boolean {
    return this.features.subgroups;
  }

  /** The features as one line ("subgroups on, shader-f16 off, ..."), for --verbose and bench logs. */
  get featureSummary(): string {
    return featureSummary(this.features);
  }

  static async acquire(options: GpuOptions = {}): Promise<Gpu> {
    const entry = await gpuEntryPoint(wantToggles(options));
    const gpu = entry?.gpu;
    if (!entry || !gpu) throw new WebGpuUnavailableError("this runtime has no WebGPU (no navigator.gpu); use backend: 'cpu'");
    const adapter = await gpu.requestAdapter({ powerPreference: options.powerPreference ?? 'high-performance' });
    if (!adapter) {
      throw new WebGpuUnavailableError(
        "no WebGPU adapter was found; on a machine without a GPU run scripts/install-vulkan.sh (Mesa lavapipe), or use backend: 'cpu'",
      );
    }
    const subgroups = adapter.features.has('subgroups') && !options.disableSubgroups;
    const shaderF16 = adapter.features.has('shader-f16') && !options.disableShaderF16;
    const matrixOn = options.subgroupMatrix ?? env('PDVM_SUBGROUP_MATRIX') !== '0';
    const matrix = adapter.features.has('chromium-experimental-subgroup-matrix' as GPUFeatureName) && matrixOn;
    const required = [...(subgroups ? ['subgroups'] : []), ...(shaderF16 ? ['shader-f16'] : []), ...(matrix ? ['chromium-experimental-subgroup-matrix'] : [])];
    const a = adapter.limits;
    const device = await adapter.requestDevice({
      requiredFeatures: required as GPUFeatureName[],
      requiredLimits: options.limits === 'default' ? {} : {
        maxStorageBufferBindingSize: a.maxStorageBufferBindingSize,
        maxBufferSize: a.maxBufferSize,
        maxStorageBuffersPerShaderStage: a.maxStorageBuffersPerShaderStage,
        maxComputeWorkgroupStorageSize: a.maxComputeWorkgroupStorageSize,
        maxComputeInvocationsPerWorkgroup: a.maxComputeInvocationsPerWorkgroup,
        maxComputeWorkgroupSizeX: a.maxComputeWorkgroupSizeX,
      },
    });
    const info = adapter.info as GPUAdapterInfo & { subgroupMatrixConfigs?: Iterable<SubgroupMatrixConfig> };
    const description = [info.vendor, info.architecture, info.device, info.description].filter((s) => s).join(' ') || 'unknown adapter';
    const configs = matrix ? Array.from(info.subgroupMatrixConfigs ?? [], (c) => ({ componentType: c.componentType, resultComponentType: c.resultComponentType, M: c.M, N: c.N, K: c.K })) : [];
    // q4 products on the int8 tensor cores: per row by default ('row'), or 'row-q4', per group (true), or not
    const prefillInt8 = options.prefillInt8 ?? parsePrefillInt8(env('PDVM_PREFILL_I8'));
    // the direct few-token int8 kernel (lab): PDVM_I8_DIRECT=TT (rows) or tTT (tiles), TT 1, 2 or 4
    const direct = /^(t?)([124])$/.exec(env('PDVM_I8_DIRECT') ?? '');
    const features: GpuFeatures = {
      subgroups,
      shaderF16,
      packed4x8IntegerDotProduct: !options.disablePackedDot && (gpu.wgslLanguageFeatures?.has('packed_4x8_integer_dot_product') ?? false),
      subgroupMinSize: info.subgroupMinSize ?? 0,
      subgroupMaxSize: info.subgroupMaxSize ?? 0,
      subgroupMatrixConfigs: configs,
      subgroupMatrixF16: false,
      subgroupMatrixIndexing: null,
      subgroupMatrixSyntax: 'template',
      subgroupMatrixTile: options.subgroupMatrixTile ?? parseTensorCoreTile(env('PDVM_SM_TILE')),
      attentionTensorCore: false,
      attentionSplit: false,
      attentionPasses: parseAttentionPasses(env('PDVM_ATTENTION_PASSES')),
      attentionKvBuffers: parseAttentionKvBuffers(env('PDVM_ATTENTION_KV_BUFFERS')),
      attentionRows: parseAttentionRows(env('PDVM_ATTENTION_ROWS')),
      attentionRows64: false,
      attentionSplits: parseAttentionSplits(env('PDVM_ATTENTION_SPLITS')),
      subgroupMatrixI8: false,
      int8Syntax: 'template',
      int8Units: 'words',
      int8Tile: parseInt8Tile(env('PDVM_I8_TILE')),
      int8SplitWorkgroups: Number(env('PDVM_I8_SPLIT')) > 0 ? Number(env('PDVM_I8_SPLIT')) : INT8_SPLIT_WORKGROUPS,
      int8Direct: Number(direct?.[2] ?? 0),
      int8DirectTiles: direct?.[1] === 't',
      int8Lab: env('PDVM_I8_LAB') === 'no-scale' ? 'no-scale' : null,
      int8Scaling: prefillInt8 === 'row' || prefillInt8 === 'row-q4' ? prefillInt8 : 'group',
      dawnToggles: entry.toggles,
      selfTests: {},
    };
    // the fast paths run only after their self-test gave the known answer on this device
    if (shaderF16) {
      const r = await selfTestShaderF16(device);
      features.selfTests['shader-f16'] = r;
      if (r !== 'passed') features.shaderF16 = false;
    }
    const f16Matrix = configs.some((c) => c.componentType === 'f16' && c.resultComponentType === 'f32' && c.M === 16 && c.N === 16 && c.K === 16);
    if (!matrix) features.selfTests['subgroup-matrix f16'] = matrixOn ? 'not run: no chromium-experimental-subgroup-matrix' : 'not run: subgroup matrices turned off (PDVM_SUBGROUP_MATRIX=0)';
    else if (!f16Matrix || !features.shaderF16) features.selfTests['subgroup-matrix f16'] = 'not run: no f16->f32 16x16x16 configuration with shader-f16';
    else if (!(features.subgroupMinSize > 0 && features.subgroupMinSize === features.subgroupMaxSize)) features.selfTests['subgroup-matrix f16'] = 'not run: the subgroup size is not fixed';
    else {
      // the majorness as a template argument (current WGSL) first; the older bool argument compiles
      // with a deprecation warning that dawn.node prints on stdout, so it is only the fallback
      let r = '';
      for (const syntax of ['template', 'argument'] as const) {
        r = await selfTestSubgroupMatrix(device, features.subgroupMaxSize, syntax);
        if (r === 'passed') {
          features.subgroupMatrixSyntax = syntax;
          break;
        }
        features.selfTests[`subgroup-matrix f16 (${syntax} majorness)`] = r;
      }
      features.selfTests['subgroup-matrix f16'] = r;
      // and the prefill kernel built on them, run on a small product with partial tiles, in each way
      // of finding its subgroup until one passes
      if (r === 'passed') {
        const ways: SubgroupIndexing[] = [...(subgroups && gpu.wgslLanguageFeatures?.has('subgroup_id') ? ['subgroup-id' as const] : []), 'invocation-index'];
        for (const way of ways) {
          const tiles = features.subgroupMatrixTile ? [features.subgroupMatrixTile] : TENSOR_CORE_TILES;
          const k = await selfTestPrefillKernel(device, features.subgroupMaxSize, way, tiles, features.subgroupMatrixSyntax);
          features.selfTests[`prefill kernel (subgroup matrix, ${way})`] = k;
          if (k === 'passed') {
            features.subgroupMatrixF16 = true;
            features.subgroupMatrixIndexing = way;
            break;
          }
        }
        // q4 products on the int8 tensor cores, where asked for: each way of counting an i8 load's
        // offset until one gives the known answer
        const i8Matrix = configs.some((c) => c.componentType === 'i8' && c.resultComponentType === 'i32' && c.M === 16 && c.N === 16 && c.K === 32);
        if (features.subgroupMatrixF16 && prefillInt8) {
          if (!i8Matrix || features.subgroupMaxSize !== 32) features.selfTests['prefill int8'] = 'not run: no i8->i32 16x16x32 configuration with subgroups of 32';
          else {
            await selfTestInt8(device, features, features.int8Scaling);
          }
        }
        // prompt attention on the same primitives (and subgroup shuffles), unless turned off
        if (features.subgroupMatrixF16 && subgroups && features.subgroupMaxSize === 32) {
          const asked = options.tensorCoreAttention ?? env('PDVM_TC_ATTENTION') !== '0';
          if (!asked) features.selfTests['prompt attention (subgroup matrix)'] = 'not run: turned off (PDVM_TC_ATTENTION=0)';
          else {
            // 128 rows a workgroup (the default) ask for K and V in two buffers (the only variant that has
            // them); PDVM_ATTENTION_ROWS=64 for the 64-row kernels (one shared buffer unless PDVM_ATTENTION_KV_BUFFERS=2)
            if (features.attentionRows === 128 && features.attentionPasses === 1) features.attentionKvBuffers = 2;
            else features.attentionRows = 64;
            const rows128Bytes = attentionTensorCoreBytes({ numHeads: 1, numKvHeads: 1, headDim: 128, slidingWindow: null, rotaryDim: 128 }, 1, 2, 128);
            if (features.attentionRows === 128 && device.limits.maxComputeWorkgroupStorageSize < rows128Bytes) {
              features.selfTests['prompt attention in one pass, 128 rows a workgroup (subgroup matrix)'] = `not run: ${rows128Bytes} bytes of workgroup memory at HD 128, ${device.limits.maxComputeWorkgroupStorageSize} granted`;
              features.attentionRows = 64;
            }
            const variant = () => promptAttentionVariant(features);
            const attentionTest = () => selfTestPromptAttention(device, features.subgroupMaxSize, features.subgroupMatrixIndexing!, features.subgroupMatrixSyntax, false, variant());
            let a = await attentionTest();
            if (a !== 'passed' && features.attentionRows === 128) {
              // 128 rows a workgroup failed here: 64, if they pass, serve
              features.selfTests['prompt attention in one pass, 128 rows a workgroup (subgroup matrix)'] = a;
              features.attentionRows = 64;
              a = await attentionTest();
            }
            if (a !== 'passed' && features.attentionPasses === 1 && features.attentionKvBuffers === 2) {
              // K and V in two buffers failed here: one buffer, if it passes, serves
              features.selfTests['prompt attention in one pass, K and V in two buffers (subgroup matrix)'] = a;
              features.attentionKvBuffers = 1;
              a = await attentionTest();
            }
            if (a !== 'passed' && features.attentionPasses === 1) {
              // the one-pass kernel failed here: the two-pass one, if it passes, serves
              features.selfTests['prompt attention in one pass (subgroup matrix)'] = a;
              features.attentionPasses = 2;
              a = await attentionTest();
            }
            const named = attentionVariantName(variant());
            features.selfTests[`prompt attention (subgroup matrix, ${named})`] = a;
            features.attentionTensorCore = a === 'passed';
            if (features.attentionTensorCore && features.attentionRows === 128) {
              // 64 rows with the same buffers serve head dimensions that 128 rows do not fit (ops.ts)
              const r = await selfTestPromptAttention(device, features.subgroupMaxSize, features.subgroupMatrixIndexing!, features.subgroupMatrixSyntax, false, { ...variant(), rows: 64 });
              features.selfTests['prompt attention, 64 rows a workgroup where 128 do not fit (subgroup matrix)'] = r;
              features.attentionRows64 = r === 'passed';
            }
            // and split over keys, then merged (alone switched off if it fails; PDVM_ATTENTION_SPLIT=0: not used)
            if (features.attentionTensorCore && env('PDVM_ATTENTION_SPLIT') === '0') features.selfTests['prompt attention split over keys (subgroup matrix)'] = 'not run: turned off (PDVM_ATTENTION_SPLIT=0)';
            else if (features.attentionTensorCore) {
              const b = await selfTestPromptAttention(device, features.subgroupMaxSize, features.subgroupMatrixIndexing!, features.subgroupMatrixSyntax, true, variant());
              features.selfTests['prompt attention split over keys (subgroup matrix)'] = b;
              features.attentionSplit = b === 'passed';
            }
          }
        }
      }
    }
    return new Gpu(device, description, features, options);
  }

  /** Throws if the device was lost or a GPU error was raised since the last check. */
  check(): void {
    if (this.lost) throw new DeviceLostError(this.lost.reason, this.lost.message);
    if (this.firstError) {
      const e = this.firstError;
      this.firstError = null;
      if (e instanceof GPUOutOfMemoryError) throw new GpuOutOfMemoryError(`the GPU ran out of memory: ${e.message}`);
      throw new GpuValidationError(`GPU error (a bug in pdvm; please report it): ${e.message}`);
    }
  }

  /**
   * Runs allocations and turns an out-of-memory or validation error among them into a typed error.
   * `what` names the allocation for the message ("model weights (1.2 GB) and KV cache (...)").
   */
  async allocating<R>(what: string, hint: string, fn: () => R): Promise<R> {
    this.check();
    this.device.pushErrorScope('validation');
    this.device.pushErrorScope('out-of-memory');
    let result: R;
    try {
      result = fn();
    } finally {
      const oom = await this.device.popErrorScope();
      const invalid = await this.device.popErrorScope();
      if (oom) throw new GpuOutOfMemoryError(`the GPU cannot hold ${what}: ${oom.message}. ${hint}`);
      // not a lack of memory: the memory hint (a smaller context...) would mislead
      if (invalid) throw new GpuValidationError(`allocating ${what} failed on a GPU validation error (a bug in pdvm; please report it): ${invalid.message}`);
    }
    return result;
  }

  createBuffer(label: string, size: number, usage: GPUBufferUsageFlags, mappedAtCreation = false): GPUBuffer {
    const bytes = Math.max(16, Math.ceil(size / 16) * 16);
    if (bytes > this.device.limits.maxBufferSize) {
      throw new GpuOutOfMemoryError(`${label} needs ${bytes} bytes, over this device's maxBufferSize ${this.device.limits.maxBufferSize}`);
    }
    return this.device.createBuffer({ label, size: bytes, usage, mappedAtCreation });
  }

  /**
   * A compute pipeline, cached under `name|sorted defines`: kernels are specialised by a small closed
   * set of defines (shapes, dtype, features) that `source` turns into WGSL.
   */
  pipeline(name: string, defines: Record<string, string | number | boolean>, source: () => string): GPUComputePipeline {
    const key = `${name}|main|${Object.keys(defines).sort().map((k) => `${k}=${defines[k]}`).join(',')}`;
    let p = this.pipelines.get(key);
    if (!p) {
      const code = source();
      let module = this.modules.get(code);
      if (!module) {
        module = this.device.createShaderModule({ label: key, code });
        this.modules.set(code, module);
      }
      p = this.device.createComputePipeline({ label: key, layout: 'auto', compute: { module, entryPoint: 'main' } });
      this.pipelines.set(key, p);
    }
    return p;
  }

  /**
   * A storage buffer of at least `bytes` shared by every kernel that asks for `name`: each user writes
   * what it reads earlier in the same sequence of dispatches (the prefill's f16 copy of x). A larger
   * request replaces it for later users; earlier bind groups keep the buffer they hold.
   */
  scratch(name: string, bytes: number): GPUBuffer {
    const have = this.scratchBuffers.get(name);
    if (have && have.size >= bytes) return have;
    const b = this.createBuffer(`scratch ${name}`, bytes, GPUBufferUsage.STORAGE);
    this.scratchBuffers.set(name, b);
    return b;
  }

  /**
   * Puts the prefill's int8 products on `scaling` (after its self-test here; engine.ts, where the
   * copies of scaling 'row' did not fit): whether they are on.
   */
  async useInt8Scaling(scaling: Int8Scaling): Promise<boolean> {
    this.features.subgroupMatrixI8 = false;
    if (!this.features.subgroupMatrixF16) return false;
    return selfTestInt8(this.device, this.features, scaling);
  }

  /** The scratch buffers now (forgetScratchSince). */
  scratchSnapshot(): Set<GPUBuffer> {
    return new Set(this.scratchBuffers.values());
  }

  /**
   * Destroys and forgets the scratch buffers made since `snapshot` (by plans that were dropped: after a
   * build that ran out of memory, the buffers it made may be invalid); the kernels built after this
   * make their own.
   */
  forgetScratchSince(snapshot: Set<GPUBuffer>): void {
    for (const [name, b] of this.scratchBuffers) {
      if (snapshot.has(b)) continue;
      b.destroy();
      this.scratchBuffers.delete(name);
    }
  }

  bindGroup(label: string, pipeline: GPUComputePipeline, buffers: GPUBuffer[]): GPUBindGroup {
    return this.device.createBindGroup({
      label,
      layout: pipeline.getBindGroupLayout(0),
      entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })),
    });
  }

  get pipelineCount(): number {
    return this.pipelines.size;
  }

  destroy(): void {
    this.device.destroy();
  }
}
