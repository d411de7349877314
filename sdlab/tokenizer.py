"""The real CLIP BPE tokenizer, offline.

Stable Diffusion 1.x reads prompts with OpenAI CLIP's byte-pair tokenizer (49,408 tokens,
77 per prompt). Its two files (`vocab.json`, `merges.txt`) ship inside sdlab under
`sdlab/data/clip_tokenizer/`; they were generated once by `build_tokenizer_files()` from
`bpe_simple_vocab_16e6.txt.gz`, the file OpenAI's CLIP and the `open_clip_torch` wheel on PyPI
ship. No hub download is needed.
"""
from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

TOKENIZER_DIR = Path(__file__).parent / "data" / "clip_tokenizer"
MODEL_MAX_LENGTH = 77
VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def build_tokenizer_files(bpe_gz: str | Path, out_dir: str | Path = TOKENIZER_DIR) -> Path:
    """Write `vocab.json` and `merges.txt` from CLIP's `bpe_simple_vocab_16e6.txt.gz`.

    Follows `SimpleTokenizer` in OpenAI's CLIP: 256 byte symbols, the same with the
    end-of-word mark `</w>`, one token per merge, then the two special tokens.
    """
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab += [token + "</w>" for token in vocab]
    vocab += ["".join(pair) for pair in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"expected {VOCAB_SIZE} tokens from {bpe_gz}, built {len(vocab)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(p) for p in merges) + "\n")
    return out


@lru_cache(maxsize=1)
def load_clip_tokenizer():
    """The CLIP tokenizer Stable Diffusion uses, built from the files sdlab ships.

    The files are passed positionally: in transformers 5 the `vocab_file=`/`merges_file=`
    keywords are silently ignored and the result gives wrong ids.
    """
    from transformers import CLIPTokenizer  # heavy: transformers loads with the first tokenizer

    return CLIPTokenizer(
        str(TOKENIZER_DIR / "vocab.json"),
        str(TOKENIZER_DIR / "merges.txt"),
        model_max_length=MODEL_MAX_LENGTH,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
