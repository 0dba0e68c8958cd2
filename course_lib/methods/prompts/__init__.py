"""Prompt inversion: which prompts make a language model say a given target?

A causal language model maps a prompt (token ids ``x_1..x_n``) to a distribution over the
next token. Feature visualisation for images climbs the gradient of an output with respect
to the pixels; tokens are discrete, so there is no gradient to climb. Three ways round that:

* **Soft prompt** (Rumbelow & Watkins 2023, "SolidGoldMagikarp"): optimise ``n`` free input
  embeddings ``e_1..e_n`` (passed as ``inputs_embeds``) to minimise
  ``-log p(target | e) + lam * mean_i ||e_i - E[nn(e_i)]||``, where ``nn(e_i)`` is the
  vocabulary token whose embedding is closest in *cosine* similarity. The regulariser pulls
  every soft embedding onto a real token; the result is read back with :func:`project_to_tokens`.
* **PEZ** (Wen et al. 2023, "Hard Prompts Made Easy"): keep a continuous prompt, but run the
  model on its *projection* and apply that gradient to the continuous prompt (a
  straight-through estimator), so the loss is always the loss of a real token prompt.
* **GCG** (Zou et al. 2023, "Universal and Transferable Adversarial Attacks"): stay on
  tokens; the gradient with respect to the one-hot token matrix proposes top-k swaps per
  position; a random batch of single swaps is evaluated exactly and the best one is kept.

Success is always judged on the *projected* (real-token) prompt: ``p(target | ids)``.
Every method runs ``n_restarts`` independent restarts as one batch, tracks the best
projected prompt so far per restart, and draws all randomness from ``seed``.
"""
from .inversion import PromptInversion, gcg, pez, sample_candidates, soft_prompt, token_counts
from .scoring import greedy_continuation, next_token_distribution, p_target, roundtrip_ok, score_prompts, target_loss
from .vocab import (
    NearestTokens,
    allowed_tokens,
    blocked_words,
    encode_target,
    nearest_token_distance,
    project_to_tokens,
    token_embeddings,
)

__all__ = [
    "PromptInversion",
    "encode_target",
    "allowed_tokens",
    "token_embeddings",
    "project_to_tokens",
    "nearest_token_distance",
    "NearestTokens",
    "target_loss",
    "score_prompts",
    "p_target",
    "next_token_distribution",
    "greedy_continuation",
    "roundtrip_ok",
    "sample_candidates",
    "soft_prompt",
    "pez",
    "gcg",
    "token_counts",
    "blocked_words",
]

