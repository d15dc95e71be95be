"""Federated averaging on Flower: one client per home, their recordings never leave it.

Flower (`flwr`) does the federation: its `ServerApp` runs `FedAvg` (McMahan et al., 2017),
which samples `clients_per_round` of the connected clients each round, sends them the global
weights, and averages what they send back weighted by their number of training clips
(`num-examples`). This module only supplies the two apps: what a client does with the weights
(`client_app`: a few local epochs of the usual training step on its own cache) and what the
server does between rounds (`server_app`: evaluate on its validation clips, keep the best round,
write a checkpoint that `claudio-train evaluate` and `export` accept).

Here (the study's comparison) it runs in Flower's SIMULATION runtime (`run_simulation`, which
needs Ray: the training extra depends on `flwr[simulation]`): the training folds are split into
`clients` partitions, by shuffled index (IID) or by class with a Dirichlet(alpha) draw per class
(non-IID: each home hears mostly a few kinds of sound; smaller alpha, more skew).

For real homes the same apps run under Flower's deployment runtime, unchanged:

    # each home: its own labelled recordings, cached locally (the audio stays there)
    claudio-train precache ~/claudio-recordings --cache ~/claudio-cache
    flower-supernode --superlink SERVER:9092 --insecure \\
        --node-config 'cache-dir="/home/me/claudio-cache"'

    # the server: a Flower app whose pyproject.toml names the components
    #   [tool.flwr.app.components]
    #   serverapp = "training.compare.federated:server_app"
    #   clientapp = "training.compare.federated:client_app"
    #   [tool.flwr.app.config]
    #   cache-dir = "/srv/claudio/val-cache"   # labelled clips the server validates on
    #   out-dir = "/srv/claudio/federated"     # best.pt and history.json
    #   model = "resnet18"  num-server-rounds = 50  clients = 20  clients-per-round = 10
    flower-superlink --insecure  &&  flwr run . <federation>

(use TLS and node authentication outside a test bench). Before the first round the server
asks every node for a stable key (its `partition-id` node config, else its node id) and samples
clients from that order with a per-round seeded draw, so a rerun picks the same clients; give
each home `partition-id=N` in its node config to make a deployed run repeatable too.
The server sends its label list and normalisation scalars with the weights; a client maps its
own cache's labels onto that list by name, so homes need not have every label.

BatchNorm is handled explicitly, chosen by `bn`:
- "pooled" (default): BN weights and biases are averaged like every other weight; the running
  statistics are POOLED, not naively averaged: clients send the running mean and the second
  moment (running_var + running_mean^2), both of which average correctly by sample weight,
  and the variance is rebuilt as E[x^2] - E[x]^2. The global statistics are then those of
  the union of the clients' data (a plain average of variances misses the spread between
  homes, which non-IID data makes large). `num_batches_tracked`, an integer counter that
  averaging would corrupt and momentum-based BN never reads, is not sent at all.
- "fedbn" (Li et al., 2021): every client keeps its own BN layers (weights, biases and
  statistics) between rounds and only the other weights are shared; the server still pools
  the received BN layers, for its own evaluation copy only.

Telemetry: Flower reports usage events to flower.ai unless FLWR_TELEMETRY_ENABLED=0; this
module sets that default before importing flwr (no audio is involved either way).
"""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import copy  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterable  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.app import (  # noqa: E402
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from training.augment import AugmentConfig, mixup_batch  # noqa: E402
from training.cache import Cache  # noqa: E402
from training.data import CachedDataset  # noqa: E402
from training.device import pick_device  # noqa: E402
from training.fit import CHECKPOINT_FORMAT, predict_logits, training_data_summary  # noqa: E402
from training.losses import make_criterion  # noqa: E402
from training.metrics import mean_average_precision, sigmoid  # noqa: E402
from training.models import MODEL_NAMES, create_model  # noqa: E402

__all__ = [
    "BN_MODES",
    "PARTITIONS",
    "ROLL_CALL",
    "FedConfig",
    "FedResult",
    "FederatedError",
    "client_app",
    "from_wire",
    "make_client_app",
    "make_server_app",
    "partition_indices",
    "run_federated",
    "server_app",
    "to_wire",
]

log = logging.getLogger(__name__)

BN_MODES = ("pooled", "fedbn")
PARTITIONS = ("iid", "dirichlet")
SQMEAN = "running_sqmean"


class FederatedError(RuntimeError):
    """A federated run could not go on (a client failed, no client answered...)."""


@dataclass
class FedConfig:
    model: str = "resnet18"
    rounds: int = 50
    clients: int = 20
    clients_per_round: int = 10
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    #: "iid" (shuffled index) or "dirichlet" (by class, Dirichlet(alpha) shares per class).
    partition: str = "iid"
    alpha: float = 0.5
    #: "pooled" or "fedbn"; see the module docstring.
    bn: str = "pooled"
    augment: bool = True
    pos_weight_clip: tuple[float, float] = (1.0, 10.0)
    #: Evaluate the global model on the validation clips every this many rounds (and last).
    eval_every: int = 1
    seed: int = 0
    #: Ray resources per simulated client; None GPUs = a share of the GPU when there is one.
    client_cpus: float = 1.0
    client_gpus: float | None = None
    #: "auto" uses CUDA where present (server and, via Ray's GPU shares, clients); "cpu" not.
    device: str = "auto"
    model_kwargs: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; choose one of {MODEL_NAMES}")
        if self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            raise ValueError("rounds, local_epochs and batch_size must be at least 1")
        if self.clients < 1 or not 1 <= self.clients_per_round <= self.clients:
            raise ValueError(
                f"need 1 <= clients_per_round ({self.clients_per_round}) <= clients "
                f"({self.clients})"
            )
        if self.partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {PARTITIONS}, got {self.partition!r}")
        if self.bn not in BN_MODES:
            raise ValueError(f"bn must be one of {BN_MODES}, got {self.bn!r}")
        if self.partition == "dirichlet" and not self.alpha > 0:
            raise ValueError(f"Dirichlet alpha must be positive, got {self.alpha}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be at least 1, got {self.eval_every}")


# --------------------------------------------------------------------------- partitions


def partition_indices(
    indices: np.ndarray,
    targets: np.ndarray,
    clients: int,
    mode: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Split training rows among `clients`; every client gets at least one clip.

    "iid": a seeded shuffle cut into near-equal parts. "dirichlet": for each class (a clip's
    first label), its clips are shared out with proportions drawn from Dirichlet(alpha);
    redrawn (up to `max_tries`) until no client is empty.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if clients < 1:
        raise ValueError(f"clients must be at least 1, got {clients}")
    if len(indices) < clients:
        raise ValueError(f"{len(indices)} training clips cannot feed {clients} clients")
    rng = np.random.default_rng(seed)
    if mode == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(indices), clients)]
    if mode != "dirichlet":
        raise ValueError(f"partition must be one of {PARTITIONS}, got {mode!r}")
    t = np.asarray(targets)[indices] > 0.5
    primary = np.where(t.any(1), t.argmax(1), -1)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for c in np.unique(primary):
            rows = rng.permutation(indices[primary == c])
            shares = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for k, chunk in enumerate(np.split(rows, cuts)):
                parts[k].extend(int(i) for i in chunk)
        if all(parts):
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(
        f"Dirichlet(alpha={alpha}) left a client without clips in {max_tries} draws; "
        "raise alpha or use fewer clients"
    )


# --------------------------------------------------------------------------- wire format


def _bn_prefixes(model: nn.Module) -> list[str]:
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def _is_bn(key: str, prefixes: Iterable[str]) -> bool:
    return any(key.startswith(p + ".") for p in prefixes)


def to_wire(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's weights as sent: running_var becomes the second moment, counters stay home."""
    state = model.state_dict()
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        arr = value.detach().cpu().numpy()
        if key.endswith(".running_var"):
            prefix = key[: -len("running_var")]
            mean = state[prefix + "running_mean"].detach().cpu().numpy()
            out[prefix + SQMEAN] = (arr + mean * mean).astype(arr.dtype)
        else:
            out[key] = arr
    return out


def from_wire(model: nn.Module, arrays: dict[str, np.ndarray], skip_bn: bool = False) -> None:
    """Load wire weights into `model` (variance rebuilt from the pooled moments).

    `skip_bn` leaves the model's BatchNorm layers as they are (FedBN's local layers).
    """
    state = model.state_dict()
    prefixes = _bn_prefixes(model) if skip_bn else []
    new: dict[str, torch.Tensor] = {}
    for key, arr in arrays.items():
        if prefixes and _is_bn(key, prefixes):
            continue
        if key.endswith("." + SQMEAN):
            prefix = key[: -len(SQMEAN)]
            mean = np.asarray(arrays[prefix + "running_mean"], dtype=np.float64)
            var = np.maximum(np.asarray(arr, dtype=np.float64) - mean * mean, 0.0)
            key, arr = prefix + "running_var", var
        if key not in state:
            raise FederatedError(f"received weights for {key!r}, which the model does not have")
        new[key] = torch.as_tensor(np.asarray(arr), dtype=state[key].dtype)
    expected = {
        k
        for k in state
        if not k.endswith("num_batches_tracked") and not (prefixes and _is_bn(k, prefixes))
    }
    missing = expected - set(new)
    if missing:
        raise FederatedError(f"received weights lack {sorted(missing)[:5]}")
    model.load_state_dict(new, strict=False)


def _bn_state(model: nn.Module) -> dict[str, np.ndarray]:
    prefixes = _bn_prefixes(model)
    return {
        k: v.detach().cpu().numpy().copy()
        for k, v in model.state_dict().items()
        if _is_bn(k, prefixes)
    }


def _arrays(d: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in d.items()})


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


# --------------------------------------------------------------------------- client


@dataclass
class _SimulationData:
    """What simulated clients need: the shared cache and each partition's rows."""

    cache_dir: str
    partitions: list[list[int]]


class _Relabel(Dataset):
    """A client's clips with targets in the server's label order (missing labels are 0)."""

    def __init__(self, base: CachedDataset, columns: np.ndarray) -> None:
        self.base, self.columns = base, columns

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[i]
        out = torch.zeros(len(self.columns), dtype=y.dtype)
        have = self.columns >= 0
        out[torch.from_numpy(have)] = y[torch.from_numpy(self.columns[have])]
        return x, out


def _stable_key(context: Context) -> int:
    """What names this client the same way in every run.

    Flower's simulated node ids are drawn afresh each run, so anything keyed on them (which
    clients a round samples, their seeds) would differ between identical runs; the partition
    id does not. A deployed SuperNode without one falls back to its node id.
    """
    return int(context.node_config.get("partition-id", context.node_id))


def _client_rows(context: Context, sim: _SimulationData | None) -> tuple[Cache, np.ndarray]:
    if sim is not None:
        pid = int(context.node_config["partition-id"])
        return Cache.open(sim.cache_dir), np.asarray(sim.partitions[pid], dtype=np.int64)
    cache_dir = context.node_config.get("cache-dir")
    if not cache_dir:
        raise FederatedError(
            "this client has no data: start it with "
            "--node-config 'cache-dir=\"/path/to/its/cache\"' (made by claudio-train precache)"
        )
    cache = Cache.open(str(cache_dir))
    return cache, np.arange(len(cache), dtype=np.int64)


def _local_train(msg: Message, context: Context, sim: _SimulationData | None) -> Message:
    cfg = msg.content["config"]
    labels = list(cfg["labels"])
    cache, rows = _client_rows(context, sim)
    index = {lab: c for c, lab in enumerate(cache.labels)}
    columns = np.array([index.get(lab, -1) for lab in labels], dtype=np.int64)
    if not (columns >= 0).any():
        raise FederatedError(f"{cache.cache_dir}: none of the server's labels are in this cache")
    threads = int(cfg.get("threads", 0))
    if threads > 0:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    server_round = int(cfg["server-round"])
    # Simulated node ids are random per run; the partition id makes reruns repeat exactly.
    who = _stable_key(context) % 1_000_003
    seed = int(cfg["seed"]) * 1_000_003 + server_round * 1_009 + who
    torch.manual_seed(seed)

    model = create_model(str(cfg["model"]), len(labels), **json.loads(str(cfg["model-kwargs"])))
    fedbn = cfg["bn"] == "fedbn" and "local-bn" in context.state.array_records
    from_wire(model, _numpy(msg.content["arrays"]), skip_bn=fedbn)
    if fedbn:
        local = _numpy(context.state.array_records["local-bn"])
        model.load_state_dict({k: torch.from_numpy(v) for k, v in local.items()}, strict=False)
    model.to(device)

    augment = AugmentConfig() if bool(cfg["augment"]) else None
    base = CachedDataset(cache, rows, augment=augment, seed=seed)
    base.mean, base.std = float(cfg["mean"]), float(cfg["std"])  # the server's scalars
    ds: Dataset = base
    targets = np.asarray(cache.targets[rows])
    if list(cache.labels) != labels:
        ds = _Relabel(base, columns)
        targets = np.where(columns[None, :] >= 0, targets[:, np.maximum(columns, 0)], 0.0)
    batch = int(cfg["batch-size"])
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        ds, batch_size=batch, shuffle=True, drop_last=len(ds) > batch, generator=gen
    )
    clip = tuple(cfg["pos-weight-clip"]) if len(cfg["pos-weight-clip"]) == 2 else None
    criterion = make_criterion(targets, clip).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight-decay"])
    )
    mix_alpha = AugmentConfig().mixup_alpha if augment is not None else 0.0
    mix_gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    loss_sum, steps = 0.0, 0
    for epoch in range(int(cfg["local-epochs"])):
        base.set_epoch(server_round * 1000 + epoch)
        for x, y in loader:
            x, y = x.to(device), y.to(device).float()
            if mix_alpha > 0:
                x, y = mixup_batch(x, y, mix_alpha, mix_gen)
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            loss_sum += float(loss.detach())
            steps += 1
    model.cpu()
    if cfg["bn"] == "fedbn":
        context.state.array_records["local-bn"] = _arrays(_bn_state(model))
    metrics = MetricRecord(
        {"num-examples": len(ds), "train-loss": loss_sum / max(1, steps), "steps": steps}
    )
    content = RecordDict({"arrays": _arrays(to_wire(model)), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def make_client_app(sim: _SimulationData | None = None) -> ClientApp:
    """The ClientApp: simulated partitions when `sim` is given, else the node's own cache."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return _local_train(msg, context, sim)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        # The server's roll call (see `_roll_call`): only a name, no data.
        who = ConfigRecord({"key": str(_stable_key(context))})
        return Message(RecordDict({ROLL_CALL: who}), reply_to=msg)

    return app


# --------------------------------------------------------------------------- server


#: The record a client answers the server's roll call with.
ROLL_CALL = "roll-call"


def _roll_call(grid: Grid, wanted: int, timeout_s: float = 600.0) -> list[int]:
    """The connected node ids in the order of their stable keys (partition ids).

    Flower's own sampling draws from node ids, which the simulation makes up afresh each
    run, so a seeded `random` still picked different clients between identical runs (the
    test model's accuracy moved from 5/12 to 8/12). Asking each node once for its stable key
    lets `_StrictFedAvg` sample from a fixed order instead.
    """
    deadline = time.monotonic() + timeout_s
    seen = -1
    while len(nodes := sorted(grid.get_node_ids())) < wanted:
        if time.monotonic() > deadline:
            raise FederatedError(f"only {len(nodes)} of {wanted} clients connected")
        if len(nodes) != seen:
            log.info("waiting for clients: %d of %d connected", len(nodes), wanted)
            seen = len(nodes)
        time.sleep(1.0)
    asks = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    keys: dict[int, int] = {}
    for reply in grid.send_and_receive(asks, timeout=timeout_s):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise FederatedError(f"node {node} did not answer the roll call: {reply.error.reason}")
        keys[node] = int(str(reply.content.config_records[ROLL_CALL]["key"]))
    if len(keys) < len(nodes):
        raise FederatedError(f"only {len(keys)} of {len(nodes)} clients answered the roll call")
    if len(set(keys.values())) < len(keys):
        raise FederatedError("two clients have the same partition-id; give each its own")
    return sorted(keys, key=keys.__getitem__)


class _StrictFedAvg(FedAvg):
    """FedAvg that samples reproducibly and stops the run when a client fails.

    Sampling: `order` is the roll call's (clients by partition id) and each round draws from
    it with its own seeded generator, so a rerun trains the same clients in the same rounds.
    A node that connects after the roll call (a deployed home joining late) is sampled too,
    after the known ones in node-id order; only then may a rerun differ. Replies are
    averaged in the sampled order (float sums depend on it). A client that fails stops the
    run instead of being silently averaged out.
    """

    def __init__(self, *, order: list[int], seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.order, self.seed = list(order), int(seed)
        #: Where each node sampled this round stands in the sample (the averaging order).
        self.rank: dict[int, int] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.fraction_train == 0.0:
            return []
        live = set(grid.get_node_ids())
        pool = [n for n in self.order if n in live] + sorted(live - set(self.order))
        size = max(int(len(pool) * self.fraction_train), self.min_train_nodes)
        if len(pool) < size:
            raise FederatedError(
                f"round {server_round}: {len(pool)} clients connected, {size} needed"
            )
        chosen = random.Random(self.seed * 1_000_003 + server_round).sample(pool, size)
        self.rank = {node: i for i, node in enumerate(chosen)}
        log.debug("round %d trains nodes %s", server_round, chosen)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [Message(record, dst_node_id=n, message_type=MessageType.TRAIN) for n in chosen]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = sorted(replies, key=lambda m: self.rank.get(m.metadata.src_node_id, 1 << 62))
        failed = [m for m in replies if m.has_error()]
        if failed:
            reasons = "; ".join(
                f"node {m.metadata.src_node_id}: {m.error.reason}" for m in failed[:3]
            )
            raise FederatedError(f"round {server_round}: {len(failed)} client(s) failed: {reasons}")
        if not replies:
            raise FederatedError(f"round {server_round}: no client answered")
        return super().aggregate_train(server_round, replies)


@dataclass
class _ServerSettings:
    cache_dir: str
    val_idx: list[int]
    train_idx: list[int]
    cfg: FedConfig
    out_dir: str
    held_out: tuple[str, ...] = ()


@dataclass
class FedResult:
    best_checkpoint: Path
    history: list[dict[str, Any]]
    best_round: int
    best_metric: float
    seconds: float
    partition_sizes: list[int] = field(default_factory=list)


def _settings_from_run_config(context: Context) -> _ServerSettings:
    rc = dict(context.run_config)
    if not rc.get("cache-dir"):
        raise FederatedError("run config needs cache-dir (the server's labelled validation cache)")
    cfg = FedConfig(
        model=str(rc.get("model", "resnet18")),
        rounds=int(rc.get("num-server-rounds", 50)),
        clients=int(rc.get("clients", 20)),
        clients_per_round=int(rc.get("clients-per-round", 10)),
        local_epochs=int(rc.get("local-epochs", 1)),
        batch_size=int(rc.get("batch-size", 32)),
        lr=float(rc.get("lr", 1e-3)),
        bn=str(rc.get("bn", "pooled")),
        eval_every=int(rc.get("eval-every", 1)),
        seed=int(rc.get("seed", 0)),
    )
    cache = Cache.open(str(rc["cache-dir"]))
    folds = [f for f in str(rc.get("val-folds", "")).split(",") if f]
    val = cache.indices_for_folds(folds) if folds else np.arange(len(cache))
    return _ServerSettings(
        str(rc["cache-dir"]), [int(i) for i in val], [], cfg, str(rc.get("out-dir", "federated"))
    )


def _serve(grid: Grid, context: Context, s: _ServerSettings, sink: dict[str, Any]) -> None:
    cfg = s.cfg
    cfg.validate()
    cache = Cache.open(s.cache_dir)
    labels = list(cache.labels)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, len(labels), **cfg.model_kwargs)
    val_idx = np.asarray(s.val_idx, dtype=np.int64)
    val_loader = DataLoader(CachedDataset(cache, val_idx), batch_size=cfg.batch_size)
    history: dict[int, dict[str, Any]] = {}
    best = {"round": 0, "metric": -math.inf, "arrays": to_wire(model)}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        last = server_round == cfg.rounds
        if not last and server_round % cfg.eval_every:
            return None
        wire = _numpy(arrays)
        if not len(val_idx):
            best.update({"round": server_round, "metric": math.nan, "arrays": wire})
            return None
        from_wire(model, wire)
        logits, targets = predict_logits(model.to(device), val_loader, device)
        model.cpu()
        val_map = mean_average_precision(targets, sigmoid(logits))
        history.setdefault(server_round, {"round": server_round})["val_map"] = val_map
        log.info("round %d/%d: val mAP %.4f", server_round, cfg.rounds, val_map)
        if val_map > best["metric"]:
            best.update({"round": server_round, "metric": val_map, "arrays": copy.copy(wire)})
        return MetricRecord({"val-map": val_map})

    strategy = _StrictFedAvg(
        order=_roll_call(grid, cfg.clients),
        seed=cfg.seed,
        fraction_train=cfg.clients_per_round / cfg.clients,
        fraction_evaluate=0.0,
        min_train_nodes=cfg.clients_per_round,
        min_available_nodes=cfg.clients,
    )
    train_config = ConfigRecord(
        {
            "model": cfg.model,
            "model-kwargs": json.dumps(cfg.model_kwargs),
            "labels": labels,
            "mean": float(cache.frontend.mean),
            "std": float(cache.frontend.std),
            "local-epochs": cfg.local_epochs,
            "batch-size": cfg.batch_size,
            "lr": cfg.lr,
            "weight-decay": cfg.weight_decay,
            "bn": cfg.bn,
            "augment": cfg.augment,
            "pos-weight-clip": [float(v) for v in (cfg.pos_weight_clip or ())],
            "seed": cfg.seed,
            "threads": max(1, int(cfg.client_cpus)),
        }
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=_arrays(to_wire(model)),
        num_rounds=cfg.rounds,
        train_config=train_config,
        evaluate_fn=evaluate,
    )
    for rnd, metrics in result.train_metrics_clientapp.items():
        history.setdefault(int(rnd), {"round": int(rnd)})["train_loss"] = float(
            metrics["train-loss"]
        )
    rows = [history[k] for k in sorted(history)]
    from_wire(model, best["arrays"])
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_idx = np.asarray(s.train_idx, dtype=np.int64)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model_name": cfg.model,
        "model_kwargs": dict(cfg.model_kwargs),
        "labels": labels,
        "multi_label": bool(cache.multi_label),
        "frontend": cache.frontend.to_json(),
        "training_data": {
            **training_data_summary(cache, train_idx, s.held_out),
            "federated": f"FedAvg on Flower, {cfg.clients} clients, bn={cfg.bn}",
        },
        "model": model.state_dict(),
        "epoch": int(best["round"]) - 1,
        "best_metric": float(best["metric"]) if not math.isnan(best["metric"]) else -1.0,
        "best_epoch": int(best["round"]),
        "config": {**asdict(cfg), "pos_weight_clip": list(cfg.pos_weight_clip or ())},
        "history": rows,
    }
    torch.save(state, out / "best.pt")
    (out / "history.json").write_text(json.dumps(rows, indent=2))
    sink.update({"history": rows, "best_round": best["round"], "best_metric": best["metric"]})


def make_server_app(
    settings: _ServerSettings | None = None, sink: dict[str, Any] | None = None
) -> ServerApp:
    """The ServerApp: `settings` from code (simulation) or from the run config (deployment)."""
    app = ServerApp()
    out = sink if sink is not None else {}

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        s = settings if settings is not None else _settings_from_run_config(context)
        _serve(grid, context, s, out)

    return app


#: Entry points for Flower's deployment runtime (see the module docstring).
client_app = make_client_app()
server_app = make_server_app()


# --------------------------------------------------------------------------- simulation


def run_federated(
    cache_dir: str | Path,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: FedConfig,
    out_dir: str | Path,
    held_out: tuple[str, ...] = (),
) -> FedResult:
    """Simulate `cfg.clients` homes on the training rows with Flower's simulation runtime."""
    cfg.validate()
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        # Flower would exit the whole process here; say what to install instead.
        raise FederatedError(
            "the federated simulation needs Ray: pip install 'flwr[simulation]' "
            "(part of the [train] extra)"
        )
    cache = Cache.open(cache_dir)
    parts = partition_indices(
        np.asarray(train_idx), cache.targets, cfg.clients, cfg.partition, cfg.alpha, cfg.seed
    )
    sizes = [len(p) for p in parts]
    log.info(
        "federated: %d clients (%s), %d per round, %d rounds; clips per client %d..%d",
        cfg.clients,
        cfg.partition if cfg.partition == "iid" else f"dirichlet alpha={cfg.alpha}",
        cfg.clients_per_round,
        cfg.rounds,
        min(sizes),
        max(sizes),
    )
    sim = _SimulationData(str(Path(cache_dir).resolve()), [p.tolist() for p in parts])
    settings = _ServerSettings(
        sim.cache_dir,
        [int(i) for i in val_idx],
        [int(i) for i in train_idx],
        cfg,
        str(out_dir),
        held_out,
    )
    sink: dict[str, Any] = {}
    gpus = cfg.client_gpus
    use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
    n_cuda = torch.cuda.device_count() if use_cuda else 0
    if gpus is None:
        gpus = 1.0 / min(cfg.clients_per_round, 5) if n_cuda else 0.0
    if not n_cuda:
        gpus = 0.0  # Ray then hides the GPUs from the clients, which train on the CPU
    backend_config = {
        "client_resources": {"num_cpus": cfg.client_cpus, "num_gpus": float(gpus)},
        "init_args": {
            "num_cpus": max(int(math.ceil(cfg.client_cpus)), os.cpu_count() or 1),
            "num_gpus": n_cuda,
            "include_dashboard": False,
            "logging_level": "WARNING",
        },
    }
    import ray

    started_ray = not ray.is_initialized()
    # Flower logs every round at INFO (and warns that run_simulation is deprecated in favour
    # of `flwr run`); this module logs its own per-round line, and a failing client raises.
    quiet = {"flwr": logging.ERROR, "alembic": logging.WARNING}
    levels = {name: logging.getLogger(name).level for name in quiet}
    if not log.isEnabledFor(logging.DEBUG):
        for name, lvl in quiet.items():
            logging.getLogger(name).setLevel(lvl)
    from flwr.simulation import run_simulation

    t0 = time.perf_counter()
    try:
        run_simulation(
            server_app=make_server_app(settings, sink),
            client_app=make_client_app(sim),
            num_supernodes=cfg.clients,
            backend_config=backend_config,
        )
    finally:
        for name, lvl in levels.items():
            logging.getLogger(name).setLevel(lvl)
        if started_ray and ray.is_initialized():
            ray.shutdown()
    seconds = time.perf_counter() - t0
    if "history" not in sink:
        raise FederatedError("the federated run ended without a result (see the log above)")
    return FedResult(
        Path(out_dir) / "best.pt",
        sink["history"],
        int(sink["best_round"]),
        float(sink["best_metric"]),
        seconds,
        sizes,
    )
