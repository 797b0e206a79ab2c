"""LED's tokenizer on the `tokenizers` library, with the ids and text of transformers' `LEDTokenizer`.

transformers 5's `LEDTokenizer` is `RobertaTokenizer`: it rebuilds a byte-level BPE from the
vocabulary and merges with RoBERTa's settings (no continuing-subword prefix, ByteLevel
pre-tokenizer and decoder, `<s> X </s>` post-processing) rather than trusting `tokenizer.json`'s
pipeline. We rebuild it the same way, from `vocab.json` + `merges.txt`, or from the vocabulary and
merges inside `tokenizer.json` when only that file exists.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Sequence

import numpy as np

SPECIAL_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                    "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}


class TokenizerError(ValueError):
    """A tokenizer directory that cannot be read; the message names the missing or bad file."""


class TokenizerWarning(UserWarning):
    """A tokenizer that loads but will not read text as its model expects (no BPE merges: every word
    splits into bytes); the message names the file."""


FIX = "copy the tokenizer files again from the checkpoint the model was made from"


def _token_text(value, source: str = "the tokenizer files") -> str:
    """A special token's text: a string, or an AddedToken record {"content": ...}."""
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    if isinstance(value, str):
        return value
    raise TokenizerError(f"{source}: a special token is {value!r}, not a string or {{\"content\": ...}}; {FIX}")


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        line = open(path, "rb").read()[:e.start].count(b"\n") + 1
        raise TokenizerError(f"{path} line {line} is not UTF-8 ({e.reason}); {FIX}") from None


def _read_json(path, expect=dict):
    """The JSON value of `path` ({} when the file is absent), which must be an `expect`."""
    if not os.path.isfile(path):
        return expect()
    try:
        value = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path} line {e.lineno} is not valid JSON ({e.msg}, column {e.colno}); {FIX}") from None
    if not isinstance(value, expect):
        raise TokenizerError(f"{path} holds a JSON {type(value).__name__}, not an {expect.__name__}; {FIX}")
    return value


def _check_vocab(vocab, source: str) -> dict[str, int]:
    if not isinstance(vocab, dict):
        raise TokenizerError(f"{source}: the vocabulary is a {type(vocab).__name__}, not a mapping from token to id; "
                             f"{FIX}")
    for token, i in vocab.items():
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise TokenizerError(f"{source}: token {token!r} has id {i!r}, not a non-negative integer; {FIX}")
    return vocab


def _merge_pairs(merges, source: str) -> list[tuple[str, str]]:
    """tokenizer.json's merges ("a b" strings or [a, b] pairs) as pairs."""
    if not isinstance(merges, list):
        raise TokenizerError(f"{source}: model.merges is a {type(merges).__name__}, not a list; {FIX}")
    pairs = []
    for k, m in enumerate(merges):
        pair = tuple(m.split(" ")) if isinstance(m, str) else tuple(m) if isinstance(m, list) else None
        if pair is None or len(pair) != 2 or not all(isinstance(t, str) for t in pair):
            raise TokenizerError(f"{source}: merge {k} is {m!r}, not two tokens; {FIX}")
        pairs.append(pair)
    return pairs


def _read_merges(path: str) -> list[tuple[str, str]]:
    """merges.txt: a "#version" line, then one "a b" pair a line."""
    pairs = []
    for n, line in enumerate(_read_text(path).split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip() or line.startswith("#version"):
            continue
        pair = tuple(line.split(" "))
        if len(pair) != 2 or not all(pair):
            raise TokenizerError(f"{path} line {n} is {line[:60]!r}, not two tokens separated by one space; {FIX}")
        pairs.append(pair)
    return pairs


class LEDTokenizer:
    """Batch encoding with truncation, right padding, `pad_to_multiple_of`, and a global attention
    mask on the first token (or on given spans, for QA)."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], *, model_max_length: int = 16384,
                 add_prefix_space: bool = False, trim_offsets: bool = True, strip: dict | None = None,
                 source: str = "the tokenizer", **special_tokens):
        """vocab: token -> id; merges: the BPE merges, in order; special_tokens: bos_token, eos_token,
        pad_token, ... (text, or {"content": text}). source: how errors name the files read.
        Raises TokenizerError when the vocabulary lacks <s>, </s> or <pad> (their ids would disagree
        with the model's) or the vocabulary and merges do not form a BPE."""
        from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
        from tokenizers.models import BPE

        self.special = {**SPECIAL_DEFAULTS, **{k: _token_text(v, source) for k, v in special_tokens.items()
                                               if v is not None}}
        self.model_max_length = model_max_length
        vocab = _check_vocab(vocab, source)
        # a special token missing from the vocabulary would get a new id at its end, which the model's
        # config does not know (its bos, eos and pad ids): the summaries would be garbage
        missing = [self.special[n] for n in ("bos_token", "eos_token", "pad_token") if self.special[n] not in vocab]
        if missing:
            raise TokenizerError(f"{source}: the vocabulary lacks the special tokens {missing}; these are not the "
                                 f"tokenizer files of an LED model: {FIX}")
        try:
            tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                end_of_word_suffix="", fuse_unk=False))
        except Exception as e:  # the tokenizers library's own error: a merge of unknown tokens, ...
            raise TokenizerError(f"{source}: {e}; {FIX}") from None
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
        tok.decoder = decoders.ByteLevel()
        strip = strip or {}  # token text -> (lstrip, rstrip), as the checkpoint's files declare them
        tok.add_special_tokens([
            AddedToken(text, special=True, normalized=False, lstrip=strip.get(text, (False, False))[0],
                       rstrip=strip.get(text, (False, False))[1])
            for text in dict.fromkeys(self.special.values())])
        ids = {name: tok.token_to_id(text) for name, text in self.special.items()}
        tok.post_processor = processors.RobertaProcessing((self.special["sep_token"], ids["sep_token"]),
                                                          (self.special["cls_token"], ids["cls_token"]),
                                                          trim_offsets=trim_offsets, add_prefix_space=add_prefix_space)
        self._tok = tok
        self.bos_token_id, self.eos_token_id, self.pad_token_id = ids["bos_token"], ids["eos_token"], ids["pad_token"]
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

    # ------------------------------------------------------------------ loading
    @staticmethod
    def has_files(directory: str | os.PathLike) -> bool:
        """Whether `directory` holds tokenizer files (vocab.json and merges.txt, or tokenizer.json)."""
        d = os.fspath(directory)
        return (os.path.isfile(os.path.join(d, "vocab.json")) and os.path.isfile(os.path.join(d, "merges.txt"))) \
            or os.path.isfile(os.path.join(d, "tokenizer.json"))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, model_max_length: int | None = None) -> "LEDTokenizer":
        """The tokenizer of a checkpoint directory: vocab.json + merges.txt, or tokenizer.json's model,
        with tokenizer_config.json and special_tokens_map.json.

        Raises TokenizerError naming the file (and the line, where there is one) when the files are
        missing, not UTF-8, not valid JSON, of the wrong shape, or lack LED's special tokens."""
        directory = os.fspath(directory)
        vocab_path, merges_path = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
        json_path = os.path.join(directory, "tokenizer.json")
        if os.path.isfile(vocab_path) and os.path.isfile(merges_path):
            source = f"{vocab_path} and {merges_path}"
            vocab = _check_vocab(_read_json(vocab_path), vocab_path)
            merges = _read_merges(merges_path)
            merges_source = merges_path
        elif os.path.isfile(json_path):
            source = json_path
            model = _read_json(json_path).get("model")
            if not isinstance(model, dict) or model.get("type") != "BPE":
                kind = model.get("type") if isinstance(model, dict) else None
                raise TokenizerError(f"{json_path} holds a {kind} model, not the byte-level BPE LED needs; {FIX}")
            vocab = _check_vocab(model.get("vocab"), json_path)
            merges = _merge_pairs(model.get("merges", []), json_path)
            merges_source = f"{json_path} (model.merges)"
        else:
            raise TokenizerError(f"{directory} has no tokenizer: expected vocab.json and merges.txt, or "
                                 f"tokenizer.json (copy them from the checkpoint you converted)")
        if not merges:  # transformers loads it silently too
            warnings.warn(f"{merges_source} has no BPE merges: every word splits into single bytes (about twice the "
                          f"tokens) and a model trained with merges reads it wrong; {FIX}", TokenizerWarning,
                          stacklevel=2)
        config_path = os.path.join(directory, "tokenizer_config.json")
        config = _read_json(config_path)
        added = (_read_json(json_path).get("added_tokens") or []) if os.path.isfile(json_path) else []
        decoder = config.get("added_tokens_decoder") or {}
        if not isinstance(added, list) or not isinstance(decoder, dict):
            raise TokenizerError(f"{json_path if not isinstance(added, list) else config_path}: the added tokens are "
                                 f"not a list of records; {FIX}")
        added = list(added) + list(decoder.values())
        strip = {a["content"]: (bool(a.get("lstrip")), bool(a.get("rstrip")))
                 for a in added if isinstance(a, dict) and isinstance(a.get("content"), str)}
        special = _read_json(os.path.join(directory, "special_tokens_map.json"))
        special.update({k: v for k, v in config.items() if k in SPECIAL_DEFAULTS and v is not None})
        special = {k: v for k, v in special.items() if k in SPECIAL_DEFAULTS}
        max_len = model_max_length or config.get("model_max_length") or 16384
        if isinstance(max_len, bool) or not isinstance(max_len, (int, float)) or max_len < 1:
            raise TokenizerError(f"{config_path}: model_max_length is {max_len!r}, not a positive number; {FIX}")
        if max_len > 1e9:  # transformers' "no limit" sentinel
            max_len = 16384
        return cls(vocab, merges, model_max_length=int(max_len),
                   add_prefix_space=bool(config.get("add_prefix_space", False)),
                   trim_offsets=bool(config.get("trim_offsets", True)), strip=strip, source=source, **special)

    def to_json(self) -> str:
        """The whole tokenizer (vocabulary, merges, special tokens, pipeline) as the `tokenizers`
        library serializes it: equal strings encode and decode alike."""
        return self._tok.to_str()

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, texts: str | Sequence[str], *, max_length: int | None = None, truncation: bool = True,
                 padding: bool = True, pad_to_multiple_of: int | None = None,
                 global_attention: str | Sequence[Sequence[tuple[int, int]]] = "first") -> dict[str, np.ndarray]:
        """Encodes a batch: input_ids, attention_mask, global_attention_mask, all [b, n] int32.

        max_length: truncate to this many tokens, special tokens included (default: model_max_length).
        global_attention: "first" (the first token, LED's default for summarization), "none", or per
        text a list of (start, end) token spans to mark global (the question, for QA).
        """
        if isinstance(texts, str):
            texts = [texts]
        return self.pad(self.encode_batch(texts), max_length=max_length, truncation=truncation, padding=padding,
                        pad_to_multiple_of=pad_to_multiple_of, global_attention=global_attention)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Untruncated ids of each text, special tokens included."""
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def pad(self, rows: Sequence[Sequence[int]], *, max_length: int | None = None, truncation: bool = True,
            padding: bool = True, pad_to_multiple_of: int | None = None,
            global_attention: str | Sequence[Sequence[tuple[int, int]]] = "first") -> dict[str, np.ndarray]:
        """Already-encoded rows (`encode_batch`) -> the arrays of `__call__`, with the same options."""
        limit = max_length or self.model_max_length
        if truncation and padding and pad_to_multiple_of and max_length and max_length % pad_to_multiple_of:
            raise ValueError(f"max_length {max_length} is not a multiple of pad_to_multiple_of {pad_to_multiple_of}; "
                             f"padding would exceed it: choose a max_length that is")
        truncated = []
        for ids in rows:
            ids = list(ids)
            if truncation and len(ids) > limit:
                ids = ids[:limit - 1] + [ids[-1]]  # keep the closing </s>
            truncated.append(ids)
        rows = truncated
        width = max(map(len, rows)) if padding else None
        if padding and pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        if not padding and len({len(r) for r in rows}) > 1:
            raise ValueError("texts of different lengths need padding=True to form one array")
        width = width or len(rows[0])
        ids = np.full((len(rows), width), self.pad_token_id, np.int32)
        mask = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        glob = np.zeros_like(mask)
        if global_attention == "first":
            glob[:, 0] = 1
        elif global_attention != "none":
            for i, spans in enumerate(global_attention):
                for start, end in spans:
                    glob[i, start:end] = 1
            glob *= mask
        return {"input_ids": ids, "attention_mask": mask, "global_attention_mask": glob}

    # ------------------------------------------------------------------ decoding
    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens: bool = True) -> list[str]:
        return self._tok.decode_batch([[int(i) for i in s] for s in sequences], skip_special_tokens=skip_special_tokens)
