"""Dataset checking (torch-free, imported by the app) and inspection (a subprocess that loads a tokenizer)."""
