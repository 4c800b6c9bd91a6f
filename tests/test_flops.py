"""The MAC counter of benchmarks/flops.py reproduces the original repository's FLOPs table.

Counts run on the meta device (shapes only), so the whole file takes a few seconds.
"""

import importlib.util

import pytest

from helpers import REPO_ROOT

_spec = importlib.util.spec_from_file_location("pacavit_flops", REPO_ROOT / "benchmarks" / "flops.py")
flops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(flops)

# the original's own counts at 224x224, classifier with 1000 classes, GMACs ("paper" convention)
PAPER_GMACS = {
    "pacavit-tiny": 3.224,
    "pacavit-small": 5.509,
    "pacavit-base": 9.547,
    "pacavit-small-mlp": 5.871,
    "pacavit-small-clusters-2-2-2-0": 4.647,
    "pacavit-small-clusters-49-49-49-0": 5.060,
    "pacavit-small-clusters-49-64-81-100": 5.281,
    "pacavit-small-clusters-100-81-64-49": 5.344,
    "pacavit-small-clusters-100-100-100-100": 5.575,
    "pacavit-small-blockwise": 6.110,
}
# teacher rows: true strict multiply-accumulate counts (the seed README undercounts their 'same'-padding convs)
STRICT_GMACS = {"pacavit-small-teacher": 5.48, "pacavit-base-teacher": 9.77}
# parameter counts of the README table (millions, 1000 classes)
PARAMS_M = {"pacavit-tiny": 12.2, "pacavit-small": 22.0, "pacavit-base": 46.9, "pacavit-small-mlp": 22.6}


@pytest.mark.parametrize("name", sorted(PAPER_GMACS))
def test_paper_table(name):
    row = flops.count(name, 224)
    assert row["paper_macs"] / 1e9 == pytest.approx(PAPER_GMACS[name], abs=0.01)
    # the convention is exact to the printed digit, not only within the tolerance
    assert round(row["paper_macs"] / 1e9, 3) == pytest.approx(PAPER_GMACS[name], abs=1e-9)
    # strict MACs are a little lower (no element-wise additions) but within 0.2 %
    assert 0 < row["paper_macs"] - row["strict_macs"] < 0.002 * row["paper_macs"]


@pytest.mark.parametrize("name", sorted(STRICT_GMACS))
def test_teacher_strict(name):
    row = flops.count(name, 224)
    assert row["strict_macs"] / 1e9 == pytest.approx(STRICT_GMACS[name], abs=0.01)


@pytest.mark.parametrize("name", sorted(PARAMS_M))
def test_params(name):
    assert flops.count(name, 224)["params"] / 1e6 == pytest.approx(PARAMS_M[name], abs=0.05)


def test_attention_matmuls_counted():
    """q.k^T, attn.v and the cluster pooling z^T x are in the count, whichever attention backend is configured."""
    import torch

    from pacavit import PaCaViTConfig, PaCaViTForImageClassification

    with torch.device("meta"):
        model = PaCaViTForImageClassification(PaCaViTConfig.from_preset("pacavit-tiny", num_labels=1000)).eval()
    assert model.config._attn_implementation == "sdpa"
    sdpa_macs = flops.count_strict_macs(model, torch.empty(1, 3, 224, 224, device="meta"))
    assert model.config._attn_implementation == "sdpa"  # restored
    assert sdpa_macs == flops.count("pacavit-tiny", 224)["strict_macs"]
    # stage 1 alone: pooling 100*3136*96 + q.k^T and attn.v 2*3136*100*96, per block
    assert sdpa_macs > 2 * 3 * 100 * 3136 * 96


def test_real_forward_matches_meta():
    """The meta-device count equals a count over a real CPU forward (small input to stay fast)."""
    meta = flops.count("pacavit-tiny", 64)
    real = flops.count("pacavit-tiny", 64, device="cpu")
    assert meta["strict_macs"] == real["strict_macs"] and meta["paper_macs"] == real["paper_macs"]


def test_any_input_size():
    rows = {size: flops.count("pacavit-tiny", size) for size in (224, 448, "224x448")}
    assert rows["224x448"]["image_size"] == [224, 448]
    ratio = rows[448]["strict_macs"] / rows[224]["strict_macs"]
    assert 3.9 < ratio < 4.3  # close to linear in the number of pixels


def test_inplace_and_sdpa_matmuls_counted():
    """Reformulations of the same maths (in-place accumulation, SDPA) must not change the count."""
    import torch
    import torch.nn.functional as F

    a, b, c = torch.randn(64, 32), torch.randn(32, 16), torch.zeros(64, 16)

    class Accumulate(torch.nn.Module):
        def forward(self, x):
            return c.clone().addmm_(x, b)

    class Plain(torch.nn.Module):
        def forward(self, x):
            return x @ b

    assert flops.count_strict_macs(Accumulate(), a) == flops.count_strict_macs(Plain(), a) == 64 * 32 * 16

    q, k, v = torch.randn(1, 2, 10, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)

    class Sdpa(torch.nn.Module):
        def forward(self, x):
            return F.scaled_dot_product_attention(x, k, v)

    assert flops.count_strict_macs(Sdpa(), q) == 2 * (2 * 10 * 5 * 8)
