"""attnlab: attention mechanisms for large language models.

``attnlab.load(source)`` reads a model and its tokenizer from a run directory, a checkpoint, a
Hugging Face directory or a GGUF file (:mod:`attnlab.loader`).
"""

__version__ = "0.1.0"


def load(source, *, device=None, dtype=None, which="best", quantize=None, group_size=None):
    """The model and tokenizer at ``source`` as a :class:`attnlab.loader.Loaded` (``.model``,
    ``.tokenizer``, ``.config``, ``.train``); see :func:`attnlab.loader.load`."""
    from attnlab.loader import load as load_source  # on use: ``import attnlab`` stays light

    return load_source(
        source, device=device, dtype=dtype, which=which, quantize=quantize, group_size=group_size
    )
