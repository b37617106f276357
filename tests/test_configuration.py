import pytest
from transformers import GPT2Config, Mamba2Config

from recursive_latent import RecursiveLatentConfig

from .conftest import TINY_MAMBA2, make_config


def test_defaults_build_a_tiny_gpt2_backbone():
    config = RecursiveLatentConfig()
    assert isinstance(config.backbone_config, GPT2Config)
    assert config.backbone_config.resid_pdrop == 0.0
    assert config.core_hidden_size == config.backbone_config.n_embd
    assert (config.core_design, config.memory, config.loop_rotary, config.latent_norm) == ("latent", "all", False, True)


@pytest.mark.parametrize("backbone", ["gpt2", "mamba2"])
def test_dict_round_trip_keeps_a_real_backbone_config(backbone, tmp_path):
    config = make_config(backbone, core_design="sequence", lifeline=False)
    config.save_pretrained(tmp_path)
    loaded = RecursiveLatentConfig.from_pretrained(tmp_path)
    assert type(loaded.backbone_config) is type(config.backbone_config)
    assert loaded.to_dict() == config.to_dict()
    assert RecursiveLatentConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


def test_accepts_a_config_object():
    config = RecursiveLatentConfig(backbone_config=Mamba2Config(**{k: v for k, v in TINY_MAMBA2.items() if k != "model_type"}))
    assert config.backbone_type == "mamba2" and config.num_hidden_layers == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(core_design="tree"), r"`core_design` must be one of 'latent', 'sequence' \(got 'tree'\)"),
        (dict(core_block="lstm"), r"`core_block` must be one of"),
        (dict(backbone_mode="half"), r"`backbone_mode` must be one of 'frozen', 'lora', 'full'"),
        (dict(memory="middle"), r"`memory` must be one of"),
        (dict(binding_conv="left"), r"`binding_conv` must be one of"),
        (dict(halting="never"), r"`halting` must be one of"),
        (dict(max_loops=0), r"`max_loops` must be an integer >= 1 \(got 0\)"),
        (dict(max_inference_loops=-3), r"`max_inference_loops` must be an integer >= 1 \(got -3\)"),
        (dict(core_num_heads=5), r"`core_hidden_size` must be divisible by `core_num_heads`"),
        (dict(halt_token_id=100), r"`halt_token_id` must be a token id in \[0, 100\)"),
        (dict(lifeline="yes"), r"`lifeline` must be True or False"),
        (dict(backbone_config=dict(model_type="bert")), r"`backbone_config.model_type` must be one of 'gpt2', 'mamba2'"),
        (dict(backbone_config=dict(n_embd=32)), r"`backbone_config.model_type` must be one of .* \(got None\)"),
        (dict(backbone_config=3), r"`backbone_config` must be a dict or a PretrainedConfig"),
    ],
)
def test_bad_fields_raise_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_config(**kwargs) if "backbone_config" not in kwargs else RecursiveLatentConfig(**kwargs)
