"""Lanes (TREX): per-task PEFT LoRA adapters on a model's looped layers, chosen per example.

Rows of the base lane run without an adapter; PEFT's mixed-batch LoRA groups the rows of each adapter, so one batch
may mix lanes. Adapters are saved as standard PEFT folders in `adapters/<lane>/`. Shared by every model family of
the package (`RecursiveLatentForCausalLM`, `RecursiveRefinerModel`); a remote-code checkpoint carries this file.
"""

import re
import warnings
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn
from transformers.utils import cached_file

NO_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch
PEFT_PREFIX = "base_model.model."  # key prefix of a standard PEFT adapter file



class LaneRouting:
    """Mixed into the module that runs the looped layers: it knows each row's lane adapter while a batch runs."""

    row_adapters = None  # set at the start of every step; None = no row uses an adapter

    def route_lanes(self, module, args, kwargs):
        """Forward pre-hook of every lane LoRA layer: tell it each row's adapter (none when no lanes are given)."""
        kwargs["adapter_names"] = self.row_adapters or [NO_ADAPTER] * args[0].shape[0]
        return args, kwargs


class LaneAdaptersMixin:
    """Named PEFT LoRA adapters, one per task lane, on the Linear layers matching `lane_targets`; `lane_router` is
    the `LaneRouting` module whose `row_adapters` routes each example. Rows of `config.base_lane` use no adapter."""

    lane_targets = None
    lane_router = None

    @property
    def lanes(self):
        return [self.config.base_lane, *self.config.lane_adapters]

    def adapter_names(self, lanes, batch_size):
        """Each row's adapter name for PEFT's mixed-batch LoRA, from a lane per row (or one lane for all)."""
        if lanes is None:
            return None
        lanes = [lanes] * batch_size if isinstance(lanes, str) else list(lanes)
        lanes = [self.config.base_lane if lane is None else lane for lane in lanes]  # None: the base lane
        if len(lanes) != batch_size:
            raise ValueError(f"`lanes` has {len(lanes)} entries for a batch of {batch_size}.")
        # A base lane without a name (None) takes every lane that has no adapter of its own: the shared weights.
        unknown = [] if None in self.lanes else sorted(set(lanes) - set(self.lanes))
        if unknown:
            raise ValueError(f"Unknown lane(s) {unknown}: this model has lanes {self.lanes}.")
        if not self.config.lane_adapters:
            return None
        return [lane if lane in self.config.lane_adapters else NO_ADAPTER for lane in lanes]

    def add_lane(self, lane, r=4, lora_alpha=8):
        """Add an untrained LoRA adapter for `lane` on the looped layers (`lane_targets`) and return its parameters.
        PEFT leaves only adapter parameters trainable, so the shared weights stay bit-identical unless re-enabled."""
        from peft import LoraConfig

        taken = [self.config.base_lane, *self.config.lane_adapters]
        if lane in taken or not re.fullmatch(r"[a-z][a-z0-9_]*", lane) or lane in "lora_":
            raise ValueError(f"Lane name {lane!r} is taken or invalid (taken: {taken}); use lowercase letters, "
                             f"digits and _ (PEFT also refuses substrings of 'lora_').")
        self._inject_lane(lane, LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=self.lane_targets, lora_dropout=0.0))
        return self.lane_parameters(lane)

    def _inject_lane(self, lane, lora_config):
        from peft import inject_adapter_in_model
        from peft.tuners.lora import LoraLayer

        with warnings.catch_warnings():  # PEFT warns on every adapter after the first; several are the point here
            warnings.simplefilter("ignore")
            inject_adapter_in_model(lora_config, self, adapter_name=lane)
        for module in self.modules():
            if isinstance(module, LoraLayer) and not getattr(module, "routes_lanes", False):
                module.register_forward_pre_hook(self.lane_router.route_lanes, with_kwargs=True)
                module.routes_lanes = True
        self.config.lane_adapters = [*self.config.lane_adapters, lane]

    def lane_parameters(self, lane):
        return [p for name, p in self.named_parameters() if re.search(rf"\.lora_[AB]\.{lane}\.", name)]

    def save_lane(self, lane, directory):
        """Save one lane as a standard PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`)."""
        from peft import get_peft_model_state_dict

        directory = Path(directory)
        self.peft_config[lane].save_pretrained(directory)
        state = get_peft_model_state_dict(self, adapter_name=lane)
        save_file({PEFT_PREFIX + key: value.contiguous() for key, value in state.items()},
                  directory / "adapter_model.safetensors", metadata={"format": "pt"})

    def load_lane(self, lane, path_or_repo_id, subfolder="", **hub_kwargs):
        """Load a lane adapter saved by `save_lane`: a local folder, or a Hub repo with `subfolder`."""
        from peft import LoraConfig, set_peft_model_state_dict

        if lane in self.config.lane_adapters:
            raise ValueError(f"This model already has an adapter for lane {lane!r}.")
        files = [cached_file(path_or_repo_id, name, subfolder=subfolder, **hub_kwargs)
                 for name in ("adapter_config.json", "adapter_model.safetensors")]
        state = {key.removeprefix(PEFT_PREFIX): value for key, value in load_file(files[1]).items()}
        self._check_lane_shapes(lane, state)
        self._inject_lane(lane, LoraConfig.from_pretrained(str(Path(files[0]).parent)))
        set_peft_model_state_dict(self, state, adapter_name=lane)

    def _check_lane_shapes(self, lane, state):
        """Refuse an adapter saved for another core before touching the model: LoRA A is (r, in), B is (out, r)."""
        modules = dict(self.named_modules())
        for key, value in state.items():
            module_name, kind = key.rsplit(".lora_", 1)
            module = modules.get(module_name)
            module = getattr(module, "base_layer", module)
            expected = None
            if isinstance(module, nn.Linear):
                expected = module.in_features if kind.startswith("A") else module.out_features
            got = value.shape[1] if kind.startswith("A") else value.shape[0]
            if expected != got:
                raise ValueError(
                    f"Lane {lane!r} was saved for a different core: its {key} has shape {tuple(value.shape)}, "
                    f"which does not fit {'no layer' if expected is None else f'a layer of width {expected}'} here."
                )

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """Save the shared weights in the plain layout, then every lane as a PEFT folder in `adapters/<lane>/`."""
        if self.config.lane_adapters:
            state_dict = state_dict if state_dict is not None else self.state_dict()
            state_dict = {key.replace(".base_layer.", "."): value for key, value in state_dict.items()
                          if ".lora_" not in key}
        super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
        for lane in self.config.lane_adapters:
            self.save_lane(lane, Path(save_directory) / "adapters" / lane)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then every lane adapter the checkpoint lists (local or on the Hub)."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        lanes, model.config.lane_adapters = model.config.lane_adapters, []
        hub_kwargs = {key: kwargs[key] for key in ("cache_dir", "revision", "token", "local_files_only") if key in kwargs}
        for lane in lanes:
            subfolder = "/".join(filter(None, [kwargs.get("subfolder"), "adapters", lane]))
            model.load_lane(lane, pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs)
        return model


__all__ = ["LaneAdaptersMixin", "LaneRouting"]
