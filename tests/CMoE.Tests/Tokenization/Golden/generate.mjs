// Development-time generator of the tokenizer golden data (not run by the build or the tests).
// Run (npm is needed only here; node_modules stays outside the repository, or in this folder, where .gitignore covers it):
//   cd /tmp/hf && npm install tokenizers@0.23.2
//   node <repo>/tests/CMoE.Tests/Tokenization/Golden/generate.mjs <repo> <repo>/../shared/data/eval/sotu_train.txt <repo>/../shared/data/eval/sotu_val.txt [all|bytelevel|sentencepiece]
// (run it from /tmp/hf, where node_modules/tokenizers is). Deterministic: the same inputs give byte-identical outputs.
// bytelevel: writes golden-bytelevel-{llama3,qwen2,gpt2}.json.gz and synthetic-{llama3,qwen2,gpt2}.tokenizer.json: one small
//   byte-level BPE trained here, in three pre-tokenizer variants (Llama-3 with ignore_merges, Qwen2 with NFC, GPT-2) and the
//   reference ids from Hugging Face tokenizers.
// sentencepiece: writes synthetic-{llama2,mistral,phi3,gemma,metaspace}.tokenizer.json (one small SentencePiece-style BPE with
//   <0xXX> byte fallback trained here, in the structures of Llama-2 (legacy Prepend+Replace normalizer), Mistral v0.3 (Metaspace
//   prepend_scheme first), Phi-3 (legacy, rstrip added tokens), Gemma (Replace-only normalizer, Split " ", fuse_unk, non-special
//   added tokens) and older Metaspace conversions (prepend_scheme always, split true)) and golden-sp-<name>.json.gz with the
//   reference ids (plain and with add_special_tokens), decoded texts and round-trip flags.
import { createRequire } from 'module';
import fs from 'fs';
import path from 'path';
const require = createRequire(process.cwd() + '/');
const { Tokenizer } = require('tokenizers');
const [repo, trainPath, valPath, mode = 'all'] = process.argv.slice(2);
const zlib = require('zlib');
const out = path.join(repo, 'tests/CMoE.Tests/Tokenization/Golden');

// ---- deterministic PRNG (mulberry32) ----
function rng(seed) { return () => { seed |= 0; seed = seed + 0x6D2B79F5 | 0; let t = Math.imul(seed ^ seed >>> 15, 1 | seed);
  t = t + Math.imul(t ^ t >>> 7, 61 | t) ^ t; return ((t ^ t >>> 14) >>> 0) / 4294967296; }; }

// ---- GPT-2 byte-level alphabet ----
const bs = []; for (let b = 33; b <= 126; b++) bs.push(b); for (let b = 161; b <= 172; b++) bs.push(b); for (let b = 174; b <= 255; b++) bs.push(b);
const cs = bs.slice(); let n = 0; for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n++); }
const byteChar = new Array(256); bs.forEach((b, i) => byteChar[b] = String.fromCodePoint(cs[i]));
const toByteLevel = s => Array.from(Buffer.from(s, 'utf8'), b => byteChar[b]).join('');

// ---- fuzz strings: seeded, code points drawn from pools that stress the split patterns ----
const pools = [
  'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ', '0123456789', "     \t\n\r\n\u00a0\u3000\u2003\u2028\u0085\u000b\u000c",
  ".,;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~`’“”", "'s't're've'm'll'd'S'T'RE'VE'M'LL'D'ſ'K",
  'ăâđêôơưàảãáạằẳẵắặầẩẫấậèẻẽéẹềểễếệìỉĩíịòỏõóọồổỗốộờởỡớợùủũúụừửữứựỳỷỹýỵ', 'İıŞşĞğÇçÖöÜü', 'ǅǄǆΩωKÅßẞﬁ',
  '日本語中文字한국어テキストのカタ', '\u0301\u0308\u0327\u200d\ufe0f',
  ['𝐱','𝐲','𝐳','𝔸','𝒜','𝟙','𝟚','𝟛','𝟘','𠮷','𡈽','𝑖','𐐀','𐐨','𞤀','𑀓','𒀀','𐍈'], ['😀','😃','👍','🏽','👨','👩','👧','🇫','🇷','🤖','🧪','🀄'],
];
const poolArr = pools.map(p => Array.isArray(p) ? p : Array.from(p));
const weights = [8, 3, 5, 3, 2, 2, 1, 1, 2, 1, 2, 2];
const wsum = weights.reduce((a, b) => a + b, 0);
const rand = rng(20261202);
const fuzz = [];
for (let i = 0; i < 5000; i++) {
  const len = 1 + Math.floor(rand() * 24); let s = '';
  for (let k = 0; k < len; k++) { let x = rand() * wsum, p = 0; while (x >= weights[p]) x -= weights[p++]; const a = poolArr[p]; s += a[Math.floor(rand() * a.length)]; }
  fuzz.push(s);
}


if (mode === 'all' || mode === 'bytelevel') await byteLevel();
if (mode === 'all' || mode === 'sentencepiece') await sentencePiece();
if (mode === 'all' || mode === 'bytelevel' || mode === 'chat') await byteLevelChat();

async function byteLevel() {
// ---- hard cases (also in the training text, so some of them become whole tokens) ----
const hard = [
  ' việc', 'Tiếng Việt có nhiều dấu: người, được, những, không.', 'İstanbul’da ılık bir gün; Iğdır, ŞEKER, çağ.',
  '𝐱 + 𝐲 = 𝐳', '𝟙𝟚𝟛 and 𝟘', '𠮷野家 𠮷', 'emoji 😀😃 👍🏽 👨‍👩‍👧 🇫🇷', '日本語のテキスト、中文文本。한국어',
  'tabs\tand\nnewlines\r\n  \n\n   x', "I'm, you're, he's, we've, they'll, I'd, DON'T, IT'S", "'S 'T 'RE 'Ve 'LL 'D 'ſ 'K",
  '1234567890 12 123 1234 3.14159 1,000,000', '  leading and trailing  ', 'a\u00a0b\u3000c\u2003d', 'x𝐱y𝟙z', '😀a', 'a😀', '\u0301a',
  'ǅungla Ǆ ǆ', 'caf\u0065\u0301 vs café', 'Ω ω K Å', '\r\n\r\n', '!!!???...', '   ', '𝐱'.repeat(5), '𠮷'.repeat(3) + '1',
];

// ---- a small BPE trainer (byte-level, pairs counted over words, ties broken by first occurrence) ----
const trainText = fs.readFileSync(trainPath, 'utf8').slice(0, 300000) + '\n' + hard.join('\n').repeat(20);
const words = new Map();
for (const m of trainText.matchAll(/'(?:s|t|re|ve|m|ll|d)| ?\p{L}+| ?\p{N}{1,3}| ?[^\s\p{L}\p{N}]+|\s+/gu)) {
  const w = toByteLevel(m[0]); words.set(w, (words.get(w) || 0) + 1);
}
let wordList = [...words.entries()].map(([w, c]) => [Array.from(w), c]);
const vocab = {}; const alphabet = byteChar.slice().sort(); alphabet.forEach(c => vocab[c] = Object.keys(vocab).length);
const merges = [];
for (let step = 0; step < 1800; step++) {
  const counts = new Map();
  for (const [sym, c] of wordList) for (let i = 0; i + 1 < sym.length; i++) { const k = sym[i] + '\u0000' + sym[i + 1]; counts.set(k, (counts.get(k) || 0) + c); }
  let best = null, bc = 1; for (const [k, c] of counts) if (c > bc) { best = k; bc = c; }
  if (!best) break;
  const [l, r] = best.split('\u0000'); merges.push([l, r]); if (!(l + r in vocab)) vocab[l + r] = Object.keys(vocab).length;
  for (const e of wordList) { const s = e[0], o = []; for (let i = 0; i < s.length; i++) { if (i + 1 < s.length && s[i] === l && s[i + 1] === r) { o.push(l + r); i++; } else o.push(s[i]); } e[0] = o; }
}
// Whole-word entries that no merge sequence produces (as in Llama-3's vocabulary): ignore_merges must find them.
for (const w of [' việc', ' 𠮷', '𝐱𝐱', ' İstanbul', '😀😃', ' người', '123']) { const b = toByteLevel(w); if (!(b in vocab)) vocab[b] = Object.keys(vocab).length; }
const V = Object.keys(vocab).length;
const added = [{ id: V, content: '<|begin_of_text|>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
               { id: V + 1, content: '<|end_of_text|>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }];

const llama3 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const qwen2 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const split = re => ({ type: 'Sequence', pretokenizers: [
  { type: 'Split', pattern: { Regex: re }, behavior: 'Isolated', invert: false },
  { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false }] });
const model = ignore => ({ type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
  fuse_unk: false, byte_fallback: false, ignore_merges: ignore, vocab, merges });
const bosTemplate = { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
  pair: [], special_tokens: { '<|begin_of_text|>': { id: '<|begin_of_text|>', ids: [V], tokens: ['<|begin_of_text|>'] } } };
const variants = {
  llama3: { version: '1.0', truncation: null, padding: null, added_tokens: added, normalizer: null, pre_tokenizer: split(llama3),
            post_processor: bosTemplate, decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true }, model: model(true) },
  qwen2: { version: '1.0', truncation: null, padding: null, added_tokens: added, normalizer: { type: 'NFC' }, pre_tokenizer: split(qwen2),
           post_processor: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
           decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false }, model: model(false) },
  gpt2: { version: '1.0', truncation: null, padding: null, added_tokens: added, normalizer: null,
          pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
          post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
          decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true }, model: model(false) },
};

const corpus = fs.readFileSync(valPath, 'utf8').split('\n').filter(l => l.length > 0).slice(0, 200);
const enc = async (t, s) => (await t.encode(s, null, { addSpecialTokens: false })).getIds();
const golden = { reference: 'huggingface tokenizers 0.23.2 (npm)', seed: 20261202, hard, fuzz, corpusLines: corpus.length, tokenizers: {} };
for (const [name, json] of Object.entries(variants)) {
  const file = path.join(out, `synthetic-${name}.tokenizer.json`);
  fs.writeFileSync(file, JSON.stringify(json));
  const tok = Tokenizer.fromFile(file);
  const g = { file: path.basename(file), hard: [], hardRoundtrip: [], fuzz: [], fuzzRoundtrip: [], corpus: [], vocab: [] };
  for (const s of hard) { const ids = await enc(tok, s); g.hard.push(ids.join(' ')); g.hardRoundtrip.push((await tok.decode(ids, true)) === s); }
  for (const s of fuzz) { const ids = await enc(tok, s); g.fuzz.push(ids.join(' ')); g.fuzzRoundtrip.push((await tok.decode(ids, true)) === s ? 1 : 0); }
  for (const s of corpus) g.corpus.push((await enc(tok, s)).join(' '));
  for (let id = 0; id < V; id++) { const t = await tok.decode([id], true); if (t.includes('\ufffd')) continue;
    g.vocab.push([id, (await enc(tok, t)).join(' ')]); }
  g.withBos = (await tok.encode('Hello world', null, { addSpecialTokens: true })).getIds();
  golden.tokenizers[name] = g;
  fs.writeFileSync(path.join(out, `golden-bytelevel-${name}.json.gz`),
    zlib.gzipSync(JSON.stringify({ ...golden, tokenizers: undefined, tokenizer: g }), { level: 9 }));
  console.log(name, 'vocab', V, 'merges', merges.length, 'fuzz', g.fuzz.length, 'roundtrip', g.fuzzRoundtrip.filter(x => x).length, 'vocab rows', g.vocab.length);
}
}

// ==== SentencePiece-style BPE (Llama-2, Mistral, Phi-3, Gemma, Metaspace) ====
async function sentencePiece() {
  const M = '▁';
  const hex = b => '<0x' + b.toString(16).toUpperCase().padStart(2, '0') + '>';
  const { hard } = specialTexts();
  // Training text: sotu_train plus the hard cases; spaces become ▁ and each line gets the dummy prefix; words split before ▁.
  const trainText = fs.readFileSync(trainPath, 'utf8').slice(0, 200000) + '\n' + hard.join('\n').repeat(10);
  const charCount = new Map();
  for (const c of trainText) charCount.set(c, (charCount.get(c) || 0) + 1);
  // The character alphabet: frequent characters only (others, and \n \t \r, fall back to bytes, as in Llama-2).
  const alphabet = [...charCount.entries()].filter(([c, n]) => n >= 20 && !'\n\t\r '.includes(c)).map(([c]) => c).sort();
  if (!alphabet.includes(M)) alphabet.push(M);
  const words = new Map();
  for (const line of trainText.split('\n')) {
    const t = M + line.replaceAll(' ', M);
    for (const w of t.split(/(?=▁)/u)) if (w.length > 0) words.set(w, (words.get(w) || 0) + 1);
  }
  const inAlpha = new Set(alphabet);
  let wordList = [...words.entries()].map(([w, c]) => [Array.from(w).filter(ch => inAlpha.has(ch)), c]).filter(e => e[0].length > 1);
  const pieces = [], merges = [], known = new Set(alphabet);
  for (let step = 0; step < 1500; step++) {
    const counts = new Map();
    for (const [sym, c] of wordList) for (let i = 0; i + 1 < sym.length; i++) { const k = sym[i] + '\u0000' + sym[i + 1]; counts.set(k, (counts.get(k) || 0) + c); }
    let best = null, bc = 1; for (const [k, c] of counts) if (c > bc) { best = k; bc = c; }
    if (!best) break;
    const [l, r] = best.split('\u0000'); merges.push([l, r]); if (!known.has(l + r)) { known.add(l + r); pieces.push(l + r); }
    for (const e of wordList) { const s = e[0], o = []; for (let i = 0; i < s.length; i++) { if (i + 1 < s.length && s[i] === l && s[i + 1] === r) { o.push(l + r); i++; } else o.push(s[i]); } e[0] = o; }
  }
  // Whitespace runs, as SentencePiece vocabularies have them (merged across words when there is no pre-tokenizer).
  for (const [l, r] of [[M, M], [M + M, M + M], [M + M, M]]) { merges.push([l, r]); if (!known.has(l + r)) { known.add(l + r); pieces.push(l + r); } }

  const spAdded = (id, content, o = {}) => ({ id, content, single_word: !!o.single_word, lstrip: !!o.lstrip, rstrip: !!o.rstrip,
    normalized: !!o.normalized, special: o.special !== false });
  // Vocabulary layout: the variant's leading specials, then <0x00>..<0xFF> (less the omitted ones), the alphabet, the merged pieces.
  const buildVocab = (lead, omitBytes = []) => {
    const vocab = {}; const add = t => { if (!(t in vocab)) vocab[t] = Object.keys(vocab).length; };
    lead.forEach(add); for (let b = 0; b < 256; b++) if (!omitBytes.includes(b)) add(hex(b)); alphabet.forEach(add); pieces.forEach(add);
    return vocab;
  };
  const spModel = (vocab, unk, fuseUnk) => ({ type: 'BPE', dropout: null, unk_token: unk, continuing_subword_prefix: null, end_of_word_suffix: null,
    fuse_unk: fuseUnk, byte_fallback: true, ignore_merges: false, vocab, merges });
  const legacyNormalizer = { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: M }, { type: 'Replace', pattern: { String: ' ' }, content: M }] };
  const spDecoder = strip => ({ type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: M }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' },
    ...(strip ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : [])] });
  const template = (bos, bosId, eos, eosId) => ({ type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, ...(eos ? [{ SpecialToken: { id: eos, type_id: 0 } }] : [])],
    pair: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: bos, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
    special_tokens: Object.fromEntries([[bos, { id: bos, ids: [bosId], tokens: [bos] }], ...(eos ? [[eos, { id: eos, ids: [eosId], tokens: [eos] }]] : [])]) });
  const file = (added, normalizer, pre, post, decoder, model) =>
    ({ version: '1.0', truncation: null, padding: null, added_tokens: added, normalizer, pre_tokenizer: pre, post_processor: post, decoder, model });

  const variants = {};
  { // Llama-2 / Mistral v0.1 (legacy): Prepend + Replace normalizer, no pre-tokenizer, Strip decoder, <s> $A.
    const v = buildVocab(['<unk>', '<s>', '</s>']);
    variants.llama2 = { specials: ['<s>', '</s>', '<unk>'], json: file([spAdded(0, '<unk>'), spAdded(1, '<s>'), spAdded(2, '</s>')],
      legacyNormalizer, null, template('<s>', 1), spDecoder(true), spModel(v, '<unk>', true)) };
  }
  { // Mistral v0.3 / non-legacy Llama: no normalizer, Metaspace(prepend_scheme first, split false), control tokens [INST] [/INST].
    const v = buildVocab(['<unk>', '<s>', '</s>', '[INST]', '[/INST]']);
    variants.mistral = { specials: ['[INST]', '[/INST]', '<s>', '</s>'], json: file([spAdded(0, '<unk>'), spAdded(1, '<s>'), spAdded(2, '</s>'), spAdded(3, '[INST]'), spAdded(4, '[/INST]')],
      null, { type: 'Metaspace', replacement: M, prepend_scheme: 'first', split: false }, template('<s>', 1), spDecoder(true), spModel(v, '<unk>', true)) };
  }
  { // Phi-3: legacy Llama-2 layout plus chat tokens after the vocabulary with rstrip (and, synthetic extras, an lstrip+rstrip
    // special and a single_word non-special added token), BOS and EOS in the template.
    const v = buildVocab(['<unk>', '<s>', '</s>']); const V = Object.keys(v).length;
    const added = [spAdded(0, '<unk>'), spAdded(1, '<s>'), spAdded(2, '</s>', { rstrip: true }), spAdded(V, '<|endoftext|>'), spAdded(V + 1, '<|assistant|>', { rstrip: true }),
      spAdded(V + 2, '<|system|>', { rstrip: true }), spAdded(V + 3, '<|end|>', { rstrip: true }), spAdded(V + 4, '<|user|>', { rstrip: true }),
      spAdded(V + 5, '<|tool|>', { lstrip: true, rstrip: true }), spAdded(V + 6, 'cat', { single_word: true, special: false })];
    variants.phi3 = { specials: ['<|user|>', '<|end|>', '<|assistant|>', '<|tool|>', '<|endoftext|>', '</s>', 'cat'], json: file(added,
      legacyNormalizer, null, template('<s>', 1, '<|endoftext|>', V), spDecoder(true), spModel(v, '<unk>', false)) };
  }
  { // Gemma: Replace-only normalizer, Split(" ", MergedWithPrevious), no Strip, <bos> $A, fuse_unk; a few byte tokens
    // omitted (synthetic: so unknown characters fuse into <unk>); non-special added tokens, one of them normalized.
    const lead = ['<pad>', '<eos>', '<bos>', '<unk>', '<mask>', '<start_of_turn>', '<end_of_turn>', '\n', '\n\n', '\t', '<table>'];
    const v = buildVocab(lead, [0xF0, 0xF1, 0xF2, 0xF3, 0x01]); const V = Object.keys(v).length;
    const added = lead.map((c, i) => spAdded(i, c, i >= 7 ? { special: false } : {}));
    added.push(spAdded(V, `New${M}York`, { special: false, normalized: true }));
    variants.gemma = { specials: ['<start_of_turn>', '<end_of_turn>', '<bos>', '<eos>', '\n\n', '<table>', 'New York'], json: file(added,
      { type: 'Replace', pattern: { String: ' ' }, content: M }, { type: 'Split', pattern: { String: ' ' }, behavior: 'MergedWithPrevious', invert: false },
      template('<bos>', 2), spDecoder(false), spModel(v, '<unk>', true)) };
  }
  { // Older conversions (and tinyref): Metaspace(prepend_scheme always, split true) pre-tokenizer and decoder.
    const v = buildVocab(['<unk>', '<s>', '</s>']);
    const ms = { type: 'Metaspace', replacement: M, prepend_scheme: 'always', split: true };
    variants.metaspace = { specials: ['<s>', '</s>'], json: file([spAdded(0, '<unk>'), spAdded(1, '<s>'), spAdded(2, '</s>')],
      null, ms, template('<s>', 1), ms, spModel(v, '<unk>', true)) };
  }
  { // Component coverage beyond the families (synthetic): NFKC and a regex Replace in the normalizer, Digits runs, Split with
    // MergedWithNext / MergedWithPrevious / Removed, BOS and EOS inside a Sequence post-processor. (Strip with stop > 0 is left
    // out: tokenizers 0.23.2 panics on it when the decoded text is empty, strip.rs:47.)
    const v = buildVocab(['<unk>', '<s>', '</s>']);
    variants.misc = { specials: ['<s>', '</s>'], json: file([spAdded(0, '<unk>'), spAdded(1, '<s>'), spAdded(2, '</s>')],
      { type: 'Sequence', normalizers: [{ type: 'NFKC' }, { type: 'Replace', pattern: { Regex: ' {2,}' }, content: ' ' }, ...legacyNormalizer.normalizers] },
      { type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: false }, { type: 'Split', pattern: { String: M }, behavior: 'MergedWithNext', invert: false },
        { type: 'Split', pattern: { Regex: '[.,!?]' }, behavior: 'MergedWithPrevious', invert: false }, { type: 'Split', pattern: { String: '-' }, behavior: 'Removed', invert: false }] },
      { type: 'Sequence', processors: [template('<s>', 1, '</s>', 2)] },
      spDecoder(true), spModel(v, '<unk>', true)) };
  }

  for (const [name, { specials, json }] of Object.entries(variants)) await writeGolden(name, json, specials, `golden-sp-${name}.json.gz`);
}

// The texts of the SentencePiece-style goldens (also used for the byte-level chat variants): hard cases, seeded fuzz, corpus lines.
// Hard cases; the ones naming specials are per variant (each variant's own added tokens, written inside the text).
// extraPool: one more fuzz pool (with weight 3) for variants whose special tokens the shared pools do not name.
function specialTexts(extraPool = null) {
  const M = '▁';
  const hard = [
    '', ' ', '   ', 'a', ' a', 'a ', '  a  b   c  ', 'Hello world', 'Hello  world', ' Hello', 'Hello\nworld', 'line1\n\nline2\r\n',
    '\ttab\tand\t\ttabs', '\n', '\n\n\n', ' \n ', '1234567890 3.14159 1,000', 'emoji 😀😃 👍🏽 👨‍👩‍👧 🇫🇷', '日本語のテキスト、中文文本。한국어',
    '𝐱 + 𝐲 = 𝐳', '𠮷野家 𠮷', 'x𝐱y𝟙z', '😀', 'Tiếng Việt có nhiều dấu', 'İstanbul ılık', 'caf\u0065\u0301 café', 'a\u00a0b\u3000c',
    '\u0000\u0001\u007f', '\ufffd', '▁already▁metaspace', ' ▁ ▁▁ ', '<0x41>', 'New York is big', 'the cat sat', 'concatenate cat',
  ];
  const specialsIn = tokens => [
    ...tokens.map(t => t), ...tokens.map(t => 'Hello' + t + 'world'), ...tokens.map(t => 'a ' + t + ' b'), ...tokens.map(t => ' ' + t + '  x'),
    tokens.join(''), tokens.join(' '), 'x' + tokens.join('\n') + '\n', tokens[0] + tokens[0] + 'y', '<' + tokens[0].slice(1), tokens[0] + '\n\n  text',
  ];
  // Fuzz strings: seeded; pools add metaspace, byte-fallback-only characters and fragments of special tokens.
  const pools = [
    'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ', '0123456789', '     \t\n\r\n\u00a0\u3000', ".,;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~`’“”",
    'ăâđêôơưàảãáạằẳẵắặầẩẫấậèẻẽéẹ', 'İıŞşĞğÇçÖöÜü', '日本語中文字한국어テキストのカタ', '\u0301\u0308\u200d\ufe0f\u0000\u0001\u007f',
    ['𝐱', '𝐲', '𝐳', '𝔸', '𝟙', '𝟘', '𠮷', '𡈽', '𐐀', '𞤀', '𒀀', '𐍈'], ['😀', '😃', '👍', '🏽', '👨', '🇫', '🇷', '🤖', '🧪'],
    [M, M + M, ' ' + M], ['<s>', '</s>', '<unk>', '[INST]', '[/INST]', '<|user|>', '<|end|>', '<|assistant|>', '<|tool|>', '<|endoftext|>', 'cat', ' cat ',
      '<start_of_turn>', '<end_of_turn>', '<bos>', '\n\n', '<table>', 'New York', '<0x41>', '<', '|'], ['the', ' the', 'and', ' of', 'ing', 'tion', 'New', 'York'],
  ];
  if (extraPool) pools.push(extraPool);
  const poolArr = pools.map(p => Array.isArray(p) ? p : Array.from(p));
  const weights = [8, 2, 6, 3, 2, 1, 2, 1, 2, 2, 2, 2, 3, ...(extraPool ? [3] : [])];
  const wsum = weights.reduce((a, b) => a + b, 0);
  const rand = rng(20261204);
  const fuzz = [];
  for (let i = 0; i < 5000; i++) {
    const len = 1 + Math.floor(rand() * 20); let s = '';
    for (let k = 0; k < len; k++) { let x = rand() * wsum, p = 0; while (x >= weights[p]) x -= weights[p++]; const a = poolArr[p]; s += a[Math.floor(rand() * a.length)]; }
    fuzz.push(s);
  }
  const corpus = fs.readFileSync(valPath, 'utf8').split('\n').filter(l => l.length > 0).slice(0, 200);
  return { hard, specialsIn, fuzz, corpus };
}

// Writes <name>'s tokenizer.json and its golden file: reference ids (plain and with add_special_tokens), decoded texts, round trips.
async function writeGolden(name, json, specials, goldenName, extraPool = null) {
  const { hard, specialsIn, fuzz, corpus } = specialTexts(extraPool);
  const ids = async (t, s, special) => (await t.encode(s, null, { addSpecialTokens: special })).getIds();
  const f = path.join(out, `synthetic-${name}.tokenizer.json`);
  fs.writeFileSync(f, JSON.stringify(json));
  const tok = Tokenizer.fromFile(f);
  const texts = [...hard, ...specialsIn(specials)];
  const g = { reference: 'huggingface tokenizers 0.23.2 (npm)', file: path.basename(f), seed: 20261204, corpusLines: corpus.length,
    hard: texts, hardIds: [], hardSpecialIds: [], hardDecoded: [], hardDecodedKeepSpecial: [], fuzz, fuzzIds: [], fuzzRoundtrip: [], corpusIds: [], vocab: [] };
  for (const s of texts) {
    const plain = await ids(tok, s, false);
    g.hardIds.push(plain.join(' ')); g.hardSpecialIds.push((await ids(tok, s, true)).join(' '));
    g.hardDecoded.push(await tok.decode(plain, true)); g.hardDecodedKeepSpecial.push(await tok.decode(plain, false));
  }
  for (const s of fuzz) { const x = await ids(tok, s, false); g.fuzzIds.push(x.join(' ')); g.fuzzRoundtrip.push((await tok.decode(x, true)) === s ? 1 : 0); }
  for (const s of corpus) g.corpusIds.push((await ids(tok, s, false)).join(' '));
  // Whole passages (sotu_val's 15 lines are long): 8 cuts of 4,000 chars spread over the file, two of them around a line
  // break, with a blank line and leading spaces added, each encoded as one text.
  const val = fs.readFileSync(valPath, 'utf8');
  g.paragraphs = []; g.paragraphIds = [];
  for (let k = 0; k < 8; k++) {
    const at = k < 2 ? Math.max(0, val.indexOf('\n', 1000 + 100000 * k) - 2000) : Math.floor(k * val.length / 8);
    const p = '  ' + val.slice(at, at + 4000) + '\n\n' + val.slice(at + 4000, at + 4500);
    g.paragraphs.push(p); g.paragraphIds.push((await ids(tok, p, true)).join(' '));
  }
  const size = Math.max(...Object.values(json.model.vocab), ...json.added_tokens.map(a => a.id)) + 1;
  for (let id = 0; id < size; id++) { const t = await tok.decode([id], true); if (t.includes('\ufffd')) continue; g.vocab.push([id, (await ids(tok, t, false)).join(' ')]); }
  fs.writeFileSync(path.join(out, goldenName), zlib.gzipSync(JSON.stringify(g), { level: 9 }));
  console.log(name, 'vocab', size, 'merges', json.model.merges.length, 'texts', texts.length, 'fuzz roundtrip', g.fuzzRoundtrip.filter(x => x).length, 'vocab rows', g.vocab.length);
}


// ==== Byte-level chat variants: the byte-level BPE above with a chat model's added tokens and post-processor ====
// qwen3: Qwen2's file plus <|endoftext|> <|im_start|> <|im_end|> (special) and <think> </think> (not special, as Qwen3 has them);
// llama31: Llama-3's file plus <|start_header_id|> <|end_header_id|> <|eot_id|> and Llama-3.1's Sequence[ByteLevel, TemplateProcessing];
// smollm: GPT-2's file with SmolLM's Digits + ByteLevel pre-tokenizer and its chat tokens.
// Written as synthetic-{qwen3,llama31,smollm}.tokenizer.json and golden-bl-{qwen3,llama31,smollm}.json.gz (same layout as golden-sp-*).
async function byteLevelChat() {
  const read = n => JSON.parse(fs.readFileSync(path.join(out, `synthetic-${n}.tokenizer.json`), 'utf8'));
  const tok = (id, content, special = true) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: !special, special });
  const qwen3 = read('qwen2');
  let V = Math.max(...Object.values(qwen3.model.vocab), ...qwen3.added_tokens.map(a => a.id)) + 1;
  qwen3.added_tokens.push(tok(V, '<|endoftext|>'), tok(V + 1, '<|im_start|>'), tok(V + 2, '<|im_end|>'),
    { ...tok(V + 3, '<think>', false), normalized: false }, { ...tok(V + 4, '</think>', false), normalized: false });
  const qwenSpecials = ['<|im_start|>', '<|im_end|>', '<|endoftext|>', '<think>', '</think>'];
  await writeGolden('qwen3', qwen3, qwenSpecials, 'golden-bl-qwen3.json.gz', [...qwenSpecials, 'user\n', 'assistant\n', '<|', '|>']);
  const llama31 = read('llama3');
  V = Math.max(...Object.values(llama31.model.vocab), ...llama31.added_tokens.map(a => a.id)) + 1;
  llama31.added_tokens.push(tok(V, '<|start_header_id|>'), tok(V + 1, '<|end_header_id|>'), tok(V + 2, '<|eot_id|>'));
  llama31.post_processor = { type: 'Sequence', processors: [{ type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    llama31.post_processor] };
  const llamaSpecials = ['<|begin_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>', '<|end_of_text|>'];
  await writeGolden('llama31', llama31, llamaSpecials, 'golden-bl-llama31.json.gz', [...llamaSpecials, 'user', '\n\n', '<|', '|>']);
  // smollm: GPT-2's file with SmolLM's Sequence[Digits(individual_digits), ByteLevel(use_regex)] and its chat tokens.
  const smollm = read('gpt2');
  V = Math.max(...Object.values(smollm.model.vocab), ...smollm.added_tokens.map(a => a.id)) + 1;
  smollm.added_tokens.push(tok(V, '<|endoftext|>'), tok(V + 1, '<|im_start|>'), tok(V + 2, '<|im_end|>'));
  smollm.pre_tokenizer = { type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true },
    { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true }] };
  const smolSpecials = ['<|im_start|>', '<|im_end|>', '<|endoftext|>'];
  await writeGolden('smollm', smollm, smolSpecials, 'golden-bl-smollm.json.gz', [...smolSpecials, '٣', 'Ⅻ', '½', '²', '123', '<|']);
}
