"""Interoperation with other libraries' model formats (``seqzoo.interop.hf``: Hugging Face transformers)."""
