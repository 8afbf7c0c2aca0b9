"""The mindspore.dataset loader: deterministic, sharded, skippable training batches; complete val shards."""
import numpy as np
import pytest

from trainer.config import load_config
from trainer.data import loader, synth
from trainer.data.lists import DataError, load_sample
from trainer.data.transforms import TrainTransform, ValTransform

CROP = 49


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth")
    summary = synth.generate(path, images=27, seed=1, size=(80, 60), log=None)
    assert (summary["train"], summary["val"]) == (20, 7)
    return path


def cfg_for(root, **kw):
    over = {"data_root": str(root), "crop_size": CROP, "batch_size": 2, "batch_size_val": 2,
            "max_steps_per_epoch": 0, "workers": 1, "seed": 7}
    over.update(kw)
    return load_config("smoke", {k: str(v) for k, v in over.items()})


def collect(it):
    return [(x.copy(), y.copy()) for x, y in it]


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x1, x2) and np.array_equal(y1, y2)
                                    for (x1, y1), (x2, y2) in zip(a, b))


def expected_train(cfg, rank, world, epoch):
    """The batches computed sample by sample, without MindSpore."""
    items = loader.samples(cfg, "train")
    tf = TrainTransform(CROP)
    out = []
    for i in loader.train_indices(cfg, rank, world, epoch):
        img, lbl = load_sample(items[i], 21)
        out.append(tf(img, lbl, np.random.default_rng([cfg["seed"], epoch, int(i)])))
    b = int(cfg["batch_size"])
    return [(np.stack([x for x, _ in out[k:k + b]]), np.stack([y for _, y in out[k:k + b]]))
            for k in range(0, len(out), b)]


def test_batches_shapes_types_and_count(root):
    cfg = cfg_for(root)
    assert loader.steps_per_epoch(cfg, 1) == 10
    assert loader.steps_per_epoch(cfg, 3) == 3                  # 20 // 3 = 6 per rank -> 3 batches
    assert loader.steps_per_epoch(cfg_for(root, max_steps_per_epoch=2), 3) == 2
    it = loader.train_batches(cfg, 0, 3, 1)
    assert len(it) == 3
    batches = collect(it)
    assert len(batches) == 3
    x, y = batches[0]
    assert x.shape == (2, 3, CROP, CROP) and x.dtype == np.float32
    assert y.shape == (2, CROP, CROP) and y.dtype == np.int32
    assert set(np.unique(y).tolist()) <= set(range(21)) | {255}
    assert it.batches == 3 and it.wait_s > 0 and loader.data_wait_seconds(it) == it.wait_s
    assert it.last_wait_s <= it.wait_s and it.first_wait_s <= it.wait_s
    assert it._it is None                                       # the for loop's last next() stopped it
    with loader.train_batches(cfg, 1, 3, 1) as part:
        next(part)
        assert part._it is not None and len(part) == 2
    assert part._it is None                                     # leaving the block stopped it


def test_same_batches_every_time_whatever_the_worker_count(root, monkeypatch):
    one = collect(loader.train_batches(cfg_for(root, workers=1), 1, 2, 2))
    again = collect(loader.train_batches(cfg_for(root, workers=1), 1, 2, 2))
    two = collect(loader.train_batches(cfg_for(root, workers=2), 1, 2, 2))
    monkeypatch.setenv(loader.PROCESSES_ENV, "1")
    assert loader._map_options(cfg_for(root, workers=2))["python_multiprocessing"]
    processes = collect(loader.train_batches(cfg_for(root, workers=2), 1, 2, 2))
    assert len(one) == 5
    assert same(one, again) and same(one, two) and same(one, processes)
    other_epoch = collect(loader.train_batches(cfg_for(root), 1, 2, 3))
    other_seed = collect(loader.train_batches(cfg_for(root, seed=8), 1, 2, 2))
    assert not same(one, other_epoch) and not same(one, other_seed)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_read_disjoint_shards_in_the_computed_order(root, world):
    cfg = cfg_for(root, workers=2)
    shards = [loader.train_indices(cfg, r, world, 4) for r in range(world)]
    flat = np.concatenate(shards)
    assert len(flat) == world * loader.steps_per_epoch(cfg, world) * 2
    assert len(set(flat.tolist())) == len(flat)                 # no sample on two ranks
    for rank in range(world):
        assert same(collect(loader.train_batches(cfg, rank, world, 4)), expected_train(cfg, rank, world, 4))


def test_epoch_order_is_shuffled_per_epoch(root):
    cfg = cfg_for(root)
    a, b = loader.train_indices(cfg, 0, 1, 1), loader.train_indices(cfg, 0, 1, 2)
    assert sorted(a.tolist()) == sorted(b.tolist()) == list(range(20))
    assert a.tolist() != b.tolist()


def test_skip_steps_equals_the_tail_and_decodes_nothing_skipped(root, monkeypatch):
    cfg = cfg_for(root, workers=2)
    full = collect(loader.train_batches(cfg, 0, 2, 5))
    calls = []
    real = loader.load_sample
    monkeypatch.setattr(loader, "load_sample", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    tail = collect(loader.train_batches(cfg, 0, 2, 5, skip_steps=3))
    assert same(tail, full[3:])
    assert len(calls) == (5 - 3) * 2
    assert len(loader.train_batches(cfg, 0, 2, 5, skip_steps=5)) == 0
    assert collect(loader.train_batches(cfg, 0, 2, 5, skip_steps=5)) == []
    with pytest.raises(ValueError, match="skip_steps=6 is outside 0..5"):
        loader.train_batches(cfg, 0, 2, 5, skip_steps=6)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_val_shards_cover_the_list_exactly_once(root, world):
    cfg = cfg_for(root, workers=2)
    items = loader.samples(cfg, "val")
    tf = ValTransform(CROP)
    direct = [tf(*load_sample(s, 21)) for s in items]
    seen = []
    steps = loader.val_steps(cfg, world)
    for rank in range(world):
        batches = collect(loader.val_batches(cfg, rank, world))
        assert len(batches) == steps                              # the same number on every rank
        images = np.concatenate([x for x, _ in batches])
        labels = np.concatenate([y for _, y in batches])
        idx = loader.val_indices(cfg, rank, world)
        for k, i in enumerate(idx):
            assert np.array_equal(images[k], direct[i][0]) and np.array_equal(labels[k], direct[i][1])
        assert (labels[len(idx):] == 255).all() and (images[len(idx):] == 0).all()   # blanks
        seen += idx.tolist()
    assert sorted(seen) == list(range(len(items)))


def test_bad_sample_error_names_list_and_line(tmp_path):
    synth.generate(tmp_path, images=8, seed=2, size=(40, 30), log=None)
    bad = (tmp_path / "train.txt").read_text().splitlines()[3].split()[0]
    (tmp_path / bad).write_bytes(b"garbage")
    cfg = cfg_for(tmp_path, batch_size=1)
    with pytest.raises(DataError, match=r"train.txt:4: unreadable image"):
        collect(loader.train_batches(cfg, 0, 1, 1))


def test_generates_missing_set_and_rejects_too_small_worlds(tmp_path):
    cfg = cfg_for(tmp_path / "fresh", synth_images=6)          # smoke: synthesize_if_missing
    assert loader.steps_per_epoch(cfg, 1) == 2                 # 4 train + 2 val samples, batch 2
    assert (tmp_path / "fresh" / "train.txt").is_file()
    with pytest.raises(DataError, match="4 training samples are too few for 3 ranks x batch_size 2"):
        loader.steps_per_epoch(cfg, 3)


def test_shard_arithmetic_for_any_list_size(monkeypatch):
    """For any list size, world size, batch and cap: train shards are disjoint and full, val shards partition."""
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=150, deadline=None)
    @given(n=st.integers(1, 300), world=st.integers(1, 8), batch=st.integers(1, 5), cap=st.integers(0, 4),
           epoch=st.integers(1, 50))
    def check(n, world, batch, cap, epoch):
        monkeypatch.setattr(loader, "samples", lambda cfg, split: [None] * n)
        cfg = {"batch_size": batch, "batch_size_val": batch, "max_steps_per_epoch": cap, "seed": 3,
               "train_list": "train.txt"}
        if (n // world) // batch < 1:
            with pytest.raises(DataError, match="too few"):
                loader.steps_per_epoch(cfg, world)
        else:
            steps = loader.steps_per_epoch(cfg, world)
            assert steps == (min((n // world) // batch, cap) if cap else (n // world) // batch)
            shards = [loader.train_indices(cfg, r, world, epoch).tolist() for r in range(world)]
            assert all(len(s) == steps * batch for s in shards)
            flat = sum(shards, [])
            assert len(set(flat)) == len(flat) and all(0 <= i < n for i in flat)
        vsteps = loader.val_steps(cfg, world)
        val = [loader.val_indices(cfg, r, world).tolist() for r in range(world)]
        assert sorted(sum(val, [])) == list(range(n))
        assert all(len(v) <= vsteps * batch for v in val)
        assert any(len(v) > (vsteps - 1) * batch for v in val)   # no rank gets a batch too many

    check()


def test_pipeline_choice_follows_the_environment():
    assert loader.pipeline_kind({}) == "mindspore"
    assert loader.pipeline_kind({"MS_ROLE": "MS_WORKER"}) == "threads"          # a dynamic-cluster rank
    assert loader.pipeline_kind({"MS_ROLE": "MS_WORKER", loader.PIPELINE_ENV: "mindspore"}) == "mindspore"
    assert loader.pipeline_kind({loader.PIPELINE_ENV: "Threads"}) == "threads"
    with pytest.raises(ValueError, match="PSPNET_DATA_PIPELINE='dali': use one of mindspore, threads"):
        loader.pipeline_kind({loader.PIPELINE_ENV: "dali"})


@pytest.mark.parametrize("world,rank,skip", [(1, 0, 0), (2, 1, 0), (3, 2, 1), (2, 0, 4)])
def test_thread_pipeline_gives_the_mindspore_pipelines_batches(root, monkeypatch, world, rank, skip):
    cfg = cfg_for(root, workers=2)
    monkeypatch.setenv(loader.PIPELINE_ENV, "mindspore")
    ms_train = collect(loader.train_batches(cfg, rank, world, 3, skip_steps=skip))
    ms_val = collect(loader.val_batches(cfg, rank, world))
    monkeypatch.setenv(loader.PIPELINE_ENV, "threads")
    it = loader.train_batches(cfg, rank, world, 3, skip_steps=skip)
    th_train = collect(it)
    assert len(th_train) == loader.steps_per_epoch(cfg, world) - skip and it.batches == len(th_train)
    assert it._it is None                                       # stopped by the loop's last next()
    assert same(th_train, ms_train)
    assert same(th_train, expected_train(cfg, rank, world, 3)[skip:])
    assert same(collect(loader.val_batches(cfg, rank, world)), ms_val)


def test_thread_pipeline_reports_bad_data_with_list_and_line(tmp_path, monkeypatch):
    monkeypatch.setenv(loader.PIPELINE_ENV, "threads")
    synth.generate(tmp_path, images=8, seed=2, size=(40, 30), log=None)
    bad = (tmp_path / "train.txt").read_text().splitlines()[3].split()[0]
    (tmp_path / bad).write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"train.txt:4: unreadable image"):
        collect(loader.train_batches(cfg_for(tmp_path, batch_size=1), 0, 1, 1))
