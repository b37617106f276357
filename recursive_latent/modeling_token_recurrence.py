"""Token recurrence (chain of thought) on the looped model's own backbone: the baseline that writes each step as a
token instead of looping over a latent."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationMixin
from transformers.modeling_outputs import CausalLMOutput

from .configuration_recursive import RecursiveLatentTokenLMConfig
from .modeling_recursive import CausalConv, RecursiveLatentPreTrainedModel, read_prompt


class RecursiveLatentTokenLM(RecursiveLatentPreTrainedModel, GenerationMixin):
    """The prompt reader of a `RecursiveLatentForCausalLM` (the same GPT-2 or Mamba2 backbone, the same binding conv
    on its embeddings) with a language-model head on its last layer: trained on `question trace... <HALT>`, it writes
    the trace one token per step, as a looped model names one step per loop. The looped model's strongest token
    baseline: a plain GPT-2 LM lacks the binding conv, without which it does not learn the lookup (35% at 1 hop)."""

    config_class = RecursiveLatentTokenLMConfig

    def __init__(self, config: RecursiveLatentTokenLMConfig):
        super().__init__(config)
        width = config.backbone_config.hidden_size
        # __init__ never downloads: the backbone is built from its config (the trainer builds it the same way).
        self.backbone = AutoModel.from_config(config.backbone_config)
        self.binding = CausalConv(width, config.binding_conv_kernel) if config.binding_conv == "embeddings" else None
        self.norm = nn.LayerNorm(width)
        # Untied, as the looped model's head: tied, a 64-wide head learned far slower (docs/experiments.md).
        self.lm_head = nn.Linear(width, config.vocab_size, bias=False)
        self.post_init()
        self.generation_config.eos_token_id = config.halt_token_id
        self.generation_config.use_cache = False  # every new token re-reads the prompt (the conv has no cache)

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def forward(self, input_ids, attention_mask=None, labels=None, position_ids=None, **kwargs):
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, tokens)`, *optional*):
            The token each position predicts next (-100: not scored), already shifted: the trainer labels the
            position before each trace token.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = read_prompt(self, input_ids, attention_mask, position_ids).last_hidden_state
        logits = self.lm_head(self.norm(hidden))  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}


RecursiveLatentTokenLMConfig.register_for_auto_class()
RecursiveLatentTokenLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["RecursiveLatentTokenLM"]
