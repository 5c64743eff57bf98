"""Weight EMA: known answers on a tiny model, the decay-every adjustment, the warm-up, and a
state that saves and restores exactly."""

from __future__ import annotations

import io

import pytest
import torch

from chexvision_lib.models.registry import build_model
from chexvision_lib.training.ema import WeightEMA


def tiny_model() -> torch.nn.Module:
    """Linear(2 -> 1) then BatchNorm1d: two weights, a bias and batch-norm buffers."""
    return torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))


def set_weights(model: torch.nn.Module, weight: list[float], running_mean: float) -> None:
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([weight]))
        model[1].running_mean.fill_(running_mean)


def averaged_weight(ema: WeightEMA) -> list[float]:
    return ema.module[0].weight.flatten().tolist()


def test_a_two_step_ema_matches_the_hand_computed_average():
    model = tiny_model()
    ema = WeightEMA(model, decay=0.9)
    set_weights(model, [1.0, 2.0], running_mean=10.0)
    ema.update()  # the first update copies the weights: nothing to average yet
    assert averaged_weight(ema) == pytest.approx([1.0, 2.0])
    set_weights(model, [3.0, -2.0], running_mean=20.0)
    ema.update()  # 0.9 * [1, 2] + 0.1 * [3, -2]
    assert averaged_weight(ema) == pytest.approx([1.2, 1.6])
    set_weights(model, [0.0, 4.0], running_mean=0.0)
    ema.update()  # 0.9 * [1.2, 1.6] + 0.1 * [0, 4]
    assert averaged_weight(ema) == pytest.approx([1.08, 1.84])
    # use_buffers: the batch-norm statistics are averaged alongside: 0.9 * (0.9*10 + 0.1*20) + 0
    assert ema.module[1].running_mean.item() == pytest.approx(9.9)
    assert model[0].weight.flatten().tolist() == [0.0, 4.0], "the source weights are untouched"


def test_every_n_steps_uses_decay_to_the_n():
    model = tiny_model()
    ema = WeightEMA(model, decay=0.9, every=2)
    initial = averaged_weight(ema)
    set_weights(model, [1.0, 1.0], 0.0)
    ema.update()  # step 1: not a multiple of 2, nothing happens
    assert averaged_weight(ema) == pytest.approx(initial)
    set_weights(model, [2.0, 4.0], 0.0)
    ema.update()  # step 2: the first update copies
    assert averaged_weight(ema) == pytest.approx([2.0, 4.0])
    set_weights(model, [5.0, 5.0], 0.0)
    ema.update()  # step 3: nothing
    set_weights(model, [10.0, 0.0], 0.0)
    ema.update()  # step 4: 0.81 * [2, 4] + 0.19 * [10, 0]
    assert averaged_weight(ema) == pytest.approx([0.81 * 2 + 0.19 * 10, 0.81 * 4])


def test_through_the_warm_up_the_average_follows_the_weights():
    model = tiny_model()
    ema = WeightEMA(model, decay=0.9, follow_steps=2)
    for step, weight in enumerate(([1.0, 1.0], [3.0, 3.0]), start=1):
        set_weights(model, weight, 0.0)
        ema.update()
        assert averaged_weight(ema) == pytest.approx(weight), step
    set_weights(model, [13.0, 13.0], 0.0)
    ema.update()  # the first step after the warm-up averages: 0.9 * 3 + 0.1 * 13
    assert averaged_weight(ema) == pytest.approx([4.0, 4.0])


def _train_steps(model: torch.nn.Module, ema: WeightEMA, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(steps):
        x = torch.randn(4, 1, 32, 32, generator=generator)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update()


def test_decay_zero_is_the_model_itself():
    torch.manual_seed(0)
    model = build_model("seresnet_small", image_size=32)
    ema = WeightEMA(model, decay=0.0)
    _train_steps(model, ema, steps=3, seed=1)
    averaged = ema.module.state_dict()
    weights = model.state_dict()
    assert averaged.keys() == weights.keys()
    assert any("running_var" in k for k in weights), "batch-norm statistics are compared too"
    for key, value in weights.items():
        assert torch.equal(averaged[key], value), key


def test_a_saved_average_restores_exactly_and_continues_the_same():
    torch.manual_seed(0)
    model = build_model("seresnet_small", image_size=32)
    ema = WeightEMA(model, decay=0.5, every=2)
    _train_steps(model, ema, steps=3, seed=1)
    buffer = io.BytesIO()
    torch.save({"ema": ema.state_dict(), "model": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as a checkpoint is read

    torch.manual_seed(123)  # other initial weights: everything must come from the file
    restored_model = build_model("seresnet_small", image_size=32)
    restored_model.load_state_dict(saved["model"])
    restored = WeightEMA(restored_model, decay=0.5, every=2)
    restored.load_state_dict(saved["ema"])
    assert restored.steps == 3
    _train_steps(model, ema, steps=3, seed=2)
    _train_steps(restored_model, restored, steps=3, seed=2)
    a, b = ema.module.state_dict(), restored.module.state_dict()
    assert any(not torch.equal(a[k], model.state_dict()[k]) for k in a), "an average, not a copy"
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_decay_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="ema_decay must be in"):
        WeightEMA(tiny_model(), decay=1.0)
    with pytest.raises(ValueError, match="ema_every must be at least 1"):
        WeightEMA(tiny_model(), decay=0.5, every=0)
