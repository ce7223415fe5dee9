"""THE training loop every method runs on, and what it needs: the Method contract, the optimizer step (also inside
backward), atomic checkpoints that resume exactly, the run's folder and log."""

from posttrain.engine.config import EngineConfig
from posttrain.engine.loop import Engine, NonFiniteLossError
from posttrain.engine.method import LossOutput, Method
from posttrain.engine.optimizer import preallocate_training_state
from posttrain.engine.output_dir import RUN_OUTPUTS, clear_run_outputs

__all__ = ["RUN_OUTPUTS", "Engine", "EngineConfig", "LossOutput", "Method", "NonFiniteLossError", "clear_run_outputs",
           "preallocate_training_state"]
