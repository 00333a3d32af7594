"""CRoPD: a robust auto-encoder in front of the frozen foundation model, trained with reconstruction + lambda x
the adversarial contrastive loss L_con (`losses`), and its auto-encoder baselines. The auto-encoders
(`autoencoders`), the run's config (`config`), training (`train`), sharing a trained pre-processor
(`pretrained`) and the paper's bound measured on data (`bound`)."""

from cropkit.cropd.config import PreprocessorConfig
from cropkit.cropd.pretrained import TrainedPreprocessor, from_pretrained, save_pretrained
from cropkit.cropd.train import epochs_for_steps, preprocessor_loss, psnr, train_preprocessor, training_split

__all__ = ["PreprocessorConfig", "TrainedPreprocessor", "epochs_for_steps", "from_pretrained", "preprocessor_loss",
           "psnr", "save_pretrained", "train_preprocessor", "training_split"]
