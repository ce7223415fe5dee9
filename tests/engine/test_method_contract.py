"""The engine and a method meet only at the Method contract: every hook the engine calls is named, typed and
defaulted on ``Method``, and no trainer hands a method the engine."""

import ast
import inspect
from pathlib import Path

import posttrain
from posttrain.engine import Method
from posttrain.engine import loop

PACKAGE = Path(posttrain.__file__).parent


def method_attributes_used_by(source: str) -> set[str]:
    """Names read off ``self.method`` (or ``method``) in ``source``."""
    used = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            base = node.value
            if (isinstance(base, ast.Attribute) and base.attr == "method") or \
                    (isinstance(base, ast.Name) and base.id == "method"):
                used.add(node.attr)
    return used


def test_every_hook_the_engine_calls_is_on_the_contract():
    used = method_attributes_used_by(inspect.getsource(loop))
    assert used, "the engine calls no hook at all?"
    assert used <= set(dir(Method)), f"hooks the engine calls that Method does not declare: {used - set(dir(Method))}"


def test_the_engine_never_probes_a_method_and_no_method_holds_the_engine():
    engine_source = (PACKAGE / "engine" / "loop.py").read_text()
    assert "hasattr(self.method" not in engine_source and "getattr(self.method" not in engine_source
    for path in (PACKAGE / "trainers").glob("*.py"):
        assert ".engine = " not in path.read_text(), path.name
        assert "engine.state" not in path.read_text(), path.name


def test_a_method_that_fills_in_only_count_and_loss_has_every_other_hook():
    class Minimal(Method):
        def count(self, batch):
            return 1

        def loss(self, model, batch):
            raise AssertionError("not called here")

    method = Minimal()
    assert method.step_metrics() == {} and method.learning_rates(None) == {} and method.state_dict() == {}
    assert method.evaluate(None, 0) is None and method.outputs == ()
    method.prepare_step(None, [], 0)
    method.after_update(1)
    method.load_state_dict({}, 0)
