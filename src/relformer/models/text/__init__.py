"""Text Transformers on :func:`relformer.attend`: BERT-style encoders, sentence embeddings and a
decoder-only language model.

* :class:`TextEncoder` (:mod:`.encoder`; Devlin et al. 2019, "BERT"), packed variable-length batches;
* :class:`SentenceEncoder` (:mod:`.sentence`; Reimers & Gurevych 2019), loaded from a Hugging Face /
  sentence-transformers folder (:mod:`.checkpoint`, e.g. all-MiniLM-L6-v2);
* :class:`CausalLM` (:mod:`.causal`): decoder-only stack with a key/value cache.

Every variant is a :class:`TextConfig` (:mod:`.config`, :func:`~relformer.models.list_models`).
"""
from torch import nn

from ..registry import builds
from .causal import CausalLM, KVCache
from .checkpoint import bert_state_dict, bert_text_config
from .config import TextConfig, TextEmbeddings, TextOutput
from .encoder import TextEncoder, TextLayout
from .sentence import SentenceEncoder, pool

__all__ = ["TextConfig", "TextEncoder", "TextOutput", "TextLayout", "TextEmbeddings", "SentenceEncoder", "CausalLM",
           "KVCache", "pool", "bert_text_config", "bert_state_dict"]


@builds(TextConfig)
def build_text(config: TextConfig) -> nn.Module:
    """:class:`CausalLM` for ``causal=True``, else :class:`TextEncoder`."""
    return CausalLM(config) if config.causal else TextEncoder(config)
