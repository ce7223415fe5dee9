"""The supervised stage of Constitutional AI (SL-CAI; Bai et al. 2022, https://arxiv.org/abs/2212.08073, sec. 3):
the model answers, critiques its answer against a principle of the constitution, and revises it, ``rounds`` times;
SFT on (prompt, final revision) is the stage's training data.

    posttrain constitution configs/constitution_sl.yaml   (or a pipeline stage `constitution: FILE`)

Per prompt and round r: a principle is drawn (``random.Random(f"{seed}/{r}/{prompt index}")``, so a rerun draws the
same ones), the conversation so far (request, response) gets the principle's critique request and the model's
critique, then its revision request, and ``revisions`` = m revisions are sampled (``critique: false``: the revision
request follows the response directly, Bai et al.'s "direct revisions", to measure what the critiques add). With
m > 1 the revision that passes the most checkers is kept, the first among ties (``selection: principle``: the drawn
principle's checker alone; ``constitution``: every principle's): selection by the constitution's checkers, for when
a small model's critiques are too weak to help. The kept revision is the next round's response. All generation goes
through the rollout engine (``posttrain.rollout.sampling.sample``), one batched call per step for all prompts.

Output folder: ``chains.jsonl`` (per prompt: ``prompt``, ``response`` (the first answer), ``steps`` = [{round,
principle, critique (None without critiques), revisions, selected, complies (the drawn principle's verdict on the
kept revision)}, ...] in order, ``final``), ``sft.jsonl`` (``prompt``, ``completion`` = the final revision: what
``method: sft`` loads unchanged; then, with ``helpfulness_task``, the model's own unrevised answers to that task's
training prompts, as Bai et al. mix helpfulness samples into SL-CAI's data), ``config.json`` and, last,
``evaluation.json`` (counts, and the checkers' compliance of the first responses, of the first revisions and of the
final ones: ``compliance``). Every file is written atomically.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from posttrain.config import config_to_dict, option
from posttrain.errors import ConfigError
from posttrain.io import atomic_write_text
from posttrain.models import load_model
from posttrain.models.specs import EMBEDDED_DEFAULT
from posttrain.rollout.constitution import Constitution, Principle, checks_passed, load_constitution
from posttrain.rollout.label import load_prompts_for_labelling
from posttrain.rollout.sampling import SamplingParams, sample
from posttrain.tasks import get_task

log = logging.getLogger(__name__)


@dataclass
class ConstitutionConfig:
    method: Literal["constitution"] = option("constitution", help="constitution: the critique -> revise loop of "
                                                                  "SL-CAI; writes SFT rows (trains nothing)")
    constitution: str = option("configs/constitutions/safety.yaml", help="the constitution file (YAML/JSON)")
    model: str = option(EMBEDDED_DEFAULT, help="the model that answers, critiques and revises: a built-in name, a "
                                               "model folder or a hub id")
    output_dir: str = option("runs/constitution", help="folder of chains.jsonl, sft.jsonl, config.json, "
                                                       "evaluation.json")
    overwrite_output_dir: bool = option(False, help="replace the files of an earlier run in output_dir")
    seed: int = option(0, help="seeds the principles drawn, the task's prompts and the sampling")
    dtype: str = option("auto", help="the model's weight dtype (auto, float32, bfloat16, float16)")
    device: str = option("auto", help="torch device; auto: cuda when available, else cpu")
    prompts: str | None = option("data/safety/train.jsonl", help="a .jsonl/.json/.csv file with a prompt column; "
                                                                 "None: the task's problems")
    task: str | None = option(None, help="where prompts come from when prompts is None (posttrain.tasks)")
    task_options: dict[str, Any] = option(default_factory=dict, help="keyword options of the task's generator")
    split: Literal["train", "eval"] = option("train", help="the task split the prompts are drawn from")
    num_prompts: int = option(200, min=1, help="the first N rows of prompts (or N task problems)")
    rounds: int = option(1, min=1, help="n: critique -> revision rounds per prompt")
    revisions: int = option(1, min=1, help="m: revisions sampled per round; >1: the one that passes the most "
                                           "checkers (selection) is kept, the first among ties")
    selection: Literal["principle", "constitution"] = option(
        "principle", help="the checkers that select among the m revisions: the drawn principle's, or every "
                          "principle's (a revision must not fix one principle by breaking another)")
    critique: bool = option(True, help="false: revise without a critique first (direct revisions)")
    helpfulness_task: str | None = option(None, help="a task (posttrain.tasks) whose training prompts the model "
                                                     "answers once, unrevised, into sft.jsonl beside the revisions: "
                                                     "Bai et al.'s helpfulness samples, so SFT keeps what it could do")
    num_helpfulness_prompts: int = option(0, min=0, help="how many of helpfulness_task's prompts; 0: none")
    max_new_tokens: int = option(96, min=1, help="longest response, critique or revision, in tokens")
    temperature: float = option(0.7, min=0.01, help="sampling temperature of every step")
    top_p: float = option(1.0, min=0, max=1, help="nucleus sampling; 1: off")
    batch_size: int = option(64, min=1, help="sequences sampled together")


def conversation_ids(tokenizer, turns: list[str]) -> list[int]:
    """Token ids of alternating user / assistant turns (user first, odd length) ending with the assistant's
    generation prompt; plain text joined by blank lines when the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer("\n\n".join(turns) + "\n\n", add_special_tokens=True)["input_ids"]
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def select_revision(principles: Sequence[Principle], prompt: str, revisions: list[str]) -> int:
    """The index of the revision the most of the principles' checkers accept, the first among ties (0 when none
    accepts any, or no principle has a checker)."""
    passed = [checks_passed(principles, prompt, text) for text in revisions]
    return passed.index(max(passed))


def draw_principle(constitution: Constitution, seed: int, round_: int, index: int) -> Principle:
    return random.Random(f"{seed}/{round_}/{index}").choice(constitution.principles)


def critique_revise(config: ConstitutionConfig, model=None, tokenizer=None) -> dict:
    """Answer, critique, revise (module docstring); returns the evaluation dict, also written to evaluation.json.
    ``model``/``tokenizer``: an already loaded model (tests); else ``config.model`` is loaded."""
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    if (output_dir / "sft.jsonl").exists() and not config.overwrite_output_dir:
        raise ConfigError(f"{output_dir} already holds sft.jsonl: set overwrite_output_dir: true to replace it, or "
                          "another output_dir")
    constitution = load_constitution(config.constitution)
    if config.prompts is None and config.task is None:
        raise ConfigError("constitution: set prompts (a file with a prompt column) or task")
    if config.num_helpfulness_prompts and config.helpfulness_task is None:
        raise ConfigError("constitution: num_helpfulness_prompts needs helpfulness_task (e.g. arithmetic)")
    helpful_prompts = [p.prompt for p in get_task(config.helpfulness_task).problems(
        "train", config.num_helpfulness_prompts, config.seed)] if config.num_helpfulness_prompts else []
    prompts = [p.prompt for p in load_prompts_for_labelling(config)]
    if model is None:
        model, tokenizer = load_model(config.model, config.dtype, config.device)
    model.eval().requires_grad_(False)
    calls = 0

    def generate(turns: list[list[str]], group_size: int = 1) -> list[str]:
        nonlocal calls
        calls += 1  # a fresh seed per call, so two steps never draw the same noise
        params = SamplingParams(config.max_new_tokens, config.temperature, config.top_p,
                                seed=config.seed * 1000 + calls)
        ids = [conversation_ids(tokenizer, t) for t in turns]
        return sample(model, tokenizer, ids, params, group_size=group_size, batch_size=config.batch_size).texts

    responses = generate([[p] for p in prompts])
    chains = [{"prompt": p, "response": r, "steps": []} for p, r in zip(prompts, responses)]
    current = list(responses)
    for round_ in range(config.rounds):
        principles = [draw_principle(constitution, config.seed, round_, i) for i in range(len(prompts))]
        if config.critique:
            critiques = generate([[p, r, pr.critique] for p, r, pr in zip(prompts, current, principles)])
            turns = [[p, r, pr.critique, c, pr.revision] for p, r, pr, c in zip(prompts, current, principles,
                                                                                 critiques)]
        else:
            critiques = [None] * len(prompts)
            turns = [[p, r, pr.revision] for p, r, pr in zip(prompts, current, principles)]
        m = config.revisions
        texts = generate(turns, group_size=m)
        for i, (prompt, principle) in enumerate(zip(prompts, principles)):
            revisions = texts[i * m : (i + 1) * m]
            chosen = select_revision([principle] if config.selection == "principle" else constitution.checked,
                                     prompt, revisions)
            chains[i]["steps"].append({"round": round_, "principle": principle.name, "critique": critiques[i],
                                       "revisions": revisions, "selected": chosen,
                                       "complies": principle.complies(prompt, revisions[chosen])})
            current[i] = revisions[chosen]
    for chain, final in zip(chains, current):
        chain["final"] = final
    sft_rows = [{"prompt": c["prompt"], "completion": c["final"]} for c in chains]
    if helpful_prompts:  # after the chains, so they are drawn with or without helpfulness samples alike
        answers = generate([[p] for p in helpful_prompts])
        sft_rows += [{"prompt": p, "completion": a} for p, a in zip(helpful_prompts, answers)]

    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "config.json", json.dumps(config_to_dict(config), indent=2) + "\n")
    atomic_write_text(output_dir / "chains.jsonl", "".join(json.dumps(c) + "\n" for c in chains))
    atomic_write_text(output_dir / "sft.jsonl", "".join(json.dumps(row) + "\n" for row in sft_rows))
    evaluation = {"method": "constitution", "data": str(output_dir / "sft.jsonl"), "final_model": config.model,
                  "constitution": constitution.name, "n_prompts": len(prompts), "rounds": config.rounds,
                  "revisions": config.revisions, "n_helpfulness_rows": len(helpful_prompts),
                  **compliance(constitution, chains),
                  "time_s": time.perf_counter() - started}
    atomic_write_text(output_dir / "evaluation.json", json.dumps(evaluation, indent=2) + "\n")
    log.warning("constitution: %d chains, SFT rows in %s", len(chains), output_dir / "sft.jsonl")
    return evaluation


def compliance(constitution: Constitution, chains: list[dict]) -> dict:
    """Per principle with a checker: the share of first responses, of the last round's first revisions (critique
    and revision without selection) and of final revisions (after selection) it accepts, over all prompts: a
    principle's checker measures every answer, not only the chains that drew it."""
    answers = {"response": [c["response"] for c in chains],
               "first_revision": [c["steps"][-1]["revisions"][0] if c["steps"] else c["response"] for c in chains],
               "final": [c["final"] for c in chains]}
    figures = {}
    for principle in constitution.checked:
        for key, texts in answers.items():
            ok = [principle.complies(c["prompt"], text) for c, text in zip(chains, texts)]
            figures[f"compliance/{principle.name}/{key}"] = sum(ok) / len(ok) if ok else None
    return figures
