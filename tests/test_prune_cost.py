"""The cost work on the layer-wise path: the opt-in error report, the statistics pass that stops
once every input is seen, phase timings, and SparseGPT's faster sweep held to the textbook one."""

import pytest
import torch

import prunekit
from prunekit.capture.layerwise import _first_layer_inputs, _run_layer
from prunekit.capture.statistics import add_gram, collect_statistics, gram_block_edges
from prunekit.methods.sparsegpt import inverse_hessian_factor, sparsegpt_prune
from prunekit.recipe import CalibrationSettings
from prunekit.sparsity import lowest_count_mask, prune_count

FAST = CalibrationSettings(corpus="c4", nsamples=4, seqlen=32, seed=0, batch_size=2)


def reference_sparsegpt(W, H, fraction, n, m, blocksize=128, percdamp=0.01):
    """The reference's ``fasterprune`` sweep, column by column (Frantar & Alistarh's code, restated)."""
    W = W.clone().double()
    H = H.clone().double()
    cols = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    mask = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Q1, Err1 = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1, dtype=W.dtype), torch.zeros(W.shape[0], i2 - i1, dtype=W.dtype)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if n is None:
            scores = W1 ** 2 / torch.diag(Hinv1).reshape(1, -1) ** 2
            k = prune_count(W.shape[0] * i2, fraction) - int(mask[:, :i1].sum())
            mask1 = lowest_count_mask(scores.reshape(1, -1), k).view_as(W1)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if n is not None and i % m == 0:
                tmp = W1[:, i:i + m] ** 2 / torch.diag(Hinv1)[i:i + m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, m - n, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W, mask


def _problem(rows, cols, seed=0):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(cols, 3 * cols, generator=generator, dtype=torch.float64) * torch.rand(cols, 1, generator=generator, dtype=torch.float64)
    return torch.randn(rows, cols, generator=generator, dtype=torch.float64), X @ X.t()


@pytest.mark.parametrize("target", [dict(fraction=0.5, n=None, m=None), dict(fraction=0.3, n=None, m=None),
                                    dict(fraction=None, n=2, m=4)])
@pytest.mark.parametrize("blocksize", [128, 32])
def test_sparsegpt_sweep_equals_the_reference(target, blocksize):
    """Batched triangular solves (unstructured) and inner lazy blocks (N:M) are the reference's algebra."""
    W, H = _problem(40, 200)
    ours, mask, _ = sparsegpt_prune(W, H, 2, blocksize=blocksize, percdamp=0.01, where="t", dtype=torch.float64,
                                    **target)
    ref_w, ref_mask = reference_sparsegpt(W, H * (2.0 / 2), blocksize=blocksize, **target)
    assert torch.equal(mask, ref_mask)
    assert torch.allclose(ours, ref_w, atol=1e-9, rtol=1e-9)


def test_stacked_maps_are_swept_as_if_alone():
    """q/k/v (or gate/up) share H: one stacked sweep gives each matrix its own sweep's result and count."""
    W, H = _problem(48, 96, seed=1)
    parts = [W[:16], W[16:24], W[24:]]
    stacked, mask, _ = sparsegpt_prune(W, H, 10, fraction=0.5, n=None, m=None, blocksize=32, percdamp=0.01, where="t",
                                       dtype=torch.float64, segments=[16, 8, 24])
    start = 0
    for part in parts:
        alone, alone_mask, _ = sparsegpt_prune(part, H, 10, fraction=0.5, n=None, m=None, blocksize=32, percdamp=0.01,
                                               where="t", dtype=torch.float64)
        rows = slice(start, start + part.shape[0])
        assert torch.equal(mask[rows], alone_mask) and int(alone_mask.sum()) == prune_count(part.numel(), 0.5)
        assert torch.allclose(stacked[rows], alone, atol=1e-12)
        start += part.shape[0]


def test_inverse_hessian_factor_is_the_upper_factor_of_the_damped_inverse():
    _, H = _problem(1, 64, seed=2)
    upper, damp = inverse_hessian_factor(H, 0.01, "t")
    damped = H + damp * torch.diag(H).mean() * torch.eye(64, dtype=H.dtype)
    assert torch.equal(upper, upper.triu()) and (torch.diag(upper) > 0).all()
    assert torch.allclose(upper.t() @ upper, torch.linalg.inv(damped), rtol=1e-8, atol=1e-10)


def test_lowest_count_mask_breaks_ties_like_a_stable_sort():
    scores = torch.randint(0, 5, (6, 50), generator=torch.Generator().manual_seed(0)).float()
    for k in (1, 17, 50):
        expected = torch.zeros_like(scores, dtype=torch.bool)
        expected.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :k], True)
        assert torch.equal(lowest_count_mask(scores, k), expected)
    assert not lowest_count_mask(scores, 0).any()


def test_block_triangle_gram_equals_the_full_product():
    for width in (100, 700, 1300):  # one block; 5 blocks; the most blocks, of unequal widths
        x = torch.randn(300, width, dtype=torch.float64)
        gram = torch.zeros(width, width, dtype=torch.float64)
        add_gram(gram, x)
        add_gram(gram, 2 * x)
        assert torch.allclose(gram, 5 * x.t() @ x)
        edges = gram_block_edges(width)
        assert edges[0] == 0 and edges[-1] == width and len(edges) - 1 == min(8, max(1, width // 128) if width >= 512 else 1)
        # every block below the diagonal is the one above mirrored, bit for bit; the diagonal blocks are
        # each one BLAS product, symmetric only to rounding (a blocked GEMM may sum (i, j) and (j, i) differently)
        for start in edges[1:-1]:
            assert torch.equal(gram[start:, :start], gram[:start, start:].t())
        assert torch.allclose(gram, gram.t(), rtol=0, atol=1e-9)


def test_statistics_pass_stops_once_every_input_is_seen(tiny_model_dir, data_root):
    """The statistics-only pass skips what follows the last hooked input (the MLP down-projection's
    own product) and yields the very statistics a full forward does."""
    lm = prunekit.load(tiny_model_dir("llama"))
    ids = torch.randint(0, 1000, (4, 16), generator=torch.Generator().manual_seed(0))
    inputs = _first_layer_inputs(lm, ids, 2, False)
    layer = lm.adapter.decoder_layers()[0]
    views = lm.adapter.linears(0)
    down = next(v for v in views if "down" in v.roles)
    calls = []
    handle = down.module.register_forward_hook(lambda *_: calls.append(1))
    try:
        with collect_statistics(views, frozenset({"gram", "sqnorm"})) as full:
            _run_layer(layer, inputs, None, 2)
        ran_full = len(calls)
        with collect_statistics(views, frozenset({"gram", "sqnorm"}), stop_layer=layer) as early:
            _run_layer(layer, inputs, None, 2)
    finally:
        handle.remove()
    assert ran_full == 2 and len(calls) == ran_full  # two batches; the early pass never ran down_proj
    assert full.keys() == early.keys()
    for group in full:
        assert torch.equal(full[group].gram, early[group].gram) and full[group].tokens == early[group].tokens


def test_error_report_is_opt_in(tiny_model_dir, data_root):
    """Wanda needs only ||X_j||: the Gram matrix (and its cost) comes only with --report-error."""
    from prunekit.methods import get_method
    from prunekit.sparsity import SparsityTarget

    wanda = get_method("wanda")
    assert wanda(SparsityTarget(0.5)).needs == frozenset({"sqnorm"})
    assert wanda(SparsityTarget(0.5), wanda.parse_options({"report_error": True})).needs == {"sqnorm", "gram"}
    lm = prunekit.load(tiny_model_dir("llama"))
    plain = prunekit.prune(lm, "wanda", sparsity=0.5, calibration=FAST, progress=False)
    assert all("recon_error" not in m for layer in plain["layers"] for m in layer["modules"].values())
    phases = plain["timings"]["phases"]
    assert {"embed", "statistics", "solve", "propagate"} <= set(phases) and "error_report" not in phases
    lm = prunekit.load(tiny_model_dir("llama"))
    reported = prunekit.prune(lm, "wanda", sparsity=0.5, calibration=FAST, progress=False, report_error=True)
    errors = [m["recon_error"] for layer in reported["layers"] for m in layer["modules"].values()]
    assert len(errors) == 14 and all(0 < e < 1.5 for e in errors)
    assert reported["timings"]["phases"]["error_report"] > 0
    # magnitude is data-free; asking for its error brings calibration data in
    lm = prunekit.load(tiny_model_dir("llama"))
    magnitude = prunekit.prune(lm, "magnitude", sparsity=0.5, calibration=FAST, progress=False, report_error=True)
    assert magnitude["calibration"] is not None
    assert all("recon_error" in m for m in magnitude["layers"][0]["modules"].values())


def test_sparsity_of_a_partial_prune_names_both_figures(tiny_model_dir, data_root):
    lm = prunekit.load(tiny_model_dir("llama"))
    record = prunekit.prune(lm, "magnitude", sparsity=0.5, layers="0", progress=False)
    sparsity = record["sparsity"]
    assert sparsity["pruned"] == pytest.approx(0.5, abs=1e-3) and sparsity["pruned_matrices"] == 7
    assert sparsity["overall"] == pytest.approx(0.25, abs=1e-3)  # two equal layers, one untouched


FREED_BUFFER_CHECK = """
import contextlib, resource, sys
from pathlib import Path
import torch
from prunekit.allocator import freed_memory_retained

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def resident_mb():
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

torch.set_num_threads(1)
before_pass = resident_mb()
with freed_memory_retained() if sys.argv[1] == "retained" else contextlib.nullcontext():
    for _ in range(2):  # the first ones grow the heap
        torch.empty(12_000_000).fill_(1.0)
    before = faults()
    for _ in range(10):
        torch.empty(12_000_000).fill_(1.0)
    fresh = faults() - before
    held = [torch.ones(12_000_000) for _ in range(4)]  # 192 MB, then freed: kept while the block runs
    del held
print(fresh, resident_mb() - before_pass)
"""


def _freed_buffer_check(mode: str) -> tuple[int, float]:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", FREED_BUFFER_CHECK, mode], capture_output=True, text=True, check=True)
    fresh, resident_growth = result.stdout.split()
    return int(fresh), float(resident_growth)


def test_freed_activation_buffers_are_reused_without_page_faults():
    """Inside freed_memory_retained a freed 48 MB activation buffer is reused in place: allocating it
    ten more times faults in almost no fresh pages, where glibc's default maps every buffer above its
    32 MB mmap ceiling afresh (~11,700 faults apiece); afterwards the kept memory is handed back.
    Measured in fresh processes: the heap a long test session leaves behind is not the state a
    prune starts from."""
    fresh, resident_growth = _freed_buffer_check("retained")
    default_fresh, _ = _freed_buffer_check("default")
    assert default_fresh > 50_000  # the check can fail: without the context every buffer faults
    assert fresh < 1000
    assert resident_growth < 50  # handed back at the end


def test_blocked_triangular_inverse_equals_the_solve():
    from prunekit.methods.sparsegpt import TRIANGULAR_INVERSE_SPLIT, lower_triangular_inverse

    for n in (7, TRIANGULAR_INVERSE_SPLIT + 300, 2 * TRIANGULAR_INVERSE_SPLIT + 1):  # direct; one split; two levels
        x = torch.randn(n + 50, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
        lower = torch.linalg.cholesky(x.t() @ x + torch.eye(n, dtype=torch.float64))
        inverse = lower_triangular_inverse(lower)
        assert torch.equal(inverse, inverse.tril())
        expected = torch.linalg.solve_triangular(lower, torch.eye(n, dtype=torch.float64), upper=False)
        assert torch.allclose(inverse, expected, rtol=1e-10, atol=1e-12)


def test_replaced_weights_leave_no_copy_resident(tmp_path):
    """Rewriting every decoder weight of a memory-mapped checkpoint costs no resident memory: the new
    weights take the place of the mapped pages, which are handed back (``release_pages``)."""
    from pathlib import Path

    import transformers as tf

    def resident_mb() -> float:
        status = Path("/proc/self/status").read_text().splitlines()
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

    config = tf.LlamaConfig(hidden_size=512, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=8,
                            num_key_value_heads=8, vocab_size=256)
    tf.LlamaForCausalLM(config).save_pretrained(tmp_path)  # 12.6 M decoder weights, 50 MB in float32
    model = tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    from prunekit.models.adapters import adapter_for

    adapter = adapter_for(model)
    views = [view for index in range(adapter.num_layers()) for view in adapter.linears(index)]
    from prunekit.allocator import file_backed

    assert all(file_backed(view.weight) for view in views) and not file_backed(torch.ones(10**6))
    for view in views:
        float(view.weight.sum())  # read: the mapped pages become resident, as in a forward
    before = resident_mb()
    expected = [view.weight * 0.5 for view in views]
    for view, weight in zip(views, expected):
        view.set_weight(weight)
    assert all(torch.equal(view.weight, weight) and not file_backed(view.weight) for view, weight in zip(views, expected))
    assert resident_mb() - before < 15  # without the hand-back the old pages stay mapped beside the new: +112 MB
