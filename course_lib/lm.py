"""A small language model as a sentiment classifier, and the course's labelled reviews.

``sentiment_score_fn(model, tokenizer)`` turns a causal LM (``smollm2-135m`` from the zoo)
into a function ``texts -> (B,)`` log-odds::

    score(text) = log P(" positive" | prompt(text)) - log P(" negative" | prompt(text))
                  - the same for a content-free text            (calibration)

A 135M-parameter model is a weak zero-shot classifier: with a bare prompt it leans to one
answer whatever the text says. Two standard fixes make it usable:

1. a *few-shot* prompt: a handful of labelled examples before the text (Brown et al. 2020);
2. *contextual calibration* (Zhao et al. 2021, "Calibrate Before Use"): subtract the score of
   a content-free input such as ``"N/A"``, so that a text with no sentiment scores about 0.

The prompt's shared prefix (instructions + examples) is run through the model once and its
key/value cache reused for every batch, so each text only costs its own few tokens. Texts
are batched with left padding, and only the two answer tokens of the last position are
projected (not the whole vocabulary).
"""
from __future__ import annotations

import copy
import csv
from importlib import resources
from typing import Callable, Sequence

import torch

from .device import model_device

__all__ = ["sentiment_score_fn", "load_reviews", "FEW_SHOT", "INSTRUCTION"]

INSTRUCTION = "Decide whether each review is positive or negative.\n\n"

# Written for the course; none of them is in data/reviews.csv.
FEW_SHOT: list[tuple[str, str]] = [
    ("The food was fantastic and the service was quick.", "positive"),
    ("Awful. I want my money back.", "negative"),
    ("A delightful little film with a big heart.", "positive"),
    ("The screen cracked and the seller ignored me.", "negative"),
]

TEMPLATE = "Review: {text}\nSentiment:"


def load_reviews() -> tuple[list[str], torch.Tensor]:
    """The course's labelled reviews: ``(texts, labels)`` with labels (N,) long, 1 = positive, 0 = negative."""
    texts, labels = [], []
    with resources.files("course_lib").joinpath("data/reviews.csv").open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            texts.append(row["text"])
            labels.append(1 if row["label"].strip() == "positive" else 0)
    return texts, torch.tensor(labels, dtype=torch.long)


def _single_token(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"the answer {word!r} must be one token for this tokenizer; it is {len(ids)} tokens {ids}")
    return ids[0]


def sentiment_score_fn(
    model,
    tokenizer,
    *,
    examples: Sequence[tuple[str, str]] | None = FEW_SHOT,
    instruction: str = INSTRUCTION,
    template: str = TEMPLATE,
    calibrate: str | None = "N/A",
    positive: str = " positive",
    negative: str = " negative",
    batch_size: int = 8,  # each text carries a copy of the few-shot prefix cache: small chunks keep the peak low
) -> Callable[[list[str]], torch.Tensor]:
    """A function ``score(texts) -> (B,)`` float tensor of sentiment log-odds, on the model's device.

    ``examples``: labelled ``(text, "positive"|"negative")`` pairs put before the text (None or
    ``[]`` for zero-shot). ``template`` must contain ``{text}`` and end where the answer word
    follows. ``calibrate``: a content-free text whose score is subtracted (None: no calibration).
    ``batch_size`` only chunks the texts; results do not depend on it.
    """
    if "{text}" not in template:
        raise ValueError("template must contain '{text}' where the review goes")
    device = model_device(model)
    pos_id, neg_id = _single_token(tokenizer, positive), _single_token(tokenizer, negative)
    head = model.get_output_embeddings().weight[[pos_id, neg_id]]  # (2, D)
    # The transformer without its LM head: ``model.model`` for Llama-style models (SmolLM2),
    # ``model.transformer`` for GPT-2; ``base_model`` names the right one for any HF model.
    body = model.base_model
    if body is model:
        raise ValueError("sentiment_score_fn needs a causal LM with an output head (e.g. AutoModelForCausalLM), "
                         f"got {type(model).__name__}")

    shots = "".join(template.format(text=t) + " " + lab + "\n\n" for t, lab in (examples or []))
    # The prompt is instruction + shots + template(text). Its trailing whitespace goes with the
    # text's part: BPE merges "\n\n" at the end of a string but not before a word, so cutting
    # there tokenizes exactly like the whole prompt in one piece.
    prefix_text = (instruction + shots).rstrip()
    sep = (instruction + shots)[len(prefix_text) :]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prefix_ids = bos + tokenizer(prefix_text, add_special_tokens=False)["input_ids"]
    if not prefix_ids:
        raise ValueError("the prompt prefix is empty; give an instruction or examples")
    prefix = torch.tensor([prefix_ids], device=device)  # (1, P)
    P = prefix.shape[1]
    with torch.inference_mode():
        prefix_cache = model(input_ids=prefix, use_cache=True).past_key_values
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def raw(texts: list[str]) -> torch.Tensor:
        outs = []
        for s in range(0, len(texts), batch_size):
            chunk = [sep + template.format(text=t) for t in texts[s : s + batch_size]]
            ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in chunk]
            B, L = len(ids), max(len(i) for i in ids)
            input_ids = torch.full((B, L), pad_id, dtype=torch.long)
            suffix_mask = torch.zeros(B, L, dtype=torch.long)
            for b, i in enumerate(ids):  # left padding: every text ends at the last position
                input_ids[b, L - len(i) :] = torch.tensor(i)
                suffix_mask[b, L - len(i) :] = 1
            input_ids, suffix_mask = input_ids.to(device), suffix_mask.to(device)
            mask = torch.cat([torch.ones(B, P, dtype=torch.long, device=device), suffix_mask], 1)  # (B, P+L)
            position_ids = P + suffix_mask.cumsum(1) - 1  # pads get junk positions; they are masked
            position_ids = position_ids.clamp_min(P)
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(B)
            with torch.inference_mode():
                out = body(
                    input_ids=input_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache, use_cache=True
                )
                h = out.last_hidden_state[:, -1]  # (B, D)
                logits2 = h @ head.T  # (B, 2): only the answer tokens' logits
                # log P(pos) - log P(neg) = logit(pos) - logit(neg): the softmax normaliser cancels
                outs.append((logits2[:, 0] - logits2[:, 1]).float())
        return torch.cat(outs) if outs else torch.zeros(0, device=device)

    offset = raw([calibrate])[0] if calibrate is not None else torch.zeros((), device=device)

    def score(texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return raw(list(texts)) - offset

    score.offset = float(offset)  # the content-free log-odds that calibration removed
    return score
