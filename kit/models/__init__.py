"""Models: timm architectures (``local_cnn_*`` registered with timm on import), teacher ensembles and
self-describing checkpoints (``factory``)."""

from kit.models.factory import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, ENSEMBLE_ARCH, HUB_WEIGHT_FILES, EnsembleModel,
                                check_arch, check_pretrained, create_from_args, create_model, ensemble_args,
                                load_checkpoint_file, load_model, member_archs, model_args, published_weights_cached,
                                save_checkpoint)

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "ENSEMBLE_ARCH", "HUB_WEIGHT_FILES", "EnsembleModel", "check_arch",
           "check_pretrained", "create_from_args", "create_model", "ensemble_args", "load_checkpoint_file", "load_model",
           "member_archs", "model_args", "published_weights_cached", "save_checkpoint"]
