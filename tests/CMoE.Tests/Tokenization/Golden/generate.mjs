// Development-time generator of the byte-level golden data (not run by the build or the tests).
// Run: cd /tmp/hf && npm install tokenizers@0.23.2 && node <repo>/tests/CMoE.Tests/Tokenization/Golden/generate.mjs <repo> <sotu_train.txt> <sotu_val.txt>
// Writes golden.json (then gzip -9n it to golden.json.gz) and synthetic-*.tokenizer.json (one small byte-level BPE trained here, in three pre-tokenizer variants:
// Llama-3 with ignore_merges, Qwen2 with NFC, GPT-2) and the reference ids from Hugging Face tokenizers.
import { createRequire } from 'module';
import fs from 'fs';
import path from 'path';
const require = createRequire(process.cwd() + '/');
const { Tokenizer } = require('tokenizers');
const [repo, trainPath, valPath] = process.argv.slice(2);
const out = path.join(repo, 'tests/CMoE.Tests/Tokenization/Golden');

// ---- deterministic PRNG (mulberry32) ----
function rng(seed) { return () => { seed |= 0; seed = seed + 0x6D2B79F5 | 0; let t = Math.imul(seed ^ seed >>> 15, 1 | seed);
  t = t + Math.imul(t ^ t >>> 7, 61 | t) ^ t; return ((t ^ t >>> 14) >>> 0) / 4294967296; }; }

// ---- GPT-2 byte-level alphabet ----
const bs = []; for (let b = 33; b <= 126; b++) bs.push(b); for (let b = 161; b <= 172; b++) bs.push(b); for (let b = 174; b <= 255; b++) bs.push(b);
const cs = bs.slice(); let n = 0; for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n++); }
const byteChar = new Array(256); bs.forEach((b, i) => byteChar[b] = String.fromCodePoint(cs[i]));
const toByteLevel = s => Array.from(Buffer.from(s, 'utf8'), b => byteChar[b]).join('');

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
  console.log(name, 'vocab', V, 'merges', merges.length, 'fuzz', g.fuzz.length, 'roundtrip', g.fuzzRoundtrip.filter(x => x).length, 'vocab rows', g.vocab.length);
}
fs.writeFileSync(path.join(out, 'golden.json'), JSON.stringify(golden));
