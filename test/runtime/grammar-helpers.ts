/** Grammars the constrained-generation tests share. */

/** One character inside a GBNF character class. */
function classChar(c: string): string {
  if (/[\\\]\-^]/.test(c)) return `\\${c}`;
  const code = c.codePointAt(0)!;
  return code < 0x20 || code === 0x7f ? `\\x${code.toString(16).padStart(2, '0')}` : c;
}

/** GBNF allowing any string of the characters in `text` (many choices each step: nothing is forced). */
export const charsGrammar = (text: string) => `root ::= [${[...new Set(text)].map(classChar).join('')}]*`;
