"""helpers.compress: the train/judge split, head and neuron surgery, layer dropping, sizes, distillation, verdicts."""

import copy

import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel

import helpers
from helpers import compress


def _tiny(kind):
    torch.manual_seed(0)
    model, config = {"bert": (BertModel, BertConfig), "mpnet": (MPNetModel, MPNetConfig)}[kind]
    return model(config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=100)).eval()


def _batch():
    ids = torch.randint(5, 100, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _out(model):
    with torch.no_grad():
        return model(**_batch()).last_hidden_state


def _silenced(model, plan):
    """The same model with the planned heads' output columns zeroed: what removing them must equal."""
    ref = copy.deepcopy(model)
    for layer, heads in plan.items():
        block = compress.attention_blocks(ref)[layer]
        with torch.no_grad():
            for h in heads:
                block.out.weight[:, h * block.head_size:(h + 1) * block.head_size] = 0
    return ref


def test_split_pairs_keeps_clusters_apart():
    pairs = helpers.load_qa_pairs()
    texts, judged = compress.split_pairs(pairs)
    judged_clusters = {p.cluster for p in judged}
    trained = [p for p in pairs if p.cluster not in judged_clusters]
    assert texts == [t for p in trained for t in (p.question, p.answer)]
    assert not set(texts) & {t for p in judged for t in (p.question, p.answer)}, "no judged text is trained on"
    assert len(trained) + len(judged) == len(pairs) and 0 < len(trained) < len(judged)
    with pytest.raises(ValueError, match="every"):
        compress.split_pairs(pairs, every=1)


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_prune_heads_equals_silencing_them_and_shrinks_the_layers(kind):
    model = _tiny(kind)
    plan = {0: [1, 3], 1: [0]}
    pruned = compress.prune_heads(copy.deepcopy(model), plan)
    assert [b.heads for b in compress.attention_blocks(pruned)] == [2, 3]
    assert compress.attention_blocks(pruned)[0].q.out_features == 2 * 8
    assert compress.attention_blocks(pruned)[0].out.in_features == 2 * 8
    assert torch.allclose(_out(pruned), _out(_silenced(model, plan)), atol=1e-5)
    again = compress.prune_heads(pruned, {0: [0]})  # pruned twice: MPNet's position bias must follow the heads
    assert torch.allclose(_out(again), _out(_silenced(model, {0: [0, 1, 3], 1: [0]})), atol=1e-5)


def test_prune_heads_refuses_what_cannot_be_done():
    model = _tiny("bert")
    with pytest.raises(ValueError, match="cut the layer's attention off"):
        compress.prune_heads(model, {0: [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="does not exist"):
        compress.prune_heads(model, {5: [0]})
    with pytest.raises(ValueError, match="must lie in"):
        compress.prune_heads(model, {0: [4]})


def test_prune_ffn_keeps_the_strongest_neurons():
    model = _tiny("bert")
    layer = model.encoder.layer[0]
    with torch.no_grad():
        layer.output.dense.weight[:, :10] = 0  # neurons 0..9 write nothing: score 0
    pruned = compress.prune_ffn(copy.deepcopy(model), keep=0.5)
    assert pruned.encoder.layer[0].intermediate.dense.out_features == 32
    assert pruned.encoder.layer[0].output.dense.in_features == 32
    kept_rows = pruned.encoder.layer[0].intermediate.dense.weight
    original = layer.intermediate.dense.weight
    assert not any(torch.equal(kept_rows[i], original[j]) for i in range(32) for j in range(10))
    assert _out(pruned).shape == _out(model).shape
    with pytest.raises(ValueError, match="fraction"):
        compress.prune_ffn(model, keep=0)


def test_keep_layers_copies_and_updates_the_config():
    model = _tiny("mpnet")
    student = compress.keep_layers(model, [1])
    assert len(student.encoder.layer) == 1 and student.config.num_hidden_layers == 1
    assert len(model.encoder.layer) == 2 and model.config.num_hidden_layers == 2, "the teacher is untouched"
    assert torch.equal(student.encoder.layer[0].intermediate.dense.weight, model.encoder.layer[1].intermediate.dense.weight)
    assert _out(student).shape == _out(model).shape
    with pytest.raises(ValueError, match="non-empty"):
        compress.keep_layers(model, [])
    with pytest.raises(ValueError, match="non-empty"):
        compress.keep_layers(model, [2])


def test_sizes_and_sparsity():
    model = _tiny("bert")
    assert compress.linear_sparsity(model) == 0
    dense, csr_of_dense = compress.saved_size_mib(model), compress.sparse_size_mib(model)
    assert csr_of_dense > dense, "CSR of a dense matrix stores an index beside every value"
    with torch.no_grad():
        for _, linear in compress.encoder_linears(model):
            linear.weight[torch.rand_like(linear.weight) < 0.95] = 0
    assert 0.9 < compress.linear_sparsity(model) < 1
    assert compress.saved_size_mib(model) == pytest.approx(dense), "zeros cost a dense file the same"
    assert compress.sparse_size_mib(model) < dense


def test_replace_linears_visits_every_encoder_linear():
    model = _tiny("bert")
    seen = []

    def make(name, linear):
        seen.append(name)
        return torch.nn.Identity() if linear.in_features == linear.out_features else linear

    compress.replace_linears(model, make)
    assert len(seen) == 2 * 6, seen
    assert len(compress.encoder_linears(model)) == 2 * 2, "the square ones were replaced, the FFN ones kept"


def test_head_contexts_hold_real_tokens_only(minilm):
    texts = ["a short one", "a somewhat longer sentence than the first one"]
    contexts = compress.head_contexts(minilm.model, minilm.tokenizer, texts)
    real = int(minilm.tokenizer(texts, padding=True, return_tensors="pt")["attention_mask"].sum())
    blocks = compress.attention_blocks(minilm.model)
    assert len(contexts) == len(blocks)
    assert all(c.shape == (real, b.heads * b.head_size) for c, b in zip(contexts, blocks))


def test_distill_moves_the_student_towards_the_teacher(minilm):
    texts = [p.answer for p in helpers.load_qa_pairs(8)]
    targets = compress.teacher_embeddings(minilm.model, minilm.tokenizer, texts)
    student = compress.keep_layers(minilm.model, [0])
    before = torch.nn.functional.cosine_similarity(helpers.embed_module(student, minilm.tokenizer, texts), targets).mean()
    losses = compress.distill(student, minilm.tokenizer, texts, targets, steps=6, batch_size=4, lr=2e-4, progress=False)
    after = torch.nn.functional.cosine_similarity(helpers.embed_module(student, minilm.tokenizer, texts), targets).mean()
    assert len(losses) == 6 and after > before and not student.training
    assert compress.distill(student, minilm.tokenizer, texts, targets, steps=0, progress=False) == []
    with pytest.raises(ValueError, match="texts but"):
        compress.distill(student, minilm.tokenizer, texts[:3], targets, steps=1, progress=False)


def test_method_verdicts_read_the_table():
    table = pd.DataFrame({"median (ms)": [10.0, 10.1, 5.0, 9.9, 12.0], "p25 (ms)": [9.8, 9.9, 4.9, 9.7, 11.8],
                          "p75 (ms)": [10.2, 10.3, 5.1, 10.1, 12.2], "speedup (x)": [1.0, 0.99, 2.0, 1.01, 0.83]},
                         index=["base", "sparse", "small", "factorised", "int8"])
    flops = {"base": 100.0, "sparse": 100.0, "small": 50.0, "factorised": 60.0, "int8": float("nan")}
    lines = compress.method_verdicts(table, flops, {"small": True}, baseline="base", same_kernels=["sparse"])
    assert len(lines) == 4
    assert "cannot be faster" in lines[0] and "1.00x the baseline's FLOPs" in lines[0]
    assert "2.00x faster, beyond the spread" in lines[1] and "larger than chance" in lines[1]
    assert "no faster" in lines[2] and "0.60x" in lines[2] and "no measurable" in lines[2]
    assert "slower beyond the spread" in lines[3] and "not counted" in lines[3]


def test_quality_figures_of_another_width_have_no_cosine():
    torch.manual_seed(0)
    reference, other = torch.nn.functional.normalize(torch.randn(8, 6), dim=1), torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    figures = helpers.quality_figures(other, reference, 4)
    assert figures["cosine mean"] != figures["cosine mean"] and 0 <= figures["recall@1"] <= 1


def test_an_energy_threshold_picks_the_rank_whose_error_it_allows():
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(12, 12))
    v, _ = torch.linalg.qr(torch.randn(8, 8))
    s = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25])
    weight = u[:, :8] @ torch.diag(s) @ v.T  # singular values known: energy 16, 4, 1, 1, ... of 22.625
    kept = compress.singular_energy(weight)
    assert kept.shape == (8,) and kept[-1] == pytest.approx(1.0)
    assert kept[0] == pytest.approx(16 / 22.625, abs=1e-5) and kept[1] == pytest.approx(20 / 22.625, abs=1e-5)
    assert compress.energy_rank(weight, 0.70) == 1 and compress.energy_rank(weight, 0.80) == 2
    assert compress.energy_rank(weight, 20 / 22.625) == 2 and compress.energy_rank(weight, 1.0) == 8
    # 1 - energy is the squared relative error of the best rank-r approximation (Eckart-Young)
    uu, ss, vh = torch.linalg.svd(weight)
    r2 = uu[:, :2] @ torch.diag(ss[:2]) @ vh[:2]
    assert (torch.linalg.norm(weight - r2) / torch.linalg.norm(weight)) ** 2 == pytest.approx(1 - kept[1].item(), abs=1e-5)
    with pytest.raises(ValueError, match="energy"):
        compress.energy_rank(weight, 0)
