"""Loaders for the six Long Range Arena tasks (Tay et al. 2021), from the files people actually have.

Every loader returns an :class:`LRAData`: three :class:`Split` s of token ids, right-padded with
``PAD_ID = 0`` to the longest sequence of the task (``seq_len``, at most the task's ``max_len``):

============  ===============================  ==========  =======  ========================================
task          ``inputs``                       vocab       classes  source
============  ===============================  ==========  =======  ========================================
listops       [N, T] int16, T <= 2000          18          10       LRA release ``listops-1000/`` (or generated)
text          [N, T] int16, T <= 4096          257         2        IMDB (``datasets`` or a local copy)
retrieval     [N, 2, T] int16, T <= 4000       257         2        LRA release ``tsv_data/new_aan_pairs.*``
image         [N, 1024] int16                  256         10       CIFAR-10 python batches
pathfinder    [N, 1024] int16                  256         2        LRA release ``pathfinder32/`` (or generated)
pathx         [N, 16384] int16                 256         2        LRA release ``pathfinder128/`` (or generated)
============  ===============================  ==========  =======  ========================================

``lengths`` is int64 [N] (retrieval: [N, 2]), ``labels`` int64 [N]. The files: the LRA release is
``lra_release.gz`` (linked from https://github.com/google-research/long-range-arena), IMDB comes from the
Hugging Face hub (``stanfordnlp/imdb``, the dataset ``imdb``) or a local copy, CIFAR-10 from
https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz. ListOps and Pathfinder can be generated instead
(``seqzoo lra generate listops --out DIR``; ``listops.py``, ``pathfinder.py``). A missing file raises
:class:`LRADataMissing` (a ``FileNotFoundError``) saying which files are expected where and where they come
from; a malformed one a ValueError naming the file and line.

**Tokens.**

- listops: the whitespace tokens of the release's ``Source`` strings, fixed vocabulary
  (``listops.LISTOPS_VOCAB``: pad 0, ``[MAX [MIN [MED [SM ] ( )``, digits 0-9); the parentheses are dropped
  unless ``keep_parens=True`` (they repeat what the brackets say and triple the length; LRA's own tokenizer
  drops them too). An unknown token is a ValueError naming the file and line.
- text, retrieval: the bytes of the UTF-8 text, id = byte + 1 (LRA's ``ByteTextEncoder``), vocab 257.
  Retrieval reads the TSV as bytes, so the ids are the file's own bytes.
- image, pathfinder, pathx: one token per pixel, row by row, id = gray value 0..255, vocab 256; every
  sequence is full length (``lengths`` = T), so no position is padding even where a pixel is 0.

**Splits.**

- listops, retrieval: the release's train / val (``eval``) / test files.
- text: IMDB's test set is the test split (as in LRA, which also evaluates on it during training); the
  validation split is 10% of the training set held out at random (fixed seed; ``val_fraction``, ``seed``),
  so that model selection never looks at the test set. Train is the other 90% (22,500 reviews).
- image: LRA uses ``tfds`` ``cifar10`` ``train[:90%]`` / ``train[90%:]`` / ``test``: 45,000 / 5,000 /
  10,000. We take the python batches in order, so the validation split is the last 5,000 training images
  (``data_batch_5``); tfds's order differs, so it is a different (equally random) 5,000.
- pathfinder, pathx: LRA splits each difficulty's 200,000 images 80% / 10% / 10% (tfds ``[:80%]``,
  ``[80%:90%]``, ``[90%:]``); we split in the order of the metadata files (``0.npy``, ``1.npy``, ... by
  number, rows in file order), with boundaries rounded to the nearest image.

Grayscale CIFAR is LRA's ``tf.image.rgb_to_grayscale``: float32 ``(0.2989 R + 0.5870 G + 0.1140 B) / 255``,
then ``* 255.5`` truncated to uint8 (``tf.image.convert_image_dtype``), reproduced in numpy.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .listops import LISTOPS_NUM_CLASSES, LISTOPS_VOCAB_SIZE, RELEASE_FILES, encode_listops

PAD_ID = 0
LRA_RELEASE = (
    "the LRA release (lra_release.gz, linked from https://github.com/google-research/long-range-arena)"
)
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
IMDB_HUB = "stanfordnlp/imdb"
AAN_FILES = ("new_aan_pairs.train.tsv", "new_aan_pairs.eval.tsv", "new_aan_pairs.test.tsv")
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"


class LRADataMissing(FileNotFoundError):
    """A task's files are not where the loader looked; the message says what is expected and from where."""


@dataclass
class Split:
    inputs: (
        torch.Tensor
    )  # int16 (int32 if vocab >= 32768) [N, T], right-padded with PAD_ID; retrieval [N, 2, T]
    lengths: torch.Tensor  # int64 [N] real lengths (retrieval: [N, 2])
    labels: torch.Tensor  # int64 [N] class ids in [0, n_classes)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class LRAData:
    name: str  # "listops" | "text" | "retrieval" | "image" | "pathfinder" | "pathx"
    train: Split
    val: Split
    test: Split
    vocab_size: int  # includes the pad id 0
    n_classes: int
    seq_len: int  # T (padded length)
    pairs: bool = False  # True for retrieval (two towers)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_max_len(max_len) -> None:
    _check(
        isinstance(max_len, (int, np.integer)) and not isinstance(max_len, bool) and max_len >= 1,
        f"max_len must be a positive integer, got {max_len!r}",
    )


def _pack(seqs: list[np.ndarray], seq_len: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id arrays to ``seq_len`` with PAD_ID: (inputs [N, seq_len], lengths int64 [N])."""
    np_dtype = np.int16 if vocab_size < 32768 else np.int32
    out = np.full((len(seqs), seq_len), PAD_ID, dtype=np_dtype)
    lengths = np.zeros(len(seqs), dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
        lengths[i] = len(s)
    return torch.from_numpy(out), torch.from_numpy(lengths)


def _labels(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.int64))


def _bytes_ids(data: bytes, max_len: int) -> np.ndarray:
    # id = byte + 1: 0 stays the pad id (LRA's ByteTextEncoder reserves it the same way).
    return np.frombuffer(data[:max_len], dtype=np.uint8).astype(np.int16) + 1


def _first_dir_with(candidates: list[Path], names) -> Path | None:
    for folder in candidates:
        if all((folder / n).is_file() for n in names):
            return folder
    return None


# -- ListOps ---------------------------------------------------------------------------------------------


def _listops_missing(folder) -> LRADataMissing:
    where = folder if folder is not None else "DIR"
    return LRADataMissing(
        f"ListOps data not found: expected {', '.join(RELEASE_FILES)} (header 'Source<TAB>Target') in {where} "
        f"(or in {where}/listops-1000). They come from {LRA_RELEASE}: lra_release/listops-1000/; or generate "
        f"them: `seqzoo lra generate listops --out {where}`."
    )


def _read_listops_tsv(path: Path, max_len: int, keep_parens: bool) -> tuple[list[np.ndarray], list[int]]:
    seqs, labels = [], []
    with open(path, encoding="utf-8", newline="\n") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            source, sep, target = line.rpartition("\t")
            if lineno == 1 and source.strip() == "Source" and target.strip() == "Target":
                continue  # the release's header
            if not sep:
                raise ValueError(f"{path}:{lineno}: expected 'source<TAB>target', found no tab")
            if len(source) >= 2 and source[0] == source[-1] == '"':
                source = source[1:-1]  # a CSV writer's quotes, if any
            try:
                label = int(target)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: the target {target!r} is not an integer") from None
            if not 0 <= label < LISTOPS_NUM_CLASSES:
                raise ValueError(f"{path}:{lineno}: the target {label} is not in 0..9")
            try:
                ids = encode_listops(source, keep_parens=keep_parens)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
            seqs.append(ids[:max_len])
            labels.append(label)
    return seqs, labels


def load_listops(folder, max_len: int = 2000, keep_parens: bool = False) -> LRAData:
    """ListOps from ``basic_{train,val,test}.tsv`` in ``folder`` (or ``folder/listops-1000``, or the
    release's ``folder/lra_release/listops-1000``), each truncated to ``max_len`` tokens."""
    _check_max_len(max_len)
    if folder is None:
        raise _listops_missing(None)
    folder = Path(folder)
    found = _first_dir_with(
        [folder, folder / "listops-1000", folder / "lra_release" / "listops-1000"], RELEASE_FILES
    )
    if found is None:
        raise _listops_missing(folder)
    parts = [_read_listops_tsv(found / name, max_len, keep_parens) for name in RELEASE_FILES]
    seq_len = max(1, max((len(s) for seqs, _ in parts for s in seqs), default=1))
    splits = []
    for seqs, labels in parts:
        inputs, lengths = _pack(seqs, seq_len, LISTOPS_VOCAB_SIZE)
        splits.append(Split(inputs, lengths, _labels(labels)))
    return LRAData(
        "listops", *splits, vocab_size=LISTOPS_VOCAB_SIZE, n_classes=LISTOPS_NUM_CLASSES, seq_len=seq_len
    )


# -- Text (IMDB) -----------------------------------------------------------------------------------------


def _text_missing(source, why: str = "") -> LRADataMissing:
    return LRADataMissing(
        f"IMDB not found{': ' + why if why else ''}. load_text reads it through `datasets` from the hub "
        f"(source=None: '{IMDB_HUB}', the dataset 'imdb', which needs the internet once) or from a local copy "
        f"(source=PATH, here {source!r}): a folder written by datasets' save_to_disk (a DatasetDict with 'train' "
        f"and 'test'), or a folder of train* and test* files (.parquet, .json, .jsonl or .csv; the hub's "
        f"plain_text/train-*.parquet work) with 'text' and 'label' columns."
    )


def _import_datasets():
    try:
        import datasets
    except ImportError as e:
        raise ImportError("loading IMDB needs the datasets package: pip install datasets") from e
    return datasets


def _read_records(path: Path) -> tuple[list[str], list[int]]:
    """text and label columns of one parquet / json / jsonl / csv file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path, columns=["text", "label"])
        except Exception as e:
            raise ValueError(f"{path}: cannot read 'text' and 'label' from this parquet file: {e}") from None
        cols = table.to_pydict()
        return cols["text"], cols["label"]
    if suffix == ".csv":
        import csv

        texts, labels = [], []
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
                raise ValueError(
                    f"{path}: a CSV with 'text' and 'label' columns is expected, found {reader.fieldnames}"
                )
            for row in reader:
                texts.append(row["text"])
                labels.append(row["label"])
        return texts, labels
    # .json / .jsonl: JSON lines, a list of records, or a dict of columns
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    try:
        data = json.loads(raw)
        records = data if isinstance(data, list) else None
        if isinstance(data, dict) and "text" in data and "label" in data:
            return list(data["text"]), list(data["label"])
    except json.JSONDecodeError:
        records = []
        for lineno, line in enumerate(raw.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not JSON: {e}") from None
    if records is None:
        raise ValueError(f"{path}: expected JSON lines or a list of records with 'text' and 'label'")
    try:
        return [r["text"] for r in records], [r["label"] for r in records]
    except (KeyError, TypeError):
        raise ValueError(f"{path}: every record needs 'text' and 'label'") from None


def _imdb_split_files(folder: Path, split: str) -> list[Path]:
    exts = {".parquet", ".json", ".jsonl", ".csv"}
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in exts and (p.name.startswith(split) or p.parent.name == split)
    )


def _imdb_columns(source) -> dict[str, tuple[list, list]]:
    """{'train': (texts, labels), 'test': (texts, labels)} from the hub or a local copy."""
    if source is None:
        datasets = _import_datasets()
        try:
            dd = datasets.load_dataset(IMDB_HUB)
        except Exception as e:  # offline, no such cache, ...: say what to do instead
            raise _text_missing(
                None, f"datasets.load_dataset({IMDB_HUB!r}) failed ({type(e).__name__}: {e})"
            ) from e
        return {s: (list(dd[s]["text"]), list(dd[s]["label"])) for s in ("train", "test")}
    path = Path(source)
    if not path.exists():
        raise _text_missing(source, f"{path} does not exist")
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        datasets = _import_datasets()
        dd = datasets.load_from_disk(str(path))
        missing = [s for s in ("train", "test") if s not in dd]
        if missing:
            raise _text_missing(
                source, f"the DatasetDict at {path} has no {missing} split (it has {list(dd)})"
            )
        return {s: (list(dd[s]["text"]), list(dd[s]["label"])) for s in ("train", "test")}
    if path.is_dir() and (path / "state.json").is_file():
        raise _text_missing(
            source, f"{path} holds a single Dataset; a DatasetDict with 'train' and 'test' is needed"
        )
    if not path.is_dir():
        raise _text_missing(source, f"{path} is not a folder")
    out = {}
    for split in ("train", "test"):
        files = _imdb_split_files(path, split)
        if not files:
            raise _text_missing(source, f"no {split}* file under {path}")
        texts, labels = [], []
        for file in files:
            t, l = _read_records(file)
            texts += t
            labels += l
        out[split] = (texts, labels)
    return out


def load_text(source=None, max_len: int = 4096, val_fraction: float = 0.1, seed: int = 0) -> LRAData:
    """IMDB sentiment at the byte level (see the module docstring for the splits).

    ``source``: None for the hub, or a local copy (a ``save_to_disk`` folder, or a folder of train*/test*
    parquet / json / jsonl / csv files with ``text`` and ``label``)."""
    _check_max_len(max_len)
    _check(
        isinstance(val_fraction, (int, float)) and 0 < val_fraction < 1,
        f"val_fraction must be in (0, 1), got {val_fraction!r}",
    )
    columns = _imdb_columns(source)
    encoded = {}
    for split, (texts, labels) in columns.items():
        try:
            labels = [int(v) for v in labels]
        except (TypeError, ValueError):
            raise ValueError(f"IMDB {split}: labels must be integers 0/1") from None
        bad = sorted({v for v in labels if v not in (0, 1)})
        _check(not bad, f"IMDB {split}: labels must be 0 or 1, found {bad[:5]}")
        seqs = [_bytes_ids(str(t).encode("utf-8"), max_len) for t in texts]
        encoded[split] = (seqs, labels)
    train_seqs, train_labels = encoded["train"]
    n = len(train_seqs)
    n_val = int(round(val_fraction * n))
    _check(0 < n_val < n, f"val_fraction={val_fraction} leaves no validation or no training example of {n}")
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, tr_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    parts = [
        ([train_seqs[i] for i in tr_idx], [train_labels[i] for i in tr_idx]),
        ([train_seqs[i] for i in val_idx], [train_labels[i] for i in val_idx]),
        encoded["test"],
    ]
    seq_len = max(1, max((len(s) for seqs, _ in parts for s in seqs), default=1))
    splits = []
    for seqs, labels in parts:
        inputs, lengths = _pack(seqs, seq_len, 257)
        splits.append(Split(inputs, lengths, _labels(labels)))
    return LRAData("text", *splits, vocab_size=257, n_classes=2, seq_len=seq_len)


# -- Retrieval (AAN) -------------------------------------------------------------------------------------


def _retrieval_missing(folder) -> LRADataMissing:
    where = folder if folder is not None else "DIR"
    return LRADataMissing(
        f"AAN retrieval data not found: expected {', '.join(AAN_FILES)} in {where} (or in {where}/tsv_data, "
        f"or {where}/lra_release/tsv_data). They come from {LRA_RELEASE}: lra_release/tsv_data/. Each line: "
        f"label<TAB>id1<TAB>id2<TAB>text1<TAB>text2, no header."
    )


def _read_aan_tsv(path: Path, max_len: int):
    firsts, seconds, labels = [], [], []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip(b"\n").rstrip(b"\r")
            if not line.strip():
                continue
            fields = line.split(b"\t")
            if len(fields) != 5:
                raise ValueError(
                    f"{path}:{lineno}: expected 5 tab-separated fields (label, id1, id2, text1, text2), "
                    f"found {len(fields)}"
                )
            try:
                label = float(fields[0])  # written as 0.0 / 1.0 (LRA reads the column as float32)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: the label {fields[0][:20]!r} is not a number") from None
            if label not in (0.0, 1.0):
                raise ValueError(f"{path}:{lineno}: the label {label} is not 0 or 1")
            labels.append(int(label))
            firsts.append(_bytes_ids(fields[3], max_len))
            seconds.append(_bytes_ids(fields[4], max_len))
    return firsts, seconds, labels


def load_retrieval(folder, max_len: int = 4000) -> LRAData:
    """AAN document matching: two byte-level documents per example (``inputs`` [N, 2, T]), each truncated to
    ``max_len`` bytes; label 1 if one cites the other."""
    _check_max_len(max_len)
    if folder is None:
        raise _retrieval_missing(None)
    folder = Path(folder)
    found = _first_dir_with(
        [
            folder,
            folder / "tsv_data",
            folder / "lra_release" / "tsv_data",
            folder / "lra_release" / "lra_release" / "tsv_data",
        ],
        AAN_FILES,
    )
    if found is None:
        raise _retrieval_missing(folder)
    parts = [_read_aan_tsv(found / name, max_len) for name in AAN_FILES]
    seq_len = max(1, max((len(s) for a, b, _ in parts for s in (*a, *b)), default=1))
    splits = []
    for firsts, seconds, labels in parts:
        x1, l1 = _pack(firsts, seq_len, 257)
        x2, l2 = _pack(seconds, seq_len, 257)
        splits.append(Split(torch.stack([x1, x2], dim=1), torch.stack([l1, l2], dim=1), _labels(labels)))
    return LRAData("retrieval", *splits, vocab_size=257, n_classes=2, seq_len=seq_len, pairs=True)


# -- Image (CIFAR-10) ------------------------------------------------------------------------------------


def _image_missing(folder) -> LRADataMissing:
    where = folder if folder is not None else "DIR"
    return LRADataMissing(
        f"CIFAR-10 not found: expected the python batches {', '.join(CIFAR_TRAIN)} and {CIFAR_TEST} in {where} "
        f"(or in {where}/cifar-10-batches-py): download {CIFAR_URL} and extract it there."
    )


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _latin1_encode(obj, encoding="latin1", errors="strict"):
    # Protocol-2 pickles written by Python 3 spell a bytes object as _codecs.encode(text, 'latin1').
    if str(encoding).lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(obj, "latin1", errors)


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR-10's official python format is a pickle (a dict of bytes keys, a uint8 array and lists), from a
    known source, not model weights; still, only what such a file needs may be rebuilt: numpy arrays and
    dtypes (and the latin-1 bytes of protocol-2 pickles). Anything else is refused."""

    def find_class(self, module, name):
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): lambda: np.ndarray,
            ("numpy", "dtype"): lambda: np.dtype,
            ("_codecs", "encode"): lambda: _latin1_encode,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a CIFAR batch (only numpy arrays)"
            )
        return allowed[(module, name)]()


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({e})") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR-10 python batch (a {type(batch).__name__}, not a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or labels is None:
        raise ValueError(f"{path}: a CIFAR-10 batch holds b'data' [N, 3072] uint8 and b'labels'")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError(f"{path}: b'labels' must be N class ids in 0..9")
    return data.astype(np.uint8, copy=False), labels


def cifar_to_gray(data: np.ndarray) -> np.ndarray:
    """CIFAR rows [N, 3072] (1024 R, 1024 G, 1024 B, each row-major 32 x 32) -> gray uint8 [N, 1024], as
    LRA's ``tf.image.rgb_to_grayscale`` on uint8 images computes it (float32 throughout)."""
    rgb = data.reshape(-1, 3, 1024).astype(np.float32) * np.float32(1.0 / 255.0)
    w = np.asarray([0.2989, 0.5870, 0.1140], dtype=np.float32)
    gray = rgb[:, 0] * w[0] + rgb[:, 1] * w[1] + rgb[:, 2] * w[2]
    return np.clip(gray * np.float32(255.5), 0, 255).astype(np.uint8)  # saturate_cast truncates


def load_image(folder, val_size: int = 5000) -> LRAData:
    """Grayscale CIFAR-10 as 1024 pixel tokens; train = the first 50,000 - ``val_size`` training images,
    val = the last ``val_size``, test = ``test_batch``."""
    _check(
        isinstance(val_size, (int, np.integer)) and not isinstance(val_size, bool) and val_size >= 1,
        f"val_size must be a positive integer, got {val_size!r}",
    )
    if folder is None:
        raise _image_missing(None)
    folder = Path(folder)
    found = _first_dir_with([folder, folder / "cifar-10-batches-py"], (*CIFAR_TRAIN, CIFAR_TEST))
    if found is None:
        raise _image_missing(folder)
    train = [_load_cifar_batch(found / name) for name in CIFAR_TRAIN]
    x_train = cifar_to_gray(np.concatenate([d for d, _ in train]))
    y_train = np.concatenate([l for _, l in train])
    x_test, y_test = _load_cifar_batch(found / CIFAR_TEST)
    x_test = cifar_to_gray(x_test)
    _check(val_size < len(x_train), f"val_size={val_size} must be below the {len(x_train)} training images")
    cut = len(x_train) - val_size
    splits = [
        _pixel_split(x_train[:cut], y_train[:cut]),
        _pixel_split(x_train[cut:], y_train[cut:]),
        _pixel_split(x_test, y_test),
    ]
    return LRAData("image", *splits, vocab_size=256, n_classes=10, seq_len=1024)


def _pixel_split(pixels: np.ndarray, labels: np.ndarray) -> Split:
    """uint8 images [N, ...] -> a Split of full-length pixel sequences."""
    n = len(pixels)
    flat = np.ascontiguousarray(pixels.reshape(n, -1))
    inputs = torch.from_numpy(flat.astype(np.int16))
    lengths = torch.full((n,), flat.shape[1], dtype=torch.int64)
    return Split(inputs, lengths, torch.from_numpy(np.asarray(labels, dtype=np.int64)))


# -- Pathfinder / Path-X ---------------------------------------------------------------------------------

DIFFICULTIES = ("curv_baseline", "curv_contour_length_9", "curv_contour_length_14")
_DIFFICULTY_ALIASES = {
    "easy": "curv_baseline",
    "intermediate": "curv_contour_length_9",
    "hard": "curv_contour_length_14",
}


def _pathfinder_missing(folder, resolution: int, difficulty: str | None, why: str = "") -> LRADataMissing:
    where = folder if folder is not None else "DIR"
    diff = difficulty or "curv_contour_length_14"
    task = "pathx" if resolution == 128 else "pathfinder"
    return LRADataMissing(
        f"Pathfinder ({resolution} x {resolution}) not found{': ' + why if why else ''}. Expected "
        f"{where}/pathfinder{resolution}/{diff}/metadata/0.npy, 1.npy, ... (text rows 'imgs/K sample_J.png J "
        f"LABEL ...') and the PNGs they name under {where}/pathfinder{resolution}/{diff}/imgs/K/. They come from "
        f"{LRA_RELEASE}: lra_release/pathfinder{resolution}/; or generate them: "
        f"`seqzoo lra generate {task} --out {where}`."
    )


def _pathfinder_root(folder: Path, resolution: int, difficulty: str | None) -> tuple[Path, str]:
    """The difficulty folder (the one holding metadata/) and its name."""
    name = f"pathfinder{resolution}"
    if (folder / "metadata").is_dir():  # folder is a difficulty folder itself
        return folder, folder.name
    bases = [folder / name, folder / "lra_release" / name, folder / "lra_release" / "lra_release" / name]
    if folder.name == name or any(p.name.startswith("curv_") for p in folder.iterdir() if p.is_dir()):
        bases.insert(0, folder)
    base = next((b for b in bases if b.is_dir()), None)
    if base is None:
        raise _pathfinder_missing(folder, resolution, difficulty, f"no {name} folder in {folder}")
    present = sorted(p.name for p in base.iterdir() if (p / "metadata").is_dir())
    if difficulty is None:
        if "curv_contour_length_14" in present:
            difficulty = "curv_contour_length_14"
        elif len(present) == 1:
            difficulty = present[0]
        else:
            raise _pathfinder_missing(
                folder, resolution, None, f"{base} holds the difficulties {present}: pass difficulty=..."
            )
    if difficulty not in present:
        raise _pathfinder_missing(folder, resolution, difficulty, f"{base} holds the difficulties {present}")
    return base / difficulty, difficulty


def _metadata_files(root: Path) -> list[Path]:
    files = list((root / "metadata").glob("*.npy"))
    return sorted(files, key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem))


def _metadata_rows(path: Path) -> list[list[str]]:
    """Rows of one metadata file: text lines despite the .npy name (the release), or a real .npy of strings."""
    raw = path.read_bytes()
    if raw.startswith(b"\x93NUMPY"):
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: a .npy file that is not an array of strings: {e}") from None
        return [[str(v) for v in row] for row in np.atleast_2d(arr)]
    return [line.split() for line in raw.decode("utf-8").splitlines() if line.strip()]


def _cache_key(root: Path, resolution: int, meta: list[Path]) -> str:
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in meta]
    blob = json.dumps([str(root.resolve()), resolution, stats])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _decode_pathfinder(root: Path, resolution: int, meta: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    from .pathfinder import _pil_image

    Image = _pil_image()
    entries = []
    for path in meta:
        for lineno, row in enumerate(_metadata_rows(path), start=1):
            if len(row) < 4:
                raise ValueError(f"{path}:{lineno}: expected 'SUBDIR FILE INDEX LABEL ...', found {row}")
            try:
                label = int(float(row[3]))
            except ValueError:
                raise ValueError(f"{path}:{lineno}: the label {row[3]!r} is not a number") from None
            if label not in (0, 1):
                raise ValueError(f"{path}:{lineno}: the label {label} is not 0 or 1")
            entries.append((root / row[0] / row[1], label))
    images = np.zeros((len(entries), resolution, resolution), dtype=np.uint8)
    labels = np.zeros(len(entries), dtype=np.int64)
    skipped: list[str] = []
    n = 0
    for file, label in entries:
        try:
            with Image.open(file) as im:
                pixels = np.asarray(im.convert("L"))
        except (OSError, ValueError) as e:  # missing, empty or corrupt: LRA drops empty images too
            skipped.append(f"{file} ({type(e).__name__})")
            continue
        if pixels.shape != (resolution, resolution):
            skipped.append(f"{file} (size {pixels.shape}, not {resolution} x {resolution})")
            continue
        images[n] = pixels
        labels[n] = label
        n += 1
    if skipped:
        warnings.warn(
            f"Pathfinder: skipped {len(skipped)} of {len(entries)} images listed in {root}/metadata: "
            + "; ".join(skipped[:3])
            + (" ..." if len(skipped) > 3 else ""),
            stacklevel=3,
        )
    return images[:n], labels[:n]


def load_pathfinder(
    folder,
    resolution: int = 32,
    difficulty: str | None = None,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    cache: bool = True,
    cache_dir=None,
) -> LRAData:
    """Pathfinder images of the release layout (``pathfinder.py`` module docstring) as pixel sequences.

    ``folder``: the folder holding ``pathfinder{R}/`` (as the release's ``lra_release/``, or what
    ``write_pathfinder_release`` wrote), or ``pathfinder{R}/`` itself, or a difficulty folder.
    ``difficulty``: ``curv_baseline``, ``curv_contour_length_9``, ``curv_contour_length_14`` (or easy /
    intermediate / hard); None takes ``curv_contour_length_14``, or the only difficulty present. Decoding
    200,000 PNGs takes a while, so the decoded images are cached as ``.npy`` files (in ``cache_dir``,
    default the difficulty folder; written atomically; keyed by the folder and its metadata files' sizes
    and times, so regenerated data is decoded afresh). Resolution 128 is LRA's Path-X (name ``pathx``)."""
    _check(
        isinstance(resolution, (int, np.integer)) and resolution in (32, 64, 128, 256),
        f"resolution must be one of 32, 64, 128, 256 (LRA's Pathfinder sizes), got {resolution!r}",
    )
    if difficulty is not None:
        _check(isinstance(difficulty, str), f"difficulty must be a string, got {difficulty!r}")
        difficulty = _DIFFICULTY_ALIASES.get(difficulty, difficulty)
    _check(
        isinstance(split_fractions, (tuple, list))
        and len(split_fractions) == 3
        and all(isinstance(v, (int, float)) and v >= 0 for v in split_fractions)
        and abs(sum(split_fractions) - 1) < 1e-6
        and split_fractions[0] > 0,
        f"split_fractions must be three non-negative fractions (train, val, test) summing to 1, got {split_fractions!r}",
    )
    if folder is None:
        raise _pathfinder_missing(None, resolution, difficulty)
    folder = Path(folder)
    if not folder.is_dir():
        raise _pathfinder_missing(folder, resolution, difficulty, f"{folder} is not a folder")
    root, difficulty = _pathfinder_root(folder, resolution, difficulty)
    meta = _metadata_files(root)
    if not meta:
        raise _pathfinder_missing(folder, resolution, difficulty, f"no metadata/*.npy in {root}")
    images = labels = None
    if cache:
        cdir = Path(cache_dir) if cache_dir is not None else root
        key = _cache_key(root, resolution, meta)
        stem = f"seqzoo_cache_pathfinder{resolution}_{difficulty}"
        img_file, lab_file = cdir / f"{stem}_{key}.images.npy", cdir / f"{stem}_{key}.labels.npy"
        if img_file.is_file() and lab_file.is_file():
            try:
                images = np.load(img_file, allow_pickle=False)
                labels = np.load(lab_file, allow_pickle=False)
                if images.shape[1:] != (resolution, resolution) or labels.shape != images.shape[:1]:
                    images = labels = None
            except (OSError, ValueError):
                images = labels = None  # a damaged cache: decode again
    if images is None:
        images, labels = _decode_pathfinder(root, resolution, meta)
        if cache:
            try:
                cdir.mkdir(parents=True, exist_ok=True)
                for old in cdir.glob(f"{stem}_*.npy"):  # caches of earlier contents of this folder
                    if old.name not in (img_file.name, lab_file.name):
                        old.unlink(missing_ok=True)
                _save_atomic(img_file, images)
                _save_atomic(lab_file, labels)
            except OSError as e:
                warnings.warn(
                    f"Pathfinder: could not write the decoded cache in {cdir} ({e}); not cached", stacklevel=2
                )
    n = len(images)
    if n == 0:
        raise _pathfinder_missing(
            folder, resolution, difficulty, f"none of the images listed in {root}/metadata could be read"
        )
    a = int(round(n * split_fractions[0]))
    b = int(round(n * (split_fractions[0] + split_fractions[1])))
    splits = [_pixel_split(images[s], labels[s]) for s in (slice(0, a), slice(a, b), slice(b, n))]
    name = "pathx" if resolution == 128 else "pathfinder"
    return LRAData(name, *splits, vocab_size=256, n_classes=2, seq_len=resolution * resolution)


def load_pathx(folder, resolution: int = 128, **kwargs) -> LRAData:
    """Path-X: :func:`load_pathfinder` at 128 x 128."""
    return load_pathfinder(folder, resolution=resolution, **kwargs)


# -- registry --------------------------------------------------------------------------------------------

LOADERS = {
    "listops": load_listops,
    "text": load_text,
    "retrieval": load_retrieval,
    "image": load_image,
    "pathfinder": load_pathfinder,
    "pathx": load_pathx,
}


def load_lra(name: str, data_dir=None, **kwargs) -> LRAData:
    """Load LRA task ``name`` from ``data_dir`` (for ``text``: the local copy, or None for the hub)."""
    if name not in LOADERS:
        raise ValueError(f"unknown LRA task {name!r}; the tasks are {list(LOADERS)}")
    return LOADERS[name](data_dir, **kwargs)
