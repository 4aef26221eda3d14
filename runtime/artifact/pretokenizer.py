"""llama.cpp's byte-level BPE pre-tokenizers, one per `tokenizer.ggml.pre` value, as `tokenizers` pre-tokenizers.

Source: llama.cpp `src/llama-vocab.cpp` (ggml-org/llama.cpp): `llama_vocab::impl::load` maps each GGUF `pre` string
to a `LLAMA_VOCAB_PRE_TYPE_*` (and sets `ignore_merges` / `add_bos` for some), and `llm_tokenizer_bpe`'s constructor
lists the regexes per type. The regexes are applied in order, each one splitting the pieces the previous one left,
keeping both matches and the text between them ("isolated"); then every piece is mapped to GPT-2's byte alphabet.
Many `pre` values share one regex list, so the lists live in `REGEX_FAMILIES` and `PRE_TOKENIZERS` names a family.
The regexes are llama.cpp's own strings (its std::regex-friendly rewrites included, e.g. `'[sS]` for `(?i:'s)`), so
Onig, which `tokenizers` uses, splits like llama.cpp does. docs/TOKENIZERS.md has the table and the exceptions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgegen.runtime.errors import ArtifactError

# The contraction alternatives llama.cpp writes without (?i:...), which std::regex lacks.
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
# Upper/lower-case runs written with lookaheads (llama.cpp's form of \p{Lu}.../\p{Ll}... classes).
_UPPER, _LOWER = r"((?=[\p{L}])([^a-z]))", r"((?=[\p{L}])([^A-Z]))"
_TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*|\p{{N}}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS}?|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
          rf"{_CONTRACTIONS}?|\p{{N}}{{1,3}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Letters of DeepSeek LLM's tokenizer.json; \u escapes for the code points that Unicode normalization would fold
# into other ones (U+1F7D, U+1FBE, U+1FD3, U+1FDB, U+2126, U+212A), so an editor cannot silently change a range.
_DEEPSEEK_LLM_LETTERS = (
    "A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1f7d"
    "ᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿ"
    "ﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃")
# Kimi-K2: llama.cpp implements this pattern (from Moonshot's tokenization_kimi.py) by hand in unicode.cpp; Onig
# has the class intersection `&&` it needs, so the pattern is used as written.
_KIMI_K2 = (r"[\p{Han}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&"
            r"[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+"
            r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# family -> regexes, applied in order (llm_tokenizer_bpe::llm_tokenizer_bpe, one `case` group each)
REGEX_FAMILIES: dict[str, tuple[str, ...]] = {
    # LLAMA_VOCAB_PRE_TYPE_DEFAULT: what a file without `pre` gets
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    "gpt2": (_GPT2,),  # GPT2, MPT, OLMO, JAIS
    "starcoder": (r"\p{N}", _GPT2),  # STARCODER, REFACT, COMMAND_R, SMOLLM, CODESHELL, EXAONE, MINERVA: one digit each
    "llama3": (_LLAMA3,),  # LLAMA3, DBRX, SMAUG, CHATGLM4: digits in runs of up to 3
    "qwen2": (_QWEN2,),  # QWEN2, STABLELM2, HUNYUAN: one digit each
    "qwen35": (_QWEN35,),  # QWEN35: combining marks stay with their letters
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"),
    "deepseek-llm": ("[\r\n]", rf"\s?[{_DEEPSEEK_LLM_LETTERS}]+", r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$",
                     "[一-龥ࠀ-一가-퟿]+", r"\p{N}+"),
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"),
    "deepseek-v3": (r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
                    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
                    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "poro": (r" ?[^(\s|.,!?…。，、।۔،)]+",),  # PORO, BLOOM, GPT3_FINNISH
    "viking": (r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}"),
    "tekken": (_TEKKEN,),
    "gpt-4o": (_GPT4O,),  # GPT4O, MINIMAX_M2
    "superbpe": (r"\p{N}+", r"(?=(\d{3})+(?!\d))"),  # no word split: superword tokens span spaces
    "kimi-k2": (_KIMI_K2,),
}


@dataclass(frozen=True)
class PreTokenizerRule:
    """How llama.cpp treats one `tokenizer.ggml.pre` value."""

    family: str  # a REGEX_FAMILIES key
    ignore_merges: bool = False  # a whole piece that is a token is used as is (llama.cpp `ignore_merges`)
    add_bos: bool = False  # llama.cpp's default for add_bos when the file has no tokenizer.ggml.add_bos_token


_LLAMA3_RULE = PreTokenizerRule("llama3", ignore_merges=True, add_bos=True)
_GPT2_RULE, _STARCODER_RULE, _QWEN2_RULE = PreTokenizerRule("gpt2"), PreTokenizerRule("starcoder"), PreTokenizerRule(
    "qwen2")

# tokenizer.ggml.pre -> rule: llama_vocab::impl::load's `tokenizer_pre == ...` chain
PRE_TOKENIZERS: dict[str, PreTokenizerRule] = {
    "default": PreTokenizerRule("default"),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"),
                    _LLAMA3_RULE),
    "dbrx": PreTokenizerRule("llama3"),
    "smaug-bpe": PreTokenizerRule("llama3"),
    "deepseek-llm": PreTokenizerRule("deepseek-llm"),
    "deepseek-coder": PreTokenizerRule("deepseek-coder"),
    **dict.fromkeys(("deepseek-v3", "hunyuan-dense"), PreTokenizerRule("deepseek-v3")),
    "falcon": PreTokenizerRule("falcon"),
    # "gpt2" is not in llama.cpp's chain (it is the tokenizer.ggml.model value); edgegen always accepted it as GPT-2
    **dict.fromkeys(("gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "exaone4", "trillion", "granite-docling",
                     "jina-es", "jina-de", "jina-v2-es", "jina-v2-de", "gigachat", "a.x-4.0", "mellum"), _GPT2_RULE),
    **dict.fromkeys(("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"),
                    _STARCODER_RULE),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "hunyuan", "kormo"), _QWEN2_RULE),
    "qwen35": PreTokenizerRule("qwen35"),
    **dict.fromkeys(("poro-chat", "bloom", "gpt3-finnish"), PreTokenizerRule("poro")),
    "viking": PreTokenizerRule("viking"),
    **dict.fromkeys(("glm4", "chatglm-bpe"), PreTokenizerRule("llama3")),
    "tekken": PreTokenizerRule("tekken", ignore_merges=True, add_bos=True),
    **dict.fromkeys(("gpt-4o", "llama4", "minimax-m2"), PreTokenizerRule("gpt-4o")),
    "superbpe": PreTokenizerRule("superbpe"),
    "kimi-k2": PreTokenizerRule("kimi-k2"),
}


def pre_tokenizer_rule(pre: str | None, source: str = "model") -> PreTokenizerRule:
    """The rule for a file's `tokenizer.ggml.pre` (missing or empty means "default", as in llama.cpp); ArtifactError
    if the table has no such value."""
    name = "default" if pre is None or pre == "" else pre
    rule = PRE_TOKENIZERS.get(name) if isinstance(name, str) else None
    if rule is None:
        known = ", ".join(sorted(PRE_TOKENIZERS))
        raise ArtifactError(f"{source}: unknown tokenizer.ggml.pre {pre!r} (known: {known})")
    return rule


def hf_pre_tokenizer(rule: PreTokenizerRule) -> Any:
    """The rule's regexes as a `tokenizers` Sequence of isolated Splits, then the GPT-2 byte mapping."""
    from tokenizers import Regex, pre_tokenizers

    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in REGEX_FAMILIES[rule.family]]
    return pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
