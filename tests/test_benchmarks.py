"""The benchmark harness (benchmarks/) runs end to end on a tiny subset, so it cannot rot."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_scvae import load_pbmc68k_counts
from pyro_scvae.distributions import log_zinb_sparse

# benchmarks/ is not an installed package: import it from the repository root
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import methods, run
from benchmarks.metrics import ece_floor, expected_calibration_error, score
from benchmarks.tasks import TASKS, TASKS_NEEDING_DATA, build_task, data_available
from benchmarks.tasks import load_pbmc68k_counts as benchmark_loader

REPO = Path(__file__).resolve().parents[1]
METHODS = ["logreg", "knn", "pyro_scvae", "pyro_scvae_cli"]


@pytest.mark.slow
def test_quick_mode_runs_on_tiny_t4(tmp_path):
    """Quick mode's code path (child processes, two at a time, metrics, throughput, report)
    on 200 cells."""
    argv = ["--quick", "--tasks", "T4", "--methods", *METHODS, "--seeds", "0", "--jobs", "2"]
    argv += ["--max-cells", "200", "--epochs", "2", "--out", str(tmp_path)]
    argv += ["--throughput-reps", "1", "--throughput-epochs", "2"]
    scaling = REPO / "benchmarks" / "scaling.json"  # results.md takes its scaling table
    shutil.copy(scaling, tmp_path / "scaling.json")
    run.main(argv)

    markdown = (tmp_path / "results.md").read_text(encoding="utf-8")
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    runs = results["runs"]
    assert {(r["task"], r["method"]) for r in runs} == {("T4", m) for m in METHODS}
    for record in runs:
        assert record["status"] == "ok", record.get("traceback")
        for key in ("accuracy", "macro_f1", "weighted_f1", "ece", *record["per_class_f1"]):
            value = record.get(key, record["per_class_f1"].get(key))
            assert 0.0 <= value <= 1.0, (record["method"], key, value)
        assert record["train_s"] > 0 and record["predict_s"] >= 0 and record["peak_rss_mb"] > 0
        assert f"| T4 | {record['method']} |" in markdown
    logreg = next(r for r in runs if r["method"] == "logreg")
    assert logreg["accuracy"] > 0.6  # 10 classes, the largest is about a third of the cells
    assert {r["method"] for r in results["throughput"] if r["status"] == "ok"} == {
        "pyro_scvae",
        "pyro_scvae_jit",
        "scanvi",
    }
    assert "- training throughput ≥ 2× SCANVI's at batch size 128:" in markdown
    for method in ("pyro_scvae_cli", "pyro_scvae"):  # each path of the package, checked
        assert f"- **{method}**" in markdown
    assert "  - macro-F1 ≥ logreg on every task: **" in markdown
    cli = next(r for r in runs if r["method"] == "pyro_scvae_cli")
    assert cli["info"]["epochs"] >= 1 and "pyro_scvae.fit" in cli["info"]["command"]
    assert results["meta"]["machine"]["logical_cores"] >= 1
    assert results["meta"]["accelerator"] == "cpu"
    assert results["meta"]["jobs"] == 2 and "in a fresh child process, 2 at a time;" in markdown
    assert "- SCANVI and pyro_scvae trained on the CPU" in markdown
    assert "## Throughput" in markdown and "## Targets" in markdown
    cases = json.loads(scaling.read_text())["cases"]
    assert "## Scaling" in markdown and "| cells | mode | time per epoch (s) |" in markdown
    for case in cases:
        assert f"| {case['cells']:,} | {case['mode']} | {case['epoch_seconds']:.0f} |" in markdown


def test_accelerator_reaches_scanvi_and_pyro_scvae(monkeypatch, capsys):
    """``--accelerator gpu`` moves both neural methods to the GPU, or refuses without one."""
    monkeypatch.delenv(methods.ACCELERATOR_ENV, raising=False)
    assert methods._scvi_train_kwargs(7, 100)["accelerator"] == "cpu"
    assert methods.pyro_device() == "cpu"
    monkeypatch.setenv(methods.ACCELERATOR_ENV, "gpu")
    assert methods._scvi_train_kwargs(7, 100) == {
        "max_epochs": 7,
        "accelerator": "gpu",
        "enable_progress_bar": False,
    }
    assert methods.pyro_device() == "cuda"
    if not __import__("torch").cuda.is_available():
        with pytest.raises(SystemExit, match="sees no CUDA GPU"):
            run.main(["--accelerator", "gpu", "--tasks", "T4", "--methods", "logreg"])


def test_heldout_curve_reports_elbo_and_f1():
    from benchmarks.heldout_curve import curve

    records = curve("T4", 0, None, every=1, epochs=3)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    elbo = [r["heldout_elbo_per_cell"] for r in records]
    assert all(np.isfinite(elbo)) and elbo[-1] > elbo[0]  # it trains
    assert all(0.0 <= r["query_macro_f1"] <= 1.0 for r in records)


def test_metrics_on_known_values():
    proba = pd.DataFrame([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.1, 0.1, 0.8]], columns=list("abz"))
    scores = score(["a", "a", "b"], proba)
    assert scores["accuracy"] == pytest.approx(1 / 3)
    assert scores["per_class_f1"] == pytest.approx({"a": 2 / 3, "b": 0.0})  # "z" is an error
    assert scores["macro_f1"] == pytest.approx(1 / 3)
    assert expected_calibration_error(np.ones(4), np.zeros(4)) == pytest.approx(1.0)
    assert expected_calibration_error(np.full(4, 0.5), np.array([1, 0, 1, 0])) == 0.0


def test_ece_floor_is_the_sampling_noise_of_a_calibrated_predictor():
    # one bin at 0.8: E|accuracy − 0.8| for n cells is about sqrt(0.16 / n) · sqrt(2 / π)
    for n in (100, 1600):
        expected = np.sqrt(0.16 / n) * np.sqrt(2 / np.pi)
        assert ece_floor(np.full(n, 0.8)) == pytest.approx(expected, rel=0.15)
    assert ece_floor(np.ones(50)) == 0.0  # certain and calibrated: no noise
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.5, 1.0, 300)
    observed = [
        expected_calibration_error(confidence, rng.random(300) < confidence) for _ in range(100)
    ]
    assert np.mean(observed) == pytest.approx(ece_floor(confidence), rel=0.15)
    proba = pd.DataFrame({"a": confidence, "b": 1 - confidence})
    assert score(["a"] * 300, proba)["ece_floor"] == pytest.approx(ece_floor(confidence))


def test_t4_counts_match_the_package_loader():
    ours, theirs = benchmark_loader(), load_pbmc68k_counts()
    assert ours.shape == theirs.shape == (700, 765)
    assert (ours.X != theirs.X).nnz == 0
    assert list(ours.var_names) == list(theirs.var_names)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_structure(name):
    if name in TASKS_NEEDING_DATA and not data_available():
        pytest.skip("../shared/data is absent (the shared data folder is not beside the repo)")
    adata = build_task(name, seed=0).adata
    counts = adata.X.data
    assert np.all(counts == np.round(counts)) and counts.min() >= 0
    is_query = adata.obs["is_query"].to_numpy(dtype=bool)
    assert 0 < is_query.sum() < adata.n_obs
    train_labels = set(adata.obs["label"][~is_query])
    query_labels = set(adata.obs["label"][is_query])
    assert query_labels <= train_labels
    if name.startswith("T1"):
        assert adata.obs.loc[is_query, "batch"].nunique() == 1
    if name == "T2":
        assert train_labels == {"B", "T_CD4", "T_CD8", "Mono", "NK"}
        assert set(adata.obs["batch"]) == {"scMINER", "symphony"}
    if name == "T3":
        assert "Unknown" in query_labels
    if name in ("T3s", "T5s"):  # ten labelled cells of every type, every other cell a query
        assert (adata.obs["label"][~is_query].value_counts() == 10).all()
        assert len(train_labels) == adata.obs["label"].nunique()
    if name == "T6":
        assert set(adata.obs.loc[is_query, "batch"]) == {"smartseq2"}
        assert set(adata.obs.loc[~is_query, "batch"]) == {"indrop"}
    if name == "T7":
        assert adata.obs["batch"].nunique() == 10 and len(train_labels) == 8
    if name == "T8":  # a fifth of each sorted population is annotated
        assert adata.n_vars == 8846 and len(train_labels) == 7
        assert (adata.obs["label"][is_query].value_counts() == 100).all()


def test_zinb_ab_times_both_variants_and_restores_the_working_tree_s(capsys):
    """benchmarks/zinb_ab.py on T4 (embedded data): a table row with two positive timings."""
    from benchmarks import zinb_ab
    from pyro_scvae import distributions

    assert zinb_ab.reference_zinb("scvi") == (distributions.log_zinb_sparse, 0.0)
    before = distributions.log_zinb_sparse, distributions.SPARSE_DENSITY
    zinb_ab.main(["--tasks", "T4", "--reps", "1", "--steps", "2", "--reference", "scvi"])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    _, task, reference_ms, new_ms, speed_up, _ = row.split("|")
    assert task.strip() == "T4"
    assert float(reference_ms) > 0 and float(new_ms) > 0
    assert float(speed_up.strip(" ×")) == pytest.approx(float(reference_ms) / float(new_ms), 0.01)
    # The module's own ZINB is back in place afterwards.
    assert (distributions.log_zinb_sparse, distributions.SPARSE_DENSITY) == before


def test_zinb_ab_loads_an_earlier_commit_s_zinb():
    """The reference of a commit is that commit's module, loaded from git."""
    from benchmarks import zinb_ab
    from pyro_scvae import distributions

    introduced = "4ee5ea1"  # the commit that introduced the sparse path
    known = subprocess.run(["git", "cat-file", "-e", introduced], cwd=REPO, capture_output=True)
    if known.returncode != 0:
        pytest.skip(f"commit {introduced} is not in this clone's history (a shallow clone?)")
    function, density = zinb_ab.reference_zinb(introduced)
    assert callable(function) and function is not distributions.log_zinb_sparse
    assert density == 0.2
    mu, theta, logits = torch.rand(4, 6) + 0.1, torch.rand(6) + 0.5, torch.randn(4, 6)
    x = torch.poisson(mu * 2) * (torch.rand(4, 6) < 0.3)
    torch.testing.assert_close(
        function(x, mu, theta, logits), log_zinb_sparse(x, mu, theta, logits)
    )


def test_step_times_variants_make_the_same_step_and_all_get_timed():
    """The three steps of benchmarks/step_times.py are one update; the script times each."""
    import copy

    import pyro

    from benchmarks import step_times
    from pyro_scvae import PyroSCVAE
    from pyro_scvae.simulate import simulate_counts

    adata = simulate_counts(n_cells=80, n_genes=20, n_classes=3, labelled_fraction=0.5, seed=2)
    PyroSCVAE.setup_anndata(adata, labels_key="label")
    model = PyroSCVAE(adata, seed=0, n_latent=4, n_hidden=16)
    data = model.data
    for labelled in (False, True):
        cells = np.flatnonzero((data.labels >= 0) == labelled)[:16]
        tensors = data.tensors(cells, "cpu", labelled)
        losses, weights = [], []
        for variant in step_times.VARIANTS:
            vae = copy.deepcopy(model.module).train()
            pyro.set_rng_seed(0)
            with (
                pyro.get_param_store().scope(),
                pyro.validation_enabled(False),
                step_times.registration(variant != "no_registration"),
            ):
                losses.append(float(step_times.make_stepper(variant, vae).step(*tensors)))
            weights.append(torch.cat([p.detach().reshape(-1) for p in vae.parameters()]))
        assert losses[1:] == pytest.approx(losses[:1] * 2, rel=1e-6)
        for other in weights[1:]:
            torch.testing.assert_close(other, weights[0])
        assert not torch.equal(
            weights[0], torch.cat([p.detach().reshape(-1) for p in model.module.parameters()])
        )  # the step did update the weights
    assert pyro.module.__module__ == "pyro.primitives"  # restored after no_registration

    rows = step_times.main(
        ["--task", "T4", "--max-cells", "200", "--batch-sizes", "32", "--steps", "1", "--reps", "1"]
    )
    assert [(r["batch_size"], r["labelled"]) for r in rows] == [(32, False), (32, True)]
    assert all(r[v] > 0 for r in rows for v in (*step_times.VARIANTS, "assembly"))


def test_prior_density_of_novelty_study_matches_plain_monte_carlo():
    """The importance-sampled log p(z₁) of benchmarks/novelty.py against z₂ drawn from p(z₂)."""
    from torch.distributions import Normal

    from benchmarks.novelty import prior_log_density
    from pyro_scvae.model import HierarchicalVAE, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(n_genes=5, n_classes=3, n_latent=2)
    module = HierarchicalVAE(config, torch.zeros(1), torch.ones(1)).eval()
    latent = torch.randn(4, 2).numpy()
    estimate = prior_log_density(module, latent, draws=20_000)
    z2 = torch.randn(200_000, 1, 1, 2)  # [S, 1, 1, d] from p(z₂)
    with torch.no_grad():
        loc, scale = module.z1_decoder(z2, torch.eye(3).unsqueeze(1))  # [S, K, 1, d]
        log_p = Normal(loc, scale).log_prob(torch.as_tensor(latent)).sum(-1)  # [S, K, cells]
        naive = torch.logsumexp(log_p, 0) - np.log(len(z2))  # log p(z₁ | y), [K, cells]
        naive = torch.logsumexp(naive + np.log(1 / 3), 0).numpy()
    np.testing.assert_allclose(estimate, naive, atol=0.05)


def test_reconstruction_likelihood_is_lower_for_cells_unlike_the_training_cells(simulated):
    """benchmarks/novelty.py's likelihood score: a cell whose counts are moved to other
    genes (a profile no type has) is explained worse, per count, than the real cells."""
    from benchmarks.novelty import reconstruction_log_likelihood
    from pyro_scvae import PyroSCVAE

    PyroSCVAE.setup_anndata(simulated, labels_key="label", batch_key="batch")
    model = PyroSCVAE(simulated, n_latent=4, seed=0).fit(epochs=30, progress=False, threads=1)
    cells = simulated[:100].copy()
    real, totals = reconstruction_log_likelihood(model, cells)
    counts = np.asarray(cells.X.todense() if hasattr(cells.X, "todense") else cells.X)
    cells.X = counts[:, np.random.default_rng(0).permutation(counts.shape[1])]
    moved, moved_totals = reconstruction_log_likelihood(model, cells)
    np.testing.assert_array_equal(totals, moved_totals)
    assert np.median(moved / moved_totals) < np.median(real / totals)
    assert (moved < real).mean() > 0.9


def test_cli_study_reads_epochs_as_a_share_of_the_default():
    from benchmarks.cli_study import epochs_option
    from pyro_scvae.config import default_epochs

    assert epochs_option("EPOCHS/3", 743) == str(round(default_epochs(743) / 3))
    assert epochs_option("EPOCHS/1000", 100) == "1"  # never 0 epochs
    assert epochs_option("--ensemble", 743) == "--ensemble"


def test_thread_reports_compare_auto_with_the_best_and_count_paired_wins():
    """threads.py: auto against the best median; threads_work.py: 1/2 ratio and pairs won."""
    from benchmarks import threads, threads_work

    def fit(condition, variant, seconds, used):
        return {
            "status": "ok",
            "task": "T4",
            "condition": condition,
            "variant": variant,
            "median_epoch_seconds": seconds,
            "threads": {"used": used},
            "load_before": 0.5,
            "load_after": 1.5,
        }

    records = [fit("alone", "1", 0.2, [1]), fit("alone", "2", 0.1, [2])]
    records += [fit("alone", "auto", 0.15, [2]), fit("alone", "auto", 0.11, [2, 1])]
    (row,) = threads.summarise(records)
    assert row["seconds_per_epoch"] == {"1": 0.2, "2": 0.1, "auto": pytest.approx(0.13)}
    assert row["auto_over_best"] == pytest.approx(1.3)
    assert row["auto_threads"] == [1, 2]
    assert (row["load_min"], row["load_max"]) == (0.5, 1.5)

    pairs = [(0.4, 0.3), (0.2, 0.25), (0.5, 0.1)]  # (1 thread, 2 threads) side by side
    work = [
        {"task": "T4", "bs": 64, "t": t, "s": s, "genes": 765}
        for one, two in pairs
        for t, s in (("1", one), ("2", two))
    ]
    header, rule, line = threads_work.table(work)
    assert line == "| T4 | 64 × 765 = 48,960 | 0.400 | 0.250 | 1.60× | 2 of 3 |"


def test_classifier_phase_trains_the_classifier_alone(simulated):
    """The study's phase changes the classifier's weights and no other (the encoder frozen)."""
    from benchmarks.classifier_phase import classifier_phase, labelled_arrays
    from pyro_scvae import PyroSCVAE

    PyroSCVAE.setup_anndata(simulated, labels_key="label", batch_key="batch")
    model = PyroSCVAE(simulated, n_latent=4, seed=0).fit(epochs=2, progress=False, threads=1)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    loc, scale, labels, cells = labelled_arrays(model)
    assert loc.shape == scale.shape == (len(cells), 4) and (labels >= 0).all()
    classifier_phase(model, epochs=3, lr=1e-2, batch_size=64, seed=0)
    after = model.module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("classifier.") for k in changed)


def test_mapping_report_pairs_settings_by_fold_and_seed():
    from benchmarks.mapping import paired, render

    rows = []
    runs = (("T1a", 0, 0.80, 0.82), ("T1a", 1, 0.70, 0.69), ("T1b", 0, 0.9, 0.95))
    for fold, seed, reference, tuned in runs:
        for setting, value in (("reference", reference), ("fine_tuned", tuned)):
            rows.append(
                {
                    "fold": fold,
                    "seed": seed,
                    "setting": setting,
                    "macro_f1": value,
                    "accuracy": value,
                    "batch_entropy": 1 - value,
                    "seconds": 1.0,
                }
            )
    diff, up, down = paired(rows, "fine_tuned", "reference", "macro_f1")
    assert diff == pytest.approx((0.02 - 0.01 + 0.05) / 3) and (up, down) == (2, 1)
    report = render(rows, "cmd")
    assert "| T1a | fine_tuned | 2 | 0.755 ± 0.092 |" in report
    assert "| all | reference | 3 | 0.800 ± 0.100 |" in report
    assert "- fine_tuned − reference, macro_f1: +0.020 (2 / 1)" in report
    assert "transductive" not in report  # a setting that did not run is not paired


def test_ilisi_is_one_for_mixed_batches_and_zero_for_separate_ones():
    from benchmarks.mapping import batch_entropy, ilisi

    rng = np.random.default_rng(0)
    latent = rng.normal(size=(600, 5))
    batches = np.repeat(["a", "b", "c"], 200)
    mixed = ilisi(latent, batches)
    apart = latent + np.repeat(np.eye(5)[:3] * 100, 200, axis=0)  # each batch far away
    assert mixed > 0.75 and ilisi(apart, batches) < 0.01  # random draws: not exactly 1
    assert batch_entropy(latent, batches) > 0.9 and batch_entropy(apart, batches) < 0.01


def test_batch_held_out_takes_the_smallest_batch_but_leaves_every_class_a_label():
    from benchmarks.calibration_study import batch_held_out

    labels = np.array([0, 0, 1, 1, 2, -1, 0, 1, 2, 2])
    batches = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])  # batch 1: 4 labelled, batch 0: 5
    assert batch_held_out(labels, batches, 3).tolist() == [6, 7, 8, 9]
    only_in_small = np.array([0, 0, 1, 1, 1, -1, 2, 2, 0, 1])  # class 2 only in batch 1
    assert batch_held_out(only_in_small, batches, 3).tolist() == [7, 8, 9]


def test_novelty_threshold_rules_and_the_oracle_bound(tmp_path):
    """novelty_thresholds.py: the oracle flags 1 − q of the query's known cells, where the
    reference's quantile flags more of them when the query's known cells are broader."""
    from benchmarks.novelty_thresholds import evaluate

    rng = np.random.default_rng(0)
    reference = np.r_[rng.normal(0, 1, (200, 3)), rng.normal(6, 1, (200, 3))]
    labels = np.repeat([0, 1], 200)
    known = np.r_[rng.normal(0, 1.3, (200, 3)), rng.normal(6, 1.3, (200, 3))]  # broader
    novel = rng.normal(3, 1, (100, 3))  # between the two types
    np.savez(
        tmp_path / "run.npz",
        latent=np.r_[known, novel],
        novel=np.r_[np.zeros(400, bool), np.ones(100, bool)],
        reference_latent=reference,
        reference_labels=labels,
    )
    rows = {r["rule"]: r for r in evaluate(tmp_path / "run.npz", [0.95])}
    assert set(rows) == {"global", "per_type", "oracle"}
    assert rows["oracle"]["known_flagged"] == pytest.approx(0.05, abs=0.003)
    assert rows["global"]["known_flagged"] > 0.05  # the query's known cells are broader
    assert 0 < rows["oracle"]["novel_flagged"] < 1


def test_novel_flagged_at_five_percent_false_flags_reads_the_roc_curve():
    from benchmarks.novelty_combined import flagged_at

    rng = np.random.default_rng(0)
    known = rng.normal(size=10_000)
    novel = np.r_[np.zeros(10_000, bool), np.ones(10_000, bool)]
    apart = np.r_[known, known + 100]
    alike = np.r_[known, rng.normal(size=10_000)]
    assert flagged_at(novel, apart) == 1.0
    assert flagged_at(novel, alike) == pytest.approx(0.05, abs=0.01)


def test_network_features_end_in_the_classifiers_own_logits(simulated):
    """benchmarks/novelty.py reads three layers; the last is q(y | z₁)'s logits, as predict's."""
    from benchmarks.novelty import network_features
    from pyro_scvae import PyroSCVAE

    PyroSCVAE.setup_anndata(simulated, labels_key="label", batch_key="batch")
    model = PyroSCVAE(simulated, n_latent=4, n_hidden=16, seed=0)
    model.fit(epochs=2, progress=False, threads=1)
    features = network_features(model, simulated[:50])
    assert features["encoder_hidden"].shape == features["classifier_hidden"].shape == (50, 16)
    assert (features["classifier_hidden"] >= 0).all()  # after the ReLU
    logits = model._encode(*model._query_arrays(simulated[:50]))[1]
    np.testing.assert_allclose(features["logits"], logits, rtol=1e-5, atol=1e-5)


def test_mapping_phases_summary_pairs_each_schedule_with_its_reference(tmp_path, capsys):
    from benchmarks import mapping_phases

    rows = [
        {
            "fold": "T1a",
            "seed": 0,
            "setting": "reference",
            "macro_f1": 0.8,
            "batch_entropy": 0.8,
            "ilisi": 0.6,
        },
        {
            "fold": "T1a",
            "seed": 0,
            "setting": "both",
            "macro_f1": 0.9,
            "batch_entropy": 0.7,
            "ilisi": 0.5,
        },
        {
            "fold": "T1b",
            "seed": 0,
            "setting": "reference",
            "macro_f1": 0.6,
            "batch_entropy": 0.6,
            "ilisi": 0.4,
        },
        {
            "fold": "T1b",
            "seed": 0,
            "setting": "both",
            "macro_f1": 0.6,
            "batch_entropy": 0.8,
            "ilisi": 0.5,
        },
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mapping_phases.summary(path)
    table = capsys.readouterr().out
    # both − reference: F1 +0.1 and 0, entropy −0.1 and +0.2, iLISI −0.1 and +0.1
    assert "| both | 2 | 0.750 (+0.050, 1/2) | 0.750 (+0.050, 1/2) | 0.500 (+0.000, 1/2) |" in table
    assert set(mapping_phases.VARIANTS["dec1_then_both1"]) == {(1.0, "decoder"), (1.0, "both")}


def test_gene_panels_compares_four_panels_on_one_task(capsys, monkeypatch):
    """benchmarks/gene_panels.py on T4: markers join the 300 variable genes, or fill half."""
    from benchmarks import gene_panels

    monkeypatch.setattr(sys, "argv", ["gene_panels.py", "--tasks", "T4@300", "--seeds", "0"])
    gene_panels.main()
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["T4", "300", "0"]
    f1s = [float(c.split()[0]) for c in cells[3:]]
    sizes = [int(c.split("(")[1].rstrip(")")) for c in cells[3:]]
    assert sizes[0] == 765 and sizes[1] == sizes[3] == 300 and sizes[2] > 300
    assert all(0.3 < f1 <= 1.0 for f1 in f1s)


def test_inductive_study_annotates_the_query_with_a_model_that_never_saw_it(capsys, monkeypatch):
    """benchmarks/inductive_study.py on T4: reference and query in two files, --query."""
    from benchmarks import inductive_study
    from benchmarks.tasks import build_task

    argv = ["inductive_study.py", "--tasks", "T4", "--seeds", "0", "--options=--epochs,3"]
    monkeypatch.setattr(sys, "argv", argv)
    inductive_study.main()
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    obs = build_task("T4", 0).adata.obs
    query = obs["is_query"].to_numpy(dtype=bool)
    assert row["task"] == "T4" and row["query_cells"] == query.sum() < len(obs)
    assert set(row["per_class_f1"]) == set(obs.loc[query, "label"].astype(str))
    assert 0.0 < row["macro_f1"] <= 1.0 and 0.0 < row["accuracy"] <= 1.0


def test_merge_keeps_every_parts_tasks_and_their_descriptions():
    from benchmarks.merge import merge

    def part(task, method, f1=0.5):
        meta = {"command": f"run {task}", "seeds": [0], "tasks": [task], "methods": [method]}
        meta |= {"task_descriptions": {task: f"about {task}"}, "throughput": None}
        run = {"task": task, "method": method, "seed": 0, "macro_f1": f1}
        return {"meta": meta, "runs": [run], "throughput": []}

    merged = merge([part("T7", "logreg"), part("T8", "pyro_scvae_cli")])
    assert merged["meta"]["tasks"] == ["T7", "T8"]
    assert merged["meta"]["task_descriptions"] == {"T7": "about T7", "T8": "about T8"}
    assert merged["meta"]["command"] == "run T7 ; run T8" and len(merged["runs"]) == 2
    # A later part's rerun of the same (task, method, seed) replaces the earlier run.
    merged = merge([part("T7", "logreg", 0.5), part("T8", "logreg"), part("T7", "logreg", 0.9)])
    assert [(r["task"], r["macro_f1"]) for r in merged["runs"]] == [("T7", 0.9), ("T8", 0.5)]


def test_label_shift_em_recovers_the_query_class_shares():
    from benchmarks.cli_calibration import label_shift

    # Two classes, calibrated posteriors under equal shares; the query holds 80 % class 0.
    rng = np.random.default_rng(0)
    classes = (rng.random(4000) < 0.2).astype(int)
    x = rng.normal(loc=classes * 1.5, scale=1.0)  # overlapping: the shift moves calls
    odds = np.exp(1.5 * x - 1.125)  # p(x | 1) / p(x | 0) for unit-variance normals
    uniform = np.stack([1 / (1 + odds), odds / (1 + odds)], axis=1)
    shifted = label_shift(uniform)
    assert abs(shifted.mean(axis=0)[0] - 0.8) < 0.03
    # Re-weighting by the recovered shares calls more cells class 0, and more rightly.
    assert (shifted.argmax(1) == 0).sum() > (uniform.argmax(1) == 0).sum()
    assert (shifted.argmax(1) == classes).mean() > (uniform.argmax(1) == classes).mean()
