"""Federated pieces: client partitions, the BatchNorm-aware wire format with Flower's own FedAvg
aggregation, and the deployment ClientApp (a home's own cache) called with a real Message.

The full simulation (Ray, several rounds) runs in test_compare_run.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from claudio_daemon.features.frontend import FrontEndConfig
from training.cache import Cache, precache
from training.compare.federated import (
    ROLL_CALL,
    FedConfig,
    FederatedError,
    client_app,
    from_wire,
    partition_indices,
    to_wire,
)
from training.compare.toy import make_toy_esc50
from training.datasets import load_dataset
from training.models import create_model


def _targets(n: int, classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]


def test_iid_partition_is_an_even_deterministic_split() -> None:
    idx = np.arange(10, 110)
    parts = partition_indices(idx, _targets(200, 5), clients=7, mode="iid", seed=3)
    sizes = [len(p) for p in parts]
    assert len(parts) == 7 and max(sizes) - min(sizes) <= 1
    assert sorted(np.concatenate(parts).tolist()) == idx.tolist()
    again = partition_indices(idx, _targets(200, 5), clients=7, mode="iid", seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def _mean_label_entropy(parts: list[np.ndarray], targets: np.ndarray) -> float:
    out = []
    for p in parts:
        counts = targets[p].sum(0)
        q = counts[counts > 0] / counts.sum()
        out.append(float(-(q * np.log(q)).sum()))
    return float(np.mean(out))


def test_dirichlet_partition_is_skewed_by_class_and_leaves_nobody_empty() -> None:
    targets = _targets(400, 10, seed=1)
    idx = np.arange(400)
    iid = partition_indices(idx, targets, 8, "iid", seed=0)
    skew = partition_indices(idx, targets, 8, "dirichlet", alpha=0.1, seed=0)
    assert sorted(np.concatenate(skew).tolist()) == idx.tolist()
    assert all(len(p) > 0 for p in skew)
    assert _mean_label_entropy(skew, targets) < _mean_label_entropy(iid, targets) - 0.5


def test_partition_refuses_impossible_requests() -> None:
    with pytest.raises(ValueError, match="cannot feed"):
        partition_indices(np.arange(3), _targets(3, 2), clients=5)
    with pytest.raises(ValueError, match="partition"):
        partition_indices(np.arange(10), _targets(10, 2), clients=2, mode="shards")
    with pytest.raises(ValueError, match="clients_per_round"):
        FedConfig(clients=4, clients_per_round=5).validate()
    with pytest.raises(ValueError, match="bn"):
        FedConfig(bn="mean").validate()


def _bn_model(seed: int, data: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("simple_cnn", 3)
    bn = model.features[0][1]
    # Population statistics of this client's activations, as if BN had seen all of it.
    bn.running_mean.copy_(data.mean(0))
    bn.running_var.copy_(data.var(0, unbiased=False))
    bn.num_batches_tracked.fill_(17 + seed)
    return model


def test_pooled_batchnorm_statistics_equal_the_union_of_the_clients() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 32, generator=g) * 2.0 + 1.0  # client A: 30 clips
    b = torch.randn(10, 32, generator=g) * 0.5 - 3.0  # client B: 10 clips, other home
    models = [_bn_model(0, a), _bn_model(1, b)]
    wires = [to_wire(m) for m in models]
    assert not any(k.endswith("num_batches_tracked") for k in wires[0])
    assert not any(k.endswith("running_var") for k in wires[0])
    replies = [
        RecordDict(
            {
                "arrays": ArrayRecord({k: torch.from_numpy(v) for k, v in w.items()}),
                "metrics": MetricRecord({"num-examples": n}),
            }
        )
        for w, n in zip(wires, (30, 10), strict=True)
    ]
    averaged = aggregate_arrayrecords(replies, "num-examples")  # Flower's FedAvg arithmetic
    server = create_model("simple_cnn", 3)
    from_wire(server, {k: v.numpy() for k, v in averaged.items()})
    bn = server.features[0][1]
    union = torch.cat([a, b])
    torch.testing.assert_close(bn.running_mean, union.mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bn.running_var, union.var(0, unbiased=False), rtol=1e-4, atol=1e-4)
    # A naive average of the variances would miss the spread between the two homes.
    naive = 0.75 * a.var(0, unbiased=False) + 0.25 * b.var(0, unbiased=False)
    assert float((bn.running_var - naive).min()) > 1.0
    # Ordinary weights are the sample-weighted mean.
    w0 = models[0].fc.weight.detach()
    w1 = models[1].fc.weight.detach()
    torch.testing.assert_close(server.fc.weight.detach(), 0.75 * w0 + 0.25 * w1)


def test_wire_weights_must_fit_the_model() -> None:
    wire = to_wire(create_model("simple_cnn", 3))
    with pytest.raises(FederatedError, match="does not have"):
        from_wire(create_model("simple_cnn", 3), {**wire, "extra.weight": np.zeros(2)})
    wire.pop("fc.bias")
    with pytest.raises(FederatedError, match="lack"):
        from_wire(create_model("simple_cnn", 3), wire)


# --------------------------------------------------------------------------- deployment client


@pytest.fixture(scope="module")
def home_cache(tmp_path_factory) -> Cache:
    root = make_toy_esc50(tmp_path_factory.mktemp("home"), per_class_per_fold=3, folds=1)
    cache_dir = tmp_path_factory.mktemp("home-cache")
    precache(load_dataset(root), cache_dir, FrontEndConfig(), workers=0, progress=False)
    return Cache.open(cache_dir)


@pytest.fixture()
def task_identity():
    """What Flower's SuperNode runtime sets before it calls a ClientApp."""
    from flwr.supercore.task_identity import TaskIdentity

    old = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = old


def _train_message(arrays: dict[str, np.ndarray], labels: list[str], bn: str, rnd: int) -> Message:
    config = ConfigRecord(
        {
            "model": "simple_cnn",
            "model-kwargs": "{}",
            "labels": labels,
            "mean": -40.0,
            "std": 20.0,
            "local-epochs": 1,
            "batch-size": 4,
            "lr": 1e-3,
            "weight-decay": 0.0,
            "bn": bn,
            "augment": False,
            "pos-weight-clip": [1.0, 10.0],
            "seed": 0,
            "threads": 1,
            "server-round": rnd,
        }
    )
    record = ArrayRecord({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return Message(
        content=RecordDict({"arrays": record, "config": config}),
        dst_node_id=7,
        message_type=MessageType.TRAIN,
    )


def _context(cache: Cache | None) -> Context:
    node_config = {"cache-dir": str(cache.cache_dir)} if cache is not None else {}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


@pytest.mark.parametrize("bn", ["pooled", "fedbn"])
def test_home_client_trains_on_its_own_cache(home_cache, task_identity, bn) -> None:
    # The server's label order differs from the home's; the client maps by name.
    labels = list(reversed(home_cache.labels)) + ["doorbell"]
    model = create_model("simple_cnn", len(labels))
    ctx = _context(home_cache)
    reply = client_app(_train_message(to_wire(model), labels, bn, 1), ctx)
    assert not reply.has_error()
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == len(home_cache)
    assert np.isfinite(metrics["train-loss"]) and metrics["steps"] >= 1
    sent = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    assert sent["fc.weight"].shape == (len(labels), 128)
    assert not np.allclose(sent["fc.weight"], to_wire(model)["fc.weight"])  # it trained
    assert ("local-bn" in ctx.state.array_records) == (bn == "fedbn")

    # Round 2: the server sends absurd BatchNorm statistics. With pooled BN the client takes
    # them; with FedBN it keeps its own layers and ignores them.
    absurd = dict(sent)
    key = "features.0.1.running_mean"
    absurd[key] = np.full_like(sent[key], 1000.0)
    absurd["features.0.1.running_sqmean"] = np.full_like(sent[key], 1000.0**2 + 1.0)
    reply2 = client_app(_train_message(absurd, labels, bn, 2), ctx)
    assert not reply2.has_error()
    mean_after = reply2.content["arrays"][key].numpy()
    if bn == "fedbn":
        assert np.abs(mean_after).max() < 100.0
    else:
        assert mean_after.min() > 100.0  # momentum 0.1 over a few steps keeps most of it


def test_a_client_answers_the_roll_call_with_its_partition_id(task_identity) -> None:
    # The server orders clients by this key, not by Flower's per-run node ids.
    ask = Message(RecordDict(), dst_node_id=7, message_type=MessageType.QUERY)
    ctx = Context(
        run_id=1, node_id=7, node_config={"partition-id": 3}, state=RecordDict(), run_config={}
    )
    reply = client_app(ask, ctx)
    assert not reply.has_error()
    assert reply.content.config_records[ROLL_CALL]["key"] == "3"
    # A deployed SuperNode without a partition id names itself by its node id.
    reply = client_app(ask, _context(None))
    assert reply.content.config_records[ROLL_CALL]["key"] == "7"


def test_home_client_without_data_says_how_to_start_it(task_identity) -> None:
    model = create_model("simple_cnn", 3)
    with pytest.raises(FederatedError, match="cache-dir"):
        client_app(_train_message(to_wire(model), ["a", "b", "c"], "pooled", 1), _context(None))


def test_server_settings_come_from_the_run_config(home_cache) -> None:
    from training.compare.federated import _settings_from_run_config

    ctx = Context(
        run_id=1,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={
            "cache-dir": str(home_cache.cache_dir),
            "num-server-rounds": 3,
            "clients": 5,
            "clients-per-round": 2,
            "bn": "fedbn",
            "val-folds": "1",
        },
    )
    s = _settings_from_run_config(ctx)
    assert (s.cfg.rounds, s.cfg.clients, s.cfg.clients_per_round, s.cfg.bn) == (3, 5, 2, "fedbn")
    assert s.val_idx == home_cache.indices_for_folds(["1"]).tolist()
    ctx.run_config.pop("cache-dir")
    with pytest.raises(FederatedError, match="cache-dir"):
        _settings_from_run_config(ctx)
