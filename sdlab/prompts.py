"""Prompt weights: telling the model which words matter more (notebook 04).

A weight scales a word's embedding (the 77 × width vectors of notebook 04, section 5), so that the
cross-attention layers hear it louder or softer. Two syntaxes are in use, and sdlab takes both:

- **compel's** (the diffusers documentation's): `circle++` (×1.1 per +, compounding), `circle-`
  (÷1.1 per −), `(red)1.4`, `(red circle)0.8`;
- **AUTOMATIC1111's**: `(word:1.3)`, `(word)` (×1.1), `((word))` (×1.21), `[word]` (÷1.1),
  nesting multiplies; `\\(` and `\\)` are a literal parenthesis.

A prompt that uses compel's weights (a number right after `)` with no space and no letter after
it, or `+`/`-` right after a word or a `)`) is read as compel's syntax; any other prompt with
`(`, `)`, `[` or `]` as AUTOMATIC1111's, converted to compel's (`to_compel`). A prompt without
any of these is not weighted at all and takes the plain path: its images are the same as before
weights existed. The embeddings are compel's
(`Compel(tokenizer, text_encoder)`); the weights stay in the prompt's text, so the PNG parameters
record them and `regenerate` reproduces the image.
"""
from __future__ import annotations

import re

import torch

from .errors import SdlabInputError

MAX_WEIGHT = 10.0
UP, DOWN = 1.1, 1 / 1.1  # AUTOMATIC1111's ( ) and [ ]
_COMPEL_WEIGHT = re.compile(r"\)(\d+(\.\d*)?|\.\d+)(?![\w.])|[\w)][+-]+(?=[\s,.;:)]|$)")
_A1111_MARK = re.compile(r"[()\[\]]")
_A1111_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([^)]*?)\s*\)|\)|]|[^\\()\[\]:]+|:")


def is_weighted(prompt: str) -> bool:
    """Whether `prompt` uses weight syntax of either kind (else it is embedded as plain text)."""
    return bool(_COMPEL_WEIGHT.search(prompt) or _A1111_MARK.search(prompt))


def is_compel(prompt: str) -> bool:
    """Whether `prompt` uses compel's own weights (`(word)1.3`, `word++`, `word-`)."""
    return bool(_COMPEL_WEIGHT.search(prompt))


def parse_a1111(prompt: str) -> list[tuple[str, float]]:
    """AUTOMATIC1111's attention syntax → [(text, weight)], neighbouring texts of one weight merged
    (A1111's own algorithm: a closing bracket multiplies the weights of everything since its opening).

    Raises SdlabInputError for an unbalanced bracket, a weight that is not a number, or one outside
    0–10, naming the place in the prompt.
    """
    parts: list[list] = []  # [text, weight]
    open_brackets: list[tuple[str, int, int]] = []  # (bracket, where in the prompt, where in parts)

    def close(opening: str, token: str, where: int, factor: float) -> None:
        if not open_brackets or open_brackets[-1][0] != opening:
            raise SdlabInputError(f"{token!r} at character {where} of the prompt has no matching {opening!r}: "
                                  f"remove it, or write \\{token[-1]} for a literal one")
        for part in parts[open_brackets.pop()[2]:]:
            part[1] *= factor

    for match in _A1111_TOKEN.finditer(prompt):
        token, where = match.group(0), match.start()
        if token.startswith("\\") and len(token) == 2:
            parts.append([token[1], 1.0])
        elif token in ("(", "["):
            open_brackets.append((token, where, len(parts)))
        elif token.startswith(":") and token.endswith(")"):
            try:
                weight = float(match.group(1))
            except ValueError:
                raise SdlabInputError(f"{match.group(1)!r} at character {where} of the prompt is not a weight: "
                                      f"write a number, as in (word:1.3)") from None
            if not 0 <= weight <= MAX_WEIGHT:
                raise SdlabInputError(f"the weight {weight:g} at character {where} of the prompt is outside 0–"
                                      f"{MAX_WEIGHT:g}: 1 leaves a word as it is, 1.1–1.5 stresses it, 0.5–0.9 "
                                      f"softens it")
            close("(", token, where, weight)
        elif token == ")":
            close("(", token, where, UP)
        elif token == "]":
            close("[", token, where, DOWN)
        else:
            parts.append([token, 1.0])
    if open_brackets:
        bracket, where, _ = open_brackets[-1]
        closing = ")" if bracket == "(" else "]"
        raise SdlabInputError(f"the {bracket!r} at character {where} of the prompt is never closed: add "
                              f"{closing!r}, or write \\{bracket} for a literal one")
    merged: list[tuple[str, float]] = []
    for text, weight in parts:
        if merged and abs(merged[-1][1] - weight) < 1e-9:
            merged[-1] = (merged[-1][0] + text, weight)
        elif text:
            merged.append((text, weight))
    return merged


def to_compel(prompt: str) -> str:
    """A prompt in compel's syntax: compel's own as it is, AUTOMATIC1111's converted
    (`a (red:1.3) circle` → `a (red)1.3 circle`)."""
    if is_compel(prompt) or not _A1111_MARK.search(prompt):
        return prompt
    out, after_weight = [], False
    for text, weight in parse_a1111(prompt):
        text = re.sub(r"([()])", r"\\\1", text)  # a literal parenthesis stays literal in compel
        if after_weight and re.match(r"[\d.+-]", text):
            text = " " + text  # "(masterpiece)1.1" then "1girl": not one number "1.11girl"
        after_weight = abs(weight - 1) >= 1e-9 and bool(text.strip())
        if not after_weight:
            out.append(text)
        else:
            lead, core, trail = re.match(r"(\s*)(.*?)(\s*)$", text, re.S).groups()
            out.append(f"{lead}({core}){weight:.4g}{trail}")
    return "".join(out)


def embed_prompts(tokenizer, text_encoder, texts: list[str]) -> torch.Tensor:
    """The text encoder's embeddings (N × 77 × width) of `texts`, weights applied (compel's method:
    each token's vector moves away from or towards the empty prompt's by its weight)."""
    from compel import Compel  # loads only for weighted prompts

    compel = Compel(tokenizer=tokenizer, text_encoder=text_encoder, truncate_long_prompts=True)
    try:
        with torch.no_grad():
            return compel([to_compel(t) for t in texts])
    except SdlabInputError:
        raise
    except Exception as error:  # compel's parser: pyparsing's errors
        raise SdlabInputError(f"the prompt's weights cannot be read ({error}): write (word)1.3 or word+ "
                              f"(compel), or (word:1.3) (AUTOMATIC1111)") from error
