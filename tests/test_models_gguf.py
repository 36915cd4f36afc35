"""GGUF models: a tiny Llama written with the gguf writer loads back exactly; the cache is keyed,
atomic and reused; other architectures and broken files are refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from coinfer.cli.main import main
from coinfer.errors import UnsupportedModelError, UserInputError
from coinfer.models import gguf as cg
from coinfer.models.loading import load_model
from coinfer.models.perplexity import chain_logits_fn, logits_fn
from coinfer.models.shards import generate_greedy, split
from coinfer.reports.io import file_sha256

HEADS, KV_HEADS, LAYERS = 4, 2, 2


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's convert script stores q/k rows interleaved for its rotary kernel; transformers'
    # GGUF reader undoes exactly this.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, vocab_size=101, max_position_embeddings=128, rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _add_tokenizer(w) -> None:
    # 101 tokens: printable ASCII as byte-level BPE symbols, two specials, two merges, <unk>.
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    b2u = bytes_to_unicode()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([b2u[b] for b in range(32, 127)] + ["<s>", "</s>", "Ġt", "he", "Ġthe", "<unk>"])
    w.add_token_types([1] * 95 + [3, 3, 1, 1, 1, 2])
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_bos_token_id(95)
    w.add_eos_token_id(96)


def write_gpt2_gguf(path: Path, model) -> Path:
    """Write a GPT2LMHeadModel (tied head) as an F32 GGUF, Conv1D weights stored as llama.cpp does."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_name("tiny gpt2")
    w.add_context_length(cfg.n_positions)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(4 * cfg.n_embd)
    w.add_head_count(cfg.n_head)
    w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_tokenizer(w)  # transformers takes GPT-2's vocabulary size from the tokenizer
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, cfg.n_layer)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" or name.endswith(".attn.bias"):
            continue  # tied to the embedding; a causal-mask buffer
        a = t.numpy().astype(np.float32)
        if a.ndim == 2 and any(k in name for k in ("c_attn", "c_proj", "c_fc")):
            a = a.T  # Conv1D keeps (in, out)
        w.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_llama_gguf(path: Path, model, *, tokenizer: bool = True, truncate_to: int | None = None) -> Path:
    """Write ``model`` (a LlamaForCausalLM) as an F32 GGUF, with a tiny byte-level BPE tokenizer."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_rope_dimension_count(cfg.hidden_size // HEADS)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    if tokenizer:
        _add_tokenizer(w)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for name, t in model.state_dict().items():
        a = t.numpy().astype(np.float32)
        if "q_proj" in name:
            a = _permute(a, HEADS)
        elif "k_proj" in name:
            a = _permute(a, KV_HEADS)
        w.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if truncate_to is not None:
        data = path.read_bytes()
        path.write_bytes(data[: truncate_to if truncate_to > 0 else len(data) + truncate_to])
    return path


def write_other_arch_gguf(path: Path, arch: str = "phi3") -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("not ours")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    model = _tiny_llama()
    path = write_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", model)
    return model, path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(cg.CACHE_ENV, str(root))
    return root


def test_tiny_llama_gguf_loads_back_exactly(tiny_gguf, cache):
    model, path = tiny_gguf
    loaded = load_model(str(path))
    ids = torch.tensor([[3, 5, 7, 9, 20, 33, 50, 100, 1]])
    with torch.no_grad():
        want = model(ids).logits
        whole = logits_fn(loaded)(ids)
        sp = split(loaded, 1, logits_to_keep=0)  # the split path on the converted weights
        chained = chain_logits_fn([sp.device, sp.server])(ids)
    torch.testing.assert_close(whole, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chained, want, atol=1e-5, rtol=1e-5)
    greedy = generate_greedy([sp.device, sp.server], ids, 3)
    ref = model.generate(ids, max_new_tokens=3, do_sample=False)[:, ids.shape[1] :]
    assert greedy.tolist() == ref.tolist()
    ident = loaded.identity
    assert (ident.weights, ident.weights_label) == ("real", "real (converted from GGUF F32)")
    sha = file_sha256(path)
    assert ident.weights_source == f"tiny.gguf sha256:{sha}"
    assert ident.num_blocks == LAYERS and ident.vocab_size == 101
    # The tokenizer came along: the BPE merges give " the" one token.
    assert loaded.tokenizer(" the", add_special_tokens=False)["input_ids"] == [99]
    entries = sorted(p.name for p in (cache / cg.CACHE_LAYOUT).iterdir())
    assert entries == [sha]  # keyed by sha256; no temporary folder left
    files = {p.name for p in (cache / cg.CACHE_LAYOUT / sha).iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", cg.PROVENANCE_FILE} <= files
    assert "quantization_config" not in (cache / cg.CACHE_LAYOUT / sha / "config.json").read_text()


def test_second_load_comes_from_the_cache_and_a_folder_names_its_gguf(tiny_gguf, cache, monkeypatch):
    model, path = tiny_gguf
    load_model(str(path))

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(cg, "read_info", no_conversion)  # every conversion reads the header first
    again = load_model(str(path.parent))  # the folder holding the one GGUF
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(logits_fn(again)(ids), model(ids).logits, atol=1e-5, rtol=1e-5)
    assert again.identity.weights_detail == "converted from GGUF F32"


def test_killed_conversion_leaves_no_cache(tiny_gguf, cache, monkeypatch):
    _, path = tiny_gguf
    import safetensors.torch

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C in the middle of writing the weights raises

    monkeypatch.setattr(safetensors.torch, "save_model", die)
    with pytest.raises(KeyboardInterrupt):
        load_model(str(path))
    assert list((cache / cg.CACHE_LAYOUT).iterdir()) == []


def test_stale_temporary_folder_of_a_dead_process_is_swept(tiny_gguf, cache):
    _, path = tiny_gguf
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = cache / cg.CACHE_LAYOUT / f".tmp-0123456789abcdef-{socket.gethostname()}-{dead.stdout.strip()}"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    load_model(str(path))
    assert not stale.exists()


def test_tiny_gpt2_gguf_loads_back_exactly(tmp_path, cache):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    # transformers' GPT-2 GGUF reader keeps the default 1024 positions (it ignores context_length)
    model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=1024, vocab_size=101)).eval()
    loaded = load_model(str(write_gpt2_gguf(tmp_path / "g.gguf", model)))
    ids = torch.tensor([[3, 5, 7, 9, 20, 33, 50, 100]])
    with torch.no_grad():
        want = model(ids).logits
        sp = split(loaded, 1, logits_to_keep=0)
        torch.testing.assert_close(chain_logits_fn([sp.device, sp.server])(ids), want, atol=1e-5, rtol=1e-5)
    assert loaded.identity.family == "gpt2" and loaded.identity.weights_detail == "converted from GGUF F32"


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(cg.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cg.cache_root() == tmp_path / "xdg" / "coinfer"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cg.cache_root() == tmp_path / "home" / ".cache" / "coinfer"
    monkeypatch.setenv(cg.CACHE_ENV, str(tmp_path / "mine"))
    assert cg.cache_root() == tmp_path / "mine"


def test_gguf_architectures_are_converted_by_transformers_and_have_adapters():
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    from coinfer.models.adapters import adapter_class

    for arch in cg.GGUF_ARCHITECTURES:
        assert arch in GGUF_SUPPORTED_ARCHITECTURES
        assert adapter_class(arch).is_decoder


def test_library_refusals(tmp_path, cache):
    with pytest.raises(UnsupportedModelError, match="'phi3' is not supported"):
        load_model(str(write_other_arch_gguf(tmp_path / "phi.gguf")))
    (tmp_path / "two").mkdir()
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / "two" / name).write_bytes(b"")
    with pytest.raises(UserInputError, match="several GGUF files"):
        load_model(str(tmp_path / "two"))
    assert not cache.exists()


def _bad_gguf(kind: str, path: Path, good: Path) -> Path:
    if kind == "other-arch":
        write_other_arch_gguf(path, "gpt_neox")
    elif kind.startswith("truncated"):
        data = good.read_bytes()
        path.write_bytes(data[:200] if kind == "truncated-header" else data[:-100])
    elif kind == "junk":
        path.write_bytes(b"this is not a model\n" * 50)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("other-arch", "GGUF architecture 'gpt_neox' is not supported"),
        ("truncated-header", "not a valid GGUF file"),
        ("truncated-data", "not a valid GGUF file (truncated"),
        ("junk", "not a valid GGUF file"),
        ("missing", "no such GGUF file"),
    ],
)
def test_bad_gguf_is_one_line_exit_2_nothing_written(kind, message, tmp_path, tiny_gguf, cache, capsys):
    path = _bad_gguf(kind, tmp_path / "bad.gguf", tiny_gguf[1])
    out = tmp_path / "p.json"
    assert main(["profile", "--model", str(path), "-o", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not cache.exists() and not out.exists()


def test_bad_gguf_from_a_fresh_process_has_no_traceback(tmp_path, tiny_gguf):
    path = _bad_gguf("other-arch", tmp_path / "bad.gguf", tiny_gguf[1])
    env = {**os.environ, cg.CACHE_ENV: str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "coinfer.cli.main", "inspect", "--model", str(path)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: model {path}: GGUF architecture 'gpt_neox' is not supported; supported: llama, mistral, qwen2, gpt2"
    assert not (tmp_path / "cache").exists()
