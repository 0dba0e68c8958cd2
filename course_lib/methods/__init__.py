"""Interpretability methods. Perturbation methods take a :class:`course_lib.games.Game`;
gradient methods take a differentiable model and tensors on any device."""
