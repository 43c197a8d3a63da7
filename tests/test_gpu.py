"""On a CUDA GPU: training there works and agrees with the CPU. Skipped where there is none.

CI has no GPU, so these run only on a machine with one (``benchmarks/README.md`` says how
they were run on a lent H100). Each test trains on the GPU and checks what a user relies
on: the model learns, a model trained on the GPU gives the same answers on the CPU after
``save``/``load``, the encoder computes the same function on both devices, and a seeded
fit repeats.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_scvae import PyroSCVAE
from pyro_scvae.distributed import train_distributed
from pyro_scvae.simulate import simulate_counts
from pyro_scvae.training import TrainingConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

EPOCHS = 30


@pytest.fixture(scope="module")
def cells():
    adata = simulate_counts(
        n_cells=600, n_genes=50, n_classes=3, labelled_fraction=0.3, n_batches=2, seed=5
    )
    PyroSCVAE.setup_anndata(adata, labels_key="label", batch_key="batch")
    return adata


@pytest.fixture(scope="module")
def trained_on_gpu(cells):
    return PyroSCVAE(cells, seed=0).fit(epochs=EPOCHS, device="cuda", progress=False)


def test_training_on_the_gpu_learns_the_cell_types(trained_on_gpu, cells):
    assert next(trained_on_gpu.module.parameters()).device.type == "cuda"
    elbo = trained_on_gpu.history.elbo
    assert np.all(np.isfinite(elbo)) and elbo[-1] > elbo[0]
    unlabelled = cells.obs["label"].isna().to_numpy()
    calls = trained_on_gpu.predict()[unlabelled]
    truth = cells.obs["cell_type"].astype(str)[unlabelled]
    assert float((calls == truth).mean()) >= 0.9


def test_a_gpu_model_gives_the_same_answers_on_the_cpu(trained_on_gpu, cells, tmp_path):
    trained_on_gpu.save(tmp_path / "model")
    on_cpu = PyroSCVAE.load(tmp_path / "model", device="cpu")
    assert next(on_cpu.module.parameters()).device.type == "cpu"
    np.testing.assert_allclose(
        on_cpu.predict(cells, soft=True).to_numpy(),
        trained_on_gpu.predict(soft=True).to_numpy(),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        on_cpu.get_latent_representation(cells),
        trained_on_gpu.get_latent_representation(),
        atol=1e-4,
    )


def test_the_encoder_is_the_same_function_on_both_devices(trained_on_gpu, cells):
    module = trained_on_gpu.module
    x = torch.from_numpy(trained_on_gpu.data.counts[:200].toarray())  # [200, G]
    batch = torch.from_numpy(trained_on_gpu.data.batches[:200])  # [200]
    with torch.no_grad():
        z1_gpu, logits_gpu = module.encode(x.cuda(), batch.cuda())  # [200, d], [200, K]
        module.cpu()
        try:
            z1_cpu, logits_cpu = module.encode(x, batch)
        finally:
            module.cuda()
    torch.testing.assert_close(z1_gpu.cpu(), z1_cpu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits_gpu.cpu(), logits_cpu, rtol=1e-4, atol=1e-5)


def test_a_seeded_gpu_fit_repeats(cells):
    first, second = (
        PyroSCVAE(cells, seed=3).fit(epochs=5, device="cuda", progress=False) for _ in range(2)
    )
    # cuBLAS and scatter-adds need not sum in the same order twice; the fits agree closely.
    np.testing.assert_allclose(first.history.elbo, second.history.elbo, rtol=1e-4)
    np.testing.assert_allclose(
        first.predict(soft=True).to_numpy(), second.predict(soft=True).to_numpy(), atol=1e-3
    )


def test_lightning_trains_on_one_gpu(cells):
    model = PyroSCVAE(cells, seed=0)
    config = TrainingConfig(epochs=3, batch_size=128, seed=0, progress=False)
    run = train_distributed(model.module, model.data, config, accelerator="gpu", devices=1)
    assert run.world_size == 1
    assert np.all(np.isfinite(run.history.elbo)) and run.history.elbo[-1] > run.history.elbo[0]
