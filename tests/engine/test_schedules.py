"""LR schedules: each schedule's factor at chosen steps against values worked out by hand, and the three original
schedules bit-identical to the formula they had before the table (constant, linear, cosine)."""

import math
import typing

import pytest

from posttrain.engine import EngineConfig
from posttrain.engine.optimizer import lr_factor
from posttrain.engine.schedules import LR_SCHEDULES, LRScheduleParams, schedule_factor


def old_lr_factor(step, total_steps, warmup_steps, schedule):
    """The engine's lr_factor before the schedule table (commit d301e39), copied here as the reference."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("total,warmup", [(10, 0), (10, 3), (1, 0), (7, 7), (100, 10)])
def test_original_schedules_bit_identical(schedule, total, warmup):
    for step in range(total + 2):
        assert lr_factor(step, total, warmup, schedule) == old_lr_factor(step, total, warmup, schedule)


def test_warmup_is_shared_by_every_schedule():
    for name in LR_SCHEDULES:
        assert [schedule_factor(s, 20, 3, name) for s in range(3)] == [0.25, 0.5, 0.75]


def test_step_decay():
    params = LRScheduleParams(step_size=4, gamma=0.5)
    # warmup 2: steps 2..5 -> 1, 6..9 -> 0.5, 10..13 -> 0.25
    values = {s: schedule_factor(s, 20, 2, "step", params) for s in (2, 5, 6, 9, 10, 13, 14)}
    assert values == {2: 1.0, 5: 1.0, 6: 0.5, 9: 0.5, 10: 0.25, 13: 0.25, 14: 0.125}
    # default step size: a tenth of the 100 post-warmup steps, default gamma 0.1
    assert schedule_factor(9, 100, 0, "step") == 1.0
    assert schedule_factor(10, 100, 0, "step") == pytest.approx(0.1)
    assert schedule_factor(25, 100, 0, "step") == pytest.approx(0.01)


def test_cosine_with_restarts():
    params = LRScheduleParams(num_cycles=2)
    # 20 steps, no warmup: two 10-step cosines
    assert schedule_factor(0, 20, 0, "cosine_restarts", params) == 1.0
    assert schedule_factor(5, 20, 0, "cosine_restarts", params) == pytest.approx(0.5)
    assert schedule_factor(9, 20, 0, "cosine_restarts", params) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    assert schedule_factor(10, 20, 0, "cosine_restarts", params) == 1.0  # the restart
    assert schedule_factor(15, 20, 0, "cosine_restarts", params) == pytest.approx(0.5)
    assert schedule_factor(20, 20, 0, "cosine_restarts", params) == 0.0
    # one cycle is the plain cosine before its end
    for step in range(10):
        assert schedule_factor(step, 10, 0, "cosine_restarts") == pytest.approx(schedule_factor(step, 10, 0, "cosine"))


@pytest.mark.parametrize("shape,halfway", [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))])
def test_warmup_stable_decay(shape, halfway):
    params = LRScheduleParams(decay_fraction=0.2, decay_shape=shape)
    # 2 warmup + 20 more steps: the last 4 (steps 18..21) decay, q = (step - 18) / 4
    assert schedule_factor(2, 22, 2, "wsd", params) == 1.0
    assert schedule_factor(17, 22, 2, "wsd", params) == 1.0
    assert schedule_factor(18, 22, 2, "wsd", params) == 1.0  # q = 0
    assert schedule_factor(20, 22, 2, "wsd", params) == pytest.approx(halfway)  # q = 1/2
    assert schedule_factor(22, 22, 2, "wsd", params) == pytest.approx(0.0)  # q = 1


def test_inverse_sqrt():
    # warmup 4 -> tau 4: sqrt(4 / (s + 4)) with s the steps after warmup
    assert schedule_factor(4, 100, 4, "inverse_sqrt") == 1.0
    assert schedule_factor(16, 100, 4, "inverse_sqrt") == pytest.approx(math.sqrt(4 / 16))  # 0.5
    assert schedule_factor(40, 100, 4, "inverse_sqrt") == pytest.approx(math.sqrt(4 / 40))
    params = LRScheduleParams(timescale=9)
    assert schedule_factor(27, 100, 0, "inverse_sqrt", params) == pytest.approx(0.5)  # sqrt(9 / 36)


def test_config_reaches_the_schedule():
    config = EngineConfig(lr_schedule="step", lr_step_size=3, lr_gamma=0.5)
    assert lr_factor(3, 10, 0, config.lr_schedule, config.lr_schedule_params()) == 0.5
    assert set(typing.get_args(typing.get_type_hints(EngineConfig)["lr_schedule"])) == set(LR_SCHEDULES)
