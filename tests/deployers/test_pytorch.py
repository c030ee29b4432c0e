"""PyTorch through the real path: state dict + architecture, torch.export, TorchScript."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.heavy
torch = pytest.importorskip("torch")

from clipper_core.deployers import deploy_pytorch_model  # noqa: E402
from tests.deployers.conftest import endpoint, link, metadata, serve, specs  # noqa: E402
from tests.server.conftest import Running  # noqa: E402


class Scorer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(4, 8)
        self.norm = torch.nn.BatchNorm1d(8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.out(torch.relu(self.norm(self.hidden(x)))), dim=1)


def trained() -> Scorer:
    torch.manual_seed(0)
    gen = np.random.default_rng(3)
    x = torch.from_numpy(gen.normal(size=(256, 4)).astype(np.float32))
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    model = Scorer()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.nll_loss(torch.log(model(x)), y)
        loss.backward()
        opt.step()
    return model.eval()


QUERIES = np.random.default_rng(9).normal(size=(20, 4))


def expected(model: torch.nn.Module) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(QUERIES.astype(np.float32))).numpy()


@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")
@pytest.mark.parametrize("save_format", ["state_dict", "export", "torchscript"])
def test_pytorch_formats(server: Running, save_format: str) -> None:
    model = trained()
    name = f"torch-{save_format.replace('_', '-')}"
    endpoint(server, name)
    deploy_pytorch_model(
        server.conn,
        name,
        1,
        "doubles",
        model=model,
        save_format=save_format,
        example_input=torch.zeros(2, 4) if save_format == "export" else None,
    )
    link(server, name)
    got = np.asarray(serve(server, name, QUERIES), dtype=np.float32)
    np.testing.assert_allclose(got, expected(model), rtol=1e-6, atol=1e-7)
    meta = metadata(server, name)
    assert meta.platform == "pytorch_libtorch"
    assert specs(meta.inputs) == [("input", "FP64", (-1, 4))]
    assert specs(meta.outputs) == [("output", "FP32", (-1, 3))]


def test_pytorch_func(server: Running) -> None:
    model = trained()

    def argmax(module, inputs):
        with torch.inference_mode():
            out = module(torch.from_numpy(np.stack(inputs).astype(np.float32)))
        return out.argmax(1).tolist()

    endpoint(server, "torch-func")
    deploy_pytorch_model(server.conn, "torch-func", 1, "doubles", argmax, model)
    link(server, "torch-func")
    assert serve(server, "torch-func", QUERIES) == expected(model).argmax(1).tolist()
