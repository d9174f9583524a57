"""Did the optimization break the model?  Figures that say so, from actual embeddings.

* cosine similarity of a variant's sentence embeddings to the reference fp32 ones
  (1.0 = identical direction; the mean hides outliers, so the minimum is reported too);
* retrieval on the course's own question -> answer set (``data/qa_pairs.jsonl``, 660 pairs
  in clusters of five that share their vocabulary and differ in one fact, so a damaged model
  confuses neighbours): recall@1 (the right answer ranked first) and mean reciprocal rank.

Both need *trained* weights to mean anything: random weights hide quantization and
precision errors (see the anchors in the course notes).

A drop in recall@1 is only a loss if it is larger than chance: :func:`paired_recall_test`
compares a variant's per-question hits with the reference's on the *same* questions (an
exact McNemar test on the questions that changed, scipy's ``binomtest``, and a bootstrap
interval of the difference, scipy's ``bootstrap``), and :func:`quality_figures` puts its
verdict in the table beside the figures.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class QAPair:
    """One question and its one right answer; every other answer in the set is a distractor."""

    id: str        # "<cluster>-<k>": unique
    topic: str     # cooking, physics, ... (17 of them)
    cluster: str   # the 5 pairs of a cluster share their vocabulary and differ in one fact
    question: str
    answer: str


def load_qa_pairs(limit: int | None = None) -> list[QAPair]:
    """The course's question -> answer pairs, in file order (question i is answered by answer i).

    ``limit`` keeps a fixed slice of them, spread over the topics (every k-th pair, so the slice
    still mixes topics): the smoke profile's ``eval_pairs``, a smoke test of the quality code,
    not a quality figure. ``None`` gives them all.
    """
    text = resources.files("helpers").joinpath("data/qa_pairs.jsonl").read_text(encoding="utf-8")
    pairs = [QAPair(**json.loads(line)) for line in text.splitlines() if line.strip()]
    if limit is None or int(limit) >= len(pairs):
        return pairs
    if int(limit) < 2:
        raise ValueError(f"a retrieval slice needs at least 2 pairs (one right answer, one distractor), got {limit!r}")
    step = len(pairs) / int(limit)
    return [pairs[int(i * step)] for i in range(int(limit))]


def _as_2d(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, dim), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, dim), got {tuple(x.shape)}")
    return x.detach().float().cpu()


def cosine_to_reference(embeddings: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Row-by-row cosine similarity of ``embeddings`` to ``reference``: mean and minimum."""
    emb, ref = _as_2d(embeddings, "embeddings"), _as_2d(reference, "reference")
    if emb.shape != ref.shape:
        raise ValueError(f"embeddings {tuple(emb.shape)} and reference {tuple(ref.shape)} must have the same shape")
    cos = F.cosine_similarity(emb, ref, dim=1)
    return {"cosine mean": float(cos.mean()), "cosine min": float(cos.min())}


def retrieval_ranks(question_embeddings: torch.Tensor, answer_embeddings: torch.Tensor) -> torch.Tensor:
    """The rank of each question's correct answer (answer i for question i) among all answers.

    Scores are cosine similarities; a tie with the correct answer counts against it
    (rank = 1 + number of answers scoring at least as high), so a degenerate model that
    gives every text the same embedding scores the worst possible, not the best.
    """
    q = F.normalize(_as_2d(question_embeddings, "question_embeddings"), dim=1)
    a = F.normalize(_as_2d(answer_embeddings, "answer_embeddings"), dim=1)
    if q.shape != a.shape:
        raise ValueError(f"need one answer per question: got {q.shape[0]} questions, {a.shape[0]} answers")
    scores = q @ a.T
    correct = scores.diagonal().unsqueeze(1)
    others = scores.clone()
    others.fill_diagonal_(float("-inf"))
    return 1 + (others >= correct).sum(dim=1)


def _metrics_of_ranks(rank: torch.Tensor) -> dict[str, float]:
    return {"recall@1": float((rank == 1).float().mean()), "MRR": float((1.0 / rank.float()).mean())}


def retrieval_metrics(question_embeddings: torch.Tensor, answer_embeddings: torch.Tensor) -> dict[str, float]:
    """recall@1 and MRR when question i's correct answer is answer i and all others are distractors."""
    return _metrics_of_ranks(retrieval_ranks(question_embeddings, answer_embeddings))


@dataclass(frozen=True)
class PairedRecall:
    """A variant's recall@1 against the reference's on the same questions, and whether they differ."""

    n: int              # questions
    reference: float    # recall@1 of the reference
    variant: float      # recall@1 of the variant
    lost: int           # questions the reference got right and the variant wrong
    gained: int         # questions the variant got right and the reference wrong
    p_value: float      # exact McNemar (two-sided binomial test on lost vs gained)
    low: float          # bootstrap interval of (variant - reference), in recall points (0-1)
    high: float
    confidence: float = 0.95
    alpha: float = 0.05

    @property
    def difference(self) -> float:
        return self.variant - self.reference

    @property
    def real(self) -> bool:
        """Whether the change is larger than chance at ``alpha``."""
        return self.lost + self.gained > 0 and self.p_value < self.alpha

    def short(self) -> str:
        """For a table cell: "no measurable loss (p=0.48)" or "-2.3 pts [-3.6, -1.0], p=0.001"."""
        if self.lost + self.gained == 0:
            return "same hits"
        if not self.real:
            kind = "loss" if self.difference <= 0 else "change"
            return f"no measurable {kind} (p={self.p_value:.2f})"
        return f"{100 * self.difference:+.1f} pts [{100 * self.low:+.1f}, {100 * self.high:+.1f}], p={self.p_value:.2g}"

    def __str__(self) -> str:
        counts = f"{self.lost} questions lost, {self.gained} gained, of {self.n}"
        if self.lost + self.gained == 0:
            return f"recall@1 {self.variant:.3f}: the same questions right as the reference ({counts})."
        ci = (f"{100 * self.difference:+.1f} points, {100 * self.confidence:.0f} % interval "
              f"{100 * self.low:+.1f} to {100 * self.high:+.1f}; exact McNemar p = {self.p_value:.2g}; {counts}")
        if not self.real:
            kind = "loss" if self.difference <= 0 else "change"
            return f"recall@1 {self.variant:.3f} vs {self.reference:.3f}: no measurable {kind} ({ci})."
        kind = "a loss" if self.difference < 0 else "a gain"
        return f"recall@1 {self.variant:.3f} vs {self.reference:.3f}: {kind} larger than chance ({ci})."


def paired_recall_test(reference_hits, variant_hits, *, confidence: float = 0.95, alpha: float = 0.05,
                       resamples: int = 2000, seed: int = 0) -> PairedRecall:
    """Is the variant's recall@1 really different from the reference's on the same questions?

    ``reference_hits`` / ``variant_hits``: one boolean per question (right answer ranked first),
    in the same question order.  Only questions whose outcome changed carry evidence: the exact
    McNemar test asks whether ``lost`` vs ``gained`` is more lopsided than fair coin flips
    (``scipy.stats.binomtest``); the interval is a percentile bootstrap of the mean per-question
    difference (``scipy.stats.bootstrap``, seeded, so a regrade gives the same figures).
    """
    from scipy import stats

    ref = np.asarray(reference_hits, dtype=bool).ravel()
    var = np.asarray(variant_hits, dtype=bool).ravel()
    if ref.shape != var.shape or ref.size == 0:
        raise ValueError(f"need the same non-empty set of questions for both: got {ref.size} reference "
                         f"and {var.size} variant hits")
    lost, gained = int(np.sum(ref & ~var)), int(np.sum(~ref & var))
    if lost + gained == 0:
        p_value, low, high = 1.0, 0.0, 0.0
    else:
        p_value = float(stats.binomtest(gained, lost + gained, 0.5).pvalue)
        diff = var.astype(float) - ref.astype(float)
        with warnings.catch_warnings():  # a nearly constant sample warns; the interval is still right
            warnings.simplefilter("ignore")
            result = stats.bootstrap((diff,), np.mean, confidence_level=confidence, n_resamples=resamples,
                                     method="percentile", rng=np.random.default_rng(seed))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return PairedRecall(int(ref.size), float(ref.mean()), float(var.mean()), lost, gained, p_value,
                        low, high, confidence, alpha)


REFERENCE_CHANGE = "recall@1 vs reference"


def quality_figures(embeddings: torch.Tensor, reference: torch.Tensor, n_questions: int) -> dict:
    """Every quality figure of one variant, for a table row: cosine to the reference (mean, min),
    recall@1, MRR, and the paired test of its recall@1 against the reference's.

    ``embeddings`` and ``reference`` hold the questions' embeddings, then the answers' (the order
    the labs encode them in); ``n_questions`` says where the answers start.

    Embeddings of another width come from another model (a compact architecture, lab 12): they
    live in another space, so there is no cosine to the reference (NaN), only retrieval and its test.
    """
    emb, ref = _as_2d(embeddings, "embeddings"), _as_2d(reference, "reference")
    n = int(n_questions)
    if emb.shape[0] != 2 * n or ref.shape[0] != 2 * n:
        raise ValueError(f"embeddings {tuple(emb.shape)} and reference {tuple(ref.shape)} must each hold "
                         f"{n} questions then {n} answers")
    ranks, ref_ranks = retrieval_ranks(emb[:n], emb[n:]), retrieval_ranks(ref[:n], ref[n:])
    cosine = (cosine_to_reference(emb, ref) if emb.shape == ref.shape
              else {"cosine mean": float("nan"), "cosine min": float("nan")})
    figures = {**cosine, **_metrics_of_ranks(ranks)}
    same = bool(torch.equal(emb, ref))  # the reference row itself, or a variant that changes nothing
    test = paired_recall_test(ref_ranks.numpy() == 1, ranks.numpy() == 1)
    figures[REFERENCE_CHANGE] = "identical embeddings" if same else test.short()
    return figures


def retrieval_quality(embed, pairs: list[QAPair] | None = None) -> dict[str, float]:
    """Encode the questions and answers with ``embed(list_of_texts) -> (n, dim) tensor`` and score retrieval."""
    pairs = load_qa_pairs() if pairs is None else pairs
    questions = embed([p.question for p in pairs])
    answers = embed([p.answer for p in pairs])
    return retrieval_metrics(questions, answers)


def retrieval_hits(embed, pairs: list[QAPair] | None = None):
    """One boolean per question: did ``embed`` rank its right answer first?  (For :func:`paired_recall_test`.)"""
    pairs = load_qa_pairs() if pairs is None else pairs
    ranks = retrieval_ranks(embed([p.question for p in pairs]), embed([p.answer for p in pairs]))
    return ranks.numpy() == 1


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.quality [MODEL ...]``: recall@1 and MRR of trained models on the whole set."""
    import argparse

    from .hardware import machine_label, use_threads
    from .models import FALLBACK_MODEL, MPNET_MODEL, encode, load_encoder

    parser = argparse.ArgumentParser(prog="python -m helpers.quality", description=main.__doc__)
    parser.add_argument("models", nargs="*", default=[FALLBACK_MODEL, MPNET_MODEL],
                        help="models to measure (default: the two trained models that install from PyPI)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        use_threads(args.threads)
    pairs = load_qa_pairs()
    print(f"{len(pairs)} pairs, {len({p.cluster for p in pairs})} clusters; {machine_label()}")
    for name in args.models:
        encoder = load_encoder(name, verbose=False)
        figures = retrieval_quality(lambda texts: encode(encoder, texts), pairs)
        print(f"{encoder.name}: recall@1 {figures['recall@1']:.3f}, MRR {figures['MRR']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
