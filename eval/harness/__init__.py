"""lm-eval-harness for seqzoo runs: the harness model ``seqzoo`` and offline tasks.

- :mod:`.model`: ``SeqzooLM``, a run folder as a harness model (loglikelihood, rolling, generate_until);
- :mod:`.command`: ``seqzoo eval RUN_DIR --tasks ...`` and :func:`run_eval` (the recipe's ``eval.tasks``);
- ``tasks/``: task YAML files that need no download (``seqzoo_stdlib``, ``_gen``, ``_ppl``);
- :mod:`.plugin`: makes ``lm_eval --model seqzoo`` find the model (see its docstring).

Nothing here imports lm-eval until it is used: ``pip install 'seqzoo[eval]'`` adds it.
"""
