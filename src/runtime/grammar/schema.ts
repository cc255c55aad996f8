/**
 * Which JSON Schema keywords xgrammar's schema converter enforces while decoding. Measured against
 * @mlc-ai/web-xgrammar 0.1.27 by comparing the grammar it builds for a schema with and without each
 * keyword (docs/API.md lists them). The schema is always enforced as far as these go; with
 * `strict: true` a schema using any keyword below is refused instead, naming where it is.
 */

/** Keywords the converter leaves out of the grammar (output may not satisfy them). */
const UNENFORCED = new Set([
  'not', 'if', 'then', 'else',
  'uniqueItems', 'contains', 'minContains', 'maxContains', 'unevaluatedItems',
  'maxProperties', 'dependentRequired', 'dependentSchemas',
  'contentEncoding', 'contentMediaType', 'contentSchema',
]);

/** String formats the converter turns into a grammar; any other format is not checked. */
export const ENFORCED_FORMATS = new Set([
  'email', 'date', 'time', 'date-time', 'duration', 'ipv4', 'ipv6', 'hostname', 'uuid', 'uri', 'uri-reference', 'uri-template', 'json-pointer', 'relative-json-pointer',
]);

/** Keywords whose value is a schema, a list of schemas, or a map of schemas. */
const SUBSCHEMA = new Set(['items', 'additionalProperties', 'propertyNames', 'additionalItems']);
const SUBSCHEMA_LISTS = new Set(['anyOf', 'oneOf', 'allOf', 'prefixItems']);
const SUBSCHEMA_MAPS = new Set(['properties', 'patternProperties', '$defs', 'definitions']);

/** Each use of a keyword xgrammar cannot enforce, as "path: keyword" (empty when all are enforced). */
export function unenforcedKeywords(schema: unknown, path = '#'): string[] {
  if (typeof schema !== 'object' || schema === null) return [];
  if (Array.isArray(schema)) return [];
  const out: string[] = [];
  for (const [key, value] of Object.entries(schema as Record<string, unknown>)) {
    if (UNENFORCED.has(key)) out.push(`${path}: "${key}"`);
    else if (key === 'format' && typeof value === 'string' && !ENFORCED_FORMATS.has(value)) out.push(`${path}: "format": "${value}"`);
    else if (key === '$ref' && typeof value === 'string' && !value.startsWith('#')) out.push(`${path}: "$ref" to another document (${value})`);
    else if (key === 'allOf' && Array.isArray(value) && value.length > 1) out.push(`${path}: "allOf" with ${value.length} schemas`);
    if (SUBSCHEMA.has(key)) out.push(...unenforcedKeywords(value, `${path}/${key}`));
    else if (SUBSCHEMA_LISTS.has(key) && Array.isArray(value)) value.forEach((s, i) => out.push(...unenforcedKeywords(s, `${path}/${key}/${i}`)));
    else if (SUBSCHEMA_MAPS.has(key) && typeof value === 'object' && value !== null) {
      for (const [name, s] of Object.entries(value)) out.push(...unenforcedKeywords(s, `${path}/${key}/${name}`));
    }
  }
  return out;
}
