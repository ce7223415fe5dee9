"""THE training loop every method runs on, and what it needs: the Method contract, the optimizer step (also inside
backward), atomic checkpoints that resume exactly, the run's folder and log."""

from posttrain.engine.config import EngineConfig
from posttrain.engine.loop import Engine, NonFiniteLossError
from posttrain.engine.method import LossOutput, Method
from posttrain.engine.optimizer import preallocate_training_state

__all__ = ["Engine", "EngineConfig", "LossOutput", "Method", "NonFiniteLossError", "preallocate_training_state"]
