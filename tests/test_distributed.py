"""DistributedDataParallel training: 2 CPU processes with the gloo backend."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import toy_patches

from mslesion import distributed
from mslesion.config import TrainConfig
from mslesion.data.patches import write_patches
from mslesion.train import epoch_plan


def test_shards_of_each_global_batch_are_disjoint_and_cover_it():
    items, ks = epoch_plan(np.arange(37), "full", epoch=2, seed=5)
    contexts = [distributed.DistContext(rank, 3, rank) for rank in range(3)]
    for start in range(0, len(items), 64):
        pairs = [list(zip(distributed.shard(items[start:start + 64], c).tolist(),
                          distributed.shard(ks[start:start + 64], c).tolist(), strict=True)) for c in contexts]
        assert sorted(sum(pairs, [])) == sorted(zip(items[start:start + 64].tolist(), ks[start:start + 64].tolist(),
                                                    strict=True))
        assert max(len(p) for p in pairs) - min(len(p) for p in pairs) <= 1


def test_loss_scale_makes_the_rank_mean_the_global_batch_mean():
    c = distributed.DistContext(0, 4, 0)
    assert distributed.loss_scale(3, 10, c) * 4 / 4 == pytest.approx(4 / 10)  # DDP divides by world size
    assert distributed.loss_scale(8, 8, distributed.DistContext()) == pytest.approx(1 / 8)


def test_environment_layout_is_validated(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "3")
    from mslesion.errors import InputError

    with pytest.raises(InputError):
        distributed.env_context()
    monkeypatch.setenv("RANK", "1")
    assert distributed.env_context() == distributed.DistContext(1, 2, 1)
    assert not distributed.is_main_process()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: str, out: str, log_dir: str) -> None:
    """One rank: records which (patch, symmetry) pairs it trains on, then saves its final weights."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import mslesion.train as train_module

    seen: list[tuple[int, int]] = []
    training = [False]
    original_gather, original_epoch = train_module.gather_augmented, train_module.train_epoch

    def recording(images, idx, ks):
        if training[0]:  # not the batch-norm population pass rank 0 runs at the end
            seen.extend(zip(idx.tolist(), ks.tolist(), strict=True))
        return original_gather(images, idx, ks)

    def epoch(*args, **kwargs):
        training[0] = True
        try:
            return original_epoch(*args, **kwargs)
        finally:
            training[0] = False

    train_module.gather_augmented, train_module.train_epoch = recording, epoch
    cfg = TrainConfig(data=data, out=out if rank == 0 else out + "_rank1", channels=("qsm",), augment="full",
                      epochs=1, batch_size=24, seed=3, threads=1)
    train_module.train(cfg, show_progress=False)
    Path(log_dir, f"seen{rank}.json").write_text(json.dumps(seen))
    state = train_module.last_model.state_dict()  # the model object the trainer built (see _spawned)
    torch.save({k: v.contiguous() for k, v in state.items()}, Path(log_dir, f"weights{rank}.pt"))


@pytest.mark.slow
def test_two_gloo_ranks_split_each_epoch_and_stay_in_sync(tmp_path: Path):
    data = tmp_path / "toy.h5"
    write_patches(data, toy_patches(n_per_code={2: 6, 3: 4, 5: 4, 6: 2}, size=23))
    port = _free_port()
    mp.spawn(_spawned, args=(2, port, str(data), str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    seen = [sorted(map(tuple, json.loads((tmp_path / f"seen{r}.json").read_text()))) for r in range(2)]
    run = tmp_path / "run"
    split = json.loads((run / "split.json").read_text())
    train_lesions = [entry["index"] for entry in split["train"]]
    labels = {entry["index"]: entry["label"] for entry in split["train"]}
    copies = [2 if labels[i] in (2, 6) else 1 for i in train_lesions]  # paper oversampling
    expected = sorted((i, k) for i, c in zip(train_lesions, copies, strict=True) for _ in range(c) for k in range(48))
    # the last global batch may be dropped when it is smaller than 2 per rank
    assert len(expected) - len(seen[0]) - len(seen[1]) < 2 * 2
    overlap = _multiset_overlap(seen[0], seen[1], expected)
    assert overlap == 0, "a (patch, symmetry) pair was trained on by both ranks more often than planned"
    assert abs(len(seen[0]) - len(seen[1])) <= 24  # each rank takes half of every global batch
    history = json.loads((run / "history.json").read_text())
    assert history[0]["samples"] == len(seen[0]) + len(seen[1])  # epoch statistics are global
    assert (run / "model.pt").exists() and not (tmp_path / "run_rank1").exists()  # only rank 0 writes
    w0, w1 = (torch.load(tmp_path / f"weights{r}.pt") for r in range(2))
    for name in w0:
        if "running" not in name and "num_batches" not in name:
            torch.testing.assert_close(w0[name], w1[name], msg=name)  # DDP kept the replicas identical


def _multiset_overlap(a: list, b: list, expected: list) -> int:
    """How many pairs were seen more often in total than the epoch plan contains them."""
    from collections import Counter

    planned, got = Counter(expected), Counter(a) + Counter(b)
    return sum(max(0, n - planned[p]) for p, n in got.items())


def _spawned(rank: int, world: int, port: int, data: str, out: str, log_dir: str) -> None:
    import mslesion.train as train_module

    original_build = train_module.build_model

    def build_and_remember(cfg, task):
        model = original_build(cfg, task)
        train_module.last_model = model
        return model

    train_module.build_model = build_and_remember
    _worker(rank, world, port, data, out, log_dir)


def _resume_worker(rank: int, world: int, port: int, data: str, out: str, stop_before_epoch: int,
                   resume: bool) -> None:
    """One rank of a 2-epoch DDP run; with stop_before_epoch, every rank is interrupted before that epoch."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    import mslesion.train as train_module

    original_epoch, calls = train_module.train_epoch, [0]

    def interruptible(*args, **kwargs):
        calls[0] += 1
        if calls[0] == stop_before_epoch:  # all ranks at the same point: no collective is left waiting
            raise KeyboardInterrupt
        return original_epoch(*args, **kwargs)

    train_module.train_epoch = interruptible
    cfg = TrainConfig(data=data, out=out, channels=("qsm",), augment="random", epochs=2, batch_size=8, seed=3,
                      threads=1)
    with contextlib.suppress(KeyboardInterrupt):
        train_module.train(cfg, resume=resume, show_progress=False)


@pytest.mark.slow
def test_interrupted_ddp_run_resumes_to_the_uninterrupted_result(tmp_path: Path):
    data = tmp_path / "toy.h5"
    write_patches(data, toy_patches(n_per_code={2: 8, 3: 6, 5: 6, 6: 4}, size=23))

    def run(out: Path, stop_before_epoch: int, resume: bool) -> None:
        mp.spawn(_resume_worker, args=(2, _free_port(), str(data), str(out), stop_before_epoch, resume), nprocs=2,
                 join=True)

    run(tmp_path / "whole", 0, False)
    run(tmp_path / "cut", 2, False)  # interrupted after epoch 1 on every rank
    assert json.loads((tmp_path / "cut" / "history.json").read_text())[-1]["epoch"] == 1
    assert not (tmp_path / "cut" / "model.pt").exists()
    run(tmp_path / "cut", 0, True)
    whole, resumed = (torch.load(tmp_path / name / "model.pt", weights_only=True)["state_dict"]
                      for name in ("whole", "cut"))
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)
    history = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2]
