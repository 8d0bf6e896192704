"""Exports of a finished run: merged model (also from 4-bit runs), GGUF, GGUF LoRA, Ollama Modelfile, Hub.

`python -m worker.export` runs one (worker/export/run.py); every export passes a parity check against the
adapter on its base (parity.py) before it is published. Torch and llama.cpp are imported lazily.
"""
