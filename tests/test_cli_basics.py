"""The command line as one tool: registration, help, old spellings, output modes, bad input as one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from coinfer.cli.app import app
from coinfer.cli.main import main

EXPECTED_COMMANDS = {"profile", "prune", "plan", "run", "models", "inspect", "perplexity", "report", "show", "compare", "trace",
                     "quantize", "channel"}
ALL_OPTIONS = ("--output", "--json", "--quiet", "--verbose")


def test_every_command_is_registered():
    registered = set(typer.main.get_command(app).commands)
    assert registered == EXPECTED_COMMANDS


def test_the_cli_imports_no_torch():
    # Every command module is imported at start: heavy imports belong inside the commands.
    code = "import sys, coinfer.cli.main; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_prune_choices_are_the_pruners():
    from coinfer.cli.prune_cmd import Allocation, Compensation, Importance
    from coinfer.pruner.allocation import ALLOCATIONS
    from coinfer.pruner.compensation import COMPENSATIONS
    from coinfer.pruner.importance import IMPORTANCES
    from coinfer.pruner.recipe import AUTO

    for choices, names in ((Importance, IMPORTANCES), (Allocation, ALLOCATIONS), (Compensation, COMPENSATIONS)):
        assert [c.value for c in choices] == [AUTO, *names]


def test_a_failing_command_import_crashes_loudly():
    # The old registration swallowed ModuleNotFoundError for a command module; now the import is
    # explicit and a missing command module stops the CLI with its traceback.
    code = (
        "import importlib.abc, sys\n"
        "class Lost(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'coinfer.cli.prune_cmd':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Lost())\n"
        "import coinfer.cli.main\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "Error" in proc.stderr and "prune_cmd" in proc.stderr


def test_help_lists_commands_and_completion(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in EXPECTED_COMMANDS:
        assert cmd in out
    assert "--install-completion" in out and "--show-completion" in out


@pytest.mark.parametrize("cmd, panels, shown", [
    ("profile", ["Model", "Measurement", "Output"], ["cpu|cuda", "fp32|fp16|bf16", "[default: gpt2]",
                                                    "[default: 128]", "[default: 128,512,2048"]),
    ("prune", ["Model", "Pruning", "Measurement", "Output"], ["auto|magnitude|activation|fluctuation|taylor", "auto|uniform|sensitivity|global|standardized",
                                                              "auto|none|bias|lstsq", "all|device",
                                                              "[default: prune.json"]),
    ("plan", ["Model", "Link", "Search", "Budgets", "Chain", "Output"],
     ["fp32|fp16|int8", "latency|energy|weighted|throughput", "[default: 0ms]", "[default: 32 for a decoder"]),
    ("run", ["Model", "Link", "Roles and addresses", "Measurement", "Output"],
     ["local|server|device", "[default: 60s]", "[default: the plan's, else 128]"]),
    ("inspect", ["Model", "Link", "Measurement", "Output"], ["(-1: no check)", "[default: -1]"]),
    ("models", ["Output"], ["--json"]),
])
def test_help_reads_as_one_tool(cmd, panels, shown):
    result = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = result.output
    for panel in panels:
        assert f"─ {panel} " in text, panel
    for needle in shown:
        assert needle in text, needle
    for option in ALL_OPTIONS[1:]:
        assert option in text
    if cmd not in ("models", "inspect"):  # the commands that write a file
        assert "--output" in text


def test_version(capsys):
    import coinfer

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"coinfer {coinfer.__version__}"


@pytest.mark.parametrize(
    "args, message",
    [
        (["inspect", "--model", "/definitely/not/here"], "no such folder"),
        (["inspect", "--model", "gpt2", "--prompt-tokens", "0"], "'--prompt-tokens'"),
        (["inspect", "--model", "gpt2", "--wire-dtype", "fp8"], "fp8"),
        (["plan", "--bogus"], "No such option: --bogus"),
        (["plan", "--xyzzy"], "(see 'coinfer plan --help')"),
        (["profile", "--device", "tpu"], "'--device'"),
        (["models", "-q", "-v"], "give -q or -v, not both"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message):
    proc = subprocess.run([sys.executable, "-m", "coinfer.cli.main", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_models_json_is_the_document_alone(capsys):
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "model_list" and data["schema_version"] == 1
    names = {m["name"]: m["weights"] for m in data["models"]}
    assert names["minilm"] == "real" and names["gpt2"] == "random"
    assert main(["models", "-q"]) == 0 and capsys.readouterr().out == ""


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from coinfer.models.loading import build_from_config

    folder = tmp_path_factory.mktemp("tiny-llama")
    m = build_from_config(dict(model_type="llama", hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=60), name="t")
    m.model.save_pretrained(folder)
    return str(folder)


def test_inspect_verifies_split(capsys, tiny_llama):
    assert main(["inspect", "--model", tiny_llama, "--prompt-tokens", "8", "--verify", "2"]) == 0
    out = capsys.readouterr().out
    assert "max |split - unsplit| = 0" in out
    assert "block.2" in out and "weights: real" in out


def test_inspect_json_and_old_spelling(capsys, tiny_llama):
    assert main(["inspect", "--model", tiny_llama, "--seq-len", "8", "--verify", "1", "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["kind"] == "inspection" and data["prompt_tokens"] == 8 and data["verify"]["max_abs_diff"] == 0
    assert [s["name"] for s in data["stages"]] == ["embed", "block.0", "block.1", "block.2", "head"]
    # hidden 32 x 8 tokens x 4 bytes cross a cut after a block
    assert data["stages"][1]["prefill_payload_bytes"] == 32 * 8 * 4 and data["stages"][1]["cut_shape"] == [1, 8, 32]
    warning = captured.err.strip().splitlines()
    assert warning == ["warning: coinfer inspect --seq-len is deprecated, use --prompt-tokens (the old spelling "
                       "goes in coinfer 0.3)"]
