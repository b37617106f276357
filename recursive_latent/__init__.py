"""recursive-latent: recursive latent reasoning on top of pretrained GPT-2 and Mamba2 backbones."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_recursive import RecursiveLatentConfig, RecursiveLatentTokenLMConfig
from .configuration_refiner import RecursiveRefinerConfig
from .modeling_recursive import RecursiveLatentForCausalLM, RecursiveLatentModel, RecursiveLatentPreTrainedModel
from .modeling_refiner import RecursiveRefinerModel, ctr_refine
from .modeling_token_recurrence import RecursiveLatentTokenLM

__version__ = "0.1.0"

AutoConfig.register(RecursiveLatentConfig.model_type, RecursiveLatentConfig)
AutoModel.register(RecursiveLatentConfig, RecursiveLatentModel)
AutoModelForCausalLM.register(RecursiveLatentConfig, RecursiveLatentForCausalLM)
AutoConfig.register(RecursiveLatentTokenLMConfig.model_type, RecursiveLatentTokenLMConfig)
AutoModelForCausalLM.register(RecursiveLatentTokenLMConfig, RecursiveLatentTokenLM)
AutoConfig.register(RecursiveRefinerConfig.model_type, RecursiveRefinerConfig)
AutoModel.register(RecursiveRefinerConfig, RecursiveRefinerModel)

__all__ = [
    "RecursiveLatentConfig",
    "RecursiveLatentForCausalLM",
    "RecursiveLatentModel",
    "RecursiveLatentPreTrainedModel",
    "RecursiveLatentTokenLM",
    "RecursiveLatentTokenLMConfig",
    "RecursiveRefinerConfig",
    "RecursiveRefinerModel",
    "ctr_refine",
]
