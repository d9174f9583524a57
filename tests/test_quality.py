from collections import Counter

import numpy as np
import pytest
import torch

import helpers


def test_course_qa_set_is_large_varied_and_clean():
    pairs = helpers.load_qa_pairs()
    assert len(pairs) >= 600, "one question must be well under a point of recall@1"
    assert len({p.topic for p in pairs}) >= 12
    assert len({p.id for p in pairs}) == len(pairs), "ids are unique"
    assert len({p.question for p in pairs}) == len(pairs), "no question twice"
    assert len({p.answer.strip().lower() for p in pairs}) == len(pairs), "no answer twice: each question has exactly one"
    assert all(p.question.strip().endswith("?") and len(p.answer.split()) >= 12 for p in pairs)
    clusters = Counter(p.cluster for p in pairs)
    assert set(clusters.values()) == {5}, "clusters of five pairs that differ in one fact"
    assert all(p.id.startswith(p.cluster + "-") and p.cluster.startswith(p.topic + "-") for p in pairs)
    assert all(p.question.isascii() and p.answer.isascii() for p in pairs)


@pytest.fixture(scope="module")
def minilm_on_the_set(minilm):
    """The trained MiniLM's question and answer embeddings of the whole set, computed once."""
    pairs = helpers.load_qa_pairs()
    return pairs, helpers.encode(minilm, [p.question for p in pairs]), helpers.encode(minilm, [p.answer for p in pairs])


def test_a_trained_model_is_far_from_the_ceiling_and_confuses_neighbours(minilm_on_the_set):
    """The set is hard where it should be: most of a trained model's misses go to an answer of the
    question's own cluster (same words, another fact), and it is far from the ceiling."""
    pairs, q, a = minilm_on_the_set
    ranks = helpers.retrieval_ranks(q, a)
    recall = float((ranks == 1).float().mean())
    assert 0.55 <= recall <= 0.9, recall
    top = (q @ a.T).argmax(dim=1)
    missed = [i for i in range(len(pairs)) if ranks[i] > 1]
    same_cluster = sum(pairs[int(top[i])].cluster == pairs[i].cluster for i in missed)
    assert same_cluster >= 0.4 * len(missed)
    shuffled = helpers.retrieval_metrics(q, a.flip(0))
    assert shuffled["recall@1"] < 0.1  # the metric really depends on the pairing


def test_cosine_to_reference():
    ref = torch.eye(3)
    assert helpers.cosine_to_reference(ref * 5, ref) == {"cosine mean": pytest.approx(1.0), "cosine min": pytest.approx(1.0)}
    flipped = ref.clone()
    flipped[2] = torch.tensor([1.0, 0.0, 0.0])
    assert helpers.cosine_to_reference(flipped, ref) == {"cosine mean": pytest.approx(2 / 3), "cosine min": pytest.approx(0.0)}


def test_retrieval_metrics_known_cases():
    eye = torch.eye(4)
    assert helpers.retrieval_metrics(eye, eye) == {"recall@1": 1.0, "MRR": 1.0}
    # question 0 points at answer 1 first, its own answer second: rank 2
    q = eye.clone()
    q[0] = torch.tensor([0.6, 0.8, 0.0, 0.0])
    m = helpers.retrieval_metrics(q, eye)
    assert m["recall@1"] == pytest.approx(0.75) and m["MRR"] == pytest.approx((0.5 + 3) / 4)


def test_degenerate_embeddings_score_worst_not_best():
    same = torch.ones(5, 3)
    m = helpers.retrieval_metrics(same, same)
    assert m["recall@1"] == 0.0 and m["MRR"] == pytest.approx(0.2)


@pytest.mark.parametrize("a, b", [(torch.ones(3, 2), torch.ones(4, 2)), (torch.ones(3), torch.ones(3))])
def test_shape_errors_are_clear(a, b):
    with pytest.raises(ValueError, match="shape|one answer per question"):
        helpers.retrieval_metrics(a, b)
    with pytest.raises(ValueError, match="shape"):
        helpers.cosine_to_reference(a, b)


def test_retrieval_quality_encodes_questions_and_answers(minilm):
    part = helpers.load_qa_pairs(24)
    trained = helpers.retrieval_quality(lambda texts: helpers.encode(minilm, texts), part)
    assert trained["recall@1"] >= 0.7 and trained["MRR"] >= 0.8
    hits = helpers.retrieval_hits(lambda texts: helpers.encode(minilm, texts), part)
    assert hits.shape == (24,) and hits.mean() == pytest.approx(trained["recall@1"])


def test_a_slice_of_the_qa_set_is_fixed_and_mixes_topics():
    every = helpers.load_qa_pairs()
    part = helpers.load_qa_pairs(24)
    assert len(part) == 24 and part == helpers.load_qa_pairs(24), "the same slice every time"
    assert set(part) <= set(every) and len({p.topic for p in part}) >= 4
    assert helpers.load_qa_pairs(None) == every and helpers.load_qa_pairs(10_000) == every
    with pytest.raises(ValueError, match="at least 2"):
        helpers.load_qa_pairs(1)


def test_paired_test_known_cases():
    ref = np.array([True] * 60 + [False] * 40)
    # ten questions lost, none gained: a real loss (exact two-sided p = 2 * 0.5**10)
    worse = ref.copy()
    worse[:10] = False
    t = helpers.paired_recall_test(ref, worse)
    assert (t.lost, t.gained, t.n) == (10, 0, 100) and t.difference == pytest.approx(-0.10)
    assert t.p_value == pytest.approx(2 * 0.5 ** 10) and t.real
    assert t.low < -0.10 < t.high < 0 and t.short().startswith("-10.0 pts")
    assert "a loss larger than chance" in str(t)
    # three lost and two gained: inside the noise
    mixed = ref.copy()
    mixed[:3] = False
    mixed[60:62] = True
    t = helpers.paired_recall_test(ref, mixed)
    assert (t.lost, t.gained) == (3, 2) and t.p_value == pytest.approx(1.0) and not t.real
    assert t.low < 0 < t.high and t.short() == "no measurable loss (p=1.00)"
    # the same hits: nothing to test
    same = helpers.paired_recall_test(ref, ref)
    assert same.short() == "same hits" and same.p_value == 1.0 and (same.low, same.high) == (0.0, 0.0)
    # seeded: the same figures every time (a regrade gives the same table)
    assert helpers.paired_recall_test(ref, worse) == helpers.paired_recall_test(ref, worse)


def test_paired_test_checks_its_input():
    with pytest.raises(ValueError, match="same non-empty set of questions"):
        helpers.paired_recall_test([True, False], [True])
    with pytest.raises(ValueError, match="same non-empty"):
        helpers.paired_recall_test([], [])


def test_quality_figures_carry_the_paired_verdict():
    eye = torch.eye(8)
    ref = torch.cat([eye, eye])  # 8 questions then their 8 answers: all right
    figures = helpers.quality_figures(ref, ref, 8)
    assert figures["recall@1"] == 1.0 and figures[helpers.REFERENCE_CHANGE] == "identical embeddings"
    damaged = ref.clone()
    damaged[0] = eye[1]  # question 0 now points at answer 1
    figures = helpers.quality_figures(damaged, ref, 8)
    assert figures["recall@1"] == pytest.approx(7 / 8) and figures["cosine min"] == pytest.approx(0.0)
    assert figures[helpers.REFERENCE_CHANGE] == "no measurable loss (p=1.00)"  # one question is noise
    with pytest.raises(ValueError, match="8 questions then 8 answers"):
        helpers.quality_figures(ref[:10], ref[:10], 8)
