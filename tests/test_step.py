"""The training step (coun_fast.step): the eager step, the CUDA-graph step's checks (and, on a GPU,
its equality with the eager step), the fused optimizer and the profiler ranges fit writes."""

from __future__ import annotations

import copy

import pytest
import torch

from coun_fast.data.embedded import synthetic
from coun_fast.step import EagerStep, GraphStep, graph_unsupported, make_step
from coun_fast.train import PHASES_RECORDED, CrossEntropy, TrainConfig, fit, make_optimizer
from coun_fast.unlearn.coun import CoUnObjective
from nets import TinyNet


@pytest.fixture(scope="module")
def data():
    return synthetic(num_classes=4, train_per_class=24, test_per_class=4, image_size=8, seed=0)


def config(**changes) -> TrainConfig:
    base = TrainConfig(epochs=2, batch_size=16, lr=0.05, schedule="cosine", min_lr=1e-3, device="cpu",
                       progress=False, augment_backend="cpu")
    return base.replace(**changes)


class WithHook(CrossEntropy):
    def after_step(self, model, optimizer):
        pass


def test_cuda_graph_is_refused_on_the_cpu_before_any_work(data, tmp_path):
    with pytest.raises(ValueError, match="cuda_graph=True: CUDA-graph steps need a CUDA device"):
        fit(TinyNet(), data.train, CrossEntropy(), config(cuda_graph=True), run_dir=tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_step_hooks_keep_a_step_out_of_graphs():
    reason = graph_unsupported(WithHook(), torch.device("cuda"))
    assert reason is not None and "after_step" in reason
    assert graph_unsupported(CoUnObjective(1.0, 0.1), torch.device("cuda")) is None
    assert graph_unsupported(CrossEntropy(), torch.device("cuda")) is None


class SideBatches:
    """An objective that draws a side batch per step (as NegGrad+ does): a replay would repeat it."""

    recipe, extra_forward_views = "train", 0

    def __call__(self, model, batch):
        raise AssertionError("not called")


def test_only_objectives_that_declare_it_are_captured():
    reason = graph_unsupported(SideBatches(), torch.device("cuda"))
    assert reason is not None and "SideBatches does not declare graph_capturable" in reason
    from coun_fast.unlearn import METHODS  # noqa: F401  (every method registered)
    from coun_fast.unlearn.neggrad_plus import NegGradPlusObjective

    assert graph_unsupported(NegGradPlusObjective(1.0, None), torch.device("cuda")) is not None
    assert "adam" in graph_unsupported(CoUnObjective(1.0, 0.1), torch.device("cuda"), "adam")


def test_cuda_graph_defaults_to_wherever_the_step_allows_it(data, tmp_path):
    assert TrainConfig().cuda_graph is None
    fit(TinyNet(), data.train, CrossEntropy(), config(epochs=1))  # on the CPU: the eager step, no error
    with pytest.raises(ValueError, match="cuda_graph must be true, false or null"):
        TrainConfig(cuda_graph="yes")


def test_make_step_is_eager_unless_asked():
    model = TinyNet()
    step = make_step(model, CrossEntropy(), make_optimizer(model, config()), torch.autocast("cpu", enabled=False),
                     cuda_graph=False, device=torch.device("cpu"))
    assert type(step) is EagerStep
    with pytest.raises(ValueError, match="CUDA device"):
        make_step(model, CrossEntropy(), make_optimizer(model, config()), torch.autocast("cpu", enabled=False),
                  cuda_graph=True, device=torch.device("cpu"))


def test_the_optimizer_is_fused_sgd_where_torch_has_it():
    optimizer = make_optimizer(TinyNet(), config(lr=0.3, momentum=0.8, weight_decay=1e-3, nesterov=True))
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["fused"] or optimizer.defaults["foreach"]
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.3, 0.8, 1e-3, True)


def test_fit_writes_one_profiler_range_per_phase(data):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fit(TinyNet(), data.train, CoUnObjective(1.0, 0.1), config(epochs=1))
    names = {event.key for event in profile.key_averages()}
    assert set(PHASES_RECORDED) <= names


@pytest.mark.cuda
def test_graph_step_trains_like_the_eager_step(data):
    """Three epochs of CoUn with the step captured in a CUDA graph (the epochs' last, smaller batch
    runs eagerly on the same weights) end where the eager step ends."""
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.manual_seed(0)
    start = TinyNet()
    runs = {}
    for graph in (False, True):
        model = copy.deepcopy(start)
        result = fit(model, data.train, CoUnObjective(1.0, 0.1),
                     config(epochs=3, batch_size=20, device="cuda", augment_backend="torch", cuda_graph=graph))
        runs[graph] = (model, result)
    (eager, eager_result), (graphed, graphed_result) = runs[False], runs[True]
    for (name, a), b in zip(eager.state_dict().items(), graphed.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    for row_eager, row_graph in zip(eager_result.history, graphed_result.history):
        assert row_graph["loss"] == pytest.approx(row_eager["loss"], rel=1e-4)
        assert row_graph["lr"] == pytest.approx(row_eager["lr"])


@pytest.mark.cuda
def test_graph_step_replays_after_warm_up(data):
    model = TinyNet().cuda()
    optimizer = make_optimizer(model, config(device="cuda"))
    step = make_step(model, CrossEntropy(), optimizer, torch.autocast("cuda", dtype=torch.bfloat16),
                     cuda_graph=True, device=torch.device("cuda"))
    assert isinstance(step, GraphStep)
    from coun_fast.data.loader import AugmentedLoader

    loader = AugmentedLoader(data.train, "train", batch_size=16, device="cuda", backend="torch", drop_last=True)
    for batch in loader.iterate(0):
        step(batch)
    assert step.graph is not None and step.steps == len(loader)
