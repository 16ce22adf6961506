"""Which model a site serves for a task, from its candidates' validation scores.

One function, read by the site worker and by benchmarks/choice.py, so a rule replayed there on
recorded candidates is the rule sites run. Sites serve the best on validation (``margin`` 0):
margins a joined model must clear, and serving the mean of the federation's and the site's own
encoder, were measured and gained nothing (benchmarks/README.md, "What a site serves").
"""

from __future__ import annotations

OWN = ("baseline-tuned", "baseline")  # what the site serves without joining: fine-tuned alone, or the probe


def choose(scores: dict[str, float], margin: float = 0.0) -> str:
    """The candidate to serve: the best on validation, each joined one counted ``margin`` lower than
    the site's own; ties go to the first listed (the worker lists the federation's model first)."""
    names = list(scores)
    return max(names, key=lambda n: (scores[n] - (0.0 if n in OWN else margin), -names.index(n)))
