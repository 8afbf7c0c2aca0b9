"""List-file data sets: every kind of bad data is reported with the list file and line; the ADE20K shift."""
import cv2
import numpy as np
import pytest
from PIL import Image

from trainer.data import cli
from trainer.data.lists import DataError, check_list, load_sample, parse_list, read_list, shift_ade20k
from trainer.data.synth import encode_palette_png


def _write_pair(root, stem, label, img_size=None, img_dir="JPEGImages", lbl_dir="SegmentationClassAug"):
    h, w = img_size or label.shape
    (root / img_dir).mkdir(parents=True, exist_ok=True)
    (root / lbl_dir).mkdir(parents=True, exist_ok=True)
    image = np.full((h, w, 3), 90, np.uint8)
    cv2.imwrite(str(root / img_dir / f"{stem}.jpg"), image)
    (root / lbl_dir / f"{stem}.png").write_bytes(encode_palette_png(label.astype(np.uint8)))
    return f"{img_dir}/{stem}.jpg {lbl_dir}/{stem}.png"


@pytest.fixture
def voc(tmp_path):
    """A list with one good line and one line of each kind of problem."""
    good = np.zeros((12, 16), np.uint8)
    good[3:6, 4:9] = 7
    good[6, 4:9] = 255
    lines = [
        "# a comment and a blank line are skipped",
        "",
        _write_pair(tmp_path, "good", good),                                   # 3
        "JPEGImages/only_one_field.jpg SegmentationClassAug/x.png extra",      # 4 malformed
        "JPEGImages/missing.jpg SegmentationClassAug/good.png",                # 5 missing file
        _write_pair(tmp_path, "badsize", good, img_size=(13, 16)),             # 6 size mismatch
        _write_pair(tmp_path, "badclass", np.where(good == 7, 21, good)),      # 7 class id 21 >= 21
        "JPEGImages/corrupt.jpg SegmentationClassAug/good.png",                # 8 unreadable image
    ]
    (tmp_path / "JPEGImages" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_check_reports_every_problem_with_file_and_line(voc):
    n, problems = check_list(voc / "train.txt", voc, "voc2012", 21)
    assert n == 6
    where = [p.split(": ", 1)[0] for p in problems]
    assert where == [f"{voc / 'train.txt'}:{i}" for i in (4, 5, 6, 7, 8)]
    text = "\n".join(problems)
    assert "malformed line" in problems[0] and "expected two paths" in problems[0]
    assert "missing file" in problems[1] and "missing.jpg" in problems[1]
    assert "16x13" in problems[2] and "16x12" in problems[2] and "must match" in problems[2]
    assert "class ids 21" in problems[3] and "classes=21" in problems[3]
    assert "unreadable image" in problems[4] and "corrupt.jpg" in problems[4]
    assert "good.jpg" not in text


def test_read_list_raises_on_format_and_missing_files(voc):
    with pytest.raises(DataError) as info:
        read_list(voc / "train.txt", voc)
    msg = str(info.value)
    assert f"{voc / 'train.txt'}:4: malformed line" in msg
    assert f"{voc / 'train.txt'}:5: missing file" in msg


@pytest.mark.parametrize("line,needle", [(6, "must match"), (7, "class ids 21"), (8, "unreadable image")])
def test_load_sample_errors_name_file_and_line(voc, line, needle):
    parsed, _ = parse_list(voc / "train.txt", voc, check_files=False)   # line 4 (malformed) is left out
    samples = {int(s.where.rsplit(":", 1)[1]): s for s in parsed}
    with pytest.raises(DataError, match=f"train.txt:{line}: .*{needle}"):
        load_sample(samples[line], classes=21)


def test_good_sample_and_voc_name_only_lines(voc):
    (voc / "names.txt").write_text("good\n")
    [s] = read_list(voc / "names.txt", voc)
    image, label = load_sample(s, classes=21)
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 7, 255}


def test_missing_and_empty_list_files(tmp_path):
    with pytest.raises(DataError, match="val.txt: list file not found"):
        read_list(tmp_path / "val.txt", tmp_path)
    (tmp_path / "val.txt").write_text("\n# nothing\n")
    with pytest.raises(DataError, match="val.txt: the list is empty"):
        read_list(tmp_path / "val.txt", tmp_path)


def test_greyscale_labels_and_colour_labels(tmp_path):
    ids = np.array([[0, 1], [2, 255]], np.uint8)
    line = _write_pair(tmp_path, "g", ids)
    Image.fromarray(ids, mode="L").save(tmp_path / "SegmentationClassAug" / "g.png")   # SBD-style greyscale
    (tmp_path / "l.txt").write_text(line + "\n")
    [s] = read_list(tmp_path / "l.txt", tmp_path)
    assert np.array_equal(load_sample(s, 21)[1], ids)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8), mode="RGB").save(tmp_path / "SegmentationClassAug" / "g.png")
    with pytest.raises(DataError, match="l.txt:1: label .* is a RGB image; expected class ids"):
        load_sample(s, 21)


def test_ade20k_shift(tmp_path):
    raw = np.array([[0, 1, 2], [150, 7, 0]], np.uint8)
    assert shift_ade20k(raw).tolist() == [[255, 0, 1], [149, 6, 255]]
    line = _write_pair(tmp_path, "a", raw, img_dir="images/training", lbl_dir="annotations/training")
    (tmp_path / "training.txt").write_text(line + "\n")
    [s] = read_list(tmp_path / "training.txt", tmp_path, dataset="ade20k")
    _, label = load_sample(s, classes=150, dataset="ade20k")
    assert label.tolist() == [[255, 0, 1], [149, 6, 255]]
    # 151 becomes 150: out of range for 150 classes, and the message says the shift was applied
    (tmp_path / "annotations" / "training" / "a.png").write_bytes(encode_palette_png(np.full((2, 3), 151, np.uint8)))
    with pytest.raises(DataError, match=r"training.txt:1: .*class ids 150 after the ADE20K shift"):
        load_sample(s, classes=150, dataset="ade20k")
    # the same raw label read as VOC: no shift, 150 is out of range for 21 classes
    (tmp_path / "annotations" / "training" / "a.png").write_bytes(encode_palette_png(raw))
    with pytest.raises(DataError, match="class ids 150"):
        load_sample(s, classes=21, dataset="voc2012")


def test_cli_check_lists_all_problems_and_fails(voc, capsys):
    (voc / "val.txt").write_text(_write_pair(voc, "v", np.zeros((4, 4), np.uint8)) + "\n")
    rc = cli.main(["check", f"data_root={voc}"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert len(out.strip().splitlines()) == 5 and "train.txt:8: unreadable image" in out
    assert "6 lines checked, 5 problem(s)" in err and "val.txt: 1 lines checked, 0 problem(s)" in err
    (voc / "train.txt").write_text((voc / "val.txt").read_text())
    assert cli.main(["check", f"data_root={voc}"]) == 0


def test_cli_synth_then_check(tmp_path, capsys):
    assert cli.main(["synth", str(tmp_path / "s"), "--images", "4", "--size", "40x30"]) == 0
    assert "wrote 4 images (3 train, 1 val, 40x30" in capsys.readouterr().out
    assert cli.main(["check", f"data_root={tmp_path / 's'}"]) == 0
    assert cli.main(["synth", str(tmp_path / "s")]) == 2          # non-empty: refused without --force
    assert "not empty" in capsys.readouterr().err
