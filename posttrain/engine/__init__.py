"""THE training loop every method runs on, and what it needs: the Method contract, the optimizer step (also inside
backward), atomic checkpoints that resume exactly, and the run's log."""

from posttrain.engine.loop import RUN_OUTPUTS, Engine, EngineConfig, NonFiniteLossError, clear_run_outputs
from posttrain.engine.method import LossOutput, Method
from posttrain.engine.optimizer import preallocate_training_state

__all__ = ["RUN_OUTPUTS", "Engine", "EngineConfig", "LossOutput", "Method", "NonFiniteLossError", "clear_run_outputs",
           "preallocate_training_state"]
