import pytest
import torch

import helpers


def test_course_qa_set_is_large_varied_and_clean():
    pairs = helpers.load_qa_pairs()
    assert len(pairs) >= 100
    assert len({p.topic for p in pairs}) >= 8
    assert len({p.question for p in pairs}) == len(pairs) and len({p.answer for p in pairs}) == len(pairs)
    assert all(p.question.strip().endswith("?") and len(p.answer.split()) >= 8 for p in pairs)


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


def test_trained_model_retrieves_and_random_model_does_not(minilm):
    trained = helpers.retrieval_quality(lambda texts: helpers.encode(minilm, texts))
    assert trained["recall@1"] >= 0.7 and trained["MRR"] >= 0.8
    shuffled = helpers.retrieval_metrics(
        helpers.encode(minilm, [p.question for p in helpers.load_qa_pairs()]),
        helpers.encode(minilm, [p.answer for p in helpers.load_qa_pairs()][::-1]))
    assert shuffled["recall@1"] < 0.1  # the metric really depends on the pairing


def test_a_slice_of_the_qa_set_is_fixed_and_mixes_topics():
    every = helpers.load_qa_pairs()
    part = helpers.load_qa_pairs(24)
    assert len(part) == 24 and part == helpers.load_qa_pairs(24), "the same slice every time"
    assert set(part) <= set(every) and len({p.topic for p in part}) >= 4
    assert helpers.load_qa_pairs(None) == every and helpers.load_qa_pairs(10_000) == every
    with pytest.raises(ValueError, match="at least 2"):
        helpers.load_qa_pairs(1)
