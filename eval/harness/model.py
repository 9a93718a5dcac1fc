"""``SeqzooLM``: a trained seqzoo run as an lm-eval-harness model (registered as ``seqzoo``).

    lm_eval --model seqzoo --model_args path=runs/tiny-attention --tasks seqzoo_stdlib
    seqzoo eval runs/tiny-attention --tasks seqzoo_stdlib          # the same, plus a table and the JSON

The three request types, with the run's own tokenizer (bytes or BPE) and its end-of-text id before every
text (the recipe packs documents with it between them, so it is how a document begins for the model):

- ``loglikelihood(context, continuation)``: log p(continuation | context) = sum over the continuation's
  tokens of log softmax(logits)[token], from one forward pass over context + continuation (the last
  ``max_length + 1`` tokens of it), in batches of similar lengths, right-padded (every mixer is causal,
  so padding after a sequence never changes its logits). ``is_greedy``: every continuation token is the
  argmax.
- ``loglikelihood_rolling(text)``: log p(text) over disjoint windows of ``max_length`` tokens, each window
  seeing the tokens before it up to ``max_length`` (the harness's own windowing: every token is predicted
  once, with as much context as the window allows). With windows aligned to the model's training length,
  this is the recipe's validation loss times the token count (tests/test_lm_eval.py).
- ``generate_until(context, {until, max_gen_toks})``: greedy decoding with ``prefill`` over the context and
  one ``step`` per token, so recurrent mixers decode in constant memory (attention grows its KV cache);
  stops at the first stop sequence (cut from the output) or after ``max_gen_toks``; equals
  ``CausalLM.generate(temperature=0)`` (test).

``max_length`` defaults to the sequence length the run trained on (``data.seq_len``; the learned positions'
count caps it): recurrent mixers accept longer inputs, but a model scored beyond its training length is
measuring extrapolation, so that is opt-in (``--model_args max_length=N``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

DEFAULT_MAX_GEN_TOKS = 256


def _int_arg(name: str, value, minimum: int = 1) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"seqzoo model: {name} must be an integer, got {value!r}") from None
    if out < minimum:
        raise ValueError(f"seqzoo model: {name} must be >= {minimum}, got {out}")
    return out


def run_max_length(run_dir: Path, model) -> int:
    """The context the run trained with (``data.seq_len`` of its config), capped by learned positions."""
    length = None
    config_file = run_dir / "config.yaml"
    if config_file.is_file():
        from seqzoo.train.config import load_config

        config = load_config(config_file)
        length = int(config.data.task_args.get("seq_len", config.data.seq_len))
    positions = model.config.position_embeddings
    if positions:
        length = min(length, positions) if length else positions
    return length or 2048


@register_model("seqzoo")
class SeqzooLM(TemplateLM):
    """A seqzoo run folder (``path=runs/NAME``: its final model, or its latest checkpoint) for the harness.

    model_args: ``path`` (required), ``device`` (default: the harness's ``--device`` or cpu),
    ``batch_size`` (loglikelihood requests per forward pass, default 8), ``max_length`` (default: the run's
    training length), ``max_gen_toks`` (default 256), ``dtype`` (float32 / bfloat16 / float16).
    """

    def __init__(
        self,
        path: str | None = None,
        device: str | None = None,
        batch_size: int | str | None = 8,
        max_length: int | str | None = None,
        max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS,
        dtype: str | None = None,
        **unused,
    ) -> None:
        super().__init__()
        if path is None:
            raise ValueError("seqzoo model: give the run folder, e.g. --model_args path=runs/tiny-attention")
        from seqzoo.train.generate import load_run_model
        from seqzoo.train.tokenizers import load_run_tokenizer

        run_dir = Path(path)
        if run_dir.name == "model" and not (run_dir / "config.yaml").is_file():
            run_dir = run_dir.parent  # path=runs/NAME/model: the run is its parent
        if not run_dir.is_dir():
            raise FileNotFoundError(
                f"seqzoo model: no run folder at {run_dir} (path= names a seqzoo train run)"
            )
        self.run_dir = run_dir
        self._device = torch.device(device or "cpu")
        if self._device.type == "cuda" and not torch.cuda.is_available():
            # lm_eval's CLI asks for cuda:0 unless told otherwise: run on the CPU (same results), and say so.
            logging.getLogger("seqzoo").warning(
                "seqzoo model: %s asked for but no GPU is available; running on cpu", device
            )
            self._device = torch.device("cpu")
        self.model = load_run_model(run_dir, self._device).eval()
        self.tokenizer = load_run_tokenizer(run_dir)
        if dtype not in (None, "auto"):
            dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
            if dtype not in dtypes:
                raise ValueError(f"seqzoo model: dtype must be one of {sorted(dtypes)}, got {dtype!r}")
            self.model = self.model.to(dtypes[dtype])
        # The harness passes "auto" when asked to find the largest batch; a fixed default is simpler here.
        self.batch_size = 8 if batch_size in (None, "auto") else _int_arg("batch_size", batch_size)
        self.max_length = (
            run_max_length(run_dir, self.model) if max_length is None else _int_arg("max_length", max_length)
        )
        self.max_gen_toks = _int_arg("max_gen_toks", max_gen_toks)

    # -- what TemplateLM needs ---------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return f"seqzoo-{self.tokenizer.kind}-{self.tokenizer.vocab_size}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Token ids of ``string``, after the end-of-text id unless ``add_special_tokens=False``.

        The recipe packs documents with end-of-text between them, so that id before a text is how the
        model has seen a document begin (the harness's own split of context and continuation keeps it
        on the context side)."""
        ids = self.tokenizer.encode(string)
        return ids if add_special_tokens is False else [self.eot_token_id, *ids]

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    def get_model_info(self) -> dict:
        return {
            "model_path": str(self.run_dir),
            "model_num_parameters": self.model.num_parameters(),
            "model_mixers": str(self.model.config.mixer),
            "max_length": self.max_length,
        }

    # -- scoring -----------------------------------------------------------------------------------

    @torch.no_grad()
    def score_tokens(self, pairs: list[tuple[list[int], list[int]]], disable_tqdm: bool = True):
        """(log p(continuation | context), is_greedy) for token pairs, in the order given.

        The input is the last ``max_length + 1`` tokens of context + continuation minus its last token;
        the continuation's tokens are scored at the last ``len(continuation)`` positions."""
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="seqzoo: loglikelihood", disable=disable_tqdm):
            inputs, n_cont = [], []
            for i in batch:
                context, continuation = pairs[i]
                if not continuation:
                    raise ValueError("loglikelihood: the continuation encodes to no tokens")
                whole = (list(context) + list(continuation))[-(self.max_length + 1) :]
                inputs.append(whole[:-1])
                n_cont.append(min(len(continuation), len(whole) - 1))
            width = max(len(x) for x in inputs)
            ids = torch.zeros(len(inputs), width, dtype=torch.long)
            for row, x in enumerate(inputs):
                ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
            logprobs = F.log_softmax(self.model(ids.to(self._device)).float(), dim=-1)
            for row, i in enumerate(batch):
                length, n = len(inputs[row]), n_cont[row]
                target = torch.tensor(pairs[i][1][-n:], dtype=torch.long, device=self._device)
                lp = logprobs[row, length - n : length]
                logp = lp.gather(-1, target[:, None]).sum().item()
                greedy = bool((lp.argmax(-1) == target).all())
                results[i] = (logp, greedy)
        return results

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        scored = self.score_tokens([(ctx, cont) for _, ctx, cont in requests], disable_tqdm)
        for (pair, _, _), answer in zip(requests, scored):
            if pair is not None:
                self.cache_hook.add_partial("loglikelihood", pair, answer)
        return scored

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for request in tqdm(requests, desc="seqzoo: rolling loglikelihood", disable=disable_tqdm):
            (text,) = request.args
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(text, add_special_tokens=False),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            total = sum(logp for logp, _ in self.score_tokens(windows))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    # -- generation --------------------------------------------------------------------------------

    @torch.no_grad()
    def greedy_until(self, context: str, until: list[str], max_gen_toks: int) -> str:
        """Greedy continuation of ``context``: prefill, then one ``step`` per token, cut at a stop string."""
        ids = self.tok_encode(context)  # [end-of-text, *context]
        # Keep room for the new tokens inside max_length (learned positions end there; so does training).
        keep = max(1, self.max_length - max_gen_toks)
        ids = ids[-keep:]
        logits, states = self.model.prefill(torch.tensor([ids], device=self._device))
        next_logits = logits[:, -1]
        new: list[int] = []
        text = ""
        for i in range(max_gen_toks):
            token = next_logits.float().argmax(-1)
            if int(token) == self.eot_token_id:
                break
            new.append(int(token))
            text = self.tok_decode(new)
            if any(s in text for s in until):
                break
            if i + 1 < max_gen_toks:
                next_logits, states = self.model.step(token, states)
        for s in until:
            text = text.split(s)[0]
        return text

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in tqdm(requests, desc="seqzoo: generate_until", disable=disable_tqdm):
            context, gen_kwargs = request.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = _int_arg("max_gen_toks", kwargs.pop("max_gen_toks", self.max_gen_toks))
            if kwargs.pop("do_sample", False) or float(kwargs.pop("temperature", 0.0) or 0.0) > 0:
                raise ValueError(
                    "seqzoo model: generate_until decodes greedily; sampling (do_sample / temperature > 0) "
                    "is not supported"
                )
            text = self.greedy_until(context, until, max_gen)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out
