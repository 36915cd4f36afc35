"""`coinfer run` on a decoder with a tokenizer: real text in, the generated text printed, and the
split run's tokens identical to the unsplit model's (a tiny Llama with a byte-level tokenizer)."""

from __future__ import annotations

import pytest
import torch

from coinfer.cli.main import main
from coinfer.reports.io import load_document
from coinfer.reports.run import RunResult

PROMPT = "Shall I compare thee to a summer's day?"


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_config):
    """A tiny Llama saved with a byte-level BPE tokenizer (256 byte symbols, no merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from coinfer.models.loading import build_from_config

    root = tmp_path_factory.mktemp("text") / "m"
    build_from_config(tiny_config("llama", vocab=260), name="llama", seed=5).model.save_pretrained(root)
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(root)
    return root


def test_run_prints_the_generated_text_and_its_tokens_match_the_unsplit_model(folder, tmp_path, capsys, monkeypatch):
    from coinfer.models.loading import load_model
    from coinfer.models.shards import generate_greedy, shard_range

    monkeypatch.chdir(tmp_path)
    args = ["run", "--model", str(folder), "--cut", "3", "--prompt-tokens", "64", "--decode-steps", "5", "--warmup", "0",
            "--threads", "1", "--prompt", PROMPT, "-o", "run.json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    r = load_document(tmp_path / "run.json", RunResult)
    # The prompt is real text through the real tokenizer: one byte per token, the user's words last.
    assert r.prompt_text.endswith(PROMPT) and len(r.prompt_text.encode()) == 64 == r.prompt_tokens
    # The unsplit model, greedy, on the same ids: the same 6 tokens, and their text is what was printed.
    lm = load_model(str(folder))
    ids = torch.tensor([lm.tokenizer(r.prompt_text, add_special_tokens=False)["input_ids"]])
    whole = generate_greedy([shard_range(lm, 0, lm.adapter.num_blocks + 2)], ids, 6)[0].tolist()
    assert r.generated_tokens[0] == whole and r.matches_unsplit
    assert r.generated_text == lm.tokenizer.decode(whole)
    flat = " ".join(out.split())
    assert f"generated (6 tokens): {r.generated_text!r}" in out and "identical to the unsplit model: yes" in flat
    assert "..." + r.prompt_text[-120:].replace("\n", " ") in out
