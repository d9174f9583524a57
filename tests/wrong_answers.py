"""A plausible wrong answer per lab, for the autograde golden tests (partial marks expected).

Each entry takes the solution notebook (a dict) and returns it with one mistake a student
could really make; the mistake must be caught by some, not all, of the lab's tests.
"""

from notebook_tools import source


def _replace_in_cell(nb: dict, cell_id: str, old: str, new: str) -> dict:
    for cell in nb["cells"]:
        if cell.get("id") == cell_id:
            text = source(cell)
            assert old in text, f"wrong-answer fixture is stale: {old!r} not in cell {cell_id}"
            cell["source"] = text.replace(old, new)
            return nb
    raise AssertionError(f"wrong-answer fixture is stale: no cell {cell_id}")


def lab01_forgets_train_mode(nb: dict) -> dict:
    """The baseline assumes the model starts in train mode (from_pretrained returns eval mode)."""
    return _replace_in_cell(nb, "ex12-variants", "        model.train()\n        return model(**inputs)",
                            "        return model(**inputs)")


def lab02_warms_up_outside_inference_mode(nb: dict) -> dict:
    """The first call runs with autograd on, unlike the steady state it is compared with."""
    return _replace_in_cell(nb, "ex21-compile", "    with torch.inference_mode():\n        compiled(**inputs)\n",
                            "    compiled(**inputs)\n")


def lab03_reports_megabytes(nb: dict) -> dict:
    """File sizes in MB (10**6 bytes) where the lab asks for MiB (2**20 bytes)."""
    return _replace_in_cell(nb, "ex32-sizes", "return Path(path).stat().st_size / 2**20",
                            "return Path(path).stat().st_size / 1e6")


def lab04_counts_with_autograd_on(nb: dict) -> dict:
    """The op count is taken under no_grad, where autograd splits linear layers before they are counted."""
    return _replace_in_cell(nb, "ex41-count", "    with torch.inference_mode(), OpCounter() as counter:",
                            "    with torch.no_grad(), OpCounter() as counter:")


def lab05_casts_in_place(nb: dict) -> dict:
    """model.to(dtype) without a copy: the fp32 baseline is converted too."""
    return _replace_in_cell(nb, "ex51-cast", "return copy.deepcopy(model).to(dtype)", "return model.to(dtype)")


def lab06_exports_a_fixed_sequence_length(nb: dict) -> dict:
    """Only the batch dimension is declared dynamic: the file accepts one sequence length only."""
    return _replace_in_cell(nb, "ex61-export", "    dims = {0: batch, 1: sequence}", "    dims = {0: batch}")


def lab07_times_the_warmup_too(nb: dict) -> dict:
    """Warm-up requests are timed and returned with the others, so first-call costs leak into the tail."""
    return _replace_in_cell(nb, "ex71-latency",
                            "    for _ in range(warmup):\n        send()\n    durations = []\n    for _ in range(requests):",
                            "    durations = []\n    for _ in range(warmup + requests):")


def lab08_hides_a_failed_start(nb: dict) -> dict:
    """A stage that fails is dropped silently: the stages that finished come back as if the start had worked."""
    return _replace_in_cell(nb, "ex81-stages",
                            "    if run.returncode != 0:\n"
                            "        failed = next((name for name in stages if name not in times), \"interpreter start\")\n"
                            "        last = (run.stderr.strip().splitlines() or [\"no error message\"])[-1]\n"
                            "        raise RuntimeError(f\"stage {failed!r} failed: {last}\")\n", "")


def lab09_keys_on_insertion_order(nb: dict) -> dict:
    """The cache key hashes the JSON as the dicts happen to be ordered: the same settings built in
    another order miss the cache (and two processes can disagree on the key of one artifact)."""
    return _replace_in_cell(nb, "ex92-key", "\n                      sort_keys=True)", ")")


def lab10_fails_the_whole_batch(nb: dict) -> dict:
    """A batch that raises fails every request in it: one bad input costs its batch-mates their answers."""
    return _replace_in_cell(nb, "ex102-batcher",
                            "            if len(batch) == 1:\n"
                            "                batch[0][3].set_exception(exc)\n"
                            "            else:\n"
                            "                for _, item, _, future in batch:  # one bad request must not fail its batch-mates\n"
                            "                    try:\n"
                            "                        future.set_result(self.run_batch([item])[0])\n"
                            "                    except Exception as alone:\n"
                            "                        future.set_exception(alone)\n",
                            "            for _, _, _, future in batch:\n"
                            "                future.set_exception(exc)\n")


def lab11_tests_one_batch_only(nb: dict) -> dict:
    """The parity test runs one padded batch of all the texts: no batch of 1, no other length."""
    return _replace_in_cell(nb, "ex113-parity",
                            "    batches = [tokenizer(list(group), padding=True, return_tensors=\"pt\") for group in (texts[:1], texts[:2], texts)]\n"
                            "    batches.append(tokenizer(list(texts), padding=\"max_length\", max_length=longest + 7, return_tensors=\"pt\"))\n",
                            "    batches = [tokenizer(list(texts), padding=True, return_tensors=\"pt\")]\n")


def lab12_times_without_synchronising(nb: dict) -> dict:
    """The benchmark reads the clock right after the call, without waiting for the device."""
    return _replace_in_cell(nb, "ex121-benchmark",
                            "            runnable[name]()\n            synchronize()\n            timed[name].append(clock() - start)\n",
                            "            runnable[name]()\n            timed[name].append(clock() - start)\n")


WRONG_ANSWERS = {
    "01_eval_mode": lab01_forgets_train_mode,
    "02_torch_compile": lab02_warms_up_outside_inference_mode,
    "03_quantization": lab03_reports_megabytes,
    "04_gpu_inference": lab04_counts_with_autograd_on,
    "05_reduced_precision": lab05_casts_in_place,
    "06_onnx_runtime": lab06_exports_a_fixed_sequence_length,
    "07_deployment": lab07_times_the_warmup_too,
    "08_cold_start": lab08_hides_a_failed_start,
    "09_backend_selection": lab09_keys_on_insertion_order,
    "10_latency_throughput": lab10_fails_the_whole_batch,
    "11_capture": lab11_tests_one_batch_only,
    "12_smaller_models": lab12_times_without_synchronising,
}
