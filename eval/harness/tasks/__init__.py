"""seqzoo's offline lm-eval task files (YAML) and the functions that build their documents."""
