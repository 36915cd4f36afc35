"""Weight formats and weight-only modules: codes against hand computations, kernels against x @ W.T."""

from __future__ import annotations

import pytest
import torch

from coinfer.errors import DeviceUnavailableError, UserInputError
from coinfer.precision import modules as qm
from coinfer.precision import quant
from coinfer.vocab import check_engine, check_precision, parse_precisions


def test_int8_codes_by_hand():
    # Row maxima 127/64 and 127/32 give scales 1/64 and 1/32, exact in bf16.
    w = torch.tensor([[127 / 64, -50 / 64, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0], [-127 / 32, 1 / 32, 0.0, 2.0]])
    q = quant.quantize_int8(w)
    assert q.qweight.dtype == torch.int8 and q.scales.dtype == torch.bfloat16
    assert q.scales.float().tolist() == [1 / 64, 1.0, 1 / 32]
    assert q.qweight.tolist() == [[127, -50, 19, 0], [0, 0, 0, 0], [-127, 1, 0, 64]]
    assert torch.equal(q.dequantize()[0], torch.tensor([127 / 64, -50 / 64, 19 / 64, 0.0]))


def test_int4_codes_and_packing_by_hand():
    # Two groups of 4; each spans 3.75, so scale 0.25 and zero = min + 2 are exact in bf16.
    w = torch.tensor([[0.0, 0.25, 0.5, 3.75, -1.0, -1.0, 0.9, 2.75]])
    q = quant.quantize_int4(w, group_size=4)
    assert q.scales.float().tolist() == [[0.25, 0.25]] and q.zeros.float().tolist() == [[2.0, 1.0]]
    assert quant.unpack_nibbles(q.qweight).tolist() == [[0, 1, 2, 15, 0, 0, 8, 15]]
    assert q.qweight.tolist() == [[0 | 1 << 4, 2 | 15 << 4, 0, 8 | 15 << 4]]
    assert q.dequantize().tolist() == [[0.0, 0.25, 0.5, 3.75, -1.0, -1.0, 1.0, 2.75]]


def test_int4_pads_a_partial_group_with_the_last_column():
    w = torch.tensor([[0.0, 1.5, 3.0, 3.75, 2.0, 0.0]])  # 6 columns, groups of 4: the second is padded
    q = quant.quantize_int4(w, group_size=4)
    assert q.qweight.shape == (1, 4) and q.scales.shape == (1, 2)
    # The padding repeats 0.0, so the second group's range is [0, 2]: scale 2/15, zero 16/15 (bf16).
    assert q.scales[0, 1] == torch.tensor(2 / 15).bfloat16()
    assert q.dequantize().shape == (1, 6)


def test_nibble_round_trip():
    codes = torch.randint(0, 16, (5, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(quant.unpack_nibbles(quant.pack_nibbles(codes)), codes)


@pytest.mark.parametrize("precision", ["bf16", "int8", "int4"])
@pytest.mark.parametrize("shape", [(96, 64, 3), (101, 64, 3), (50, 40, 3), (96, 64, 40)])
def test_module_equals_x_times_dequantized_weight(precision, shape):
    # (101, 64) and (50, 40) exercise the kernels' padding (int4 output rows, int8 input width);
    # 2 x 40 = 80 rows take int8's dequantize-then-GEMM path.
    n, k, t = shape
    g = torch.Generator().manual_seed(n + k)
    lin = torch.nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.1)
        lin.bias.copy_(torch.randn(n, generator=g))
    m = qm.from_linear(lin, precision)
    x = torch.randn(2, t, k, generator=g)
    with torch.no_grad():
        y = m(x)
    ref = (x @ m.dequantized_weight().T + lin.bias).detach()
    assert y.dtype == torch.float32 and y.shape == (2, t, n)
    # bf16 activations and output: relative error about 2^-8.
    assert float((y - ref).abs().max()) <= 1e-2 * float(ref.abs().max())
    werr = float((m.dequantized_weight() - lin.weight.detach()).abs().max() / lin.weight.detach().abs().max())
    assert werr < {"bf16": 4e-3, "int8": 4.5e-3, "int4": 0.07}[precision]


def test_empty_from_spec_rebuilds_the_shape():
    lin = torch.nn.Linear(40, 50, bias=False)
    for p in ("bf16", "int8", "int4"):
        m = qm.from_linear(lin, p)
        e = qm.empty_from_spec(m.spec())
        assert {k: v.shape for k, v in e.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
        e.load_state_dict(m.state_dict())
        x = torch.randn(4, 40)
        assert torch.equal(e(x), m(x))


def test_kernels_that_do_not_exist_are_refused():
    assert "int8pack" in qm.kernel_for("int8", "cpu")
    with pytest.raises(DeviceUnavailableError, match="int4"):
        qm.kernel_for("int4", "cuda")


def test_precision_and_engine_names():
    assert parse_precisions("fp32, int8,int8,int4") == ["fp32", "int8", "int4"]
    with pytest.raises(UserInputError, match=r"--precision 'int3'"):
        check_precision("int3")
    with pytest.raises(UserInputError, match="at least one"):
        parse_precisions(" , ")
    assert check_engine("onnxruntime") == "onnxruntime"
    with pytest.raises(UserInputError, match="--engine"):
        check_engine("tensorrt")
