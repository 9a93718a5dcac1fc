"""``seqzoo convert FOLDER --to RUN`` and ``seqzoo export RUN --hf FOLDER``: transformers checkpoints <-> runs.

``convert`` reads a transformers checkpoint folder (config.json + safetensors; no network, no transformers)
and writes a run folder like the ones ``seqzoo train`` writes, so every command that takes a run takes it:

    RUN/model/               config.json + model.safetensors (CausalLM.save)
    RUN/tokenizer.json       the checkpoint's tokenizer (with tokenizer_config.json: its eos token)
    RUN/hf_config.json       the checkpoint's config.json (export writes its other fields back)
    RUN/config.yaml          a recipe config of this model: `seqzoo train RUN/config.yaml data...` fine-tunes it
                             (finetune.init_from = RUN; it writes to runs/<RUN name>-finetune)

``export`` writes a run's model (final or latest checkpoint) back as a transformers folder, with its tokenizer.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _copy_tokenizer(src: Path, dst: Path) -> bool:
    if not (src / "tokenizer.json").is_file():
        return False
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    return True


def convert(folder, run_dir, dtype: str | None = None, seq_len: int = 2048) -> Path:
    """Convert a transformers checkpoint folder into the run folder ``run_dir``; returns it."""
    from seqzoo.interop.hf import load_hf

    from .config import dump_config, load_config

    folder, run_dir = Path(folder), Path(run_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {folder}")
    if (run_dir / "model").exists() or (run_dir / "checkpoints").exists():
        raise FileExistsError(f"{run_dir} already holds a run: give a new --to folder")
    model = load_hf(folder, dtype)
    has_tokenizer = (folder / "tokenizer.json").is_file()
    if has_tokenizer:
        from .tokenizers import HFTokenizer

        HFTokenizer.load(folder)  # a tokenizer without an eos token fails now, before the run is written
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "model")
    shutil.copyfile(folder / "config.json", run_dir / "hf_config.json")
    _copy_tokenizer(folder, run_dir)
    if not has_tokenizer:
        warnings.warn(
            f"{folder} has no tokenizer.json: {run_dir} has no tokenizer. Put one there before generating or "
            f"evaluating: a tokenizers file as {run_dir / 'tokenizer.json'} (with tokenizer_config.json naming "
            f"its eos_token), or the word 'bytes' in {run_dir / 'tokenizer.txt'} for a byte-level model",
            stacklevel=2,
        )
    fields = model.config.model_dump()
    raw = {
        "name": f"{run_dir.name}-finetune",
        "model": {**fields, "mixer_settings": "none"},
        "data": {"seq_len": seq_len},
        "finetune": {"init_from": str(run_dir.resolve())},
    }
    if has_tokenizer:
        raw["data"]["tokenizer"] = {"kind": "path", "path": str((run_dir / "tokenizer.json").resolve())}
    (run_dir / "config.yaml").write_text(dump_config(load_config(raw)))
    return run_dir


def export(run_dir, folder) -> Path:
    """Write the run's model as a transformers checkpoint folder (with the run's tokenizer files)."""
    from seqzoo.interop.hf import read_hf_config, save_hf

    from .generate import load_run_model

    run_dir, folder = Path(run_dir), Path(folder)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder at {run_dir}")
    model = load_run_model(run_dir)
    base = run_dir / "hf_config.json"
    save_hf(model, folder, read_hf_config(base) if base.is_file() else None)
    _copy_tokenizer(run_dir, folder)
    return folder


class ConvertCommand:
    @staticmethod
    def configure_parser(p) -> None:
        p.add_argument("folder", help="a transformers checkpoint folder (config.json + model.safetensors)")
        p.add_argument("--to", required=True, dest="run_dir", help="the run folder to write (new)")
        p.add_argument(
            "--dtype",
            default=None,
            choices=["float32", "float64", "bfloat16", "float16"],
            help="the dtype the run stores its weights in (default float32; seqzoo computes in fp32 unless told)",
        )
        p.add_argument(
            "--seq-len", type=int, default=2048, help="data.seq_len of the run's config (eval's context)"
        )

    @staticmethod
    def main(args) -> int:
        try:
            run = convert(args.folder, args.run_dir, args.dtype, args.seq_len)
        except (FileNotFoundError, FileExistsError) as e:
            print(f"seqzoo convert: {e}", file=sys.stderr)
            return 2
        print(f"converted {args.folder} -> {run} (seqzoo generate {run}; seqzoo eval {run})")
        return 0


class ExportCommand:
    @staticmethod
    def configure_parser(p) -> None:
        p.add_argument("run_dir", help="a run folder (seqzoo train or seqzoo convert wrote it)")
        p.add_argument("--hf", required=True, dest="folder", help="the transformers folder to write")

    @staticmethod
    def main(args) -> int:
        try:
            folder = export(args.run_dir, args.folder)
        except FileNotFoundError as e:
            print(f"seqzoo export: {e}", file=sys.stderr)
            return 2
        print(f"exported {args.run_dir} -> {folder}")
        return 0
