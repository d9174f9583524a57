"""Did the optimization break the model?  Figures that say so, from actual embeddings.

* cosine similarity of a variant's sentence embeddings to the reference fp32 ones
  (1.0 = identical direction; the mean hides outliers, so the minimum is reported too);
* retrieval on the course's own question -> answer set (``data/qa_pairs.jsonl``):
  recall@1 (the right answer ranked first) and mean reciprocal rank.

Both need *trained* weights to mean anything: random weights hide quantization and
precision errors (see the anchors in the course notes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class QAPair:
    topic: str
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


def retrieval_metrics(question_embeddings: torch.Tensor, answer_embeddings: torch.Tensor) -> dict[str, float]:
    """recall@1 and MRR when question i's correct answer is answer i and all others are distractors.

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
    rank = 1 + (others >= correct).sum(dim=1)
    return {"recall@1": float((rank == 1).float().mean()), "MRR": float((1.0 / rank.float()).mean())}


def retrieval_quality(embed, pairs: list[QAPair] | None = None) -> dict[str, float]:
    """Encode the questions and answers with ``embed(list_of_texts) -> (n, dim) tensor`` and score retrieval."""
    pairs = load_qa_pairs() if pairs is None else pairs
    questions = embed([p.question for p in pairs])
    answers = embed([p.answer for p in pairs])
    return retrieval_metrics(questions, answers)
