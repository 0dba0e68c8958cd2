"""The LM sentiment classifier: equal to a plain full forward pass, independent of batching,
calibrated, and accurate enough on the course's reviews to be worth explaining."""
from __future__ import annotations

import pytest
import torch

from course_lib.lm import FEW_SHOT, INSTRUCTION, TEMPLATE, load_reviews, sentiment_score_fn


def test_reviews_are_labelled_and_balanced():
    texts, labels = load_reviews()
    assert len(texts) == len(labels) >= 40
    assert labels.dtype == torch.long and set(labels.tolist()) == {0, 1}
    assert abs(int(labels.sum()) - len(labels) / 2) <= 2
    assert len(set(texts)) == len(texts)
    assert not set(texts) & {t for t, _ in FEW_SHOT}, "few-shot examples must not be test reviews"


def reference_log_odds(model, tok, text: str) -> float:
    """log P(" positive") - log P(" negative") from one plain, unbatched, uncached forward pass."""
    shots = "".join(TEMPLATE.format(text=t) + " " + lab + "\n\n" for t, lab in FEW_SHOT)
    prompt = INSTRUCTION + shots + TEMPLATE.format(text=text)
    ids = [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
    pos, neg = tok(" positive", add_special_tokens=False)["input_ids"], tok(" negative", add_special_tokens=False)["input_ids"]
    return float(logp[pos[0]] - logp[neg[0]])


def test_matches_a_plain_forward_pass_and_calibrates(smollm2):
    model, tok = smollm2
    texts = ["A waste of time.", "Great battery life.", "ok"]
    raw = sentiment_score_fn(model, tok, calibrate=None, batch_size=3)(texts)
    ref = torch.tensor([reference_log_odds(model, tok, t) for t in texts])
    torch.testing.assert_close(raw.double(), ref.double(), atol=2e-3, rtol=1e-3)
    cal = sentiment_score_fn(model, tok, calibrate="N/A", batch_size=2)
    offset = reference_log_odds(model, tok, "N/A")
    assert cal.offset == pytest.approx(offset, abs=2e-3)
    torch.testing.assert_close(cal(texts).double(), ref.double() - offset, atol=3e-3, rtol=1e-3)
    assert cal(["N/A"]).abs().item() < 1e-3, "a calibrated content-free input scores 0"


def test_independent_of_batch_size_and_padding(smollm2):
    model, tok = smollm2
    texts = ["Bad.", "The best pizza in town, crisp and fresh, with friendly staff.", "Not good at all", "Fine"]
    a = sentiment_score_fn(model, tok, batch_size=1)(texts)
    b = sentiment_score_fn(model, tok, batch_size=4)(texts)
    torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-3)


def test_accuracy_on_the_course_reviews(smollm2):
    model, tok = smollm2
    texts, labels = load_reviews()
    scores = sentiment_score_fn(model, tok)(texts)
    acc = ((scores > 0).long() == labels).double().mean().item()
    assert acc >= 0.85, f"few-shot + calibrated accuracy {acc:.2f}"


def test_works_on_a_gpt2_layout(smollm2):
    """No Llama assumption (``model.model``): a GPT-2-shaped model (``model.transformer``) scores the
    same as its own plain forward pass. Random small weights; the smollm2 tokenizer supplies the ids."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tok = smollm2
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=2, n_head=2)).eval()
    texts = ["A waste of time.", "Great battery life, really."]
    raw = sentiment_score_fn(gpt2, tok, calibrate=None, batch_size=2)(texts)
    ref = torch.tensor([reference_log_odds(gpt2, tok, t) for t in texts])
    torch.testing.assert_close(raw.double(), ref.double(), atol=2e-4, rtol=1e-4)


def test_refuses_a_model_without_a_head(smollm2):
    model, tok = smollm2
    with pytest.raises((ValueError, AttributeError)):
        sentiment_score_fn(model.base_model, tok)
