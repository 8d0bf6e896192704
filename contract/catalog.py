"""What Tuneboard knows about models and datasets *without* importing torch.

The config schema, the app's form and the VRAM estimate read this catalogue; the worker's
`worker.presets` builds the actual tiny models from it. Keep this module import-light.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a model family member, enough to validate a config and estimate memory."""

    name: str
    architecture: str
    description: str
    max_seq_len: int
    params_billion: float  # total parameters (text model when the towers are not used)
    quantizable_fraction: float  # share of parameters living in nn.Linear layers that 4-bit can pack
    hidden_size: int
    num_layers: int
    vocab_size: int
    notes: tuple[str, ...] = field(default_factory=tuple)
    # Parameters of frozen lookup tables a GPU run keeps in CPU memory (worker/train/speed/host_tables.py):
    # Gemma 3n's per-layer embeddings, layers × 256 × 262,144.
    host_table_params: int = 0


# Presets are built locally from configs with random weights (see worker/presets.py): no download.
PRESET_MODELS: dict[str, ModelInfo] = {
    "tiny-gemma3n": ModelInfo(
        name="tiny-gemma3n",
        architecture="Gemma3nForCausalLM",
        description="Gemma 3n text model shrunk to 4 layers / hidden 64 (random weights, byte tokenizer)",
        max_seq_len=512,
        params_billion=0.0004,
        quantizable_fraction=0.5,
        hidden_size=64,
        num_layers=4,
        vocab_size=512,
    ),
    "tiny-gemma3n-multimodal": ModelInfo(
        name="tiny-gemma3n-multimodal",
        architecture="Gemma3nForConditionalGeneration",
        description="Gemma 3n with audio and vision towers, shrunk (random weights)",
        max_seq_len=512,
        params_billion=0.002,
        quantizable_fraction=0.5,
        hidden_size=64,
        num_layers=4,
        vocab_size=512,
        notes=(
            "This preset's vision tower is a small stand-in module (timm is not a dependency): it cannot "
            "look at images; the text path, audio tower and the Gemma 3n recipe train as usual.",
        ),
    ),
    "tiny-llama": ModelInfo(
        name="tiny-llama",
        architecture="LlamaForCausalLM",
        description="Llama shrunk to 4 layers / hidden 128 (random weights, byte tokenizer)",
        max_seq_len=512,
        params_billion=0.0003,
        quantizable_fraction=0.6,
        hidden_size=128,
        num_layers=4,
        vocab_size=512,
    ),
}

# Real models we know the size of, for the VRAM estimate and sequence-length checks.
KNOWN_HUB_MODELS: dict[str, ModelInfo] = {
    "google/gemma-3n-E2B-it": ModelInfo(
        name="google/gemma-3n-E2B-it",
        architecture="Gemma3nForConditionalGeneration",
        description="Gemma 3n E2B (instruction tuned)",
        max_seq_len=32768,
        params_billion=5.4,
        quantizable_fraction=0.55,
        hidden_size=2048,
        num_layers=30,
        vocab_size=262400,
        host_table_params=30 * 256 * 262144,
    ),
    "google/gemma-3n-E4B-it": ModelInfo(
        name="google/gemma-3n-E4B-it",
        architecture="Gemma3nForConditionalGeneration",
        description="Gemma 3n E4B (instruction tuned)",
        max_seq_len=32768,
        params_billion=7.8,
        quantizable_fraction=0.6,
        hidden_size=2048,
        num_layers=35,
        vocab_size=262400,
        host_table_params=35 * 256 * 262144,
    ),
    "meta-llama/Llama-3.2-1B-Instruct": ModelInfo(
        name="meta-llama/Llama-3.2-1B-Instruct",
        architecture="LlamaForCausalLM",
        description="Llama 3.2 1B (instruction tuned)",
        max_seq_len=131072,
        params_billion=1.24,
        quantizable_fraction=0.8,
        hidden_size=2048,
        num_layers=16,
        vocab_size=128256,
    ),
}
KNOWN_HUB_MODELS["google/gemma-3n-E2B"] = KNOWN_HUB_MODELS["google/gemma-3n-E2B-it"]
KNOWN_HUB_MODELS["google/gemma-3n-E4B"] = KNOWN_HUB_MODELS["google/gemma-3n-E4B-it"]


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset the worker can generate locally."""

    name: str
    description: str
    format: str  # messages | prompt_completion | text | preference (chosen/rejected pairs)


PRESET_DATASETS: dict[str, DatasetInfo] = {
    "reverse-letters": DatasetInfo(
        name="reverse-letters",
        description="Chat task: reverse the letters of a random short word (hard for the tiny presets: "
        "needs a few hundred steps to get below chance)",
        format="messages",
    ),
    "uppercase-completion": DatasetInfo(
        name="uppercase-completion",
        description="prompt/completion pairs: repeat a word in upper case",
        format="prompt_completion",
    ),
    "counting-text": DatasetInfo(
        name="counting-text",
        description="Plain text: short counting sequences",
        format="text",
    ),
    "country-capitals": DatasetInfo(
        name="country-capitals",
        description="Chat task: name the capital of one of 16 countries (the demo; learnable in ~30 steps)",
        format="messages",
    ),
    "uppercase-preference": DatasetInfo(
        name="uppercase-preference",
        description="Preference pairs (DPO, ORPO, KTO): the chosen answer repeats the word in upper case, "
        "the rejected one in lower case (learnable in ~30 steps)",
        format="preference",
    ),
}

PRESET_PREFIX = "preset:"


def model_info(model_name: str) -> ModelInfo | None:
    """Known facts about `model_name` (a preset reference or hub id), or None when unknown."""
    if model_name.startswith(PRESET_PREFIX):
        return PRESET_MODELS.get(model_name[len(PRESET_PREFIX) :])
    return KNOWN_HUB_MODELS.get(model_name)
