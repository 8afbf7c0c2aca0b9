"""The generated VOC-format data set: deterministic bytes, VOC layout, learnable classes, race-free creation."""
import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data import synth
from trainer.data.lists import load_sample, read_list


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    synth.generate(tmp_path / "a", images=6, seed=3, log=None)
    synth.generate(tmp_path / "b", images=6, seed=3, log=None)
    synth.generate(tmp_path / "c", images=6, seed=4, log=None)
    a, b, c = (_digest(tmp_path / n) for n in "abc")
    assert a == b
    assert len(a) == 6 * 2 + 3          # images, labels, train.txt, val.txt, synth.json
    jpgs = [k for k in a if k.endswith((".jpg", ".png"))]
    assert all(a[k] != c[k] for k in jpgs)


def test_voc_layout_palette_labels_and_lists(tmp_path):
    summary = synth.generate(tmp_path, images=8, seed=0, size=(64, 48), log=None)
    assert (summary["train"], summary["val"]) == (6, 2)
    train = (tmp_path / "train.txt").read_text().splitlines()
    val = (tmp_path / "val.txt").read_text().splitlines()
    assert len(train) == 6 and len(val) == 2
    assert train[0] == "JPEGImages/s000000.jpg SegmentationClassAug/s000000.png"
    seen = set()
    for line in train + val:
        img_rel, lbl_rel = line.split()
        with Image.open(tmp_path / lbl_rel) as lbl:
            assert lbl.mode == "P"                              # palette PNG, as VOC stores labels
            assert lbl.size == (64, 48)
            pal = np.array(lbl.getpalette()[:6]).reshape(2, 3)
            assert pal.tolist() == [[0, 0, 0], [128, 0, 0]]      # VOC colour map
            ids = np.array(lbl)
        with Image.open(tmp_path / img_rel) as img:
            assert img.format == "JPEG" and img.size == (64, 48)
        seen |= set(np.unique(ids).tolist())
    assert 0 in seen and 255 in seen                             # background and VOC-like boundaries
    assert all(v == 255 or 0 <= v < 21 for v in seen)
    assert len(seen - {0, 255}) >= 3


def test_palette_png_round_trip():
    label = np.random.default_rng(1).integers(0, 21, size=(7, 5)).astype(np.uint8)
    label[0, 0] = 255
    import io
    with Image.open(io.BytesIO(synth.encode_palette_png(label))) as img:
        assert img.mode == "P"
        assert np.array_equal(np.array(img), label)


def test_classes_have_learnable_appearance(tmp_path):
    """A nearest-mean-colour pixel classifier fitted on train labels must do far better than chance on val."""
    synth.generate(tmp_path, images=24, seed=5, log=None)
    train = read_list(tmp_path / "train.txt", tmp_path)
    val = read_list(tmp_path / "val.txt", tmp_path)
    sums, counts = np.zeros((21, 3)), np.zeros(21)
    for s in train:
        img, lbl = load_sample(s, 21)
        keep = lbl != 255
        np.add.at(sums, lbl[keep], img[keep].astype(np.float64))
        np.add.at(counts, lbl[keep], 1)
    present = counts > 0
    means = sums[present] / counts[present][:, None]
    ids = np.flatnonzero(present)
    correct = total = 0
    for s in val:
        img, lbl = load_sample(s, 21)
        keep = lbl != 255
        px = img[keep].astype(np.float64)
        pred = ids[np.argmin(((px[:, None, :] - means[None]) ** 2).sum(-1), axis=1)]
        obj = lbl[keep] != 0
        correct += int((pred[obj] == lbl[keep][obj]).sum())
        total += int(obj.sum())
    assert total > 0
    print("nearest-mean pixel accuracy", correct / total)
    assert correct / total > 0.5, correct / total     # chance over 20 object classes is 0.05


def _cfg(root, **kw):
    cfg = {"data_root": str(root), "synthesize_if_missing": True, "synth_images": 6,
           "train_list": "train.txt", "val_list": "val.txt", "classes": 21}
    cfg.update(kw)
    return cfg


def test_ensure_dataset_concurrent_ranks_share_one_set(tmp_path):
    root = tmp_path / "cache" / "synth-voc"
    results, errors = [], []

    def rank():
        try:
            results.append(synth.ensure_dataset(_cfg(root), log=None))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=rank) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [root] * 4
    assert len((root / "train.txt").read_text().splitlines()) + \
        len((root / "val.txt").read_text().splitlines()) == 6
    assert sorted(p.name for p in root.parent.iterdir()) == ["synth-voc"]   # no temp dirs left behind
    before = _digest(root)
    synth.ensure_dataset(_cfg(root), log=None)                             # present: untouched
    assert _digest(root) == before


def test_ensure_dataset_fills_an_empty_dir_and_notes_a_size_mismatch(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    lines = []
    assert synth.ensure_dataset(_cfg(root), log=lines.append) == root
    assert (root / "train.txt").is_file() and lines == []
    synth.ensure_dataset(_cfg(root, synth_images=10), log=lines.append)
    synth.ensure_dataset(_cfg(root, synth_images=10), log=lines.append)     # said once, not every call
    assert len(lines) == 1 and "already holds a generated set of 6 images; synth_images=10 is ignored" in lines[0]


def test_ensure_dataset_without_synthesis_writes_nothing(tmp_path):
    root = tmp_path / "absent"
    assert synth.ensure_dataset(_cfg(root, synthesize_if_missing=False), log=None) == root
    assert not root.exists()


def test_ensure_dataset_refuses_foreign_non_empty_dir(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("not a data set")
    with pytest.raises(FileExistsError, match="not empty.*train.txt"):
        synth.ensure_dataset(_cfg(root), log=None)
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]


def test_progress_line_only_when_slow(tmp_path, monkeypatch):
    lines = []
    synth.generate(tmp_path / "fast", images=3, log=lines.append)
    assert lines == []
    clock = iter(range(0, 1000, 2))           # every call 2 "seconds" later
    monkeypatch.setattr(synth.time, "monotonic", lambda: float(next(clock)))
    synth.generate(tmp_path / "slow", images=3, log=lines.append)
    assert lines and "generating a data set in" in lines[0] and lines[-1].startswith("synth: done")
    assert "3/3 images" in lines[-2]


def test_ensure_dataset_concurrent_processes(tmp_path):
    """Ranks are processes: start three at once on the same missing data_root."""
    import json
    import subprocess
    import sys
    root = tmp_path / "shared" / "synth"
    code = ("import json, sys; from trainer.data.synth import ensure_dataset; "
            "print(ensure_dataset(json.loads(sys.argv[1]), log=None))")
    repo = Path(__file__).resolve().parent.parent
    procs = [subprocess.Popen([sys.executable, "-c", code, json.dumps(_cfg(root, synth_images=12))],
                              cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
    assert [out.strip() for out, _ in outs] == [str(root)] * 3
    assert sorted(p.name for p in root.parent.iterdir()) == ["synth"]
    assert len(list((root / "JPEGImages").iterdir())) == 12
