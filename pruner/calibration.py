"""Calibration text: the shipped English sample or the user's file, cut into token windows."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from coinfer.errors import UserInputError
from coinfer.vocab import max_positions


@dataclass
class Calibration:
    """Calibration text and its token windows.

    Attributes:
        source: ``builtin`` or the user's path.
        sha256: sha256 of the text's UTF-8 bytes.
        windows: Token-id windows, each (1, tokens) int64.
        tokenizer: ``model`` (the model's own tokenizer) or ``bytes`` (UTF-8 bytes modulo the
            vocabulary: random-weight presets ship no tokenizer).
    """

    source: str
    sha256: str
    windows: list[Any]
    tokenizer: str

    @property
    def tokens(self) -> int:
        return sum(int(w.shape[1]) for w in self.windows)


def read_text(path: str | None) -> tuple[str, str]:
    """Read the calibration text; validate it before any model work.

    Args:
        path: A named text (``shakespeare-calib``, ``builtin``: the small shipped sample), the
            user's file, or None for ``shakespeare-calib`` (works disjoint from the evaluation text).

    Returns:
        (source label, text).

    Raises:
        UserInputError: Missing, empty, binary or non-UTF-8 file; an unknown name.
    """
    from coinfer.models.corpora import DEFAULT_CALIBRATION, resolve_text

    text = resolve_text(path, "--calib", DEFAULT_CALIBRATION)
    return text.name, text.text


def build(text: str, source: str, loaded: Any, seq_len: int, max_windows: int) -> Calibration:
    """Tokenize ``text`` and cut it into up to ``max_windows`` windows of ``seq_len`` tokens.

    Encoders with a tokenizer get ``[CLS] ... [SEP]`` around each window, as in training.

    Raises:
        UserInputError: The text is too short for even one window of 8 tokens.
    """
    import torch

    ad = loaded.adapter
    tok = loaded.tokenizer
    special: tuple[list[int], list[int]] = ([], [])
    if tok is not None:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        kind = "model"
        if not ad.is_decoder and tok.cls_token_id is not None and tok.sep_token_id is not None:
            special = ([tok.cls_token_id], [tok.sep_token_id])
    else:
        ids = [b % ad.vocab_size for b in text.encode("utf-8")]
        kind = "bytes"
    limit = max_positions(ad.config)
    if limit is not None:
        seq_len = min(seq_len, limit)
    body = seq_len - len(special[0]) - len(special[1])
    windows = []
    for i in range(0, len(ids), body):
        chunk = ids[i : i + body]
        if len(chunk) < min(8, body) or len(windows) >= max_windows:
            break
        windows.append(torch.tensor([special[0] + chunk + special[1]], dtype=torch.long))
    if not windows:
        raise UserInputError(f"calibration text {source}: too short ({len(ids)} tokens; need at least 8)")
    return Calibration(source, hashlib.sha256(text.encode("utf-8")).hexdigest(), windows, kind)
