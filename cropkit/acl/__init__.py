"""Robust foundation models by adversarial contrastive learning: ACL and DynACL (`pretrain`), RCS coreset
selection (`rcs`), AIR and the other losses (`losses`), the augmentations (`augment`) and the dual-BatchNorm
ResNet (`resnet`)."""

from cropkit.acl.pretrain import ACLConfig, RCSConfig, TrainedACL, pretrain_acl

__all__ = ["ACLConfig", "RCSConfig", "TrainedACL", "pretrain_acl"]
