"""Reward models: a causal LM's decoder with a scalar ``score`` head, read at each sequence's last real token.

The model is a plain ``*ForSequenceClassification`` with ``num_labels=1`` (so ``AutoModelForSequenceClassification``
loads a saved one), built from any model spec: its decoder weights are the causal LM's, its head is new. We run the
forward ourselves (``posttrain.models.forward.hidden_states``, then the head at one position per row) so the score
position comes from the attention mask, exactly, and the head multiplies B vectors rather than every position.

transformers' own forward scores the rightmost token that is not ``pad_token_id``. That agrees with ours only if no
sequence *ends* with the pad token, and many tokenizers pad with EOS, which a completion without a chat template ends
with. So the reward model pads with a token of its own (``distinct_pad_token``), written into its config and saved
tokenizer, and both forwards score the same token (tested).
"""

from __future__ import annotations

import copy
import json
import logging
import math

import torch

from posttrain.errors import ModelLoadError
from posttrain.models.forward import as_root_forward, causal_lm, hidden_states
from posttrain.models.loading import (
    build_tiny_model,
    load_model,
    load_tokenizer,
    model_folder,
    resolve_device,
    resolve_dtype,
)
from posttrain.models.lora import LoraSettings

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------- building
def load_reward_model(spec: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
                      seed: int = 0):
    """``(model, tokenizer)`` for a reward model from any spec: a built-in name (``tiny``: the decoder of
    ``load_model("tiny")``), a causal-LM folder or hub id (decoder loaded, score head new), a saved reward model
    (loaded as it is), or a LoRA adapter folder (a reward model's: adapter + head on its base; a causal LM's: merged,
    then a new head).
    ``seed`` seeds a new head only."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    path = model_folder(spec)
    if spec == "tiny":
        tokenizer = distinct_pad_token(load_tokenizer("tiny"))
        model = from_causal_lm(build_tiny_model(), tokenizer, seed)
    elif (path / "adapter_config.json").is_file():
        adapter = json.loads((path / "adapter_config.json").read_text())
        if adapter.get("task_type") == "SEQ_CLS":
            from peft import PeftModel

            base, tokenizer = load_reward_model(adapter["base_model_name_or_path"], dtype, device, trust_remote_code,
                                                seed)
            model = PeftModel.from_pretrained(base, str(path))
            if (path / "tokenizer_config.json").is_file():
                tokenizer = load_tokenizer(str(path))
        else:  # a causal LM's adapter (e.g. an SFT run): fold it in, then put a head on the result
            lm, tokenizer = load_model(str(path), "float32", "cpu", trust_remote_code=trust_remote_code)
            model = from_causal_lm(lm.merge_and_unload(), distinct_pad_token(tokenizer), seed)
    else:
        from transformers import AutoModelForSequenceClassification

        tokenizer = distinct_pad_token(load_tokenizer(str(path) if path.is_dir() else spec, trust_remote_code))
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                str(path) if path.is_dir() else spec, num_labels=1, pad_token_id=tokenizer.pad_token_id,
                dtype=torch_dtype, trust_remote_code=trust_remote_code, output_loading_info=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"reward model {spec!r}: not loadable as a sequence-scoring model ({exc})") from None
        if any(key.startswith("score.") for key in info["missing_keys"]):  # a causal LM: its head is new
            init_score_head(model.score, seed)
    return model.to(dtype=torch_dtype, device=torch_device), tokenizer


def from_causal_lm(lm, tokenizer, seed: int = 0, num_labels: int = 1):
    """A ``*ForSequenceClassification`` (``num_labels`` outputs) with ``lm``'s decoder weights and a new score head."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(lm.config)
    config.num_labels, config.pad_token_id, config.architectures = num_labels, tokenizer.pad_token_id, None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config)
    model.base_model.load_state_dict(lm.base_model.state_dict())
    init_score_head(model.score, seed)
    return model.to(next(lm.parameters()).dtype)


def init_score_head(head: torch.nn.Linear, seed: int = 0) -> None:
    """A reward model's ``score`` head with weights ~ N(0, 1 / (H + 1)): initial scores of order the hidden states'
    RMS, not 0 (a zero head has no gradient into the decoder at the first step) and not large (TRL's choice, after
    Stiennon et al. 2020)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        torch.nn.init.normal_(head.weight, std=1.0 / math.sqrt(head.in_features + 1))
        if head.bias is not None:
            head.bias.zero_()


def distinct_pad_token(tokenizer):
    """Pad with a token that no sequence ends with (not EOS): the unknown token, else another special token."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer
    avoid = {tokenizer.eos_token_id, tokenizer.bos_token_id}
    candidates = [tokenizer.unk_token] if tokenizer.unk_token_id not in avoid | {None} else []
    candidates += [t for t, i in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids) if i not in avoid]
    if candidates:
        tokenizer.pad_token = candidates[0]
    else:
        log.warning("the tokenizer pads with EOS and has no other special token: transformers' own forward scores "
                    "the token before a final EOS; posttrain scores the last real token")
    return tokenizer


def apply_reward_lora(model, settings: LoraSettings, gradient_checkpointing: bool = False):
    """LoRA adapters on the decoder (Hu et al. 2021); the score head is fully trained (``modules_to_save``), since it
    starts from random weights that no low-rank update of the decoder can replace."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules, task_type="SEQ_CLS", modules_to_save=["score"])
    return get_peft_model(model, config)


# ------------------------------------------------------------------------------------------------------ scoring
def sequence_scores(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """r(x, y): the score head at each row's last position with ``attention_mask`` = 1, ``(B,)`` float32.
    Right or left padding; padded rows score what they score alone (causal attention: later pads change nothing).
    Under FSDP it runs as a forward of the sharded root, which holds the embedding and the score head."""
    return as_root_forward(model, _sequence_scores, model, batch)


def _sequence_scores(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    hidden = hidden_states(model, batch)  # (B, T, H)
    mask = batch["attention_mask"]
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions * mask).argmax(-1)  # (B,) the rightmost real token
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
    return causal_lm(model).score(pooled).squeeze(-1).float()
