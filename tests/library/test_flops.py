import pytest
from torch import nn

from modelpress.models import flops


def test_mlp_flops_by_hand():
    # 64 -> 32 -> 10: 2*64*32 + 2*32*10 = 4096 + 640
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    total, per_layer = flops.forward_flops(model, (1, 8, 8), per_layer=True)
    assert per_layer == {"1": 4096, "3": 640}
    assert total == 4736


def test_conv_flops_by_hand():
    # 3->8 channels, 3x3, padding 1, 10x10 output: 2 * 3*3*3 * 8 * 100 = 43,200
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert flops.forward_flops(conv, (3, 10, 10)) == 43_200
    # stride 2 halves each side: 5x5 output
    assert flops.forward_flops(nn.Conv2d(3, 8, 3, stride=2, padding=1), (3, 10, 10)) == 2 * 27 * 8 * 25
    # depthwise: groups = channels, each output sees one input channel
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert flops.forward_flops(dw, (8, 10, 10)) == 2 * 9 * 8 * 100


def test_training_compute_estimate():
    c = flops.training_compute(1000, examples=50, epochs=4, seconds=2.0)
    assert c["training_flops"] == 3 * 1000 * 50 * 4
    assert c["training_pflop_days"] == pytest.approx(600_000 / (1e15 * 86_400))
    assert c["achieved_flops_per_s"] == pytest.approx(300_000)
