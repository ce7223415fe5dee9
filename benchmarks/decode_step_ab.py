"""One decode step of this tree's ``LlamaDecoder`` against an earlier commit's, in one process, interleaved.

A change to the decoder's small ops saves a few ms of a 40-60 ms step, less than this VM's speed drifts between runs
(up to 1.7x), so the two versions run side by side: the earlier commit's ``posttrain/rollout/decoders.py`` and
``packed.py`` are read with ``git show`` and imported as a separate package. Both decode the same 16 rows (53-57
prompt tokens each) from the embedded model, fp32 and bf16; the script checks that their logits are identical and
prints the median step time of each over ``--repeats`` rounds of 20 steps. Then, as ``sample`` calls do, it builds a
decoder of each version three times in a row, dropping the last one first, and prints the median time and page faults
of building one (packing the weights).

    python benchmarks/decode_step_ab.py --against 9893e75 [--repeats 5]      (needs: scripts/setup.sh embedded)
"""

from __future__ import annotations

import argparse
import gc
import importlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def import_old_decoders(rev: str):
    """``decoders`` as it was at ``rev``, importing that commit's ``packed`` too."""
    folder = Path(tempfile.mkdtemp()) / "old_rollout"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name in ("packed", "decoders"):
        source = subprocess.run(["git", "show", f"{rev}:posttrain/rollout/{name}.py"], check=True,
                                capture_output=True, text=True).stdout
        source = source.replace("from posttrain.rollout.packed import", "from .packed import")
        (folder / f"{name}.py").write_text(source)
    sys.path.insert(0, str(folder.parent))
    return importlib.import_module("old_rollout.decoders")


def median_step(decoder, tokens, one, steps: int = 20) -> float:
    def step():
        decoder.step(tokens)
        decoder.rewind(one)

    step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="the earlier commit")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from posttrain.models import load_model
    from posttrain.rollout.decoders import LlamaDecoder

    old = import_old_decoders(args.against)
    model, _ = load_model("smollm2-135m-instruct", "float32", "cpu")
    model.eval()
    prompts = [list(range(1 + i, 54 + i % 5)) for i in range(16)]
    one = torch.ones(16, dtype=torch.long)
    with torch.no_grad():
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            decoders = {args.against: old.LlamaDecoder(model, 16, 200, dtype),
                        "this tree": LlamaDecoder(model, 16, 200, dtype)}
            logits = {label: decoder.prefill(prompts, 1) for label, decoder in decoders.items()}
            tokens = logits["this tree"].argmax(-1)[:, None]
            steps = {label: decoder.step(tokens) for label, decoder in decoders.items()}
            same = all(torch.equal(*values.values()) for values in (logits, steps))
            for decoder in decoders.values():
                decoder.rewind(one)
            times = {label: [] for label in decoders}
            for _ in range(args.repeats):
                for label, decoder in decoders.items():
                    times[label].append(median_step(decoder, tokens, one))
            report = ", ".join(f"{label} {statistics.median(t) * 1e3:.1f} ms" for label, t in times.items())
            print(f"16-row decode step, {name}: {report}; logits identical: {same}", flush=True)
            del decoders
            for label, module in ((args.against, old), ("this tree", sys.modules["posttrain.rollout.decoders"])):
                seconds, faults = build_cost(lambda module=module: module.LlamaDecoder(model, 16, 200, dtype))
                print(f"  building a decoder, {name}, {label}: {seconds:.2f} s, {faults} page faults", flush=True)


def build_cost(make) -> tuple[float, int]:
    """Median seconds and minor page faults of ``make()`` over three builds, each after the last one is dropped."""
    gc.collect()  # the same start for each version: nothing left of the other's decoders
    seconds, faults = [], []
    for _ in range(3):
        before, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        decoder = make()
        seconds.append(time.perf_counter() - started)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del decoder
    return statistics.median(seconds), int(statistics.median(faults))


if __name__ == "__main__":
    main()
