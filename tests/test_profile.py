import pytest

import helpers
from helpers.profile import ENV_VAR


def test_default_is_full_and_env_var_selects(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert helpers.get_profile().name == "full"
    monkeypatch.setenv(ENV_VAR, "smoke")
    assert helpers.get_profile().name == "smoke"


def test_parameter_beats_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "smoke")
    assert helpers.get_profile("full").name == "full"
    assert helpers.get_profile(" SMOKE ").name == "smoke"


def test_smoke_is_small_and_full_is_the_reference_setting():
    smoke, full = helpers.PROFILES["smoke"], helpers.PROFILES["full"]
    assert smoke.runs < full.runs and smoke.seq_len < full.seq_len
    assert smoke.model_name == helpers.SMOKE_MODEL and smoke.model_name.startswith(helpers.FALLBACK_MODEL)
    assert full.model_name == helpers.DEFAULT_MODEL
    assert smoke.threads == 1, "one thread per lab, so two graders share two cores"
    assert smoke.eval_pairs and full.eval_pairs is None
    assert full.runs == 100 and full.seq_len == 128
    assert not smoke.save_figures and full.save_figures


def test_none_overrides_are_ignored_and_values_apply():
    p = helpers.get_profile("smoke", runs=None, model_name=None, threads=None)
    assert p == helpers.PROFILES["smoke"]
    full = helpers.get_profile("full")
    assert isinstance(full.threads, int) and full.threads >= 1, "the full profile's thread count is a number too"
    assert full.threads == helpers.profile.default_threads()
    q = helpers.get_profile("smoke", runs=7, threads=1, model_name=helpers.RANDOM_MPNET)
    assert (q.runs, q.threads, q.model_name) == (7, 1, helpers.RANDOM_MPNET)


@pytest.mark.parametrize("bad", ["fast", "", "smoky"])
def test_unknown_profile_names_the_choices(bad, monkeypatch):
    monkeypatch.setenv(ENV_VAR, bad or "nope")
    with pytest.raises(ValueError, match="smoke"):
        helpers.get_profile(bad or None)


def test_bad_overrides_are_rejected():
    with pytest.raises(ValueError, match="runs"):
        helpers.get_profile("smoke", runs=0)
    with pytest.raises(TypeError, match="repeats"):
        helpers.get_profile("smoke", repeats=3)


def test_describe_mentions_what_a_reader_needs():
    text = helpers.PROFILES["full"].describe()
    assert "100 timed runs" in text and "128 tokens" in text and helpers.DEFAULT_MODEL in text


def test_use_threads_sets_torch_and_child_processes(monkeypatch):
    import os

    import torch
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert helpers.use_threads(1) == 1
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads"):
        helpers.use_threads(0)
