"""cropkit: downstream adversarial robustness without adversarially fine-tuning the foundation model.

The library behind the numbered notebooks: data (`cropkit.data`), the frozen foundation model and the
end-to-end pipeline (`cropkit.models`), its embedded pre-training (`cropkit.pretrain`), linear heads
(`cropkit.heads`), attacks and evaluation (`cropkit.attacks`, `cropkit.evaluate`), results files
(`cropkit.results`) and batch reproduction (`cropkit.reproduce`).
"""

__version__ = "0.1.0"
