"""Long Range Arena data: the ListOps and Pathfinder generators, and the loaders on tiny fixtures written
here in each task's real file format (no download)."""

from __future__ import annotations

import os
import pickle
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

from seqzoo.eval.lra.listops import (
    LISTOPS_VOCAB,
    OPERATORS,
    evaluate_listops,
    generate_listops,
    tokenize_listops,
    write_listops_release,
)
from seqzoo.eval.lra.loaders import (
    LOADERS,
    PAD_ID,
    LRAData,
    LRADataMissing,
    load_image,
    load_listops,
    load_lra,
    load_pathfinder,
    load_retrieval,
    load_text,
)
from seqzoo.eval.lra.pathfinder import generate_pathfinder, write_pathfinder_release

# -- ListOps ---------------------------------------------------------------------------------------------


def _structure(source: str) -> tuple[int, int, int]:
    """(operator nesting depth, fewest and most arguments of an operator) of a source, from its tokens."""
    stack, depth, least, most = [], 0, 10**9, 0
    for tok in source.split():
        if tok in OPERATORS:
            if stack:
                stack[-1] += 1
            stack.append(0)
            depth = max(depth, len(stack))
        elif tok == "]":
            n = stack.pop()
            least, most = min(least, n), max(most, n)
        elif tok.isdigit() and stack:
            stack[-1] += 1
    return depth, least, most


def test_listops_vocab_and_tokenizer():
    assert LISTOPS_VOCAB["<pad>"] == PAD_ID == 0
    assert len(LISTOPS_VOCAB) == 18 and sorted(LISTOPS_VOCAB.values()) == list(range(18))
    v = LISTOPS_VOCAB
    src = "( ( ( [MAX 2 ) 9 ) ] )"  # the release's format of [MAX 2 9 ]
    assert tokenize_listops(src) == [v["[MAX"], v["2"], v["9"], v["]"]]
    assert tokenize_listops(src, keep_parens=True) == [v[t] for t in src.split()]
    assert tokenize_listops("[SM 0 [MED 1 ] ]") == [v["[SM"], v["0"], v["[MED"], v["1"], v["]"], v["]"]]
    for bad in ("[MAX 12 ]", "[FIRST 1 ]", "[MAXX 1 ]", "[MAX 1 ] x"):
        with pytest.raises(ValueError, match="unknown ListOps token"):
            tokenize_listops(bad)


@pytest.mark.parametrize(
    "source, value",
    [
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[MIN 3 [MAX 1 0 ] 8 ]", 1),
        ("[SM 3 [MED 1 8 4 ] 5 ]", 2),  # (3 + 4 + 5) % 10
        ("[SM 9 9 9 ]", 7),
        ("[MED 1 2 3 4 ]", 2),  # int(np.median) = int(2.5)
        ("[MED 9 8 ]", 8),  # int(8.5)
        ("[MED 7 0 5 ]", 5),
        ("( ( ( [MAX 2 ) 9 ) ] )", 9),
        ("( ( ( ( [SM 5 ) ( ( ( [MIN 6 ) 7 ) ] ) ) 4 ) ] )", 5),  # [SM 5 [MIN 6 7 ] 4 ]
        ("4", 4),
    ],
)
def test_evaluate_listops_hand_written(source, value):
    assert evaluate_listops(source) == value


def test_evaluate_listops_median_matches_numpy_and_rejects_malformed():
    rng = np.random.default_rng(0)
    for _ in range(200):
        args = rng.integers(0, 10, size=rng.integers(2, 11)).tolist()
        assert evaluate_listops("[MED " + " ".join(map(str, args)) + " ]") == int(np.median(args))
        assert evaluate_listops("[SM " + " ".join(map(str, args)) + " ]") == sum(args) % 10
    for bad in ("[MAX 1 2", "[MAX ]", "1 2", "[MAX 1 ] ]", "( [MAX 1 ]", "[MAX 1 ] )", ""):
        with pytest.raises(ValueError):
            evaluate_listops(bad)


def test_generate_listops_is_deterministic():
    kw = dict(min_length=20, max_length=120, max_depth=6)
    a = generate_listops(30, seed=5, **kw)
    assert a == generate_listops(30, seed=5, **kw)
    assert a != generate_listops(30, seed=6, **kw)


@pytest.mark.parametrize(
    "n, kw",
    [
        (300, dict(min_length=50, max_length=300, max_depth=5)),  # the CPU configs' kind of data
        (25, dict()),  # LRA's: 500..2000 tokens, depth 10, 10 arguments
        (100, dict(min_length=10, max_length=40, max_depth=4, max_args=3)),
    ],
)
def test_generate_listops_respects_its_limits(n, kw):
    data = generate_listops(n, seed=1, **kw)
    lo, hi = kw.get("min_length", 500), kw.get("max_length", 2000)
    depth, args = kw.get("max_depth", 10), kw.get("max_args", 10)
    assert len(data) == n and len({s for s, _ in data}) == n  # distinct, as LRA's set
    for source, label in data:
        assert lo <= len(tokenize_listops(source)) <= hi
        d, least, most = _structure(source)
        assert 1 <= d <= depth - 1 and 2 <= least and most <= args
        assert 0 <= label <= 9 and label == evaluate_listops(source)


def test_generate_listops_bad_arguments_name_the_argument():
    for kwargs, name in [
        (dict(num_examples=-1), "num_examples"),
        (dict(num_examples=2.5), "num_examples"),
        (dict(num_examples=2, min_length=0), "min_length"),
        (dict(num_examples=2, max_args=1), "max_args"),
        (dict(num_examples=2, max_depth=0), "max_depth"),
        (dict(num_examples=2, min_length=30, max_length=20), "min_length"),
        (dict(num_examples=2, min_length=100, max_length=200, max_depth=2, max_args=10), "min_length"),
    ]:
        with pytest.raises(ValueError, match=name):
            generate_listops(**kwargs)


def test_generate_listops_gives_up_clearly_on_a_range_it_cannot_fill():
    # Only a handful of distinct expressions have 4 tokens with 2 arguments at depth 2: asking for more
    # must end with an error, not loop forever.
    with pytest.raises(ValueError, match="could draw only"):
        generate_listops(500, min_length=4, max_length=4, max_depth=2, max_args=2)


def _read_tsv(path: Path) -> list[tuple[str, int]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "Source\tTarget"
    rows = [line.rsplit("\t", 1) for line in lines[1:]]
    return [(s, int(t)) for s, t in rows]


def test_listops_release_round_trip(tmp_path):
    kw = dict(min_length=20, max_length=80, max_depth=5)
    folder = write_listops_release(
        tmp_path / "listops-1000", num_train=40, num_val=10, num_test=12, seed=3, **kw
    )
    rows = {split: _read_tsv(folder / f"basic_{split}.tsv") for split in ("train", "val", "test")}
    assert [len(rows[s]) for s in ("train", "val", "test")] == [40, 10, 12]
    sources = [s for split in rows.values() for s, _ in split]
    assert len(set(sources)) == len(sources)  # no example in two splits
    for split in rows.values():
        assert all(evaluate_listops(s) == t for s, t in split)
    # Same arguments, same files; and the loader finds the listops-1000 folder inside its parent.
    again = write_listops_release(tmp_path / "again", num_train=40, num_val=10, num_test=12, seed=3, **kw)
    assert (again / "basic_val.tsv").read_text() == (folder / "basic_val.tsv").read_text()
    data = load_listops(tmp_path)
    assert isinstance(data, LRAData) and data.name == "listops"
    assert (data.vocab_size, data.n_classes, data.pairs) == (18, 10, False)
    longest = max(len(tokenize_listops(s)) for s in sources)
    assert data.seq_len == longest
    for split_name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        assert split.inputs.dtype == torch.int16 and split.inputs.shape == (len(rows[split_name]), longest)
        assert split.lengths.dtype == split.labels.dtype == torch.int64
        for i, (source, target) in enumerate(rows[split_name]):
            ids = tokenize_listops(source)
            n = int(split.lengths[i])
            assert n == len(ids) and split.inputs[i, :n].tolist() == ids
            assert (split.inputs[i, n:] == PAD_ID).all()
            assert int(split.labels[i]) == target
    # max_len truncates; keep_parens keeps the parentheses.
    short = load_listops(folder, max_len=10)
    assert short.seq_len == 10 and int(short.train.lengths.max()) == 10
    assert short.train.inputs[0].tolist() == tokenize_listops(rows["train"][0][0])[:10]
    parens = load_listops(folder, keep_parens=True)
    assert parens.train.inputs[0, : int(parens.train.lengths[0])].tolist() == tokenize_listops(
        rows["train"][0][0], keep_parens=True
    )


def test_listops_loader_errors(tmp_path):
    with pytest.raises(LRADataMissing) as e:
        load_listops(tmp_path / "nowhere")
    message = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert (
        "basic_train.tsv" in message and "lra_release" in message and "seqzoo lra generate listops" in message
    )
    folder = write_listops_release(
        tmp_path / "d", num_train=3, num_val=2, num_test=2, min_length=5, max_length=30
    )
    lines = (folder / "basic_val.tsv").read_text().splitlines()
    lines[2] = lines[2].replace("[", "[FIRST ", 1)
    (folder / "basic_val.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"basic_val\.tsv:3: unknown ListOps token '\[FIRST'"):
        load_listops(folder)
    with pytest.raises(ValueError, match="max_len"):
        load_listops(folder, max_len=0)
    with pytest.raises(ValueError, match="num_val"):
        write_listops_release(tmp_path / "e", num_train=1, num_val=-1, num_test=1)


# -- Pathfinder ------------------------------------------------------------------------------------------

# The link distance of the generator's design: a dash gap spans at most LINK - 1 empty pixels, and two
# different paths are at least LINK + 1 apart (Chebyshev).
LINK = {32: 2, 128: 3}


def _components(mask: np.ndarray, box: int) -> np.ndarray:
    """Labels of ``mask`` dilated by a box x box square (anchored at the pixel), 8-connected: two lit pixels
    end up together iff a chain of lit pixels links them with steps of Chebyshev distance <= box."""
    R = mask.shape[0]
    grown = np.zeros((R + box, R + box), dtype=bool)
    for dy in range(box):
        for dx in range(box):
            grown[dy : dy + R, dx : dx + R] |= mask
    labels = np.full(grown.shape, -1, dtype=np.int64)
    n = 0
    for start in zip(*np.nonzero(grown)):
        if labels[start] >= 0:
            continue
        labels[start] = n
        queue = deque([start])
        while queue:
            y, x = queue.popleft()
            for yy in range(max(0, y - 1), min(grown.shape[0], y + 2)):
                for xx in range(max(0, x - 1), min(grown.shape[1], x + 2)):
                    if grown[yy, xx] and labels[yy, xx] < 0:
                        labels[yy, xx] = n
                        queue.append((yy, xx))
        n += 1
    return labels[:R, :R]


def _connected(image: np.ndarray, link: int) -> bool:
    """Are the two markers joined by a path? From the pixels alone: the markers are the two blobs at 255."""
    markers = _components(image == 255, 1)
    ids = sorted(set(markers[image == 255].tolist()))
    assert len(ids) == 2, f"expected two markers, found {len(ids)}"
    paths = _components(image > 0, link)
    a = set(paths[(markers == ids[0]) & (image == 255)].tolist())
    b = set(paths[(markers == ids[1]) & (image == 255)].tolist())
    assert len(a) == len(b) == 1
    return a == b


def test_pathfinder_is_deterministic():
    a, la = generate_pathfinder(6, seed=11)
    b, lb = generate_pathfinder(6, seed=11)
    c, _ = generate_pathfinder(6, seed=12)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("contour_length, n", [(14, 40), (9, 12), (6, 12)])
def test_pathfinder_32_labels_match_the_pixels(contour_length, n):
    images, labels = generate_pathfinder(n, resolution=32, contour_length=contour_length, seed=contour_length)
    assert images.shape == (n, 32, 32) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert labels.sum() == n // 2  # balanced
    assert set(np.unique(images).tolist()) == {0, 192, 255}
    for image, label in zip(images, labels):
        assert _connected(image, LINK[32]) == bool(label)


def test_pathfinder_128_labels_match_the_pixels():
    images, labels = generate_pathfinder(4, resolution=128, seed=2)
    assert images.shape == (4, 128, 128) and labels.tolist().count(1) == 2
    for image, label in zip(images, labels):
        assert _connected(image, LINK[128]) == bool(label)


def test_pathfinder_bad_arguments_name_the_argument():
    for kwargs, name in [
        (dict(resolution=33), "resolution"),
        (dict(contour_length=2), "contour_length"),
        (dict(num_distractors=-1), "num_distractors"),
        (dict(continuity=0.5), "continuity"),
        (dict(dash_value=255), "dash_value"),
    ]:
        with pytest.raises(ValueError, match=name):
            generate_pathfinder(2, **kwargs)
    with pytest.raises(ValueError, match="num_examples"):
        generate_pathfinder(-1)


def test_pathfinder_release_round_trip(tmp_path):
    from PIL import Image

    root = write_pathfinder_release(
        tmp_path, resolution=32, difficulty="easy", num_examples=30, images_per_folder=12, seed=4
    )
    assert root == tmp_path / "pathfinder32" / "curv_baseline"
    meta = sorted((root / "metadata").glob("*.npy"))
    assert [p.name for p in meta] == ["0.npy", "1.npy", "2.npy"]
    rows = [
        line.split() for k in range(3) for line in (root / "metadata" / f"{k}.npy").read_text().splitlines()
    ]
    assert (
        len(rows) == 30
        and rows[0][:4] == ["imgs/0", "sample_0.png", "0", rows[0][3]]
        and rows[12][0] == "imgs/1"
    )
    pixels = np.stack([np.asarray(Image.open(root / r[0] / r[1])) for r in rows])
    labels = np.array([int(r[3]) for r in rows])
    assert pixels.shape == (30, 32, 32) and pixels.dtype == np.uint8
    for image, label in zip(pixels, labels):
        assert _connected(image, LINK[32]) == bool(label)

    data = load_pathfinder(tmp_path, difficulty="curv_baseline")
    assert (data.name, data.vocab_size, data.n_classes, data.seq_len) == ("pathfinder", 256, 2, 1024)
    assert [len(data.train), len(data.val), len(data.test)] == [24, 3, 3]  # 80 / 10 / 10, in order
    inputs = torch.cat([data.train.inputs, data.val.inputs, data.test.inputs])
    assert inputs.dtype == torch.int16 and torch.equal(
        inputs, torch.from_numpy(pixels.reshape(30, -1).astype(np.int16))
    )
    assert torch.equal(
        torch.cat([data.train.labels, data.val.labels, data.test.labels]), torch.from_numpy(labels)
    )
    assert (data.train.lengths == 1024).all()
    caches = list(root.glob("seqzoo_cache_*.npy"))
    assert len(caches) == 2
    for png in root.glob("imgs/*/*.png"):  # from now on only the cache can answer
        png.unlink()
    # The cache is used (same data), found from the pathfinder32 folder or the difficulty folder too, and
    # the only difficulty present is found without naming it.
    for where in (tmp_path, tmp_path / "pathfinder32", root):
        again = load_pathfinder(where)
        assert torch.equal(again.train.inputs, data.train.inputs) and torch.equal(
            again.test.labels, data.test.labels
        )
    # Resuming with the same arguments writes nothing; other arguments on the same folder are refused.
    write_pathfinder_release(
        tmp_path, resolution=32, difficulty="easy", num_examples=30, images_per_folder=12, seed=4
    )
    assert not list(root.glob("imgs/*/*.png"))
    with pytest.raises(ValueError, match="other arguments"):
        write_pathfinder_release(
            tmp_path, resolution=32, difficulty="easy", num_examples=30, images_per_folder=12, seed=5
        )


def test_pathfinder_loader_errors(tmp_path):
    with pytest.raises(LRADataMissing) as e:
        load_pathfinder(tmp_path / "nowhere")
    message = str(e.value)
    assert (
        "pathfinder32/curv_contour_length_14/metadata" in message
        and "seqzoo lra generate pathfinder" in message
    )
    with pytest.raises(LRADataMissing, match="seqzoo lra generate pathx"):
        load_lra("pathx", tmp_path)
    with pytest.raises(ValueError, match="split_fractions"):
        load_pathfinder(tmp_path, split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="resolution"):
        load_pathfinder(tmp_path, resolution=30)
    with pytest.raises(ValueError, match="difficulty"):
        write_pathfinder_release(tmp_path, num_examples=2, difficulty="curv_medium")
    with pytest.raises(ValueError, match="contour_length"):
        write_pathfinder_release(tmp_path, num_examples=2, difficulty="hard", contour_length=6)


# -- Retrieval (AAN) -------------------------------------------------------------------------------------

AAN_ROWS = {
    "train": [("1.0", "a1", "b1", "Graph parsing.", "Café crème"), ("0.0", "a2", "b2", "x", "")],
    "eval": [("0", "a3", "b3", "short", "a longer second document")],
    "test": [("1", "a4", "b4", "tab-free text", "z")],
}


def test_retrieval_loader(tmp_path):
    folder = tmp_path / "lra_release" / "tsv_data"
    folder.mkdir(parents=True)
    for split, rows in AAN_ROWS.items():
        text = "".join("\t".join(r) + "\n" for r in rows)
        (folder / f"new_aan_pairs.{split}.tsv").write_bytes(text.encode("utf-8"))
    data = load_retrieval(tmp_path, max_len=20)
    assert (data.name, data.vocab_size, data.n_classes, data.pairs) == ("retrieval", 257, 2, True)
    assert data.seq_len == 20  # "a longer second document" is 24 bytes, truncated
    assert data.train.inputs.shape == (2, 2, 20) and data.train.lengths.shape == (2, 2)
    assert (
        data.train.labels.tolist() == [1, 0]
        and data.val.labels.tolist() == [0]
        and data.test.labels.tolist() == [1]
    )
    cafe = "Café crème".encode()
    assert data.train.lengths[0].tolist() == [14, len(cafe)]
    assert data.train.inputs[0, 1, : len(cafe)].tolist() == [b + 1 for b in cafe]
    assert (data.train.inputs[0, 1, len(cafe) :] == PAD_ID).all()
    assert data.train.lengths[1].tolist() == [1, 0]
    assert data.val.lengths[0].tolist() == [5, 20]
    assert torch.equal(load_lra("retrieval", folder, max_len=20).test.inputs, data.test.inputs)
    (folder / "new_aan_pairs.eval.tsv").write_text("1\ta\tb\tonly four fields\n")
    with pytest.raises(ValueError, match=r"new_aan_pairs\.eval\.tsv:1: expected 5 tab-separated fields"):
        load_retrieval(folder)
    with pytest.raises(LRADataMissing) as e:
        load_retrieval(tmp_path / "nowhere")
    assert "new_aan_pairs.train.tsv" in str(e.value) and "tsv_data" in str(e.value)


# -- Text (IMDB) -----------------------------------------------------------------------------------------


def _imdb_columns(n: int, offset: int) -> dict:
    texts = [f"review {offset + i}: {'good' if i % 2 else 'bad'} film ñ" * (1 + i % 3) for i in range(n)]
    return {"text": texts, "label": [i % 2 for i in range(n)]}


def test_text_loader_from_save_to_disk_and_parquet(tmp_path):
    datasets = pytest.importorskip("datasets")
    train, test = _imdb_columns(40, 0), _imdb_columns(10, 1000)
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(train), "test": datasets.Dataset.from_dict(test)}
    )
    dd.save_to_disk(str(tmp_path / "imdb"))
    data = load_text(tmp_path / "imdb", max_len=30)
    assert (data.name, data.vocab_size, data.n_classes, data.seq_len) == ("text", 257, 2, 30)
    assert [len(data.train), len(data.val), len(data.test)] == [36, 4, 10]
    # test = IMDB's test, in order, bytes + 1, truncated and padded
    for i, text in enumerate(test["text"]):
        raw = text.encode("utf-8")[:30]
        n = int(data.test.lengths[i])
        assert n == len(raw) and data.test.inputs[i, :n].tolist() == [b + 1 for b in raw]
        assert (data.test.inputs[i, n:] == PAD_ID).all()
    assert data.test.labels.tolist() == test["label"]

    # val and train partition IMDB's train set, deterministically
    def rows(split):
        return {tuple(split.inputs[i, : int(split.lengths[i])].tolist()) for i in range(len(split))}

    all_train = {tuple(b + 1 for b in t.encode("utf-8")[:30]) for t in train["text"]}
    assert rows(data.train) | rows(data.val) == all_train and not rows(data.train) & rows(data.val)
    assert torch.equal(load_text(tmp_path / "imdb", max_len=30).val.inputs, data.val.inputs)
    assert not torch.equal(load_text(tmp_path / "imdb", max_len=30, seed=1).val.inputs, data.val.inputs)
    # The hub's parquet layout gives the same data.
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    (tmp_path / "hub" / "plain_text").mkdir(parents=True)
    pq.write_table(pa.table(train), tmp_path / "hub" / "plain_text" / "train-00000-of-00001.parquet")
    pq.write_table(pa.table(test), tmp_path / "hub" / "plain_text" / "test-00000-of-00001.parquet")
    pq.write_table(
        pa.table(_imdb_columns(5, 99)),
        tmp_path / "hub" / "plain_text" / "unsupervised-00000-of-00001.parquet",
    )
    other = load_lra("text", tmp_path / "hub", max_len=30)
    for a, b in ((other.train, data.train), (other.val, data.val), (other.test, data.test)):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)


def test_text_loader_errors(tmp_path):
    with pytest.raises(LRADataMissing) as e:
        load_text(tmp_path / "nowhere")
    assert "stanfordnlp/imdb" in str(e.value) and "save_to_disk" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LRADataMissing, match="no train"):
        load_text(tmp_path / "empty")
    with pytest.raises(ValueError, match="val_fraction"):
        load_text(tmp_path / "empty", val_fraction=1.5)


# -- Image (CIFAR-10) ------------------------------------------------------------------------------------

# One pixel of each colour, and the gray value tf.image.rgb_to_grayscale gives it on a uint8 image.
COLOURS = [((255, 0, 0), 76), ((0, 255, 0), 149), ((0, 0, 255), 29), ((255, 255, 255), 255), ((0, 0, 0), 0)]


def _cifar_batch(path: Path, n: int, first_label: int) -> np.ndarray:
    rng = np.random.default_rng(first_label)
    rgb = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    for k, (colour, _) in enumerate(COLOURS):
        rgb[0, 0, k] = colour
    data = rgb.transpose(0, 3, 1, 2).reshape(n, 3072)  # CIFAR's rows: 1024 R, then G, then B
    batch = {
        b"batch_label": b"fixture",
        b"labels": [(first_label + i) % 10 for i in range(n)],
        b"data": data,
        b"filenames": [b"img%d.png" % i for i in range(n)],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)  # CIFAR's batches are protocol-2 pickles
    return rgb


def test_image_loader(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rgbs = [_cifar_batch(folder / f"data_batch_{i}", 4, i) for i in range(1, 6)]
    test_rgb = _cifar_batch(folder / "test_batch", 3, 7)
    data = load_image(tmp_path, val_size=4)
    assert (data.name, data.vocab_size, data.n_classes, data.seq_len) == ("image", 256, 10, 1024)
    assert [len(data.train), len(data.val), len(data.test)] == [16, 4, 3]
    assert data.train.inputs.dtype == torch.int16 and (data.train.lengths == 1024).all()
    for k, (_, gray) in enumerate(COLOURS):
        assert int(data.train.inputs[0, k]) == gray and int(data.test.inputs[0, k]) == gray
    # every pixel: float32 luma of the /255 image, * 255.5, truncated (tf's convert_image_dtype)
    x = rgbs[4].astype(np.float32) / np.float32(255)
    expect = np.floor((x @ np.array([0.2989, 0.5870, 0.1140], np.float32)) * np.float32(255.5)).reshape(4, -1)
    assert np.abs(data.val.inputs.numpy() - expect).max() <= 1  # float32 summation order may differ by 1
    assert data.train.labels.tolist() == [(i + j) % 10 for i in range(1, 5) for j in range(4)]
    assert data.val.labels.tolist() == [(5 + j) % 10 for j in range(4)]  # the last training batch
    assert data.test.labels.tolist() == [7, 8, 9] and test_rgb.shape == (3, 32, 32, 3)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_image_loader_refuses_pickles_that_are_not_cifar(tmp_path):
    for i in range(1, 6):
        _cifar_batch(tmp_path / f"data_batch_{i}", 2, i)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"test_batch: not a CIFAR-10 python batch \(refusing"):
        load_image(tmp_path, val_size=2)
    with pytest.raises(LRADataMissing) as e:
        load_image(tmp_path / "nowhere")
    assert "data_batch_1" in str(e.value) and "cifar-10-python.tar.gz" in str(e.value)
    with pytest.raises(ValueError, match="val_size"):
        load_image(tmp_path, val_size=0)


# -- registry --------------------------------------------------------------------------------------------


def test_registry(tmp_path):
    assert list(LOADERS) == ["listops", "text", "retrieval", "image", "pathfinder", "pathx"]
    with pytest.raises(ValueError, match="unknown LRA task 'imdb'.*listops"):
        load_lra("imdb", tmp_path)
    for name, expected in [
        ("listops", "basic_train.tsv"),
        ("retrieval", "new_aan_pairs"),
        ("image", "data_batch_1"),
        ("pathfinder", "pathfinder32"),
        ("pathx", "pathfinder128"),
    ]:
        with pytest.raises(LRADataMissing, match=expected):
            load_lra(name, None)
